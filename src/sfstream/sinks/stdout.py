"""`StdoutSink`: the output protocol as JSON lines on standard output (or any byte stream).

For a pipe, durable means handed to the reader: every `write` flushes before it returns. A
reader that went away (`EPIPE`) is a `StorageError`, since nobody will read what comes next.
A pipe cannot be read back, so `high_watermarks` knows nothing and returns `{}`.

Writes run in a worker thread: a slow reader fills the pipe and blocks the write, and the
event loop must keep polling meanwhile (Salesforce drops a client silent for 40 s).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

from sfstream.errors import StorageError

if TYPE_CHECKING:
    from sfstream.state.base import Fence

from sfstream.protocol import Message, encode_lines
from sfstream.sinks._io import run_blocking


class StdoutSink:
    """Writes messages as JSON lines to a byte stream, flushing after every batch.

    The sink does not own the stream: `close` flushes it but leaves it open.

    Args:
        stream: where lines go; standard output's byte stream (`sys.stdout.buffer`, looked
            up when the sink is made) by default.
        name: what error messages call the stream.
    """

    def __init__(self, stream: BinaryIO | None = None, *, name: str = "stdout") -> None:
        self._stream: BinaryIO = stream if stream is not None else sys.stdout.buffer
        self._name = name
        # Held by the worker thread, so that writes never interleave, even when a cancelled
        # caller abandons one.
        self._lock = threading.Lock()
        self._closed = False
        self._failed = False

    async def __aenter__(self) -> StdoutSink:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def write(self, messages: Sequence[Message], fence: Fence | None = None) -> None:
        """Write `messages` as JSON lines, in order, and flush; an empty batch writes nothing.

        Raises:
            StorageError: the reader went away (closed pipe), the stream is closed or
                refuses the write, or the sink is closed.
            StorageUnavailableError: the stream reported a transient condition.
        """
        data = encode_lines(messages)
        await run_blocking(self._name, "write to", lambda: self._write_sync(data))

    async def high_watermarks(self, streams: Iterable[str]) -> dict[str, int]:
        """Always `{}`: what went into a pipe cannot be read back."""
        return {}

    async def close(self) -> None:
        """Flush the stream (unless a write already failed) and stop; idempotent."""
        await run_blocking(self._name, "flush", self._close_sync)

    # Below runs in a worker thread.

    def _write_sync(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                raise StorageError(f"{self._name}: the sink is closed")
            if not data:
                return
            if self._stream.closed:
                raise StorageError(f"{self._name}: the output stream is closed")
            try:
                self._stream.write(data)
                self._stream.flush()
            except BaseException:
                self._failed = True
                raise

    def _close_sync(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # After a failed write the stream's buffer may still hold part of the batch;
            # flushing it again would only repeat the error.
            if not self._failed and not self._stream.closed:
                self._stream.flush()
