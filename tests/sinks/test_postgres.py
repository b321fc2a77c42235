"""PostgresSink against the local server: the conformance suite, idempotence, the one
transaction with the PostgreSQL state store, fencing, dropped connections, refusals, and the
exactly-once audit of a real `sfstream run` killed twice.

The server comes from `SFSTREAM_TEST_POSTGRES_DSN` (default: trust auth on 127.0.0.1:5432,
database `test`). Every test works in a schema of its own and drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sfstream.errors import (
    ConfigError,
    EncodingError,
    LeaseLostError,
    StorageError,
    StorageUnavailableError,
)
from sfstream.protocol import GapMessage, Message, Record, SchemaMessage, StateMessage
from sfstream.sinks import Sink
from sfstream.sinks.postgres import PostgresSink
from sfstream.state.base import Fence
from sfstream.state.pg import redact_dsn
from sfstream.state.postgres import PostgresStateStore
from sfstream.testing.sinks import SINK_CHECKS, SinkCheck, check_sink
from sfstream_emulator import Emulator, EmulatorSettings
from tests.conftest import MakeConfig
from tests.runners.process import start_run

DSN = os.environ.get("SFSTREAM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "pw-Zq81-never-shown"
EMITTED_AT = "2024-05-01T12:00:00.123Z"  # the engine's form

# How a reader gets the messages back, oldest first (docs/sinks.md gives the same query):
# `message` when set, else the RECORD or STATE message from the columns.
READ_BACK = """
SELECT COALESCE(message, CASE type
    WHEN 'STATE' THEN json_build_object('type', type, 'stream', stream, 'replay_id', replay_id)
    ELSE json_build_object(
        'type', type, 'stream', stream, 'key', key, 'replay_id', replay_id,
        'data', data, 'meta', meta,
        'emitted_at', to_char(emitted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
    END)
FROM {table} ORDER BY seq
"""


@pytest.fixture
async def admin() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    try:
        conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {redact_dsn(DSN)} ({exc}); start it with "
            f"`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
            f"or set SFSTREAM_TEST_POSTGRES_DSN"
        )
    async with conn:
        yield conn


@pytest.fixture
async def schema(admin: psycopg.AsyncConnection[Any]) -> AsyncIterator[str]:
    """A schema of the test's own, dropped with everything in it afterwards."""
    name = f"sfstream_sink_{uuid.uuid4().hex[:12]}"
    await admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    await admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def table(schema: str) -> str:
    return f"{schema}.records"


@pytest.fixture
def state_table(schema: str) -> str:
    return f"{schema}.checkpoints"


def ident(table: str) -> sql.Identifier:
    return sql.Identifier(*table.split("."))


async def read_back(admin: psycopg.AsyncConnection[Any], table: str) -> list[dict[str, Any]]:
    cursor = await admin.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    found = await cursor.fetchone()
    if found is None or not found[0]:
        return []
    cursor = await admin.execute(sql.SQL(READ_BACK).format(table=ident(table)))
    return [row[0] for row in await cursor.fetchall()]


async def rows(
    admin: psycopg.AsyncConnection[Any], table: str, columns: str = "type, stream, replay_id"
) -> list[tuple[Any, ...]]:
    cursor = await admin.execute(
        sql.SQL("SELECT " + columns + " FROM {} ORDER BY seq").format(ident(table))
    )
    return await cursor.fetchall()


class PostgresHarness:
    """Sinks on one table; read back with the documented query, not through the sink."""

    def __init__(
        self, admin: psycopg.AsyncConnection[Any], table: str, state_table: str | None = None
    ) -> None:
        self.admin = admin
        self.table = table
        self.state_table = state_table

    async def open(self) -> Sink:
        return PostgresSink(DSN, self.table, state_table=self.state_table)

    async def read_back(self) -> list[dict[str, Any]]:
        return await read_back(self.admin, self.table)


def record(stream: str, replay_id: int, key: str | None = None, **meta: Any) -> Record:
    data = {"Id": key, "n": replay_id}
    return Record(stream, key, replay_id, data, {"run_id": "r1", **meta}, EMITTED_AT)


def messages_of(error: BaseException) -> str:
    """The text of an error and of everything chained to it."""
    texts: list[str] = []
    current: BaseException | None = error
    while current is not None:
        texts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


# -- the conformance suite ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "check"), SINK_CHECKS, ids=[name for name, _ in SINK_CHECKS])
async def test_conformance(
    name: str, check: SinkCheck, admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    await check(PostgresHarness(admin, table))


async def test_whole_suite_on_one_table_with_the_state_in_the_same_database(
    admin: psycopg.AsyncConnection[Any], table: str, state_table: str
) -> None:
    await check_sink(PostgresHarness(admin, table, state_table))
    # Every STATE message written became its stream's checkpoint.
    async with PostgresStateStore(DSN, state_table) as store:
        checkpoints = await store.load()
    cursor = await admin.execute(
        sql.SQL(
            "SELECT DISTINCT ON (stream) stream, replay_id FROM {} WHERE type = 'STATE'"
            " ORDER BY stream, seq DESC"
        ).format(ident(table))
    )
    states = {str(stream): int(replay_id) for stream, replay_id in await cursor.fetchall()}
    assert states
    assert {stream: c.replay_id for stream, c in checkpoints.items()} == states


# -- the layout -----------------------------------------------------------------------------


async def test_columns_of_each_kind_of_message(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    change = Record(
        "sf.cdc",
        "001A",
        11,
        {"ChangeEventHeader": {"changeType": "UPDATE", "commitTimestamp": 1714564800123}},
        {
            "channel": "/data/AccountChangeEvent",
            "change_type": "UPDATE",
            "commit_timestamp": 1714564800123,
            "run_id": "run-1",
        },
        EMITTED_AT,
    )
    event = Record(
        "sf.event",
        "uuid-1",
        12,
        {"CreatedDate": "2024-05-01T10:00:00.000Z", "Order__c": "O-1"},
        {"channel": "/event/Order__e", "event_uuid": "uuid-1", "run_id": "run-1"},
        EMITTED_AT,
    )
    topic = Record(
        "sf.topic",
        "001B",
        13,
        {"Id": "001B"},
        {
            "channel": "/topic/T",
            "event_type": "created",
            "created_date": "2024-05-01T09:00:00.000+0000",
            "run_id": "run-1",
        },
        EMITTED_AT,
    )
    gap = GapMessage("sf.cdc", "replay_id_expired", 7, "earliest", detail="gone")
    schema = SchemaMessage("sf.cdc", "sf.cdc", 3, {"type": "object"})
    state = StateMessage("sf.cdc", 11)
    async with PostgresSink(DSN, table) as sink:
        await sink.write([change, event, topic, gap, schema, state])
    found = await rows(
        admin,
        table,
        "type, stream, replay_id, key, change_type, event_time, run_id, emitted_at, data, meta,"
        " message",
    )
    moments = [row[5].timestamp() if row[5] is not None else None for row in found]
    assert moments == [1714564800.123, 1714557600.0, 1714554000.0, None, None, None]
    assert [row[:5] for row in found] == [
        ("RECORD", "sf.cdc", 11, "001A", "UPDATE"),
        ("RECORD", "sf.event", 12, "uuid-1", None),
        ("RECORD", "sf.topic", 13, "001B", None),
        ("GAP", "sf.cdc", 7, None, None),
        ("SCHEMA", "sf.cdc", None, None, None),
        ("STATE", "sf.cdc", 11, None, None),
    ]
    records, notes = found[:3], found[3:]
    for row, message in zip(records, [change, event, topic], strict=True):
        assert row[6] == "run-1"
        assert row[7].timestamp() == 1714564800.123
        assert (row[8], row[9], row[10]) == (message.data, message.meta, None)
    assert [row[8:] for row in notes] == [
        (
            None,
            None,
            {
                "type": "GAP",
                "stream": "sf.cdc",
                "reason": "replay_id_expired",
                "from_replay_id": 7,
                "to": "earliest",
                "detail": "gone",
            },
        ),
        (
            None,
            None,
            {
                "stream": "sf.cdc",
                "subject": "sf.cdc",
                "version": 3,
                "schema": {"type": "object"},
                "diff": [],
                "breaking": False,
                "schema_id": None,
                "type": "SCHEMA",
            },
        ),
        (None, None, None),
    ]


async def test_what_jsonb_and_text_cannot_hold_is_kept_whole_in_message(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    nul = Record("s", "k\x00", 1, {"Name": "a\x00b", "k\x00": 1}, {"x": "\x00"}, EMITTED_AT)
    other_time = Record("s", "k2", 2, {"Name": "c"}, {}, "2024-05-01T12:00:00Z")
    async with PostgresSink(DSN, table) as sink:
        await sink.write([nul, other_time])
    found = await rows(admin, table, "key, data, meta, message IS NOT NULL")
    assert found == [
        ("k\ufffd", {"Name": "a\ufffdb", "k\ufffd": 1}, {"x": "\ufffd"}, True),
        ("k2", {"Name": "c"}, {}, True),
    ]
    back = await read_back(admin, table)
    assert back[0]["key"] == "k\x00"
    assert back[0]["data"] == {"Name": "a\x00b", "k\x00": 1}
    assert back[1]["emitted_at"] == "2024-05-01T12:00:00Z"


async def test_an_unencodable_message_fails_the_batch_before_anything_is_sent(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    bad = Record("s", None, 2, {"x": object()}, {}, EMITTED_AT)
    async with PostgresSink(DSN, table) as sink:
        with pytest.raises(EncodingError, match="replayId 2 of stream s"):
            await sink.write([record("s", 1), bad])
    assert await read_back(admin, table) == []


# -- idempotence and high-water marks ---------------------------------------------------------


async def test_a_batch_written_twice_holds_each_record_once(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    batch: list[Message] = [
        record("a", 1, "001"),
        # One event, several records (a merged change event): one row per key.
        record("a", 2, "002"),
        record("a", 2, "003"),
        # Records without a key are one per replayId too.
        record("b", 5),
        StateMessage("a", 2),
        StateMessage("b", 5),
    ]
    async with PostgresSink(DSN, table) as sink:
        await sink.write(batch)
        marks = await sink.high_watermarks(["a", "b"])
        await sink.write(batch)
        assert await sink.high_watermarks(["a", "b"]) == marks == {"a": 2, "b": 5}
    found = await rows(admin, table, "type, stream, replay_id, key")
    assert [row for row in found if row[0] == "RECORD"] == [
        ("RECORD", "a", 1, "001"),
        ("RECORD", "a", 2, "002"),
        ("RECORD", "a", 2, "003"),
        ("RECORD", "b", 5, None),
    ]
    # STATE messages are notes of progress: written again, they are appended again.
    assert [row for row in found if row[0] == "STATE"] == [
        ("STATE", "a", 2, None),
        ("STATE", "b", 5, None),
    ] * 2


async def test_high_watermarks_read_one_index_entry_per_stream(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    async with PostgresSink(DSN, table) as sink:
        await sink.write([record("quiet", 1), StateMessage("quiet", 2)])
        for start in range(0, 20_000, 2_000):
            await sink.write([record(f"s{i % 5}", start + i) for i in range(2_000)])
        await admin.execute(sql.SQL("ANALYZE {}").format(ident(table)))
        assert await sink.high_watermarks(["s0", "s4", "quiet"]) == {
            "s0": 19_995,
            "s4": 19_999,
            "quiet": 2,
        }
        # The sink's own statement, explained: one index entry read per stream, even for a
        # stream whose latest row is far back.
        marks = sink._queries.marks.as_string(admin)
    cursor = await admin.execute(
        sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) " + marks),
        (["quiet", "s3"],),
    )
    found = await cursor.fetchone()
    assert found is not None
    scans = list(_nodes(found[0][0]["Plan"], "Index Scan"))
    assert [scan["Index Name"] for scan in scans] == ["records_stream_seq"]
    assert scans[0]["Scan Direction"] == "Backward"
    assert scans[0]["Actual Loops"] == 2
    assert scans[0]["Actual Rows"] == 1


def _nodes(plan: dict[str, Any], kind: str) -> Iterator[dict[str, Any]]:
    if plan["Node Type"] == kind:
        yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child, kind)


# -- one transaction with the PostgreSQL state store ------------------------------------------


async def test_records_and_checkpoints_land_in_one_transaction(
    admin: psycopg.AsyncConnection[Any], table: str, state_table: str
) -> None:
    async with PostgresStateStore(DSN, state_table) as store:
        await store.commit({"a": 1})
        await store.override("b", 3)  # pending: the run's first checkpoint takes it over
        cdc = {"commit_timestamp": 1714564800500}
        async with PostgresSink(DSN, table, state_table=state_table) as sink:
            await sink.write(
                [
                    record("a", 7, "x", **cdc),
                    record("b", 8, "y"),
                    StateMessage("a", 7),
                    StateMessage("b", 8),
                ]
            )
        checkpoints = await store.load()
        assert {s: (c.replay_id, c.event_time) for s, c in checkpoints.items()} == {
            "a": (7, 1714564800.5),
            "b": (8, None),
        }
        assert await store.overrides() == {}
        # A checkpoint the database refuses takes the batch's records with it.
        await admin.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT below_100 CHECK (replay_id < 100)").format(
                ident(state_table)
            )
        )
        before = await read_back(admin, table)
        async with PostgresSink(DSN, table, state_table=state_table) as sink:
            with pytest.raises(StorageError, match="below_100") as caught:
                await sink.write([record("a", 100, "z"), StateMessage("a", 100)])
        assert not caught.value.retryable
        assert await read_back(admin, table) == before
        assert (await store.load(["a"]))["a"].replay_id == 7


async def test_a_fenced_write_with_a_stale_token_is_refused_and_recorded(
    admin: psycopg.AsyncConnection[Any], table: str, state_table: str
) -> None:
    async with PostgresStateStore(DSN, state_table) as store:
        first = await store.acquire(["a", "b"], "w1", 30)
        await store.release({"a": first["a"].token}, "w1")
        taken = await store.acquire(["a"], "w2", 30)
        assert taken["a"].token == first["a"].token + 1
        batch: list[Message] = [
            record("b", 4, "x"),
            record("a", 5, "y"),
            StateMessage("a", 5),
            StateMessage("b", 4),
        ]
        zombie = Fence("w1", {"a": first["a"].token, "b": first["b"].token})
        async with PostgresSink(DSN, table, state_table=state_table) as sink:
            with pytest.raises(LeaseLostError, match="stream a: the lease of worker w1") as caught:
                await sink.write(batch, zombie)
            assert caught.value.streams == ["a"]
            assert await read_back(admin, table) == []
            assert await store.load() == {}
            leases = await store.leases()
            assert (leases["a"].refused, leases["a"].refused_token) == (1, first["a"].token)
            assert leases["a"].refused_worker == "w1"
            assert leases["a"].refused_at is not None
            assert leases["b"].refused == 0
            # The current owners' tokens pass; a stream without a token is written but not
            # checkpointed (its owner commits it).
            await sink.write(batch[:1] + batch[3:], Fence("w1", {"b": first["b"].token}))
            await sink.write(batch[1:3], Fence("w2", {"a": taken["a"].token}))
            await sink.write([record("c", 9), StateMessage("c", 9)], Fence("w2", {}))
        assert len(await read_back(admin, table)) == 6
        checkpoints = await store.load()
        assert {s: c.replay_id for s, c in checkpoints.items()} == {"a": 5, "b": 4}


async def test_a_fence_without_a_state_table_is_not_checked(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    async with PostgresSink(DSN, table) as sink:
        await sink.write([record("a", 1)], Fence("w1", {"a": 1}))
    assert len(await read_back(admin, table)) == 1


async def test_a_fence_is_checked_before_anything_is_sent(table: str, state_table: str) -> None:
    async with PostgresSink(DSN, table, state_table=state_table) as sink:
        with pytest.raises(ConfigError, match="lease token"):
            await sink.write([record("a", 1)], Fence("w1", {"a": 0}))


# -- dropped connections ----------------------------------------------------------------------


class DroppingProxy:
    """A TCP proxy to the server that cuts the connection carrying `trigger` once: before
    passing it on, or after (the server acts on it; its reply is lost). With `hold`, only
    the client's side is cut: the server's stays open (as in a network partition) until
    `release()`."""

    def __init__(self) -> None:
        params = conninfo_to_dict(DSN)
        self.target = (str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432))
        self.trigger: bytes | None = None
        self.pass_on = False
        self.hold = False
        self.held: list[asyncio.StreamWriter] = []
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def dsn(self, **params: str) -> str:
        # Unencrypted, so that the proxy sees the statements.
        return make_conninfo(
            DSN, host="127.0.0.1", port=str(self.port), sslmode="disable", **params
        )

    def arm(self, trigger: bytes, *, pass_on: bool, hold: bool = False) -> None:
        self.trigger, self.pass_on, self.hold = trigger, pass_on, hold

    def release(self) -> None:
        for writer in self.held:
            writer.close()
        self.held.clear()

    async def __aenter__(self) -> DroppingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self.release()
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        cut = asyncio.Event()

        async def upstream() -> None:
            while data := await reader.read(1 << 16):
                trigger = self.trigger
                if trigger is not None and trigger in data:
                    self.trigger = None
                    self.cuts += 1
                    if self.hold:
                        self.held.append(up_writer)
                    cut.set()  # the reply, if any, is not passed back
                    if self.pass_on:
                        up_writer.write(data)
                        await up_writer.drain()
                        await asyncio.sleep(0.5)  # the server acts on it (or replies sooner)
                    return
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while (data := await up_reader.read(1 << 16)) and not cut.is_set():
                writer.write(data)
                await writer.drain()

        try:
            pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                pump.cancel()
        finally:
            for end in (writer, up_writer):
                if end not in self.held:
                    with contextlib.suppress(OSError):
                        end.close()
            self._tasks.discard(task)


@pytest.fixture
async def proxy() -> AsyncIterator[DroppingProxy]:
    async with DroppingProxy() as running:
        yield running


def batch_of(stream: str, first: int, count: int) -> list[Message]:
    return [
        *(record(stream, first + i) for i in range(count)),
        StateMessage(stream, first + count - 1),
    ]


async def test_a_connection_dropped_before_the_commit_is_written_again(
    admin: psycopg.AsyncConnection[Any], table: str, proxy: DroppingProxy
) -> None:
    async with PostgresSink(proxy.dsn(), table) as sink:
        proxy.arm(b"INSERT INTO", pass_on=False)
        await sink.write(batch_of("a", 1, 100))
        assert proxy.cuts == 1
        assert await sink.high_watermarks(["a"]) == {"a": 100}
    assert await rows(admin, table, "type, replay_id") == [
        *(("RECORD", i) for i in range(1, 101)),
        ("STATE", 100),
    ]


async def test_a_connection_dropped_after_the_commit_is_not_written_again(
    admin: psycopg.AsyncConnection[Any], table: str, state_table: str, proxy: DroppingProxy
) -> None:
    async with PostgresSink(proxy.dsn(), table, state_table=state_table) as sink:
        proxy.arm(b"COMMIT", pass_on=True)
        await sink.write(batch_of("a", 1, 100))
        assert proxy.cuts == 1
        await sink.write(batch_of("a", 101, 1))
    # Each message once: the server said the first transaction had committed.
    assert await rows(admin, table, "type, replay_id") == [
        *(("RECORD", i) for i in range(1, 101)),
        ("STATE", 100),
        ("RECORD", 101),
        ("STATE", 101),
    ]
    async with PostgresStateStore(DSN, state_table) as store:
        assert (await store.load(["a"]))["a"].replay_id == 101


async def test_a_refusal_whose_reply_was_lost_is_still_reported(
    admin: psycopg.AsyncConnection[Any], table: str, state_table: str, proxy: DroppingProxy
) -> None:
    async with PostgresStateStore(DSN, state_table) as store:
        await store.acquire(["a"], "w1", 0.001)
        await asyncio.sleep(0.01)
        await store.acquire(["a"], "w2", 30)
        async with PostgresSink(proxy.dsn(), table, state_table=state_table) as sink:
            proxy.arm(b"COMMIT", pass_on=True)
            with pytest.raises(LeaseLostError) as caught:
                await sink.write(batch_of("a", 1, 3), Fence("w1", {"a": 1}))
        assert proxy.cuts == 1
        assert caught.value.streams == ["a"]
        assert (await store.leases(["a"]))["a"].refused == 1  # recorded once
    assert await read_back(admin, table) == []


async def test_a_write_the_server_still_holds_open_is_reported_unknown_and_retryable(
    admin: psycopg.AsyncConnection[Any], table: str, proxy: DroppingProxy
) -> None:
    async with PostgresSink(proxy.dsn(), table) as sink:
        proxy.arm(b"INSERT INTO", pass_on=True, hold=True)
        with pytest.raises(StorageUnavailableError, match="outcome is unknown") as caught:
            await sink.write(batch_of("a", 1, 10))
        assert proxy.cuts == 1
        assert caught.value.retryable
        assert await read_back(admin, table) == []  # not committed, not aborted either
        proxy.release()  # the server notices the client is gone and rolls back
        await sink.write(batch_of("a", 1, 10))
    assert len(await read_back(admin, table)) == 11


async def test_a_terminated_session_is_replaced_once(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    name = f"sfstream-test-{uuid.uuid4().hex[:8]}"
    async with PostgresSink(make_conninfo(DSN, application_name=name), table) as sink:
        for stream in ("a", "b"):
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (name,),
            )
            await sink.write(batch_of(stream, 1, 2))
            assert await sink.high_watermarks([stream]) == {stream: 2}
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        )
        assert await sink.high_watermarks(["a", "b"]) == {"a": 2, "b": 2}
    assert len(await read_back(admin, table)) == 6


async def test_commits_wait_for_the_disk_even_where_the_server_says_not_to(table: str) -> None:
    async with PostgresSink(make_conninfo(DSN, options="-c synchronous_commit=off"), table) as sink:
        await sink.write([record("a", 1)])
        conn = sink._db._conn  # read only: the session the sink writes with
        assert conn is not None
        cursor = await conn.execute("SHOW synchronous_commit")
        assert await cursor.fetchone() == ("on",)


# -- refusals ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("call", ["open", "write", "high_watermarks"])
async def test_an_unreachable_server_is_retryable_and_hides_the_password(
    call: str, table: str
) -> None:
    port = free_port()
    sink = PostgresSink(make_conninfo(DSN, password=SECRET, port=str(port)), table)
    assert SECRET not in repr(sink)
    attempt: Callable[[], Awaitable[object]] = {
        "open": sink.open,
        "write": lambda: sink.write([record("a", 1)]),
        "high_watermarks": lambda: sink.high_watermarks(["a"]),
    }[call]
    with pytest.raises(StorageUnavailableError) as caught:
        await attempt()
    await sink.close()
    assert caught.value.retryable
    assert f"port {port}" in str(caught.value)
    action = {"open": "open", "write": "write", "high_watermarks": "read high-water marks"}
    assert str(caught.value).startswith("PostgreSQL sink postgresql://")
    assert f" table {table}: {action[call]} failed: " in str(caught.value)
    assert SECRET not in messages_of(caught.value)


async def test_a_missing_database_is_terminal() -> None:
    dbname = f"sfstream_missing_{uuid.uuid4().hex[:8]}"
    sink = PostgresSink(make_conninfo(DSN, password=SECRET, dbname=dbname))
    with pytest.raises(StorageError, match="does not exist") as caught:
        await sink.write([record("a", 1)])
    await sink.close()
    assert not caught.value.retryable
    assert SECRET not in messages_of(caught.value)


async def test_a_table_of_another_shape_is_terminal(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    await admin.execute(sql.SQL("CREATE TABLE {} (id int)").format(ident(table)))
    sink = PostgresSink(DSN, table)
    with pytest.raises(StorageError, match='column "type" does not exist') as caught:
        await sink.write([record("a", 1)])
    await sink.close()
    assert not caught.value.retryable


def test_repr_and_database_hide_the_password() -> None:
    sink = PostgresSink(f"postgresql://sf:{SECRET}@db.example.com:5433/out", "raw.records")
    assert sink.database == "postgresql://sf@db.example.com:5433/out"
    assert repr(sink) == (
        "PostgresSink('postgresql://sf@db.example.com:5433/out', table='raw.records')"
    )
    shared = PostgresSink(f"host=db password={SECRET}", state_table="state.checkpoints")
    assert repr(shared) == (
        "PostgresSink('postgresql://db/', table='sfstream_records', "
        "state_table='state.checkpoints')"
    )


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=db.example.com password={SECRET} nonsense",
        f"postgresql://sf:{SECRET}@db.example.com/out?password={SECRET}&nonsense=1",
    ],
)
def test_a_malformed_dsn_hides_the_password(dsn: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PostgresSink(dsn)
    assert SECRET not in messages_of(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize(
    ("table", "state_table"),
    [
        ("", None),
        ("a.b.c", None),
        ("records; DROP TABLE x", None),
        ("x" * 53, None),
        ("records", "1st"),
    ],
)
def test_invalid_table_names(table: str, state_table: str | None) -> None:
    with pytest.raises(ConfigError, match="table name"):
        PostgresSink(DSN, table, state_table=state_table)


def test_without_psycopg_the_sink_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigError, match=r"pip install 'sfstream\[postgres\]'"):
        PostgresSink(DSN)


# -- exactly once, through SIGKILLs --------------------------------------------------------------

AUDITED = {
    "/data/AccountChangeEvent": ("Account", "sf.event.account_changes"),
    "/event/Order_Placed__e": ("Order_Placed__e", "sf.event.order_placed"),
}


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=11)


async def held_records(admin: psycopg.AsyncConnection[Any], table: str) -> dict[str, list[int]]:
    """Each stream's RECORD replayIds, in write order, from the table alone."""
    found: dict[str, list[int]] = {stream: [] for _, stream in AUDITED.values()}
    cursor = await admin.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    exists = await cursor.fetchone()
    if exists is None or not exists[0]:
        return found
    cursor = await admin.execute(
        sql.SQL("SELECT stream, replay_id FROM {} WHERE type = 'RECORD' ORDER BY seq").format(
            ident(table)
        )
    )
    for stream, replay_id in await cursor.fetchall():
        found.setdefault(str(stream), []).append(int(replay_id))
    return found


@pytest.mark.parametrize("state", ["sqlite", "postgres"])
async def test_sigkill_twice_mid_stream_loses_and_repeats_nothing(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    admin: psycopg.AsyncConnection[Any],
    schema: str,
    state: str,
) -> None:
    emu = sfstream_emulator
    rng = random.Random(state)
    table = f"{schema}.records"
    if state == "sqlite":
        settings: dict[str, Any] = {"path": "state.db"}
        sink: dict[str, Any] = {"type": "postgres", "dsn": DSN, "table": table}
    else:
        # The same database: the sink commits the checkpoints with the records, fenced by
        # the leases a PostgreSQL state takes (short, so that a restart takes the killed
        # worker's streams over soon). The schema registry lives there too.
        settings = {
            "backend": "postgres",
            "dsn": DSN,
            "table": f"{schema}.checkpoints",
            "lease_ttl_s": 3,
        }
        sink = {"type": "postgres", "table": table}
    config = await make_config(
        emu,
        [{"channel": channel, "initial_replay": "earliest"} for channel in AUDITED],
        state=settings,
        sink=sink,
        batch={"max_records": 50, "max_wait_ms": 20},
    )
    from sfstream.runners.wiring import open_sink, open_state

    wired = open_sink(config)
    assert isinstance(wired, PostgresSink)
    assert wired.state_table == (None if state == "sqlite" else f"{schema}.checkpoints")
    config_path = tmp_path / "sfstream.yaml"
    log = tmp_path / "run.log"

    async def publish() -> None:
        # 2,000 events, 1,000 a channel, in chunks while the connector runs.
        for _ in range(40):
            for source, _ in AUDITED.values():
                emu.generate(source, 25)
            await asyncio.sleep(rng.uniform(0.1, 0.25))

    async def held_count() -> int:
        return sum(map(len, (await held_records(admin, table)).values()))

    def runs() -> int:
        return log.read_text().count('"run_started"') if log.exists() else 0

    async def start() -> asyncio.subprocess.Process:
        before = runs()
        process = await start_run(config_path, log)
        async with asyncio.timeout(30):
            while runs() == before:
                assert process.returncode is None, log.read_text()[-3000:]
                await asyncio.sleep(0.05)
        return process

    publisher = asyncio.create_task(publish())
    held_at_kill = [0]
    for _ in range(2):
        process = await start()
        async with asyncio.timeout(30):  # until this run writes (it waits for leases)
            while await held_count() == held_at_kill[-1]:
                await asyncio.sleep(0.02)
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        process.send_signal(signal.SIGKILL)
        await process.wait()
        held_at_kill.append(await held_count())
    await publisher
    want = {
        stream: [m["data"]["event"]["replayId"] for m in emu.published(channel)]
        for channel, (_, stream) in AUDITED.items()
    }
    assert sum(map(len, want.values())) == 2000
    assert 0 < held_at_kill[1] < held_at_kill[2] < 2000, held_at_kill  # killed mid-stream
    print(f"records held at the kills: {held_at_kill}")
    process = await start()
    async with asyncio.timeout(120):
        while True:
            held = await held_records(admin, table)
            if sum(map(len, held.values())) >= 2000:
                break
            await asyncio.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert await process.wait() == 0, log.read_text()[-3000:]
    # The audit, from the table alone: every published event exactly once, in order.
    held = await held_records(admin, table)
    cursor = await admin.execute(
        sql.SQL("SELECT stream, replay_id FROM {} WHERE type = 'STATE' ORDER BY seq").format(
            ident(table)
        )
    )
    states: dict[str, list[int]] = {}
    for stream, replay_id in await cursor.fetchall():
        states.setdefault(str(stream), []).append(int(replay_id))
    for stream, ids in want.items():
        # No batch covered ground again after a restart: each one moved its streams on.
        assert states[stream] == sorted(set(states[stream])), f"{stream} was delivered again"
        assert states[stream][-1] == ids[-1]
        assert len(set(held[stream])) == len(held[stream]), f"{stream} has duplicates"
        assert sorted(set(ids) - set(held[stream])) == [], f"{stream} lost events"
        assert held[stream] == ids, f"{stream} holds events that were not published"
    async with PostgresSink(DSN, table) as reader:
        assert await reader.high_watermarks(want) == {s: ids[-1] for s, ids in want.items()}
    store = open_state(config)
    try:
        checkpoints = await store.load(list(want))
    finally:
        await store.close()
    assert {s: c.replay_id for s, c in checkpoints.items()} == {
        s: ids[-1] for s, ids in want.items()
    }


async def test_a_role_with_insert_and_select_on_an_existing_table_is_enough(
    admin: psycopg.AsyncConnection[Any], table: str, schema: str
) -> None:
    async with PostgresSink(DSN, table) as sink:
        await sink.write([record("a", 1)])  # created by a role that may
    role = f"sfstream_sink_{uuid.uuid4().hex[:8]}"
    await admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        await admin.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
        writer = PostgresSink(make_conninfo(DSN, user=role, password=SECRET), table)
        with pytest.raises(StorageError, match="permission denied") as caught:
            await writer.write([record("a", 2)])
        assert not caught.value.retryable
        assert SECRET not in messages_of(caught.value)
        await writer.close()
        await admin.execute(
            sql.SQL("GRANT INSERT, SELECT ON {} TO {}").format(ident(table), sql.Identifier(role))
        )
        async with PostgresSink(make_conninfo(DSN, user=role), table) as writer:
            await writer.write([record("a", 2), StateMessage("a", 2)])
            assert await writer.high_watermarks(["a"]) == {"a": 2}
    finally:
        await admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        await admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
