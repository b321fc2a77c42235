"""The connector end to end, in-process, against the emulator with SQLite and a file sink."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from sfstream.bayeux import Event
from sfstream.engine.config import Config
from sfstream.engine.discovery import streams_from_config
from sfstream.engine.pipeline import RunResult
from sfstream.errors import InvalidReplayIdError
from sfstream.protocol import Message
from sfstream.runners.connector import Connector
from sfstream.runners.wiring import open_state
from sfstream.sinks import FileSink
from sfstream_emulator import Emulator, EmulatorSettings, Fault, FaultKind
from tests.conftest import MakeConfig

ACCOUNTS = "/data/AccountChangeEvent"
ORDERS = "/event/Order_Placed__e"


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=3)


def lines(config: Config) -> list[dict[str, Any]]:
    assert config.sink.path is not None
    if not config.sink.path.exists():
        return []
    return [orjson.loads(line) for line in config.sink.path.read_bytes().splitlines()]


def records(config: Config, stream: str | None = None) -> list[dict[str, Any]]:
    return [
        m
        for m in lines(config)
        if m["type"] == "RECORD" and (stream is None or m["stream"] == stream)
    ]


async def run_until(
    config: Config,
    done: Callable[[], bool],
    timeout_s: float = 20.0,
    connector: Connector | None = None,
) -> RunResult:
    """Run the connector until `done()` holds (checked as records land), then stop it."""
    stop = asyncio.Event()
    async with connector or Connector(config, run_id="test-run") as running:
        task = asyncio.create_task(running.run(stop))
        async with asyncio.timeout(timeout_s):
            while not done() and not task.done():
                await asyncio.sleep(0.05)
        stop.set()
        return await task


async def checkpoints(config: Config) -> dict[str, int]:
    store = open_state(config)
    try:
        return {k: v.replay_id for k, v in (await store.load(None)).items()}
    finally:
        await store.close()


def published_ids(emu: Emulator, channel: str) -> list[int]:
    return [m["data"]["event"]["replayId"] for m in emu.published(channel)]


async def test_records_checkpoints_and_resume_after_restart(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    config = await make_config(
        emu,
        [
            {"channel": ACCOUNTS, "initial_replay": "earliest"},
            {"channel": ORDERS, "initial_replay": "earliest", "key_field": "Order_Number__c"},
        ],
    )
    first = [emu.create_record("Account", {"Name": f"A{i}"}) for i in range(5)]
    emu.publish_event("Order_Placed__e", {"Order_Number__c": "O-1"})
    result = await run_until(config, lambda: len(records(config)) >= 6)
    assert result.ok, result.error
    state = await checkpoints(config)
    assert state == {
        "sf.event.account_changes": published_ids(emu, ACCOUNTS)[-1],
        "sf.event.order_placed": published_ids(emu, ORDERS)[-1],
    }
    # Published while the connector was down: the next run resumes from the checkpoints.
    later = emu.create_record("Account", {"Name": "while-down"})
    emu.publish_event("Order_Placed__e", {"Order_Number__c": "O-2"})
    result = await run_until(config, lambda: len(records(config)) >= 8)
    assert result.ok, result.error
    accounts = records(config, "sf.event.account_changes")
    assert [r["key"] for r in accounts] == [*first, later]
    assert [r["replay_id"] for r in accounts] == published_ids(emu, ACCOUNTS)
    orders = records(config, "sf.event.order_placed")
    assert [r["key"] for r in orders] == ["O-1", "O-2"]
    assert all(r["meta"]["run_id"] == "test-run" for r in accounts + orders)
    assert accounts[0]["meta"]["change_type"] == "CREATE"
    assert accounts[0]["data"]["Name"] == "A0"
    states = [m for m in lines(config) if m["type"] == "STATE"]
    assert states[-1]["replay_id"] in (
        published_ids(emu, ACCOUNTS)[-1],
        published_ids(emu, ORDERS)[-1],
    )


async def test_keys_by_channel_kind(sfstream_emulator: Emulator, make_config: MakeConfig) -> None:
    emu = sfstream_emulator
    config = await make_config(
        emu,
        [
            {"channel": ACCOUNTS, "initial_replay": "earliest"},
            {"channel": "/event/Low_Ink__e", "initial_replay": "earliest"},
            {"channel": "/topic/HighValueDeals", "initial_replay": "earliest"},
            {"channel": "/u/Notifications", "initial_replay": "earliest"},
        ],
    )
    ids = [emu.create_record("Account", {"Name": f"Same {i}"}) for i in range(3)]
    # One composite update with identical changes: Salesforce merges it into one event.
    transaction = emu.store.transaction("com/salesforce/api/rest/62.0")
    account = emu.runtime.spec.object("Account")
    assert account is not None
    for record_id in ids:
        transaction.update(account, record_id, {"Industry": "Energy"})
    transaction.commit()
    _, uuid = emu.publish_event("Low_Ink__e", {"Printer_Model__c": "XZO-5"})
    deal = emu.create_record(
        "Opportunity",
        {"Name": "Big", "Amount": 500000, "StageName": "Prospecting", "CloseDate": "2026-12-31"},
    )
    emu.push("/u/Notifications", "hello")
    result = await run_until(config, lambda: len(records(config)) >= 9)
    assert result.ok, result.error
    accounts = records(config, "sf.event.account_changes")
    merged = [r for r in accounts if r["meta"].get("merged_records") == 3]
    assert [r["key"] for r in merged] == ids
    assert len({r["replay_id"] for r in merged}) == 1
    (ink,) = records(config, "sf.event.low_ink")
    assert ink["key"] == uuid
    assert ink["meta"]["event_uuid"] == uuid
    (topic,) = records(config, "sf.topic.high_value_deals")
    assert topic["key"] == deal
    assert topic["meta"]["event_type"] == "created"
    (generic,) = records(config, "sf.channel.notifications")
    assert generic["key"] is None
    assert generic["data"] == {"payload": "hello"}


async def test_gap_events_pass_through_flagged(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu)
    record_id = emu.create_record("Account", {"Name": "x"})
    emu.emit_gap("Account", "GAP_UPDATE", [record_id])
    emu.emit_gap("Account", "GAP_OVERFLOW", [])
    result = await run_until(config, lambda: len(records(config)) >= 3)
    assert result.ok
    gaps = [r for r in records(config) if r["meta"]["gap"]]
    assert [(r["meta"]["change_type"], r["key"]) for r in gaps] == [
        ("GAP_UPDATE", record_id),
        ("GAP_OVERFLOW", "000000000000000AAA"),
    ]


async def expired_checkpoint(emu: Emulator, config: Config) -> int:
    """Give the account stream a checkpoint that Salesforce no longer retains."""
    emu.create_record("Account", {"Name": "old"})
    stale = published_ids(emu, ACCOUNTS)[-1]
    store = open_state(config)
    try:
        await store.commit({"sf.event.account_changes": stale})
    finally:
        await store.close()
    emu.advance(73 * 3600)
    emu.create_record("Account", {"Name": "retained"})
    return stale


async def test_expired_checkpoint_with_fail_policy_ends_the_run(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    config = await make_config(
        sfstream_emulator, [{"channel": ACCOUNTS, "on_invalid_replay": "fail"}]
    )
    stale = await expired_checkpoint(sfstream_emulator, config)
    result = await run_until(config, lambda: False)
    assert isinstance(result.error, InvalidReplayIdError)
    assert result.error.replay_id == stale
    assert result.error.channel == ACCOUNTS
    assert records(config) == []
    assert await checkpoints(config) == {"sf.event.account_changes": stale}


@pytest.mark.parametrize(
    ("policy", "names"), [("earliest", ["retained", "new"]), ("latest", ["new"])]
)
async def test_expired_checkpoint_falls_back_with_a_gap_message(
    sfstream_emulator: Emulator, make_config: MakeConfig, policy: str, names: list[str]
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu, [{"channel": ACCOUNTS, "on_invalid_replay": policy}])
    stale = await expired_checkpoint(emu, config)

    def published_new() -> bool:
        if any(m["type"] == "GAP" for m in lines(config)) and not published_new.done:
            emu.create_record("Account", {"Name": "new"})
            published_new.done = True  # type: ignore[attr-defined]
        return [r["data"]["Name"] for r in records(config)] == names

    published_new.done = False  # type: ignore[attr-defined]
    result = await run_until(config, published_new)
    assert result.ok, result.error
    (gap,) = [m for m in lines(config) if m["type"] == "GAP"]
    assert gap == {
        "type": "GAP",
        "stream": "sf.event.account_changes",
        "reason": "replay_id_rejected",
        "from_replay_id": stale,
        "to": policy,
        "detail": gap["detail"],
    }
    assert "you provided was invalid" in gap["detail"]
    assert await checkpoints(config) == {
        "sf.event.account_changes": published_ids(emu, ACCOUNTS)[-1]
    }


async def test_transient_faults_do_not_end_the_run(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu)
    emu.create_record("Account", {"Name": "first"})

    def progress() -> bool:
        got = len(records(config))
        if got == 1 and not emu.faults.queue and not progress.armed:
            progress.armed = True  # type: ignore[attr-defined]
            emu.faults.add(Fault(kind=FaultKind.DROP, channel="/meta/connect"))
            emu.faults.add(Fault(kind=FaultKind.HTTP_503, count=2))
            emu.revoke_access_tokens()
            emu.create_record("Account", {"Name": "second"})
        return got >= 2

    progress.armed = False  # type: ignore[attr-defined]
    result = await run_until(config, progress)
    assert result.ok, result.error
    assert [r["data"]["Name"] for r in records(config)] == ["first", "second"]


async def test_spent_allocation_waits_after_writing_what_arrived(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    """A spent delivery allocation does not end the run: what arrived is written and
    committed, and the client waits for the allocation's reset (probing hourly)."""
    emu = sfstream_emulator
    config = await make_config(emu)
    allocation = emu.runtime.allocations.event_deliveries
    allocation.maximum = allocation.used + 2
    for name in ("one", "two", "three"):
        emu.create_record("Account", {"Name": name})
    connector = Connector(config, run_id="test-run")
    result = await run_until(
        config,
        lambda: len(records(config)) == 2 and connector.telemetry.allocation_probe_at is not None,
        connector=connector,
    )
    assert result.ok, result.error
    assert [r["data"]["Name"] for r in records(config)] == ["one", "two"]
    assert await checkpoints(config) == {
        "sf.event.account_changes": published_ids(emu, ACCOUNTS)[1]
    }


async def test_a_lost_subscription_ends_or_not_by_policy(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    streams = [
        {"channel": ACCOUNTS, "initial_replay": "earliest"},
        {"channel": "/event/Missing__e"},
    ]
    config = await make_config(emu, streams)
    result = await run_until(config, lambda: False)
    assert result.error is not None
    assert "does not exist {/event/Missing__e}" in str(result.error)
    config = await make_config(
        emu, streams, runtime={"on_subscription_lost": "continue", "shutdown_timeout_s": 10}
    )
    emu.create_record("Account", {"Name": "goes on"})
    result = await run_until(config, lambda: len(records(config)) >= 1)
    assert result.ok, result.error
    assert [lost.channel for lost in result.lost] == ["/event/Missing__e"]


async def test_sink_ahead_of_checkpoint_causes_no_duplicate(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu)
    for name in ("a", "b", "c"):
        emu.create_record("Account", {"Name": name})
    await run_until(config, lambda: len(records(config)) >= 3)
    # Simulate a crash between the sink write and the checkpoint: the state lags.
    store = open_state(config)
    try:
        await store.commit({"sf.event.account_changes": published_ids(emu, ACCOUNTS)[0]})
    finally:
        await store.close()
    emu.create_record("Account", {"Name": "d"})
    with capture_logs() as logs:
        await run_until(config, lambda: len(records(config)) >= 4)
    assert [r["data"]["Name"] for r in records(config)] == ["a", "b", "c", "d"]
    assert any(e["event"] == "sink_ahead_of_checkpoint" for e in logs)


class SlowSink(FileSink):
    """A sink that takes its time: the pipeline must slow down, not lose anything."""

    async def write(self, messages: Sequence[Message]) -> None:
        await asyncio.sleep(0.2)
        await super().write(messages)


async def test_a_slow_sink_applies_backpressure_without_loss(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    config = await make_config(
        emu,
        batch={"max_records": 5, "max_wait_ms": 10, "max_inflight": 1},
        runtime={"max_pending_events": 10, "summary_interval_s": 3600, "shutdown_timeout_s": 30},
    )
    emu.generate("Account", 120, 64)
    connector = Connector(config, "slow")
    with capture_logs() as logs:
        async with connector as running:
            assert running.pipeline is not None
            assert config.sink.path is not None
            # The connector opened its own sink (to read what it holds): swap it for a slow one.
            await running.pipeline.sink.close()
            running.pipeline.sink = SlowSink(config.sink.path)
            stop = asyncio.Event()
            task = asyncio.create_task(running.run(stop))
            async with asyncio.timeout(60):
                while len(records(config)) < 120:
                    await asyncio.sleep(0.1)
            stop.set()
            result = await task
    assert result.ok, result.error
    assert [r["replay_id"] for r in records(config)] == published_ids(emu, ACCOUNTS)
    assert any(e["event"] == "backpressure" for e in logs)


async def test_events_at_or_below_the_last_emitted_replay_id_are_dropped(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    config = await make_config(sfstream_emulator)
    (spec,) = streams_from_config(config)
    async with Connector(config, "dedup") as connector:
        pipeline = connector.pipeline
        assert pipeline is not None
        await pipeline.positions()
        for replay_id in (10, 12, 12, 11, 15):
            pipeline._take(Event(ACCOUNTS, replay_id, {"payload": {}}), "now")
        batch = pipeline._batch
    stats = pipeline.stats[spec.id]
    assert [m.replay_id for m in batch.messages] == [10, 12, 15]  # type: ignore[union-attr]
    assert stats.deduplicated == 2
    assert stats.received == 5
