"""PostgreSQL state store, for connectors that keep their state in a shared database.

Needs the `postgres` extra (`pip install 'sfstream[postgres]'`): psycopg is imported when a
store is built, never when `sfstream` is.

A batch is one `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE` in its own
transaction, so it lands whole or not at all. One connection serves the store and an
`asyncio.Lock` serializes its calls (a psycopg connection carries one transaction at a time).
When the connection has dropped (server restart, failover, idle timeout), the call runs once
more on a new connection: every call is idempotent, including a commit whose outcome the
drop left unknown.

The DSN's password never appears in a message or `repr`: the store describes its database
as `postgresql://user@host:port/dbname`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

from sfstream.errors import ConfigError, SfStreamError, StorageError, StorageUnavailableError
from sfstream.state._common import check_batch, check_stream, check_streams, iso_utc, utc_now
from sfstream.state.base import Checkpoint

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from psycopg.rows import TupleRow

T = TypeVar("T")

_TABLE_NAME: Final = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")
_CONNECT_TIMEOUT_S: Final = 10
# SQLSTATEs worth retrying: connection exceptions (08), shutdown / not yet accepting (57P0x),
# too many connections, serialization failure, deadlock, lock timeout, statement timeout.
_TRANSIENT_CLASSES: Final = ("08",)
_TRANSIENT_STATES: Final = frozenset(
    {"57P01", "57P02", "57P03", "53300", "40001", "40P01", "55P03", "57014"}
)
# libpq reports a refused connection attempt without an SQLSTATE; these texts mean the
# server answered and said no, which no retry will change.
_REFUSALS: Final = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "no password supplied",
    "permission denied",
)


class PostgresStateStore:
    """Checkpoints in a PostgreSQL table, created on first use.

    Use it as an async context manager, or call `close()`.

    Args:
        dsn: a libpq connection string or `postgresql://` URL. Without `connect_timeout`
            it gets 10 s; without `application_name`, `sfstream`.
        table: the table, optionally schema-qualified (`state.checkpoints`).

    Raises:
        ConfigError: psycopg is not installed, or the DSN or table name is malformed.
    """

    def __init__(self, dsn: str, table: str = "sfstream_checkpoints") -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError(
                "the PostgreSQL state store needs psycopg: pip install 'sfstream[postgres]'"
            ) from exc
        from psycopg import sql

        try:
            params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            # Not chained: psycopg's message quotes the DSN, and with it the password.
            raise ConfigError(f"malformed PostgreSQL DSN {redact_dsn(dsn)!r}") from None
        if not _TABLE_NAME.match(table):
            raise ConfigError(
                f"table name {table!r} must be [schema.]name of letters, digits and _"
            )
        params.setdefault("connect_timeout", _CONNECT_TIMEOUT_S)
        params.setdefault("application_name", "sfstream")
        self._params = params
        self._password = str(params.get("password") or "")
        self.database = _describe(params)
        """Where the checkpoints live, without the password: `postgresql://user@host/db`."""
        self.table = table
        self._queries = _Queries(sql.Identifier(*table.split(".")))
        self._lock_key = _advisory_key(table)
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        self._schema_ready = False
        self._closed = False
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresStateStore({self.database!r}, table={self.table!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def load(self, streams: Iterable[str] | None = None) -> dict[str, Checkpoint]:
        """The checkpoints of `streams` (all of them when None); missing streams are absent."""
        wanted = check_streams(streams)
        if wanted == []:
            return {}
        rows = await self._run("load", lambda conn: self._load(conn, wanted))
        return {
            stream: Checkpoint(stream, replay_id, iso_utc(updated_at))
            for stream, replay_id, updated_at in rows
        }

    async def commit(self, replay_ids: Mapping[str, int]) -> None:
        """Set several checkpoints in one transaction: all of them are stored, or none."""
        batch = check_batch(replay_ids)
        if batch:
            await self._run("commit", lambda conn: self._commit(conn, batch))

    async def reset(self, stream: str) -> bool:
        """Forget a stream's checkpoint; returns whether it had one."""
        check_stream(stream)
        return await self._run("reset", lambda conn: self._reset(conn, stream))

    async def close(self) -> None:
        """Close the connection (after any call in flight); calling it again does nothing."""
        async with self._lock:
            self._closed = True
            await self._discard()

    # -- connection ------------------------------------------------------------------------

    async def _run(
        self, action: str, work: Callable[[psycopg.AsyncConnection[TupleRow]], Awaitable[T]]
    ) -> T:
        import psycopg

        async with self._lock:
            if self._closed:
                raise StorageError(f"PostgreSQL state store {self.database}: the store is closed")
            try:
                return await self._with_reconnect(work)
            except psycopg.Error as exc:
                raise self._translate(action, exc) from exc

    async def _with_reconnect(
        self, work: Callable[[psycopg.AsyncConnection[TupleRow]], Awaitable[T]]
    ) -> T:
        import psycopg

        conn = await self._connection()
        try:
            return await work(conn)
        except psycopg.Error:
            if not conn.broken:
                raise
        # The connection dropped under us; the call is idempotent, so it runs once more.
        await self._discard()
        return await work(await self._connection())

    async def _connection(self) -> psycopg.AsyncConnection[TupleRow]:
        import psycopg
        from psycopg.pq import TransactionStatus

        conn = self._conn
        if conn is not None and (
            conn.closed or conn.info.transaction_status != TransactionStatus.IDLE
        ):
            # Dropped, or left inside a transaction by a cancelled call: start afresh.
            await self._discard()
            conn = None
        if conn is None:
            conn = await psycopg.AsyncConnection.connect(autocommit=True, **self._params)
            self._conn = conn
        if not self._schema_ready:
            async with conn.transaction():
                # Serializes CREATE TABLE IF NOT EXISTS, which races between sessions.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
                await conn.execute(self._queries.create)
            self._schema_ready = True
        return conn

    async def _discard(self) -> None:
        import psycopg

        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    def _translate(self, action: str, exc: psycopg.Error) -> SfStreamError:
        """The sfstream error for a psycopg error: the one place that maps them."""
        import psycopg

        text = str(exc).strip() or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        message = f"PostgreSQL state store {self.database}: {action} failed: {text}"
        state = exc.sqlstate
        if state is None:
            # No SQLSTATE: libpq failed to connect, or lost the connection.
            refused = isinstance(exc, psycopg.OperationalError) and any(
                phrase in text for phrase in _REFUSALS
            )
            transient = isinstance(exc, psycopg.OperationalError) and not refused
        else:
            transient = state.startswith(_TRANSIENT_CLASSES) or state in _TRANSIENT_STATES
        if transient:
            return StorageUnavailableError(message)
        return StorageError(message)

    # -- queries ---------------------------------------------------------------------------

    async def _load(
        self, conn: psycopg.AsyncConnection[TupleRow], wanted: list[str] | None
    ) -> list[tuple[str, int, datetime]]:
        if wanted is None:
            cursor = await conn.execute(self._queries.select_all)
        else:
            cursor = await conn.execute(self._queries.select_some, (wanted,))
        return [
            (str(stream), int(replay_id), at) for stream, replay_id, at in await cursor.fetchall()
        ]

    async def _commit(
        self, conn: psycopg.AsyncConnection[TupleRow], batch: list[tuple[str, int]]
    ) -> None:
        streams = [stream for stream, _ in batch]
        replay_ids = [replay_id for _, replay_id in batch]
        # utc_now() runs under the store's lock: a commit applied later never carries an
        # earlier time.
        async with conn.transaction():
            await conn.execute(self._queries.upsert, (utc_now(), streams, replay_ids))

    async def _reset(self, conn: psycopg.AsyncConnection[TupleRow], stream: str) -> bool:
        async with conn.transaction():
            cursor = await conn.execute(self._queries.delete, (stream,))
            return cursor.rowcount > 0


class _Queries:
    """The statements of one table, composed once with its name safely quoted."""

    def __init__(self, table: sql.Identifier) -> None:
        from psycopg import sql

        def compose(text: str) -> sql.Composed:
            return sql.SQL(text).format(table=table)

        self.create = compose(
            "CREATE TABLE IF NOT EXISTS {table} ("
            " stream text PRIMARY KEY,"
            " replay_id bigint NOT NULL,"
            " updated_at timestamptz NOT NULL)"
        )
        self.select_all = compose("SELECT stream, replay_id, updated_at FROM {table}")
        self.select_some = compose(
            "SELECT stream, replay_id, updated_at FROM {table} WHERE stream = ANY(%s::text[])"
        )
        self.upsert = compose(
            "INSERT INTO {table} (stream, replay_id, updated_at)"
            " SELECT batch.stream, batch.replay_id, %s"
            " FROM unnest(%s::text[], %s::bigint[]) AS batch (stream, replay_id)"
            " ON CONFLICT (stream) DO UPDATE SET"
            " replay_id = EXCLUDED.replay_id, updated_at = EXCLUDED.updated_at"
        )
        self.delete = compose("DELETE FROM {table} WHERE stream = %s")


def _advisory_key(table: str) -> int:
    digest = hashlib.blake2b(f"sfstream.state:{table}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _describe(params: Mapping[str, Any]) -> str:
    user = params.get("user") or ""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = f":{params['port']}" if params.get("port") else ""
    dbname = params.get("dbname") or ""
    return f"postgresql://{user}{'@' if user else ''}{host}{port}/{dbname}"


def redact_dsn(dsn: str) -> str:
    """`dsn` with its password replaced by `***` (URL or `key=value` form).

    It works on text that psycopg cannot parse, to describe a malformed DSN safely.
    """
    if "://" not in dsn:
        return re.sub(
            r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)", r"\1***", dsn, flags=re.IGNORECASE
        )
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable DSN>"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    query = "&".join(
        "password=***" if item.lower().startswith("password=") else item
        for item in parts.query.split("&")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query if parts.query else "", ""))
