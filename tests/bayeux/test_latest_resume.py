"""A stream subscribed at -1 keeps what was published after its subscribe, across a
re-handshake that comes before its first event (the session resumes it at -2 and drops
the replayed events older than its first subscribe, by the events' own time)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfstream.bayeux import (
    EARLIEST,
    LATEST,
    Gap,
    Phase,
    ReplayPolicy,
    Request,
    RequestKind,
    Session,
)
from sfstream.errors import TransportError
from tests.bayeux.test_session import CHANNEL, INVALID, feed, reply, take

WALL = 1_700_000_000.0
"""Wall-clock time (epoch seconds) when the first subscribe goes out."""
SKEW = 30.0


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def change_event(replay_id: int | None, at: float) -> dict[str, Any]:
    header = {"entityName": "Account", "changeType": "CREATE", "commitTimestamp": int(at * 1000)}
    event = {} if replay_id is None else {"replayId": replay_id}
    return {
        "channel": CHANNEL,
        "data": {"schema": "s", "payload": {"ChangeEventHeader": header}, "event": event},
    }


def platform_event(replay_id: int | None, at: float) -> dict[str, Any]:
    return {
        "channel": "/event/Order_Placed__e",
        "data": {
            "schema": "s",
            "payload": {"CreatedDate": iso(at), "Order_Number__c": "1"},
            "event": {"replayId": replay_id, "EventUuid": "u"},
        },
    }


def push_topic_event(replay_id: int | None, at: float) -> dict[str, Any]:
    return {
        "channel": "/topic/HighValueDeals",
        "data": {
            "event": {"createdDate": iso(at), "replayId": replay_id, "type": "created"},
            "sobject": {"Id": "006"},
        },
    }


def generic_event(replay_id: int | None, at: float) -> dict[str, Any]:
    event: dict[str, Any] = {"createdDate": iso(at)}
    if replay_id is not None:
        event["replayId"] = replay_id
    return {"channel": "/u/Notifications", "data": {"event": event, "payload": "hello"}}


KINDS = {
    "change_event": change_event,
    "platform_event": platform_event,
    "push_topic": push_topic_event,
    "generic": generic_event,
}


class Driver:
    """A session, its clocks, and the server's side of a few exchanges."""

    def __init__(self, channel: str, skew: float = SKEW) -> None:
        self.session = Session(
            rng=random.Random(1), backoff_base_s=1.0, backoff_cap_s=8.0, latest_clock_skew_s=skew
        )
        self.channel = channel
        self.now = 0.0
        self.clients = 0

    def connect(self, wall: float | None = WALL) -> tuple[int, Request]:
        """Handshake and subscribe; returns the replay value subscribed with, and the
        outstanding connect."""
        s = self.session
        self.clients += 1
        deadline = s.next_deadline(self.now)
        self.now = max(self.now, deadline or self.now)
        request = take(s.poll(self.now, wall=wall), RequestKind.HANDSHAKE)
        feed(s, request, self.now, reply(request, clientId=f"c{self.clients}"))
        assert s.phase is Phase.CONNECTED
        sent = s.poll(self.now, wall=wall)
        subscribe = take(sent, RequestKind.SUBSCRIBE)
        (value,) = subscribe.messages[0]["ext"]["replay"].values()
        feed(self.session, subscribe, self.now, reply(subscribe))
        return value, take(sent, RequestKind.CONNECT)

    def forgotten(self, connect: Request) -> None:
        """The server forgets the client (403::Unknown client on the connect)."""
        fields = {"successful": False, "error": "403::Unknown client"}
        feed(self.session, connect, self.now, reply(connect, **fields))

    def events(self, connect: Request, messages: list[dict[str, Any]]) -> list[int | None]:
        step = feed(self.session, connect, self.now, [*messages, *reply(connect)])
        return [e.replay_id for e in step.events]


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_latest_stream_resumes_at_minus_two_and_drops_what_predates_its_subscribe(
    kind: str,
) -> None:
    make = KINDS[kind]
    channel = make(1, WALL)["channel"]
    d = Driver(channel)
    d.session.subscribe(channel, LATEST)
    value, connect = d.connect()
    assert value == LATEST
    d.forgotten(connect)  # before anything arrived
    value, connect = d.connect(wall=WALL + 300)
    assert value == EARLIEST
    delivered = d.events(
        connect,
        [
            make(101, WALL - 7200),  # retained from long before: dropped
            make(102, WALL - SKEW - 1),  # before the subscribe, beyond the allowance
            make(103, WALL - SKEW + 1),  # within the allowance: delivered (err on delivering)
            make(104, WALL + 1),  # published while the client was away
            make(105, WALL + 200),
        ],
    )
    assert delivered == [103, 104, 105]
    assert d.session.counters.replay_skipped == 2
    # From its first event on, the stream resumes by replayId.
    connect = take(d.session.poll(d.now), RequestKind.CONNECT)
    d.forgotten(connect)
    value, _ = d.connect(wall=WALL + 600)
    assert value == 105


def test_events_older_than_the_subscribe_arriving_after_a_newer_one_are_delivered() -> None:
    """The filter stops at the first delivered event: replay order is what counts after it
    (commit timestamps are not strictly ordered), so nothing later is held back."""
    d = Driver(CHANNEL)
    d.session.subscribe(CHANNEL, LATEST)
    _, connect = d.connect()
    d.forgotten(connect)
    _, connect = d.connect()
    assert d.events(connect, [change_event(7, WALL + 5), change_event(8, WALL - 600)]) == [7, 8]


def test_skipped_events_move_the_resume_point_and_keep_the_filter() -> None:
    d = Driver(CHANNEL)
    d.session.subscribe(CHANNEL, LATEST)
    _, connect = d.connect()
    d.forgotten(connect)
    _, connect = d.connect()
    assert d.events(connect, [change_event(10, WALL - 900), change_event(20, WALL - 800)]) == []
    connect = take(d.session.poll(d.now), RequestKind.CONNECT)
    d.forgotten(connect)
    value, connect = d.connect()
    assert value == 20, "the skipped events are not transferred again"
    assert d.events(connect, [change_event(25, WALL - 700), change_event(30, WALL + 1)]) == [30]
    assert d.session.counters.replay_skipped == 3


def test_an_event_without_a_time_is_delivered_rather_than_dropped() -> None:
    d = Driver(CHANNEL)
    d.session.subscribe(CHANNEL, LATEST)
    _, connect = d.connect()
    d.forgotten(connect)
    _, connect = d.connect()
    timeless = {"channel": CHANNEL, "data": {"payload": {}, "event": {"replayId": 50}}}
    assert d.events(connect, [timeless, change_event(51, WALL - 900)]) == [50, 51]


def test_without_a_wall_clock_a_latest_stream_resumes_at_minus_one() -> None:
    d = Driver(CHANNEL)
    d.session.subscribe(CHANNEL, LATEST)
    _, connect = d.connect(wall=None)
    d.forgotten(connect)
    value, _ = d.connect(wall=None)
    assert value == LATEST


def test_the_anchor_is_the_first_acknowledged_subscribe() -> None:
    """A -1 subscribe whose answer never came promises nothing yet: the one that is
    acknowledged later sets the moment the stream starts from."""
    d = Driver(CHANNEL)
    s = d.session
    s.subscribe(CHANNEL, LATEST)
    request = take(s.poll(0.0, wall=WALL), RequestKind.HANDSHAKE)
    feed(s, request, 0.0, reply(request, clientId="c1"))
    sent = s.poll(0.0, wall=WALL)
    s.fail(take(sent, RequestKind.SUBSCRIBE), 0.0, TransportError("reset"))
    d.clients = 1
    d.now = s.next_deadline(0.0) or 0.0
    value, connect = d.connect(wall=WALL + 100)
    assert value == LATEST
    d.forgotten(connect)
    value, connect = d.connect(wall=WALL + 200)
    assert value == EARLIEST
    assert d.events(connect, [change_event(1, WALL + 50), change_event(2, WALL + 150)]) == [2]


def test_streams_that_start_elsewhere_resume_as_before() -> None:
    for start in (EARLIEST, 4242):
        d = Driver(CHANNEL)
        d.session.subscribe(CHANNEL, start)
        _, connect = d.connect()
        d.forgotten(connect)
        value, connect = d.connect()
        assert value == start
        assert d.events(connect, [change_event(5000, WALL - 9000)]) == [5000]


def test_a_gap_to_latest_starts_the_stream_again_from_its_new_subscribe() -> None:
    d = Driver(CHANNEL)
    s = d.session
    s.subscribe(CHANNEL, 1553783, ReplayPolicy.LATEST)
    request = take(s.poll(0.0, wall=WALL), RequestKind.HANDSHAKE)
    feed(s, request, 0.0, reply(request, clientId="c1"))
    sent = s.poll(0.0, wall=WALL)
    subscribe = take(sent, RequestKind.SUBSCRIBE)
    refusal = {"successful": False, "error": INVALID.format(n=1553783)}
    assert isinstance(feed(s, subscribe, 0.0, reply(subscribe, **refusal)).notices[0], Gap)
    subscribe = take(s.poll(0.0, wall=WALL + 10), RequestKind.SUBSCRIBE)
    assert subscribe.messages[0]["ext"]["replay"] == {CHANNEL: LATEST}
    feed(s, subscribe, 0.0, reply(subscribe))
    connect = take(sent, RequestKind.CONNECT)
    d.clients = 1
    d.forgotten(connect)
    value, connect = d.connect()
    assert value == EARLIEST
    # The stream now starts at the fallback's subscribe (WALL + 10), not at the first one.
    assert d.events(connect, [change_event(9, WALL - 60), change_event(10, WALL + 11)]) == [10]


def test_a_generic_stream_without_replay_ids_is_not_replayed_once_it_has_delivered() -> None:
    d = Driver("/u/Notifications")
    d.session.subscribe("/u/Notifications", LATEST)
    _, connect = d.connect()
    assert d.events(connect, [generic_event(None, WALL + 1)]) == [None]
    connect = take(d.session.poll(d.now), RequestKind.CONNECT)
    d.forgotten(connect)
    value, _ = d.connect(wall=WALL + 60)
    # Without replay ids a -2 replay could not tell what was delivered: -1, as before.
    assert value == LATEST


@settings(max_examples=200, deadline=None)
@given(
    offsets=st.lists(st.floats(-7200, 7200, allow_nan=False), max_size=30).map(sorted),
    skew=st.sampled_from([0.0, 5.0, 30.0, 120.0]),
)
def test_what_is_delivered_is_exactly_what_follows_the_subscribe_allowing_for_the_skew(
    offsets: list[float], skew: float
) -> None:
    d = Driver(CHANNEL, skew=skew)
    d.session.subscribe(CHANNEL, LATEST)
    _, connect = d.connect()
    d.forgotten(connect)
    _, connect = d.connect(wall=WALL + 7300)
    events = [change_event(100 + i, WALL + offset) for i, offset in enumerate(offsets)]
    delivered = d.events(connect, events)
    # Change events carry whole milliseconds.
    threshold = WALL - skew
    kept = [
        100 + i
        for i, offset in enumerate(offsets)
        if int((WALL + offset) * 1000) / 1000 >= threshold
    ]
    assert delivered == kept
    assert d.session.counters.replay_skipped == len(offsets) - len(kept)
