"""The run lock of a file-based store: an exclusive `flock` on a file, held by a live process.

The holder writes who it is into the file (pid, host, since when, its streams), so that a
refused caller can say who holds it. The lock goes away with the holder's process, however
it ends; the file stays (removing it would let two processes lock two different files).
Blocking functions: callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Final

import msgspec

from sfstream.state._common import iso_utc, utc_now

_PRIVATE: Final = 0o600
_MAX_INFO_BYTES: Final = 1 << 20


class Holder(msgspec.Struct, frozen=True):
    """Who holds a run lock, as it wrote itself into the lock file."""

    pid: int | None
    host: str | None
    since: str | None
    streams: frozenset[str] | None

    def describe(self) -> str | None:
        parts = []
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.host:
            parts.append(f"on host {self.host}")
        text = " ".join(parts)
        if self.since:
            text = f"{text}, since {self.since}" if text else f"since {self.since}"
        return text or None


class LockHeldError(Exception):
    """The lock is held by another open file (another process, or another store)."""

    def __init__(self, holder: Holder) -> None:
        super().__init__("the run lock is held")
        self.holder = holder


def take(path: Path, streams: list[str]) -> int:
    """Lock `path` (created with mode 0600) without waiting; returns the descriptor to keep.

    Raises:
        LockHeldError: someone else holds it.
        OSError: the file cannot be created or opened.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _PRIVATE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeldError(_read_holder(fd)) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": iso_utc(utc_now()),
            "streams": streams,
        }
        data = json.dumps(info).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int) -> None:
    """Give the lock up (and clear the holder's details)."""
    try:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _read_holder(fd: int) -> Holder:
    try:
        data = os.pread(fd, _MAX_INFO_BYTES, 0)
        info = json.loads(data) if data else {}
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    pid = info.get("pid")
    host = info.get("host")
    since = info.get("since")
    streams = info.get("streams")
    return Holder(
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        host=host if isinstance(host, str) else None,
        since=since if isinstance(since, str) else None,
        streams=frozenset(s for s in streams if isinstance(s, str))
        if isinstance(streams, list)
        else None,
    )
