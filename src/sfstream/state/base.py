"""The state registry port: where each stream's checkpoint (its last written replayId) lives.

A backend is done when `sfstream.testing.state.check_state_store` passes against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A stream's position: every event up to `replay_id` is durably written."""

    stream: str
    replay_id: int
    updated_at: str
    """ISO-8601 UTC time of the commit that wrote it."""


@runtime_checkable
class StateStore(Protocol):
    """Checkpoints by stream id.

    All methods may raise `sfstream.errors.StorageUnavailableError` (retryable: the backend
    is unreachable) or `sfstream.errors.StorageError` (terminal: it refuses), and
    `sfstream.errors.ConfigError` for an invalid argument: a stream id that is not a
    non-empty string, or a replayId that is not an int in `0..2**63-1`.
    """

    async def load(self, streams: Iterable[str] | None = None) -> dict[str, Checkpoint]:
        """The checkpoints of `streams` (all of them when None); missing streams are absent."""
        ...

    async def commit(self, replay_ids: Mapping[str, int]) -> None:
        """Set several checkpoints atomically: all of them are stored, or none."""
        ...

    async def reset(self, stream: str) -> bool:
        """Forget a stream's checkpoint; returns whether it had one."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...
