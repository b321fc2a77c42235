"""Start-up of `sfstream run`: retryable failures are waited out, terminal ones are not.

The connector is a real subprocess; the emulator runs in the test's event loop, started
only when a test wants Salesforce to come up.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from sfstream_emulator import Emulator, EmulatorSettings
from tests.runners.process import start_run

CHANNEL = "/data/AccountChangeEvent"
STREAM = "sf.event.account_changes"
RUN_ID = "--run-id=startup-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(tmp_path: Path, port: int, **runtime: Any) -> Path:
    defaults = EmulatorSettings()
    secrets = tmp_path / "secrets.env"
    secrets.write_text(
        f"SF_CLIENT_SECRET={defaults.client_secret}\nSF_REFRESH_TOKEN={defaults.refresh_token}\n"
    )
    secrets.chmod(0o600)
    document = {
        "salesforce": {
            "login_url": f"http://127.0.0.1:{port}",
            "client_id": defaults.client_id,
            "client_secret": "${secret:SF_CLIENT_SECRET}",
            "refresh_token": "${secret:SF_REFRESH_TOKEN}",
        },
        "secrets": {"backend": "file", "file": "secrets.env"},
        "streams": [{"channel": CHANNEL, "initial_replay": "earliest"}],
        "state": {"path": "state.db"},
        "sink": {"type": "file", "path": "records.jsonl"},
        "logging": {"format": "json"},
        "runtime": {"summary_interval_s": 3600, "shutdown_timeout_s": 10, **runtime},
    }
    path = tmp_path / "sfstream.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def log_lines(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip()]


def records(tmp_path: Path) -> list[dict[str, Any]]:
    sink = tmp_path / "records.jsonl"
    if not sink.exists():
        return []
    found = [orjson.loads(line) for line in sink.read_bytes().splitlines()]
    return [m for m in found if m["type"] == "RECORD"]


async def wait_for(predicate: Any, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.1)


async def test_run_waits_for_salesforce_that_comes_up_later(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "run.log"
    process = await start_run(write_config(tmp_path, port), log, RUN_ID)
    try:
        await asyncio.sleep(10)
        assert process.returncode is None, log.read_text()
        retries = [line for line in log_lines(log) if line["event"] == "startup_retry"]
        assert len(retries) >= 2
        assert all(line["error_class"] == "TransportError" for line in retries)
        delays = [line["retry_in_s"] for line in retries]
        assert len(set(delays)) > 1  # jittered, never at a fixed pace
        settings = EmulatorSettings(host="127.0.0.1", port=port, poll_timeout_s=1.0, seed=4)
        async with Emulator(settings) as emu:
            for number in range(25):
                emu.create_record("Account", {"Name": f"late-{number}"})
            published = [m["data"]["event"]["replayId"] for m in emu.published(CHANNEL)]
            await wait_for(lambda: len(records(tmp_path)) >= len(published), timeout_s=90)
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0, log.read_text()
    assert [r["replay_id"] for r in records(tmp_path)] == published
    lines = log_lines(log)
    events = [line["event"] for line in lines]
    assert "stopping" in events
    assert "run_stopped" in events
    # Every line of the run carries its id, the signal handler's `stopping` included.
    assert {line.get("run_id") for line in lines} == {"startup-test"}


async def test_sigterm_during_startup_retries_exits_0_at_once(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    process = await start_run(write_config(tmp_path, free_port()), log, RUN_ID)
    await wait_for(lambda: any(x["event"] == "startup_retry" for x in log_lines(log)), 30)
    process.send_signal(signal.SIGTERM)
    began = time.monotonic()
    async with asyncio.timeout(30):
        code = await process.wait()
    assert code == 0, log.read_text()
    assert time.monotonic() - began < 3
    lines = log_lines(log)
    assert "stopped_before_start" in [line["event"] for line in lines]
    assert {line.get("run_id") for line in lines} == {"startup-test"}


async def test_startup_gives_up_after_its_timeout(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    process = await start_run(write_config(tmp_path, free_port(), startup_timeout_s=3), log, RUN_ID)
    async with asyncio.timeout(30):
        code = await process.wait()
    assert code == 1
    failed = [line for line in log_lines(log) if line["event"] == "run_failed"]
    assert len(failed) == 1
    assert "could not start within 3 s" in failed[0]["error"]
    assert "Traceback" not in log.read_text()


async def test_a_refused_login_at_startup_is_not_retried(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    (tmp_path / "secrets.env").write_text(
        "SF_CLIENT_SECRET=wrong-secret\nSF_REFRESH_TOKEN=wrong-token\n"
    )
    log = tmp_path / "run.log"
    settings = EmulatorSettings(host="127.0.0.1", port=port, poll_timeout_s=1.0)
    async with Emulator(settings):
        process = await start_run(config, log, RUN_ID)
        async with asyncio.timeout(30):
            code = await process.wait()
    assert code == 1
    events = [line["event"] for line in log_lines(log)]
    assert "startup_retry" not in events
    assert "run_failed" in events
