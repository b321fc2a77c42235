"""A session whose every subscription was refused or lost disconnects and fails; one that
has nothing subscribed by choice (not yet, or unsubscribed) goes on."""

from __future__ import annotations

import random

from sfstream.bayeux import (
    EARLIEST,
    LATEST,
    Phase,
    RequestKind,
    Session,
    SessionFailed,
    SubscriptionLost,
)
from sfstream.errors import (
    AllSubscriptionsLostError,
    ChannelNotFoundError,
    InvalidReplayIdError,
    TransportError,
)
from tests.bayeux.test_session import CHANNEL, INVALID, feed, handshake, reply, take

NOPE = "400::The channel you requested to subscribe to does not exist {/event/Nope__e}"
OTHER = "/event/Nope__e"


def session() -> Session:
    return Session(rng=random.Random(1), backoff_base_s=1.0, backoff_cap_s=8.0)


def refuse_all(s: Session) -> list[object]:
    """Handshake, then refuse every subscription; returns the notices."""
    sent = handshake(s)
    (subscribe,) = [r for r in sent if r.kind is RequestKind.SUBSCRIBE]
    messages = [
        {
            "channel": "/meta/subscribe",
            "clientId": "c1",
            "id": m["id"],
            "subscription": m["subscription"],
            "successful": False,
            "error": NOPE,
        }
        for m in subscribe.messages
    ]
    return list(feed(s, subscribe, 0.0, messages).notices)


def test_when_every_subscription_is_refused_the_session_disconnects_then_fails() -> None:
    s = session()
    s.subscribe(CHANNEL, LATEST)
    s.subscribe(OTHER, EARLIEST)
    notices = refuse_all(s)
    assert [type(n) for n in notices] == [SubscriptionLost, SubscriptionLost]
    assert s.phase is Phase.CLOSING
    (disconnect,) = s.poll(0.0)
    assert disconnect.kind is RequestKind.DISCONNECT
    assert disconnect.messages[0]["clientId"] == "c1"
    assert s.poll(0.0) == [], "no more connects with nothing subscribed"
    step = s.receive(disconnect, 0.0, [], [])
    (failed,) = step.notices
    assert isinstance(failed, SessionFailed)
    assert isinstance(failed.error, AllSubscriptionsLostError)
    assert str(failed.error) == "every subscription was refused or lost; nothing left to stream"
    assert s.phase is Phase.FAILED
    assert s.failure is failed.error


def test_a_lost_disconnect_still_ends_the_session_with_the_error() -> None:
    s = session()
    s.subscribe(CHANNEL, LATEST)
    refuse_all(s)
    (disconnect,) = s.poll(0.0)
    (failed,) = s.fail(disconnect, 0.0, TransportError("no answer")).notices
    assert isinstance(failed, SessionFailed)
    assert isinstance(failed.error, AllSubscriptionsLostError)


def test_one_refusal_among_several_subscriptions_goes_on() -> None:
    s = session()
    s.subscribe(CHANNEL, LATEST)
    sent = handshake(s)
    s.subscribe(OTHER, LATEST)
    (subscribe,) = [r for r in s.poll(0.0) if r.kind is RequestKind.SUBSCRIBE]
    feed(s, subscribe, 0.0, reply(subscribe, successful=False, error=NOPE))
    assert s.phase is Phase.CONNECTED
    connect = take(sent, RequestKind.CONNECT)
    feed(s, connect, 0.0, reply(connect))
    assert take(s.poll(0.0), RequestKind.CONNECT)


def test_a_refusal_told_to_a_waiting_caller_is_forgotten_and_the_session_goes_on() -> None:
    """The caller of `subscribe` hears of the refusal and decides; it may subscribe to
    other channels next."""
    s = session()
    s.subscribe(OTHER, LATEST, awaited=True)
    sent = handshake(s)
    subscribe = take(sent, RequestKind.SUBSCRIBE)
    (lost,) = feed(s, subscribe, 0.0, reply(subscribe, successful=False, error=NOPE)).notices
    assert isinstance(lost, SubscriptionLost)
    assert isinstance(lost.error, ChannelNotFoundError)
    assert OTHER not in s.subscriptions
    assert s.phase is Phase.CONNECTED
    s.subscribe(CHANNEL, LATEST, awaited=True)
    assert take(s.poll(0.0), RequestKind.SUBSCRIBE)


def test_an_acknowledged_subscription_lost_later_counts_even_if_it_was_awaited() -> None:
    s = session()
    s.subscribe(CHANNEL, 4242, awaited=True)
    sent = handshake(s)
    subscribe = take(sent, RequestKind.SUBSCRIBE)
    feed(s, subscribe, 0.0, reply(subscribe))
    connect = take(sent, RequestKind.CONNECT)
    feed(s, connect, 0.0, reply(connect, successful=False, error="403::Unknown client"))
    deadline = s.next_deadline(0.0)
    assert deadline is not None
    subscribe = take(handshake(s, deadline, "c2"), RequestKind.SUBSCRIBE)
    # The retained events expired meanwhile: the stored id is refused (policy fail).
    step = feed(
        s, subscribe, deadline, reply(subscribe, successful=False, error=INVALID.format(n=4242))
    )
    (lost,) = step.notices
    assert isinstance(lost, SubscriptionLost)
    assert isinstance(lost.error, InvalidReplayIdError)
    assert s.phase is Phase.CLOSING
    assert take(s.poll(deadline), RequestKind.DISCONNECT).messages[0]["clientId"] == "c2"


def test_a_session_with_nothing_subscribed_yet_keeps_polling() -> None:
    s = session()
    connect = take(handshake(s), RequestKind.CONNECT)
    for now in (1.0, 2.0, 3.0):
        feed(s, connect, now, reply(connect))
        connect = take(s.poll(now), RequestKind.CONNECT)
    assert s.phase is Phase.CONNECTED


def test_unsubscribing_everything_is_not_losing_everything() -> None:
    s = session()
    s.subscribe(CHANNEL, LATEST)
    s.subscribe(OTHER, LATEST)
    sent = handshake(s)
    subscribe = take(sent, RequestKind.SUBSCRIBE)
    messages = []
    for message in subscribe.messages:
        ok = message["subscription"] == CHANNEL
        messages.append(
            {
                "channel": "/meta/subscribe",
                "id": message["id"],
                "subscription": message["subscription"],
                "successful": ok,
                **({} if ok else {"error": NOPE}),
            }
        )
    feed(s, subscribe, 0.0, messages)
    s.unsubscribe(CHANNEL)  # the one left: by choice, so the session goes on
    assert [r.kind for r in s.poll(0.0)] == [RequestKind.UNSUBSCRIBE]
    assert s.phase is Phase.CONNECTED


def test_losing_the_last_subscription_while_not_connected_fails_at_once() -> None:
    s = session()
    s.subscribe(CHANNEL, LATEST)
    sent = handshake(s)
    subscribe = take(sent, RequestKind.SUBSCRIBE)
    connect = take(sent, RequestKind.CONNECT)
    # One response: the connect says the client is unknown, then the subscribe is refused.
    messages = [
        *reply(connect, successful=False, error="403::Unknown client"),
        *reply(subscribe, successful=False, error=NOPE),
    ]
    step = feed(s, connect, 0.0, messages)
    assert isinstance(step.notices[-1], SessionFailed)
    assert isinstance(step.notices[-1].error, AllSubscriptionsLostError)
    assert s.phase is Phase.FAILED
    assert s.poll(100.0) == []
