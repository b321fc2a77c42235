"""What a run reports about itself, counted where it happens and read by the exporters.

The per-stream counters of the event path live in the pipeline's `StreamStats` (one integer
increment per event); everything rarer is counted here: errors by class, reconnects by
reason, gaps, schema changes, subscriptions up and down, the session's
last connect round trip, and the timings of sink writes and checkpoint commits. Nothing
here imports an exporter: the Prometheus endpoint (`sfstream.observability.metrics`), the
traces (`sfstream.observability.tracing`) and the end-of-invocation metrics of AWS Lambda
read it, or listen to it (`Listener`), only when configured. With none configured, a
report is a dictionary increment or an attribute store.

Reconnect reasons (`Telemetry.reconnect`, the `reason` label of
`sfstream_reconnects_total`):

| reason | what happened |
|---|---|
| `drop` | the connection failed or was cut (refused, reset, timed out on a handshake) |
| `stall` | no `/meta/connect` round trip within the advised timeout plus the margin |
| `unknown_client` | Salesforce forgot the session (`403::Unknown client`) |
| `auth` | the access token expired (`401::Authentication invalid`): refreshed |
| `http_5xx` | Salesforce answered 5xx (503 "too busy" included) |
| `throttled` | Salesforce answered 429 |
| `client_limit` | the org's limit of concurrent streaming clients |
| `malformed_event` | an event's envelope broke the protocol: the session starts over |
| `silence` | a stream with `max_silence_s` received nothing that long: the session starts over |
| `allocation` | the daily event delivery allocation is spent: the session waits, then probes |
| `other` | any other retryable failure |

Event allocations (`allocations_read`, from `/limits` through
`sfstream.salesforce.limits.LimitsPoller`) are kept as name -> (Max, Remaining) for the
`sfstream_allocation_max{name}` and `sfstream_allocation_remaining{name}` gauges.

While the delivery allocation is spent (`allocation_exhausted`) the session sends nothing
until its next probe, on purpose: `/healthz` counts the wait as alive until the probe is
due (plus the connect timeout and the grace, as for a connect), and `/readyz` is not ready
until every stream is subscribed again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol

from sfstream.errors import (
    AllocationExceededError,
    AuthExpiredError,
    ClientLimitError,
    ConnectStalledError,
    MalformedEventError,
    ServerError,
    SfStreamError,
    StreamSilentError,
    ThrottledError,
    TransportError,
    UnknownClientError,
)

CONNECT_GRACE_S: Final = 30.0
"""How long past the advised connect timeout the session may go without a completed
`/meta/connect` round trip before `/healthz` reports it dead."""


def reconnect_reason(error: SfStreamError) -> str:
    """The `reason` label of a reconnect caused by `error`."""
    if isinstance(error, ConnectStalledError):
        return "stall"
    if isinstance(error, StreamSilentError):
        return "silence"
    if isinstance(error, UnknownClientError):
        return "unknown_client"
    if isinstance(error, AuthExpiredError):
        return "auth"
    if isinstance(error, ThrottledError):
        return "throttled"
    if isinstance(error, ServerError):
        return "http_5xx"
    if isinstance(error, ClientLimitError):
        return "client_limit"
    if isinstance(error, MalformedEventError):
        return "malformed_event"
    if isinstance(error, AllocationExceededError):
        return "allocation"
    if isinstance(error, TransportError):
        return "drop"
    return "other"


class Listener(Protocol):
    """Told of what a run does, as it happens (the traces listen this way)."""

    def session_started(self) -> None: ...

    def session_ended(self, error: SfStreamError | None) -> None: ...

    def reconnected(self, reason: str, error: SfStreamError) -> None: ...

    def batch_written(self, batch: BatchReport) -> None: ...


class BatchReport:
    """One batch through the sink and the state store."""

    __slots__ = (
        "commit_s",
        "ended",
        "error",
        "records",
        "started",
        "streams",
        "write_s",
    )

    def __init__(
        self,
        *,
        started: float,
        ended: float,
        write_s: float,
        commit_s: float | None,
        records: int,
        streams: dict[str, tuple[int, int]],
        error: BaseException | None = None,
    ) -> None:
        self.started = started
        """Wall-clock time (epoch seconds) the write began."""
        self.ended = ended
        """Wall-clock time the commit (or the write, with nothing to commit) ended."""
        self.write_s = write_s
        self.commit_s = commit_s
        self.records = records
        self.streams = streams
        """stream id -> (first replayId, last replayId) of the batch's records."""
        self.error = error


class Telemetry:
    """The counters and states of one connector (one per `Connector`, shared by its
    client and pipeline).

    Args:
        clock: monotonic seconds (injected in tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.errors: dict[tuple[str, bool], int] = {}
        """(error class name, retryable) -> count."""
        self.reconnects: dict[str, int] = {}
        """reason -> count."""
        self.gaps: dict[tuple[str, str], int] = {}
        """(stream, reason) -> count."""
        self.schema_changes: dict[str, int] = {}
        """stream -> new schema versions seen."""
        self.subscribed: dict[str, bool] = {}
        """channel -> whether it is subscribed now."""
        self.logged_in = False
        self.handshaken = False
        self.reconnecting = False
        self.started_at = clock()
        self.last_round_trip: float | None = None
        """Monotonic time the last `/meta/connect` came back (or was held back on purpose,
        while the consumer catches up)."""
        self.connect_timeout_s: float | None = None
        """The connect read timeout the session uses now (advised timeout + margin)."""
        self.listeners: list[Listener] = []
        self.write_timings: list[Callable[[float], None]] = []
        """Called with each sink write's duration (the metrics' histogram)."""
        self.commit_timings: list[Callable[[float], None]] = []
        """Called with each checkpoint commit's duration."""
        self.leased = False
        """Whether the run shares its streams with other workers through leases: then
        `subscribed` holds the channels of the streams it owns (possibly none)."""
        self.leases_held = 0
        """Leases this worker holds now."""
        self.lease_takeovers: dict[str, int] = {}
        """stream -> leases taken from another worker that let them expire."""
        self.allocations: dict[str, tuple[int, int]] = {}
        """Event allocation name (Salesforce's) -> (Max, Remaining), as last read."""
        self.allocation_probe_at: float | None = None
        """While the delivery allocation is spent: the monotonic time of the next probe."""

    # -- reports ------------------------------------------------------------------------------

    def error(self, error: BaseException) -> None:
        """Count a classified error (`sfstream_errors_total{error,retryable}`)."""
        retryable = bool(getattr(error, "retryable", False))
        key = (type(error).__name__, retryable)
        self.errors[key] = self.errors.get(key, 0) + 1

    def reconnect(self, reason: str, error: SfStreamError) -> None:
        """The session starts over (or resubscribes) because of `error`."""
        self.reconnects[reason] = self.reconnects.get(reason, 0) + 1
        self.reconnecting = True
        for listener in self.listeners:
            listener.reconnected(reason, error)

    def gap(self, stream: str, reason: str) -> None:
        key = (stream, reason)
        self.gaps[key] = self.gaps.get(key, 0) + 1

    def schema_changed(self, stream: str) -> None:
        self.schema_changes[stream] = self.schema_changes.get(stream, 0) + 1

    def lease_taken_over(self, stream: str) -> None:
        self.lease_takeovers[stream] = self.lease_takeovers.get(stream, 0) + 1

    def allocations_read(self, allocations: dict[str, tuple[int, int]]) -> None:
        """The event allocations read from `/limits`: name -> (Max, Remaining)."""
        self.allocations = dict(allocations)

    def allocation_exhausted(self, probe_at: float) -> None:
        """The delivery allocation is spent: nothing is sent until `probe_at` (monotonic)."""
        self.allocation_probe_at = probe_at
        self.reconnecting = True

    def allocation_restored(self) -> None:
        self.allocation_probe_at = None

    def stream_added(self, channel: str) -> None:
        """A leased stream starts: its channel counts for readiness, down until subscribed."""
        self.subscribed[channel] = False

    def stream_removed(self, channel: str) -> None:
        """A leased stream stopped: its channel no longer counts for readiness."""
        self.subscribed.pop(channel, None)

    def channel_up(self, channel: str) -> None:
        self.subscribed[channel] = True
        if all(self.subscribed.values()):
            self.reconnecting = False

    def channel_down(self, channel: str) -> None:
        self.subscribed[channel] = False

    def handshake(self) -> None:
        self.handshaken = True
        # Subscriptions are re-sent after each handshake; until confirmed they are down.
        for channel in self.subscribed:
            self.subscribed[channel] = False

    def round_trip(self) -> None:
        self.last_round_trip = self._clock()

    def session_started(self) -> None:
        self.logged_in = True
        self.started_at = self._clock()
        for listener in self.listeners:
            listener.session_started()

    def session_ended(self, error: SfStreamError | None) -> None:
        self.handshaken = False
        for channel in self.subscribed:
            self.subscribed[channel] = False
        for listener in self.listeners:
            listener.session_ended(error)

    def batch_written(self, batch: BatchReport) -> None:
        for observe in self.write_timings:
            observe(batch.write_s)
        if batch.commit_s is not None:
            for observe in self.commit_timings:
                observe(batch.commit_s)
        for listener in self.listeners:
            listener.batch_written(batch)

    # -- health -------------------------------------------------------------------------------

    def since_round_trip(self) -> float:
        """Seconds since the last connect round trip (or since the session started)."""
        last = self.last_round_trip if self.last_round_trip is not None else self.started_at
        return self._clock() - last

    def alive(self, grace_s: float = CONNECT_GRACE_S) -> bool:
        """Whether the session completed a connect round trip (or started) within the
        connect timeout plus `grace_s`. Before the first login (start-up, retrying what is
        unreachable, with its own limit `runtime.startup_timeout_s`) there is no session
        to judge: alive."""
        if not self.logged_in:
            return True
        timeout = self.connect_timeout_s if self.connect_timeout_s is not None else 110.0
        if self.since_round_trip() <= timeout + grace_s:
            return True
        # Waiting for the allocation to recover sends nothing on purpose: alive until the
        # probe is due, judged like a connect from then on.
        probe_at = self.allocation_probe_at
        return probe_at is not None and self._clock() <= probe_at + timeout + grace_s

    def allocation_probe_in_s(self) -> float | None:
        """Seconds until the next probe of a spent allocation (None: not waiting)."""
        if self.allocation_probe_at is None:
            return None
        return max(0.0, self.allocation_probe_at - self._clock())

    def ready(self) -> bool:
        """Logged in, handshaken, every stream subscribed, not reconnecting, not waiting for
        a spent allocation. A worker with leases that owns no stream yet is ready (and idle)."""
        return (
            self.allocation_probe_at is None
            and self.logged_in
            and self.handshaken
            and not self.reconnecting
            and (bool(self.subscribed) or self.leased)
            and all(self.subscribed.values())
        )
