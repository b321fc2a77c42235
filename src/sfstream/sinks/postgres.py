"""`PostgresSink`: the output protocol as rows of one PostgreSQL table, a batch per transaction.

Needs the `postgres` extra (`pip install 'sfstream[postgres]'`): psycopg is imported when a
sink is built, never when `sfstream` is.

One table holds every stream (`sfstream_records` by default), created on first use with its
indexes (`CREATE ... IF NOT EXISTS` under an advisory lock, so that sinks starting together
do not race), a row per message:

| column | type | RECORD | STATE | GAP | SCHEMA |
|---|---|---|---|---|---|
| `seq` | bigint identity, primary key | write order | = | = | = |
| `type` | text | `RECORD` | `STATE` | `GAP` | `SCHEMA` |
| `stream` | text | the stream id | = | = | = |
| `replay_id` | bigint | its replayId | the position | `from_replay_id` | null |
| `key` | text | the record's key | null | null | null |
| `change_type` | text | `meta.change_type` (change events) | null | null | null |
| `event_time` | timestamptz | when Salesforce says it happened | null | null | null |
| `run_id` | text | `meta.run_id` | null | null | null |
| `emitted_at` | timestamptz | `emitted_at` | null | null | null |
| `data` | jsonb | the payload | null | null | null |
| `meta` | jsonb | `meta` | null | null | null |
| `message` | json | null, unless the columns cannot give it back | null | the message | = |

`message` holds the message exactly as the file sink writes it whenever the other columns
cannot give it back: every GAP and SCHEMA message, and the rare RECORD whose payload, meta
or key holds a NUL character (which `jsonb` and `text` cannot store: their columns then get
U+FFFD instead) or whose `emitted_at` is not in the engine's form (`...T12:00:00.123Z`).
`docs/sinks.md` gives the query that reads messages back.

A unique index on (stream, replay_id, key) of the RECORD rows makes writing a record again a
no-op (`ON CONFLICT DO NOTHING`): a batch written twice, a stream rewound by an operator, a
worker that lost its lease, none of them duplicates a record (the table keeps the first
copy; STATE, GAP and SCHEMA rows, notes without a key, are appended each time). An index
on (stream, seq) makes `high_watermarks` read one row per stream: the replayId of its latest
RECORD or STATE row, none when its latest row is a GAP (exact).

A batch is one `INSERT ... SELECT FROM unnest(...)` of arrays sent in binary, in one
transaction (for 2,000 records, faster than `COPY` into a staging table, which `ON CONFLICT`
would need). It is durable on return: a session whose `synchronous_commit` is `off` (set
for the database or the role) is switched back `on`.

**With the PostgreSQL state store in the same database** (`state_table`), the batch's STATE
messages also become the streams' checkpoints in that transaction (the store's own statement:
`replay_id`, `updated_at`, `event_time` of the stream's last record, its pending override
cleared): records and checkpoints land together, so a crash between the sink and the engine's
commit loses and repeats nothing. With a `fence`, the transaction first locks the streams'
lease rows (`FOR UPDATE`, sorted) and compares tokens; a stale one stores only the refusal in
the leases table and raises `LeaseLostError`.

One connection serves the sink, and an `asyncio.Lock` serializes its calls. When it has
dropped, the call runs once more on a new connection; a write whose outcome the drop left
unknown asks the server (`txid_status`) whether its transaction committed, and is not
repeated if it did. The DSN's password never appears in a message or `repr`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import msgspec

from sfstream.bayeux.messages import event_time_s
from sfstream.errors import (
    ConfigError,
    LeaseLostError,
    StorageUnavailableError,
)
from sfstream.protocol import GapMessage, Message, Record, StateMessage, encode
from sfstream.state.base import Fence, check_fence, fence_error
from sfstream.state.pg import (
    MAX_IDENTIFIER,
    PgConnection,
    connection_params,
    describe_database,
    regclass,
    table_parts,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from psycopg.rows import TupleRow

    from sfstream.state.postgres import PostgresStateStore


_RECORD_KEY_SUFFIX: Final = "_record_key"
_STREAM_SEQ_SUFFIX: Final = "_stream_seq"
# How long a write whose connection dropped waits for the server to end its transaction
# (the server notices a closed client at once; a partitioned one later).
_OUTCOME_WAIT_S: Final = 5.0
_OUTCOME_POLL_S: Final = 0.1
_NUL: Final = "\x00"
_NUL_ESCAPE: Final = b"\\u0000"
_REPLACEMENT: Final = "\ufffd"

_COLUMNS: Final = (
    "type",
    "stream",
    "replay_id",
    "key",
    "change_type",
    "event_time",
    "run_id",
    "emitted_at",
    "data",
    "meta",
    "message",
)


class _Created(msgspec.Struct):
    """The one field of a platform event's payload that dates it."""

    CreatedDate: Any = None


class _Rows:
    """A batch as column arrays, and the checkpoints its STATE messages carry; built before
    any I/O, so that an unencodable message fails the batch before anything is sent."""

    def __init__(self, messages: Sequence[Message]) -> None:
        self.columns: tuple[list[Any], ...] = tuple([] for _ in _COLUMNS)
        self.checkpoints: dict[str, tuple[int, float | None]] = {}
        """stream -> (replayId of its last STATE, event time of its last record before)."""
        last_time: dict[str, float | None] = {}
        metas: dict[int, tuple[str, bool]] = {}  # meta dicts are shared by merged records
        stamps: dict[str, tuple[datetime | None, bool]] = {}  # a chunk shares one emitted_at
        kind, stream, replay_id, key, change, at, run, emitted, data, meta, whole = self.columns
        for message in messages:
            kind.append(message.type)
            stream.append(message.stream)
            if isinstance(message, Record):
                whole.append(_record_row(message, metas, stamps, self.columns))
                moment = _event_time(message)
                last_time[message.stream] = moment
                at.append(_moment(moment))
                continue
            if isinstance(message, StateMessage):
                replay_id.append(message.replay_id)
                whole.append(None)
                self.checkpoints[message.stream] = (
                    message.replay_id,
                    last_time.get(message.stream),
                )
            else:
                replay_id.append(
                    message.from_replay_id if isinstance(message, GapMessage) else None
                )
                whole.append(encode(message).decode())
            for column in (key, change, at, run, emitted, data, meta):
                column.append(None)


def _record_row(
    record: Record,
    metas: dict[int, tuple[str, bool]],
    stamps: dict[str, tuple[datetime | None, bool]],
    columns: tuple[list[Any], ...],
) -> str | None:
    """Append a record's columns (but `event_time` and `message`); its line when they do
    not give it back exactly (else None)."""
    _, _, replay_id, key, change, _, run, emitted, data, meta, _ = columns
    exact = True
    replay_id.append(record.replay_id)
    if record.key is not None and _NUL in record.key:
        key.append(record.key.replace(_NUL, _REPLACEMENT))
        exact = False
    else:
        key.append(record.key)
    change.append(_text(record.meta.get("change_type")))
    run.append(_text(record.meta.get("run_id")))
    stamp = stamps.get(record.emitted_at)
    if stamp is None:
        moment = _timestamp(record.emitted_at)
        stamp = (moment, moment is not None and _engine_time(moment) == record.emitted_at)
        stamps[record.emitted_at] = stamp
    emitted.append(stamp[0])
    exact = exact and stamp[1]
    try:
        raw = (
            bytes(record.data)
            if isinstance(record.data, msgspec.Raw)
            else msgspec.json.encode(record.data)
        )
        cached = metas.get(id(record.meta))
        if cached is None:
            cached = _jsonb_text(msgspec.json.encode(record.meta))
            metas[id(record.meta)] = cached
    except (msgspec.EncodeError, TypeError, ValueError, RecursionError):
        encode(record)  # raises the protocol's EncodingError, naming the record
        raise
    payload, payload_exact = _jsonb_text(raw)
    data.append(payload)
    meta.append(cached[0])
    exact = exact and payload_exact and cached[1]
    return None if exact else encode(record).decode()


def _jsonb_text(raw: bytes) -> tuple[str, bool]:
    """JSON text `jsonb` accepts, and whether it is `raw` itself: `jsonb` refuses the
    escape of NUL, so strings holding one get U+FFFD instead (the exact text goes to
    `message`)."""
    if _NUL_ESCAPE not in raw:
        return raw.decode(), True
    value = msgspec.json.decode(raw)
    return msgspec.json.encode(_without_nul(value)).decode(), False


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_NUL, _REPLACEMENT)
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _text(value: object) -> str | None:
    """A `meta` value for a text column (NUL cannot be stored in `text`)."""
    if not isinstance(value, str):
        return None
    return value.replace(_NUL, _REPLACEMENT)


def _timestamp(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _moment(seconds: float | None) -> datetime | None:
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        return None  # beyond what a datetime holds (year 9999)


def _engine_time(moment: datetime) -> str:
    """`moment` as the engine writes `emitted_at`: UTC, milliseconds, `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _event_time(record: Record) -> float | None:
    """When Salesforce says the record's event happened (epoch seconds), as the engine
    reads it from the event (`event_time_s`), here from what the record kept of it."""
    meta = record.meta
    found: dict[str, Any]
    if "commit_timestamp" in meta:  # a change event: its header's commitTimestamp
        found = {"payload": {"ChangeEventHeader": {"commitTimestamp": meta["commit_timestamp"]}}}
    elif "event_uuid" in meta:  # a platform event: its payload's CreatedDate
        found = {"payload": {"CreatedDate": _created_date(record.data)}}
    else:  # a PushTopic or generic event: the envelope's createdDate
        found = {"event": {"createdDate": meta.get("created_date")}}
    return event_time_s(found)


def _created_date(data: Any) -> Any:
    if isinstance(data, msgspec.Raw):
        try:
            return msgspec.json.decode(data, type=_Created).CreatedDate
        except msgspec.DecodeError:
            return None
    return data.get("CreatedDate") if isinstance(data, dict) else None


class _Attempt:
    """One try of a write: its transaction id once known, and its result once decided."""

    def __init__(self) -> None:
        self.xid: int | None = None
        self.stale: list[str] = []


class PostgresSink:
    """Writes messages as rows of a PostgreSQL table; `write` returns once they are committed.

    The sink connects on first use (or `open()`), creating the table and its indexes if
    missing. Use it as an async context manager, or call `close()`.

    Args:
        dsn: a libpq connection string or `postgresql://` URL. Without `connect_timeout`
            it gets 10 s; without `application_name`, `sfstream sink`.
        table: the table, optionally schema-qualified (`raw.sfstream_records`); its name
            may have 52 characters at most (its indexes are named after it).
        state_table: the PostgreSQL state store's table, when the state lives in this
            database: each batch then commits its streams' checkpoints too (see the module).

    Raises:
        ConfigError: psycopg is not installed, or the DSN or a table name is malformed.
    """

    def __init__(
        self, dsn: str, table: str = "sfstream_records", *, state_table: str | None = None
    ) -> None:
        params = connection_params(dsn, "the PostgreSQL sink", "sfstream sink")
        from psycopg import sql

        from sfstream.state.postgres import PostgresStateStore

        *schema, name = table_parts(table)
        longest = MAX_IDENTIFIER - len(_RECORD_KEY_SUFFIX)
        if len(name) > longest:
            raise ConfigError(
                f"table name {name!r} is too long: at most {longest} characters, since its "
                f"indexes are named {name}{_RECORD_KEY_SUFFIX} and {name}{_STREAM_SEQ_SUFFIX}"
            )
        self.database = describe_database(params)
        """Where the table lives, without the password: `postgresql://user@host:port/db`."""
        self.table = table
        self.state_table = state_table
        # The state store, for its statements inside the sink's transaction (a store that
        # never connects): a checkpoint the sink commits is exactly what the store's commit
        # would have stored.
        self._state: PostgresStateStore | None = (
            None if state_table is None else PostgresStateStore(dsn, state_table)
        )
        self._queries = _Queries(
            sql.Identifier(*schema, name),
            [regclass([*schema, n]) for n in _names(name)],
            sql.Identifier(name + _RECORD_KEY_SUFFIX),
            sql.Identifier(name + _STREAM_SEQ_SUFFIX),
        )
        self._lock_key = _advisory_key(table)
        self._db = PgConnection(
            params,
            f"PostgreSQL sink {self.database} table {table}",
            "the sink is closed",
            prepare=self._create,
            on_connect=_durable,
        )

    def __repr__(self) -> str:
        shared = f", state_table={self.state_table!r}" if self.state_table else ""
        return f"PostgresSink({self.database!r}, table={self.table!r}{shared})"

    async def open(self) -> None:
        """Connect and create the table (and the state's tables) if missing; idempotent.

        Raises:
            StorageError: the server refused (authentication, permissions), or the sink is
                closed.
            StorageUnavailableError: the server is unreachable for now.
        """

        async def nothing(conn: psycopg.AsyncConnection[TupleRow]) -> None:
            return None

        await self._db.run("open", nothing)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def write(self, messages: Sequence[Message], fence: Fence | None = None) -> None:
        """Insert `messages` as rows, in order, in one transaction; committed on return.

        An empty batch writes nothing. A record already in the table (same stream, replayId
        and key) is skipped. With `state_table`, the batch's STATE messages are committed
        as checkpoints in the same transaction; with a `fence` too, only if every stream's
        lease token is still current.

        Raises:
            LeaseLostError: the fence is stale for some streams; only the refusal was
                stored (in the state's leases table).
            EncodingError: a message cannot be encoded; nothing was sent.
            StorageError: the server refused the write, or the sink is closed.
            StorageUnavailableError: the server is unreachable for now, or a dropped
                connection left the write's outcome unknown (nothing is lost: the next
                run resumes after what the table holds).
        """
        self._db.check_open()
        if not messages:
            return
        rows = _Rows(messages)
        tokens: dict[str, int] | None = None
        worker = ""
        if fence is not None and self._state is not None:
            tokens = check_fence(fence, fence.tokens)
            worker = fence.worker
        stale = await self._write(rows, tokens, worker)
        if stale:
            raise LeaseLostError(
                f"PostgreSQL sink {self.database} table {self.table}: {fence_error(stale, worker)}",
                streams=stale,
            )

    async def high_watermarks(self, streams: Iterable[str]) -> dict[str, int]:
        """Each stream's replayId of its latest RECORD or STATE row; absent when it has
        none or when its latest row is a GAP (one index lookup per stream).

        Raises:
            StorageError: the server refused the read, or the sink is closed.
            StorageUnavailableError: the server is unreachable for now.
        """
        self._db.check_open()
        wanted = sorted(set(streams))
        if not wanted:
            return {}

        async def work(conn: psycopg.AsyncConnection[TupleRow]) -> list[TupleRow]:
            cursor = await conn.execute(self._queries.marks, (wanted,))
            return await cursor.fetchall()

        rows = await self._db.run("read high-water marks", work)
        return {
            str(stream): int(replay_id)
            for stream, kind, replay_id in rows
            if kind != "GAP" and replay_id is not None
        }

    async def close(self) -> None:
        """Close the connection (after any call in flight); calling it again does nothing.
        Written data is already committed."""
        await self._db.close()

    # -- the write --------------------------------------------------------------------------

    async def _write(self, rows: _Rows, tokens: dict[str, int] | None, worker: str) -> list[str]:
        """Run the batch's transaction; after a dropped connection, once more unless the
        server says the first one committed. The stale streams (then only the refusal was
        stored)."""
        attempt = _Attempt()

        async def first(conn: psycopg.AsyncConnection[TupleRow]) -> list[str]:
            await self._transaction(conn, attempt, rows, tokens, worker)
            return attempt.stale

        async def again(conn: psycopg.AsyncConnection[TupleRow]) -> list[str]:
            if attempt.xid is not None and await self._committed(conn, attempt.xid):
                return attempt.stale
            retry = _Attempt()
            await self._transaction(conn, retry, rows, tokens, worker)
            return retry.stale

        return await self._db.run("write", first, again=again)

    async def _transaction(
        self,
        conn: psycopg.AsyncConnection[TupleRow],
        attempt: _Attempt,
        rows: _Rows,
        tokens: dict[str, int] | None,
        worker: str,
    ) -> None:
        state = self._state
        async with conn.transaction():
            cursor = await conn.execute("SELECT txid_current()")
            found = await cursor.fetchone()
            attempt.xid = None if found is None else int(found[0])
            if state is not None and tokens:
                stale = await state.fence_in(conn, tokens, worker)
                if stale:
                    attempt.stale = stale
                    return  # commits the refusal, and nothing else
            await conn.execute(self._queries.insert, rows.columns)
            checkpoints = {
                stream: moved
                for stream, moved in sorted(rows.checkpoints.items())
                # A fenced batch moves only the streams it holds a lease for.
                if tokens is None or stream in tokens
            }
            if state is not None and checkpoints:
                await state.store_in(conn, checkpoints)

    async def _committed(self, conn: psycopg.AsyncConnection[TupleRow], xid: int) -> bool:
        """Whether transaction `xid` (of a dropped connection) committed; waits a little
        while the server still has it open.

        Raises:
            StorageUnavailableError: it is still open after the wait.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _OUTCOME_WAIT_S
        while True:
            cursor = await conn.execute("SELECT txid_status(%s::bigint)", (xid,))
            found = await cursor.fetchone()
            status = None if found is None else found[0]
            if status != "in progress":
                return status == "committed"
            if loop.time() >= deadline:
                raise StorageUnavailableError(
                    f"PostgreSQL sink {self.database} table {self.table}: the connection "
                    f"dropped during a write whose transaction is still open on the server "
                    f"after {_OUTCOME_WAIT_S:g} s; its outcome is unknown for now (nothing "
                    "is lost: the next run resumes after what the table holds)"
                )
            await asyncio.sleep(_OUTCOME_POLL_S)

    # -- connection -------------------------------------------------------------------------

    async def _create(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        """Create the table and its indexes if missing (and the state's tables)."""
        queries = self._queries
        cursor = await conn.execute(queries.missing, (queries.names,))
        missing = await cursor.fetchone()
        if missing is not None and missing[0]:
            async with conn.transaction():
                # Serializes CREATE ... IF NOT EXISTS, which races between sessions. Checked
                # first: CREATE INDEX locks the table against writes even when it exists.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
                await conn.execute(queries.create)
                await conn.execute(queries.create_record_key)
                await conn.execute(queries.create_stream_seq)
        if self._state is not None:
            await self._state.create_in(conn)


async def _durable(conn: psycopg.AsyncConnection[TupleRow]) -> None:
    """`write` is durable on return: a session (or database, or role) that commits without
    waiting for the WAL flush would lose acknowledged batches in a crash."""
    cursor = await conn.execute("SELECT current_setting('synchronous_commit')")
    setting = await cursor.fetchone()
    if setting is not None and setting[0] == "off":
        await conn.execute("SET synchronous_commit = on")


class _Queries:
    """The statements of one table, composed once with its name safely quoted."""

    def __init__(
        self,
        table: sql.Identifier,
        names: list[str],
        record_key: sql.Identifier,
        stream_seq: sql.Identifier,
    ) -> None:
        from psycopg import sql

        def compose(text: str) -> sql.Composed:
            return sql.SQL(text).format(table=table, record_key=record_key, stream_seq=stream_seq)

        self.names = names
        """The table and its indexes as `regclass` text (the name pattern leaves nothing to
        escape)."""
        self.missing = sql.SQL(
            "SELECT bool_or(to_regclass(name) IS NULL) FROM unnest(%s::text[]) AS name"
        )
        self.create = compose(
            "CREATE TABLE IF NOT EXISTS {table} ("
            " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " type text NOT NULL CHECK (type IN ('RECORD', 'STATE', 'SCHEMA', 'GAP')),"
            " stream text NOT NULL,"
            " replay_id bigint,"
            " key text,"
            " change_type text,"
            " event_time timestamptz,"
            " run_id text,"
            " emitted_at timestamptz,"
            " data jsonb,"
            " meta jsonb,"
            " message json)"
        )
        # COALESCE: a record without a key is still one row per replayId (NULLs are
        # distinct in a unique index); one event gives null keys or ids, never both.
        self.create_record_key = compose(
            "CREATE UNIQUE INDEX IF NOT EXISTS {record_key} ON {table}"
            " (stream, replay_id, (COALESCE(key, ''))) WHERE type = 'RECORD'"
        )
        self.create_stream_seq = compose(
            "CREATE INDEX IF NOT EXISTS {stream_seq} ON {table} (stream, seq)"
        )
        # Binary arrays: no array literal to quote and parse (several times faster than
        # text for 2,000 payloads). ORDER BY the ordinality: `seq` follows the batch.
        self.insert = compose(
            "INSERT INTO {table} (type, stream, replay_id, key, change_type, event_time,"
            " run_id, emitted_at, data, meta, message)"
            " SELECT b.type, b.stream, b.replay_id, b.key, b.change_type, b.event_time,"
            " b.run_id, b.emitted_at, b.data::jsonb, b.meta::jsonb, b.message::json"
            " FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[],"
            " %b::timestamptz[], %b::text[], %b::timestamptz[], %b::text[], %b::text[],"
            " %b::text[]) WITH ORDINALITY AS b (type, stream, replay_id, key, change_type,"
            " event_time, run_id, emitted_at, data, meta, message, n)"
            " ORDER BY b.n ON CONFLICT DO NOTHING"
        )
        # The latest row of each stream but SCHEMA ones: a backward scan of (stream, seq).
        # The planner would rather scan the primary key backwards and filter by stream,
        # which reads the whole table for a quiet stream; the stream as a range (equal to
        # it, but no longer a constant the ORDER BY can drop) leaves only that index to
        # give the order.
        self.marks = compose(
            "SELECT w.stream, m.type, m.replay_id FROM unnest(%s::text[]) AS w (stream)"
            " CROSS JOIN LATERAL (SELECT r.type, r.replay_id FROM {table} AS r"
            " WHERE r.stream >= w.stream AND r.stream <= w.stream AND r.type <> 'SCHEMA'"
            " ORDER BY r.stream DESC, r.seq DESC LIMIT 1) AS m"
        )


def _names(name: str) -> list[str]:
    return [name, name + _RECORD_KEY_SUFFIX, name + _STREAM_SEQ_SUFFIX]


def _advisory_key(table: str) -> int:
    digest = hashlib.blake2b(f"sfstream.sink:{table}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
