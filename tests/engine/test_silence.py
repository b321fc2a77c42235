"""`streams[].max_silence_s`: a busy stream that Salesforce stops feeding without a word is
resubscribed (the session starts over) and nothing is lost; a quiet stream without the
setting is left alone."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson

from sfstream_emulator import Emulator
from tests.conftest import MakeConfig
from tests.runners.process import start_run

CHANNEL = "/data/AccountChangeEvent"


def records(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return [line for line in lines if line["type"] == "RECORD"]


def log_events(log: Path, name: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_bytes().splitlines():
        if line.startswith(b"{"):
            entry = orjson.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    return found


async def wait_for(check: object, timeout_s: float = 30.0) -> None:
    assert callable(check)
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.05)


async def test_a_silently_dropped_subscription_is_resubscribed(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(
        emu,
        streams=[{"channel": CHANNEL, "initial_replay": "earliest", "max_silence_s": 3}],
        logging={"format": "json"},
    )
    assert config.sink.path is not None
    sink = tmp_path / config.sink.path
    log = tmp_path / "run.log"
    emu.create_record("Account", {"Name": "first"})
    process = await start_run(tmp_path / "sfstream.yaml", log)
    try:
        await wait_for(lambda: len(records(sink)) == 1)
        # Salesforce forgets the subscription and says nothing; events go on.
        async with asyncio.timeout(10):
            while emu.drop_subscriptions(CHANNEL) == 0:
                await asyncio.sleep(0.05)
        for index in range(3):
            emu.create_record("Account", {"Name": f"unseen-{index}"})
        await wait_for(lambda: len(records(sink)) == 4)
        silent = log_events(log, "stream_silent")
        assert len(silent) == 1
        assert silent[0]["stream"] == "sf.event.account_changes"
        assert silent[0]["channel"] == CHANNEL
        reconnects = log_events(log, "reconnecting")
        assert [entry["reason"] for entry in reconnects] == ["silence"]
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    names = [record["data"]["Name"] for record in records(sink)]  # type: ignore[index]
    assert names == ["first", "unseen-0", "unseen-1", "unseen-2"]
    published = [event["data"]["event"]["replayId"] for event in emu.published(CHANNEL)]
    assert [record["replay_id"] for record in records(sink)] == published


async def test_a_quiet_stream_without_the_setting_is_left_alone(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    await make_config(
        emu,
        streams=[
            {"channel": CHANNEL, "initial_replay": "earliest"},
            {"channel": "/data/ContactChangeEvent", "max_silence_s": 60},
        ],
        logging={"format": "json"},
    )
    log = tmp_path / "run.log"
    process = await start_run(tmp_path / "sfstream.yaml", log)
    try:
        await wait_for(lambda: len(log_events(log, "stream_started")) == 2)
        await asyncio.sleep(4)  # two long polls of the emulator's 2 s
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    assert log_events(log, "stream_silent") == []
    assert log_events(log, "reconnecting") == []
