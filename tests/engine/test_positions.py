"""Where a run starts each stream: its checkpoint, what the sink holds, an operator's override.

The pipeline is built on a real SQLite store and a real file sink; `positions()` is what a
run calls at start-up, before it subscribes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from sfstream.auth import OAuthCredentials
from sfstream.client import StreamingClient
from sfstream.engine.config import StreamConfig
from sfstream.engine.discovery import spec_from_config
from sfstream.engine.pipeline import Pipeline, PipelineSettings
from sfstream.errors import StorageError
from sfstream.protocol import Record, StateMessage
from sfstream.sinks import FileSink
from sfstream.state import SqliteStateStore
from sfstream.streams import StreamSpec

STREAM = "sf.event.account_changes"
OTHER = "sf.event.order_placed"


def spec(channel: str, initial_replay: Literal["earliest", "latest"] = "earliest") -> StreamSpec:
    return spec_from_config(StreamConfig(channel=channel, initial_replay=initial_replay))


ACCOUNTS = spec("/data/AccountChangeEvent")
ORDERS = spec("/event/Order_Placed__e", "latest")


def pipeline(state: SqliteStateStore, sink: FileSink, *specs: StreamSpec) -> Pipeline:
    # The client is never opened: positions() and a refused start-up do not reach it.
    credentials = OAuthCredentials(
        login_url="http://127.0.0.1:9",
        client_id="id",
        client_secret=SecretStr("secret"),
        refresh_token=SecretStr("token"),
    )
    client = StreamingClient(credentials)
    return Pipeline(
        list(specs or [ACCOUNTS]),
        client=client,
        state=state,
        sink=sink,
        settings=PipelineSettings(),
        run_id="positions",
    )


def records(stream: str, *replay_ids: int) -> list[Record | StateMessage]:
    written: list[Record | StateMessage] = [
        Record(stream, f"001{r}", r, {"n": r}, {}, "2024-05-01T00:00:00Z") for r in replay_ids
    ]
    return [*written, StateMessage(stream, replay_ids[-1])]


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[SqliteStateStore]:
    async with SqliteStateStore(tmp_path / "state.db") as store:
        yield store


@pytest.fixture
def sink_path(tmp_path: Path) -> Path:
    return tmp_path / "records.jsonl"


async def test_the_sink_ahead_of_the_checkpoint_wins_without_an_override(
    state: SqliteStateStore, sink_path: Path
) -> None:
    async with FileSink(sink_path) as sink:
        await sink.write(records(STREAM, 1, 2, 3, 4, 5))
        await state.commit({STREAM: 3})  # a crash between the write and its checkpoint
        with capture_logs() as logs:
            assert await pipeline(state, sink).positions() == {STREAM: 5}
    assert any(e["event"] == "sink_ahead_of_checkpoint" for e in logs)
    assert (await state.load())[STREAM].replay_id == 5


async def test_an_operator_set_wins_over_the_sink_and_is_announced(
    state: SqliteStateStore, sink_path: Path
) -> None:
    async with FileSink(sink_path) as sink:
        await sink.write(records(STREAM, 1, 2, 3, 4, 5))
        await state.commit({STREAM: 5})
        await state.override(STREAM, 2)
        run = pipeline(state, sink)
        with capture_logs() as logs:
            assert await run.positions() == {STREAM: 2}
        assert run.ledger.last_admitted(STREAM) == 2
        assert not any(e["event"] == "sink_ahead_of_checkpoint" for e in logs)
        (note,) = [e for e in logs if e["event"] == "operator_override"]
        assert (note["reason"], note["from_replay_id"], note["to"]) == ("operator_set", 5, "2")
        gap = lines(sink_path)[-1]
        assert gap["type"] == "GAP"
        assert (gap["stream"], gap["reason"], gap["from_replay_id"], gap["to"]) == (
            STREAM,
            "operator_set",
            5,
            "2",
        )
        assert "deduplicate on (stream, replay_id, key)" in gap["detail"]
        # Taken over: the store holds the operator's position as a plain checkpoint.
        assert await state.overrides() == {}
        assert (await state.load())[STREAM].replay_id == 2
        # Events 3 and 4 come again; the run crashes before their checkpoint. From here on
        # the sink's high-water mark wins again, as after any crash.
        await sink.write(records(STREAM, 3, 4)[:-1])
        with capture_logs() as logs:
            assert await pipeline(state, sink).positions() == {STREAM: 4}
    assert any(e["event"] == "sink_ahead_of_checkpoint" for e in logs)
    assert sum(1 for line in lines(sink_path) if line["type"] == "GAP") == 1


async def test_a_set_ahead_of_the_sink_says_what_is_skipped(
    state: SqliteStateStore, sink_path: Path
) -> None:
    async with FileSink(sink_path) as sink:
        await sink.write(records(STREAM, 1, 2))
        await state.commit({STREAM: 2})
        await state.override(STREAM, 90)
        assert await pipeline(state, sink).positions() == {STREAM: 90}
    gap = lines(sink_path)[-1]
    assert (gap["from_replay_id"], gap["to"]) == (2, "90")
    assert "events after 2 up to 90 are skipped" in gap["detail"]


async def test_a_reset_starts_from_the_initial_replay_whatever_the_sink_holds(
    state: SqliteStateStore, sink_path: Path
) -> None:
    async with FileSink(sink_path) as sink:
        await sink.write(records(STREAM, 7, 8, 9))
        await state.commit({STREAM: 9})
        await state.override(STREAM, None)
        assert await pipeline(state, sink).positions() == {STREAM: -2}  # earliest
        gap = lines(sink_path)[-1]
        assert (gap["reason"], gap["from_replay_id"], gap["to"]) == (
            "operator_reset",
            9,
            "earliest",
        )
        assert await state.overrides() == {}
        assert await state.load() == {}
        # Stopped before any event: the GAP note is the stream's last line, so a restart
        # starts over too.
        assert await pipeline(state, sink).positions() == {STREAM: -2}


async def test_earliest_and_latest_stay_pending_until_the_first_checkpoint(
    state: SqliteStateStore, sink_path: Path
) -> None:
    async with FileSink(sink_path) as sink:
        await sink.write([*records(STREAM, 1, 2, 3), *records(OTHER, 5, 6)])
        await state.commit({STREAM: 3, OTHER: 6})
        await state.override(STREAM, -1)
        await state.override(OTHER, -2)
        for _ in range(2):  # a restart before any checkpoint starts there again
            positions = await pipeline(state, sink, ACCOUNTS, ORDERS).positions()
            assert positions == {STREAM: -1, OTHER: -2}
            assert set(await state.overrides()) == {STREAM, OTHER}
        gaps = [line for line in lines(sink_path) if line["type"] == "GAP"]
        assert [(g["stream"], g["to"]) for g in gaps[:2]] == [
            (STREAM, "latest"),
            (OTHER, "earliest"),
        ]
        await state.commit({STREAM: 10, OTHER: 11})
        assert await state.overrides() == {}
        assert await pipeline(state, sink, ACCOUNTS, ORDERS).positions() == {STREAM: 10, OTHER: 11}


async def test_a_run_that_never_started_reports_the_stored_checkpoint(
    state: SqliteStateStore, sink_path: Path
) -> None:
    await state.commit({STREAM: 7})
    async with FileSink(sink_path):  # another sink holds the file: the run is refused
        run = pipeline(state, FileSink(sink_path), ACCOUNTS, ORDERS)
        with capture_logs() as logs:
            result = await run.run(asyncio.Event())
    assert isinstance(result.error, StorageError)
    summaries = {e["stream"]: e for e in logs if e["event"] == "stream_summary"}
    assert summaries[STREAM]["checkpoint"] == 7
    assert summaries[STREAM]["started"] is False
    # A stream without a checkpoint says nothing about one, rather than "None".
    assert summaries[OTHER]["started"] is False
    assert "checkpoint" not in summaries[OTHER]
