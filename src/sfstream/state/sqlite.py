"""SQLite state store: the embedded default, one file next to the connector.

The database runs in WAL mode with `synchronous=FULL`: a commit that returned is on disk,
and a process killed in the middle of a commit leaves the previous checkpoints intact (the
next opener rolls the unfinished transaction back). Only its owner may read the file: it is
created with mode 0600, an existing file is tightened to 0600, and SQLite gives its `-wal` and
`-shm` companions the mode of the database.

`sqlite3` blocks, so every call runs in a worker thread (`asyncio.to_thread`) on one
connection, except `commit` with `inline_commits` (the connector's default), which runs on
the event loop's thread: a checkpoint commit is a small WAL append, and skipping the thread
hand-off matters more to latency than the loop's short wait. A `threading.Lock` taken around
every call serializes them: unlike an `asyncio.Lock`, it stays held when the awaiting task is
cancelled and the thread runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

from sfstream.errors import SfStreamError, StorageError, StorageUnavailableError
from sfstream.state._common import check_batch, check_stream, check_streams, iso_utc, utc_now
from sfstream.state.base import Checkpoint

T = TypeVar("T")

SCHEMA_VERSION: Final = 1
"""`PRAGMA user_version` of the schema this module writes; a migration bumps it."""

_PRIVATE: Final = 0o600
_BUSY_TIMEOUT_S: Final = 5.0
# Well under SQLite's smallest SQLITE_MAX_VARIABLE_NUMBER (999 before 3.32).
_CHUNK: Final = 500
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS sfstream_checkpoints ("
    " stream TEXT PRIMARY KEY,"
    " replay_id INTEGER NOT NULL,"
    " updated_at TEXT NOT NULL)"
)
_SELECT: Final = "SELECT stream, replay_id, updated_at FROM sfstream_checkpoints"
_UPSERT: Final = (
    "INSERT INTO sfstream_checkpoints (stream, replay_id, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (stream) DO UPDATE SET "
    "replay_id = excluded.replay_id, updated_at = excluded.updated_at"
)


class SqliteStateStore:
    """Checkpoints in an SQLite database file.

    The file and its directory are created on first use. Use it as an async context manager,
    or call `close()`.

    Args:
        path: the database file; `~` is expanded.
        inline_commits: `commit` runs on the event loop's thread instead of a worker thread.
    """

    def __init__(self, path: str | os.PathLike[str], *, inline_commits: bool = False) -> None:
        self.path = Path(path).expanduser()
        self._inline_commits = inline_commits
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteStateStore({str(self.path)!r})"

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
        rows = await self._run(lambda conn: _load(conn, wanted, self.path))
        return {row.stream: row for row in rows}

    async def commit(self, replay_ids: Mapping[str, int]) -> None:
        """Set several checkpoints in one transaction: all of them are stored, or none."""
        batch = check_batch(replay_ids)
        if batch:
            if self._inline_commits:
                self._locked(lambda conn: _commit(conn, batch))
            else:
                await self._run(lambda conn: _commit(conn, batch))

    async def reset(self, stream: str) -> bool:
        """Forget a stream's checkpoint; returns whether it had one."""
        check_stream(stream)
        return await self._run(lambda conn: _reset(conn, stream))

    async def close(self) -> None:
        """Close the connection (after any call in flight); calling it again does nothing."""
        await asyncio.to_thread(self._close)

    # -- worker thread ---------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise StorageError(f"state database {self.path}: the store is closed")
            try:
                if self._conn is None:
                    self._conn = _connect(self.path)
                return work(self._conn)
            except (sqlite3.Error, OSError) as exc:
                error = _translate(self.path, exc)
                if not error.retryable:
                    # Reopen next time: the file may have been repaired, moved or replaced.
                    self._discard()
                raise error from exc

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            self._discard()

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


def _translate(path: Path, exc: sqlite3.Error | OSError) -> SfStreamError:
    """The sfstream error for a `sqlite3` or OS error: the one place that maps them."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        return StorageError(f"state database {path}: {reason}; check that it is writable")
    # Errors the module raises itself (misuse) carry no SQLite result code.
    code: int = getattr(exc, "sqlite_errorcode", -1)
    primary = code & 0xFF if code >= 0 else -1
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StorageUnavailableError(
            f"state database {path} is locked by another process or connection ({exc})"
        )
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return _corrupt(path, str(exc))
    if primary in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        return StorageError(
            f"cannot write state database {path} ({exc}); "
            f"check that the file and its directory are writable"
        )
    if primary == sqlite3.SQLITE_FULL:
        return StorageError(f"state database {path}: the disk is full ({exc})")
    return StorageError(f"state database {path}: {exc}")


def _corrupt(path: Path, detail: str) -> StorageError:
    return StorageError(
        f"state database {path} is corrupt or not an SQLite database ({detail}); "
        f"move it aside and restore a backup, or remove it to start every stream from "
        f"its initial replay policy"
    )


def _connect(path: Path) -> sqlite3.Connection:
    _prepare_file(path)
    # isolation_level=None: no implicit transactions; each method says BEGIN itself.
    conn = sqlite3.connect(
        path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        _configure(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare_file(path: Path) -> None:
    """Create the file with mode 0600 before SQLite opens it, or tighten an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _PRIVATE)
    except FileExistsError:
        _make_private(path)
    else:
        try:
            os.fchmod(fd, _PRIVATE)  # the umask may have cleared bits of 0600 itself
        finally:
            os.close(fd)
    for companion in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        if companion.exists():
            _make_private(companion)


def _make_private(path: Path) -> None:
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise StorageError(f"state database {path} is not a regular file")
    if not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        raise StorageError(
            f"state database {path} is accessible by other users (mode {mode:04o}) and "
            f"owned by uid {info.st_uid}, so sfstream cannot make it private; "
            f"its owner should run: chmod 600 {path}"
        )
    os.chmod(path, _PRIVATE)


def _journal_mode_wal(conn: sqlite3.Connection) -> str:
    """Switch to WAL, waiting out another connection that is doing the same.

    SQLite answers SQLITE_BUSY at once, without calling the busy handler, when two
    connections change the journal mode of a new database together; retry it until the busy
    timeout has passed.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    journal = _journal_mode_wal(conn)
    if journal.lower() != "wal":
        raise StorageError(
            f"state database {path} cannot use a write-ahead log (journal mode {journal}); "
            f"put it on a local filesystem"
        )
    conn.execute("PRAGMA synchronous=FULL")
    problem = str(conn.execute("PRAGMA quick_check(1)").fetchone()[0])
    if problem != "ok":
        raise _corrupt(path, problem)
    with _transaction(conn, "IMMEDIATE"):
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"state database {path} has schema version {version}, newer than this "
                f"sfstream understands ({SCHEMA_VERSION}); upgrade sfstream"
            )
        if version < 1:
            conn.execute(_SCHEMA)
        # Migrations from version N to N+1 go here, each in this transaction.
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, mode: str) -> Iterator[None]:
    """BEGIN ... COMMIT, or ROLLBACK when anything (COMMIT included) fails."""
    conn.execute(f"BEGIN {mode}")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # The original error matters; a failed rollback is undone by the next opener.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _load(conn: sqlite3.Connection, wanted: list[str] | None, path: Path) -> list[Checkpoint]:
    rows: list[tuple[object, object, object]] = []
    # One read transaction: a consistent snapshot even when the ids span several queries.
    with _transaction(conn, "DEFERRED"):
        if wanted is None:
            rows.extend(conn.execute(_SELECT))
        else:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                # Only "?" placeholders are formatted in; the ids are bound parameters.
                query = f"{_SELECT} WHERE stream IN ({marks})"
                rows.extend(conn.execute(query, chunk))
    return [_checkpoint(row, path) for row in rows]


def _checkpoint(row: tuple[object, object, object], path: Path) -> Checkpoint:
    stream, replay_id, updated_at = row
    if not (isinstance(stream, str) and isinstance(replay_id, int) and isinstance(updated_at, str)):
        # SQLite columns are not strictly typed: a foreign writer can store anything.
        raise _corrupt(path, f"malformed checkpoint row {row!r}")
    return Checkpoint(stream, replay_id, updated_at)


def _commit(conn: sqlite3.Connection, batch: list[tuple[str, int]]) -> None:
    # Taken under the lock, so that commits applied later never carry an earlier time.
    updated_at = iso_utc(utc_now())
    with _transaction(conn, "IMMEDIATE"):
        conn.executemany(_UPSERT, [(stream, replay_id, updated_at) for stream, replay_id in batch])


def _reset(conn: sqlite3.Connection, stream: str) -> bool:
    with _transaction(conn, "IMMEDIATE"):
        cursor = conn.execute("DELETE FROM sfstream_checkpoints WHERE stream = ?", (stream,))
        return cursor.rowcount > 0
