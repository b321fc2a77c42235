"""The Bayeux session, fed server replies directly, in virtual time."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sfstream.bayeux import (
    EARLIEST,
    LATEST,
    Event,
    Gap,
    Phase,
    Reauthenticate,
    Recovering,
    ReplayPolicy,
    Request,
    RequestKind,
    Session,
    SessionFailed,
    Step,
    Subscribed,
    SubscriptionLost,
    SubState,
    parse,
)
from sfstream.errors import (
    AllocationExceededError,
    AuthenticationError,
    ChannelNotFoundError,
    InvalidReplayIdError,
    PermissionDeniedError,
    TransportError,
)

CHANNEL = "/data/AccountChangeEvent"
INVALID = (
    "400::The replayId {{{n}}} you provided was invalid.  Please provide a valid ID, -2 to "
    "replay all events, or -1 to replay only new events."
)


def session() -> Session:
    return Session(rng=random.Random(1), backoff_base_s=1.0, backoff_cap_s=8.0)


def reply(request: Request, **fields: Any) -> list[dict[str, Any]]:
    message = request.messages[0]
    base = {"channel": message["channel"], "id": message["id"], "successful": True}
    if "clientId" in message:
        base["clientId"] = message["clientId"]
    if "subscription" in message:
        base["subscription"] = message["subscription"]
    base.update(fields)
    return [base]


def feed(s: Session, request: Request, now: float, messages: list[dict[str, Any]]) -> Step:
    replies, events = parse(messages)
    return s.receive(request, now, replies, events)


def event(channel: str, replay_id: int, **payload: Any) -> dict[str, Any]:
    return {
        "channel": channel,
        "data": {"payload": payload, "event": {"replayId": replay_id}, "schema": "s"},
    }


def take(requests: list[Request], kind: RequestKind) -> Request:
    found = [r for r in requests if r.kind is kind]
    assert len(found) == 1, requests
    return found[0]


def handshake(s: Session, now: float = 0.0, client_id: str = "c1") -> list[Request]:
    """Complete a handshake; returns what the session sends right after it."""
    request = take(s.poll(now), RequestKind.HANDSHAKE)
    step = feed(
        s,
        request,
        now,
        reply(
            request,
            clientId=client_id,
            version="1.0",
            supportedConnectionTypes=["long-polling"],
            ext={"replay": True, "payload.format": True},
        ),
    )
    assert s.phase is Phase.CONNECTED, step
    return s.poll(now)


def connected(channels: dict[str, int] | None = None) -> tuple[Session, Request]:
    """A session subscribed to `channels`; returns it and its outstanding connect."""
    s = session()
    for channel, replay in (channels or {CHANNEL: LATEST}).items():
        s.subscribe(channel, replay)
    sent = handshake(s)
    connect = take(sent, RequestKind.CONNECT)
    for subscribe in (r for r in sent if r.kind is RequestKind.SUBSCRIBE):
        messages = []
        for message in subscribe.messages:
            messages += reply(Request(subscribe.kind, [message], subscribe.generation, 1.0))
        feed(s, subscribe, 0.0, messages)
    return s, connect


def subscribe_messages(requests: list[Request]) -> dict[str, Any]:
    """channel -> the replay value each subscribe message carried."""
    found = {}
    for request in requests:
        if request.kind is RequestKind.SUBSCRIBE:
            for message in request.messages:
                found[message["subscription"]] = message["ext"]["replay"]
    return found


class TestHandshake:
    def test_first_poll_sends_a_handshake_advertising_replay(self) -> None:
        s = session()
        (request,) = s.poll(0.0)
        assert request.kind is RequestKind.HANDSHAKE
        message = request.messages[0]
        assert message["channel"] == "/meta/handshake"
        assert message["supportedConnectionTypes"] == ["long-polling"]
        assert message["ext"] == {"replay": True}
        assert message["version"] == "1.0"

    def test_nothing_more_until_the_handshake_answers(self) -> None:
        s = session()
        s.poll(0.0)
        assert s.poll(1.0) == []
        assert s.next_deadline(1.0) is None

    def test_success_sends_connect_and_every_subscription(self) -> None:
        s = session()
        s.subscribe(CHANNEL, EARLIEST)
        s.subscribe("/event/Order_Placed__e", LATEST)
        sent = handshake(s)
        connect = take(sent, RequestKind.CONNECT)
        assert connect.messages[0] == {
            "channel": "/meta/connect",
            "clientId": "c1",
            "connectionType": "long-polling",
            "id": connect.messages[0]["id"],
        }
        assert subscribe_messages(sent) == {
            CHANNEL: {CHANNEL: -2},
            "/event/Order_Placed__e": {"/event/Order_Placed__e": -1},
        }
        assert s.replay_supported

    def test_denied_for_auth_asks_to_reauthenticate_once_then_fails(self) -> None:
        s = session()
        denial = {
            "successful": False,
            "error": "403::Handshake denied",
            "ext": {"sfdc": {"failureReason": "401::Authentication invalid"}},
            "advice": {"reconnect": "none"},
        }
        request = take(s.poll(0.0), RequestKind.HANDSHAKE)
        step = feed(s, request, 0.0, reply(request, **denial))
        assert [type(n) for n in step.notices] == [Reauthenticate]
        assert s.phase is Phase.AUTHENTICATING
        assert s.poll(0.0) == []
        s.authenticated(0.0)
        request = take(s.poll(0.0), RequestKind.HANDSHAKE)
        step = feed(s, request, 0.0, reply(request, **denial))
        (failed,) = step.notices
        assert isinstance(failed, SessionFailed)
        assert isinstance(failed.error, AuthenticationError)
        assert s.phase is Phase.FAILED

    def test_denied_without_reason_counts_as_auth(self) -> None:
        s = session()
        request = take(s.poll(0.0), RequestKind.HANDSHAKE)
        step = feed(
            s, request, 0.0, reply(request, successful=False, error="403::Handshake denied")
        )
        assert isinstance(step.notices[0], Reauthenticate)

    def test_concurrent_client_limit_backs_off_then_retries(self) -> None:
        s = session()
        request = take(s.poll(0.0), RequestKind.HANDSHAKE)
        step = feed(
            s,
            request,
            0.0,
            reply(
                request,
                successful=False,
                error="403::Handshake denied",
                ext={"sfdc": {"failureReason": "403::Organization concurrent user limit exceeded"}},
            ),
        )
        (notice,) = step.notices
        assert isinstance(notice, Recovering)
        assert notice.delay_s >= 5.0
        assert s.poll(1.0) == []
        assert take(s.poll(notice.delay_s), RequestKind.HANDSHAKE)

    def test_transport_failure_retries_after_backoff(self) -> None:
        s = session()
        request = take(s.poll(0.0), RequestKind.HANDSHAKE)
        step = s.fail(request, 0.0, TransportError("boom"))
        (notice,) = step.notices
        assert isinstance(notice, Recovering)
        deadline = s.next_deadline(0.0)
        assert deadline is not None
        assert 0.0 <= deadline <= 1.0
        assert take(s.poll(deadline), RequestKind.HANDSHAKE)


class TestConnect:
    def test_first_connect_uses_the_short_timeout_later_ones_the_advised_poll(self) -> None:
        s, connect = connected()
        assert connect.timeout_s == 30.0
        feed(
            s,
            connect,
            0.0,
            reply(connect, advice={"interval": 0, "timeout": 110000, "reconnect": "retry"}),
        )
        second = take(s.poll(0.0), RequestKind.CONNECT)
        assert second.timeout_s == pytest.approx(125.0)

    def test_next_connect_goes_out_at_once_and_only_one_at_a_time(self) -> None:
        s, connect = connected()
        assert all(r.kind is not RequestKind.CONNECT for r in s.poll(0.0))
        feed(s, connect, 5.0, reply(connect))
        assert take(s.poll(5.0), RequestKind.CONNECT)

    def test_advice_interval_delays_the_next_connect(self) -> None:
        s, connect = connected()
        feed(s, connect, 10.0, reply(connect, advice={"interval": 2000}))
        assert s.poll(11.0) == []
        assert s.next_deadline(11.0) == pytest.approx(12.0)
        assert take(s.poll(12.0), RequestKind.CONNECT)

    def test_connect_can_be_held_for_a_slow_consumer(self) -> None:
        s, connect = connected()
        feed(s, connect, 0.0, reply(connect))
        assert s.poll(0.0, connect=False) == []
        assert s.next_deadline(0.0, connect=False) is None
        assert s.wants_connect()
        assert take(s.poll(1.0), RequestKind.CONNECT)

    def test_events_arrive_in_order_and_advance_the_replay_position(self) -> None:
        s, connect = connected()
        step = feed(s, connect, 0.0, [event(CHANNEL, 15), event(CHANNEL, 22), *reply(connect)])
        assert [e.replay_id for e in step.events] == [15, 22]
        assert s.subscriptions[CHANNEL].last_replay_id == 22

    def test_duplicates_and_older_events_are_dropped(self) -> None:
        s, connect = connected()
        feed(s, connect, 0.0, [event(CHANNEL, 15), *reply(connect)])
        connect = take(s.poll(0.0), RequestKind.CONNECT)
        step = feed(
            s,
            connect,
            0.0,
            [event(CHANNEL, 15), event(CHANNEL, 9), event(CHANNEL, 30), *reply(connect)],
        )
        assert [e.replay_id for e in step.events] == [30]
        assert s.counters.duplicates == 2

    def test_events_for_unwanted_channels_are_not_delivered(self) -> None:
        s, connect = connected()
        step = feed(s, connect, 0.0, [event("/event/Other__e", 3), *reply(connect)])
        assert step.events == []
        assert s.counters.unsolicited == 1

    @pytest.mark.parametrize(
        "advice",
        [{"reconnect": "handshake", "interval": 0}, {"reconnect": "none", "interval": 0}, None],
    )
    def test_unknown_client_rehandshakes_whatever_the_advice(self, advice: Any) -> None:
        s, connect = connected({CHANNEL: EARLIEST})
        feed(s, connect, 0.0, [event(CHANNEL, 40), *reply(connect)])
        connect = take(s.poll(0.0), RequestKind.CONNECT)
        fields: dict[str, Any] = {"successful": False, "error": "403::Unknown client"}
        if advice is not None:
            fields["advice"] = advice
        step = feed(s, connect, 1.0, reply(connect, **fields))
        (notice,) = step.notices
        assert isinstance(notice, Recovering)
        deadline = s.next_deadline(1.0)
        assert deadline is not None
        sent = handshake(s, deadline, client_id="c2")
        # Resubscribed from the last delivered replayId, not from -2.
        assert subscribe_messages(sent) == {CHANNEL: {CHANNEL: 40}}
        assert s.counters.rehandshakes == 1

    def test_401_asks_for_reauthentication_then_handshakes(self) -> None:
        s, connect = connected()
        step = feed(
            s,
            connect,
            0.0,
            reply(
                connect,
                successful=False,
                error="401::Authentication invalid",
                advice={"reconnect": "none", "interval": 0},
            ),
        )
        assert isinstance(step.notices[0], Reauthenticate)
        assert s.poll(0.0) == []
        s.authenticated(0.0)
        assert take(s.poll(0.0), RequestKind.HANDSHAKE)

    def test_transport_failure_on_connect_rehandshakes_and_resubscribes(self) -> None:
        s, connect = connected()
        feed(s, connect, 0.0, [event(CHANNEL, 7), *reply(connect)])
        connect = take(s.poll(0.0), RequestKind.CONNECT)
        s.fail(connect, 3.0, TransportError("connection reset"))
        assert s.phase is Phase.WAITING
        deadline = s.next_deadline(3.0)
        assert deadline is not None
        sent = handshake(s, deadline, client_id="c2")
        assert subscribe_messages(sent) == {CHANNEL: {CHANNEL: 7}}

    def test_daily_limit_fails_the_session(self) -> None:
        s, connect = connected()
        step = feed(
            s,
            connect,
            0.0,
            reply(
                connect,
                successful=False,
                error="403::Organization total events daily limit exceeded",
            ),
        )
        (notice,) = step.notices
        assert isinstance(notice, SessionFailed)
        assert isinstance(notice.error, AllocationExceededError)
        assert s.poll(0.0) == []

    def test_replies_to_an_old_connection_are_ignored_but_events_kept(self) -> None:
        s, connect = connected()
        s.fail(take([connect], RequestKind.CONNECT), 0.0, TransportError("x"))
        deadline = s.next_deadline(0.0)
        assert deadline is not None
        handshake(s, deadline, client_id="c2")
        step = feed(
            s,
            connect,
            deadline,
            [event(CHANNEL, 50), *reply(connect, successful=False, error="403::Unknown client")],
        )
        assert [e.replay_id for e in step.events] == [50]
        assert step.notices == []
        assert s.phase is Phase.CONNECTED

    def test_backoff_grows_and_resets_after_a_successful_connect(self) -> None:
        s = Session(rng=random.Random(3), backoff_base_s=1.0, backoff_cap_s=8.0)
        ceilings = []
        now = 0.0
        for _ in range(6):
            request = take(s.poll(now), RequestKind.HANDSHAKE)
            notice = s.fail(request, now, TransportError("down")).notices[0]
            assert isinstance(notice, Recovering)
            ceilings.append(notice.delay_s)
            now += notice.delay_s
        assert all(0 <= d <= c for d, c in zip(ceilings, [1, 2, 4, 8, 8, 8], strict=True))
        connect = take(handshake(s, now), RequestKind.CONNECT)
        feed(s, connect, now, reply(connect))
        connect = take(s.poll(now), RequestKind.CONNECT)
        notice = s.fail(connect, now, TransportError("again")).notices[0]
        assert isinstance(notice, Recovering)
        assert notice.delay_s <= 1.0


class TestSubscribe:
    def test_replay_ids_go_out_as_integers_keyed_by_the_bare_channel(self) -> None:
        s = session()
        s.subscribe("/topic/Deals?StageName=Won", 12345)
        sent = handshake(s)
        ((message,),) = [r.messages for r in sent if r.kind is RequestKind.SUBSCRIBE]
        assert message["subscription"] == "/topic/Deals?StageName=Won"
        assert message["ext"] == {"replay": {"/topic/Deals": 12345}}
        assert type(message["ext"]["replay"]["/topic/Deals"]) is int

    def test_success_is_reported(self) -> None:
        s = session()
        s.subscribe(CHANNEL, 99)
        sent = handshake(s)
        request = take(sent, RequestKind.SUBSCRIBE)
        step = feed(s, request, 0.0, reply(request))
        assert step.notices == [Subscribed(CHANNEL, 99)]
        assert s.subscriptions[CHANNEL].state is SubState.ACTIVE

    @pytest.mark.parametrize(
        ("policy", "fallback"), [(ReplayPolicy.EARLIEST, EARLIEST), (ReplayPolicy.LATEST, LATEST)]
    )
    def test_invalid_replay_falls_back_by_policy_and_reports_a_gap(
        self, policy: ReplayPolicy, fallback: int
    ) -> None:
        s = session()
        s.subscribe(CHANNEL, 1553783, policy)
        request = take(handshake(s), RequestKind.SUBSCRIBE)
        step = feed(
            s, request, 0.0, reply(request, successful=False, error=INVALID.format(n=1553783))
        )
        (gap,) = step.notices
        assert isinstance(gap, Gap)
        assert (gap.channel, gap.replay_id, gap.fallback) == (CHANNEL, 1553783, fallback)
        assert subscribe_messages(s.poll(0.0)) == {CHANNEL: {CHANNEL: fallback}}

    def test_invalid_replay_with_fail_policy_loses_only_that_subscription(self) -> None:
        s = session()
        s.subscribe(CHANNEL, 1553783)
        s.subscribe("/event/Order_Placed__e", LATEST)
        sent = handshake(s)
        requests = [r for r in sent if r.kind is RequestKind.SUBSCRIBE]
        (request,) = requests
        messages = [
            {
                "channel": "/meta/subscribe",
                "clientId": "c1",
                "id": m["id"],
                "subscription": m["subscription"],
                "successful": m["subscription"] != CHANNEL,
                **({"error": INVALID.format(n=1553783)} if m["subscription"] == CHANNEL else {}),
            }
            for m in request.messages
        ]
        step = feed(s, request, 0.0, messages)
        lost = [n for n in step.notices if isinstance(n, SubscriptionLost)]
        assert len(lost) == 1
        assert isinstance(lost[0].error, InvalidReplayIdError)
        assert lost[0].error.channel == CHANNEL
        assert lost[0].error.replay_id == 1553783
        assert s.subscriptions["/event/Order_Placed__e"].state is SubState.ACTIVE
        assert s.phase is Phase.CONNECTED
        # A failed subscription is not sent again after a re-handshake.
        connect = take(sent, RequestKind.CONNECT)
        feed(s, connect, 0.0, reply(connect, successful=False, error="403::Unknown client"))
        deadline = s.next_deadline(0.0)
        assert deadline is not None
        assert set(subscribe_messages(handshake(s, deadline, "c2"))) == {"/event/Order_Placed__e"}

    def test_invalid_replay_on_minus_two_is_not_retried(self) -> None:
        s = session()
        s.subscribe(CHANNEL, EARLIEST, ReplayPolicy.EARLIEST)
        request = take(handshake(s), RequestKind.SUBSCRIBE)
        step = feed(s, request, 0.0, reply(request, successful=False, error=INVALID.format(n=-2)))
        assert isinstance(step.notices[0], SubscriptionLost)

    @pytest.mark.parametrize(
        ("error", "kind"),
        [
            (
                "400::The channel you requested to subscribe to does not exist {/event/X__e}",
                ChannelNotFoundError,
            ),
            ("403::Restricted channel", PermissionDeniedError),
            (
                "403::User not allowed to subscribe CDC without View All Data permissions",
                PermissionDeniedError,
            ),
        ],
    )
    def test_refusals_are_terminal_for_the_subscription(self, error: str, kind: type) -> None:
        s = session()
        s.subscribe(CHANNEL, LATEST)
        request = take(handshake(s), RequestKind.SUBSCRIBE)
        step = feed(s, request, 0.0, reply(request, successful=False, error=error))
        (lost,) = step.notices
        assert isinstance(lost, SubscriptionLost)
        assert isinstance(lost.error, kind)
        assert lost.error.server_text == error

    def test_unknown_client_on_subscribe_rehandshakes(self) -> None:
        s = session()
        s.subscribe(CHANNEL, 5)
        request = take(handshake(s), RequestKind.SUBSCRIBE)
        step = feed(s, request, 0.0, reply(request, successful=False, error="403::Unknown client"))
        assert isinstance(step.notices[0], Recovering)

    def test_unanswered_subscribe_is_sent_again(self) -> None:
        s = session()
        s.subscribe(CHANNEL, 5)
        request = take(handshake(s), RequestKind.SUBSCRIBE)
        feed(s, request, 0.0, [])
        assert subscribe_messages(s.poll(0.0)) == {CHANNEL: {CHANNEL: 5}}

    def test_subscribing_while_connected_sends_at_once(self) -> None:
        s, _ = connected()
        s.subscribe("/event/Low_Ink__e", 77)
        assert subscribe_messages(s.poll(0.0)) == {"/event/Low_Ink__e": {"/event/Low_Ink__e": 77}}

    def test_many_subscriptions_are_split_under_the_request_size_limit(self) -> None:
        s = session()
        channels = [f"/event/Event_Number_{i:04d}_With_A_Long_Name__e" for i in range(400)]
        for channel in channels:
            s.subscribe(channel, LATEST)
        sent = [r for r in handshake(s) if r.kind is RequestKind.SUBSCRIBE]
        assert len(sent) > 1
        import orjson

        assert all(len(orjson.dumps(r.messages)) < 32768 for r in sent)
        assert sorted(subscribe_messages(sent)) == sorted(channels)

    def test_unsubscribe_sends_once_and_is_not_resubscribed(self) -> None:
        s, connect = connected({CHANNEL: LATEST, "/event/Low_Ink__e": LATEST})
        s.unsubscribe(CHANNEL)
        (request,) = [r for r in s.poll(0.0) if r.kind is RequestKind.UNSUBSCRIBE]
        assert request.messages[0]["subscription"] == CHANNEL
        assert s.poll(0.0) == []
        feed(s, connect, 0.0, reply(connect, successful=False, error="403::Unknown client"))
        deadline = s.next_deadline(0.0)
        assert deadline is not None
        assert set(subscribe_messages(handshake(s, deadline, "c2"))) == {"/event/Low_Ink__e"}

    @pytest.mark.parametrize("value", [-3, "-2", 1.5, True])
    def test_bad_replay_values_are_refused(self, value: Any) -> None:
        with pytest.raises(ValueError, match="replay_from"):
            session().subscribe(CHANNEL, value)

    def test_channel_names_start_with_a_slash(self) -> None:
        with pytest.raises(ValueError, match="must start with"):
            session().subscribe("data/AccountChangeEvent")

    def test_double_subscribe_is_refused(self) -> None:
        s = session()
        s.subscribe(CHANNEL)
        with pytest.raises(ValueError, match="already subscribed"):
            s.subscribe(CHANNEL)


class TestClose:
    def test_close_sends_a_disconnect_and_ends(self) -> None:
        s, _ = connected()
        s.close()
        (request,) = s.poll(0.0)
        assert request.kind is RequestKind.DISCONNECT
        assert request.messages[0]["clientId"] == "c1"
        s.receive(request, 0.0, [], [])
        assert s.phase is Phase.CLOSED
        assert s.finished

    def test_close_before_connecting_sends_nothing(self) -> None:
        s = session()
        s.close()
        assert s.poll(0.0) == []
        assert s.finished

    def test_a_lost_disconnect_still_ends(self) -> None:
        s, _ = connected()
        s.close()
        (request,) = s.poll(0.0)
        s.fail(request, 0.0, TransportError("no answer"))
        assert s.phase is Phase.CLOSED


def test_parse_rejects_non_bayeux_bodies() -> None:
    from sfstream.errors import ProtocolError

    for body in (5, "x", [1], [{"data": {}}], [{"channel": "/meta/bogus"}]):
        with pytest.raises(ProtocolError):
            parse(body)


def test_parse_accepts_old_and_new_event_layouts() -> None:
    replies, events = parse(
        [
            {
                "channel": "/event/Low_Ink__e",
                "data": {"schema": "x", "payload": {}, "event": {"replayId": 4}},
            },
            {
                "channel": "/u/Notifications",
                "data": {"event": {"replayId": 9, "createdDate": "d"}, "payload": "hello"},
            },
            {
                "channel": "/topic/T",
                "clientId": "c",
                "data": {"event": {"replayId": 2}, "sobject": {"Id": "001"}},
            },
        ]
    )
    assert replies == []
    assert [(e.channel, e.replay_id) for e in events] == [
        ("/event/Low_Ink__e", 4),
        ("/u/Notifications", 9),
        ("/topic/T", 2),
    ]
    assert events[1].data["payload"] == "hello"
    assert isinstance(events[0], Event)
