"""The schema registry in PostgreSQL: a table in the state's database, when the state is there.

Needs the `postgres` extra: psycopg is imported when a registry is built. The table
(`sfstream_schemas` by default, in the schema of the state's table) is created on the first
write, or by `sfstream state init`:

```
subject text, version integer, PRIMARY KEY (subject, version),
fingerprint text, json_schema jsonb, avro_schema jsonb, schema_id text (nullable),
diff jsonb, breaking boolean, created_at timestamptz
```

A registration runs in one transaction under an advisory lock of its subject, so that
concurrent registrations of one subject (several connectors, a `schema derive` during a run)
agree on the numbering. `read_only=True` creates and changes nothing and reads in a read-only
session; a missing table reads as an empty registry. The DSN's password never appears in a
message or `repr`.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from sfstream.errors import StorageError
from sfstream.schema.registry import SchemaVersion, next_version
from sfstream.schema.render import fingerprint
from sfstream.state.pg import (
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


DEFAULT_TABLE: Final = "sfstream_schemas"
_SELECT: Final = (
    "SELECT subject, version, fingerprint, json_schema, avro_schema, schema_id, diff, breaking,"
    " created_at FROM {table} WHERE subject = %s"
)
_INSERT: Final = (
    "INSERT INTO {table} (subject, version, fingerprint, json_schema, avro_schema, schema_id,"
    " diff, breaking, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


class PostgresSchemaRegistry:
    """Schema versions in a PostgreSQL table (see the module).

    Args:
        dsn: a libpq connection string or `postgresql://` URL (the state's).
        table: the table, optionally schema-qualified.
        read_only: only read; `register` raises `StorageError`.

    Raises:
        ConfigError: psycopg is not installed, or the DSN or table name is malformed.
    """

    def __init__(self, dsn: str, table: str = DEFAULT_TABLE, *, read_only: bool = False) -> None:
        params = connection_params(dsn, "the PostgreSQL schema registry", "sfstream")
        from psycopg import sql

        self._parts = table_parts(table)
        self.database = describe_database(params)
        self.table = table
        self.read_only = read_only
        self._db = PgConnection(
            params,
            f"schema registry {self.describe()}",
            "the registry is closed",
            read_only=read_only,
            prepare=self._create,
        )
        self._name = sql.Identifier(*self._parts)

        def compose(text: str) -> sql.Composed:
            return sql.SQL(text).format(table=self._name)

        self._by_fingerprint = compose(_SELECT + " AND fingerprint = %s ORDER BY version LIMIT 1")
        self._latest = compose(_SELECT + " ORDER BY version DESC LIMIT 1")
        self._version = compose(_SELECT + " AND version = %s")
        self._history = compose(_SELECT + " ORDER BY version")
        self._insert = compose(_INSERT)
        self._subjects = compose("SELECT DISTINCT subject FROM {table} ORDER BY subject")
        self._lock_prefix = f"sfstream.schemas:{table}:"

    def __repr__(self) -> str:
        flag = ", read_only=True" if self.read_only else ""
        return f"PostgresSchemaRegistry({self.database!r}, table={self.table!r}{flag})"

    def describe(self) -> str:
        """Where the versions are kept, for messages: `table sfstream_schemas in postgresql://
        user@host/db`."""
        return f"table {self.table} in {self.database}"

    async def create_table(self) -> bool:
        """Create the table; True when it was created, False when it was there already."""
        if self.read_only:
            raise StorageError(f"schema registry {self.describe()} is open read-only")

        async def work(conn: psycopg.AsyncConnection[TupleRow]) -> bool:
            cursor = await conn.execute("SELECT to_regclass(%s) IS NULL", (regclass(self._parts),))
            row = await cursor.fetchone()
            return bool(row and row[0])

        missing = await self._db.run("create the table", work, prepare=False)
        await self._db.run("create the table", _nothing)
        return missing

    async def register(
        self,
        subject: str,
        schema: dict[str, Any],
        *,
        avro: dict[str, Any],
        schema_id: str | None = None,
    ) -> tuple[SchemaVersion, bool]:
        if self.read_only:
            raise StorageError(
                f"schema registry {self.describe()} is open read-only; cannot register"
            )
        from psycopg.types.json import Jsonb

        digest = fingerprint(schema)

        async def work(conn: psycopg.AsyncConnection[TupleRow]) -> tuple[SchemaVersion, bool]:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (_key(self._lock_prefix + subject),)
                )
                cursor = await conn.execute(self._by_fingerprint, (subject, digest))
                found = await cursor.fetchone()
                if found is not None:
                    return _version(found), False
                cursor = await conn.execute(self._latest, (subject,))
                latest = await cursor.fetchone()
                version = next_version(
                    subject,
                    schema,
                    avro=avro,
                    schema_id=schema_id,
                    previous=_version(latest) if latest is not None else None,
                )
                await conn.execute(
                    self._insert,
                    (
                        subject,
                        version.version,
                        version.fingerprint,
                        Jsonb(version.schema),
                        Jsonb(version.avro),
                        version.schema_id,
                        Jsonb(version.diff),
                        version.breaking,
                        datetime.fromisoformat(version.created_at),
                    ),
                )
            return version, True

        return await self._db.run("register", work)

    async def get(self, subject: str, version: int | None = None) -> SchemaVersion | None:
        params: tuple[object, ...]
        query, params = self._latest, (subject,)
        if version is not None:
            query, params = self._version, (subject, version)

        async def work(conn: psycopg.AsyncConnection[TupleRow]) -> SchemaVersion | None:
            rows = await self._select(conn, query, params)
            return _version(rows[0]) if rows else None

        return await self._db.run("get", work)

    async def history(self, subject: str) -> list[SchemaVersion]:
        async def work(conn: psycopg.AsyncConnection[TupleRow]) -> list[SchemaVersion]:
            return [_version(row) for row in await self._select(conn, self._history, (subject,))]

        return await self._db.run("history", work)

    async def subjects(self) -> list[str]:
        async def work(conn: psycopg.AsyncConnection[TupleRow]) -> list[str]:
            return [str(row[0]) for row in await self._select(conn, self._subjects, ())]

        return await self._db.run("subjects", work)

    async def close(self) -> None:
        await self._db.close()

    # -- queries -----------------------------------------------------------------------------

    async def _select(
        self,
        conn: psycopg.AsyncConnection[TupleRow],
        query: sql.Composed,
        params: tuple[object, ...],
    ) -> list[TupleRow]:
        import psycopg

        try:
            cursor = await conn.execute(query, params)
        except psycopg.errors.UndefinedTable:
            if self.read_only:
                return []  # nothing registered yet; a read-only registry creates nothing
            raise
        return await cursor.fetchall()

    async def _create(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        """Create the table if missing (the connection's `prepare`)."""
        from psycopg import sql

        async with conn.transaction():
            # Serializes CREATE TABLE IF NOT EXISTS, which races between sessions.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s)", (_key(f"sfstream.create:{self.table}"),)
            )
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} ("
                    " subject text NOT NULL,"
                    " version integer NOT NULL,"
                    " fingerprint text NOT NULL,"
                    " json_schema jsonb NOT NULL,"
                    " avro_schema jsonb NOT NULL,"
                    " schema_id text,"
                    " diff jsonb NOT NULL,"
                    " breaking boolean NOT NULL,"
                    " created_at timestamptz NOT NULL,"
                    " PRIMARY KEY (subject, version))"
                ).format(self._name)
            )


async def _nothing(conn: Any) -> None:
    """A call that only makes sure the connection (and the table) are ready."""


def _version(row: tuple[Any, ...]) -> SchemaVersion:
    subject, version, digest, schema, avro, schema_id, changes, breaking, created_at = row
    created = created_at.astimezone(UTC).isoformat() if isinstance(created_at, datetime) else ""
    return SchemaVersion(
        subject=str(subject),
        version=int(version),
        fingerprint=str(digest),
        schema=schema,
        avro=avro,
        schema_id=schema_id,
        diff=changes,
        breaking=bool(breaking),
        created_at=created,
    )


def _key(text: str) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def table_beside(state_table: str) -> str:
    """The registry's table in the schema of the state's table (`state.checkpoints` ->
    `state.sfstream_schemas`)."""
    schema, dot, _ = state_table.rpartition(".")
    return f"{schema}{dot}{DEFAULT_TABLE}"
