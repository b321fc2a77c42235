"""`/meta/subscribe`: the replay map, channel checks, permissions and delivery."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import aiohttp
import pytest

from sfstream_emulator import Emulator, EmulatorSettings, load_org
from tests.emulator.conftest import Bayeux

ACCOUNTS = "/data/AccountChangeEvent"
HOUR = 3600.0
QUICK = {"timeout": 50}


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=30.0, reconnect_gap_s=40.0, seed=7)


def invalid(replay: Any) -> str:
    return (
        f"400::The replayId {{{replay}}} you provided was invalid.  Please provide a valid ID, "
        "-2 to replay all events, or -1 to replay only new events."
    )


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["payload"]["Name"] for e in events]


def _replay_ids(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["event"]["replayId"] for e in events]


def _accounts(emu: Emulator, *names: str) -> list[int]:
    """Create accounts; returns the replay ids of their change events."""
    before = len(emu.published(ACCOUNTS))
    for name in names:
        emu.create_record("Account", {"Name": name})
    return _replay_ids(emu.published(ACCOUNTS)[before:])


async def _drain(client: Bayeux) -> list[dict[str, Any]]:
    """Everything pending for the client, without waiting for more."""
    events, reply = await client.connect(advice=QUICK)
    assert reply["successful"] is True, reply
    return events


def _opportunity(emu: Emulator, name: str, amount: float, stage: str) -> str:
    return emu.create_record(
        "Opportunity",
        {"Name": name, "Amount": amount, "StageName": stage, "CloseDate": "2030-01-31"},
    )


async def test_subscribe_reply_shape(bayeux: Bayeux) -> None:
    await bayeux.handshake()
    await bayeux.connect()
    reply = await bayeux.subscribe(ACCOUNTS, -1)
    assert reply == {
        "clientId": bayeux.client_id,
        "channel": "/meta/subscribe",
        "id": "3",
        "subscription": ACCOUNTS,
        "successful": True,
    }
    assert list(reply) == ["clientId", "channel", "id", "subscription", "successful"]


async def test_replay_minus_one_gets_only_new_events(emu: Emulator, bayeux: Bayeux) -> None:
    _accounts(emu, "Old 1", "Old 2")
    assert (await bayeux.start(ACCOUNTS, -1))["successful"]
    _accounts(emu, "New")
    events, _ = await bayeux.connect()
    assert _names(events) == ["New"]


async def test_replay_minus_two_gets_all_retained_then_new(emu: Emulator, bayeux: Bayeux) -> None:
    retained = _accounts(emu, "Old 1", "Old 2")
    assert (await bayeux.start(ACCOUNTS, -2))["successful"]
    events, _ = await bayeux.connect()
    assert _names(events) == ["Old 1", "Old 2"]
    assert _replay_ids(events) == retained
    _accounts(emu, "New")
    events, _ = await bayeux.connect()
    assert _names(events) == ["New"]


async def test_replay_minus_two_as_a_string_is_accepted(emu: Emulator, bayeux: Bayeux) -> None:
    _accounts(emu, "Old")
    assert (await bayeux.start(ACCOUNTS, "-2"))["successful"]
    events, _ = await bayeux.connect()
    assert _names(events) == ["Old"]


async def test_stored_replay_id_resumes_strictly_after_it(emu: Emulator, bayeux: Bayeux) -> None:
    ids = _accounts(emu, "A", "B", "C", "D")
    assert (await bayeux.start(ACCOUNTS, ids[1]))["successful"]
    events, _ = await bayeux.connect()
    assert _names(events) == ["C", "D"]
    assert _replay_ids(events) == ids[2:]


async def test_last_replay_id_resumes_with_new_events_only(emu: Emulator, bayeux: Bayeux) -> None:
    ids = _accounts(emu, "A", "B")
    assert (await bayeux.start(ACCOUNTS, ids[-1]))["successful"]
    assert await _drain(bayeux) == []
    _accounts(emu, "C")
    events, _ = await bayeux.connect()
    assert _names(events) == ["C"]


async def test_replay_ids_are_increasing_integers_never_contiguous(
    emu: Emulator, bayeux: Bayeux
) -> None:
    await bayeux.start(ACCOUNTS, -1)
    _accounts(emu, *(f"A{i}" for i in range(60)))
    events, _ = await bayeux.connect()
    ids = _replay_ids(events)
    assert len(ids) == 60
    assert all(type(i) is int for i in ids)
    steps = [b - a for a, b in itertools.pairwise(ids)]
    assert all(step > 1 for step in steps)


async def test_no_replay_ext_means_new_events_only(emu: Emulator, bayeux: Bayeux) -> None:
    _accounts(emu, "Old")
    await bayeux.start(ACCOUNTS, None)
    _accounts(emu, "New")
    events, _ = await bayeux.connect()
    assert _names(events) == ["New"]


@pytest.mark.parametrize("ext", [{}, {"replay": True}, {"replay": {}}, {"other": 1}])
async def test_replay_ext_without_a_map_means_new_events_only(
    emu: Emulator, bayeux: Bayeux, ext: dict[str, Any]
) -> None:
    _accounts(emu, "Old")
    await bayeux.handshake()
    await bayeux.connect()
    reply = await bayeux.subscribe(ACCOUNTS, ext=ext)
    assert reply["successful"] is True
    _accounts(emu, "New")
    events, _ = await bayeux.connect()
    assert _names(events) == ["New"]


async def test_replay_map_without_the_channel_is_refused(bayeux: Bayeux) -> None:
    await bayeux.handshake()
    await bayeux.connect()
    reply = await bayeux.subscribe(ACCOUNTS, ext={"replay": {"/data/ContactChangeEvent": -1}})
    assert reply == {
        "clientId": bayeux.client_id,
        "channel": "/meta/subscribe",
        "id": "3",
        "subscription": ACCOUNTS,
        "error": (
            "400::The replayId for channel {/data/AccountChangeEvent} wasn't found using the "
            "provided replay ID map {{/data/ContactChangeEvent=-1}}. Ensure that the channel "
            "name you provided in the replay map is valid and matches the channel name used "
            "for subscribing."
        ),
        "successful": False,
    }


async def test_replay_map_with_many_channels_is_read_by_channel(
    emu: Emulator, bayeux: Bayeux
) -> None:
    # EMP-Connector sends its whole map on every subscribe.
    ids = _accounts(emu, "A", "B")
    await bayeux.handshake()
    await bayeux.connect()
    replay_map = {"/event/Order_Placed__e": -1, ACCOUNTS: ids[0], "/data/ChangeEvents": -2}
    reply = await bayeux.subscribe(ACCOUNTS, ext={"replay": replay_map})
    assert reply["successful"] is True
    events, _ = await bayeux.connect()
    assert _names(events) == ["B"]


INVALID_REPLAY_IDS: list[tuple[Any, str]] = [
    (12345, "12345"),
    (0, "0"),
    (-3, "-3"),
    ("-1", "-1"),
    ("abc", "abc"),
    ("12", "12"),
    (True, "true"),
]


async def test_invalid_replay_ids_are_refused(
    emu: Emulator, bayeux: Bayeux, subtests: pytest.Subtests
) -> None:
    _accounts(emu, "A")
    await bayeux.handshake()
    await bayeux.connect()
    for value, shown in INVALID_REPLAY_IDS:
        with subtests.test(value=value):
            reply = await bayeux.subscribe(ACCOUNTS, value)
            assert reply == {
                "clientId": bayeux.client_id,
                "channel": "/meta/subscribe",
                "id": reply["id"],
                "subscription": ACCOUNTS,
                "error": invalid(shown),
                "successful": False,
            }
    assert emu.cometd.subscriber_count(ACCOUNTS) == 0


async def test_replay_id_from_another_stream_is_invalid(emu: Emulator, bayeux: Bayeux) -> None:
    replay_id, _ = emu.publish_event("Order_Placed__e", {"Order_Number__c": "O-1"})
    _accounts(emu, "A")
    await bayeux.start(ACCOUNTS, None)
    reply = await bayeux.subscribe(ACCOUNTS, replay_id)
    assert reply["error"] == invalid(replay_id)


async def test_invalid_replay_id_keeps_the_client(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS, 999)
    # The fallback of aiosfstream: subscribe again with -2.
    ids = _accounts(emu, "A")
    assert (await bayeux.subscribe(ACCOUNTS, -2))["successful"] is True
    events, _ = await bayeux.connect()
    assert _replay_ids(events) == ids


@pytest.mark.parametrize(
    ("channel", "hours"),
    [
        (ACCOUNTS, 72),
        ("/data/ChangeEvents", 72),
        ("/event/Order_Placed__e", 72),
        ("/topic/HighValueDeals", 24),
        ("/u/Notifications", 24),
    ],
)
async def test_replay_ids_expire_with_retention(
    emu: Emulator, bayeux: Bayeux, token: str, channel: str, hours: int
) -> None:
    def publish(tag: str) -> None:
        if channel.startswith("/data/"):
            emu.create_record("Account", {"Name": tag})
        elif channel.startswith("/event/"):
            emu.publish_event("Order_Placed__e", {"Order_Number__c": tag})
        elif channel.startswith("/topic/"):
            _opportunity(emu, tag, 250000, "Prospecting")
        else:
            emu.push(channel, tag)

    publish("old")
    emu.advance(HOUR)
    publish("newer")
    old, newer = _replay_ids(emu.published(channel))

    emu.advance(hours * HOUR - HOUR - 1)  # the old event is one second short of expiry
    bayeux.token = emu.access_token()
    assert (await bayeux.start(channel, old))["successful"] is True
    assert _replay_ids(await _drain(bayeux)) == [newer]

    emu.advance(2)  # now it is gone; the newer event is still retained
    bayeux.token = emu.access_token()
    reply = await bayeux.start(channel, old)
    assert reply["error"] == invalid(old)
    assert (await bayeux.subscribe(channel, newer))["successful"] is True
    reply = await bayeux.subscribe(channel, -2)
    assert reply["successful"] is True
    assert _replay_ids(await _drain(bayeux)) == [newer]

    emu.advance(HOUR)  # everything expired: -2 finds nothing
    bayeux.token = emu.access_token()
    assert (await bayeux.start(channel, -2))["successful"] is True
    assert await _drain(bayeux) == []
    assert (await bayeux.subscribe(channel, newer))["error"] == invalid(newer)


@pytest.mark.parametrize(
    "sfstream_emulator_settings",
    [EmulatorSettings(poll_timeout_s=30.0, retention_cdc_hours=1.0, seed=7)],
)
async def test_retention_is_configurable(emu: Emulator, bayeux: Bayeux) -> None:
    (replay_id,) = _accounts(emu, "A")
    emu.advance(HOUR + 1)
    assert (await bayeux.start(ACCOUNTS, replay_id))["error"] == invalid(replay_id)


async def test_events_expired_while_away_are_skipped(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS, -1)
    _accounts(emu, "Expires")
    emu.advance(60 * HOUR)
    _accounts(emu, "Stays")
    emu.advance(13 * HOUR)
    # The client was forgotten meanwhile; it was never given the expired event either.
    bayeux.token = emu.access_token()
    assert (await bayeux.start(ACCOUNTS, -2))["successful"] is True
    assert _names(await _drain(bayeux)) == ["Stays"]


async def test_unknown_channel(bayeux: Bayeux, subtests: pytest.Subtests) -> None:
    await bayeux.handshake()
    await bayeux.connect()
    for channel in [
        "/event/Nope__e",
        "/data/NopeChangeEvent",
        "/topic/Nope",
        "/u/Nope",
        "/data/Nope__chn",
        "/x",
        "/meta/connect",
    ]:
        with subtests.test(channel):
            reply = await bayeux.subscribe(channel, -1)
            assert reply == {
                "clientId": bayeux.client_id,
                "channel": "/meta/subscribe",
                "id": reply["id"],
                "subscription": channel,
                "error": (
                    f"400::The channel you requested to subscribe to does not exist {{{channel}}}"
                ),
                "successful": False,
            }


async def test_channel_names_are_case_sensitive(bayeux: Bayeux) -> None:
    await bayeux.handshake()
    reply = await bayeux.subscribe("/data/accountchangeevent", -1)
    assert reply["error"] == (
        "400::The channel you requested to subscribe to does not exist {/data/accountchangeevent}"
    )


async def test_missing_channel_name(bayeux: Bayeux) -> None:
    await bayeux.handshake()
    for subscription in (None, ""):
        message: dict[str, Any] = {
            "channel": "/meta/subscribe",
            "clientId": bayeux.client_id,
            "id": "5",
        }
        if subscription is not None:
            message["subscription"] = subscription
        status, body = await bayeux.post([message])
        assert status == 200
        assert body[0]["error"] == "400::Channel name not specified"
        assert body[0]["successful"] is False


async def test_channel_name_without_leading_slash(bayeux: Bayeux) -> None:
    await bayeux.handshake()
    reply = await bayeux.subscribe("data/AccountChangeEvent", -1)
    assert reply["error"] == "400::Channel subscriptions must start with a leading '/'"


async def _other_org_client(
    http: aiohttp.ClientSession, emu: Emulator
) -> tuple[Bayeux, dict[str, Any]]:
    client = Bayeux(http, emu.cometd_url(), emu.access_token())
    reply = await client.handshake()
    assert reply["successful"] is True
    return client, reply


async def test_restricted_channel(http: aiohttp.ClientSession) -> None:
    spec = load_org()
    spec.restricted_channels = ["/event/Low_Ink__e", "/topic/HighValueDeals"]
    async with Emulator(EmulatorSettings(poll_timeout_s=1.0), spec) as emu:
        client, _ = await _other_org_client(http, emu)
        for channel in spec.restricted_channels:
            reply = await client.subscribe(channel, -1)
            assert reply["error"] == "403::Restricted channel"
            assert reply["successful"] is False
        assert (await client.subscribe("/event/Order_Placed__e", -1))["successful"] is True


async def test_cdc_needs_view_all_data(http: aiohttp.ClientSession) -> None:
    spec = load_org()
    spec.user.view_all_data = False
    async with Emulator(EmulatorSettings(poll_timeout_s=1.0), spec) as emu:
        client, _ = await _other_org_client(http, emu)
        for channel in (ACCOUNTS, "/data/ChangeEvents", "/data/SalesEvents__chn"):
            reply = await client.subscribe(channel, -1)
            assert reply["error"] == (
                "403::User not allowed to subscribe CDC without View All Data permissions"
            )
        assert (await client.subscribe("/event/Order_Placed__e", -1))["successful"] is True


async def test_several_channels_merge_in_publish_order(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS, -1)
    assert (await bayeux.subscribe("/event/Order_Placed__e", -1))["successful"]
    assert (await bayeux.subscribe("/u/Notifications", -1))["successful"]
    assert (await bayeux.subscribe("/data/ContactChangeEvent", -1))["successful"]
    emu.create_record("Account", {"Name": "first"})
    emu.publish_event("Order_Placed__e", {"Order_Number__c": "second"})
    emu.push("/u/Notifications", "third")
    emu.create_record("Contact", {"LastName": "fourth"})
    emu.publish_event("Order_Placed__e", {"Order_Number__c": "fifth"})
    emu.create_record("Account", {"Name": "sixth"})
    events, _ = await bayeux.connect()
    assert [e["channel"] for e in events] == [
        ACCOUNTS,
        "/event/Order_Placed__e",
        "/u/Notifications",
        "/data/ContactChangeEvent",
        "/event/Order_Placed__e",
        ACCOUNTS,
    ]
    assert events[1]["data"]["payload"]["Order_Number__c"] == "second"
    assert events[2]["data"]["payload"] == "third"
    assert events[3]["data"]["payload"]["Name"] == {"LastName": "fourth"}


async def test_same_event_has_the_same_replay_id_on_every_cdc_channel(
    emu: Emulator, bayeux: Bayeux
) -> None:
    await bayeux.start(ACCOUNTS, -1)
    assert (await bayeux.subscribe("/data/ChangeEvents", -1))["successful"]
    emu.create_record("Account", {"Name": "Twice"})
    events, _ = await bayeux.connect()
    assert sorted(e["channel"] for e in events) == [
        "/data/AccountChangeEvent",
        "/data/ChangeEvents",
    ]
    assert events[0]["data"] == events[1]["data"]
    # An id taken from one CDC channel resumes the other.
    emu.create_record("Account", {"Name": "After"})
    (replay_id,) = {e["data"]["event"]["replayId"] for e in events}
    assert (await bayeux.subscribe("/data/ChangeEvents", replay_id))["successful"]
    events, _ = await bayeux.connect()
    assert [(e["channel"], e["data"]["payload"]["Name"]) for e in events] == [
        (ACCOUNTS, "After"),
        ("/data/ChangeEvents", "After"),
    ]


async def test_custom_cdc_channel_carries_its_members_only(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start("/data/SalesEvents__chn", -1)
    emu.create_record("Account", {"Name": "Not a member"})
    _opportunity(emu, "Member", 10, "Prospecting")
    events, _ = await bayeux.connect()
    assert [e["data"]["payload"]["Name"] for e in events] == ["Member"]
    assert events[0]["channel"] == "/data/SalesEvents__chn"


async def test_resubscribing_moves_the_position(emu: Emulator, bayeux: Bayeux) -> None:
    ids = _accounts(emu, "A", "B", "C")
    await bayeux.start(ACCOUNTS, -1)
    assert (await bayeux.subscribe(ACCOUNTS, ids[0]))["successful"]
    events, _ = await bayeux.connect()
    assert _names(events) == ["B", "C"]


async def test_unsubscribe_stops_delivery(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS, -1)
    assert (await bayeux.subscribe("/event/Order_Placed__e", -1))["successful"]
    status, body = await bayeux.post(
        [
            {
                "channel": "/meta/unsubscribe",
                "clientId": bayeux.client_id,
                "subscription": ACCOUNTS,
                "id": "9",
            }
        ]
    )
    assert status == 200
    assert body == [
        {
            "clientId": bayeux.client_id,
            "channel": "/meta/unsubscribe",
            "id": "9",
            "subscription": ACCOUNTS,
            "successful": True,
        }
    ]
    emu.create_record("Account", {"Name": "Unseen"})
    emu.publish_event("Order_Placed__e", {"Order_Number__c": "Seen"})
    events, _ = await bayeux.connect()
    assert [e["channel"] for e in events] == ["/event/Order_Placed__e"]
    assert emu.cometd.subscriber_count(ACCOUNTS) == 0


FILTERED = "/topic/HighValueDeals?StageName=Closed%20Won"


async def test_push_topic_events(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start("/topic/HighValueDeals", -1)
    record_id = _opportunity(emu, "Big", 250000, "Prospecting")
    _opportunity(emu, "Small", 10, "Prospecting")
    events, _ = await bayeux.connect()
    assert len(events) == 1
    event = events[0]
    assert event["channel"] == "/topic/HighValueDeals"
    assert event["data"]["event"]["type"] == "created"
    assert event["data"]["sobject"]["Id"] == record_id
    assert event["data"]["sobject"]["Name"] == "Big"
    created = event["data"]["event"]["createdDate"]
    assert created.endswith("Z")
    dt.datetime.fromisoformat(created)


async def test_push_topic_filtered_subscription(emu: Emulator, bayeux: Bayeux) -> None:
    _opportunity(emu, "Old win", 300000, "Closed Won")
    _opportunity(emu, "Old loss", 300000, "Closed Lost")
    reply = await bayeux.start(FILTERED, -2)
    assert reply == {
        "clientId": bayeux.client_id,
        "channel": "/meta/subscribe",
        "id": "3",
        "subscription": FILTERED,
        "successful": True,
    }
    _opportunity(emu, "Won", 200000, "Closed Won")
    _opportunity(emu, "Lost", 200000, "Closed Lost")
    _opportunity(emu, "Small win", 10, "Closed Won")
    events, _ = await bayeux.connect()
    assert [e["data"]["sobject"]["Name"] for e in events] == ["Old win", "Won"]
    assert {e["channel"] for e in events} == {FILTERED}


async def test_push_topic_filtered_resumes_from_a_base_replay_id(
    emu: Emulator, bayeux: Bayeux
) -> None:
    _opportunity(emu, "One", 300000, "Closed Won")
    _opportunity(emu, "Two", 300000, "Closed Lost")
    _opportunity(emu, "Three", 300000, "Closed Won")
    first, _, _ = _replay_ids(emu.published("/topic/HighValueDeals"))
    assert (await bayeux.start(FILTERED, first))["successful"]
    events, _ = await bayeux.connect()
    assert [e["data"]["sobject"]["Name"] for e in events] == ["Three"]


@pytest.mark.parametrize(
    ("subscription", "fields"),
    [
        ("/topic/HighValueDeals?Nope__c=1", "Nope__c"),
        ("/topic/HighValueDeals?Nope__c=1&StageName=Won&Bad=2", "Nope__c, Bad"),
    ],
)
async def test_push_topic_filter_on_unknown_field(
    bayeux: Bayeux, subscription: str, fields: str
) -> None:
    await bayeux.handshake()
    reply = await bayeux.subscribe(subscription, -1)
    assert reply["error"] == f"400::Query fields {{{fields}}} do not exist on the topic entity"
    assert reply["subscription"] == subscription


async def test_filters_only_exist_on_push_topics(bayeux: Bayeux) -> None:
    await bayeux.handshake()
    reply = await bayeux.subscribe("/data/AccountChangeEvent?Name=Acme", -1)
    assert reply["error"] == (
        "400::The channel you requested to subscribe to does not exist "
        "{/data/AccountChangeEvent?Name=Acme}"
    )


async def test_connect_and_subscribe_in_one_post(emu: Emulator, bayeux: Bayeux) -> None:
    """aiocometd restores subscriptions with `[connect, subscribe]` after a re-handshake."""
    ids = _accounts(emu, "A", "B")
    await bayeux.handshake()
    status, body = await bayeux.post(
        [
            {
                "channel": "/meta/connect",
                "clientId": bayeux.client_id,
                "connectionType": "long-polling",
                "id": "2",
            },
            {
                "channel": "/meta/subscribe",
                "clientId": bayeux.client_id,
                "subscription": ACCOUNTS,
                "id": "3",
                "ext": {"replay": {ACCOUNTS: ids[0]}},
            },
            {
                "channel": "/meta/subscribe",
                "clientId": bayeux.client_id,
                "subscription": "/event/Order_Placed__e",
                "id": "4",
                "ext": {"replay": {ACCOUNTS: ids[0], "/event/Order_Placed__e": -1}},
            },
        ]
    )
    assert status == 200
    by_channel: dict[str, list[dict[str, Any]]] = {}
    for message in body:
        by_channel.setdefault(message["channel"], []).append(message)
    assert [m["successful"] for m in by_channel["/meta/subscribe"]] == [True, True]
    (connect,) = by_channel["/meta/connect"]
    assert connect["successful"] is True
    assert connect["advice"]["reconnect"] == "retry"
    assert _names(by_channel[ACCOUNTS]) == ["B"]
    assert body[-1] is connect


async def test_subscribe_needs_a_live_client(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.handshake()
    emu.expire_clients()
    reply = await bayeux.subscribe(ACCOUNTS, -1)
    assert reply["error"] == "403::Unknown client"
    assert reply["successful"] is False


async def test_subscribe_with_a_revoked_token(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.handshake()
    emu.revoke_access_tokens()
    reply = await bayeux.subscribe(ACCOUNTS, -1)
    assert reply["error"] == "401::Authentication invalid"
    assert reply["advice"] == {"reconnect": "none", "interval": 0}


async def test_replay_map_keyed_by_the_filtered_name_is_refused(bayeux: Bayeux) -> None:
    """The observed jsforce mistake: the map key carries the filter query."""
    await bayeux.handshake()
    subscription = "/topic/HighValueDeals?StageName='Closed Won'"
    reply = await bayeux.subscribe(subscription, ext={"replay": {subscription: -1}})
    assert reply["error"] == (
        "400::The replayId for channel {/topic/HighValueDeals} wasn't found using the provided "
        "replay ID map {{/topic/HighValueDeals?StageName='Closed Won'=-1}}. Ensure that the "
        "channel name you provided in the replay map is valid and matches the channel name "
        "used for subscribing."
    )


async def test_message_shapes_per_channel_kind(emu: Emulator, bayeux: Bayeux) -> None:
    """PushTopic and generic messages name the client; CDC and platform events do not."""
    await bayeux.start(ACCOUNTS, -1)
    for channel in ("/event/Order_Placed__e", "/topic/HighValueDeals", "/u/Notifications"):
        assert (await bayeux.subscribe(channel, -1))["successful"]
    emu.create_record("Account", {"Name": "CDC"})
    emu.publish_event("Order_Placed__e", {"Order_Number__c": "PE"})
    _opportunity(emu, "Topic", 500000, "Prospecting")
    emu.push("/u/Notifications", "Generic")
    status, body = await bayeux.post(
        [
            {
                "channel": "/meta/connect",
                "clientId": bayeux.client_id,
                "connectionType": "long-polling",
                "id": "x",
            }
        ]
    )
    assert status == 200
    events = {m["channel"]: m for m in body if not m["channel"].startswith("/meta/")}
    assert list(events[ACCOUNTS]) == ["data", "channel"]
    assert list(events["/event/Order_Placed__e"]) == ["data", "channel"]
    assert list(events["/topic/HighValueDeals"]) == ["clientId", "data", "channel"]
    assert list(events["/u/Notifications"]) == ["clientId", "data", "channel"]
    assert events["/topic/HighValueDeals"]["clientId"] == bayeux.client_id
    assert events["/u/Notifications"]["clientId"] == bayeux.client_id
    assert list(events["/u/Notifications"]["data"]) == ["event", "payload"]
    assert list(events["/u/Notifications"]["data"]["event"]) == ["createdDate", "replayId"]
    assert list(events["/topic/HighValueDeals"]["data"]) == ["event", "sobject"]
    assert list(events["/topic/HighValueDeals"]["data"]["event"]) == [
        "createdDate",
        "replayId",
        "type",
    ]
    platform_event = events["/event/Order_Placed__e"]["data"]
    assert list(platform_event) == ["schema", "payload", "event"]
    assert list(platform_event["event"]) == ["EventUuid", "replayId"]
    assert platform_event["payload"]["Order_Number__c"] == "PE"
