"""Gap events healed: a real `sfstream run` reads the records of a gap event back through REST
(the emulator answers sObject Collections and SOQL) and writes them, flagged `meta.healed`,
before the checkpoint passes the gap event."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from sfstream_emulator import Emulator, EmulatorSettings
from tests.conftest import MakeConfig
from tests.runners.process import start_run

CHANNEL = "/data/AccountChangeEvent"
STREAM = "sf.event.account_changes"


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=18)


def messages(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def until(check: Any, what: str, timeout_s: float = 30.0) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(what) from None


async def run_with(
    emu: Emulator, make_config: MakeConfig, tmp_path: Path, on_gap_event: str
) -> tuple[asyncio.subprocess.Process, Path]:
    config = await make_config(
        emu, [{"channel": CHANNEL, "initial_replay": "earliest", "on_gap_event": on_gap_event}]
    )
    assert config.sink.path is not None
    process = await start_run(tmp_path / "sfstream.yaml", tmp_path / "run.log")
    return process, config.sink.path


async def stop(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await process.wait() == 0


async def until_past(sink: Path, replay_id: int) -> None:
    """Until the sink holds a STATE message at or past `replay_id`."""
    await until(
        lambda: any(m["type"] == "STATE" and m["replay_id"] >= replay_id for m in messages(sink)),
        "no checkpoint past the gap",
    )


async def test_a_gap_update_of_two_records_yields_both_healed_before_the_checkpoint(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    first = emu.create_record("Account", {"Name": "Acme", "Industry": "Energy"})
    second = emu.create_record("Account", {"Name": "Globex"})
    emu.update_record("Account", second, {"Name": "Globex Corp"})
    gap_replay = emu.emit_gap("Account", "GAP_UPDATE", [first, second])
    process, sink = await run_with(emu, make_config, tmp_path, "heal")
    try:
        await until(
            lambda: any(m.get("meta", {}).get("healed") for m in messages(sink)), "no healing"
        )
        await until_past(sink, gap_replay)
    finally:
        await stop(process)
    written = messages(sink)
    gap_at = next(
        i for i, m in enumerate(written) if m["type"] == "RECORD" and m["meta"].get("gap")
    )
    healed = [m for m in written if m["type"] == "RECORD" and m["meta"].get("healed")]
    assert [m["key"] for m in healed] == [first, second]
    assert {m["replay_id"] for m in healed} == {gap_replay}
    by_id = {m["key"]: m["data"] for m in healed}
    assert by_id[first]["Name"] == "Acme"
    assert by_id[first]["Industry"] == "Energy"
    assert by_id[second]["Name"] == "Globex Corp"  # the current value, not the created one
    assert all(m["meta"]["change_type"] == "GAP_UPDATE" for m in healed)
    assert not any(m["meta"]["deleted"] for m in healed)
    # Healed right after the gap event, before any STATE that passes it.
    positions = [i for i, m in enumerate(written) if m in healed]
    state_past = next(
        i for i, m in enumerate(written) if m["type"] == "STATE" and m["replay_id"] >= gap_replay
    )
    assert gap_at < min(positions)
    assert max(positions) < state_past


async def test_a_gap_delete_reports_the_record_deleted(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    gone = emu.create_record("Account", {"Name": "Initech"})
    emu.delete_record("Account", gone)
    emu.emit_gap("Account", "GAP_DELETE", [gone])
    process, sink = await run_with(emu, make_config, tmp_path, "heal")
    try:
        await until(
            lambda: any(m.get("meta", {}).get("healed") for m in messages(sink)), "no healing"
        )
    finally:
        await stop(process)
    (healed,) = [m for m in messages(sink) if m.get("meta", {}).get("healed")]
    assert healed["key"] == gone
    assert healed["data"] is None
    assert healed["meta"]["deleted"] is True


async def test_an_overflow_yields_a_gap_message_and_the_window_records(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    ids = [emu.create_record("Account", {"Name": f"Bulk {n}"}) for n in range(3)]
    overflow = emu.emit_gap("Account", "GAP_OVERFLOW", [])
    process, sink = await run_with(emu, make_config, tmp_path, "heal")
    try:
        await until(lambda: any(m["type"] == "GAP" for m in messages(sink)), "no GAP message")
        await until(
            lambda: len([m for m in messages(sink) if m.get("meta", {}).get("healed")]) >= 3,
            "the window's records were not read",
        )
    finally:
        await stop(process)
    written = messages(sink)
    (note,) = [m for m in written if m["type"] == "GAP"]
    assert note["reason"] == "gap_overflow"
    assert note["from_replay_id"] == overflow
    assert "Account" in note["detail"]
    healed = {m["key"] for m in written if m.get("meta", {}).get("healed")}
    assert set(ids) <= healed


async def test_flag_leaves_the_gap_event_alone(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    record = emu.create_record("Account", {"Name": "Umbrella"})
    gap_replay = emu.emit_gap("Account", "GAP_UPDATE", [record])
    process, sink = await run_with(emu, make_config, tmp_path, "flag")
    try:
        await until_past(sink, gap_replay)
    finally:
        await stop(process)
    written = messages(sink)
    assert any(m.get("meta", {}).get("gap") for m in written)
    assert not any(m.get("meta", {}).get("healed") for m in written)


async def test_a_transaction_past_the_threshold_overflows_and_is_healed(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """The emulator's first `overflow_threshold` changes of a transaction get change events,
    the rest one GAP_OVERFLOW per entity (header fields only), as in Salesforce; the run
    announces it and reads the window's records back."""
    settings = EmulatorSettings(poll_timeout_s=1.0, seed=18, overflow_threshold=3)
    async with Emulator(settings) as emu:
        account = emu.runtime.spec.object("Account")
        assert account is not None
        transaction = emu.store.transaction("com/salesforce/api/rest/62.0")
        ids = [transaction.create(account, {"Name": f"Cascade {n}"}) for n in range(5)]
        transaction.commit()
        published = [m["data"]["payload"]["ChangeEventHeader"] for m in emu.published(CHANNEL)]
        assert [h["changeType"] for h in published] == ["CREATE"] * 3 + ["GAP_OVERFLOW"]
        assert len({h["transactionKey"] for h in published}) == 1
        process, sink = await run_with(emu, make_config, tmp_path, "heal")
        try:
            await until(
                lambda: (
                    {m["key"] for m in messages(sink) if m.get("meta", {}).get("healed")}
                    >= set(ids[3:])
                ),
                "the overflowed records were not read back",
            )
        finally:
            await stop(process)
    written = messages(sink)
    (note,) = [m for m in written if m["type"] == "GAP"]
    assert note["reason"] == "gap_overflow"
    created = {m["key"] for m in written if m.get("meta", {}).get("change_type") == "CREATE"}
    assert created == set(ids[:3])
