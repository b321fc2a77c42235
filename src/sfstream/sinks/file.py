"""`FileSink`: the output protocol appended to a file, fsynced before `write` returns.

The file is the durable record, so the sink takes care of it the way a log does:

- **One writer.** The sink holds an exclusive `flock` on the file while open; a second
  sink (in this process or another) on the same file is refused instead of interleaving
  its lines and truncating the other's tail.
- **Durable on return.** A batch is encoded whole, appended with `os.write` (looping until
  every byte is written) and `os.fsync`ed. Opening fsyncs the file and its directory, so a
  newly created file survives a power cut too, and so does anything a crashed predecessor
  wrote but never fsynced: `high_watermarks` reports only lines that are on disk.
- **Torn tails are repaired at open.** A crash in the middle of a write can leave a last
  line without its newline. That line was never acknowledged (its `write` never
  returned), so opening the sink truncates it away and logs the byte count. Complete lines
  are never touched; those of an interrupted batch stay, as real events that
  `high_watermarks` counts, so the engine resumes after them without duplicates.
- **A refused write is undone.** When `os.write` or `os.fsync` fails, the file is cut back
  to its size before the batch, so no partial batch stays behind; if even that fails, the
  sink refuses further work until it is opened anew (and repairs the file).
- **Cheap high-water marks.** `high_watermarks` reads the file backwards in blocks and
  stops as soon as each asked-for stream has been seen; `last_scan_bytes_read` tells how
  much it read.

All blocking calls run in a worker thread (`asyncio.to_thread`) under a lock, so the event
loop keeps polling while the disk works, and calls never overlap.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal

import structlog

from sfstream.errors import StorageError

if TYPE_CHECKING:
    from sfstream.state.base import Fence

from sfstream.protocol import Message, encode_lines
from sfstream.sinks._io import run_blocking, translate_os_errors, write_all
from sfstream.sinks._jsonl import (
    DEFAULT_BLOCK_BYTES,
    ReverseLines,
    scan_high_watermarks,
    torn_tail_length,
)

log = structlog.get_logger("sfstream.sinks.file")

_FLAGS: Final = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_MODE: Final = 0o644  # data, not secrets; the umask applies

_State = Literal["new", "open", "closed", "broken"]


class FileSink:
    """Appends messages to a JSON-lines file; `write` returns once they are fsynced.

    The file is opened on `open()` (or `async with`), or else by the first `write` or
    `high_watermarks`. Opening creates the parent directories and repairs a torn tail.

    Args:
        path: the file; created (mode 0644 less the umask) when missing.
        block_bytes: how much `high_watermarks` and the tail repair read at a time.
        inline_writes: `write` appends and fsyncs on the event loop's thread instead of a
            worker thread: no thread hand-off per batch (the lowest latency), but the loop
            waits for the disk. Opening, scanning and closing always use a worker thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        inline_writes: bool = False,
    ) -> None:
        if block_bytes < 1:
            raise ValueError("block_bytes must be positive")
        self._path = Path(path)
        self._name = str(self._path)
        self._block_bytes = block_bytes
        self._inline_writes = inline_writes
        # Held by the worker thread for every file operation, so that a call abandoned by a
        # cancelled caller finishes before the next one starts.
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._state: _State = "new"
        self._repaired_bytes = 0
        self._last_scan_bytes_read = 0

    @property
    def path(self) -> Path:
        """The file written to."""
        return self._path

    @property
    def repaired_bytes(self) -> int:
        """Bytes of a torn last line cut away when the file was opened (0 if none)."""
        return self._repaired_bytes

    @property
    def last_scan_bytes_read(self) -> int:
        """Bytes the latest `high_watermarks` call read from the file."""
        return self._last_scan_bytes_read

    async def open(self) -> None:
        """Open (or create) the file, lock it and repair a torn tail; idempotent.

        Raises:
            StorageError: the file cannot be opened or created (permissions, not a regular
                file, locked by another sink), or the sink is closed.
            StorageUnavailableError: the file system is unreachable for now.
        """
        await run_blocking(self._name, "open", self._open_sync)

    async def __aenter__(self) -> FileSink:
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
        """Append `messages` as JSON lines, in order; fsynced on return.

        An empty batch writes nothing. Either the whole batch is in the file or (after an
        error) none of it.

        Raises:
            StorageError: the write was refused (full disk, permissions, I/O error), or the
                sink is closed or unusable after a failed write it could not undo.
            StorageUnavailableError: the file system is unreachable for now.
        """
        # Encoded here, before any I/O: the worker thread never touches the caller's objects,
        # and an unencodable message fails the batch before a byte is written.
        data = encode_lines(messages)
        await run_blocking(
            self._name, "write to", lambda: self._write_sync(data), inline=self._inline_writes
        )

    async def high_watermarks(self, streams: Iterable[str]) -> dict[str, int]:
        """The highest replayId in the file per stream, from its RECORD and STATE lines.

        Streams without such lines are absent. The file is read backwards and the scan
        stops once every stream has been seen, so recent activity on all of them is cheap.

        Raises:
            StorageError: a line does not parse (names the file and byte offset), the file
                cannot be read, or the sink is closed.
        """
        wanted = frozenset(streams)
        return await run_blocking(self._name, "read", lambda: self._scan_sync(wanted))

    async def close(self) -> None:
        """Release the file and its lock; idempotent. Written data is already durable."""
        await run_blocking(self._name, "close", self._close_sync)

    # Everything below runs in a worker thread (`_write_sync` on the loop with `inline_writes`).

    def _open_sync(self) -> None:
        with self._lock:
            self._ensure_open()

    def _ensure_open(self) -> int:
        if self._state == "open":
            assert self._fd is not None
            return self._fd
        if self._state == "closed":
            raise StorageError(f"{self._name}: the sink is closed")
        if self._state == "broken":
            raise StorageError(
                f"{self._name}: an earlier write failed and could not be undone; "
                "open a new sink to repair the file"
            )
        # The file is opened for appending, whichever call opens it (a scan does too): an
        # error here is about writing, not about the scan's reading.
        with translate_os_errors(f"{self._name} for writing", "open"):
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, _FLAGS, _MODE)
            try:
                self._check_regular(fd)
                self._lock_file(fd)
                self._repair_torn_tail(fd)
                # The high-water marks read next must not count lines that a power cut can
                # still take away (a crashed writer's last, never fsynced, batch).
                os.fsync(fd)
                _fsync_directory(self._path.parent)
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        self._state = "open"
        return fd

    def _check_regular(self, fd: int) -> None:
        # Tail repair and backward scans need a seekable file; pipes go to `StdoutSink`.
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StorageError(f"{self._name}: not a regular file")

    def _lock_file(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            # Not the generic EAGAIN (transient): another sink owns the file for its lifetime.
            raise StorageError(
                f"{self._name}: another sink has the file open (it is locked); "
                "two writers would corrupt it"
            ) from exc

    def _repair_torn_tail(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        torn = torn_tail_length(fd, size, self._name, self._block_bytes)
        if torn == 0:
            return
        # The torn line's write never returned, so nobody relied on it: cutting it keeps
        # every acknowledged line and lets the next line start on a line boundary.
        os.ftruncate(fd, size - torn)
        self._repaired_bytes += torn
        log.warning(
            "sink.file.torn_tail_repaired",
            path=self._name,
            bytes=torn,
            kept_bytes=size - torn,
        )

    def _write_sync(self, data: bytes) -> None:
        with self._lock:
            if not data and self._state in ("new", "open"):
                return  # an empty batch is a no-op; it does not even open the file
            fd = self._ensure_open()
            size = os.fstat(fd).st_size
            try:
                write_all(fd, data)
                os.fsync(fd)
            except OSError:
                self._undo(fd, size)
                raise

    def _undo(self, fd: int, size: int) -> None:
        """Cut the file back to `size` after a failed write, or mark the sink broken."""
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError:
            log.exception("sink.file.undo_failed", path=self._name, size=size)
            # Give the file (and its lock) up, so that a new sink can open and repair it.
            self._state = "broken"
            self._fd = None
            with contextlib.suppress(OSError):
                os.close(fd)
        else:
            log.warning("sink.file.write_undone", path=self._name, size=size)

    def _scan_sync(self, streams: frozenset[str]) -> dict[str, int]:
        with self._lock:
            fd = self._ensure_open()
            lines = ReverseLines(fd, os.fstat(fd).st_size, self._name, self._block_bytes)
            try:
                return scan_high_watermarks(lines, streams, self._name)
            finally:
                self._last_scan_bytes_read = lines.bytes_read

    def _close_sync(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            self._state = "closed"
            if fd is not None:
                os.close(fd)  # releases the lock too


def _fsync_directory(directory: Path) -> None:
    """Make the directory entry of a newly created file durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
