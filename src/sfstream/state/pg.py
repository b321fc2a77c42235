"""One PostgreSQL connection, as every store that keeps data in PostgreSQL holds it: the state
store, the schema registry and the sink.

Needs the `postgres` extra: psycopg is imported when a store is built, never when `sfstream`
is. `PgConnection` opens its connection on first use (autocommit; a read-only session for a
read-only store), runs the store's `prepare` once on it (creating its tables), and serializes
calls with an `asyncio.Lock`, since a psycopg connection carries one transaction at a time.
A connection that dropped, or that a cancelled call left inside a transaction, is replaced
by a new one; a call that the drop interrupted runs once more on it (every call of these
stores is idempotent, or says how to run again). psycopg's errors become sfstream's, one rule
for all (`storage_error`), with the DSN's password masked: a store describes its database as
`postgresql://user@host:port/dbname`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

from sfstream.errors import ConfigError, SfStreamError, StorageError, StorageUnavailableError

T = TypeVar("T")

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

    Work = Callable[[psycopg.AsyncConnection[TupleRow]], Awaitable[T]]
    """A call on the connection."""

TABLE_NAME: Final = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")
MAX_IDENTIFIER: Final = 63
"""The longest name PostgreSQL keeps (NAMEDATALEN - 1)."""
CONNECT_TIMEOUT_S: Final = 10
"""The connect timeout of every PostgreSQL connection without one in its DSN."""
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


def connection_params(dsn: str, needs: str, application_name: str) -> dict[str, Any]:
    """The libpq parameters of `dsn`, with a connect timeout (`CONNECT_TIMEOUT_S`) and an
    `application_name` unless it names them.

    Raises:
        ConfigError: psycopg is not installed (`needs` says what needs it: "the PostgreSQL
            sink"), or the DSN is malformed.
    """
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError(f"{needs} needs psycopg: pip install 'sfstream[postgres]'") from exc
    try:
        params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # Not chained: psycopg's message quotes the DSN, and with it the password.
        raise ConfigError(f"malformed PostgreSQL DSN {redact_dsn(dsn)!r}") from None
    params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    params.setdefault("application_name", application_name)
    return params


def table_parts(table: str) -> list[str]:
    """`[schema, name]` or `[name]` of a table name.

    Raises:
        ConfigError: it is not `[schema.]name` of letters, digits and `_`.
    """
    if not TABLE_NAME.match(table):
        raise ConfigError(f"table name {table!r} must be [schema.]name of letters, digits and _")
    return table.split(".")


def regclass(parts: list[str]) -> str:
    """A table's name as `regclass` text (`TABLE_NAME` leaves nothing to escape)."""
    return ".".join(f'"{part}"' for part in parts)


def storage_error(exc: psycopg.Error, doing: str, password: str | None = None) -> SfStreamError:
    """`StorageUnavailableError` (retryable) or `StorageError` (terminal) for a psycopg error
    met while `doing` (`PostgreSQL state store db: commit`), its text with `password`
    masked."""
    import psycopg

    text = str(exc).strip() or type(exc).__name__
    if password:
        text = text.replace(password, "***")
    message = f"{doing} failed: {text}"
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


class PgConnection:
    """The connection of one store (see the module).

    Args:
        params: libpq parameters (`connection_params`).
        name: the store as messages name it (`PostgreSQL state store postgresql://u@h/db`).
        closed: what a call after `close()` is told (`the store is closed`).
        read_only: every session is read-only, and `prepare` never runs.
        prepare: run once, on the first connection a call asks it for (create the tables);
            until it succeeds, every such call runs it.
        on_connect: run on each new connection (session settings).
    """

    def __init__(
        self,
        params: dict[str, Any],
        name: str,
        closed: str,
        *,
        read_only: bool = False,
        prepare: Work[None] | None = None,
        on_connect: Work[None] | None = None,
    ) -> None:
        self.params = params
        self.password = str(params.get("password") or "")
        self.name = name
        self.read_only = read_only
        self._closed_message = closed
        self._prepare = prepare
        self._on_connect = on_connect
        self._prepared = prepare is None or read_only
        self._conn: psycopg.AsyncConnection[TupleRow] | None = None
        self._closed = False
        self._lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        """Raises `StorageError` once `close()` was called."""
        if self._closed:
            raise StorageError(f"{self.name}: {self._closed_message}")

    def error(self, action: str, exc: psycopg.Error) -> SfStreamError:
        """The sfstream error for a psycopg error met during `action`."""
        return storage_error(exc, f"{self.name}: {action}", self.password)

    async def run(
        self, action: str, work: Work[T], *, again: Work[T] | None = None, prepare: bool = True
    ) -> T:
        """Run `work` on the connection, alone; if the connection dropped under it, run
        `again` (by default `work` once more) on a new one.

        `prepare=False`: a call that needs no prepared tables (a read that finds none).

        Raises:
            StorageUnavailableError, StorageError: as `storage_error` classifies psycopg's
                error, or the store is closed.
        """
        import psycopg

        async with self._lock:
            self.check_open()
            try:
                conn = await self._connection(prepare)
                try:
                    return await work(conn)
                except psycopg.Error:
                    if not conn.broken:
                        raise
                # The connection dropped under us: once more, on a new one.
                await self._discard()
                return await (again or work)(await self._connection(prepare))
            except psycopg.Error as exc:
                raise self.error(action, exc) from exc

    async def close(self) -> None:
        """Close the connection (after any call in flight); calling it again does nothing."""
        async with self._lock:
            self._closed = True
            await self._discard()

    async def _connection(self, prepare: bool) -> psycopg.AsyncConnection[TupleRow]:
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
            conn = await psycopg.AsyncConnection.connect(autocommit=True, **self.params)
            self._conn = conn
            if self.read_only:
                await conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            if self._on_connect is not None:
                await self._on_connect(conn)
        if prepare and not self._prepared and self._prepare is not None:
            await self._prepare(conn)
            self._prepared = True
        return conn

    async def _discard(self) -> None:
        import psycopg

        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


def describe_database(params: Mapping[str, Any]) -> str:
    """A database as messages name it, without the password: `postgresql://user@host:port/db`."""
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
