"""Blocking I/O of the sinks: the one place where OS errors become sfstream errors.

Every sink runs its blocking calls through `run_blocking`, which moves them to a worker
thread (so that the event loop keeps long-polling while a disk or a pipe is slow: Salesforce
drops a client that stays silent for 40 s) and translates the `OSError` they raise:

- `EPIPE` -> `StorageError`: the reader of the pipe went away; nobody will read again.
- `EAGAIN`, `ETIMEDOUT`, `ESTALE`, `ENOLCK`, network errnos -> `StorageUnavailableError`:
  transient (a network file system, a non-blocking stream); retrying later can succeed.
- anything else (`EACCES`, `EPERM`, `ENOSPC`, `EDQUOT`, `EROFS`, `EISDIR`, `EIO`, ...) ->
  `StorageError`: a refusal; someone has to fix permissions, free space or the disk.

Messages say what was being done to what, the system's words and errno, and for the
refusals an operator meets most (read-only file system, full disk, exhausted quota,
permissions) what happened and what to do. The original exception is always chained
(`raise ... from`), so its errno and text survive.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

from sfstream.errors import StorageError, StorageUnavailableError

T = TypeVar("T")

# Transient conditions: retrying the same operation later can succeed without anyone acting.
_UNAVAILABLE: Final = frozenset(
    {
        errno.EAGAIN,
        errno.EWOULDBLOCK,
        errno.EINTR,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.ENOLCK,
        errno.ENOTCONN,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ENETRESET,
    }
)


# What an operator does about the common refusals, after the system's own words.
_ADVICE: Final = {
    errno.EROFS: "the file system is read-only: point sink.path at a writable place",
    errno.ENOSPC: "the disk is full: free space and restart (nothing acknowledged is lost)",
    errno.EDQUOT: "the disk quota is used up: free space or raise the quota, and restart",
    errno.EACCES: "check the permissions of the file and its directory",
    errno.EPERM: "check the permissions of the file and its directory",
}


def storage_error(exc: OSError, target: str, action: str) -> StorageError | StorageUnavailableError:
    """The sfstream error for an OS error raised while doing `action` on `target`.

    Args:
        exc: the error the OS reported.
        target: what was being written or read (a path, "stdout").
        action: a verb phrase for the message ("write to", "open", "read").
    """
    code = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "?"
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.EPIPE:
        return StorageError(
            f"cannot {action} {target}: the reader went away (the pipe is closed) [{code}]"
        )
    if exc.errno in _UNAVAILABLE:
        return StorageUnavailableError(f"cannot {action} {target} right now: {reason} [{code}]")
    advice = _ADVICE.get(exc.errno) if exc.errno is not None else None
    return StorageError(
        f"cannot {action} {target}: {reason} [{code}]" + (f"; {advice}" if advice else "")
    )


@contextmanager
def translate_os_errors(target: str, action: str) -> Iterator[None]:
    """Re-raise any `OSError` of the block as `storage_error(...)`, chained.

    Raises:
        StorageError: the OS refused (permissions, full disk, closed pipe, I/O error).
        StorageUnavailableError: the OS reported a transient condition.
    """
    try:
        yield
    except OSError as exc:
        raise storage_error(exc, target, action) from exc


async def run_blocking(
    target: str, action: str, function: Callable[[], T], *, inline: bool = False
) -> T:
    """Run `function` in a worker thread (or on the caller's thread), translating OS errors.

    Cancelling the caller does not stop the thread: the sinks therefore hold a
    `threading.Lock` inside `function`, so that an abandoned call still finishes before the
    next one starts and calls never interleave.

    Args:
        target: what `function` works on, for error messages.
        action: what it does, for error messages.
        function: the blocking work.
        inline: run it on the event loop's thread: no hand-off to a worker (the lowest
            latency), but the loop waits for it.
    """
    with translate_os_errors(target, action):
        if inline:
            return function()
        return await asyncio.to_thread(function)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` (a single `os.write` writes at most about 2 GiB)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
