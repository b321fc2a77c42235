"""Channel names and their stable stream ids."""

from __future__ import annotations

import pytest

from sfstream.errors import ConfigError
from sfstream.streams import (
    ChannelKind,
    check_stream_id,
    parse_channel,
    snake,
    stream_id,
)


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        ("/data/AccountChangeEvent", "sf.event.account_changes"),
        ("/data/Employee__ChangeEvent", "sf.event.employee_changes"),
        ("/data/ns__Thing__ChangeEvent", "sf.event.ns_thing_changes"),
        ("/data/ChangeEvents", "sf.event.all_changes"),
        ("/data/Sales__chn", "sf.event.sales_channel"),
        ("/data/SalesEvents__chn", "sf.event.sales_events_channel"),
        ("/event/Order_Placed__e", "sf.event.order_placed"),
        ("/event/BatchApexErrorEvent", "sf.event.batch_apex_error_event"),
        ("/event/Alerts__chn", "sf.event.alerts_channel"),
        ("/topic/HighValueDeals", "sf.topic.high_value_deals"),
        ("/topic/HighValueDeals?StageName=Won", "sf.topic.high_value_deals_stage_name_won"),
        ("/u/Notifications", "sf.channel.notifications"),
        ("/data/OpportunityLineItemChangeEvent", "sf.event.opportunity_line_item_changes"),
    ],
)
def test_stream_ids(channel: str, expected: str) -> None:
    assert stream_id(channel) == expected
    assert check_stream_id(expected) == expected


@pytest.mark.parametrize(
    ("channel", "kind", "entity"),
    [
        ("/data/AccountChangeEvent", ChannelKind.CHANGE_EVENTS, "Account"),
        ("/data/Employee__ChangeEvent", ChannelKind.CHANGE_EVENTS, "Employee__c"),
        ("/data/ChangeEvents", ChannelKind.ALL_CHANGE_EVENTS, ""),
        ("/data/Sales__chn", ChannelKind.CHANGE_EVENT_CHANNEL, "Sales__chn"),
        ("/event/Low_Ink__e", ChannelKind.PLATFORM_EVENT, "Low_Ink__e"),
        ("/event/Alerts__chn", ChannelKind.PLATFORM_EVENT_CHANNEL, "Alerts__chn"),
        ("/topic/T?A=1", ChannelKind.PUSH_TOPIC, "T"),
        ("/u/Notifications", ChannelKind.GENERIC, "Notifications"),
    ],
)
def test_parse(channel: str, kind: ChannelKind, entity: str) -> None:
    info = parse_channel(channel)
    assert (info.kind, info.entity) == (kind, entity)
    assert info.kind.is_cdc == channel.startswith("/data/")


@pytest.mark.parametrize(
    "channel",
    [
        "data/AccountChangeEvent",
        "/data/Account",
        "/data/ChangeEvent",
        "/meta/connect",
        "/event/",
        "/event/Bad Name__e",
        "/event/X__e?Field=1",
        "/data/a/b",
        "/x/Y",
    ],
)
def test_bad_channels(channel: str) -> None:
    with pytest.raises(ConfigError):
        parse_channel(channel)


@pytest.mark.parametrize("value", ["Sf.Event", "sf..x", "sf-event", "1sf", ""])
def test_bad_stream_ids(value: str) -> None:
    with pytest.raises(ConfigError):
        check_stream_id(value)


def test_snake() -> None:
    assert snake("HTTPRequestLog") == "http_request_log"
    assert snake("Order_Placed") == "order_placed"
    assert snake("ns__Thing") == "ns_thing"
