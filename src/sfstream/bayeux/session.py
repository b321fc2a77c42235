"""The Bayeux client session: a pure state machine (no sockets, no asyncio).

The driver (`sfstream.client`) asks `poll(now)` for the requests to send, posts each one,
and feeds back what happened: `receive(request, now, messages)` for a decoded response,
`fail(request, now, error)` for a transport failure. Both return a `Step`: events to
deliver and notices (subscribed, gap, subscription lost, re-authenticate, session failed).
`next_deadline(now)` says when `poll` has something new to send. Time is a float the
driver passes in, so the 110 s poll and 40 s reconnect windows are testable in virtual time.

Phases and transitions:

| phase | on | goes to |
|---|---|---|
| UNCONNECTED | poll | HANDSHAKING (sends /meta/handshake) |
| HANDSHAKING | handshake ok | CONNECTED (sends /meta/connect and every wanted subscribe) |
| HANDSHAKING | denied for auth | AUTHENTICATING (driver refreshes the token), then UNCONNECTED |
| HANDSHAKING | denied again after re-auth | FAILED (AuthenticationError) |
| HANDSHAKING | transport failure, other denial | WAITING (backoff), then UNCONNECTED |
| CONNECTED | connect ok | CONNECTED (next connect after advice.interval) |
| CONNECTED | 403::Unknown client (any advice) | WAITING, then UNCONNECTED (re-handshake) |
| CONNECTED | 401::Authentication invalid | AUTHENTICATING |
| CONNECTED | transport failure on connect | WAITING, then UNCONNECTED (see below) |
| CONNECTED | daily allocation spent | FAILED |
| any | close | CLOSING (sends /meta/disconnect), then CLOSED |

A failed connect may have lost a response that carried events; the server has moved past
them, so the session never just reconnects: it handshakes again and resubscribes.
After every successful handshake each wanted subscription is sent again from its latest
replayId (the last one delivered, else its starting point): a re-handshake clears every
server-side subscription (fact sheet §2.5, §11.1).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from sfstream.bayeux.backoff import Backoff
from sfstream.bayeux.messages import LONG_POLLING, Advice, Event, MetaChannel, Reply
from sfstream.errors import (
    AllocationExceededError,
    AuthenticationError,
    AuthExpiredError,
    ClientLimitError,
    InvalidReplayIdError,
    Recovery,
    SfStreamError,
    SubscriptionError,
    TransportError,
    classify,
)

LATEST: Final = -1
"""Replay from the tip: only events published after the subscribe."""
EARLIEST: Final = -2
"""Replay every retained event, then new ones."""
DEFAULT_POLL_TIMEOUT_S: Final = 110.0
MAX_SUBSCRIBE_BATCH_BYTES: Final = 16_000
"""Subscribes are batched into POSTs well under Salesforce's 32,768-byte limit."""


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

    @property
    def resume_from(self) -> int:
        return self.last_replay_id if self.last_replay_id is not None else self.start


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
class Reauthenticate:
    """The driver must refresh the access token, then call `Session.authenticated`."""

    error: SfStreamError


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


class Session:
    """A Bayeux client session with Salesforce's replay extension.

    Args:
        rng: jitter source for backoff (seed it in tests).
        backoff_base_s, backoff_cap_s: the backoff schedule.
        network_margin_s: added to the advised poll timeout to get a connect's read timeout.
        request_timeout_s: read timeout of every request other than a connect.
    """

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        network_margin_s: float = 15.0,
        request_timeout_s: float = 30.0,
    ) -> None:
        self.phase = Phase.UNCONNECTED
        self.client_id: str | None = None
        self.generation = 0
        self.subscriptions: dict[str, Subscription] = {}
        self.counters = Counters()
        self.advice = Advice(
            reconnect="retry", interval_ms=0, timeout_ms=int(DEFAULT_POLL_TIMEOUT_S * 1000)
        )
        self.replay_supported = False
        self._backoff = Backoff(backoff_base_s, backoff_cap_s, rng or random.Random())  # noqa: S311 - jitter
        self._network_margin_s = network_margin_s
        self._request_timeout_s = request_timeout_s
        self._next_id = 0
        self._connect_outstanding = False
        self._next_connect_at = 0.0
        self._retry_at = 0.0
        self._first_connect = True
        self._reauth_for_handshake = False
        self._unsubscribes: list[str] = []
        self._close_requested = False

    # -- commands ---------------------------------------------------------------------------

    def subscribe(
        self, channel: str, replay_from: int = LATEST, policy: ReplayPolicy = ReplayPolicy.FAIL
    ) -> None:
        """Want `channel` from `replay_from` (-1 new events, -2 all retained, or an id).

        Raises:
            ValueError: the channel is already wanted, or the replay value is not valid.
        """
        if not channel.startswith("/"):
            raise ValueError(f"channel {channel!r} must start with '/'")
        if isinstance(replay_from, bool) or not isinstance(replay_from, int) or replay_from < -2:
            raise ValueError(f"replay_from must be -1, -2 or a replayId, got {replay_from!r}")
        existing = self.subscriptions.get(channel)
        if existing is not None and existing.state is not SubState.FAILED:
            raise ValueError(f"already subscribed to {channel}")
        self.subscriptions[channel] = Subscription(channel, replay_from, policy)
        if channel in self._unsubscribes:
            self._unsubscribes.remove(channel)

    def unsubscribe(self, channel: str) -> None:
        """Stop wanting `channel`; it is not resubscribed after a re-handshake."""
        subscription = self.subscriptions.pop(channel, None)
        if subscription is not None and subscription.state in (SubState.SENT, SubState.ACTIVE):
            self._unsubscribes.append(channel)

    def close(self) -> None:
        """Ask for a `/meta/disconnect` (sent by the next `poll`)."""
        self._close_requested = True

    def authenticated(self, now: float) -> None:
        """The driver refreshed the token: handshake again."""
        if self.phase is Phase.AUTHENTICATING:
            self.phase = Phase.UNCONNECTED

    # -- output -----------------------------------------------------------------------------

    def _id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    def connect_timeout_s(self) -> float:
        """Read timeout for a connect: the advised poll timeout plus the network margin."""
        timeout_ms = self.advice.timeout_ms
        poll = timeout_ms / 1000 if timeout_ms is not None else DEFAULT_POLL_TIMEOUT_S
        return poll + self._network_margin_s

    def poll(self, now: float, *, connect: bool = True) -> list[Request]:
        """The requests to send now (possibly none).

        With `connect=False` (the consumer is behind) no `/meta/connect` goes out; the
        server forgets a client that stays silent too long, which the session then recovers
        from like from any unknown-client error.
        """
        if self._close_requested and self.phase not in (Phase.CLOSING, Phase.CLOSED, Phase.FAILED):
            return self._disconnect()
        if self.phase is Phase.WAITING and now >= self._retry_at:
            self.phase = Phase.UNCONNECTED
        if self.phase is Phase.UNCONNECTED:
            self.phase = Phase.HANDSHAKING
            self.client_id = None
            message: dict[str, Any] = {
                "channel": MetaChannel.HANDSHAKE.value,
                "version": "1.0",
                "minimumVersion": "1.0",
                "supportedConnectionTypes": [LONG_POLLING],
                "id": self._id(),
                "ext": {"replay": True},
            }
            return [
                Request(RequestKind.HANDSHAKE, [message], self.generation, self._request_timeout_s)
            ]
        if self.phase is not Phase.CONNECTED:
            return []
        requests: list[Request] = []
        if connect and self.wants_connect() and now >= self._next_connect_at:
            self._connect_outstanding = True
            message = {
                "channel": MetaChannel.CONNECT.value,
                "clientId": self.client_id,
                "connectionType": LONG_POLLING,
                "id": self._id(),
            }
            timeout = self._request_timeout_s if self._first_connect else (self.connect_timeout_s())
            requests.append(Request(RequestKind.CONNECT, [message], self.generation, timeout))
        requests.extend(self._subscribe_requests())
        if self._unsubscribes:
            messages = [
                {
                    "channel": MetaChannel.UNSUBSCRIBE.value,
                    "clientId": self.client_id,
                    "subscription": channel,
                    "id": self._id(),
                }
                for channel in self._unsubscribes
            ]
            requests.append(
                Request(
                    RequestKind.UNSUBSCRIBE,
                    messages,
                    self.generation,
                    self._request_timeout_s,
                    tuple(self._unsubscribes),
                )
            )
            self._unsubscribes = []
        return requests

    def _subscribe_requests(self) -> list[Request]:
        batches: list[list[dict[str, Any]]] = []
        channels: list[list[str]] = []
        size = MAX_SUBSCRIBE_BATCH_BYTES
        for subscription in self.subscriptions.values():
            if subscription.state is not SubState.PENDING:
                continue
            subscription.state = SubState.SENT
            subscription.sent_replay = subscription.resume_from
            channel = subscription.channel
            replay_key = channel.partition("?")[0]
            message = {
                "channel": MetaChannel.SUBSCRIBE.value,
                "clientId": self.client_id,
                "subscription": channel,
                "id": self._id(),
                # Replay ids always go out as JSON integers (fact sheet §2.3).
                "ext": {"replay": {replay_key: int(subscription.resume_from)}},
            }
            cost = len(channel) * 2 + 160
            if size + cost > MAX_SUBSCRIBE_BATCH_BYTES:
                batches.append([])
                channels.append([])
                size = 0
            batches[-1].append(message)
            channels[-1].append(channel)
            size += cost
        return [
            Request(
                RequestKind.SUBSCRIBE, batch, self.generation, self._request_timeout_s, tuple(names)
            )
            for batch, names in zip(batches, channels, strict=True)
        ]

    def _disconnect(self) -> list[Request]:
        was_connected = self.phase is Phase.CONNECTED and self.client_id is not None
        self.phase = Phase.CLOSING
        if not was_connected:
            self.phase = Phase.CLOSED
            return []
        message = {
            "channel": MetaChannel.DISCONNECT.value,
            "clientId": self.client_id,
            "id": self._id(),
        }
        return [
            Request(RequestKind.DISCONNECT, [message], self.generation, self._request_timeout_s)
        ]

    @property
    def finished(self) -> bool:
        """Closed or failed: nothing more will happen."""
        return self.phase in (Phase.CLOSED, Phase.FAILED)

    @property
    def closing(self) -> bool:
        return self.phase is Phase.CLOSING

    def wants_connect(self) -> bool:
        """Whether the session is connected and has no `/meta/connect` outstanding."""
        return self.phase is Phase.CONNECTED and not self._connect_outstanding

    def next_deadline(self, now: float, *, connect: bool = True) -> float | None:
        """When `poll` will next have something to send by itself (None: only on input)."""
        if self.phase is Phase.WAITING:
            return self._retry_at
        if connect and self.wants_connect():
            return max(now, self._next_connect_at)
        if self.phase is Phase.UNCONNECTED:
            return now
        return None

    # -- input ------------------------------------------------------------------------------

    def receive(
        self, request: Request, now: float, replies: list[Reply], events: list[Event]
    ) -> Step:
        """Feed the parsed response to `request`."""
        step = Step()
        self._deliver(events, step)
        if request.kind is RequestKind.CONNECT:
            self._connect_outstanding = False
        if request.kind is RequestKind.DISCONNECT:
            self.phase = Phase.CLOSED
            return step
        stale = request.generation != self.generation
        for reply in replies:
            if stale or self.phase in (Phase.CLOSING, Phase.CLOSED, Phase.FAILED):
                continue
            if reply.channel is MetaChannel.HANDSHAKE:
                self._on_handshake(reply, now, step)
            elif reply.channel is MetaChannel.CONNECT:
                self._on_connect(reply, now, step)
            elif reply.channel is MetaChannel.SUBSCRIBE:
                self._on_subscribe(reply, now, step)
            elif reply.channel is MetaChannel.UNSUBSCRIBE and reply.subscription:
                step.notices.append(Unsubscribed(reply.subscription))
        if not stale and request.kind is RequestKind.HANDSHAKE and self.phase is Phase.HANDSHAKING:
            self._recover(TransportError("no reply to /meta/handshake"), now, step)
        if not stale and request.kind is RequestKind.SUBSCRIBE and self.phase is Phase.CONNECTED:
            answered = {r.subscription for r in replies if r.channel is MetaChannel.SUBSCRIBE}
            for channel in request.channels:
                subscription = self.subscriptions.get(channel)
                if (
                    channel not in answered
                    and subscription is not None
                    and subscription.state is SubState.SENT
                ):
                    subscription.state = SubState.PENDING  # unanswered: ask again
        return step

    def fail(self, request: Request, now: float, error: SfStreamError) -> Step:
        """The request got no usable response (network error, timeout, 5xx, bad body)."""
        step = Step()
        if request.kind is RequestKind.CONNECT:
            self._connect_outstanding = False
        if request.kind is RequestKind.DISCONNECT:
            self.phase = Phase.CLOSED
            return step
        if request.generation != self.generation or self.phase in (
            Phase.CLOSING,
            Phase.CLOSED,
            Phase.FAILED,
            Phase.WAITING,
            Phase.AUTHENTICATING,
        ):
            return step
        self._recover(error, now, step)
        return step

    def _deliver(self, events: Iterable[Event], step: Step) -> None:
        subscriptions = self.subscriptions
        for event in events:
            subscription = subscriptions.get(event.channel)
            if subscription is None:
                subscription = subscriptions.get(event.channel.partition("?")[0])
            if subscription is None:
                self.counters.unsolicited += 1
                continue
            replay_id = event.replay_id
            if replay_id is not None:
                last = subscription.last_replay_id
                if last is not None and replay_id <= last:
                    self.counters.duplicates += 1
                    continue
                subscription.last_replay_id = replay_id
            self.counters.events += 1
            step.events.append(event)

    def _on_handshake(self, reply: Reply, now: float, step: Step) -> None:
        if reply.successful and reply.client_id:
            self.phase = Phase.CONNECTED
            self.client_id = reply.client_id
            self.replay_supported = reply.replay_supported
            self.generation += 1
            self.counters.handshakes += 1
            if self.counters.handshakes > 1:
                self.counters.rehandshakes += 1
            self._reauth_for_handshake = False
            self._first_connect = True
            self._connect_outstanding = False
            self._next_connect_at = now
            for subscription in self.subscriptions.values():
                if subscription.state is not SubState.FAILED:
                    subscription.state = SubState.PENDING
            step.notices.append(Handshaken(reply.client_id, reply.replay_supported))
            return
        reason = reply.failure_reason or reply.error or "403::Handshake denied"
        error = classify(reason)
        if reply.failure_reason is None and reply.error == "403::Handshake denied":
            error = AuthExpiredError(reason, server_text=reason)
        if error.recovery is Recovery.REAUTHENTICATE:
            if self._reauth_for_handshake:
                self._fail_session(
                    AuthenticationError(
                        f"Salesforce keeps denying the handshake after a token refresh: {reason}",
                        server_text=reason,
                    ),
                    step,
                )
                return
            self._reauth_for_handshake = True
        self._recover(error, now, step)

    def _on_connect(self, reply: Reply, now: float, step: Step) -> None:
        if reply.advice is not None:
            self._merge_advice(reply.advice)
        if reply.successful:
            self._first_connect = False
            self._backoff.reset()
            interval = (self.advice.interval_ms or 0) / 1000
            self._next_connect_at = now + interval
            return
        self._recover(classify(reply.error or "connect failed"), now, step)

    def _on_subscribe(self, reply: Reply, now: float, step: Step) -> None:
        channel = reply.subscription or ""
        subscription = self.subscriptions.get(channel)
        if reply.successful:
            if subscription is not None and subscription.state is SubState.SENT:
                subscription.state = SubState.ACTIVE
                sent = subscription.sent_replay
                step.notices.append(
                    Subscribed(channel, sent if sent is not None else subscription.resume_from)
                )
            return
        replay = None
        if subscription is not None:
            replay = subscription.sent_replay
            if replay is None:
                replay = subscription.resume_from
        error = classify(reply.error or "subscribe failed", channel=channel, replay_id=replay)
        if isinstance(error, InvalidReplayIdError) and subscription is not None:
            self._invalid_replay(subscription, error, step)
            return
        if isinstance(error, SubscriptionError):
            if subscription is not None:
                subscription.state = SubState.FAILED
            step.notices.append(SubscriptionLost(channel, error))
            return
        if isinstance(error, AllocationExceededError):
            self._fail_session(error, step)
            return
        if error.retryable:
            if subscription is not None:
                subscription.state = SubState.PENDING
            self._recover(error, now, step)
            return
        if subscription is not None:
            subscription.state = SubState.FAILED
        step.notices.append(SubscriptionLost(channel, error))

    def _invalid_replay(
        self, subscription: Subscription, error: InvalidReplayIdError, step: Step
    ) -> None:
        refused = error.replay_id if error.replay_id is not None else subscription.resume_from
        if subscription.policy is ReplayPolicy.FAIL or refused in (LATEST, EARLIEST):
            subscription.state = SubState.FAILED
            step.notices.append(SubscriptionLost(subscription.channel, error))
            return
        fallback = EARLIEST if subscription.policy is ReplayPolicy.EARLIEST else LATEST
        subscription.start = fallback
        subscription.last_replay_id = None  # the stream restarts: accept any id again
        subscription.state = SubState.PENDING
        step.notices.append(Gap(subscription.channel, refused, fallback, error))

    def _merge_advice(self, advice: Advice) -> None:
        current = self.advice
        self.advice = Advice(
            reconnect=advice.reconnect or current.reconnect,
            interval_ms=advice.interval_ms
            if advice.interval_ms is not None
            else (current.interval_ms),
            timeout_ms=advice.timeout_ms if advice.timeout_ms is not None else (current.timeout_ms),
        )

    def _fail_session(self, error: SfStreamError, step: Step) -> None:
        self.phase = Phase.FAILED
        step.notices.append(SessionFailed(error))

    def _recover(self, error: SfStreamError, now: float, step: Step) -> None:
        """Leave the current connection and plan how to get back."""
        if not error.retryable:
            self._fail_session(error, step)
            return
        if error.recovery is Recovery.REAUTHENTICATE:
            self.phase = Phase.AUTHENTICATING
            self.generation += 1
            self.counters.reauthentications += 1
            step.notices.append(Reauthenticate(error))
            return
        # A failed connect may have lost a response full of events, and an unknown
        # client has lost its subscriptions: in both cases (and whatever the advice says)
        # only a new handshake and a resubscribe from the last delivered replayId is safe.
        delay = self._backoff.next_delay()
        self.counters.reconnects += 1
        self.generation += 1
        self._connect_outstanding = False
        self.phase = Phase.WAITING
        self._retry_at = now + delay
        if isinstance(error, ClientLimitError):
            self._retry_at = now + max(delay, 5.0)
        step.notices.append(Recovering(error, Recovery.REHANDSHAKE, self._retry_at - now))
