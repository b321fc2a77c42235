"""The target of the sandbox suite: a real sandbox org when its credentials are set, and the
emulator always.

Both targets are reached the same way: OAuth refresh-token grant, then REST. No emulator
control is used, so what passes on the emulator is what the org is asked.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import pytest_asyncio
import yaml

from sfstream_emulator import Emulator

API_VERSION: Final = "62.0"
ENV: Final = (
    "SFSTREAM_SANDBOX_LOGIN_URL",
    "SFSTREAM_SANDBOX_CLIENT_ID",
    "SFSTREAM_SANDBOX_CLIENT_SECRET",
    "SFSTREAM_SANDBOX_REFRESH_TOKEN",
)
SKIP_REASON: Final = f"set {', '.join(ENV)} to run against a sandbox org"


@dataclass(frozen=True)
class Target:
    """Where the suite runs, and a REST session logged in to it."""

    name: str
    login_url: str
    client_id: str
    client_secret: str
    refresh_token: str
    http: aiohttp.ClientSession
    instance_url: str = ""
    access_token: str = ""

    def url(self, path: str) -> str:
        return f"{self.instance_url}/services/data/v{API_VERSION}/{path}"

    async def rest(self, method: str, path: str, body: Any = None) -> Any:
        """One REST call; the JSON answer (None for 204)."""
        headers = {"Authorization": f"Bearer {self.access_token}"}
        async with self.http.request(method, self.url(path), json=body, headers=headers) as r:
            text = await r.text()
            assert r.status < 300, f"{method} {path}: {r.status} {text}"
            return None if r.status == 204 or not text else await r.json(content_type=None)

    def write_config(self, directory: Path, streams: list[dict[str, Any]], **sections: Any) -> Path:
        """A connector configuration for this target (secrets in a 0600 file)."""
        secrets = directory / "secrets.env"
        secrets.write_text(
            f"SF_CLIENT_SECRET={self.client_secret}\nSF_REFRESH_TOKEN={self.refresh_token}\n"
        )
        secrets.chmod(0o600)
        document: dict[str, Any] = {
            "salesforce": {
                "login_url": self.login_url,
                "client_id": self.client_id,
                "client_secret": "${secret:SF_CLIENT_SECRET}",
                "refresh_token": "${secret:SF_REFRESH_TOKEN}",
                "api_version": API_VERSION,
            },
            "secrets": {"backend": "file", "file": "secrets.env"},
            "streams": streams,
            "state": {"path": "state.db"},
            "sink": {"type": "file", "path": "records.jsonl"},
            "batch": {"max_records": 50, "max_wait_ms": 50},
            "runtime": {"summary_interval_s": 3600, "shutdown_timeout_s": 30},
            "logging": {"level": "info", "format": "json"},
        }
        document.update(sections)
        path = directory / "sfstream.yaml"
        path.write_text(yaml.safe_dump(document))
        return path


async def _login(target: Target) -> Target:
    form = {
        "grant_type": "refresh_token",
        "client_id": target.client_id,
        "client_secret": target.client_secret,
        "refresh_token": target.refresh_token,
    }
    url = f"{target.login_url.rstrip('/')}/services/oauth2/token"
    async with target.http.post(url, data=form) as response:
        body = await response.json(content_type=None)
        assert response.status == 200, f"login to {target.name}: {response.status}"
    return Target(
        target.name,
        target.login_url,
        target.client_id,
        target.client_secret,
        target.refresh_token,
        target.http,
        instance_url=str(body["instance_url"]),
        access_token=str(body["access_token"]),
    )


@pytest_asyncio.fixture(params=["org", "emulator"])
async def target(
    request: pytest.FixtureRequest, sfstream_emulator: Emulator
) -> AsyncIterator[Target]:
    """The org named by `SFSTREAM_SANDBOX_*` (skipped unless all are set), or the emulator."""
    async with aiohttp.ClientSession() as http:
        if request.param == "org":
            values = [os.environ.get(name, "") for name in ENV]
            if not all(values):
                pytest.skip(SKIP_REASON)
            login_url, client_id, client_secret, refresh_token = values
            found = Target("org", login_url, client_id, client_secret, refresh_token, http)
        else:
            c = sfstream_emulator.credentials
            found = Target(
                "emulator",
                sfstream_emulator.url,
                c["client_id"],
                c["client_secret"],
                c["refresh_token"],
                http,
            )
        yield await _login(found)
