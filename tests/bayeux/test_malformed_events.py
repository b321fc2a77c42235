"""An event whose envelope breaks the protocol never reaches the consumer.

`parse` turns it into a `MalformedEvent` (never an `Event` with a made-up replayId); the
session drops it with everything after it on its channel in the same response, abandons the
connection and resubscribes from the last good replayId; the same failure again and again,
with no progress, ends that subscription with a `ProtocolError`.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from sfstream.bayeux import (
    LATEST,
    Event,
    EventRejected,
    MalformedEvent,
    Phase,
    Recovering,
    Request,
    RequestKind,
    Session,
    SubscriptionLost,
    SubState,
    parse,
)
from sfstream.errors import MalformedEventError, ProtocolError, TransportError
from tests.bayeux.test_session import (
    CHANNEL,
    event,
    feed,
    handshake,
    reply,
    subscribe_messages,
    take,
)

OTHER = "/event/Order_Placed__e"
MISSING = object()
BAD_VALUES = {
    "string": ("1234", "str"),
    "integral float": (1234.0, "float"),
    "huge float": (1e300, "float"),
    "minus one": (-1, "int"),
    "minus two": (-2, "int"),
    "two to the 63": (2**63, "int"),
    "bool": (True, "bool"),
    "null": (None, "null"),
    "object": ({"id": 5}, "dict"),
    "missing": (MISSING, "missing"),
}


def raw_event(channel: str, replay_id: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"EventUuid": "u"}
    if replay_id is not MISSING:
        info["replayId"] = replay_id
    return {"channel": channel, "data": {"schema": "s", "payload": {"x": 1}, "event": info}}


def bad(channel: str = CHANNEL) -> dict[str, Any]:
    return raw_event(channel, "not a number")


@pytest.mark.parametrize(("value", "kind"), BAD_VALUES.values(), ids=list(BAD_VALUES))
@pytest.mark.parametrize("channel", [CHANNEL, OTHER, "/topic/Deals", "/topic/Deals?Stage=Won"])
def test_a_replay_channel_event_with_a_bad_replay_id_is_malformed(
    channel: str, value: Any, kind: str
) -> None:
    _, events = parse([raw_event(channel, value)])
    (malformed,) = events
    assert isinstance(malformed, MalformedEvent)
    assert (malformed.channel, malformed.value_type) == (channel, kind)
    assert "replayId" in malformed.problem
    assert "not a number" not in repr(malformed)


@pytest.mark.parametrize("value", [0, 1, 37904280, 2**63 - 1])
def test_replay_ids_in_the_int64_range_are_events(value: int) -> None:
    _, events = parse([raw_event(CHANNEL, value)])
    (parsed,) = events
    assert isinstance(parsed, Event)
    assert parsed.replay_id == value
    assert type(parsed.replay_id) is int


def test_a_generic_event_may_lack_a_replay_id_but_not_carry_a_bad_one() -> None:
    """Generic streaming events carry `event.replayId` when durable (API 37.0+, fact sheet
    §5); a non-durable generic stream has none, which stays accepted."""
    _, events = parse(
        [
            {"channel": "/u/Notifications", "data": {"payload": "no event object"}},
            {"channel": "/u/Notifications", "data": {"event": {"createdDate": "d"}}},
            {"channel": "/u/Notifications", "data": "just a string"},
            raw_event("/u/Notifications", None),
            raw_event("/u/Notifications", "7"),
            raw_event("/u/Notifications", 2**63),
        ]
    )
    assert [type(e) for e in events] == [Event, Event, Event, Event, MalformedEvent, MalformedEvent]
    assert [e.replay_id for e in events if isinstance(e, Event)] == [None, None, None, None]


def test_an_event_object_that_is_not_an_object_is_malformed() -> None:
    for channel in (CHANNEL, "/u/Notifications"):
        message = {"channel": channel, "data": {"event": "replayId=5", "payload": {}}}
        (malformed,) = parse([message])[1]
        assert isinstance(malformed, MalformedEvent)
        assert malformed.problem == "data.event is a str"
    (malformed,) = parse([{"channel": CHANNEL, "data": {"payload": {}}}])[1]
    assert isinstance(malformed, MalformedEvent)
    assert malformed.value_type == "missing"


def session(limit: int = 5) -> Session:
    return Session(
        rng=random.Random(1), backoff_base_s=1.0, backoff_cap_s=8.0, protocol_error_limit=limit
    )


class Harness:
    def __init__(self, channels: dict[str, int], limit: int = 5) -> None:
        self.s = session(limit)
        for channel, replay in channels.items():
            self.s.subscribe(channel, replay)
        self.now = 0.0
        self.clients = 0

    def connect(self) -> tuple[dict[str, Any], Request]:
        """Handshake and subscribe; returns what was subscribed and the first connect."""
        deadline = self.s.next_deadline(self.now)
        self.now = max(self.now, deadline if deadline is not None else self.now)
        self.clients += 1
        sent = handshake(self.s, self.now, client_id=f"c{self.clients}")
        values = subscribe_messages(sent)
        for subscribe in (r for r in sent if r.kind is RequestKind.SUBSCRIBE):
            messages = []
            for message in subscribe.messages:
                messages += reply(Request(subscribe.kind, [message], subscribe.generation, 1.0))
            feed(self.s, subscribe, self.now, messages)
        return values, take(sent, RequestKind.CONNECT)


def test_a_malformed_event_is_dropped_with_what_follows_it_on_its_channel() -> None:
    h = Harness({CHANNEL: LATEST, OTHER: LATEST})
    _, connect = h.connect()
    step = feed(
        h.s,
        connect,
        0.0,
        [
            event(CHANNEL, 10),
            bad(),
            event(CHANNEL, 12),  # after the bad one: held back, it comes again in order
            event(OTHER, 5),  # another channel: unaffected
            *reply(connect, advice={"interval": 0}),
        ],
    )
    assert [(e.channel, e.replay_id) for e in step.events] == [(CHANNEL, 10), (OTHER, 5)]
    rejected, recovering = step.notices
    assert isinstance(rejected, EventRejected)
    assert rejected.channel == CHANNEL
    assert rejected.consecutive == 1
    assert isinstance(rejected.error, MalformedEventError)
    assert rejected.error.value_type == "str"
    assert rejected.error.replay_id == 10, "the last good replayId"
    assert isinstance(recovering, Recovering)
    assert recovering.error is rejected.error
    assert h.s.phase is Phase.WAITING, "the connection is abandoned"
    assert h.s.counters.protocol_errors == 1
    # The abandoned client is still alive on the server: it is told goodbye.
    (farewell,) = h.s.poll(h.now)
    assert farewell.kind is RequestKind.DISCONNECT
    assert farewell.messages[0]["clientId"] == "c1"
    assert h.s.receive(farewell, h.now, [], []).notices == []
    assert h.s.phase is Phase.WAITING, "a goodbye to an old connection closes nothing"
    values, _ = h.connect()
    assert values == {CHANNEL: {CHANNEL: 10}, OTHER: {OTHER: 5}}


def test_a_malformed_event_first_in_a_stream_resumes_from_its_start() -> None:
    h = Harness({CHANNEL: 4000})
    _, connect = h.connect()
    feed(h.s, connect, 0.0, [bad(), event(CHANNEL, 4005), *reply(connect)])
    values, _ = h.connect()
    assert values == {CHANNEL: {CHANNEL: 4000}}


def test_the_same_malformed_event_every_time_loses_that_subscription_only() -> None:
    h = Harness({CHANNEL: LATEST, OTHER: LATEST}, limit=3)
    _, connect = h.connect()
    feed(h.s, connect, h.now, [event(CHANNEL, 10), *reply(connect)])
    connect = take(h.s.poll(h.now), RequestKind.CONNECT)
    feed(h.s, connect, h.now, reply(connect, successful=False, error="403::Unknown client"))
    notices: list[Any] = []
    for attempt in range(3):
        values, connect = h.connect()
        assert values[CHANNEL] == {CHANNEL: 10}
        step = feed(h.s, connect, h.now, [bad(), event(CHANNEL, 12), *reply(connect)])
        notices = step.notices
        assert [n.consecutive for n in notices if isinstance(n, EventRejected)] == [attempt + 1]
    lost = [n for n in notices if isinstance(n, SubscriptionLost)]
    assert [n.channel for n in lost] == [CHANNEL]
    assert isinstance(lost[0].error, ProtocolError)
    assert lost[0].error.replay_id == 10
    assert "3 malformed events in a row" in str(lost[0].error)
    assert h.s.subscriptions[CHANNEL].state is SubState.FAILED
    # The session still goes back (dropping the server-side subscription) for the others.
    assert isinstance(notices[-1], Recovering)
    values, connect = h.connect()
    assert values == {OTHER: {OTHER: LATEST}}
    step = feed(h.s, connect, h.now, [bad(), event(OTHER, 3), *reply(connect)])
    assert [e.replay_id for e in step.events] == [3], "the lost channel's events are ignored"


def test_progress_between_malformed_events_starts_the_count_again() -> None:
    h = Harness({CHANNEL: LATEST}, limit=2)
    _, connect = h.connect()
    feed(h.s, connect, h.now, [event(CHANNEL, 10), bad(), *reply(connect)])
    _, connect = h.connect()
    step = feed(h.s, connect, h.now, [event(CHANNEL, 11), bad(), *reply(connect)])
    (rejected,) = [n for n in step.notices if isinstance(n, EventRejected)]
    assert rejected.consecutive == 1
    assert not any(isinstance(n, SubscriptionLost) for n in step.notices)


def test_a_malformed_event_in_a_stale_response_is_reported_not_acted_upon() -> None:
    h = Harness({CHANNEL: LATEST})
    _, old = h.connect()
    h.s.fail(old, h.now, TransportError("reset"))
    h.connect()
    step = feed(h.s, old, h.now, [event(CHANNEL, 3), bad(), event(CHANNEL, 5)])
    assert [e.replay_id for e in step.events] == [3]
    assert [type(n) for n in step.notices] == [EventRejected]
    assert h.s.phase is Phase.CONNECTED
    assert h.s.counters.protocol_errors == 1


def test_malformed_events_on_channels_nobody_wants_are_ignored() -> None:
    h = Harness({CHANNEL: LATEST})
    _, connect = h.connect()
    step = feed(h.s, connect, h.now, [bad("/event/Other__e"), event(CHANNEL, 1), *reply(connect)])
    assert [e.replay_id for e in step.events] == [1]
    assert step.notices == []
    assert h.s.phase is Phase.CONNECTED
    assert h.s.counters.unsolicited == 1
