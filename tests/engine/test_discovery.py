"""Discovery by configuration and by the org's metadata, and `check`'s findings."""

from __future__ import annotations

import aiohttp
import pytest
from pydantic import SecretStr

from sfstream.auth import OAuthCredentials, TokenProvider
from sfstream.engine.discovery import (
    check_streams,
    discover,
    read_metadata,
    streams_from_config,
)
from sfstream.errors import ConfigError
from sfstream.salesforce.rest import RestClient
from sfstream_emulator import Emulator
from tests.conftest import MakeConfig


async def rest_client(emu: Emulator, http: aiohttp.ClientSession) -> RestClient:
    c = emu.credentials
    tokens = TokenProvider(
        OAuthCredentials(
            login_url=emu.url,
            client_id=c["client_id"],
            client_secret=SecretStr(c["client_secret"]),
            refresh_token=SecretStr(c["refresh_token"]),
        ),
        http,
    )
    return RestClient(http, tokens)


async def test_streams_from_config_keep_their_settings(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    config = await make_config(
        sfstream_emulator,
        [
            {"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"},
            {
                "channel": "/event/Order_Placed__e",
                "key_field": "Order_Number__c",
                "initial_replay": 12345,
                "on_invalid_replay": "latest",
            },
            {"channel": "/topic/HighValueDeals", "id": "sf.topic.big_deals"},
        ],
    )
    specs = streams_from_config(config)
    assert [(s.id, s.initial_replay, s.on_invalid_replay.value) for s in specs] == [
        ("sf.event.account_changes", -2, "fail"),
        ("sf.event.order_placed", 12345, "latest"),
        ("sf.topic.big_deals", -1, "fail"),
    ]
    assert specs[1].key_field == "Order_Number__c"


async def test_colliding_ids_are_refused(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    config = await make_config(
        sfstream_emulator,
        [
            {"channel": "/event/Order_Placed__e"},
            {"channel": "/u/Orders", "id": "sf.event.order_placed"},
        ],
    )
    with pytest.raises(ConfigError, match=r"both map to stream id 'sf\.event\.order_placed'"):
        streams_from_config(config)


async def test_metadata_discovery_finds_the_emulator_streams(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    config = await make_config(
        sfstream_emulator,
        [
            {"channel": "/event/Order_Placed__e", "key_field": "Order_Number__c"},
        ],
        discovery={"mode": "metadata", "initial_replay": "earliest"},
    )
    async with aiohttp.ClientSession() as http:
        specs = await discover(config, await rest_client(sfstream_emulator, http))
    found = {s.channel: s for s in specs}
    assert sorted(found) == [
        "/data/AccountChangeEvent",
        "/data/ContactChangeEvent",
        "/data/Employee__ChangeEvent",
        "/data/OpportunityChangeEvent",
        "/data/SalesEvents__chn",
        "/event/Low_Ink__e",
        "/event/Order_Placed__e",
        "/topic/HighValueDeals",
        "/u/Notifications",
    ]
    assert "/data/CaseChangeEvent" not in found  # change events not enabled for Case
    assert found["/data/Employee__ChangeEvent"].id == "sf.event.employee_changes"
    assert found["/data/SalesEvents__chn"].id == "sf.event.sales_events_channel"
    assert found["/u/Notifications"].id == "sf.channel.notifications"
    assert found["/data/AccountChangeEvent"].initial_replay == -2
    assert found["/data/AccountChangeEvent"].source == "metadata"
    assert found["/event/Order_Placed__e"].key_field == "Order_Number__c"
    assert found["/event/Order_Placed__e"].source == "config"


async def test_include_and_exclude_globs(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    config = await make_config(
        sfstream_emulator,
        [],
        discovery={
            "mode": "metadata",
            "include": ["/data/*", "/event/Low*"],
            "exclude": ["/data/*__chn", "/data/Contact*"],
        },
    )
    async with aiohttp.ClientSession() as http:
        specs = await discover(config, await rest_client(sfstream_emulator, http))
    assert [s.channel for s in specs] == [
        "/data/AccountChangeEvent",
        "/data/Employee__ChangeEvent",
        "/data/OpportunityChangeEvent",
        "/event/Low_Ink__e",
    ]


async def test_check_reports_silent_and_missing_streams(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    topic = emu.runtime.spec.push_topic("HighValueDeals")
    assert topic is not None
    topic.is_active = False
    config = await make_config(
        emu,
        [
            {"channel": "/data/AccountChangeEvent"},
            {"channel": "/data/CaseChangeEvent"},
            {"channel": "/data/Widget__ChangeEvent"},
            {"channel": "/event/Nope__e"},
            {"channel": "/event/Order_Placed__e", "key_field": "Not_A_Field__c"},
            {"channel": "/topic/HighValueDeals"},
            {"channel": "/topic/Missing"},
            {"channel": "/u/Nothing"},
            {"channel": "/data/Other__chn"},
        ],
    )
    async with aiohttp.ClientSession() as http:
        rest = await rest_client(emu, http)
        specs = streams_from_config(config)
        problems = await check_streams(specs, await read_metadata(rest), rest)
    by_channel = {p.channel: p.message for p in problems}
    assert "/data/AccountChangeEvent" not in by_channel
    assert "change events are not enabled for Case" in by_channel["/data/CaseChangeEvent"]
    assert "deliver nothing" in by_channel["/data/CaseChangeEvent"]
    assert "has no change events" in by_channel["/data/Widget__ChangeEvent"]
    assert "does not exist" in by_channel["/event/Nope__e"]
    assert "Not_A_Field__c is not a field" in by_channel["/event/Order_Placed__e"]
    assert "not active" in by_channel["/topic/HighValueDeals"]
    assert "does not exist" in by_channel["/topic/Missing"]
    assert "does not exist" in by_channel["/u/Nothing"]
    assert "does not exist" in by_channel["/data/Other__chn"]
