"""`sfstream run` as a process: clean SIGTERM stops, and SIGKILL at random moments.

The emulator runs in the test's event loop; the connector is a real subprocess writing to a
file sink with SQLite state, exactly as in production.
"""

from __future__ import annotations

import asyncio
import random
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from sfstream.engine.config import Config
from sfstream_emulator import Emulator, EmulatorSettings, Fault, FaultKind
from tests.conftest import MakeConfig
from tests.runners.process import start_run

CHANNELS = {
    "/data/AccountChangeEvent": "sf.event.account_changes",
    "/event/Order_Placed__e": "sf.event.order_placed",
}


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=9)


def written(config: Config) -> list[dict[str, Any]]:
    assert config.sink.path is not None
    if not config.sink.path.exists():
        return []
    found = []
    for line in config.sink.path.read_bytes().splitlines():
        message = orjson.loads(line)
        if message["type"] == "RECORD":
            found.append(message)
    return found


def expected(emu: Emulator) -> dict[str, list[int]]:
    return {
        stream: [m["data"]["event"]["replayId"] for m in emu.published(channel)]
        for channel, stream in CHANNELS.items()
    }


async def wait_for(predicate: Any, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_sigterm_flushes_commits_and_exits_0(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(
        emu, [{"channel": c, "initial_replay": "earliest"} for c in CHANNELS]
    )
    for number in range(20):
        emu.create_record("Account", {"Name": f"A{number}"})
    process = await start_run(tmp_path / "sfstream.yaml", tmp_path / "run.log")
    await wait_for(lambda: len(written(config)) >= 20)
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        code = await process.wait()
    log = (tmp_path / "run.log").read_text()
    assert code == 0, log
    events = [orjson.loads(line)["event"] for line in log.splitlines()]
    assert "stopping" in events
    assert "run_stopped" in events
    assert emu.cometd.sessions == {}  # the client disconnected
    state = await _checkpoints(config)
    assert state["sf.event.account_changes"] == expected(emu)["sf.event.account_changes"][-1]


async def _checkpoints(config: Config) -> dict[str, int]:
    from sfstream.runners.wiring import open_state

    store = open_state(config)
    try:
        return {k: v.replay_id for k, v in (await store.load(None)).items()}
    finally:
        await store.close()


async def test_bad_config_exits_2_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("salesforce: {client_id: x}\nstreams: [{channel: /data/Nope}]\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfstream.cli",
        "run",
        "--config",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 2
    text = stderr.decode()
    assert "configuration error" in text
    assert "streams.0.channel" in text
    assert "salesforce" in text
    assert "Traceback" not in text
    assert stdout == b""


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sigkill_at_random_moments_loses_and_repeats_nothing(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path, seed: int
) -> None:
    emu = sfstream_emulator
    rng = random.Random(seed)
    config = await make_config(
        emu,
        [{"channel": c, "initial_replay": "earliest"} for c in CHANNELS],
        batch={"max_records": rng.choice([1, 7, 50]), "max_wait_ms": rng.choice([5, 50])},
    )
    config_path = tmp_path / "sfstream.yaml"
    log = tmp_path / "run.log"

    async def publish(count: int) -> None:
        for number in range(count):
            if rng.random() < 0.5:
                emu.create_record("Account", {"Name": f"A{seed}-{number}"})
            else:
                emu.publish_event("Order_Placed__e", {"Order_Number__c": f"O{number}"})
            if number % 10 == 0:
                await asyncio.sleep(0.01)

    publisher = asyncio.create_task(publish(300))
    for _ in range(3):
        process = await start_run(config_path, log)
        await asyncio.sleep(rng.uniform(0.8, 2.0))
        process.send_signal(signal.SIGKILL)
        await process.wait()
    await publisher
    process = await start_run(config_path, log)
    # SIGTERM is handled once the process runs; wait for this run to start streaming.
    runs = log.read_text().count('"run_started"') if log.exists() else 0
    await wait_for(lambda: log.read_text().count('"run_started"') > runs)
    want = expected(emu)
    await wait_for(
        lambda: (
            sum(len({r["replay_id"] for r in written(config) if r["stream"] == s}) for s in want)
            >= sum(len(v) for v in want.values())
        ),
        timeout_s=60,
    )
    process.send_signal(signal.SIGTERM)
    assert await process.wait() == 0
    records = written(config)
    for stream, ids in want.items():
        mine = [(r["replay_id"], r["key"]) for r in records if r["stream"] == stream]
        assert sorted({replay for replay, _ in mine}) == ids, f"{stream} lost events"
        assert len(mine) == len(set(mine)), f"{stream} has duplicates"
        assert [replay for replay, _ in mine] == sorted(replay for replay, _ in mine)
    state = await _checkpoints(config)
    assert state == {stream: ids[-1] for stream, ids in want.items()}


async def test_a_closed_stdout_ends_the_run_with_one_clear_line(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    await make_config(emu, sink={"type": "stdout"})
    emu.generate("Account", 3000, 200)
    stderr_file = tmp_path / "stderr.log"
    # Exactly what a user does: pipe the records into a reader that stops after one line.
    script = (
        f"{shlex.quote(sys.executable)} -m sfstream.cli run --config "
        f"{shlex.quote(str(tmp_path / 'sfstream.yaml'))} 2>{shlex.quote(str(stderr_file))}"
        ' | head -n 1; echo "exit=${PIPESTATUS[0]}"'
    )
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", script, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        stdout, _ = await process.communicate()
    first, status = stdout.decode().splitlines()
    assert orjson.loads(first)["type"] == "SCHEMA"  # a stream's schema precedes its records
    assert status == "exit=1"
    stderr = stderr_file.read_text()
    assert "the reader went away" in stderr
    assert "Traceback" not in stderr
    assert "Exception ignored" not in stderr


async def test_a_repeated_sigterm_does_not_abort_a_clean_shutdown(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu, [{"channel": "/data/AccountChangeEvent"}])
    process = await start_run(tmp_path / "sfstream.yaml", tmp_path / "run.log")
    log = tmp_path / "run.log"
    await wait_for(lambda: log.exists() and '"stream_started"' in log.read_text())
    for number in range(10):
        emu.create_record("Account", {"Name": f"A{number}"})
    await wait_for(lambda: len(written(config)) >= 10)
    # A slow /meta/disconnect keeps the clean shutdown going for a while.
    emu.faults.add(Fault(kind=FaultKind.STALL, channel="/meta/disconnect", seconds=2.0))
    # Twice in a row, as when a supervisor and a shell both forward the signal.
    process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        code = await process.wait()
    text = log.read_text()
    assert code == 0, text
    events = [orjson.loads(line)["event"] for line in text.splitlines()]
    assert "stopping" in events
    assert "stopping_already" in events
    assert "shutdown_timeout" not in events
    assert "run_stopped" in events
