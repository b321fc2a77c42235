"""The state registry port: where each stream's checkpoint (its last written replayId) lives.

Besides checkpoints, a store keeps two things for operators:

- **Overrides.** `sfstream state set|reset` records an operator's position with `override`.
  A run normally starts a stream from the higher of its checkpoint and what the sink already
  holds (a crash between a write and its checkpoint leaves the sink ahead); an override wins
  over the sink instead, so that a rewind or a reset is not undone by the sink's high-water
  mark. The next run takes it over: it writes a `GAP` note into the sink, starts from the
  override, and clears it (a replayId or a reset at once; `earliest` and `latest` with the
  stream's first checkpoint, since nothing else remembers them across a crash).
- **Ownership.** A running connector owns its streams (`owner`) for its lifetime; commands
  that change checkpoints try the same lock and refuse while a run holds it, because the
  run would overwrite their change with its next checkpoint. This is a plain lock held by a
  live process (a file lock, a database session lock): it goes away with the process.

A backend is done when `sfstream.testing.state.check_state_store` passes against it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Final, Protocol, runtime_checkable

import msgspec

from sfstream.errors import ConfigError, StorageUnavailableError
from sfstream.state._common import INT64_MAX, check_worker

START_EARLIEST: Final = -2
"""`Override.start`: start from the earliest event Salesforce retains."""
START_LATEST: Final = -1
"""`Override.start`: start from the next new event."""


class Checkpoint(msgspec.Struct, frozen=True):
    """A stream's position: every event up to `replay_id` is durably written."""

    stream: str
    replay_id: int
    updated_at: str
    """ISO-8601 UTC time of the commit that wrote it."""
    event_time: float | None = None
    """When Salesforce says the event at `replay_id` happened (epoch seconds), as the commit
    gave it; None when it did not (a position set by an operator, a checkpoint stored by an
    earlier sfstream)."""


class Override(msgspec.Struct, frozen=True):
    """An operator's position for a stream, waiting for a run to take it over."""

    stream: str
    start: int | None
    """Where the next run starts the stream: after this replayId (0 or more; it is also the
    stream's checkpoint meanwhile), from `START_EARLIEST` (-2) or `START_LATEST` (-1), or,
    when None, from the stream's configured initial replay. The sink's high-water mark is
    not used."""
    previous: int | None
    """The checkpoint the stream had before the operator changed it (None: it had none).
    Several changes before a run keep the first one's `previous`."""
    requested_at: str
    """ISO-8601 UTC time of the change."""


class StreamOwnedError(StorageUnavailableError):
    """Another live process owns a stream (a running `sfstream run`), see `StateStore.owner`.

    Retryable: the owner goes away when its run stops. Commands that change checkpoints
    report it at once instead of waiting.

    Attributes:
        streams: the streams asked for that are owned.
        holder: who owns them, as far as the backend can tell (`pid 4242 on host web-1,
            since ...`); None when it cannot.
    """

    def __init__(self, message: str, *, streams: list[str], holder: str | None) -> None:
        super().__init__(message)
        self.streams = streams
        self.holder = holder


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

    async def commit(
        self,
        replay_ids: Mapping[str, int],
        event_times: Mapping[str, float] | None = None,
        *,
        fence: Fence | None = None,
    ) -> None:
        """Set several checkpoints atomically: all of them are stored, or none.

        With `fence` (a store that is also a `LeaseStore`), the commit is stored only if
        each stream's lease still has the token the fence gives it; otherwise nothing is
        stored, the refusal is recorded in the stale streams' leases, and it raises
        `LeaseLostError` naming them.

        `event_times` gives the event time of some of these streams: epoch seconds of the
        event at the committed replayId, in Salesforce's clock (`Checkpoint.event_time`). A
        stream committed without one has none afterwards. A commit also clears the pending
        overrides of its streams (the run has taken them over, or overwrites them).

        Raises:
            ConfigError: also for an event time of a stream not in `replay_ids`, or one
                that is not a finite number; for a fence without an int token for each
                committed stream; for a fence given to a store without leases.
            LeaseLostError: the fence is stale for some streams.
        """
        ...

    async def reset(self, stream: str) -> bool:
        """Forget a stream's checkpoint and its pending override; returns whether it had a
        checkpoint."""
        ...

    async def override(self, stream: str, start: int | None) -> Override:
        """Record an operator's position for `stream`; the next run starts there.

        In one transaction: a `start` of 0 or more becomes the stream's checkpoint (without
        an event time); -2 (earliest), -1 (latest) and None (the initial replay) forget it.
        The override stays until a run takes it over (see the module). Returns what was
        recorded.

        Raises:
            ConfigError: `start` is not None, -2, -1 or a replayId in `0..2**63-1`.
        """
        ...

    async def overrides(self, streams: Iterable[str] | None = None) -> dict[str, Override]:
        """The pending overrides of `streams` (all of them when None)."""
        ...

    def owner(self, streams: Iterable[str]) -> AbstractAsyncContextManager[None]:
        """Own `streams` for the block: `async with store.owner(ids): ...`.

        It never waits: when another live process owns one of them it raises
        `StreamOwnedError` (retryable). A run holds it for its lifetime; `state set|reset`
        hold it while they change a checkpoint. A backend may own more than it is asked
        for (SQLite owns its whole database: one run per state file). Loads and commits
        do not check it. Ownership ends with the block, or with the process.
        """
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


class Lease(msgspec.Struct, frozen=True):
    """A stream's lease, as the store holds it: who may consume the stream, until when, and
    the fencing token of that ownership.

    Times are epoch seconds in the store's clock (PostgreSQL's `now()`; the worker's own
    clock for DynamoDB and SQLite).
    """

    stream: str
    owner: str | None
    """The worker that holds it; None once released."""
    token: int
    """The fencing token: 1 for the first owner, one more for each acquisition after."""
    expires_at: float
    """When it ends unless renewed."""
    acquired_at: float
    """When its owner took it (the token's start)."""
    held: bool
    """Whether it is held now (an owner, not expired), by the store's clock when read."""
    refused: int = 0
    """Commits refused for this stream because their token was stale (zombies), ever."""
    refused_at: float | None = None
    """When the last of them was refused."""
    refused_token: int | None = None
    """The token the last refused commit carried."""
    refused_worker: str | None = None
    """The worker that sent the last refused commit."""


class Member(msgspec.Struct, frozen=True):
    """A worker taking part in a store's leases (it heartbeats with `LeaseStore.join`)."""

    worker: str
    expires_at: float
    """When it counts as gone unless it joins again (epoch seconds, the store's clock)."""
    joined_at: float
    """When it first joined."""


class Fence(msgspec.Struct, frozen=True):
    """What a fenced commit carries: the worker and its lease token for each stream."""

    worker: str
    tokens: Mapping[str, int]


@runtime_checkable
class LeaseStore(Protocol):
    """Leases with fencing tokens, in a state store several workers share.

    A worker holds a stream's lease to consume it. `acquire` takes a lease that is free (never
    taken, released, or expired) and gives it a new token, one more than the last; `renew`
    extends the leases still held with the given tokens; `release` gives them up at once.
    A commit carrying a `Fence` (`StateStore.commit`) is stored only if every stream's token
    is still its lease's token: a worker that lost a lease (a paused process that wakes up
    after another took over) cannot move the checkpoint. Each such refusal is recorded in the
    lease (`Lease.refused*`). `join` heartbeats a worker's membership, so that balancing sees
    workers that hold nothing yet.

    A backend is done when `sfstream.testing.leases.check_lease_store` passes against it.
    """

    async def acquire(self, streams: Iterable[str], worker: str, ttl_s: float) -> dict[str, Lease]:
        """Take the leases of `streams` that are free, for `ttl_s` seconds; the ones taken.

        A lease `worker` holds and that has not expired is renewed instead (same token); a
        released or expired one gets a new token, whoever held it. Each stream is taken
        or not on its own (not all-or-nothing)."""
        ...

    async def renew(self, tokens: Mapping[str, int], worker: str, ttl_s: float) -> dict[str, Lease]:
        """Extend by `ttl_s` the leases `worker` still holds with these tokens; the ones
        renewed. A lease that expired but that nobody took since is renewed too (the token
        still fences it)."""
        ...

    async def release(self, tokens: Mapping[str, int], worker: str) -> None:
        """Give up the leases `worker` holds with these tokens (others are left alone): no
        owner, the token kept, expired now."""
        ...

    async def leases(self, streams: Iterable[str] | None = None) -> dict[str, Lease]:
        """The leases of `streams` (all of them when None), held or not."""
        ...

    async def join(self, worker: str, ttl_s: float) -> None:
        """Record (or refresh) `worker` as a member for `ttl_s` seconds."""
        ...

    async def leave(self, worker: str) -> None:
        """Remove `worker` from the members at once."""
        ...

    async def members(self) -> list[Member]:
        """The members that have not expired, by worker id."""
        ...


def fence_error(streams: list[str], worker: str) -> str:
    """What a refused fenced commit says."""
    subject = f"stream {streams[0]}" if len(streams) == 1 else f"streams {', '.join(streams)}"
    return (
        f"{subject}: the lease of worker {worker} was taken over by another worker; "
        "the commit was refused (fenced)"
    )


def check_fence(fence: Fence | None, replay_ids: Mapping[str, int]) -> dict[str, int] | None:
    """The tokens of a fenced commit, checked before a backend touches storage: every
    committed stream must have an int token (None: the commit is not fenced).

    Raises:
        ConfigError: a committed stream has no token, or a token is not an int.
    """
    if fence is None:
        return None
    check_worker(fence.worker)
    tokens: dict[str, int] = {}
    for stream in replay_ids:
        token = fence.tokens.get(stream)
        if isinstance(token, bool) or not isinstance(token, int) or not 0 < token <= INT64_MAX:
            raise ConfigError(
                f"a fenced commit of stream {stream!r} needs its lease token (a positive int)"
            )
        tokens[stream] = token
    return tokens


def check_event_times(
    event_times: Mapping[str, float] | None, replay_ids: Mapping[str, int]
) -> dict[str, float]:
    """The event times of a commit (see `StateStore.commit`) as floats, checked like its
    replay ids before a backend touches storage.

    Raises:
        ConfigError: `event_times` is not a mapping, names a stream not in `replay_ids`, or
            holds a value that is not a finite number.
    """
    given: object = event_times
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise ConfigError(
            f"event times must be a mapping of stream id to epoch seconds, "
            f"not {type(given).__name__}"
        )
    checked: dict[str, float] = {}
    moment: object
    for stream, moment in given.items():
        if stream not in replay_ids:
            raise ConfigError(f"an event time is given for {stream!r}, which is not committed")
        if isinstance(moment, bool) or not isinstance(moment, int | float):
            raise ConfigError(
                f"the event time of stream {stream!r} must be epoch seconds (a number), "
                f"not {type(moment).__name__}"
            )
        if not math.isfinite(moment):
            raise ConfigError(f"the event time of stream {stream!r} must be finite, not {moment}")
        checked[stream] = float(moment)
    return checked
