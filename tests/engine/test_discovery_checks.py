"""The stream checks `check` prints and `run` applies at start: what is an error, what only a
warning, how collisions are worded, how little of the org is read, and key fields at runtime.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from sfstream.auth import OAuthCredentials, TokenProvider
from sfstream.bayeux import Event
from sfstream.engine.config import StreamConfig
from sfstream.engine.discovery import (
    check_streams,
    read_metadata,
    spec_from_config,
    streams_from_config,
    validate_streams,
)
from sfstream.engine.records import mapper_for
from sfstream.errors import ConfigError
from sfstream.salesforce.rest import RestClient
from sfstream_emulator import Emulator
from tests.conftest import MakeConfig


class Session:
    """An HTTP session whose requests to the emulator are counted by path (aiohttp tracing)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __aenter__(self) -> aiohttp.ClientSession:
        async def on_start(
            session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
        ) -> None:
            self.paths.append(params.url.path)

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        self._http = aiohttp.ClientSession(trace_configs=[trace])
        return self._http

    async def __aexit__(self, *exc: object) -> None:
        await self._http.close()

    def rest_paths(self) -> list[str]:
        return [p.split("/services/data/", 1)[-1] for p in self.paths if "/oauth2/" not in p]


@pytest.fixture
def counted() -> Session:
    return Session()


def rest_client(emu: Emulator, http: aiohttp.ClientSession) -> RestClient:
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


# -- errors and warnings ---------------------------------------------------------------------


async def test_a_key_field_that_streams_ignore_is_a_warning_saying_how_they_are_keyed(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    config = await make_config(
        sfstream_emulator,
        [
            {"channel": "/data/AccountChangeEvent", "key_field": "Name"},
            {"channel": "/data/ChangeEvents", "key_field": "Name"},
            {"channel": "/topic/HighValueDeals", "key_field": "Name"},
            {"channel": "/u/Notifications", "key_field": "Name"},
            {"channel": "/event/Order_Placed__e", "key_field": "Order_Number__c"},
        ],
    )
    async with aiohttp.ClientSession() as http:
        rest = rest_client(sfstream_emulator, http)
        specs = streams_from_config(config)
        problems = await check_streams(specs, await read_metadata(rest), rest)
    found = {p.channel: p for p in problems}
    assert set(found) == {
        "/data/AccountChangeEvent",
        "/data/ChangeEvents",
        "/topic/HighValueDeals",
        "/u/Notifications",
    }
    assert all(p.severity == "warning" for p in problems)
    assert found["/data/AccountChangeEvent"].message == (
        "key_field Name is ignored: change event records are keyed by the id of the changed "
        "record (ChangeEventHeader.recordIds); remove key_field"
    )
    assert "keyed by the id of the changed record" in found["/data/ChangeEvents"].message
    assert "PushTopic records are keyed by sobject.Id" in found["/topic/HighValueDeals"].message
    assert "generic streaming records have no key" in found["/u/Notifications"].message


async def test_what_would_stay_empty_is_an_error_unless_discovery_found_the_stream(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    config = await make_config(sfstream_emulator, [{"channel": "/data/CaseChangeEvent"}])
    configured = streams_from_config(config)
    discovered = [spec_from_config(StreamConfig(channel="/data/CaseChangeEvent"), "metadata")]
    async with aiohttp.ClientSession() as http:
        rest = rest_client(sfstream_emulator, http)
        metadata = await read_metadata(rest)
        (as_configured,) = await check_streams(configured, metadata, rest)
        (as_discovered,) = await check_streams(discovered, metadata, rest)
    assert as_configured.severity == "error"
    assert as_discovered.severity == "warning"
    assert as_discovered.message == as_configured.message
    assert "change events are not enabled for Case" in as_configured.message


# -- the start-up validation -----------------------------------------------------------------


async def test_validation_reads_only_the_metadata_its_streams_need(
    sfstream_emulator: Emulator, make_config: MakeConfig, counted: Session
) -> None:
    config = await make_config(
        sfstream_emulator,
        [
            {"channel": "/data/AccountChangeEvent"},
            {"channel": "/event/Order_Placed__e", "key_field": "Order_Number__c"},
        ],
    )
    async with counted as http:
        specs, problems = await validate_streams(config, rest_client(sfstream_emulator, http))
    assert [s.id for s in specs] == ["sf.event.account_changes", "sf.event.order_placed"]
    assert problems == []
    # describe global, the channel members, and the one key field: no PushTopic or
    # StreamingChannel query, since no stream needs them.
    assert sorted(counted.rest_paths()) == [
        "v62.0/sobjects/",
        "v62.0/sobjects/Order_Placed__e/describe",
        "v62.0/tooling/query/",
    ]


async def test_metadata_discovery_reads_the_org_once_for_discovery_and_checks(
    sfstream_emulator: Emulator, make_config: MakeConfig, counted: Session
) -> None:
    config = await make_config(sfstream_emulator, [], discovery={"mode": "metadata"})
    async with counted as http:
        specs, problems = await validate_streams(config, rest_client(sfstream_emulator, http))
    assert "/data/AccountChangeEvent" in {s.channel for s in specs}
    assert problems == []
    assert sorted(counted.rest_paths()) == [
        "v62.0/query/",
        "v62.0/query/",
        "v62.0/sobjects/",
        "v62.0/tooling/query/",
    ]


async def test_a_collision_among_configured_streams_is_found_before_any_request(
    sfstream_emulator: Emulator, make_config: MakeConfig, counted: Session
) -> None:
    config = await make_config(
        sfstream_emulator,
        [
            {"channel": "/event/Order_Placed__e"},
            {"channel": "/u/Orders", "id": "sf.event.order_placed"},
        ],
    )
    async with counted as http:
        with pytest.raises(ConfigError):
            await validate_streams(config, rest_client(sfstream_emulator, http))
    assert counted.paths == []


# -- collision hints -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("streams", "message"),
    [
        (
            [{"channel": "/event/Alerts__chn"}, {"channel": "/data/Alerts__chn"}],
            "channels /event/Alerts__chn and /data/Alerts__chn both map to stream id "
            "'sf.event.alerts_channel'; give one of them an explicit `id:` in `streams`",
        ),
        (
            [
                {"channel": "/u/Orders", "id": "sf.event.order_placed"},
                {"channel": "/event/Order_Placed__e"},
            ],
            "channels /u/Orders and /event/Order_Placed__e both map to stream id "
            "'sf.event.order_placed': /u/Orders has the explicit `id: sf.event.order_placed`, "
            "which is the id derived from /event/Order_Placed__e; change that `id:`",
        ),
        (
            [
                {"channel": "/u/Orders", "id": "sf.orders"},
                {"channel": "/u/Sales", "id": "sf.orders"},
            ],
            "channels /u/Orders and /u/Sales both map to stream id 'sf.orders': both have the "
            "explicit `id: sf.orders`; change one of them",
        ),
    ],
    ids=["derived", "explicit-vs-derived", "both-explicit"],
)
async def test_a_collision_hint_fits_what_is_configured(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    streams: list[dict[str, Any]],
    message: str,
) -> None:
    config = await make_config(sfstream_emulator, streams)
    with pytest.raises(ConfigError) as info:
        streams_from_config(config)
    assert str(info.value) == message


async def test_a_discovered_stream_colliding_with_an_explicit_id_suggests_changing_it(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    config = await make_config(
        sfstream_emulator,
        [{"channel": "/u/Sales", "id": "sf.event.sales_events_channel"}],
        discovery={"mode": "metadata"},
    )
    async with aiohttp.ClientSession() as http:
        with pytest.raises(ConfigError) as info:
            await validate_streams(config, rest_client(sfstream_emulator, http))
    assert str(info.value) == (
        "channels /data/SalesEvents__chn and /u/Sales both map to stream id "
        "'sf.event.sales_events_channel': /u/Sales has the explicit "
        "`id: sf.event.sales_events_channel`, which is the id derived from "
        "/data/SalesEvents__chn (found by discovery); change that `id:` (or exclude "
        "/data/SalesEvents__chn from discovery)"
    )


# -- key fields while running ----------------------------------------------------------------


def test_a_key_field_missing_from_the_events_is_reported_once() -> None:
    spec = spec_from_config(StreamConfig(channel="/event/Alerts__chn", key_field="Alert_Id__c"))
    to_records = mapper_for(spec, "run-1")

    def event(replay_id: int, payload: dict[str, Any]) -> Event:
        data = {"payload": payload, "event": {"replayId": replay_id, "EventUuid": "u"}}
        return Event(spec.channel, replay_id, data)

    with capture_logs() as logs:
        keyed = to_records(event(1, {"Alert_Id__c": "A-1"}), "now")
        unset = to_records(event(2, {"Alert_Id__c": None}), "now")
        missing = [to_records(event(n, {"Other__c": "x"}), "now") for n in (3, 4)]
    assert [r.key for r in keyed + unset] == ["A-1", None]
    assert [r.key for records in missing for r in records] == [None, None]
    (warning,) = logs
    assert warning == {
        "event": "key_field_missing",
        "log_level": "warning",
        "stream": "sf.event.alerts_channel",
        "channel": "/event/Alerts__chn",
        "key_field": "Alert_Id__c",
        "replay_id": 3,
        "note": "records of this stream get key null while its events lack the field; "
        "check the key_field against the event's definition",
    }
