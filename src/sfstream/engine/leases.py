"""Several workers, one owner per stream: the lease keeper of a run.

A worker consumes a stream only while it holds the stream's lease in the shared state store
(`sfstream.state.base.LeaseStore`). The keeper runs beside the pipeline and, every
`poll_s`:

1. renews the leases it holds once a third of the TTL has passed since the last renewal;
   a lease the store no longer has for it (taken over after it expired) is lost: the
   stream stops at once;
2. heartbeats the worker's membership and reads the members and the leases;
3. balances: with N live members (sorted by worker id) and M streams, the first `M % N`
   members aim for `M // N + 1` streams and the others for `M // N`. Above its share, a
   worker stops its excess streams (their open batch is written and committed) and releases
   their leases, so that another takes them at once; below it, it acquires free leases
   (never taken, released, or expired) and starts those streams.

Safety does not depend on the store answering. Each lease has a local deadline: the
monotonic time at which its last successful renewal was sent, plus the TTL, minus a margin
(`skew_s`). The store's expiry comes after that deadline as long as the store's clock (the
server's for PostgreSQL, the workers' for DynamoDB and SQLite) keeps pace within the margin.
When renewals keep failing, the keeper stops the streams gracefully at two thirds of the TTL
(the open batch is written and committed while the lease still holds); and the pipeline
itself drops every event of a stream past its deadline, before the keeper gets to run (a
process paused by SIGSTOP wakes up with both overdue). What a paused worker still had in
flight is fenced: its commit carries the lease's token, which the new owner's acquisition
made stale, and the store refuses it.

On a clean stop the run flushes and commits, then `release_all` gives every lease back and
the worker leaves the members: another worker takes its streams at its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Final, Protocol

import msgspec
import structlog

from sfstream.errors import SfStreamError
from sfstream.observability.telemetry import Telemetry
from sfstream.state._common import owned_message
from sfstream.state.base import Lease, LeaseStore, StreamOwnedError

log = structlog.get_logger("sfstream.leases")

MAX_POLL_S: Final = 2.0
"""The longest wait between two looks at the leases: how soon a released stream is taken."""


def default_worker_id(ecs_task_arn: str | None = None) -> str:
    """This worker's id: the ECS task's ARN when it runs on ECS; in AWS Lambda, the function
    and its execution environment's log stream (host names and pids repeat there); else
    `<host>:<pid>`."""
    if ecs_task_arn:
        return ecs_task_arn
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    sandbox = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
    if function and sandbox:
        return f"lambda:{function}:{sandbox}"
    return f"{socket.gethostname()}:{os.getpid()}"


OPERATOR_TTL_S: Final = 60.0
"""How long an operator's command holds the leases of the streams it changes (it gives them
back when done; a command killed meanwhile holds them this long)."""


@contextlib.asynccontextmanager
async def held_by_operator(store: LeaseStore, streams: Iterable[str]) -> AsyncIterator[None]:
    """Hold the leases of `streams` while an operator's command changes them
    (`sfstream state set|reset`): no worker consumes them meanwhile, and taking them gives
    each a new token, which fences a paused worker that still thinks it owns them.

    Raises:
        StreamOwnedError: a worker holds one of them (none is held then).
    """
    worker = f"sfstream state (pid {os.getpid()} on {socket.gethostname()})"
    wanted = sorted(set(streams))
    got = await store.acquire(wanted, worker, OPERATOR_TTL_S)
    tokens = {stream: lease.token for stream, lease in got.items()}
    refused = [stream for stream in wanted if stream not in got]
    if refused:
        await store.release(tokens, worker)
        found = await store.leases(refused)
        owners = sorted({lease.owner for lease in found.values() if lease.owner})
        holder = f"worker {', '.join(owners)}" if owners else None
        raise StreamOwnedError(owned_message(refused, holder), streams=refused, holder=holder)
    try:
        yield
    finally:
        await store.release(tokens, worker)


class LeaseSettings(msgspec.Struct, frozen=True):
    """How a worker keeps its leases."""

    worker: str
    ttl_s: float = 30.0

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3

    @property
    def give_up_s(self) -> float:
        """After this long without a renewal the worker stops its streams itself."""
        return self.ttl_s * 2 / 3

    @property
    def skew_s(self) -> float:
        """The margin between the local deadline and the store's expiry."""
        return max(1.0, self.ttl_s / 10)

    @property
    def poll_s(self) -> float:
        return min(MAX_POLL_S, self.ttl_s / 6)


class LeasedStreams(Protocol):
    """What the keeper drives: the pipeline's streams."""

    async def start_streams(
        self, tokens: Mapping[str, int], deadlines: Mapping[str, float]
    ) -> None:
        """Start consuming these streams under these lease tokens, each until its deadline."""
        ...

    async def stop_streams(self, streams: Iterable[str], reason: str) -> None:
        """Stop consuming these streams; their records received so far are written and
        (where the lease still holds) committed before it returns."""
        ...

    def extend(self, deadlines: Mapping[str, float]) -> None:
        """The leases of these streams were renewed: their new deadlines."""
        ...


class _Held(msgspec.Struct):
    token: int
    renewed_at: float
    """Monotonic time at which the last successful renewal (or the acquisition) was sent."""


class LeaseKeeper:
    """Holds this worker's share of the leases of `streams` in `store` (see the module)."""

    def __init__(
        self,
        store: LeaseStore,
        streams: Iterable[str],
        settings: LeaseSettings,
        telemetry: Telemetry | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.streams = sorted(set(streams))
        self.settings = settings
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.telemetry.leased = True
        self._clock = clock
        self.held: dict[str, _Held] = {}
        self._renewed_at = -float("inf")
        self._wake = asyncio.Event()
        self._lost: set[str] = set()
        self.leases: dict[str, Lease] = {}
        """The leases of the streams as last read (for status)."""
        self.members: list[str] = []
        self.target = 0

    @property
    def worker(self) -> str:
        return self.settings.worker

    def deadline(self, renewed_at: float) -> float:
        return renewed_at + self.settings.ttl_s - self.settings.skew_s

    def lost(self, streams: Iterable[str]) -> None:
        """The pipeline found these leases gone (a fenced commit was refused): the keeper
        stops the streams at its next step, which comes at once."""
        self._lost.update(s for s in streams if s in self.held)
        self._wake.set()

    def wake(self) -> None:
        """Look at the leases now (a stream went past its deadline)."""
        self._wake.set()

    async def run(self, streams: LeasedStreams, stop: asyncio.Event) -> None:
        """Keep the leases until `stop` is set; the run's task group runs it."""
        log.info(
            "leases_started",
            worker=self.worker,
            streams=len(self.streams),
            ttl_s=self.settings.ttl_s,
        )
        while not stop.is_set():
            await self.step(streams)
            self._wake.clear()
            waits = [self._renewed_at + self.settings.renew_every_s]
            waits.extend(self.deadline(held.renewed_at) for held in self.held.values())
            wait_s = min(self.settings.poll_s, *(w - self._clock() for w in waits))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, wait_s)):
                    stopping = asyncio.ensure_future(stop.wait())
                    waking = asyncio.ensure_future(self._wake.wait())
                    try:
                        await asyncio.wait({stopping, waking}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stopping.cancel()
                        waking.cancel()

    async def step(self, streams: LeasedStreams, *, first: bool = False) -> None:
        """One round: drop what is lost or overdue, renew, heartbeat, balance.

        A store that cannot be reached is logged and tried again at the next round; in the
        `first` round (during start-up, which retries with backoff) it is raised."""
        await self._drop_lost(streams)
        await self._renew(streams)
        await self._give_up_overdue(streams)
        try:
            await self.store.join(self.worker, self.settings.ttl_s)
            members = [member.worker for member in await self.store.members()]
            self.leases = await self.store.leases(self.streams)
        except SfStreamError as exc:
            if first or not exc.retryable:
                raise
            log.warning("leases_unreadable", worker=self.worker, error=str(exc))
            return
        if self.worker not in members:
            members = sorted([*members, self.worker])
        self.members = members
        self.target = share(len(self.streams), members, self.worker)
        if len(self.held) > self.target:
            await self._shed(streams, len(self.held) - self.target)
        elif len(self.held) < self.target:
            await self._take(streams, self.target - len(self.held), first=first)
        self._report()

    async def release_all(self) -> None:
        """Give every lease back and leave the members (after the run's last commit)."""
        tokens = {stream: held.token for stream, held in self.held.items()}
        self.held.clear()
        try:
            if tokens:
                await self.store.release(tokens, self.worker)
            await self.store.leave(self.worker)
        except SfStreamError as exc:
            log.warning(
                "leases_not_released",
                worker=self.worker,
                streams=sorted(tokens),
                error=str(exc),
                note="they pass to another worker when they expire",
            )
        else:
            if tokens:
                log.info("leases_released", worker=self.worker, streams=sorted(tokens))
        self._report()

    # -- steps ------------------------------------------------------------------------------

    async def _drop_lost(self, streams: LeasedStreams) -> None:
        lost = sorted(self._lost & self.held.keys())
        self._lost.clear()
        if not lost:
            return
        log.warning("leases_lost", worker=self.worker, streams=lost, reason="fenced")
        await self._let_go(streams, lost, "lease_lost", release=False)

    async def _renew(self, streams: LeasedStreams) -> None:
        now = self._clock()
        if not self.held or now < self._renewed_at + self.settings.renew_every_s:
            return
        tokens = {stream: held.token for stream, held in self.held.items()}
        try:
            renewed = await self.store.renew(tokens, self.worker, self.settings.ttl_s)
        except SfStreamError as exc:
            if not exc.retryable:
                raise
            log.warning(
                "lease_renewal_failed",
                worker=self.worker,
                streams=len(tokens),
                error=str(exc),
            )
            return
        self._renewed_at = now
        for stream in renewed:
            self.held[stream].renewed_at = now
        streams.extend({stream: self.deadline(now) for stream in renewed})
        gone = sorted(set(tokens) - renewed.keys())
        if gone:
            log.warning("leases_lost", worker=self.worker, streams=gone, reason="taken_over")
            await self._let_go(streams, gone, "lease_lost", release=False)

    async def _give_up_overdue(self, streams: LeasedStreams) -> None:
        """Stop the streams whose renewals failed for two thirds of the TTL, while their
        lease still holds, and try to release them."""
        now = self._clock()
        overdue = sorted(
            stream
            for stream, held in self.held.items()
            if now >= held.renewed_at + self.settings.give_up_s
        )
        if not overdue:
            return
        log.warning(
            "leases_given_up",
            worker=self.worker,
            streams=overdue,
            note="the lease could not be renewed; another worker takes the streams",
        )
        await self._let_go(streams, overdue, "lease_not_renewed", release=True)

    async def _shed(self, streams: LeasedStreams, count: int) -> None:
        """Stop and release `count` streams, the most recently taken first."""
        order = sorted(self.held, key=lambda stream: (-self.held[stream].renewed_at, stream))
        shed = sorted(order[:count])
        log.info(
            "leases_rebalanced",
            worker=self.worker,
            release=shed,
            members=len(self.members),
            target=self.target,
        )
        tokens = {stream: self.held[stream].token for stream in shed}
        await streams.stop_streams(shed, "rebalance")
        for stream in shed:
            self.held.pop(stream, None)
        try:
            await self.store.release(tokens, self.worker)
        except SfStreamError as exc:
            if not exc.retryable:
                raise
            log.warning("leases_not_released", worker=self.worker, streams=shed, error=str(exc))

    async def _take(self, streams: LeasedStreams, count: int, *, first: bool = False) -> None:
        free = [
            stream
            for stream in self.streams
            if stream not in self.held
            and not ((lease := self.leases.get(stream)) is not None and lease.held)
        ]
        if not free:
            return
        # Spread the workers over the free streams: each starts at its own place.
        offset = _spread(self.worker) % len(free)
        wanted = (free[offset:] + free[:offset])[:count]
        sent = self._clock()
        try:
            got = await self.store.acquire(wanted, self.worker, self.settings.ttl_s)
        except SfStreamError as exc:
            if first or not exc.retryable:
                raise
            log.warning("lease_acquire_failed", worker=self.worker, error=str(exc))
            return
        if not got:
            return
        for stream, lease in got.items():
            self.held[stream] = _Held(lease.token, sent)
            before = self.leases.get(stream)
            if before is not None and before.owner is not None and before.owner != self.worker:
                self.telemetry.lease_taken_over(stream)
                log.warning(
                    "lease_taken_over",
                    worker=self.worker,
                    stream=stream,
                    previous_owner=before.owner,
                    token=lease.token,
                )
        if len(got) == len(self.held):
            self._renewed_at = sent  # all it holds was just taken: renew a third TTL on
        log.info(
            "leases_acquired",
            worker=self.worker,
            streams={stream: lease.token for stream, lease in sorted(got.items())},
            members=len(self.members),
            target=self.target,
        )
        self._report()
        tokens = {stream: lease.token for stream, lease in got.items()}
        try:
            await streams.start_streams(tokens, dict.fromkeys(tokens, self.deadline(sent)))
        except SfStreamError as exc:
            if first or not exc.retryable:
                raise  # the run ends, or start-up tries again: `release_all` gives them back
            log.warning("streams_not_started", streams=sorted(tokens), error=str(exc))
            if await self._let_go(streams, sorted(tokens), "start_failed", release=True):
                log.info("leases_released", worker=self.worker, streams=sorted(tokens))

    async def _let_go(
        self, streams: LeasedStreams, names: list[str], reason: str, *, release: bool
    ) -> bool:
        """Forget the leases of `names` and stop those streams (what they received is
        written, and committed where the lease still holds); with `release`, give the
        leases back. Whether they were given back."""
        tokens = {name: self.held.pop(name).token for name in names if name in self.held}
        await streams.stop_streams(names, reason)
        released = False
        if release and tokens:
            with contextlib.suppress(SfStreamError):
                await self.store.release(tokens, self.worker)
                released = True
        self._report()
        return released

    def _report(self) -> None:
        self.telemetry.leases_held = len(self.held)


def share(streams: int, members: list[str], worker: str) -> int:
    """How many of `streams` `worker` aims to hold among `members` (sorted ids)."""
    ordered = sorted(set(members))
    if worker not in ordered or not ordered:
        return 0
    base, extra = divmod(streams, len(ordered))
    return base + (1 if ordered.index(worker) < extra else 0)


def _spread(worker: str) -> int:
    """A stable number for `worker` (not Python's salted `hash`)."""
    value = 0
    for char in worker:
        value = (value * 31 + ord(char)) % 1_000_003
    return value
