"""Refresh token rotation: the connector follows Salesforce's new refresh token and keeps it.

With rotation on, every refresh_token grant answers with a new refresh token and invalidates
the one sent. The connector must log in with the newest one from then on, write it back to the
secrets store so that a restart uses it, and never log it.
"""

from __future__ import annotations

import asyncio
import io
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from pydantic import SecretStr
from structlog.testing import capture_logs

from sfstream.engine.config import Config, load_config
from sfstream.engine.pipeline import RunResult
from sfstream.observability import configure_logging
from sfstream.runners.connector import Connector
from sfstream.runners.wiring import (
    RefreshTokenWriter,
    credentials_of,
    org_session,
    refresh_token_writer,
)
from sfstream.secrets import EnvSecretsStore, FileSecretsStore
from sfstream_emulator import Emulator, EmulatorSettings
from tests.conftest import MakeConfig
from tests.runners.process import start_run


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=11, rotate_refresh_tokens=True)


def records(config: Config) -> list[dict[str, Any]]:
    assert config.sink.path is not None
    if not config.sink.path.exists():
        return []
    lines = [orjson.loads(line) for line in config.sink.path.read_bytes().splitlines()]
    return [m for m in lines if m["type"] == "RECORD"]


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)


def secrets_in(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def valid_refresh_tokens(emu: Emulator) -> list[str]:
    return [token for token, valid in emu.tokens.refresh_tokens.items() if valid]


async def refused(emu: Emulator, refresh_token: str) -> bool:
    """Whether the emulator's token endpoint refuses `refresh_token` with invalid_grant."""
    c = emu.credentials
    form = {
        "grant_type": "refresh_token",
        "client_id": c["client_id"],
        "client_secret": c["client_secret"],
        "refresh_token": refresh_token,
    }
    async with aiohttp.ClientSession() as http, http.post(emu.token_url, data=form) as response:
        body = await response.json()
    return response.status == 400 and body["error"] == "invalid_grant"


async def run_once(
    config: Config, emu: Emulator, expected: int, *, revoke_after: int | None = None
) -> RunResult:
    """Run the connector until `expected` records are written.

    With `revoke_after`, every access token is revoked once that many records are written and
    one more record is created: the connector must refresh its token to receive it.
    """
    stop = asyncio.Event()
    async with Connector(config, run_id="rotation") as connector:
        task = asyncio.create_task(connector.run(stop))
        try:
            if revoke_after is not None:
                await wait_for(lambda: len(records(config)) >= revoke_after or task.done())
                assert emu.revoke_access_tokens() >= 1
                emu.create_record("Account", {"Name": "after-revocation"})
            await wait_for(lambda: len(records(config)) >= expected or task.done())
        finally:
            stop.set()
        return await task


async def test_the_newest_refresh_token_is_saved_and_a_restart_logs_in_with_it(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    original = emu.credentials["refresh_token"]
    config = await make_config(emu)
    secrets_file = tmp_path / "secrets.env"
    client_secret_line = secrets_file.read_text().splitlines()[0]
    names = [f"A{number}" for number in range(3)]
    for name in names:
        emu.create_record("Account", {"Name": name})

    with capture_logs() as logs:
        # The login rotates the refresh token; the revocation forces a second rotation mid-run.
        result = await run_once(config, emu, expected=4, revoke_after=3)
        assert result.ok, result.error
        saved = secrets_in(secrets_file)["SF_REFRESH_TOKEN"]
        assert valid_refresh_tokens(emu) == [saved]
        assert saved != original
        assert emu.tokens.grants_issued >= 2
        assert secrets_file.read_text().splitlines()[0] == client_secret_line
        assert secrets_file.stat().st_mode & 0o777 == 0o600

        # Published while the connector is down; the restart reads the saved refresh token.
        for name in ("while-down-1", "while-down-2"):
            emu.create_record("Account", {"Name": name})
        restarted = await load_config(tmp_path / "sfstream.yaml", environ={})
        assert restarted.salesforce.refresh_token is not None
        assert restarted.salesforce.refresh_token.get_secret_value() == saved
        result = await run_once(restarted, emu, expected=6)
        assert result.ok, result.error

    assert [r["data"]["Name"] for r in records(config)] == [
        *names,
        "after-revocation",
        "while-down-1",
        "while-down-2",
    ]
    newest = secrets_in(secrets_file)["SF_REFRESH_TOKEN"]
    assert valid_refresh_tokens(emu) == [newest]
    issued = list(emu.tokens.refresh_tokens)
    assert len(issued) >= 4  # the original and one per login or refresh since
    for old in issued:
        if old != newest:
            assert await refused(emu, old)
    events = [entry["event"] for entry in logs]
    assert events.count("refresh_token_rotated") == len(issued) - 1
    assert events.count("refresh_token_saved") == len(issued) - 1
    assert "refresh_token_in_memory_only" not in events
    for token in issued:
        assert token not in repr(logs)


async def test_sfstream_run_saves_the_rotated_token_and_logs_no_token(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu)
    config_path = tmp_path / "sfstream.yaml"
    log = tmp_path / "run.log"
    emu.create_record("Account", {"Name": "first"})

    async def run_process(expected: int, revoke: bool) -> str:
        process = await start_run(config_path, log)
        try:
            await wait_for(lambda: len(records(config)) >= expected - int(revoke), 30)
            if revoke:
                emu.revoke_access_tokens()
                emu.create_record("Account", {"Name": "after-revocation"})
                await wait_for(lambda: len(records(config)) >= expected, 30)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                code = await process.wait()
        assert code == 0, log.read_text()
        return secrets_in(tmp_path / "secrets.env")["SF_REFRESH_TOKEN"]

    first = await run_process(expected=2, revoke=True)
    assert valid_refresh_tokens(emu) == [first]
    emu.create_record("Account", {"Name": "while-down"})
    second = await run_process(expected=3, revoke=False)
    assert valid_refresh_tokens(emu) == [second]
    assert await refused(emu, first)
    assert [r["data"]["Name"] for r in records(config)] == [
        "first",
        "after-revocation",
        "while-down",
    ]
    text = log.read_text()
    events = [orjson.loads(line)["event"] for line in text.splitlines()]
    assert events.count("refresh_token_saved") == len(emu.tokens.refresh_tokens) - 1
    for token in emu.tokens.refresh_tokens:
        assert token not in text


async def test_an_environment_secret_cannot_keep_it_and_says_so_once(
    sfstream_emulator: Emulator, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = sfstream_emulator
    original = emu.credentials["refresh_token"]
    monkeypatch.setenv("SF_CLIENT_SECRET", emu.credentials["client_secret"])
    monkeypatch.setenv("SF_REFRESH_TOKEN", original)
    config = await make_config(emu, secrets={"backend": "env"})
    for number in range(2):
        emu.create_record("Account", {"Name": f"A{number}"})
    with capture_logs() as logs:
        # Two rotations (login, then the refresh after the revocation): one warning.
        result = await run_once(config, emu, expected=3, revoke_after=2)
    assert result.ok, result.error
    assert emu.tokens.grants_issued >= 2
    warnings = [entry for entry in logs if entry["event"] == "refresh_token_in_memory_only"]
    assert len(warnings) == 1
    warning = warnings[0]
    assert warning["log_level"] == "warning"
    assert warning["name"] == "SF_REFRESH_TOKEN"
    assert "read-only" in warning["reason"]
    assert "restart" in warning["note"]
    assert "invalid_grant" in warning["note"]
    for token in emu.tokens.refresh_tokens:
        assert token not in repr(logs)
    assert await refused(emu, original)


async def test_an_inline_refresh_token_cannot_be_kept_and_says_so_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sfstream.yaml"
    path.write_text(
        "salesforce: {login_url: 'http://localhost:1', client_id: k, refresh_token: inline-rt}\n"
        "streams: [{channel: /data/AccountChangeEvent}]\n"
    )
    writer = refresh_token_writer(await load_config(path, environ={}))
    assert isinstance(writer, RefreshTokenWriter)
    assert isinstance(writer.store, EnvSecretsStore)
    assert writer.name is None
    with capture_logs() as logs:
        await writer(SecretStr("rotated-value-1"))
        await writer(SecretStr("rotated-value-2"))
    assert [entry["event"] for entry in logs] == ["refresh_token_in_memory_only"]
    assert "written inline" in logs[0]["reason"]
    assert "rotated-value" not in repr(logs)


async def test_a_write_that_fails_is_reported_each_time(
    make_config: MakeConfig, sfstream_emulator: Emulator, tmp_path: Path
) -> None:
    config = await make_config(sfstream_emulator)
    writer = refresh_token_writer(config)
    assert isinstance(writer, RefreshTokenWriter)
    assert isinstance(writer.store, FileSecretsStore)
    assert writer.store.path == tmp_path / "secrets.env"
    assert writer.name == "SF_REFRESH_TOKEN"
    # The file becomes unreadable behind the connector's back: it is not overwritten.
    broken = "SF_REFRESH_TOKEN=old\na line without an equals sign\n"
    (tmp_path / "secrets.env").write_text(broken)
    with capture_logs() as logs:
        await writer(SecretStr("rotated-value-1"))
        await writer(SecretStr("rotated-value-2"))
    assert [entry["event"] for entry in logs] == ["refresh_token_not_saved"] * 2
    assert "line 2" in logs[0]["error"]
    assert writer.failures == 2
    assert "rotated-value" not in repr(logs)
    assert (tmp_path / "secrets.env").read_text() == broken
    # A read-only file is a store that cannot keep it: one warning.
    (tmp_path / "secrets.env").write_text("SF_REFRESH_TOKEN=old\n")
    (tmp_path / "secrets.env").chmod(0o400)
    readonly = refresh_token_writer(config)
    assert readonly is not None
    with capture_logs() as logs:
        await readonly(SecretStr("rotated-value-3"))
        await readonly(SecretStr("rotated-value-4"))
    assert [entry["event"] for entry in logs] == ["refresh_token_in_memory_only"]
    assert "mode 0400" in logs[0]["reason"]


async def test_a_rotated_token_is_redacted_from_every_later_log_line(
    make_config: MakeConfig, sfstream_emulator: Emulator
) -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    writer = refresh_token_writer(await make_config(sfstream_emulator))
    assert writer is not None
    await writer(SecretStr("5Aep-rotated-refresh-token"))
    structlog.get_logger("test").info("oops", detail="got 5Aep-rotated-refresh-token back")
    assert "5Aep-rotated-refresh-token" not in stream.getvalue()
    assert "[REDACTED]" in stream.getvalue()


async def test_a_later_session_of_the_same_configuration_logs_in_with_the_newest_token(
    sfstream_emulator: Emulator, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a startup retry does: a second session from the same configuration object, with a
    # store that cannot keep the rotated token.
    emu = sfstream_emulator
    monkeypatch.setenv("SF_CLIENT_SECRET", emu.credentials["client_secret"])
    monkeypatch.setenv("SF_REFRESH_TOKEN", emu.credentials["refresh_token"])
    config = await make_config(emu, secrets={"backend": "env"})
    with capture_logs() as logs:
        async with org_session(config) as first:
            await first.tokens.token()
        async with org_session(config) as second:
            token = await second.tokens.token()
    assert token.instance_url == emu.url
    events = [entry["event"] for entry in logs]
    assert events.count("refresh_token_rotated") == 2
    assert events.count("refresh_token_in_memory_only") == 1  # once per configuration
    current = credentials_of(config).refresh_token
    assert current is not None
    assert valid_refresh_tokens(emu) == [current.get_secret_value()]
