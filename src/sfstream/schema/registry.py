"""The schema registry: every version of every subject's schema, with the diff of each.

A subject is a stream id (`sf.event.account_changes`), or a stream id and an entity for
streams that carry several entities (`sf.event.all_changes.account`). Versions count up from
1; registering a schema identical to an existing version (same canonical bytes) returns that
version. A backend is done when `sfstream.testing.schemas.check_schema_registry` passes
against it. The registry lives where the state does
(`sfstream.runners.wiring.open_registry`):

- `SqliteSchemaRegistry` (here): the embedded backend, a file beside the SQLite state file;
- `sfstream.schema.postgres.PostgresSchemaRegistry`: a table in the state's PostgreSQL
  database;
- `sfstream.schema.dynamodb.DynamoDbSchemaRegistry`: items in the state's DynamoDB table.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgspec
import orjson

from sfstream.errors import StorageError, StorageUnavailableError
from sfstream.schema.compat import diff, is_breaking
from sfstream.schema.render import canonical_bytes, fingerprint

_T = TypeVar("_T")


class SchemaVersion(msgspec.Struct, frozen=True):
    """One registered version of a subject's schema."""

    subject: str
    version: int
    fingerprint: str
    schema: dict[str, Any]
    """JSON Schema (draft 2020-12) of the records' `data`."""
    avro: dict[str, Any]
    schema_id: str | None
    """Salesforce's schema id the version was derived from, when there is one."""
    diff: list[dict[str, Any]]
    """Changes from the previous version (empty for version 1)."""
    breaking: bool
    created_at: str


@runtime_checkable
class SchemaRegistry(Protocol):
    async def register(
        self,
        subject: str,
        schema: dict[str, Any],
        *,
        avro: dict[str, Any],
        schema_id: str | None = None,
    ) -> tuple[SchemaVersion, bool]:
        """Store `schema` for `subject`; returns (its version, whether it is new)."""
        ...

    async def get(self, subject: str, version: int | None = None) -> SchemaVersion | None:
        """One version (the latest when `version` is None), or None."""
        ...

    async def history(self, subject: str) -> list[SchemaVersion]:
        """Every version of `subject`, oldest first."""
        ...

    async def subjects(self) -> list[str]:
        """Every subject with at least one version, sorted."""
        ...

    async def close(self) -> None: ...


_SCHEMA_DDL = """
CREATE TABLE IF NOT EXISTS sfstream_schemas (
    subject TEXT NOT NULL,
    version INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    json_schema BLOB NOT NULL,
    avro_schema BLOB NOT NULL,
    schema_id TEXT,
    diff BLOB NOT NULL,
    breaking INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (subject, version)
)
"""
_SELECT = (
    "SELECT subject, version, fingerprint, json_schema, avro_schema, schema_id, diff, "
    "breaking, created_at FROM sfstream_schemas "
)
_BY_FINGERPRINT = _SELECT + "WHERE subject = ? AND fingerprint = ? ORDER BY version LIMIT 1"
_LATEST = _SELECT + "WHERE subject = ? ORDER BY version DESC LIMIT 1"
_VERSION = _SELECT + "WHERE subject = ? AND version = ?"
_HISTORY = _SELECT + "WHERE subject = ? ORDER BY version"
_INSERT = (
    "INSERT INTO sfstream_schemas (subject, version, fingerprint, json_schema, avro_schema, "
    "schema_id, diff, breaking, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def next_version(
    subject: str,
    schema: dict[str, Any],
    *,
    avro: dict[str, Any],
    schema_id: str | None,
    previous: SchemaVersion | None,
) -> SchemaVersion:
    """The version that registering `schema` after `previous` (the subject's latest, or None)
    creates: numbered one up, with the diff from `previous` and whether it breaks readers."""
    changes = diff(previous.schema if previous else None, schema)
    return SchemaVersion(
        subject=subject,
        version=(previous.version + 1) if previous else 1,
        fingerprint=fingerprint(schema),
        schema=orjson.loads(canonical_bytes(schema)),
        avro=avro,
        schema_id=schema_id,
        diff=[c.as_dict() for c in changes],
        breaking=is_breaking(changes),
        created_at=_now(),
    )


def _row(row: tuple[Any, ...]) -> SchemaVersion:
    return SchemaVersion(
        subject=row[0],
        version=row[1],
        fingerprint=row[2],
        schema=orjson.loads(row[3]),
        avro=orjson.loads(row[4]),
        schema_id=row[5],
        diff=orjson.loads(row[6]),
        breaking=bool(row[7]),
        created_at=row[8],
    )


class SqliteSchemaRegistry:
    """The embedded registry: one SQLite file (mode 0600), WAL journal.

    Args:
        path: the database file; its directory is created when missing.
        read_only: only read (`sfstream schema list|show|history`): the file is opened
            read-only and never created, and `register` is refused; a registry that does
            not exist yet, or has no table yet, reads as empty. A read-only file or
            directory is fine (see `_connect_read_only`).
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"SqliteSchemaRegistry({str(self.path)!r}{mode})"

    def exists(self) -> bool:
        """Whether the registry's file exists (a registry is created on first write)."""
        return self.path.is_file()

    def _connect_read_only(self) -> sqlite3.Connection | None:
        """A read-only connection, or None when there is no registry (file or table) yet.

        Without a `-wal` file beside the database, no writer holds changes outside it: the
        file is read as it is (`immutable`), which writes nothing, not even SQLite's side
        files. With one (a run is writing, or one stopped without checkpointing), the file is
        opened `mode=ro`, which sees those changes; where SQLite cannot do that in place (a
        directory or `-shm` file it cannot write), the file is read as it is.
        """
        if self._conn is not None:
            return self._conn
        if not self.path.is_file():
            return None
        uri = self.path.resolve().as_uri()
        wal = self.path.with_name(self.path.name + "-wal").exists()
        conn: sqlite3.Connection | None = None
        for options in ("mode=ro", "immutable=1") if wal else ("immutable=1",):
            try:
                conn = sqlite3.connect(
                    f"{uri}?{options}",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=5.0,
                )
                found = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                    ("sfstream_schemas",),
                ).fetchone()
            except sqlite3.OperationalError as exc:
                if conn is not None:
                    conn.close()
                    conn = None
                if options == "mode=ro" and _cannot_write(exc):
                    continue
                raise
            if found is None:
                conn.close()
                return None
            self._conn = conn
            return conn
        return None

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            raise StorageError(f"schema registry {self.path} is open read-only")
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_SCHEMA_DDL)
            self._conn = conn
        return self._conn

    async def _run(
        self,
        action: str,
        work: Callable[[sqlite3.Connection], _T],
        *,
        empty: Callable[[], _T] | None = None,
    ) -> _T:
        """Run `work` on the connection, in a thread; `empty()` answers a read of a read-only
        registry that does not exist yet."""

        def call() -> _T:
            with self._lock:
                try:
                    if not self.read_only:
                        return work(self._connect())
                    conn = self._connect_read_only()
                    if conn is not None:
                        return work(conn)
                    if empty is None:
                        raise StorageError(f"schema registry {self.path} does not exist")
                    return empty()
                except sqlite3.OperationalError as exc:
                    if "locked" in str(exc) or "busy" in str(exc):
                        raise StorageUnavailableError(
                            f"schema registry {self.path} is busy ({action}): {exc}"
                        ) from exc
                    raise StorageError(f"schema registry {self.path}: {action}: {exc}") from exc
                except sqlite3.DatabaseError as exc:
                    raise StorageError(
                        f"schema registry {self.path} is not a usable SQLite database "
                        f"({action}): {exc}"
                    ) from exc
                except OSError as exc:
                    raise StorageError(
                        f"schema registry {self.path}: {action}: {exc.strerror}"
                    ) from exc

        return await asyncio.to_thread(call)

    async def register(
        self,
        subject: str,
        schema: dict[str, Any],
        *,
        avro: dict[str, Any],
        schema_id: str | None = None,
    ) -> tuple[SchemaVersion, bool]:
        if self.read_only:
            raise StorageError(f"schema registry {self.path} is open read-only; cannot register")
        digest = fingerprint(schema)
        body = canonical_bytes(schema)
        avro_body = orjson.dumps(avro, option=orjson.OPT_SORT_KEYS)

        def work(conn: sqlite3.Connection) -> tuple[SchemaVersion, bool]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = conn.execute(
                    _BY_FINGERPRINT,
                    (subject, digest),
                ).fetchone()
                if found is not None:
                    conn.execute("COMMIT")
                    return _row(found), False
                latest = conn.execute(
                    _LATEST,
                    (subject,),
                ).fetchone()
                previous = _row(latest) if latest is not None else None
                version = next_version(
                    subject, schema, avro=avro, schema_id=schema_id, previous=previous
                )
                conn.execute(
                    _INSERT,
                    (
                        subject,
                        version.version,
                        digest,
                        body,
                        avro_body,
                        schema_id,
                        orjson.dumps(version.diff),
                        int(version.breaking),
                        version.created_at,
                    ),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return version, True

        return await self._run("register", work)

    async def get(self, subject: str, version: int | None = None) -> SchemaVersion | None:
        def work(conn: sqlite3.Connection) -> SchemaVersion | None:
            if version is None:
                row = conn.execute(
                    _LATEST,
                    (subject,),
                ).fetchone()
            else:
                row = conn.execute(
                    _VERSION,
                    (subject, version),
                ).fetchone()
            return _row(row) if row is not None else None

        return await self._run("get", work, empty=lambda: None)

    async def history(self, subject: str) -> list[SchemaVersion]:
        def work(conn: sqlite3.Connection) -> list[SchemaVersion]:
            rows = conn.execute(
                _HISTORY,
                (subject,),
            ).fetchall()
            return [_row(r) for r in rows]

        return await self._run("history", work, empty=list)

    async def subjects(self) -> list[str]:
        def work(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT DISTINCT subject FROM sfstream_schemas ORDER BY subject"
            ).fetchall()
            return [str(r[0]) for r in rows]

        return await self._run("subjects", work, empty=list)

    async def close(self) -> None:
        def work() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(work)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _cannot_write(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text
