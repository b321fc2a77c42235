"""Fuzzing the Bayeux boundary: what a server (or a proxy, or a broken network) can send.

Server responses start as the valid Salesforce replies of the fact sheet
(docs/salesforce-protocol.md §2, §4, §5), answered to what the session actually asked, and
are then mutated: wrong types, missing and extra keys, bodies that are not lists, huge and
non-finite numbers, unicode, nested garbage, unknown channels, events where none belong.

- `parse` returns typed messages or raises `ProtocolError`, nothing else.
- A `Session` fed those responses (and transport failures, time, re-authentications,
  subscription changes and closes, in any order and in every phase) never raises; its
  notices carry classified `SfStreamError` values; the events it delivers belong to wanted
  channels and their replayIds never go backwards on a channel (except after a `Gap`, which
  restarts it); every subscribe resumes from the last delivered replayId; and what it asks
  to send is JSON.

The random decisions go through a `Chooser`, so the same driver runs under hypothesis (the
fuzz tests) and under `random.Random` (a check that the driver reaches every phase).
"""

from __future__ import annotations

import contextlib
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfstream.bayeux import (
    EARLIEST,
    LATEST,
    Event,
    EventRejected,
    Gap,
    Handshaken,
    MalformedEvent,
    MetaChannel,
    Phase,
    Reauthenticate,
    Recovering,
    ReplayPolicy,
    Reply,
    Request,
    RequestKind,
    Session,
    SessionFailed,
    Step,
    Subscribed,
    SubscriptionLost,
    SubState,
    Unsubscribed,
    decode,
    parse,
)
from sfstream.errors import (
    AuthenticationError,
    AuthExpiredError,
    ProtocolError,
    ServerBusyError,
    SfStreamError,
    TerminalError,
    TransportError,
    UnknownClientError,
)
from tests.fuzz.budget import fuzz_settings

T = TypeVar("T")

CHANNELS = (
    "/data/AccountChangeEvent",
    "/event/Low_Ink__e",
    "/topic/HighValueDeals",
    "/u/Notifications",
    "/data/ChangeEvents",
)
# Salesforce's error texts (fact sheet §4) and a few it never sends.
ERRORS = (
    "403::Unknown client",
    "402::Unknown client",
    "401::Authentication invalid",
    "401::Request requires authentication",
    "403::Handshake denied",
    "403::Organization total events daily limit exceeded",
    "403::Organization concurrent user limit exceeded",
    "400::The replayId {1553783} you provided was invalid.  Please provide a valid ID, -2 to "
    "replay all events, or -1 to replay only new events.",
    "400::The channel you requested to subscribe to does not exist {/event/Nope__e}",
    "400::Channel name not specified",
    "400::Invalid connection type {websocket}",
    "400::Client x has established a session, but no BAYEUX_BROWSER cookie present",
    "403::Restricted channel",
    "403::User not allowed to subscribe CDC without View All Data permissions",
    "403:denied_by_security_policy:create_denied",
    "503::Server is too busy. Please try your request again later.",
    "404::Unknown channel",
    "500::Internal error",
    "999::",
    "::",
    "",
    "no code at all",
    "\u00e9rr\u00f6r \U0001f4a5::\x00",
)
RECOVERABLE = ("403::Unknown client", "401::Authentication invalid", "503::Server is too busy")
FAILURES: tuple[Callable[[], SfStreamError], ...] = (
    lambda: TransportError("connection reset"),
    lambda: TransportError("connection reset"),
    lambda: TransportError("connection reset"),
    lambda: ServerBusyError("HTTP 503: Salesforce is too busy"),
    lambda: TransportError("no answer to /meta/connect within 17 s"),
    lambda: ServerBusyError("HTTP 503: Salesforce is too busy"),
    lambda: TerminalError("the CometD endpoint refused the request: HTTP 400"),
    lambda: UnknownClientError("403::Unknown client"),
    lambda: AuthExpiredError("401::Authentication invalid"),
    lambda: AuthenticationError("invalid_grant: expired access/refresh token"),
    lambda: ProtocolError("a Bayeux message without a channel"),
)
SCALARS: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    -2,
    2**63 - 1,
    2**64 - 1,
    10**30,
    -(10**30),
    1e308,
    -0.0,
    math.inf,
    -math.inf,
    math.nan,
    "",
    "0",
    "-2",
    "retry",
    "handshake",
    "none",
    "/meta/connect",
    "/meta/handshake",
    "/meta/subscribe",
    "/meta/",
    "/meta/foo",
    "\u0000",
    "\U0001f600 \u202e\ufeff",
    "x" * 2000,
)


KEYS = (
    "channel",
    "id",
    "clientId",
    "successful",
    "error",
    "advice",
    "ext",
    "subscription",
    "data",
    "event",
    "replayId",
    "payload",
    "interval",
    "timeout",
    "reconnect",
    "sfdc",
    "failureReason",
    "replay",
)


# -- random choices -------------------------------------------------------------------------


class Chooser(Protocol):
    def integer(self, low: int, high: int) -> int: ...

    def choice(self, options: Sequence[T]) -> T: ...

    def garbage(self) -> Any:
        """Any value a JSON decoder (a lenient one included) can produce."""
        ...

    def chance(self, percent: int) -> bool: ...


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(SCALARS),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.sampled_from(KEYS), children, max_size=4)
    ),
    max_leaves=10,
)


class HypothesisChooser:
    def __init__(self, data: st.DataObject) -> None:
        self._data = data

    def integer(self, low: int, high: int) -> int:
        return self._data.draw(st.integers(low, high))

    def choice(self, options: Sequence[T]) -> T:
        return self._data.draw(st.sampled_from(options))

    def garbage(self) -> Any:
        return self._data.draw(json_values)

    def chance(self, percent: int) -> bool:
        return self.integer(0, 99) < percent


class RandomChooser:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def choice(self, options: Sequence[T]) -> T:
        return self._rng.choice(options)

    def garbage(self, depth: int = 0) -> Any:
        roll = self._rng.random()
        if depth < 3 and roll < 0.15:
            return [self.garbage(depth + 1) for _ in range(self._rng.randint(0, 3))]
        if depth < 3 and roll < 0.3:
            return {
                self._rng.choice(KEYS): self.garbage(depth + 1)
                for _ in range(self._rng.randint(0, 3))
            }
        return self._rng.choice(SCALARS)

    def chance(self, percent: int) -> bool:
        return self._rng.random() * 100 < percent


# -- valid replies, then mutations ----------------------------------------------------------


@dataclass
class Server:
    """Answers each request with what Salesforce would send, choices drawn by a Chooser."""

    choose: Chooser
    clients: int = 0
    replay: dict[str, int] = field(default_factory=dict)

    def answer(self, request: Request, subscribed: Sequence[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for message in request.messages:
            out.extend(self._one(message, subscribed))
        return out

    def _one(self, message: dict[str, Any], subscribed: Sequence[str]) -> list[dict[str, Any]]:
        choose = self.choose
        channel = message["channel"]
        base: dict[str, Any] = {"channel": channel, "id": message["id"]}
        if channel == MetaChannel.HANDSHAKE:
            if choose.chance(80):
                self.clients += 1
                return [
                    {
                        **base,
                        "clientId": f"client{self.clients}",
                        "successful": True,
                        "version": "1.0",
                        "minimumVersion": "1.0",
                        "supportedConnectionTypes": ["long-polling"],
                        "ext": {"replay": choose.chance(90), "payload.format": True},
                    }
                ]
            reason = choose.choice(
                ("401::Authentication invalid", "403::Organization concurrent user limit exceeded")
            )
            denied = {**base, "successful": False, "error": "403::Handshake denied"}
            if choose.chance(70):
                denied["ext"] = {"sfdc": {"failureReason": reason}, "replay": True}
            denied["advice"] = {"reconnect": "none"}
            return [denied]
        client = {"clientId": message.get("clientId")}
        if channel == MetaChannel.CONNECT:
            events = [self.event(name) for name in subscribed for _ in range(choose.integer(0, 4))]
            if choose.chance(90):
                reply = {**base, **client, "successful": True}
                if choose.chance(50):
                    reply["advice"] = {
                        "interval": choose.choice((0, 0, 0, 2000)),
                        "timeout": choose.choice((110_000, 1_000, 5_000)),
                        "reconnect": "retry",
                    }
                return [*events, reply]
            error = choose.choice(RECOVERABLE if choose.chance(70) else ERRORS)
            advice = {"reconnect": choose.choice(("handshake", "none", "retry")), "interval": 0}
            return [
                *events,
                {**base, **client, "successful": False, "error": error, "advice": advice},
            ]
        if channel == MetaChannel.SUBSCRIBE:
            subscription = message["subscription"]
            if choose.chance(75):
                return [{**base, **client, "subscription": subscription, "successful": True}]
            error = choose.choice(ERRORS)
            if choose.chance(30):
                error = ERRORS[7]  # the replayId is invalid: the most involved recovery
            if error.startswith("400::The replayId") and choose.chance(70):
                sent = message["ext"]["replay"].get(subscription.partition("?")[0])
                error = f"400::The replayId {{{sent}}} you provided was invalid.  Please ..."
            return [
                {
                    **base,
                    **client,
                    "subscription": subscription,
                    "successful": False,
                    "error": error,
                }
            ]
        reply = {**base, **client, "successful": True}
        if "subscription" in message:
            reply["subscription"] = message["subscription"]
        return [reply]

    def event(self, channel: str) -> dict[str, Any]:
        """An event as Salesforce shapes it for the channel's kind (fact sheet §5)."""
        choose = self.choose
        last = self.replay.get(channel, 1_000)
        how = choose.integer(0, 9)
        replay = (
            last + choose.integer(1, 9)
            if how < 6
            else last
            if how < 8
            else max(1, last - choose.integer(1, 50))
        )
        self.replay[channel] = max(last, replay)
        event: dict[str, Any] = {"replayId": replay}
        data: dict[str, Any]
        if channel.startswith("/data/"):
            data = {
                "schema": "IeRuaY6cbI_HsV8Rv1Mc5g",
                "payload": {
                    "ChangeEventHeader": {
                        "entityName": "Account",
                        "recordIds": ["001000000000001AAA"],
                        "changeType": "CREATE",
                        "commitTimestamp": 1569443783000,
                    },
                    "Name": "Acme \u00e9",
                },
                "event": event,
            }
        elif channel.startswith("/event/"):
            event["EventUuid"] = "2ec0e371-1395-457f-9275-be1b527a72f7"
            data = {"schema": "dffQ2QLzDNHqwB8_sHMxdA", "payload": {"Ink__c": 0.2}, "event": event}
        elif channel.startswith("/topic/"):
            event.update(createdDate="2016-03-29T16:40:08.208Z", type="created")
            data = {"event": event, "sobject": {"Id": "006000000000001AAA", "Name": "Deal"}}
        else:
            event["createdDate"] = "2016-03-29T19:05:28.334Z"
            data = {"event": event, "payload": "This is a message."}
        return {"channel": channel, "data": data}


def mutate(choose: Chooser, value: Any, depth: int = 0) -> Any:
    """One random change somewhere inside `value`."""
    if isinstance(value, dict) and value and depth < 6 and choose.chance(60):
        key = choose.choice(sorted(value, key=repr))
        changed = dict(value)
        operation = choose.integer(0, 3)
        if operation == 0:
            del changed[key]
        elif operation == 1:
            changed[choose.choice((*KEYS, "\u00fcnknown", ""))] = choose.garbage()
        else:
            changed[key] = mutate(choose, value[key], depth + 1)
        return changed
    if isinstance(value, list) and value and depth < 6 and choose.chance(60):
        index = choose.integer(0, len(value) - 1)
        changed_list = list(value)
        operation = choose.integer(0, 4)
        if operation == 0:
            del changed_list[index]
        elif operation == 1:
            changed_list.insert(index, choose.garbage())
        elif operation == 2:
            changed_list.append(changed_list[index])  # a repeated message
        else:
            changed_list[index] = mutate(choose, value[index], depth + 1)
        return changed_list
    return choose.garbage()


def mutated_body(choose: Chooser, body: list[dict[str, Any]]) -> Any:
    """The body as sent, or with a few mutations, or replaced by something else entirely."""
    roll = choose.integer(0, 99)
    if roll < 70:
        return body
    if roll < 74:
        return choose.garbage()  # not a list at all (or a list of garbage)
    if roll < 76:
        return body[0] if body else {}  # one object instead of an array
    if roll < 77:
        return [body]  # nested one level too deep
    result: Any = body
    for _ in range(choose.integer(1, 3)):
        result = mutate(choose, result)
    return result


def checked_parse(body: Any) -> tuple[list[Reply], list[Event | MalformedEvent]]:
    """`parse`, asserting the shape of what it returns."""
    replies, events = parse(body)
    for reply in replies:
        assert isinstance(reply.channel, MetaChannel)
        assert isinstance(reply.successful, bool)
        assert reply.id is None or isinstance(reply.id, str)
        for text in (reply.client_id, reply.subscription, reply.error, reply.failure_reason):
            assert text is None or isinstance(text, str)
        if reply.advice is not None:
            assert reply.advice.reconnect in (None, "retry", "handshake", "none")
            for number in (reply.advice.interval_ms, reply.advice.timeout_ms):
                assert number is None or (isinstance(number, int) and number >= 0)
    for event in events:
        assert isinstance(event.channel, str)
        assert not event.channel.startswith("/meta/")
        if isinstance(event, MalformedEvent):
            assert isinstance(event.problem, str)
            assert isinstance(event.value_type, str)
            continue
        assert event.replay_id is None or (
            isinstance(event.replay_id, int) and not isinstance(event.replay_id, bool)
        )
        # A replayId that reaches an Event fits the checkpoint store (int64, not negative),
        # and only generic channels may lack one.
        assert event.replay_id is None or 0 <= event.replay_id <= 2**63 - 1
        assert event.replay_id is not None or not event.channel.startswith(
            ("/data/", "/event/", "/topic/")
        )
        assert isinstance(event.data, dict)
    return replies, events


# -- the session driver ---------------------------------------------------------------------


class Driver:
    """Feeds a session fuzzed input in any order and checks its invariants after each step."""

    def __init__(self, choose: Chooser, seed: int) -> None:
        self.choose = choose
        self.seed = seed
        self.server = Server(choose)
        self.now = 0.0
        self.phases: set[Phase] = set()
        self.notices: set[type] = set()
        self.sessions = 0
        self.session = self.new_session()

    def new_session(self) -> Session:
        """A new session (the client restarted), wanting a few channels."""
        self.sessions += 1
        self.session = Session(
            rng=random.Random(self.seed + self.sessions),
            backoff_base_s=0.1,
            backoff_cap_s=2.0,
            network_margin_s=1.0,
            request_timeout_s=5.0,
        )
        self.outstanding: list[Request] = []
        self.last: dict[str, int | None] = {}
        self.failed = False
        self.phases.add(self.session.phase)
        for channel in CHANNELS[: self.choose.integer(1, 4)]:
            self.want(channel)
        return self.session

    def want(self, channel: str) -> None:
        start = self.choose.choice((LATEST, EARLIEST, 0, 1_000, 1_005))
        policy = self.choose.choice(list(ReplayPolicy))
        self.session.subscribe(channel, start, policy, awaited=self.choose.chance(30))
        self.last[channel] = None

    def run(self, steps: int) -> None:
        for _ in range(steps):
            if self.session.finished and self.choose.chance(20):
                self.new_session()
            self.step()
            self.check()

    def step(self) -> None:
        choose, session = self.choose, self.session
        action = choose.choice(
            (
                "poll",
                "poll",
                "answer",
                "answer",
                "answer",
                "answer",
                "fail",
                "time",
                "time",
                "authenticated",
                "subscribe",
                "unsubscribe",
                "close",
            )
        )
        if action == "poll":
            self.poll(connect=choose.chance(85))
        elif action == "answer":
            self.answer()
        elif action == "fail":
            request = self.take()
            self.apply(session.fail(request, self.now, choose.choice(FAILURES)()))
        elif action == "time":
            deadline = session.next_deadline(self.now)
            if deadline is not None and choose.chance(50):
                self.now = max(self.now, deadline)
            else:
                self.now += choose.choice((0.0, 0.05, 1.0, 30.0, 200.0))
        elif action == "authenticated":
            session.authenticated(self.now)
        elif action == "subscribe":
            free = [
                c
                for c in CHANNELS
                if c not in session.subscriptions
                or session.subscriptions[c].state is SubState.FAILED
            ]
            if free:
                self.want(choose.choice(free))
        elif action == "unsubscribe":
            if session.subscriptions:
                channel = choose.choice(sorted(session.subscriptions))
                session.unsubscribe(channel)
                self.last.pop(channel, None)
        elif choose.chance(20):
            session.close()

    def poll(self, *, connect: bool) -> None:
        session = self.session
        # Wall-clock time, when given, anchors -1 streams (their events are from 2016-2019).
        wall = 1_700_000_000 + self.now if self.choose.chance(80) else None
        requests = session.poll(self.now, connect=connect, wall=wall)
        for request in requests:
            orjson.dumps(request.messages)  # what goes on the wire is JSON
            assert request.timeout_s > 0
            assert math.isfinite(request.timeout_s)
            if request.kind is RequestKind.SUBSCRIBE:
                for message in request.messages:
                    channel = message["subscription"]
                    (value,) = message["ext"]["replay"].values()
                    assert type(value) is int
                    subscription = session.subscriptions[channel]
                    assert value == subscription.resume_from
                    delivered = self.last.get(channel)
                    if delivered is not None:
                        assert value == delivered, "a resubscribe must resume from the last id"
        self.outstanding.extend(requests)

    def take(self) -> Request:
        """An outstanding request, or a made-up one (stale generation, any kind)."""
        if self.outstanding and self.choose.chance(90):
            return self.outstanding.pop(self.choose.integer(0, len(self.outstanding) - 1))
        # Any request the session may have sent earlier; a disconnect is only ever real.
        kind = self.choose.choice([k for k in RequestKind if k is not RequestKind.DISCONNECT])
        generation = self.session.generation + self.choose.integer(-2, 1)
        message: dict[str, Any] = {"channel": f"/meta/{kind.value}", "id": "0"}
        if kind is RequestKind.SUBSCRIBE:
            channel = self.choose.choice(CHANNELS)
            message.update(subscription=channel, ext={"replay": {channel: -1}})
            return Request(kind, [message], generation, 5.0, (channel,))
        return Request(kind, [message], generation, 5.0)

    def answer(self) -> None:
        request = self.take()
        subscribed = [
            c for c, s in self.session.subscriptions.items() if s.state is SubState.ACTIVE
        ]
        if self.choose.chance(10):
            subscribed.append(self.choose.choice(CHANNELS))  # an event nobody asked for
        body = self.server.answer(request, subscribed)
        try:
            replies, events = checked_parse(mutated_body(self.choose, body))
        except ProtocolError as exc:
            # What the client does with a body it cannot read (sfstream.client.streaming).
            self.apply(self.session.fail(request, self.now, TransportError(str(exc))))
            return
        self.apply(self.session.receive(request, self.now, replies, events))

    def apply(self, step: Step) -> None:
        session = self.session
        for event in step.events:
            channel = event.channel
            subscription = session.subscriptions.get(channel) or session.subscriptions.get(
                channel.partition("?")[0]
            )
            assert subscription is not None, f"an event on {channel}, which nobody wants"
            if event.replay_id is not None:
                last = self.last.get(subscription.channel)
                assert last is None or event.replay_id > last, (
                    f"{channel}: replayId {event.replay_id} delivered after {last}"
                )
                self.last[subscription.channel] = event.replay_id
        for notice in step.notices:
            self.notices.add(type(notice))
            assert isinstance(
                notice,
                Subscribed
                | Unsubscribed
                | Gap
                | SubscriptionLost
                | EventRejected
                | Reauthenticate
                | Recovering
                | SessionFailed
                | Handshaken,
            )
            if isinstance(
                notice, Gap | SubscriptionLost | EventRejected | Reauthenticate | Recovering
            ):
                assert isinstance(notice.error, SfStreamError)
            if isinstance(notice, Reauthenticate):
                assert math.isfinite(notice.delay_s)
                assert 0 <= notice.delay_s <= 2.0  # the cap of the driver's sessions
            if isinstance(notice, SessionFailed):
                assert isinstance(notice.error, SfStreamError)
                assert not notice.error.retryable
                self.failed = True
                assert session.failure is notice.error
            if isinstance(notice, Gap):
                assert notice.fallback in (LATEST, EARLIEST)
                self.last[notice.channel] = None  # the stream restarts from the fallback
            if isinstance(notice, Recovering):
                assert math.isfinite(notice.delay_s)
                assert notice.delay_s >= 0
                assert notice.delay_s <= 2.0  # never beyond the cap, whatever the error

    def check(self) -> None:
        session = self.session
        self.phases.add(session.phase)
        assert isinstance(session.phase, Phase)
        if self.failed:
            assert session.phase is Phase.FAILED, "a failed session stays failed"
        assert session.phase is not Phase.FAILED or self.failed, "failed without a notice"
        if session.phase is Phase.CONNECTED:
            assert session.client_id is not None
        deadline = session.next_deadline(self.now)
        assert deadline is None or math.isfinite(deadline)
        for channel, subscription in session.subscriptions.items():
            delivered = self.last.get(channel)
            if delivered is not None:
                assert subscription.last_replay_id == delivered
            assert subscription.resume_from >= EARLIEST
        assert all(count >= 0 for count in msgspec.structs.astuple(session.counters))


# -- the tests ------------------------------------------------------------------------------


@fuzz_settings(300)
@given(body=json_values)
def test_parse_of_any_json_value_returns_messages_or_raises_protocol_error(body: Any) -> None:
    with contextlib.suppress(ProtocolError):
        checked_parse(body)


@fuzz_settings(300)
@given(data=st.data(), kind=st.sampled_from(list(RequestKind)))
def test_parse_of_mutated_salesforce_replies_returns_messages_or_raises_protocol_error(
    data: st.DataObject, kind: RequestKind
) -> None:
    choose = HypothesisChooser(data)
    server = Server(choose)
    message: dict[str, Any] = {"channel": f"/meta/{kind.value}", "id": "7", "clientId": "c1"}
    if kind is RequestKind.SUBSCRIBE:
        message.update(subscription=CHANNELS[0], ext={"replay": {CHANNELS[0]: 1_000}})
    request = Request(kind, [message], 0, 5.0)
    body = mutated_body(choose, server.answer(request, list(CHANNELS)))
    with contextlib.suppress(ProtocolError):
        checked_parse(body)
    # What comes off the wire was JSON: the same holds after an orjson round trip.
    try:
        wire = orjson.loads(orjson.dumps(body))
    except (orjson.JSONEncodeError, TypeError):
        return
    with contextlib.suppress(ProtocolError):
        checked_parse(wire)


@fuzz_settings(100)
@given(data=st.data(), seed=st.integers(0, 2**16), steps=st.integers(1, 80))
def test_session_survives_any_server_behaviour_in_every_phase(
    data: st.DataObject, seed: int, steps: int
) -> None:
    driver = Driver(HypothesisChooser(data), seed)
    driver.run(steps)


def test_the_driver_reaches_every_phase_and_notice() -> None:
    """The fuzz driver is only as good as the states it reaches: check that it reaches all."""
    phases: set[Phase] = set()
    notices: set[type] = set()
    for seed in range(100):
        driver = Driver(RandomChooser(seed), seed)
        driver.run(150)
        phases |= driver.phases
        notices |= driver.notices
    assert phases == set(Phase)
    assert notices >= {
        Subscribed,
        Unsubscribed,
        Gap,
        SubscriptionLost,
        Reauthenticate,
        Recovering,
        SessionFailed,
        Handshaken,
    }


@pytest.mark.parametrize(
    "advice",
    [
        {"interval": math.inf, "timeout": 110_000},
        {"interval": 0, "timeout": -math.inf},
        {"interval": math.nan, "timeout": math.inf},
        {"interval": 1e308, "timeout": 10**30},
        {"interval": True, "timeout": "110000"},
    ],
)
def test_advice_with_non_finite_or_odd_numbers_is_ignored_or_kept_finite(
    advice: dict[str, Any],
) -> None:
    replies, _ = parse(
        [{"channel": "/meta/connect", "successful": True, "id": "1", "advice": advice}]
    )
    (reply,) = replies
    assert reply.advice is not None
    for value in (reply.advice.interval_ms, reply.advice.timeout_ms):
        assert value is None or (isinstance(value, int) and value >= 0)


# -- the bytes decoder ------------------------------------------------------------------------


def _same_result(raw: bytes) -> None:
    """`decode(raw)` agrees with `parse(orjson.loads(raw))`, or both refuse it alike."""
    try:
        expected = parse(orjson.loads(raw))
    except (orjson.JSONDecodeError, ProtocolError) as exc:
        with pytest.raises(type(exc)):
            decode(raw)
        return
    replies, events = decode(raw)
    assert replies == expected[0]
    assert len(events) == len(expected[1])
    for got, want in zip(events, expected[1], strict=True):
        assert type(got) is type(want)
        if isinstance(got, MalformedEvent):
            assert isinstance(want, MalformedEvent)
            # An integer past 64 bits reads as a float to orjson, as an int here: both refuse it.
            if {got.value_type, want.value_type} != {"int", "float"}:
                assert got == want
            assert got.channel == want.channel
            continue
        assert isinstance(want, Event)
        assert (got.channel, got.replay_id, got.data) == (want.channel, want.replay_id, want.data)
        assert got.schema_id == want.schema_id
        assert got.change_header() == want.change_header()
        for name in ("EventUuid", "createdDate", "type"):
            assert got.info(name) == want.info(name)
        # What a record of it would carry is valid JSON on one line, equal to the decoded one.
        payload = want.data.get("payload")
        for text, expected_payload in (
            (got.payload_json(), payload if isinstance(payload, dict) else {}),
            (got.payload_json(object_only=False), payload),
        ):
            line = bytes(text) if isinstance(text, msgspec.Raw) else orjson.dumps(text)
            assert b"\n" not in line
            assert orjson.loads(line) == expected_payload


def _byte_mutations(choose: Chooser, raw: bytes) -> bytes:
    """Damage the bytes as a network or a proxy might."""
    kind = choose.integer(0, 6)
    if kind == 0 or not raw:
        return raw
    at = choose.integer(0, len(raw) - 1)
    if kind == 1:
        return raw[:at]  # cut short
    if kind == 2:
        return raw[:at] + b"\xff\xfe" + raw[at:]  # invalid UTF-8
    if kind == 3:
        return raw.replace(b",", b",\n", 1)  # a line break between tokens
    if kind == 4:
        huge = [2**63, 2**63 - 1, 2**64 + 1, -1, 10**30, 0][choose.integer(0, 5)]
        return re.sub(rb'"replayId":-?[0-9]+', b'"replayId":%d' % huge, raw, count=1)
    if kind == 5:
        return raw.replace(b'"payload":', b'"payload":"text","p2":', 1)
    return raw[:at] + b"\x00" + raw[at:]


@fuzz_settings(300)
@given(data=st.data(), kind=st.sampled_from(list(RequestKind)))
def test_decode_of_mutated_replies_agrees_with_parse(
    data: st.DataObject, kind: RequestKind
) -> None:
    choose = HypothesisChooser(data)
    server = Server(choose)
    message: dict[str, Any] = {"channel": f"/meta/{kind.value}", "id": "7", "clientId": "c1"}
    if kind is RequestKind.SUBSCRIBE:
        message.update(subscription=CHANNELS[0], ext={"replay": {CHANNELS[0]: 1_000}})
    body = mutated_body(choose, server.answer(Request(kind, [message], 0, 5.0), list(CHANNELS)))
    try:
        raw = orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        return
    _same_result(raw)
    _same_result(_byte_mutations(choose, raw))


@fuzz_settings(300)
@given(body=json_values)
def test_decode_of_any_json_value_agrees_with_parse(body: Any) -> None:
    try:
        raw = orjson.dumps(body)
    except (orjson.JSONEncodeError, TypeError):
        return
    _same_result(raw)
    _same_result(orjson.dumps([{"channel": "/data/AccountChangeEvent", "data": body}]))
    _same_result(orjson.dumps([{"channel": "/u/Notes", "data": {"payload": body, "event": {}}}]))
