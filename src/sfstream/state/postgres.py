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

Operators' pending positions (`override`) live in a second table beside the checkpoints,
`<table>_overrides`, created on first use like the first. An existing checkpoint table keeps
its data; one made by an earlier sfstream gets the nullable column `event_time` (double
precision, `Checkpoint.event_time`) on first use. `read_only=True` creates and changes
nothing and runs every statement in a read-only session; missing tables read as empty, and a
table without `event_time` reads as checkpoints without event times.

Leases (`LeaseStore`) live in `<table>_leases` and the workers taking part in them in
`<table>_members`, created on first use too. Their times are epoch seconds by the server's
clock (`clock_timestamp()`), so every worker judges expiry by one clock. A fenced commit locks
its streams' lease rows (`FOR UPDATE`) and compares their tokens in the transaction that
stores the checkpoints: an acquisition by another worker waits for it, and a stale token
stores nothing but the refusal.

The run lock (`owner`) is a session-level advisory lock per stream (keyed on the table and
the stream id), held on a connection of its own for the block; the owner's connection is
named `sfstream pid <pid> on <host>` (`application_name`), which is how a refused caller
learns who holds it. A lock lives as long as that connection: if the server drops it, the
lock is gone without the owner noticing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from sfstream.errors import (
    ConfigError,
    LeaseLostError,
    StorageError,
)
from sfstream.state._common import (
    check_batch,
    check_start,
    check_stream,
    check_streams,
    check_tokens,
    check_ttl,
    check_worker,
    iso_utc,
    owned_message,
    utc_now,
)
from sfstream.state.base import (
    Checkpoint,
    Fence,
    Lease,
    Member,
    Override,
    StreamOwnedError,
    check_event_times,
    check_fence,
    fence_error,
)
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

_OVERRIDES_SUFFIX: Final = "_overrides"
_LEASES_SUFFIX: Final = "_leases"
_MEMBERS_SUFFIX: Final = "_members"


class PostgresStateStore:
    """Checkpoints in a PostgreSQL table, created on first use.

    Use it as an async context manager, or call `close()`.

    Args:
        dsn: a libpq connection string or `postgresql://` URL. Without `connect_timeout`
            it gets 10 s; without `application_name`, `sfstream`.
        table: the table, optionally schema-qualified (`state.checkpoints`); its name may
            have 53 characters at most, since `<name>_overrides` sits beside it.
        read_only: only read (see the module); every change raises `StorageError`.

    Raises:
        ConfigError: psycopg is not installed, or the DSN or table name is malformed.
    """

    def __init__(
        self, dsn: str, table: str = "sfstream_checkpoints", *, read_only: bool = False
    ) -> None:
        params = connection_params(dsn, "the PostgreSQL state store", "sfstream")
        from psycopg import sql

        *schema, name = table_parts(table)
        if len(name) + len(_OVERRIDES_SUFFIX) > MAX_IDENTIFIER:
            raise ConfigError(
                f"table name {name!r} is too long: at most "
                f"{MAX_IDENTIFIER - len(_OVERRIDES_SUFFIX)} characters, since the store "
                f"keeps pending operator changes in {name}{_OVERRIDES_SUFFIX}"
            )
        self.database = describe_database(params)
        """Where the checkpoints live, without the password: `postgresql://user@host/db`."""
        self.table = table
        self.read_only = read_only
        self._queries = _Queries(
            sql.Identifier(*schema, name),
            sql.Identifier(*schema, name + _OVERRIDES_SUFFIX),
            regclass([*schema, name]),
            sql.Identifier(*schema, name + _LEASES_SUFFIX),
            sql.Identifier(*schema, name + _MEMBERS_SUFFIX),
        )
        self.tables = [
            table + suffix for suffix in ("", _OVERRIDES_SUFFIX, _LEASES_SUFFIX, _MEMBERS_SUFFIX)
        ]
        """The tables the store keeps (created on first use)."""
        self._lock_key = _advisory_key(table)
        self._db = PgConnection(
            params,
            f"PostgreSQL state store {self.database}",
            "the store is closed",
            read_only=read_only,
            prepare=self.create_in,
        )

    def __repr__(self) -> str:
        flag = ", read_only=True" if self.read_only else ""
        return f"PostgresStateStore({self.database!r}, table={self.table!r}{flag})"

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
        rows = await self._db.run("load", lambda conn: self._load(conn, wanted))
        return {
            stream: Checkpoint(stream, replay_id, iso_utc(updated_at), event_time)
            for stream, replay_id, updated_at, event_time in rows
        }

    async def commit(
        self,
        replay_ids: Mapping[str, int],
        event_times: Mapping[str, float] | None = None,
        *,
        fence: Fence | None = None,
    ) -> None:
        """Set several checkpoints in one transaction: all of them are stored, or none.

        `event_times`: the event time of some of them (see `StateStore.commit`). It also
        clears the pending overrides of these streams. With `fence`, the lease rows of the
        streams are locked and their tokens compared in the same transaction (see
        `LeaseStore`).
        """
        batch = check_batch(replay_ids)
        times = check_event_times(event_times, replay_ids)
        tokens = check_fence(fence, replay_ids)
        if not batch:
            return
        self._writable("commit")
        if fence is None or tokens is None:
            await self._db.run("commit", lambda conn: self._commit(conn, batch, times))
            return
        worker = fence.worker
        stale = await self._db.run(
            "commit", lambda conn: self._commit(conn, batch, times, tokens, worker)
        )
        if stale:
            raise LeaseLostError(
                f"PostgreSQL state store {self.database}: {fence_error(stale, worker)}",
                streams=stale,
            )

    # -- leases ------------------------------------------------------------------------------

    async def acquire(self, streams: Iterable[str], worker: str, ttl_s: float) -> dict[str, Lease]:
        """Take the free leases of `streams` (see `LeaseStore.acquire`), in one statement:
        concurrent workers wait on each other's row locks, so one of them gets each."""
        wanted = check_streams(streams) or []
        check_worker(worker)
        ttl = check_ttl(ttl_s)
        if not wanted:
            return {}
        self._writable("acquire leases")
        params = {"streams": wanted, "worker": worker, "ttl": ttl}
        return await self._leases_of("acquire leases", self._queries.acquire, params)

    async def renew(self, tokens: Mapping[str, int], worker: str, ttl_s: float) -> dict[str, Lease]:
        """Extend the leases `worker` holds with these tokens (see `LeaseStore.renew`)."""
        pairs = check_tokens(tokens)
        check_worker(worker)
        ttl = check_ttl(ttl_s)
        if not pairs:
            return {}
        self._writable("renew leases")
        params = {
            "streams": [s for s, _ in pairs],
            "tokens": [t for _, t in pairs],
            "worker": worker,
            "ttl": ttl,
        }
        return await self._leases_of("renew leases", self._queries.renew, params)

    async def release(self, tokens: Mapping[str, int], worker: str) -> None:
        """Give up the leases `worker` holds with these tokens (see `LeaseStore.release`)."""
        pairs = check_tokens(tokens)
        check_worker(worker)
        if not pairs:
            return
        self._writable("release leases")
        params = {
            "streams": [s for s, _ in pairs],
            "tokens": [t for _, t in pairs],
            "worker": worker,
        }
        await self._leases_of("release leases", self._queries.release, params)

    async def leases(self, streams: Iterable[str] | None = None) -> dict[str, Lease]:
        """The leases of `streams` (all of them when None), held or not."""
        wanted = check_streams(streams)
        if wanted == []:
            return {}
        queries = self._queries
        if wanted is None:
            return await self._leases_of("read leases", queries.select_leases, {})
        return await self._leases_of("read leases", queries.select_some_leases, {"streams": wanted})

    async def join(self, worker: str, ttl_s: float) -> None:
        """Record `worker` as a member for `ttl_s` seconds (see `LeaseStore.join`)."""
        check_worker(worker)
        ttl = check_ttl(ttl_s)
        self._writable("join")

        async def work(conn: psycopg.AsyncConnection[TupleRow]) -> None:
            await conn.execute(self._queries.join, {"worker": worker, "ttl": ttl})

        await self._db.run("join", work)

    async def leave(self, worker: str) -> None:
        """Remove `worker` from the members."""
        check_worker(worker)
        self._writable("leave")

        async def work(conn: psycopg.AsyncConnection[TupleRow]) -> None:
            await conn.execute(self._queries.leave, (worker,))

        await self._db.run("leave", work)

    async def members(self) -> list[Member]:
        """The members that have not expired, by worker id."""

        async def work(conn: psycopg.AsyncConnection[TupleRow]) -> list[TupleRow]:
            return await self._select(conn, None, self._queries.members, self._queries.members)

        rows = await self._db.run("read members", work)
        return [Member(str(w), float(expires), float(joined)) for w, expires, joined in rows]

    async def _leases_of(
        self, action: str, query: sql.Composed, params: Mapping[str, Any]
    ) -> dict[str, Lease]:
        import psycopg

        async def work(conn: psycopg.AsyncConnection[TupleRow]) -> list[TupleRow]:
            try:
                cursor = await conn.execute(query, params)
            except psycopg.errors.UndefinedTable:
                if self.read_only:
                    return []  # nothing was ever leased here
                raise
            return await cursor.fetchall()

        rows = await self._db.run(action, work)
        return {str(row[0]): _lease(row) for row in rows}

    async def reset(self, stream: str) -> bool:
        """Forget a stream's checkpoint and its pending override; returns whether it had a
        checkpoint."""
        check_stream(stream)
        self._writable("reset")
        return await self._db.run("reset", lambda conn: self._reset(conn, stream))

    async def override(self, stream: str, start: int | None) -> Override:
        """Record an operator's position for `stream` (see `StateStore.override`)."""
        start = check_start(stream, start)
        self._writable("override")
        return await self._db.run("override", lambda conn: self._override(conn, stream, start))

    async def overrides(self, streams: Iterable[str] | None = None) -> dict[str, Override]:
        """The pending overrides of `streams` (all of them when None)."""
        wanted = check_streams(streams)
        if wanted == []:
            return {}
        rows = await self._db.run("load", lambda conn: self._overrides(conn, wanted))
        return {
            stream: Override(stream, start, previous, iso_utc(requested_at))
            for stream, start, previous, requested_at in rows
        }

    @contextlib.asynccontextmanager
    async def owner(self, streams: Iterable[str]) -> AsyncIterator[None]:
        """Own `streams` for the block (see `StateStore.owner`): one session-level advisory
        lock per stream, on a connection of its own.

        Raises:
            StreamOwnedError: another session holds one of them.
            StorageUnavailableError, StorageError: as for every call.
        """
        import psycopg

        wanted = check_streams(streams) or []
        self._writable("own streams")
        self._db.check_open()
        params = {**self._db.params, "application_name": _holder_name()}
        try:
            conn = await psycopg.AsyncConnection.connect(autocommit=True, **params)
        except psycopg.Error as exc:
            raise self._db.error("own streams", exc) from exc
        try:
            try:
                refused = await self._try_locks(conn, wanted)
            except psycopg.Error as exc:
                raise self._db.error("own streams", exc) from exc
            if refused:
                holder = await self._holder(conn, [key for _, key in refused])
                owned = [stream for stream, _ in refused]
                raise StreamOwnedError(owned_message(owned, holder), streams=owned, holder=holder)
            yield
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.close()  # ends the session, and with it its locks

    async def close(self) -> None:
        """Close the connection (after any call in flight); calling it again does nothing."""
        await self._db.close()

    def _writable(self, action: str) -> None:
        if self.read_only:
            raise StorageError(
                f"PostgreSQL state store {self.database} is opened read-only; cannot {action}"
            )

    async def _try_locks(
        self, conn: psycopg.AsyncConnection[TupleRow], streams: list[str]
    ) -> list[tuple[str, int]]:
        """Take each stream's lock that is free; the streams (and keys) held by others."""
        keys = {_owner_key(self.table, stream): stream for stream in streams}
        cursor = await conn.execute(
            "SELECT k FROM unnest(%s::bigint[]) AS k WHERE NOT pg_try_advisory_lock(k)",
            (list(keys),),
        )
        return sorted((keys[int(key)], int(key)) for (key,) in await cursor.fetchall())

    async def _holder(self, conn: psycopg.AsyncConnection[TupleRow], keys: list[int]) -> str | None:
        """Who holds one of the advisory locks `keys`, from the session's name."""
        import psycopg

        try:
            cursor = await conn.execute(
                "SELECT a.application_name, a.pid, a.backend_start"
                " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                " AND ((l.classid::bigint << 32) | l.objid::bigint) = ANY(%s::bigint[])"
                " AND a.pid <> pg_backend_pid() LIMIT 1",
                (keys,),
            )
            row = await cursor.fetchone()
        except psycopg.Error:
            return None
        if row is None:
            return None
        name, backend, since = row
        since_text = f", since {iso_utc(since)}" if isinstance(since, datetime) else ""
        if isinstance(name, str) and name.startswith(_HOLDER_PREFIX):
            return f"{name[len(_HOLDER_PREFIX) :]}{since_text}"
        return f"PostgreSQL session {backend}{since_text}"

    async def create_in(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        """Create the store's tables if missing, on `conn` (outside a transaction): what
        the store's first call does, and the PostgreSQL sink does on its own connection."""
        async with conn.transaction():
            # Serializes CREATE TABLE IF NOT EXISTS, which races between sessions.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            await conn.execute(self._queries.create)
            await conn.execute(self._queries.create_overrides)
            await conn.execute(self._queries.create_leases)
            await conn.execute(self._queries.create_members)
            # A table of an earlier sfstream. Checked first: ALTER TABLE takes an
            # exclusive lock on the table even when the column exists.
            cursor = await conn.execute(self._queries.has_event_time)
            found = await cursor.fetchone()
            if found is None or not found[0]:
                await conn.execute(self._queries.add_event_time)

    # -- queries ---------------------------------------------------------------------------

    async def _select(
        self,
        conn: psycopg.AsyncConnection[TupleRow],
        wanted: list[str] | None,
        every: sql.Composed,
        some: sql.Composed,
    ) -> list[TupleRow]:
        import psycopg

        try:
            if wanted is None:
                cursor = await conn.execute(every)
            else:
                cursor = await conn.execute(some, (wanted,))
        except psycopg.errors.UndefinedTable:
            if self.read_only:
                return []  # nothing was ever written here; a read-only store creates nothing
            raise
        return await cursor.fetchall()

    async def _load(
        self, conn: psycopg.AsyncConnection[TupleRow], wanted: list[str] | None
    ) -> list[tuple[str, int, datetime, float | None]]:
        import psycopg

        queries = self._queries
        try:
            rows = await self._select(conn, wanted, queries.select_all, queries.select_some)
        except psycopg.errors.UndefinedColumn:
            if not self.read_only:
                raise
            # A table of an earlier sfstream, which a read-only store leaves as it is.
            rows = await self._select(conn, wanted, queries.select_all_v1, queries.select_some_v1)
        return [
            (str(stream), int(replay_id), at, None if moment is None else float(moment))
            for stream, replay_id, at, moment in rows
        ]

    async def _overrides(
        self, conn: psycopg.AsyncConnection[TupleRow], wanted: list[str] | None
    ) -> list[tuple[str, int | None, int | None, datetime]]:
        rows = await self._select(
            conn, wanted, self._queries.select_overrides, self._queries.select_some_overrides
        )
        return [
            (
                str(stream),
                None if start is None else int(start),
                None if previous is None else int(previous),
                at,
            )
            for stream, start, previous, at in rows
        ]

    async def _commit(
        self,
        conn: psycopg.AsyncConnection[TupleRow],
        batch: list[tuple[str, int]],
        times: dict[str, float],
        tokens: dict[str, int] | None = None,
        worker: str = "",
    ) -> list[str]:
        """Store the batch; with `tokens`, only if every lease still has its token. The
        streams whose token was stale (then nothing is stored but the refusal)."""
        # utc_now() runs under the connection's lock: a commit applied later never carries
        # an earlier time.
        async with conn.transaction():
            if tokens is not None:
                stale = await self.fence_in(conn, tokens, worker)
                if stale:
                    return stale
            await self.store_in(
                conn, {stream: (replay_id, times.get(stream)) for stream, replay_id in batch}
            )
        return []

    # -- inside another store's transaction (the PostgreSQL sink's) ---------------------------

    async def fence_in(
        self, conn: psycopg.AsyncConnection[TupleRow], tokens: Mapping[str, int], worker: str
    ) -> list[str]:
        """In the transaction open on `conn`: lock the streams' lease rows and compare their
        tokens with `tokens`. The stale streams, their refusal recorded."""
        streams = sorted(tokens)
        # FOR UPDATE: an acquisition by another worker waits until the transaction ends, so
        # the tokens compared are the ones in force when its writes land.
        cursor = await conn.execute(self._queries.lock_leases, (streams,))
        current = {str(stream): int(token) for stream, token in await cursor.fetchall()}
        stale = [stream for stream in streams if current.get(stream) != tokens[stream]]
        if stale:
            await conn.execute(
                self._queries.refuse,
                {"streams": stale, "tokens": [tokens[s] for s in stale], "worker": worker},
            )
        return stale

    async def store_in(
        self,
        conn: psycopg.AsyncConnection[TupleRow],
        checkpoints: Mapping[str, tuple[int, float | None]],
    ) -> None:
        """In the transaction open on `conn`: store each stream's (replayId, event time)
        as its checkpoint, and clear its pending override."""
        await conn.execute(
            self._queries.commit,
            {
                "at": utc_now(),
                "streams": list(checkpoints),
                "ids": [replay_id for replay_id, _ in checkpoints.values()],
                "times": [moment for _, moment in checkpoints.values()],
            },
        )

    async def _reset(self, conn: psycopg.AsyncConnection[TupleRow], stream: str) -> bool:
        async with conn.transaction():
            cursor = await conn.execute(self._queries.delete, (stream,))
            await conn.execute(self._queries.clear_override, (stream,))
            return cursor.rowcount > 0

    async def _override(
        self, conn: psycopg.AsyncConnection[TupleRow], stream: str, start: int | None
    ) -> Override:
        queries = self._queries
        requested_at = utc_now()
        async with conn.transaction():
            # FOR UPDATE: two changes of one stream wait for each other (once it has a row).
            cursor = await conn.execute(queries.select_previous, (stream,))
            pending = await cursor.fetchone()
            if pending is not None:
                previous = pending[0]
            else:
                cursor = await conn.execute(queries.select_checkpoint, (stream,))
                row = await cursor.fetchone()
                previous = row[0] if row is not None else None
            if start is not None and start >= 0:
                await conn.execute(
                    queries.upsert,
                    {"at": requested_at, "streams": [stream], "ids": [start], "times": [None]},
                )
            else:
                await conn.execute(queries.delete, (stream,))
            await conn.execute(queries.upsert_override, (stream, start, previous, requested_at))
        return Override(
            stream, start, None if previous is None else int(previous), iso_utc(requested_at)
        )


class _Queries:
    """The statements of one table, composed once with its name safely quoted."""

    def __init__(
        self,
        table: sql.Identifier,
        overrides: sql.Identifier,
        regclass: str,
        leases: sql.Identifier,
        members: sql.Identifier,
    ) -> None:
        from psycopg import sql

        now = sql.SQL("extract(epoch FROM clock_timestamp())::double precision")
        returning = sql.SQL(
            "RETURNING l.stream, l.owner, l.token, l.expires_at, l.acquired_at,"
            " (l.owner IS NOT NULL AND l.expires_at > {now}) AS held,"
            " l.refused, l.refused_at, l.refused_token, l.refused_worker"
        ).format(now=now)

        def compose(text: str) -> sql.Composed:
            return sql.SQL(text).format(
                table=table,
                overrides=overrides,
                regclass=sql.Literal(regclass),
                leases=leases,
                members=members,
                now=now,
                returning=returning,
            )

        # Lease times are epoch seconds by the server's clock: every worker compares
        # expiries against one clock.
        self.create_leases = compose(
            "CREATE TABLE IF NOT EXISTS {leases} ("
            " stream text PRIMARY KEY,"
            " owner text,"
            " token bigint NOT NULL,"
            " expires_at double precision NOT NULL,"
            " acquired_at double precision NOT NULL,"
            " refused bigint NOT NULL DEFAULT 0,"
            " refused_at double precision,"
            " refused_token bigint,"
            " refused_worker text)"
        )
        self.create_members = compose(
            "CREATE TABLE IF NOT EXISTS {members} ("
            " worker text PRIMARY KEY,"
            " expires_at double precision NOT NULL,"
            " joined_at double precision NOT NULL)"
        )
        # ON CONFLICT DO UPDATE locks the row and evaluates WHERE on its latest version:
        # of workers racing for one free lease, exactly one gets it.
        self.acquire = compose(
            "INSERT INTO {leases} AS l (stream, owner, token, expires_at, acquired_at)"
            " SELECT s, %(worker)s, 1, {now} + %(ttl)s, {now}"
            " FROM unnest(%(streams)s::text[]) AS s ORDER BY s"
            " ON CONFLICT (stream) DO UPDATE SET"
            " token = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > EXCLUDED.acquired_at"
            " THEN l.token ELSE l.token + 1 END,"
            " acquired_at = CASE WHEN l.owner = EXCLUDED.owner"
            " AND l.expires_at > EXCLUDED.acquired_at"
            " THEN l.acquired_at ELSE EXCLUDED.acquired_at END,"
            " owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at"
            " WHERE l.owner IS NULL OR l.expires_at <= EXCLUDED.acquired_at"
            " OR l.owner = EXCLUDED.owner {returning}"
        )
        self.renew = compose(
            "UPDATE {leases} AS l SET expires_at = {now} + %(ttl)s"
            " FROM unnest(%(streams)s::text[], %(tokens)s::bigint[]) AS t (stream, token)"
            " WHERE l.stream = t.stream AND l.token = t.token AND l.owner = %(worker)s {returning}"
        )
        self.release = compose(
            "UPDATE {leases} AS l SET owner = NULL, expires_at = {now}"
            " FROM unnest(%(streams)s::text[], %(tokens)s::bigint[]) AS t (stream, token)"
            " WHERE l.stream = t.stream AND l.token = t.token AND l.owner = %(worker)s {returning}"
        )
        select_leases = (
            "SELECT l.stream, l.owner, l.token, l.expires_at, l.acquired_at,"
            " (l.owner IS NOT NULL AND l.expires_at > {now}) AS held,"
            " l.refused, l.refused_at, l.refused_token, l.refused_worker FROM {leases} AS l"
        )
        self.select_leases = compose(select_leases)
        self.select_some_leases = compose(select_leases + " WHERE l.stream = ANY(%(streams)s)")
        self.lock_leases = compose(
            "SELECT stream, token FROM {leases} WHERE stream = ANY(%s::text[])"
            " ORDER BY stream FOR UPDATE"
        )
        self.refuse = compose(
            "UPDATE {leases} AS l SET refused = l.refused + 1, refused_at = {now},"
            " refused_token = t.token, refused_worker = %(worker)s"
            " FROM unnest(%(streams)s::text[], %(tokens)s::bigint[]) AS t (stream, token)"
            " WHERE l.stream = t.stream"
        )
        # Joining also forgets members gone for a day, so the table does not grow.
        self.join = compose(
            "WITH gone AS (DELETE FROM {members} WHERE expires_at < {now} - 86400)"
            " INSERT INTO {members} AS m (worker, expires_at, joined_at)"
            " VALUES (%(worker)s, {now} + %(ttl)s, {now})"
            " ON CONFLICT (worker) DO UPDATE SET expires_at = EXCLUDED.expires_at,"
            " joined_at = CASE WHEN m.expires_at > EXCLUDED.joined_at THEN m.joined_at"
            " ELSE EXCLUDED.joined_at END"
        )
        self.leave = compose("DELETE FROM {members} WHERE worker = %s")
        self.members = compose(
            "SELECT worker, expires_at, joined_at FROM {members}"
            " WHERE expires_at > {now} ORDER BY worker"
        )

        self.create = compose(
            "CREATE TABLE IF NOT EXISTS {table} ("
            " stream text PRIMARY KEY,"
            " replay_id bigint NOT NULL,"
            " updated_at timestamptz NOT NULL,"
            " event_time double precision)"
        )
        self.has_event_time = compose(
            "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = {regclass}::regclass"
            " AND attname = 'event_time' AND NOT attisdropped)"
        )
        self.add_event_time = compose(
            "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS event_time double precision"
        )
        select = "SELECT stream, replay_id, updated_at, event_time FROM {table}"
        self.select_all = compose(select)
        self.select_some = compose(select + " WHERE stream = ANY(%s::text[])")
        select_v1 = "SELECT stream, replay_id, updated_at, NULL::double precision FROM {table}"
        self.select_all_v1 = compose(select_v1)
        self.select_some_v1 = compose(select_v1 + " WHERE stream = ANY(%s::text[])")
        upsert = (
            " INSERT INTO {table} (stream, replay_id, updated_at, event_time)"
            " SELECT batch.stream, batch.replay_id, %(at)s, batch.event_time"
            " FROM unnest(%(streams)s::text[], %(ids)s::bigint[], %(times)s::double precision[])"
            " AS batch (stream, replay_id, event_time)"
            " ON CONFLICT (stream) DO UPDATE SET replay_id = EXCLUDED.replay_id,"
            " updated_at = EXCLUDED.updated_at, event_time = EXCLUDED.event_time"
        )
        self.upsert = compose(upsert)
        # A commit clears the batch's pending overrides in the same statement: one round trip.
        clear = "WITH cleared AS (DELETE FROM {overrides} WHERE stream = ANY(%(streams)s::text[]))"
        self.commit = compose(clear + upsert)
        self.delete = compose("DELETE FROM {table} WHERE stream = %s")
        self.select_checkpoint = compose(
            "SELECT replay_id FROM {table} WHERE stream = %s FOR UPDATE"
        )
        self.create_overrides = compose(
            "CREATE TABLE IF NOT EXISTS {overrides} ("
            " stream text PRIMARY KEY,"
            " start bigint,"
            " previous bigint,"
            " requested_at timestamptz NOT NULL)"
        )
        self.select_overrides = compose(
            "SELECT stream, start, previous, requested_at FROM {overrides}"
        )
        self.select_some_overrides = compose(
            "SELECT stream, start, previous, requested_at FROM {overrides}"
            " WHERE stream = ANY(%s::text[])"
        )
        self.select_previous = compose(
            "SELECT previous FROM {overrides} WHERE stream = %s FOR UPDATE"
        )
        self.upsert_override = compose(
            "INSERT INTO {overrides} (stream, start, previous, requested_at)"
            " VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (stream) DO UPDATE SET start = EXCLUDED.start,"
            " previous = EXCLUDED.previous, requested_at = EXCLUDED.requested_at"
        )
        self.clear_override = compose("DELETE FROM {overrides} WHERE stream = %s")


def _lease(row: Any) -> Lease:
    stream, owner, token, expires, acquired, held, refused, refused_at, r_token, r_worker = row
    return Lease(
        stream=str(stream),
        owner=None if owner is None else str(owner),
        token=int(token),
        expires_at=float(expires),
        acquired_at=float(acquired),
        held=bool(held),
        refused=int(refused),
        refused_at=None if refused_at is None else float(refused_at),
        refused_token=None if r_token is None else int(r_token),
        refused_worker=None if r_worker is None else str(r_worker),
    )


def _advisory_key(table: str) -> int:
    digest = hashlib.blake2b(f"sfstream.state:{table}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _owner_key(table: str, stream: str) -> int:
    """The advisory lock that owns `stream` of the checkpoints in `table`."""
    digest = hashlib.blake2b(f"sfstream.owner:{table}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_HOLDER_PREFIX: Final = "sfstream "


def _holder_name() -> str:
    """The owner connection's `application_name`: who holds its locks (63 bytes at most)."""
    return f"{_HOLDER_PREFIX}pid {os.getpid()} on {socket.gethostname()}"[:MAX_IDENTIFIER]
