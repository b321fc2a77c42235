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

Schema versions (`PRAGMA user_version`), migrated in place when a writable store opens the
file, keeping every checkpoint: 1, the table `sfstream_checkpoints`; 2, the table
`sfstream_overrides` beside it (operators' pending positions); 3, the nullable column
`event_time` of `sfstream_checkpoints` (`Checkpoint.event_time`, epoch seconds); 4, the
tables `sfstream_leases` and `sfstream_members` (leases, below).

`read_only=True` opens the file for reading only (`sfstream state show`): it never creates,
migrates or chmods the file, and works on a read-only file system; a missing file reads as
no checkpoints, leases or members (so does a file of a schema before 4).

The run lock (`owner`) is an exclusive `flock` on `<database>-run.lock` beside the file: it
covers the whole database, so one run uses a state database at a time.

Leases (`sfstream.state.base.LeaseStore`) let several processes on one host share the file
instead: a run with leases does not take the run lock. Every lease write and every fenced
commit runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's single write lock at
once, so that the read-decide-write of one process cannot interleave with another's; a
process that finds the lock taken waits for it (the busy timeout, `_BUSY_TIMEOUT_S`) before
it reports `StorageUnavailableError`. Times are `time.time()` taken inside that
transaction: the processes share the host's clock, and the times follow the order of the
writes. A released lease keeps its token (the next owner's is one more); refused fenced
commits are counted in the stale stream's lease row. Expired members are deleted when a
worker joins.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, TypeVar

from sfstream.errors import LeaseLostError, SfStreamError, StorageError, StorageUnavailableError
from sfstream.state import _runlock
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

T = TypeVar("T")

SCHEMA_VERSION: Final = 4
"""`PRAGMA user_version` of the schema this module writes; a migration bumps it."""

_PRIVATE: Final = 0o600
_BUSY_TIMEOUT_S: Final = 5.0
# Free space below which an I/O error on the database is reported as a full disk: SQLite
# says "disk I/O error" when it cannot grow its shared-memory or WAL file.
_NEARLY_FULL_BYTES: Final = 8 * 1024 * 1024
# Well under SQLite's smallest SQLITE_MAX_VARIABLE_NUMBER (999 before 3.32).
_CHUNK: Final = 500
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS sfstream_checkpoints ("
    " stream TEXT PRIMARY KEY,"
    " replay_id INTEGER NOT NULL,"
    " updated_at TEXT NOT NULL)"
)
_SCHEMA_OVERRIDES: Final = (
    "CREATE TABLE IF NOT EXISTS sfstream_overrides ("
    " stream TEXT PRIMARY KEY,"
    " start INTEGER,"
    " previous INTEGER,"
    " requested_at TEXT NOT NULL)"
)
_ADD_EVENT_TIME: Final = "ALTER TABLE sfstream_checkpoints ADD COLUMN event_time REAL"
_SELECT: Final = "SELECT stream, replay_id, updated_at, event_time FROM sfstream_checkpoints"
# A read-only store on a file of an earlier schema: no event times yet.
_SELECT_V2: Final = "SELECT stream, replay_id, updated_at, NULL FROM sfstream_checkpoints"
_SELECT_OVERRIDES: Final = "SELECT stream, start, previous, requested_at FROM sfstream_overrides"
_UPSERT: Final = (
    "INSERT INTO sfstream_checkpoints (stream, replay_id, updated_at, event_time) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (stream) DO UPDATE SET "
    "replay_id = excluded.replay_id, updated_at = excluded.updated_at, "
    "event_time = excluded.event_time"
)
_UPSERT_OVERRIDE: Final = (
    "INSERT INTO sfstream_overrides (stream, start, previous, requested_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (stream) DO UPDATE SET "
    "start = excluded.start, previous = excluded.previous, requested_at = excluded.requested_at"
)
_CLEAR_OVERRIDE: Final = "DELETE FROM sfstream_overrides WHERE stream = ?"
# Version 4. `owner` is NULL once released; `token` survives releases, so that the next
# owner's is one more. The refused_* columns describe the last refused fenced commit.
_SCHEMA_LEASES: Final = (
    "CREATE TABLE IF NOT EXISTS sfstream_leases ("
    " stream TEXT PRIMARY KEY,"
    " owner TEXT NULL,"
    " token INTEGER NOT NULL,"
    " expires_at REAL,"
    " acquired_at REAL,"
    " refused INTEGER NOT NULL DEFAULT 0,"
    " refused_at REAL,"
    " refused_token INTEGER,"
    " refused_worker TEXT)"
)
_SCHEMA_MEMBERS: Final = (
    "CREATE TABLE IF NOT EXISTS sfstream_members ("
    " worker TEXT PRIMARY KEY,"
    " expires_at REAL,"
    " joined_at REAL)"
)
_SELECT_LEASES: Final = (
    "SELECT stream, owner, token, expires_at, acquired_at, refused, refused_at, "
    "refused_token, refused_worker FROM sfstream_leases"
)
_INSERT_LEASE: Final = (
    "INSERT INTO sfstream_leases (stream, owner, token, expires_at, acquired_at) "
    "VALUES (?, ?, 1, ?, ?)"
)
_TAKE_LEASE: Final = (
    "UPDATE sfstream_leases SET owner = ?, token = token + 1, expires_at = ?, acquired_at = ? "
    "WHERE stream = ?"
)
_EXTEND_LEASE: Final = "UPDATE sfstream_leases SET expires_at = ? WHERE stream = ?"
_RENEW_LEASE: Final = (
    "UPDATE sfstream_leases SET expires_at = ? WHERE stream = ? AND owner = ? AND token = ?"
)
_RELEASE_LEASE: Final = (
    "UPDATE sfstream_leases SET owner = NULL, expires_at = min(expires_at, ?) "
    "WHERE stream = ? AND owner = ? AND token = ?"
)
_REFUSE: Final = (
    "UPDATE sfstream_leases SET refused = refused + 1, refused_at = ?, refused_token = ?, "
    "refused_worker = ? WHERE stream = ?"
)
_JOIN: Final = (
    "INSERT INTO sfstream_members (worker, expires_at, joined_at) VALUES (?, ?, ?) "
    "ON CONFLICT (worker) DO UPDATE SET expires_at = excluded.expires_at"
)


class _MissingError(Exception):
    """A read-only store's file does not exist: there is nothing to read."""


class SqliteStateStore:
    """Checkpoints, and leases with fencing tokens, in an SQLite database file.

    The file and its directory are created on first use. Use it as an async context manager,
    or call `close()`.

    Args:
        path: the database file; `~` is expanded.
        inline_commits: `commit` runs on the event loop's thread instead of a worker thread.
        read_only: only read (see the module); every change raises `StorageError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        inline_commits: bool = False,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()
        self.read_only = read_only
        self._inline_commits = inline_commits
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._version = SCHEMA_VERSION
        self._closed = False

    def __repr__(self) -> str:
        if self.read_only:
            return f"SqliteStateStore({str(self.path)!r}, read_only=True)"
        return f"SqliteStateStore({str(self.path)!r})"

    @property
    def lock_path(self) -> Path:
        """The file whose `flock` is the run lock (`owner`)."""
        return Path(f"{self.path}-run.lock")

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
        try:
            rows = await self._run(lambda conn: _load(conn, wanted, self.path, self._version))
        except _MissingError:
            return {}
        return {row.stream: row for row in rows}

    async def commit(
        self,
        replay_ids: Mapping[str, int],
        event_times: Mapping[str, float] | None = None,
        *,
        fence: Fence | None = None,
    ) -> None:
        """Set several checkpoints in one transaction: all of them are stored, or none.

        `event_times`: the event time of some of them (see `StateStore.commit`). It also
        clears the pending overrides of these streams. With `fence`, it is stored only if
        every stream's lease still has the fence's token (see `StateStore.commit`).

        Raises:
            LeaseLostError: the fence is stale for some streams; nothing was stored, and
                the refusal was recorded in their leases.
        """
        batch = check_batch(replay_ids)
        times = check_event_times(event_times, replay_ids)
        tokens = check_fence(fence, replay_ids)
        worker = ""
        if fence is not None and tokens is not None:
            # `check_fence` checks only that each token is an int: one outside SQLite's
            # INTEGER would fail to bind (OverflowError) when its refusal is recorded.
            worker = check_worker(fence.worker)
            check_tokens(tokens)
        if not batch:
            return
        self._writable("commit")
        # The fenced check is one more indexed read in the same transaction: it stays on
        # the event loop's thread with `inline_commits` too.
        if self._inline_commits:
            stale = self._locked(lambda conn: _commit(conn, batch, times, tokens, worker))
        else:
            stale = await self._run(lambda conn: _commit(conn, batch, times, tokens, worker))
        if stale:
            raise LeaseLostError(fence_error(stale, worker), streams=stale)

    async def reset(self, stream: str) -> bool:
        """Forget a stream's checkpoint and its pending override; returns whether it had a
        checkpoint."""
        check_stream(stream)
        self._writable("reset")
        return await self._run(lambda conn: _reset(conn, stream))

    async def override(self, stream: str, start: int | None) -> Override:
        """Record an operator's position for `stream` (see `StateStore.override`)."""
        start = check_start(stream, start)
        self._writable("override")
        return await self._run(lambda conn: _override(conn, stream, start))

    async def overrides(self, streams: Iterable[str] | None = None) -> dict[str, Override]:
        """The pending overrides of `streams` (all of them when None)."""
        wanted = check_streams(streams)
        if wanted == []:
            return {}
        try:
            rows = await self._run(lambda conn: _overrides(conn, wanted, self.path, self._version))
        except _MissingError:
            return {}
        return {row.stream: row for row in rows}

    async def acquire(self, streams: Iterable[str], worker: str, ttl_s: float) -> dict[str, Lease]:
        """Take the leases of `streams` that are free, for `ttl_s` seconds; the ones taken
        (see `LeaseStore.acquire`). A lease `worker` holds is renewed, keeping its token."""
        wanted = check_streams(streams) or []
        check_worker(worker)
        ttl = check_ttl(ttl_s)
        self._writable("acquire leases")
        if not wanted:
            return {}
        return await self._run(lambda conn: _acquire(conn, wanted, worker, ttl, self.path))

    async def renew(self, tokens: Mapping[str, int], worker: str, ttl_s: float) -> dict[str, Lease]:
        """Extend the leases `worker` still holds with these tokens; the ones renewed."""
        pairs = check_tokens(tokens)
        check_worker(worker)
        ttl = check_ttl(ttl_s)
        self._writable("renew leases")
        if not pairs:
            return {}
        return await self._run(lambda conn: _renew(conn, pairs, worker, ttl, self.path))

    async def release(self, tokens: Mapping[str, int], worker: str) -> None:
        """Give up the leases `worker` holds with these tokens (others are left alone)."""
        pairs = check_tokens(tokens)
        check_worker(worker)
        self._writable("release leases")
        if pairs:
            await self._run(lambda conn: _release(conn, pairs, worker))

    async def leases(self, streams: Iterable[str] | None = None) -> dict[str, Lease]:
        """The leases of `streams` (all of them when None), held or not."""
        wanted = check_streams(streams)
        if wanted == []:
            return {}
        try:
            return await self._run(
                lambda conn: _read_leases(conn, wanted, self.path, self._version)
            )
        except _MissingError:
            return {}

    async def join(self, worker: str, ttl_s: float) -> None:
        """Record (or refresh) `worker` as a member for `ttl_s` seconds. One that had expired
        joins anew (a new `joined_at`)."""
        check_worker(worker)
        ttl = check_ttl(ttl_s)
        self._writable("join the members")
        await self._run(lambda conn: _join(conn, worker, ttl))

    async def leave(self, worker: str) -> None:
        """Remove `worker` from the members at once."""
        check_worker(worker)
        self._writable("leave the members")
        await self._run(lambda conn: _leave(conn, worker))

    async def members(self) -> list[Member]:
        """The members that have not expired, by worker id."""
        try:
            return await self._run(lambda conn: _members(conn, self.path, self._version))
        except _MissingError:
            return []

    @contextlib.asynccontextmanager
    async def owner(self, streams: Iterable[str]) -> AsyncIterator[None]:
        """Own the database for the block (see `StateStore.owner`): an exclusive `flock` on
        `lock_path`, which other processes (and other stores) cannot take meanwhile.

        Raises:
            StreamOwnedError: another live process (or store) holds it.
            StorageError: the lock file cannot be created (read-only file system, full
                disk, permissions).
        """
        wanted = check_streams(streams) or []
        self._writable("own streams")
        if self._closed:
            raise StorageError(f"state database {self.path}: the store is closed")
        fd = await asyncio.to_thread(self._take_run_lock, wanted)
        try:
            yield
        finally:
            await asyncio.to_thread(_runlock.release, fd)

    async def close(self) -> None:
        """Close the connection (after any call in flight); calling it again does nothing."""
        await asyncio.to_thread(self._close)

    # -- worker thread ---------------------------------------------------------------------

    def _writable(self, action: str) -> None:
        if self.read_only:
            raise StorageError(
                f"state database {self.path} is opened read-only; cannot {action} (open it "
                f"without read_only to change checkpoints)"
            )

    def _take_run_lock(self, streams: list[str]) -> int:
        lock_path = self.lock_path
        try:
            return _runlock.take(lock_path, streams)
        except _runlock.LockHeldError as held:
            raise _owned(self.path, streams, held.holder) from None
        except OSError as exc:
            error = _translate(self.path, exc, writing=True)
            if exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT) or _file_system(lock_path):
                raise error from exc  # the same for the database and its lock file
            raise StorageError(f"{error} (its run lock file {lock_path})") from exc

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise StorageError(f"state database {self.path}: the store is closed")
            try:
                if self._conn is None:
                    if self.read_only:
                        self._conn, self._version = _connect_read_only(self.path)
                    else:
                        self._conn = _connect(self.path)
                return work(self._conn)
            except (sqlite3.Error, OSError) as exc:
                error = _translate(self.path, exc, writing=not self.read_only)
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


def _owned(path: Path, streams: list[str], holder: _runlock.Holder) -> StreamOwnedError:
    described = holder.describe()
    owned = sorted(holder.streams & set(streams)) if holder.streams is not None else streams
    if owned:
        return StreamOwnedError(owned_message(owned, described), streams=owned, holder=described)
    # The lock covers the whole database: say so rather than blame a stream the run does not
    # stream.
    others = f" streaming {len(holder.streams)} other stream(s)" if holder.streams else ""
    return StreamOwnedError(
        f"the state database {path} is in use by a running `sfstream run`"
        + (f" ({described})" if described else "")
        + f"{others}; one run uses a state database at a time",
        streams=list(streams),
        holder=described,
    )


_FileSystem = Literal["read-only", "full"]


def _file_system(path: Path) -> _FileSystem | None:
    """Whether the file system holding `path` is mounted read-only or (nearly) full."""
    probe = path
    with contextlib.suppress(OSError):
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        info = os.statvfs(probe)
        if info.f_flag & os.ST_RDONLY:
            return "read-only"
        # Root may use the blocks reserved for it; others stop at f_bavail.
        blocks = info.f_bfree if os.geteuid() == 0 else info.f_bavail
        if blocks * info.f_frsize < _NEARLY_FULL_BYTES:
            return "full"
    return None


def _translate(path: Path, exc: sqlite3.Error | OSError, *, writing: bool = True) -> SfStreamError:
    """The sfstream error for a `sqlite3` or OS error: the one place that maps them."""
    verb = "write" if writing else "read"
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EROFS or (
            exc.errno in (errno.EACCES, errno.EPERM) and _file_system(path) == "read-only"
        ):
            return _read_only_fs(path, verb)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _full(path, reason)
        if not writing:
            return StorageError(f"cannot read the state database {path}: {reason}")
        return StorageError(
            f"cannot write the state database {path}: {reason}; check that it and its "
            f"directory are writable by this user"
        )
    # Errors the module raises itself (misuse) carry no SQLite result code.
    code: int = getattr(exc, "sqlite_errorcode", -1)
    primary = code & 0xFF if code >= 0 else -1
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StorageUnavailableError(
            f"state database {path} is locked by another process or connection ({exc})"
        )
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return _corrupt(path, str(exc))
    if primary == sqlite3.SQLITE_FULL:
        return _full(path, f"SQLite reports '{exc}'")
    if primary in (
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_IOERR,
    ):
        file_system = _file_system(path)
        if file_system == "read-only" and writing:
            return _read_only_fs(path, verb)
        if file_system == "full":
            return _full(path, f"SQLite reports '{exc}'")
    if primary in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        if not writing:
            return StorageError(f"cannot read the state database {path} ({exc})")
        return StorageError(
            f"cannot write the state database {path} ({exc}); "
            f"check that the file and its directory are writable"
        )
    if primary == sqlite3.SQLITE_IOERR:
        return StorageError(
            f"state database {path}: the disk reported an error ({exc}); check the disk "
            f"and the system log"
        )
    return StorageError(f"state database {path}: {exc}")


def _read_only_fs(path: Path, verb: str) -> StorageError:
    return StorageError(
        f"cannot {verb} the state database {path}: the file system is read-only; "
        f"point state.path at a writable place"
    )


def _full(path: Path, reported: str) -> StorageError:
    return StorageError(
        f"the disk holding the state database {path} is full ({reported}); free space and restart"
    )


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


def _connect_read_only(path: Path) -> tuple[sqlite3.Connection, int]:
    """A connection that cannot write and leaves no file behind, and the schema version.

    A WAL database opened with `mode=ro` gets `-wal` and `-shm` companions, which stay
    behind if they did not exist (and cannot be made on a read-only file system). They
    exist while a writer has the database open: then it is read through them; otherwise
    nobody is writing, the database file holds everything, and it is read as immutable.
    """
    if not path.exists():
        raise _MissingError
    if not stat.S_ISREG(path.stat().st_mode):
        raise StorageError(f"state database {path} is not a regular file")
    uri = path.absolute().as_uri() + "?mode=ro"
    if not all(Path(f"{path}{suffix}").exists() for suffix in ("-wal", "-shm")):
        uri += "&immutable=1"
    return _open_uri(path, uri)


def _open_uri(path: Path, uri: str) -> tuple[sqlite3.Connection, int]:
    conn = sqlite3.connect(
        uri, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA query_only = 1")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        _check_health(conn, path)
        _check_version(version, path)
    except BaseException:
        conn.close()
        raise
    return conn, version


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


def _check_health(conn: sqlite3.Connection, path: Path) -> None:
    problem = str(conn.execute("PRAGMA quick_check(1)").fetchone()[0])
    if problem != "ok":
        raise _corrupt(path, problem)


def _check_version(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"state database {path} has schema version {version}, newer than this "
            f"sfstream understands ({SCHEMA_VERSION}); upgrade sfstream"
        )


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    journal = _journal_mode_wal(conn)
    if journal.lower() != "wal":
        raise StorageError(
            f"state database {path} cannot use a write-ahead log (journal mode {journal}); "
            f"put it on a local filesystem"
        )
    conn.execute("PRAGMA synchronous=FULL")
    _check_health(conn, path)
    with _transaction(conn, "IMMEDIATE"):
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        _check_version(version, path)
        if version < 1:
            conn.execute(_SCHEMA)
        # Migrations from version N to N+1, each in this transaction; data is kept.
        if version < 2:
            conn.execute(_SCHEMA_OVERRIDES)
        if version < 3 and "event_time" not in _columns(conn, "sfstream_checkpoints"):
            conn.execute(_ADD_EVENT_TIME)
        if version < 4:
            conn.execute(_SCHEMA_LEASES)
            conn.execute(_SCHEMA_MEMBERS)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


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


def _select(
    conn: sqlite3.Connection, query: str, wanted: list[str] | None
) -> list[tuple[object, ...]]:
    # One read transaction: a consistent snapshot even when the ids span several queries.
    with _transaction(conn, "DEFERRED"):
        return _fetch(conn, query, wanted)


def _fetch(
    conn: sqlite3.Connection, query: str, wanted: list[str] | None
) -> list[tuple[object, ...]]:
    """The rows of `query` for the `wanted` streams (all when None), in the caller's
    transaction."""
    if wanted is None:
        return list(conn.execute(query))
    rows: list[tuple[object, ...]] = []
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        # Only "?" placeholders are formatted in; the ids are bound parameters.
        rows.extend(conn.execute(f"{query} WHERE stream IN ({marks})", chunk))
    return rows


def _load(
    conn: sqlite3.Connection, wanted: list[str] | None, path: Path, version: int
) -> list[Checkpoint]:
    if version < 1:
        return []  # a read-only store on a file no writer has set up yet
    query = _SELECT if version >= 3 else _SELECT_V2
    return [_checkpoint(row, path) for row in _select(conn, query, wanted)]


def _overrides(
    conn: sqlite3.Connection, wanted: list[str] | None, path: Path, version: int
) -> list[Override]:
    if version < 2:
        return []  # a read-only store on a file of an earlier schema: no overrides yet
    return [_override_row(row, path) for row in _select(conn, _SELECT_OVERRIDES, wanted)]


def _checkpoint(row: tuple[object, ...], path: Path) -> Checkpoint:
    stream, replay_id, updated_at, event_time = row
    if not (
        isinstance(stream, str)
        and isinstance(replay_id, int)
        and isinstance(updated_at, str)
        and (event_time is None or isinstance(event_time, int | float))
    ):
        # SQLite columns are not strictly typed: a foreign writer can store anything.
        raise _corrupt(path, f"malformed checkpoint row {row!r}")
    return Checkpoint(
        stream, replay_id, updated_at, None if event_time is None else float(event_time)
    )


def _override_row(row: tuple[object, ...], path: Path) -> Override:
    stream, start, previous, requested_at = row
    if not (
        isinstance(stream, str)
        and (start is None or isinstance(start, int))
        and (previous is None or isinstance(previous, int))
        and isinstance(requested_at, str)
    ):
        raise _corrupt(path, f"malformed override row {row!r}")
    return Override(stream, start, previous, requested_at)


def _commit(
    conn: sqlite3.Connection,
    batch: list[tuple[str, int]],
    times: dict[str, float],
    tokens: dict[str, int] | None = None,
    worker: str = "",
) -> list[str]:
    """Store the batch; with the `tokens` of `worker`'s fence, only if every stream's lease
    has its token. Returns the stale streams, sorted: then only their refusals are stored."""
    # Taken under the lock, so that commits applied later never carry an earlier time.
    updated_at = iso_utc(utc_now())
    with _transaction(conn, "IMMEDIATE"):
        if tokens is not None:
            # The write lock is held from BEGIN IMMEDIATE: no other process can take a
            # lease between this check and the upsert below.
            current = _fetch(conn, "SELECT stream, token FROM sfstream_leases", sorted(tokens))
            held = {row[0]: row[1] for row in current}
            stale = sorted(stream for stream, token in tokens.items() if held.get(stream) != token)
            if stale:
                refused_at = time.time()
                conn.executemany(_REFUSE, [(refused_at, tokens[s], worker, s) for s in stale])
                return stale  # commits the bookkeeping only
        conn.executemany(
            _UPSERT,
            [(stream, replay_id, updated_at, times.get(stream)) for stream, replay_id in batch],
        )
        conn.executemany(_CLEAR_OVERRIDE, [(stream,) for stream, _ in batch])
    return []


def _reset(conn: sqlite3.Connection, stream: str) -> bool:
    with _transaction(conn, "IMMEDIATE"):
        cursor = conn.execute("DELETE FROM sfstream_checkpoints WHERE stream = ?", (stream,))
        conn.execute(_CLEAR_OVERRIDE, (stream,))
        return cursor.rowcount > 0


def _override(conn: sqlite3.Connection, stream: str, start: int | None) -> Override:
    requested_at = iso_utc(utc_now())
    with _transaction(conn, "IMMEDIATE"):
        pending = conn.execute(
            "SELECT previous FROM sfstream_overrides WHERE stream = ?", (stream,)
        ).fetchone()
        if pending is not None:
            previous = pending[0]
        else:
            row = conn.execute(
                "SELECT replay_id FROM sfstream_checkpoints WHERE stream = ?", (stream,)
            ).fetchone()
            previous = row[0] if row is not None else None
        if start is not None and start >= 0:
            conn.execute(_UPSERT, (stream, start, requested_at, None))
        else:
            conn.execute("DELETE FROM sfstream_checkpoints WHERE stream = ?", (stream,))
        conn.execute(_UPSERT_OVERRIDE, (stream, start, previous, requested_at))
    return Override(stream, start, previous if isinstance(previous, int) else None, requested_at)


# -- leases ----------------------------------------------------------------------------------
# Each write takes `now` after BEGIN IMMEDIATE, under the database's write lock.


def _acquire(
    conn: sqlite3.Connection, wanted: list[str], worker: str, ttl_s: float, path: Path
) -> dict[str, Lease]:
    with _transaction(conn, "IMMEDIATE"):
        now = time.time()
        expires_at = now + ttl_s
        current = _lease_rows(conn, wanted, now, path)
        taken: list[str] = []
        for stream in wanted:
            lease = current.get(stream)
            if lease is None:
                conn.execute(_INSERT_LEASE, (stream, worker, expires_at, now))
            elif not lease.held:  # released or expired: a new ownership, a new token
                conn.execute(_TAKE_LEASE, (worker, expires_at, now, stream))
            elif lease.owner == worker:  # already ours: renewed, same token
                conn.execute(_EXTEND_LEASE, (expires_at, stream))
            else:
                continue
            taken.append(stream)
        return _lease_rows(conn, taken, now, path)


def _renew(
    conn: sqlite3.Connection, pairs: list[tuple[str, int]], worker: str, ttl_s: float, path: Path
) -> dict[str, Lease]:
    with _transaction(conn, "IMMEDIATE"):
        now = time.time()
        renewed = [
            stream
            for stream, token in pairs
            # Matches an expired lease nobody took since: the token still fences it.
            if conn.execute(_RENEW_LEASE, (now + ttl_s, stream, worker, token)).rowcount > 0
        ]
        return _lease_rows(conn, renewed, now, path)


def _release(conn: sqlite3.Connection, pairs: list[tuple[str, int]], worker: str) -> None:
    with _transaction(conn, "IMMEDIATE"):
        now = time.time()
        conn.executemany(_RELEASE_LEASE, [(now, stream, worker, token) for stream, token in pairs])


def _read_leases(
    conn: sqlite3.Connection, wanted: list[str] | None, path: Path, version: int
) -> dict[str, Lease]:
    if version < 4:
        return {}  # a read-only store on a file of an earlier schema: no leases yet
    with _transaction(conn, "DEFERRED"):
        return _lease_rows(conn, wanted, time.time(), path)


def _lease_rows(
    conn: sqlite3.Connection, wanted: list[str] | None, now: float, path: Path
) -> dict[str, Lease]:
    leases = (_lease(row, now, path) for row in _fetch(conn, _SELECT_LEASES, wanted))
    return {lease.stream: lease for lease in leases}


def _lease(row: tuple[object, ...], now: float, path: Path) -> Lease:
    stream, owner, token, expires_at, acquired_at = row[:5]
    refused, refused_at, refused_token, worker = row[5:]
    if not (
        isinstance(stream, str)
        and (owner is None or isinstance(owner, str))
        and isinstance(token, int)
        and isinstance(expires_at, int | float)
        and isinstance(acquired_at, int | float)
        and isinstance(refused, int)
        and (refused_at is None or isinstance(refused_at, int | float))
        and (refused_token is None or isinstance(refused_token, int))
        and (worker is None or isinstance(worker, str))
    ):
        raise _corrupt(path, f"malformed lease row {row!r}")
    return Lease(
        stream,
        owner,
        token,
        float(expires_at),
        float(acquired_at),
        held=owner is not None and expires_at > now,
        refused=refused,
        refused_at=None if refused_at is None else float(refused_at),
        refused_token=refused_token,
        refused_worker=worker,
    )


def _join(conn: sqlite3.Connection, worker: str, ttl_s: float) -> None:
    with _transaction(conn, "IMMEDIATE"):
        now = time.time()
        # Expired members are gone: drop them, so that the table does not grow with every
        # worker id ever used, and a worker that expired joins anew.
        conn.execute("DELETE FROM sfstream_members WHERE expires_at <= ?", (now,))
        conn.execute(_JOIN, (worker, now + ttl_s, now))


def _leave(conn: sqlite3.Connection, worker: str) -> None:
    with _transaction(conn, "IMMEDIATE"):
        conn.execute("DELETE FROM sfstream_members WHERE worker = ?", (worker,))


def _members(conn: sqlite3.Connection, path: Path, version: int) -> list[Member]:
    if version < 4:
        return []  # a read-only store on a file of an earlier schema: no members yet
    with _transaction(conn, "DEFERRED"):
        rows = conn.execute(
            "SELECT worker, expires_at, joined_at FROM sfstream_members "
            "WHERE expires_at > ? ORDER BY worker",
            (time.time(),),
        ).fetchall()
    members: list[Member] = []
    for row in rows:
        worker, expires_at, joined_at = row
        if not (
            isinstance(worker, str)
            and isinstance(expires_at, int | float)
            and isinstance(joined_at, int | float)
        ):
            raise _corrupt(path, f"malformed member row {row!r}")
        members.append(Member(worker, float(expires_at), float(joined_at)))
    return members
