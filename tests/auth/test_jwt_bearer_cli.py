"""`grant_type: jwt_bearer` as the operator runs it: `sfstream check` and `sfstream run` as
subprocesses against the emulator, the private key read from the secrets file."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from sfstream_emulator import Emulator, EmulatorSettings
from tests.auth.keys import key_pair
from tests.cli.test_commands import sfstream
from tests.runners.process import start_run

REFUSED = (
    "the JWT was refused: the certificate of the connected app does not match "
    "salesforce.private_key (invalid_grant: invalid assertion)"
)


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(jwt_certificate=key_pair().certificate, poll_timeout_s=1.0)


def write_config(emu: Emulator, tmp_path: Path, private_key: str) -> Path:
    """A configuration with the jwt_bearer grant; the key on one line of a 0600 secrets file."""
    secrets = tmp_path / "secrets.env"
    secrets.write_text("SF_PRIVATE_KEY=" + private_key.strip().replace("\n", "\\n") + "\n")
    secrets.chmod(0o600)
    document: dict[str, Any] = {
        "salesforce": {
            "login_url": emu.login_url,
            "client_id": emu.credentials["client_id"],
            "grant_type": "jwt_bearer",
            "username": emu.credentials["username"],
            "private_key": "${secret:SF_PRIVATE_KEY}",
        },
        "secrets": {"backend": "file", "file": "secrets.env"},
        "streams": [{"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"}],
        "state": {"path": "state.db"},
        "sink": {"type": "file", "path": "records.jsonl"},
        "logging": {"level": "info", "format": "json"},
        "runtime": {"summary_interval_s": 3600, "shutdown_timeout_s": 10},
    }
    path = tmp_path / "sfstream.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


async def check(config: Path) -> tuple[int, str, str]:
    return await sfstream("check", "--config", str(config))


def log_lines(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    lines = log.read_bytes().splitlines()
    return [orjson.loads(line) for line in lines if line.startswith(b"{")]


async def test_check_logs_in_with_the_key_from_the_secrets_file(
    sfstream_emulator: Emulator, tmp_path: Path
) -> None:
    config = write_config(sfstream_emulator, tmp_path, key_pair().private_key)
    code, out, err = await check(config)
    assert code == 0, out + err
    assert f"ok    login: instance {sfstream_emulator.url}" in out.splitlines()


async def test_check_reports_a_wrong_key_in_one_line(
    sfstream_emulator: Emulator, tmp_path: Path
) -> None:
    other = key_pair("someone-else").private_key
    config = write_config(sfstream_emulator, tmp_path, other)
    code, out, err = await check(config)
    assert code == 1
    assert f"FAIL  login: {REFUSED}" in out.splitlines()
    assert "Traceback" not in out + err
    assert "PRIVATE KEY" not in out + err


async def test_check_reports_a_key_that_is_not_one(
    sfstream_emulator: Emulator, tmp_path: Path
) -> None:
    config = write_config(sfstream_emulator, tmp_path, "MIIEv-not-really-a-key")
    code, out, err = await check(config)
    assert code == 1
    assert "FAIL  login: salesforce.private_key is not a PEM private key" in out
    assert "MIIEv" not in out + err
    assert "Traceback" not in out + err


async def test_run_streams_with_the_jwt_grant(sfstream_emulator: Emulator, tmp_path: Path) -> None:
    config = write_config(sfstream_emulator, tmp_path, key_pair().private_key)
    log = tmp_path / "run.log"
    process = await start_run(config, log)
    try:
        async with asyncio.timeout(60):
            while not any(line.get("event") == "stream_started" for line in log_lines(log)):
                assert process.returncode is None, log.read_text()
                await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0, log.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert sfstream_emulator.tokens.grants_issued >= 1
    assert "PRIVATE KEY" not in log.read_text()


async def test_run_stops_at_once_on_a_wrong_key(
    sfstream_emulator: Emulator, tmp_path: Path
) -> None:
    other = key_pair("someone-else").private_key
    config = write_config(sfstream_emulator, tmp_path, other)
    log = tmp_path / "run.log"
    process = await start_run(config, log)
    try:
        async with asyncio.timeout(60):
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = log.read_text()
    assert code != 0, text
    assert REFUSED in text
    assert "Traceback" not in text
    assert "PRIVATE KEY" not in text
    # Terminal: one refusal is reported, with no retry loop behind it.
    assert text.count("the JWT was refused") == 1, text
    assert sfstream_emulator.tokens.grants_issued == 0


async def test_tail_logs_in_with_the_jwt_bearer_grant(
    sfstream_emulator: Emulator, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    emu.publish_event("Order_Placed__e", {"Order_Number__c": "O-jwt"})
    secrets = tmp_path / "secrets.env"
    secrets.write_text(
        "SFSTREAM_PRIVATE_KEY=" + key_pair().private_key.strip().replace("\n", "\\n") + "\n"
    )
    secrets.chmod(0o600)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfstream.cli",
        "tail",
        "--login-url",
        emu.login_url,
        "--client-id",
        emu.credentials["client_id"],
        "--grant",
        "jwt_bearer",
        "--username",
        emu.credentials["username"],
        "--secrets-file",
        str(secrets),
        "--channel",
        "/event/Order_Placed__e",
        "--replay",
        "-2",
        "--max-messages",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    (line,) = stdout.splitlines()
    assert orjson.loads(line)["data"]["payload"]["Order_Number__c"] == "O-jwt"
    assert "PRIVATE KEY" not in stderr.decode()
