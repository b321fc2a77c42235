"""The sink port: where records go.

`write` returns only when the messages are durable (fsynced, committed, acknowledged), because
the engine moves checkpoints right after it. A backend is done when
`sfstream.testing.sinks.check_sink` passes against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from sfstream.protocol import Message
from sfstream.state.base import Fence


@runtime_checkable
class Sink(Protocol):
    """Where records go.

    Errors are `sfstream.errors.StorageError` (refused: permissions, full disk, a closed
    pipe) or `StorageUnavailableError` (transient). `write` after `close` raises
    `StorageError`.
    """

    async def write(self, messages: Sequence[Message], fence: Fence | None = None) -> None:
        """Write `messages` in order; durable on return.

        `fence` (with leases): the worker and the lease token of each stream the batch
        moves. A sink that can check tokens where it writes (the PostgreSQL sink, in the
        state's database) refuses a batch with a stale one (`LeaseLostError`, nothing
        written); the others ignore it.
        """
        ...

    async def high_watermarks(self, streams: Iterable[str]) -> dict[str, int]:
        """The highest replayId already held per stream, for sinks that can tell (else {}).

        After a crash between a write and the checkpoint, the engine resumes from these so
        that nothing is written twice.
        """
        ...

    async def close(self) -> None:
        """Flush and release resources."""
        ...
