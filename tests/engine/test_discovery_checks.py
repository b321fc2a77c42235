"""The stream checks `check` prints and `run` applies at start: what is an error, what only a
warning, how collisions are worded, how little of the org is read, and key fields at runtime.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
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
    OrgMetadata,
    cdc_selected,
    check_streams,
    read_metadata,
    spec_from_config,
    streams_from_config,
    validate_streams,
)
from sfstream.engine.records import mapper_for
from sfstream.errors import ConfigError
from sfstream.salesforce.rest import RestClient
from sfstream_emulator import Emulator, EmulatorSettings, load_org
from sfstream_emulator.org import EventChannelDef
from tests.cli.test_check import JSON_LOGS, log_lines
from tests.conftest import MakeConfig
from tests.runners.process import start_run


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
    # An admin's step, which `run` reports and goes on with (see `Connector._validate`).
    assert as_configured.unselected
    assert not as_configured.refused
    assert as_configured.entity == "Case"
    assert as_configured.action == (
        "select Case in Setup > Change Data Capture; the stream delivers once it is"
    )


async def test_nothing_selected_on_the_standard_channel_is_unselected(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    for entity in ("Account", "Contact", "Opportunity", "Employee__c"):
        emu.select_change_events(entity, False)
    config = await make_config(emu, [{"channel": "/data/ChangeEvents"}])
    async with aiohttp.ClientSession() as http:
        specs, problems = await validate_streams(config, rest_client(emu, http))
    (problem,) = problems
    assert problem.unselected
    assert problem.entity is None
    assert "no entity is selected for change events" in problem.message
    assert problem.action is not None
    assert "Setup > Change Data Capture" in problem.action
    assert cdc_selected(specs[0], await _metadata(emu)) is False


async def _metadata(emu: Emulator) -> OrgMetadata:
    async with aiohttp.ClientSession() as http:
        return await read_metadata(rest_client(emu, http))


async def test_a_custom_channel_is_checked_through_its_members(
    make_config: MakeConfig, sfstream_emulator_settings: EmulatorSettings
) -> None:
    org = load_org(None)
    org.channels.append(EventChannelDef(name="Empty__chn", members=[]))
    async with Emulator(sfstream_emulator_settings, org=org) as emu:
        config = await make_config(
            emu,
            [
                {"channel": "/data/SalesEvents__chn"},
                {"channel": "/data/Empty__chn"},
                {"channel": "/data/Missing__chn"},
            ],
        )
        async with aiohttp.ClientSession() as http:
            specs, problems = await validate_streams(config, rest_client(emu, http))
        metadata = await _metadata(emu)
    found = {p.channel: p for p in problems}
    assert set(found) == {"/data/Empty__chn", "/data/Missing__chn"}
    empty = found["/data/Empty__chn"]
    assert empty.unselected
    assert not empty.refused
    assert empty.message.startswith("no entity is selected on custom channel Empty__chn")
    assert empty.action == (
        "add members to Empty__chn (PlatformEventChannelMember, Tooling or Metadata API)"
    )
    # A channel that does not exist is Salesforce's to refuse, in its own words.
    missing = found["/data/Missing__chn"]
    assert (missing.refused, missing.unselected) == (True, False)
    assert missing.message == "custom channel Missing__chn does not exist"
    by_channel = {spec.channel: spec for spec in specs}
    assert cdc_selected(by_channel["/data/SalesEvents__chn"], metadata) is True
    assert cdc_selected(by_channel["/data/Empty__chn"], metadata) is False
    # Opportunity is on SalesEvents__chn only: its own channel still carries its events.
    opportunity = spec_from_config(StreamConfig(channel="/data/OpportunityChangeEvent"))
    assert cdc_selected(opportunity, metadata) is True


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
    # PushTopic, StreamingChannel; describe global; channel members and custom channels.
    assert sorted(counted.rest_paths()) == [
        "v62.0/query/",
        "v62.0/query/",
        "v62.0/sobjects/",
        "v62.0/tooling/query/",
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


async def test_a_run_warns_of_an_unselected_entity_and_streams_it_once_selected(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(
        emu,
        [{"channel": "/data/AccountChangeEvent"}, {"channel": "/data/CaseChangeEvent"}],
        logging=JSON_LOGS,
    )
    log = tmp_path / "run.log"
    process = await start_run(tmp_path / "sfstream.yaml", log)
    try:
        async with asyncio.timeout(60):
            while len([x for x in log_lines(log) if x["event"] == "stream_started"]) < 2:
                assert process.returncode is None, log_lines(log)
                await asyncio.sleep(0.1)
        (warning,) = [x for x in log_lines(log) if x["event"] == "stream_not_selected"]
        assert warning["level"] == "warning"
        assert (warning["stream"], warning["channel"], warning["entity"]) == (
            "sf.event.case_changes",
            "/data/CaseChangeEvent",
            "Case",
        )
        assert "change events are not enabled for Case" in warning["warning"]
        assert warning["action"].startswith("select Case in Setup > Change Data Capture")
        assert not [x for x in log_lines(log) if x["event"] in ("run_failed", "stream_warning")]
        (checked,) = [x for x in log_lines(log) if x["event"] == "streams_checked"]
        assert (checked["not_selected"], checked["errors"]) == (1, 0)

        # The session starts over: the selection is looked at again, once.
        emu.expire_clients()
        async with asyncio.timeout(30):
            while len([x for x in log_lines(log) if x["event"] == "stream_not_selected"]) < 2:
                assert process.returncode is None, log_lines(log)
                await asyncio.sleep(0.1)
        again = [x for x in log_lines(log) if x["event"] == "stream_not_selected"][1]
        assert again["on"] == "resubscribe"
        assert again["stream"] == "sf.event.case_changes"

        # The admin selects Case later: the subscription made at start delivers it.
        emu.select_change_events("Case", True)
        case_id = emu.create_record("Case", {"Subject": "Printer on fire"})
        assert config.sink.path is not None
        sink = config.sink.path
        async with asyncio.timeout(30):
            while case_id.encode() not in (sink.read_bytes() if sink.exists() else b""):
                assert process.returncode is None, log_lines(log)
                await asyncio.sleep(0.1)
        assert process.returncode is None
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await process.wait()
    assert process.returncode == 0, log_lines(log)
    # At start and on the one resubscribe (looked at again at most every 5 minutes).
    assert len([x for x in log_lines(log) if x["event"] == "stream_not_selected"]) == 2


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
