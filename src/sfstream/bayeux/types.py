"""The Bayeux session's vocabulary: phases, subscriptions, requests and the notices a step
reports. `session.py` holds the state machine that produces them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from sfstream.bayeux.messages import Event
from sfstream.errors import InvalidReplayIdError, MalformedEventError, Recovery, SfStreamError

LATEST: Final = -1
"""Replay from the tip: only events published after the subscribe."""
EARLIEST: Final = -2
"""Replay every retained event, then new ones."""


class Phase(StrEnum):
    UNCONNECTED = "unconnected"
    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    AUTHENTICATING = "authenticating"
    WAITING = "waiting"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


class ReplayPolicy(StrEnum):
    """What to do when the server rejects a subscription's replayId as invalid or expired."""

    FAIL = "fail"
    EARLIEST = "earliest"
    LATEST = "latest"


class SubState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    ACTIVE = "active"
    FAILED = "failed"


class RequestKind(StrEnum):
    HANDSHAKE = "handshake"
    CONNECT = "connect"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    DISCONNECT = "disconnect"


@dataclass(slots=True)
class Subscription:
    """A wanted subscription and where it resumes from."""

    channel: str
    start: int
    """The replay value it was asked to start from (-1, -2 or an id)."""
    policy: ReplayPolicy = ReplayPolicy.FAIL
    state: SubState = SubState.PENDING
    last_replay_id: int | None = None
    """The last replayId delivered on this channel; resubscribes start here."""
    sent_replay: int | None = None
    """The replay value of the subscribe in flight."""
    awaited: bool = False
    """A caller waits for the first answer and handles a refusal itself."""
    anchor_wall: float | None = None
    """For a `-1` stream that has delivered nothing yet: the wall-clock time (epoch seconds)
    its acknowledged `-1` subscribe was sent. Events from then on belong to the stream."""
    skip_before: float | None = None
    """While resumed at `-2` from its anchor: replayed events older than this are dropped."""
    sent_wall: float | None = None
    """The wall-clock time the subscribe in flight was sent, when the driver gave one."""
    unanswered: int = 0
    """Consecutive subscribes the server answered without a reply for this channel."""
    retry_at: float = 0.0
    """When a pending subscribe may go out again (after unanswered ones)."""
    protocol_failures: int = 0
    """Consecutive malformed events on this channel with no progress in between."""
    protocol_failed_at: int | None = None
    """The replayId the stream stood at when the last malformed event came."""

    @property
    def resume_from(self) -> int:
        if self.last_replay_id is not None:
            return self.last_replay_id
        if self.anchor_wall is not None and self.start == LATEST:
            return EARLIEST
        return self.start


@dataclass(frozen=True, slots=True)
class Request:
    """One POST the driver must send: its messages and how long to wait for the answer."""

    kind: RequestKind
    messages: list[dict[str, Any]]
    generation: int
    timeout_s: float
    channels: tuple[str, ...] = ()


# -- notices --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscribed:
    channel: str
    replay_from: int


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    channel: str


@dataclass(frozen=True, slots=True)
class Gap:
    """The server refused `replay_id`; the subscription fell back to `fallback` (-1 or -2).

    Events between the refused id and the fallback point may be missing.
    """

    channel: str
    replay_id: int
    fallback: int
    error: InvalidReplayIdError


@dataclass(frozen=True, slots=True)
class SubscriptionLost:
    """A subscription failed for good; other subscriptions go on."""

    channel: str
    error: SfStreamError


@dataclass(frozen=True, slots=True)
class EventRejected:
    """An event on `channel` broke the protocol: it was dropped, with every later event of
    the same response on that channel; the stream resumes from its last good replayId.

    `consecutive` counts such failures on the channel with no progress in between.
    """

    channel: str
    error: MalformedEventError
    consecutive: int


@dataclass(frozen=True, slots=True)
class Reauthenticate:
    """The driver must refresh the access token, then call `Session.authenticated`.

    `delay_s`: how long to wait before refreshing, from the retry schedule (a connection
    that keeps being refused for its token must not be re-established at a fixed pace).
    """

    error: SfStreamError
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Recovering:
    """The session lost its connection and will recover; `delay_s` before the next try."""

    error: SfStreamError
    recovery: Recovery
    delay_s: float


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """The session cannot go on; `error` is terminal."""

    error: SfStreamError


@dataclass(frozen=True, slots=True)
class Handshaken:
    client_id: str
    replay_supported: bool


Notice = (
    Subscribed
    | Unsubscribed
    | Gap
    | SubscriptionLost
    | EventRejected
    | Reauthenticate
    | Recovering
    | SessionFailed
    | Handshaken
)


@dataclass(slots=True)
class Step:
    """What one input produced: events to deliver, in order, and notices."""

    events: list[Event] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


@dataclass(slots=True)
class Counters:
    handshakes: int = 0
    rehandshakes: int = 0
    reconnects: int = 0
    reauthentications: int = 0
    events: int = 0
    duplicates: int = 0
    unsolicited: int = 0
    protocol_errors: int = 0
    """Events dropped because their envelope broke the protocol."""
    replay_skipped: int = 0
    """Events replayed to resume a `-1` stream that predate its first subscribe."""
