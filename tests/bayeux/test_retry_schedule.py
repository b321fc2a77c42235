"""Every retry the session asks for waits on one schedule: exponential, jittered, capped.

Each failure kind below is repeated in a loop, the way a server stuck in that state would
repeat it, and the waits the session chooses are collected. With the jitter source pinned to
the top of its range (`TopOfRange`) the waits equal their ceilings, which must double up to
the cap; with a real random source they must stay within [0, cap] and differ.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfstream.bayeux import (
    LATEST,
    Reauthenticate,
    Recovering,
    RequestKind,
    Session,
    Step,
)
from sfstream.bayeux.backoff import Backoff, ceiling_s
from sfstream.errors import ServerBusyError, TransportError
from tests.bayeux.test_session import CHANNEL, feed, handshake, reply, take

BASE = 1.0
CAP = 32.0
DOS = (
    "403::To protect all customers from excessive use and Denial of Service attacks, we limit "
    "the number of simultaneous connections per server. Your request was denied because this "
    "limit was exceeded. Try again later."
)
BUSY = "503::Server is too busy. Please try your request again later."


class TopOfRange(random.Random):
    """Jitter that always picks the top of its range: each wait equals its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def wait_of(step: Step) -> float:
    """The wait of the one retry notice in `step`."""
    waits = [n.delay_s for n in step.notices if isinstance(n, Recovering | Reauthenticate)]
    assert len(waits) == 1, step.notices
    return waits[0]


class Loop:
    """A session and a clock; each `cycle` reproduces one failure and returns its wait."""

    def __init__(self, rng: random.Random) -> None:
        # The limit on malformed events in a row is not what these loops look at.
        self.session = Session(
            rng=rng, backoff_base_s=BASE, backoff_cap_s=CAP, protocol_error_limit=1000
        )
        self.session.subscribe(CHANNEL, LATEST)
        self.now = 0.0
        self.clients = 0

    def wait(self, delay: float) -> None:
        self.now += delay
        deadline = self.session.next_deadline(self.now)
        if deadline is not None:
            self.now = max(self.now, deadline)

    def connected(self) -> Any:
        """Handshake, acknowledge the subscribe; returns the first connect."""
        self.clients += 1
        sent = handshake(self.session, self.now, client_id=f"c{self.clients}")
        subscribe = take(sent, RequestKind.SUBSCRIBE)
        feed(self.session, subscribe, self.now, reply(subscribe))
        return take(sent, RequestKind.CONNECT)

    def long_poll(self) -> Any:
        """Connected, past the first connect: returns the first long poll."""
        connect = self.connected()
        feed(self.session, connect, self.now, reply(connect, advice={"interval": 0}))
        return take(self.session.poll(self.now), RequestKind.CONNECT)

    def denied(self, reason: str) -> Step:
        request = take(self.session.poll(self.now), RequestKind.HANDSHAKE)
        denial = {
            "successful": False,
            "error": "403::Handshake denied",
            "ext": {"sfdc": {"failureReason": reason}},
            "advice": {"reconnect": "none"},
        }
        return feed(self.session, request, self.now, reply(request, **denial))


def handshake_transport(loop: Loop) -> float:
    request = take(loop.session.poll(loop.now), RequestKind.HANDSHAKE)
    return wait_of(loop.session.fail(request, loop.now, TransportError("connection refused")))


def handshake_server_busy(loop: Loop) -> float:
    return wait_of(loop.denied(BUSY))


def handshake_denial_of_service_limit(loop: Loop) -> float:
    return wait_of(loop.denied(DOS))


def handshake_concurrent_client_limit(loop: Loop) -> float:
    return wait_of(loop.denied("403::Organization concurrent user limit exceeded"))


def connect_http_503(loop: Loop) -> float:
    connect = loop.connected()
    return wait_of(loop.session.fail(connect, loop.now, ServerBusyError("HTTP 503")))


def connect_http_429(loop: Loop) -> float:
    connect = loop.connected()
    return wait_of(loop.session.fail(connect, loop.now, TransportError("HTTP 429")))


def connect_busy_next_to_another_error(loop: Loop) -> float:
    connect = loop.connected()
    # The other error alone would be terminal (a 4xx); the 503 next to it is not.
    fields = {
        "successful": False,
        "error": "400::Bad request",
        "ext": {"sfdc": {"failureReason": BUSY}},
    }
    return wait_of(feed(loop.session, connect, loop.now, reply(connect, **fields)))


def unknown_client_after_the_first_connect(loop: Loop) -> float:
    poll = loop.long_poll()
    fields = {
        "successful": False,
        "error": "403::Unknown client",
        "advice": {"reconnect": "none", "interval": 0},
    }
    return wait_of(feed(loop.session, poll, loop.now, reply(poll, **fields)))


def connect_answered_without_a_reply(loop: Loop) -> float:
    connect = loop.connected()
    return wait_of(feed(loop.session, connect, loop.now, []))


def token_revoked_after_the_first_connect(loop: Loop) -> float:
    poll = loop.long_poll()
    fields = {
        "successful": False,
        "error": "401::Authentication invalid",
        "advice": {"reconnect": "none", "interval": 0},
    }
    delay = wait_of(feed(loop.session, poll, loop.now, reply(poll, **fields)))
    loop.session.authenticated(loop.now + delay)
    return delay


def token_refresh_failing(loop: Loop) -> float:
    if loop.clients == 0:  # the token is revoked: the session waits for a new one
        connect = loop.connected()
        fields = {"successful": False, "error": "401::Authentication invalid"}
        feed(loop.session, connect, loop.now, reply(connect, **fields))
    notice = loop.session.authentication_failed(loop.now, TransportError("token endpoint 503"))
    return notice.delay_s


def malformed_event_every_time(loop: Loop) -> float:
    connect = loop.connected()
    bad = {"channel": CHANNEL, "data": {"event": {"replayId": "12"}, "payload": {}}}
    return wait_of(feed(loop.session, connect, loop.now, [bad, *reply(connect)]))


FAILURES: dict[str, Callable[[Loop], float]] = {
    f.__name__: f
    for f in (
        handshake_transport,
        handshake_server_busy,
        handshake_denial_of_service_limit,
        handshake_concurrent_client_limit,
        connect_http_503,
        connect_http_429,
        connect_busy_next_to_another_error,
        unknown_client_after_the_first_connect,
        connect_answered_without_a_reply,
        token_revoked_after_the_first_connect,
        token_refresh_failing,
        malformed_event_every_time,
    )
}


def waits(kind: str, rng: random.Random, cycles: int) -> list[float]:
    loop = Loop(rng)
    chosen = []
    for _ in range(cycles):
        delay = FAILURES[kind](loop)
        chosen.append(delay)
        loop.wait(delay)
    return chosen


@pytest.mark.parametrize("kind", list(FAILURES))
def test_consecutive_failures_wait_twice_as_long_up_to_the_cap(kind: str) -> None:
    ceilings = waits(kind, TopOfRange(), 7)
    if kind == "handshake_concurrent_client_limit":
        # At least 5 s (a slot frees up only when another client leaves), still growing.
        assert ceilings == [10.0, 10.0, 10.0, 10.0, 16.0, 32.0, 32.0]
    elif kind == "token_refresh_failing":
        # The revoked token that started it was the first failure of the series.
        assert ceilings == [2.0, 4.0, 8.0, 16.0, 32.0, 32.0, 32.0]
    else:
        assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 32.0]


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(list(FAILURES)), seed=st.integers(0, 2**32), cycles=st.integers(3, 9))
def test_waits_never_exceed_the_cap_and_never_keep_a_fixed_pace(
    kind: str, seed: int, cycles: int
) -> None:
    chosen = waits(kind, random.Random(seed), cycles)
    assert all(0.0 <= wait <= CAP for wait in chosen)
    assert len(set(chosen)) == len(chosen), f"jittered waits do not repeat: {chosen}"
    floor = 5.0 if kind == "handshake_concurrent_client_limit" else 0.0
    assert all(wait >= floor for wait in chosen)


@pytest.mark.parametrize("kind", list(FAILURES))
def test_waits_grow_in_expectation(kind: str) -> None:
    runs = [waits(kind, random.Random(seed), 6) for seed in range(200)]
    means = [statistics.fmean(run[i] for run in runs) for i in range(6)]
    assert means[5] > means[3] > means[0], means
    assert means[5] > 2 * means[0], means
    assert means[5] <= CAP


def test_a_completed_long_poll_resets_the_schedule() -> None:
    loop = Loop(TopOfRange())
    chosen = [unknown_client_after_the_first_connect(loop) for _ in range(1)]
    for _ in range(3):
        loop.wait(chosen[-1])
        chosen.append(unknown_client_after_the_first_connect(loop))
    assert chosen == [1.0, 2.0, 4.0, 8.0]
    loop.wait(chosen[-1])
    poll = loop.long_poll()
    feed(loop.session, poll, loop.now, reply(poll))  # a long poll completes: success
    poll = take(loop.session.poll(loop.now), RequestKind.CONNECT)
    fields = {"successful": False, "error": "403::Unknown client"}
    assert wait_of(feed(loop.session, poll, loop.now, reply(poll, **fields))) == BASE


def test_the_first_connect_alone_does_not_reset_the_schedule() -> None:
    """A server that accepts the handshake and the first connect, then forgets the client at
    the next one, must see the client come back ever more slowly."""
    chosen = waits("unknown_client_after_the_first_connect", TopOfRange(), 5)
    assert chosen == sorted(chosen)
    assert chosen[-1] == 16.0


def test_unanswered_subscribes_are_sent_again_ever_more_slowly() -> None:
    s = Session(rng=TopOfRange(), backoff_base_s=BASE, backoff_cap_s=CAP)
    s.subscribe(CHANNEL, 5)
    now = 0.0
    request = take(handshake(s, now), RequestKind.SUBSCRIBE)
    gaps = []
    for _ in range(6):
        feed(s, request, now, [])  # answered, but not about this subscription
        sent_at = now
        while True:
            resent = [r for r in s.poll(now) if r.kind is RequestKind.SUBSCRIBE]
            if resent:
                (request,) = resent
                break
            deadline = s.next_deadline(now, connect=False)
            assert deadline is not None
            assert deadline > now
            now = deadline
        gaps.append(now - sent_at)
    assert gaps == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]
    feed(s, request, now, reply(request))
    assert s.subscriptions[CHANNEL].unanswered == 0


def test_a_token_revoked_again_after_each_refresh_backs_off() -> None:
    chosen = waits("token_revoked_after_the_first_connect", TopOfRange(), 4)
    assert chosen == [1.0, 2.0, 4.0, 8.0]


@given(
    base=st.floats(0.01, 10.0),
    factor=st.floats(1.0, 100.0),
    seed=st.integers(0, 2**32),
    failures=st.integers(1, 80),
    floor=st.sampled_from([0.0, 5.0]),
)
def test_the_policy_stays_within_its_ceiling_and_the_cap(
    base: float, factor: float, seed: int, failures: int, floor: float
) -> None:
    cap = base * factor
    backoff = Backoff(base, cap, random.Random(seed))
    previous = 0.0
    for attempt in range(1, failures + 1):
        ceiling = ceiling_s(base, cap, attempt, floor)
        assert previous <= ceiling <= cap
        previous = ceiling
        delay = backoff.next_delay(floor_s=floor)
        assert 0.0 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= base


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_a_schedule_that_cannot_grow_is_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Session(backoff_base_s=base, backoff_cap_s=cap)
