"""The Bayeux client session: a pure state machine (no sockets, no asyncio).

The driver (`sfstream.client`) asks `poll(now)` for the requests to send, posts each one,
and feeds back what happened: `receive(request, now, messages)` for a decoded response,
`fail(request, now, error)` for a transport failure. Both return a `Step`: events to
deliver and notices (subscribed, gap, subscription lost, re-authenticate, session failed).
`next_deadline(now)` says when `poll` has something new to send. Time is a float the
driver passes in, so the 110 s poll and 40 s reconnect windows are testable in virtual time;
the wall-clock time (`poll(..., wall=)`), used only to resume `-1` streams, is passed in too.

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
| CONNECTED | transport failure on connect, no reply to it | WAITING, then UNCONNECTED |
| CONNECTED | an event with a malformed envelope | WAITING, then UNCONNECTED |
| CONNECTED | daily allocation spent, with a probe interval | WAITING (a probe), then UNCONNECTED |
| CONNECTED | daily allocation spent (without one) | FAILED |
| CONNECTED | every subscription refused or lost | CLOSING (sends /meta/disconnect), then FAILED |
| any | close | CLOSING (sends /meta/disconnect), then CLOSED |

A failed connect may have lost a response that carried events; the server has moved past
them, so the session never just reconnects: it handshakes again and resubscribes.
After every successful handshake each wanted subscription is sent again from its latest
replayId (the last one delivered, else its starting point): a re-handshake clears every
server-side subscription (fact sheet §2.5, §11.1).

Retries (one policy, `sfstream.bayeux.backoff`): every way back to the server waits a
jittered, exponentially growing delay capped at `backoff_cap_s`. The count of consecutive
failures resets when a long poll completes (a `/meta/connect` after the first one of a
connection succeeds). The first connect of a connection only proves the handshake worked, so
a connection that is lost before any long poll completes (a `403::Unknown client` or
`401::Authentication invalid` loop) keeps its place in the schedule and the next wait grows.

A spent daily delivery allocation (`403::Organization total events daily limit exceeded`,
on `/meta/connect` or `/meta/subscribe`) does not pass in seconds: Salesforce counts it over
24 hours. With `allocation_probe_s` the session says goodbye to the connection (freeing its
concurrent-client slot), waits that long plus up to a tenth more (jitter, so that workers
of one org do not probe together), and handshakes again: the probe. A refused probe waits
again; an accepted one resubscribes every stream from its last delivered replayId. The wait
does not draw on the retry schedule and leaves it as it was. Without `allocation_probe_s`
the session fails with `AllocationExceededError`.

`-1` streams: Salesforce offers no way to learn the replayId of the tip, so a stream that
started at `-1` and has not received anything yet has no replayId to resume from. The
session remembers when its first `-1` subscribe went out (wall-clock time from the driver)
and, after a re-handshake, resubscribes it at `-2` and drops the replayed events that are
older than that moment minus `latest_clock_skew_s` (compared by the event's own time, see
`messages.event_time_s`). Once it has delivered an event, it resumes by replayId as usual.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Final

from sfstream.bayeux.backoff import Backoff
from sfstream.bayeux.messages import (
    LONG_POLLING,
    Advice,
    Event,
    MalformedEvent,
    MetaChannel,
    Reply,
    event_time_s,
)
from sfstream.bayeux.types import (
    EARLIEST,
    LATEST,
    Counters,
    EventRejected,
    Gap,
    Handshaken,
    Phase,
    Reauthenticate,
    Recovering,
    ReplayPolicy,
    Request,
    RequestKind,
    SessionFailed,
    Step,
    Subscribed,
    Subscription,
    SubscriptionLost,
    SubState,
    Unsubscribed,
)
from sfstream.errors import (
    AllocationExceededError,
    AllSubscriptionsLostError,
    AuthenticationError,
    AuthExpiredError,
    ClientLimitError,
    InvalidReplayIdError,
    MalformedEventError,
    ProtocolError,
    Recovery,
    ServerBusyError,
    SfStreamError,
    SubscriptionError,
    TransportError,
    classify,
)

DEFAULT_POLL_TIMEOUT_S: Final = 110.0
MAX_SUBSCRIBE_BATCH_BYTES: Final = 16_000
"""Subscribes are batched into POSTs well under Salesforce's 32,768-byte limit."""
CLIENT_LIMIT_FLOOR_S: Final = 5.0
"""The shortest wait after `403::Organization concurrent user limit exceeded`: a slot frees
up only when another client of the org disconnects (fact sheet §4)."""
_SERVER_BUSY_TEXTS: Final = ("simultaneous connections per server",)
"""Salesforce's temporary refusals that `classify` does not know by code: the 403 "To
protect all customers from excessive use and Denial of Service attacks, we limit the number
of simultaneous connections per server..." sent as a handshake's `failureReason` (Streaming
API Error Codes, fact sheet §4 [S14]: retry with exponential backoff)."""


def _classify(
    text: str, *, channel: str | None = None, replay_id: int | None = None
) -> SfStreamError:
    """`classify`, plus Salesforce's temporary refusals that it cannot tell by code."""
    lowered = text.lower()
    if any(marker in lowered for marker in _SERVER_BUSY_TEXTS):
        return ServerBusyError(text, channel=channel, replay_id=replay_id, server_text=text)
    return classify(text, channel=channel, replay_id=replay_id)


def _reply_error(
    reply: Reply, default: str, *, channel: str | None = None, replay_id: int | None = None
) -> SfStreamError:
    """The error a failed reply stands for.

    A 503 "Server is too busy" comes as `ext.sfdc.failureReason` next to another `error` on
    a handshake, connect or subscribe (fact sheet §4): it is temporary whatever the other
    error says.
    """
    if reply.failure_reason is not None:
        reason = _classify(reply.failure_reason, channel=channel, replay_id=replay_id)
        if isinstance(reason, ServerBusyError):
            return reason
    return _classify(reply.error or default, channel=channel, replay_id=replay_id)


class Session:
    """A Bayeux client session with Salesforce's replay extension.

    Args:
        rng: jitter source for backoff (seed it in tests).
        backoff_base_s, backoff_cap_s: the backoff schedule.
        network_margin_s: added to the advised poll timeout to get a connect's read timeout.
        request_timeout_s: read timeout of every request other than a connect.
        latest_clock_skew_s: when a `-1` stream is resumed from `-2`, replayed events up to
            this much older than its first subscribe are still delivered. It covers a
            Salesforce clock behind ours and the time between an event's own timestamp and
            its publication on the bus; too small loses events, too large only delivers a
            few events from before the subscribe.
        protocol_error_limit: malformed events on one channel in a row, with no progress in
            between, before the subscription is lost with a `ProtocolError`.
        allocation_probe_s: how long to wait before probing again once the daily delivery
            allocation is spent; None: the session fails instead.
    """

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        network_margin_s: float = 15.0,
        request_timeout_s: float = 30.0,
        latest_clock_skew_s: float = 30.0,
        protocol_error_limit: int = 5,
        allocation_probe_s: float | None = None,
    ) -> None:
        if not latest_clock_skew_s >= 0:
            raise ValueError(f"latest_clock_skew_s must be >= 0, got {latest_clock_skew_s}")
        if protocol_error_limit < 1:
            raise ValueError(f"protocol_error_limit must be >= 1, got {protocol_error_limit}")
        if allocation_probe_s is not None and not allocation_probe_s > 0:
            raise ValueError(f"allocation_probe_s must be > 0, got {allocation_probe_s}")
        self.phase = Phase.UNCONNECTED
        self.client_id: str | None = None
        self.generation = 0
        self.subscriptions: dict[str, Subscription] = {}
        self.counters = Counters()
        self.advice = Advice(
            reconnect="retry", interval_ms=0, timeout_ms=int(DEFAULT_POLL_TIMEOUT_S * 1000)
        )
        self.replay_supported = False
        self.failure: SfStreamError | None = None
        """Why the session failed, once it has."""
        self._backoff = Backoff(backoff_base_s, backoff_cap_s, rng or random.Random())  # noqa: S311 - jitter
        self._network_margin_s = network_margin_s
        self._request_timeout_s = request_timeout_s
        self._skew_s = latest_clock_skew_s
        self._protocol_error_limit = protocol_error_limit
        self._allocation_probe_s = allocation_probe_s
        self._next_id = 0
        self._connect_outstanding = False
        self._next_connect_at = 0.0
        self._retry_at = 0.0
        self._first_connect = True
        self._long_poll_done = False
        self._flaps = 0
        self._reauth_for_handshake = False
        self._unsubscribes: list[str] = []
        self._close_requested = False
        self._disconnect_due = False
        self._resubscribe_at: float | None = None
        self._farewells: list[tuple[str, int]] = []

    # -- commands ---------------------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        replay_from: int = LATEST,
        policy: ReplayPolicy = ReplayPolicy.FAIL,
        *,
        awaited: bool = False,
    ) -> None:
        """Want `channel` from `replay_from` (-1 new events, -2 all retained, or an id).

        With `awaited`, the caller waits for the first answer and is told of a refusal
        (`SubscriptionLost` goes to it): the session then forgets the subscription, as if it
        had never been asked for, and the refusal never counts towards "every subscription
        was refused or lost".

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
        self.subscriptions[channel] = Subscription(channel, replay_from, policy, awaited=awaited)
        if channel in self._unsubscribes:
            self._unsubscribes.remove(channel)

    def unsubscribe(self, channel: str) -> None:
        """Stop wanting `channel`; it is not resubscribed after a re-handshake."""
        subscription = self.subscriptions.pop(channel, None)
        if subscription is not None and subscription.state in (SubState.SENT, SubState.ACTIVE):
            self._unsubscribes.append(channel)

    def start_over(self, now: float, error: SfStreamError) -> Step:
        """Leave the current connection for a new one, as after a failure: a farewell
        `/meta/disconnect`, a new handshake after the backoff, and every wanted subscription
        resubscribed from its last delivered replayId. Nothing happens (an empty step) while
        the session is not connected: it is already on its way back, or ending.
        """
        step = Step()
        if self.phase in (Phase.CONNECTED, Phase.HANDSHAKING):
            self._recover(error, now, step, farewell=True)
        return step

    def close(self) -> None:
        """Ask for a `/meta/disconnect` (sent by the next `poll`)."""
        self._close_requested = True

    def authenticated(self, now: float) -> None:
        """The driver refreshed the token: handshake again."""
        if self.phase is Phase.AUTHENTICATING:
            self.phase = Phase.UNCONNECTED

    def authentication_failed(self, now: float, error: SfStreamError) -> Recovering:
        """The driver could not refresh the token (a transient failure): when to try again.

        The wait comes from the same schedule as every other retry.
        """
        return Recovering(error, Recovery.REAUTHENTICATE, self._backoff.next_delay())

    # -- output -----------------------------------------------------------------------------

    def _id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    def connect_timeout_s(self) -> float:
        """Read timeout for a connect: the advised poll timeout plus the network margin."""
        timeout_ms = self.advice.timeout_ms
        poll = timeout_ms / 1000 if timeout_ms is not None else DEFAULT_POLL_TIMEOUT_S
        return poll + self._network_margin_s

    def poll(self, now: float, *, connect: bool = True, wall: float | None = None) -> list[Request]:
        """The requests to send now (possibly none).

        With `connect=False` (the consumer is behind) no `/meta/connect` goes out; the
        server forgets a client that stays silent too long, which the session then recovers
        from like from any unknown-client error. `wall` is the wall-clock time (epoch
        seconds); without it, a `-1` stream that has received nothing resumes at `-1`.
        """
        requests = self._poll(now, connect=connect, wall=wall)
        if self._farewells:
            # A connection abandoned while the server still holds it: release its slot.
            farewells = [
                Request(
                    RequestKind.DISCONNECT,
                    [
                        {
                            "channel": MetaChannel.DISCONNECT.value,
                            "clientId": client_id,
                            "id": self._id(),
                        }
                    ],
                    generation,
                    self._request_timeout_s,
                )
                for client_id, generation in self._farewells
            ]
            self._farewells = []
            requests = farewells + requests
        return requests

    def _poll(self, now: float, *, connect: bool, wall: float | None) -> list[Request]:
        if self._disconnect_due:
            self._disconnect_due = False
            return [self._disconnect_request()]
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
        requests.extend(self._subscribe_requests(now, wall))
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

    def _subscribe_requests(self, now: float, wall: float | None) -> list[Request]:
        batches: list[list[dict[str, Any]]] = []
        channels: list[list[str]] = []
        size = MAX_SUBSCRIBE_BATCH_BYTES
        later: float | None = None
        for subscription in self.subscriptions.values():
            if subscription.state is not SubState.PENDING:
                continue
            if subscription.retry_at > now:
                retry_at = subscription.retry_at
                later = retry_at if later is None else min(later, retry_at)
                continue
            subscription.state = SubState.SENT
            resume = subscription.resume_from
            subscription.sent_replay = resume
            subscription.sent_wall = wall
            anchor = subscription.anchor_wall
            subscription.skip_before = anchor - self._skew_s if anchor is not None else None
            channel = subscription.channel
            replay_key = channel.partition("?")[0]
            message = {
                "channel": MetaChannel.SUBSCRIBE.value,
                "clientId": self.client_id,
                "subscription": channel,
                "id": self._id(),
                # Replay ids always go out as JSON integers (fact sheet §2.3).
                "ext": {"replay": {replay_key: int(resume)}},
            }
            cost = len(channel) * 2 + 160
            if size + cost > MAX_SUBSCRIBE_BATCH_BYTES:
                batches.append([])
                channels.append([])
                size = 0
            batches[-1].append(message)
            channels[-1].append(channel)
            size += cost
        self._resubscribe_at = later
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
        return [self._disconnect_request()]

    def _disconnect_request(self) -> Request:
        message = {
            "channel": MetaChannel.DISCONNECT.value,
            "clientId": self.client_id,
            "id": self._id(),
        }
        return Request(RequestKind.DISCONNECT, [message], self.generation, self._request_timeout_s)

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
        if self._disconnect_due:
            return now
        if self.phase is Phase.WAITING:
            return self._retry_at
        if self.phase is Phase.UNCONNECTED:
            return now
        deadline: float | None = None
        if connect and self.wants_connect():
            deadline = max(now, self._next_connect_at)
        if self.phase is Phase.CONNECTED and self._resubscribe_at is not None:
            resubscribe = max(now, self._resubscribe_at)
            deadline = resubscribe if deadline is None else min(deadline, resubscribe)
        return deadline

    # -- input ------------------------------------------------------------------------------

    def receive(
        self,
        request: Request,
        now: float,
        replies: list[Reply],
        events: Sequence[Event | MalformedEvent],
    ) -> Step:
        """Feed the parsed response to `request`."""
        step = Step()
        rejected = self._deliver(events, step)
        stale = request.generation != self.generation
        if request.kind is RequestKind.CONNECT:
            self._connect_outstanding = False
        if request.kind is RequestKind.DISCONNECT:
            if not stale:  # a stale one said goodbye to an abandoned connection
                self._closed(step)
            return step
        if (
            rejected
            and self.phase not in (Phase.CLOSING, Phase.CLOSED, Phase.FAILED)
            and self._reject(rejected, now, step, current=not stale)
        ):
            return step  # the connection is abandoned: the rest of the response is moot
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
        if stale:
            return step
        if request.kind is RequestKind.HANDSHAKE and self.phase is Phase.HANDSHAKING:
            self._recover(TransportError("no reply to /meta/handshake"), now, step)
        elif (
            request.kind is RequestKind.CONNECT
            and self.phase is Phase.CONNECTED
            and not any(r.channel is MetaChannel.CONNECT for r in replies)
        ):
            # Sending the next connect at once would spin against a server that keeps
            # answering without a connect reply: treat it as a lost response.
            self._recover(TransportError("no reply to /meta/connect"), now, step, farewell=True)
        elif request.kind is RequestKind.SUBSCRIBE and self.phase is Phase.CONNECTED:
            self._unanswered_subscribes(request, now, replies)
        return step

    def _unanswered_subscribes(self, request: Request, now: float, replies: list[Reply]) -> None:
        """Ask again for subscriptions the response said nothing about: the first time at
        once, then after growing delays (a server that never answers must not be hammered)."""
        answered = {r.subscription for r in replies if r.channel is MetaChannel.SUBSCRIBE}
        for channel in request.channels:
            subscription = self.subscriptions.get(channel)
            if (
                channel in answered
                or subscription is None
                or subscription.state is not SubState.SENT
            ):
                continue
            subscription.state = SubState.PENDING
            subscription.unanswered += 1
            retry_at = now
            if subscription.unanswered > 1:
                retry_at = now + self._backoff.delay_for(subscription.unanswered - 1)
            subscription.retry_at = retry_at
            if retry_at > now:
                current = self._resubscribe_at
                self._resubscribe_at = retry_at if current is None else min(current, retry_at)

    def fail(self, request: Request, now: float, error: SfStreamError) -> Step:
        """The request got no usable response (network error, timeout, 5xx, bad body)."""
        step = Step()
        if request.kind is RequestKind.CONNECT:
            self._connect_outstanding = False
        if request.kind is RequestKind.DISCONNECT:
            if request.generation == self.generation:
                self._closed(step)
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

    def _closed(self, step: Step) -> None:
        """The disconnect is done (or lost): closed, or failed if that is why it was sent."""
        if self.failure is not None and self.phase is not Phase.FAILED:
            self.phase = Phase.FAILED
            step.notices.append(SessionFailed(self.failure))
        elif self.phase is not Phase.FAILED:
            self.phase = Phase.CLOSED

    def _deliver(
        self, events: Sequence[Event | MalformedEvent], step: Step
    ) -> list[tuple[Subscription, MalformedEvent]]:
        """Deliver the events in order; returns the first malformed event of each wanted
        channel (its later events in the response are held back)."""
        subscriptions = self.subscriptions
        counters = self.counters
        delivered = step.events
        failed = SubState.FAILED
        malformed = MalformedEvent
        rejected: list[tuple[Subscription, MalformedEvent]] = []
        poisoned: set[str] | None = None
        for event in events:
            subscription = subscriptions.get(event.channel)
            if subscription is None:
                subscription = subscriptions.get(event.channel.partition("?")[0])
                if subscription is None:
                    counters.unsolicited += 1
                    continue
            if subscription.state is failed:
                counters.unsolicited += 1
                continue
            if isinstance(event, malformed):
                counters.protocol_errors += 1
                if poisoned is None:
                    poisoned = set()
                if subscription.channel not in poisoned:
                    poisoned.add(subscription.channel)
                    rejected.append((subscription, event))
                continue
            if poisoned is not None and subscription.channel in poisoned:
                continue  # comes again after the resubscribe, in order
            replay_id = event.replay_id
            if replay_id is not None:
                last = subscription.last_replay_id
                if last is not None and replay_id <= last:
                    counters.duplicates += 1
                    continue
            if subscription.anchor_wall is not None:
                skip_before = subscription.skip_before
                if skip_before is not None:
                    moment = event_time_s(event.data)
                    # No time to compare: deliver (an extra event is better than a lost one).
                    if moment is not None and moment < skip_before:
                        counters.replay_skipped += 1
                        if replay_id is not None:
                            subscription.last_replay_id = replay_id
                        continue
                subscription.anchor_wall = None
                subscription.skip_before = None
            if replay_id is not None:
                subscription.last_replay_id = replay_id
            if subscription.protocol_failures:
                subscription.protocol_failures = 0
            counters.events += 1
            delivered.append(event)
        return rejected

    def _reject(
        self,
        rejected: list[tuple[Subscription, MalformedEvent]],
        now: float,
        step: Step,
        *,
        current: bool,
    ) -> bool:
        """Report malformed events; on the current connection, abandon it. True if it was.

        A stale response (from a connection already abandoned) only reports them: the
        current connection resubscribed from the last good replayId and brings those events
        again.
        """
        first: MalformedEventError | None = None
        for subscription, bad in rejected:
            channel = subscription.channel
            position = subscription.last_replay_id
            error = MalformedEventError(
                f"an event broke the protocol ({bad.problem}); resuming from the last good "
                "replayId",
                channel=channel,
                replay_id=position,
                value_type=bad.value_type,
            )
            first = first or error
            if not current:
                step.notices.append(EventRejected(channel, error, subscription.protocol_failures))
                continue
            if subscription.protocol_failures and subscription.protocol_failed_at == position:
                subscription.protocol_failures += 1
            else:
                subscription.protocol_failures = 1
            subscription.protocol_failed_at = position
            count = subscription.protocol_failures
            step.notices.append(EventRejected(channel, error, count))
            if count >= self._protocol_error_limit:
                where = "its start" if position is None else f"replayId {position}"
                self._lose(
                    subscription,
                    ProtocolError(
                        f"{count} malformed events in a row at {where} ({bad.problem}, a "
                        f"{bad.value_type}): giving up on the channel",
                        channel=channel,
                        replay_id=position,
                    ),
                    step,
                )
        if not current or first is None:
            return False
        if self.phase in (Phase.CLOSING, Phase.FAILED):
            return True  # the last subscription was just lost: the session is ending
        if self.phase not in (Phase.CONNECTED, Phase.HANDSHAKING):
            return False
        self._recover(first, now, step, farewell=True)
        return True

    def _lose(self, subscription: Subscription, error: SfStreamError, step: Step) -> None:
        """The subscription failed for good; if nothing is left, end the session."""
        step.notices.append(SubscriptionLost(subscription.channel, error))
        if subscription.awaited:
            # The caller is told and decides; a refused first subscribe is forgotten.
            if self.subscriptions.get(subscription.channel) is subscription:
                del self.subscriptions[subscription.channel]
            return
        subscription.state = SubState.FAILED
        subscriptions = self.subscriptions.values()
        if (
            self.phase in (Phase.CLOSING, Phase.CLOSED, Phase.FAILED)
            or not subscriptions
            or not all(s.state is SubState.FAILED for s in subscriptions)
        ):
            return
        # Polling on with nothing subscribed would hold one of the org's concurrent-client
        # slots and deliver nothing: disconnect and report it, after the losses themselves.
        self.failure = AllSubscriptionsLostError(
            "every subscription was refused or lost; nothing left to stream"
        )
        if self.phase is Phase.CONNECTED and self.client_id is not None:
            self.phase = Phase.CLOSING
            self._disconnect_due = True
        else:
            self.phase = Phase.FAILED
            step.notices.append(SessionFailed(self.failure))

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
            self._long_poll_done = False
            self._connect_outstanding = False
            self._next_connect_at = now
            self._resubscribe_at = None
            for subscription in self.subscriptions.values():
                if subscription.state is not SubState.FAILED:
                    subscription.state = SubState.PENDING
                    subscription.retry_at = 0.0
            step.notices.append(Handshaken(reply.client_id, reply.replay_supported))
            return
        reason = reply.failure_reason or reply.error or "403::Handshake denied"
        error = _classify(reason)
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
            if self._first_connect:
                # The handshake worked, nothing more: a connection that is lost before a
                # long poll completes keeps the failures it already had.
                self._first_connect = False
                self._backoff.reset(self._flaps)
            else:
                self._long_poll_done = True
                self._flaps = 0
                self._backoff.reset()
            interval = (self.advice.interval_ms or 0) / 1000
            self._next_connect_at = now + interval
            return
        self._recover(_reply_error(reply, "connect failed"), now, step)

    def _on_subscribe(self, reply: Reply, now: float, step: Step) -> None:
        channel = reply.subscription or ""
        subscription = self.subscriptions.get(channel)
        if subscription is not None:
            subscription.unanswered = 0
        if reply.successful:
            if subscription is not None and subscription.state is SubState.SENT:
                subscription.state = SubState.ACTIVE
                subscription.awaited = False
                sent = subscription.sent_replay
                if (
                    sent == LATEST
                    and subscription.anchor_wall is None
                    and subscription.last_replay_id is None
                ):
                    subscription.anchor_wall = subscription.sent_wall
                step.notices.append(
                    Subscribed(channel, sent if sent is not None else subscription.resume_from)
                )
            return
        replay = None
        if subscription is not None:
            replay = subscription.sent_replay
            if replay is None:
                replay = subscription.resume_from
        error = _reply_error(reply, "subscribe failed", channel=channel, replay_id=replay)
        if isinstance(error, InvalidReplayIdError) and subscription is not None:
            self._invalid_replay(subscription, error, step)
            return
        if isinstance(error, SubscriptionError):
            if subscription is not None:
                self._lose(subscription, error, step)
            else:
                step.notices.append(SubscriptionLost(channel, error))
            return
        if isinstance(error, AllocationExceededError):
            self._recover(error, now, step)
            return
        if error.retryable:
            if subscription is not None:
                subscription.state = SubState.PENDING
            self._recover(error, now, step)
            return
        if subscription is not None:
            self._lose(subscription, error, step)
        else:
            step.notices.append(SubscriptionLost(channel, error))

    def _invalid_replay(
        self, subscription: Subscription, error: InvalidReplayIdError, step: Step
    ) -> None:
        refused = error.replay_id if error.replay_id is not None else subscription.resume_from
        if subscription.policy is ReplayPolicy.FAIL or refused in (LATEST, EARLIEST):
            self._lose(subscription, error, step)
            return
        fallback = EARLIEST if subscription.policy is ReplayPolicy.EARLIEST else LATEST
        subscription.start = fallback
        subscription.last_replay_id = None  # the stream restarts: accept any id again
        subscription.anchor_wall = None
        subscription.skip_before = None
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
        self.failure = error
        step.notices.append(SessionFailed(error))

    def _recover(
        self, error: SfStreamError, now: float, step: Step, *, farewell: bool = False
    ) -> None:
        """Leave the current connection and plan how to get back, after a backoff.

        `farewell`: the server still holds this client (it answered, it did not forget us):
        send it a `/meta/disconnect` so it does not keep one of the org's concurrent-client
        slots until it expires.
        """
        if isinstance(error, AllocationExceededError) and self._allocation_probe_s is not None:
            self._await_allocation(error, now, step)
            return
        if not error.retryable:
            self._fail_session(error, step)
            return
        if farewell and self.phase is Phase.CONNECTED and self.client_id is not None:
            self._farewells.append((self.client_id, self.generation))
        if self.phase is Phase.CONNECTED and not self._long_poll_done:
            self._flaps += 1  # lost before a long poll completed: the next wait grows
        if error.recovery is Recovery.REAUTHENTICATE:
            self.phase = Phase.AUTHENTICATING
            self.generation += 1
            self.counters.reauthentications += 1
            self._connect_outstanding = False
            step.notices.append(Reauthenticate(error, self._backoff.next_delay()))
            return
        # A failed connect may have lost a response full of events, and an unknown
        # client has lost its subscriptions: in both cases (and whatever the advice says)
        # only a new handshake and a resubscribe from the last delivered replayId is safe.
        floor = CLIENT_LIMIT_FLOOR_S if isinstance(error, ClientLimitError) else 0.0
        delay = self._backoff.next_delay(floor_s=floor)
        self._handshake_again(error, delay, now, step)

    def _handshake_again(self, error: SfStreamError, delay: float, now: float, step: Step) -> None:
        """Leave the session: a new handshake (and resubscribe) after `delay`."""
        self.counters.reconnects += 1
        self.generation += 1
        self._connect_outstanding = False
        self.phase = Phase.WAITING
        self._retry_at = now + delay
        step.notices.append(Recovering(error, Recovery.REHANDSHAKE, delay))

    def _await_allocation(self, error: AllocationExceededError, now: float, step: Step) -> None:
        """The daily delivery allocation is spent: leave the connection and probe later.

        Only once per connection: the other refusals of the same response change nothing.
        """
        if self.phase not in (Phase.CONNECTED, Phase.HANDSHAKING):
            return
        assert self._allocation_probe_s is not None
        if self.phase is Phase.CONNECTED and self.client_id is not None:
            # The server still holds the client: free its concurrent-client slot for the wait.
            self._farewells.append((self.client_id, self.generation))
        probe_s = self._allocation_probe_s
        delay = probe_s + self._backoff.rng.uniform(0.0, probe_s / 10)
        self._handshake_again(error, delay, now, step)
