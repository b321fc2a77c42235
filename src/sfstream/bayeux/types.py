"""The Bayeux session's vocabulary: phases, subscriptions, requests and the notices a step
reports. `session.py` holds the state machine that produces them."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

import msgspec

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


class Subscription(msgspec.Struct):
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


class Request(msgspec.Struct, frozen=True):
    """One POST the driver must send: its messages and how long to wait for the answer."""

    kind: RequestKind
    messages: list[dict[str, Any]]
    generation: int
    timeout_s: float
    channels: tuple[str, ...] = ()


# -- notices --------------------------------------------------------------------------------


class Subscribed(msgspec.Struct, frozen=True):
    channel: str
    replay_from: int


class Unsubscribed(msgspec.Struct, frozen=True):
    channel: str


class Gap(msgspec.Struct, frozen=True):
    """The server refused `replay_id`; the subscription fell back to `fallback` (-1 or -2).

    Events between the refused id and the fallback point may be missing.
    """

    channel: str
    replay_id: int
    fallback: int
    error: InvalidReplayIdError


class SubscriptionLost(msgspec.Struct, frozen=True):
    """A subscription failed for good; other subscriptions go on."""

    channel: str
    error: SfStreamError


class EventRejected(msgspec.Struct, frozen=True):
    """An event on `channel` broke the protocol: it was dropped, with every later event of
    the same response on that channel; the stream resumes from its last good replayId.

    `consecutive` counts such failures on the channel with no progress in between.
    """

    channel: str
    error: MalformedEventError
    consecutive: int


class Reauthenticate(msgspec.Struct, frozen=True):
    """The driver must refresh the access token, then call `Session.authenticated`.

    `delay_s`: how long to wait before refreshing, from the retry schedule (a connection
    that keeps being refused for its token must not be re-established at a fixed pace).
    """

    error: SfStreamError
    delay_s: float = 0.0


class Recovering(msgspec.Struct, frozen=True):
    """The session lost its connection and will recover; `delay_s` before the next try."""

    error: SfStreamError
    recovery: Recovery
    delay_s: float


class SessionFailed(msgspec.Struct, frozen=True):
    """The session cannot go on; `error` is terminal."""

    error: SfStreamError


class Handshaken(msgspec.Struct, frozen=True):
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


class Step(msgspec.Struct):
    """What one input produced: events to deliver, in order, and notices."""

    events: list[Event] = msgspec.field(default_factory=list)
    notices: list[Notice] = msgspec.field(default_factory=list)


class Counters(msgspec.Struct):
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
