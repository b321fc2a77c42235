"""Shared fixtures: the emulator runs in-process on a free localhost port."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from sfstream.engine.config import Config, load_config
from sfstream_emulator import Emulator

pytest_plugins = ["sfstream_emulator.pytest_plugin", "tests.aws", "tests.kafka"]

# `make fuzz` runs tests/fuzz under this profile: 100 times the default number of examples
# (tests/fuzz/budget.py scales each fuzz test's budget by the same ratio).
hypothesis_settings.register_profile(
    "fuzz", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

MakeConfig = Callable[..., Awaitable[Config]]


@pytest.fixture
def make_config(tmp_path: Path) -> MakeConfig:
    """Write and load a connector configuration pointing at an emulator.

    Secrets go through a 0600 secrets file, as in production; keyword arguments override
    top-level sections.
    """

    async def make(
        emu: Emulator, streams: list[dict[str, Any]] | None = None, **sections: Any
    ) -> Config:
        creds = emu.credentials
        secrets = tmp_path / "secrets.env"
        secrets.write_text(
            f"SF_CLIENT_SECRET={creds['client_secret']}\n"
            f"SF_REFRESH_TOKEN={creds['refresh_token']}\n"
        )
        secrets.chmod(0o600)
        document: dict[str, Any] = {
            "salesforce": {
                "login_url": emu.url,
                "client_id": creds["client_id"],
                "client_secret": "${secret:SF_CLIENT_SECRET}",
                "refresh_token": "${secret:SF_REFRESH_TOKEN}",
            },
            "secrets": {"backend": "file", "file": "secrets.env"},
            "streams": streams
            if streams is not None
            else [
                {"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"},
            ],
            "state": {"path": "state.db"},
            "sink": {"type": "file", "path": "records.jsonl"},
            "batch": {"max_records": 50, "max_wait_ms": 50},
            "runtime": {"summary_interval_s": 3600, "shutdown_timeout_s": 10},
        }
        document.update(sections)
        path = tmp_path / "sfstream.yaml"
        path.write_text(yaml.safe_dump(document))
        return await load_config(path, environ={})

    return make
