"""The control API under `/_emulator/v1`, over real HTTP."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from sfstream_emulator import Emulator, EmulatorSettings
from tests.emulator.conftest import Bayeux

ACCOUNTS = "/data/AccountChangeEvent"
QUICK = {"timeout": 50}


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=30.0, reconnect_gap_s=40.0, seed=7)


class Control:
    def __init__(self, http: aiohttp.ClientSession, emu: Emulator) -> None:
        self.http = http
        self.base = f"{emu.url}/_emulator/v1"

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"params": params}
        if raw is not None:
            kwargs["data"] = raw
            kwargs["headers"] = {"Content-Type": "application/json"}
        elif body is not None:
            kwargs["json"] = body
        async with self.http.request(method, f"{self.base}{path}", **kwargs) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()

    async def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, result = await self.call(method, path, body, **kwargs)
        assert status in (200, 201), result
        return result

    async def bad(self, method: str, path: str, body: Any = None, **kwargs: Any) -> str:
        status, result = await self.call(method, path, body, **kwargs)
        assert status == 400, result
        assert set(result) == {"error"}
        assert isinstance(result["error"], str)
        assert result["error"]
        return str(result["error"])


@pytest.fixture
def control(http: aiohttp.ClientSession, emu: Emulator) -> Control:
    return Control(http, emu)


async def _token_status(emu: Emulator, http: aiohttp.ClientSession) -> int:
    creds = emu.credentials
    form = {
        "grant_type": "refresh_token",
        "client_id": creds["client_id"],
        "client_secret": creds["client_secret"],
        "refresh_token": creds["refresh_token"],
    }
    async with http.post(emu.token_url, data=form) as response:
        return response.status


# -- status and clock -----------------------------------------------------------------------


async def test_status(emu: Emulator, control: Control, bayeux: Bayeux) -> None:
    await bayeux.handshake()
    emu.create_record("Account", {"Name": "A"})
    status = await control.ok("GET", "/status")
    assert status["url"] == emu.url
    assert status["org_id"] == "00D5g00000EmuOrgEAA"
    assert status["api_version"] == "62.0"
    assert status["clients"] == 1
    assert status["published"] == 1
    assert status["stats"]["handshakes"] == 1
    assert status["faults"] == {"queued": 0, "chaos": False, "injected": {}}
    assert status["clock"]["offset_s"] == 0


async def test_clock_advance(emu: Emulator, control: Control) -> None:
    before = emu.clock.now()
    result = await control.ok("POST", "/clock/advance", {"seconds": 3600})
    assert result["now"] >= before + 3600
    status = await control.ok("GET", "/status")
    assert status["clock"]["offset_s"] == 3600


BAD_BODIES: list[tuple[str, Any]] = [
    ("/clock/advance", {}),
    ("/clock/advance", {"seconds": 0}),
    ("/clock/advance", {"seconds": -5}),
    ("/clock/advance", {"seconds": "soon"}),
    ("/clock/advance", {"seconds": 1, "extra": 2}),
    ("/clock/advance", []),
    ("/events/generate", {"target": "Nope", "count": 1}),
    ("/events/generate", {"target": "Case", "count": 1}),  # Case raises no change events
    ("/events/generate", {"target": "Account", "count": 0}),
    ("/events/generate", {"target": "Account"}),
    ("/events/generate", {"count": 1}),
    ("/events/generate", {"target": "Account", "count": 1, "payload_bytes": -1}),
    ("/events/generate", {"target": "Account", "count": "1"}),
    ("/events/generate", {"target": "Account", "count": 1, "colour": "red"}),
    ("/events/gap", {"entity": "Account", "change_type": "UPDATE", "record_ids": ["001x"]}),
    ("/events/gap", {"entity": "Account", "change_type": "GAP_CREATE"}),
    ("/events/gap", {"entity": "Case", "change_type": "GAP_OVERFLOW"}),
    ("/events/gap", {"entity": "Nope", "change_type": "GAP_OVERFLOW"}),
    ("/events/gap", {"change_type": "GAP_OVERFLOW"}),
    ("/events/gap", {"entity": "Account", "change_type": "GAP_OVERFLOW", "record_ids": "x"}),
    ("/faults", {}),
    ("/faults", {"kind": "explode"}),
    ("/faults", {"kind": "drop", "count": 0}),
    ("/faults", {"kind": "drop", "count": "2"}),
    ("/faults", {"kind": "drop", "target": "soap"}),
    ("/faults", {"kind": "stall", "seconds": -1}),
    ("/faults", {"kind": "stall", "seconds": 7200}),
    ("/faults", {"kind": "unknown_client", "reconnect": "retry"}),
    ("/faults", {"kind": "drop", "colour": "red"}),
    ("/chaos", {"drop": 2.0}),
    ("/chaos", {"http_503": -0.1}),
    ("/chaos", {"seed": "x"}),
    ("/chaos", {"seed": "1"}),
    ("/chaos", {"nope": 1}),
    ("/tokens/revoke", {"kind": "everything"}),
    ("/tokens/revoke", {"kind": 1}),
    ("/tokens/revoke", {"scope": "all"}),
    ("/allocation", {"kind": "pushtopic"}),
    ("/allocation", {"maximum": -1}),
    ("/allocation", {"maximum": "7"}),
    ("/allocation", {"exhaust": "yes"}),
    ("/allocation", {"max": 3}),
    ("/schema/Nope", {"add": [{"name": "X__c", "type": "string"}]}),
    ("/schema/Account", {"add": [{"name": "Name", "type": "string"}]}),
    ("/schema/Account", {"add": [{"name": "X__c", "type": "not-a-type"}]}),
    ("/schema/Account", {"remove": ["Nope__c"]}),
    ("/schema/Account", {"remove": ["Id"]}),
    ("/schema/Account", {"retype": {"Nope__c": "string"}}),
    ("/schema/Account", {"rename": {"Name": "Title"}}),
    ("/cdc", {"entity": "Nope", "selected": True}),
    ("/cdc", {"entity": "Order_Placed__e", "selected": True}),
    ("/cdc", {"entity": "Account"}),
    ("/cdc", {"entity": "Account", "selected": "maybe"}),
]
BODY_PATHS = sorted({path for path, _ in BAD_BODIES})


async def test_bad_bodies_are_400_and_change_nothing(
    emu: Emulator, control: Control, bayeux: Bayeux, subtests: pytest.Subtests
) -> None:
    schema = emu.runtime.schema_id(emu.runtime.spec.object("Account"))  # type: ignore[arg-type]
    change_events = list(emu.runtime.spec.change_events)
    for path, body in BAD_BODIES:
        with subtests.test(path=path, body=body):
            await control.bad("POST", path, body)
    for path in BODY_PATHS:
        with subtests.test(path=path, body="malformed JSON"):
            error = await control.bad("POST", path, raw=b"{nope")
            assert "json" in error.lower()
    assert emu.clock.offset_s == 0
    assert emu.bus.published_total == 0
    assert emu.faults.queue == []
    assert emu.faults.chaos is None
    assert emu.runtime.allocations.event_deliveries.maximum is None
    assert emu.runtime.allocations.streaming_deliveries.maximum is None
    assert emu.runtime.schema_id(emu.runtime.spec.object("Account")) == schema  # type: ignore[arg-type]
    assert emu.runtime.spec.change_events == change_events
    assert (await bayeux.handshake())["successful"] is True


async def test_clock_advance_expires_clients_and_events(
    emu: Emulator, control: Control, bayeux: Bayeux
) -> None:
    await bayeux.start(ACCOUNTS)
    (replay_id,) = emu.generate("Account", 1)
    await control.ok("POST", "/clock/advance", {"seconds": 41})
    _, reply = await bayeux.connect()
    assert reply["error"] == "403::Unknown client"
    await control.ok("POST", "/clock/advance", {"seconds": 72 * 3600})
    channels = {c["channel"]: c for c in await control.ok("GET", "/channels")}
    assert channels[ACCOUNTS]["retained"] == 0
    assert replay_id > 0


# -- channels and events --------------------------------------------------------------------


async def test_channels(emu: Emulator, control: Control, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    ids = emu.generate("Account", 3)
    channels = {c["channel"]: c for c in await control.ok("GET", "/channels")}
    assert {
        ACCOUNTS,
        "/data/ChangeEvents",
        "/data/ContactChangeEvent",
        "/data/SalesEvents__chn",
        "/event/Order_Placed__e",
        "/event/Low_Ink__e",
        "/topic/HighValueDeals",
        "/u/Notifications",
    } <= set(channels)
    assert channels[ACCOUNTS] == {
        "channel": ACCOUNTS,
        "kind": "change_events",
        "retained": 3,
        "first_replay_id": ids[0],
        "last_replay_id": ids[-1],
        "subscribers": 1,
    }
    assert channels["/data/ChangeEvents"]["retained"] == 3
    assert channels["/event/Order_Placed__e"]["kind"] == "platform_event"
    assert channels["/topic/HighValueDeals"]["kind"] == "push_topic"
    assert channels["/u/Notifications"]["kind"] == "generic"
    assert channels["/u/Notifications"]["first_replay_id"] is None


async def test_events(emu: Emulator, control: Control) -> None:
    ids = emu.generate("Order_Placed__e", 5, payload_bytes=100)
    events = await control.ok("GET", "/events", params={"channel": "/event/Order_Placed__e"})
    assert [e["data"]["event"]["replayId"] for e in events] == ids
    assert {e["channel"] for e in events} == {"/event/Order_Placed__e"}
    after = await control.ok(
        "GET", "/events", params={"channel": "/event/Order_Placed__e", "after": str(ids[1])}
    )
    assert [e["data"]["event"]["replayId"] for e in after] == ids[2:]
    limited = await control.ok(
        "GET", "/events", params={"channel": "/event/Order_Placed__e", "limit": "2"}
    )
    assert [e["data"]["event"]["replayId"] for e in limited] == ids[:2]


async def test_events_errors(control: Control) -> None:
    status, body = await control.call("GET", "/events", params={"channel": "/event/Nope__e"})
    assert status == 404
    assert "/event/Nope__e" in body["error"]
    status, _ = await control.call("GET", "/events")
    assert status == 404
    for params in ({"after": "x"}, {"limit": "many"}):
        await control.bad("GET", "/events", params={"channel": ACCOUNTS, **params})


async def test_generate(emu: Emulator, control: Control, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    result = await control.ok(
        "POST", "/events/generate", {"target": "Account", "count": 4, "payload_bytes": 2000}
    )
    assert result["count"] == 4
    assert result["first_replay_id"] < result["last_replay_id"]
    events, _ = await bayeux.connect()
    replay_ids = [e["data"]["event"]["replayId"] for e in events]
    assert len(replay_ids) == 4
    assert replay_ids[0] == result["first_replay_id"]
    assert replay_ids[-1] == result["last_replay_id"]
    result = await control.ok("POST", "/events/generate", {"target": "Order_Placed__e", "count": 2})
    assert result["count"] == 2


async def test_gap_overflow(emu: Emulator, control: Control, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    result = await control.ok(
        "POST", "/events/gap", {"entity": "Account", "change_type": "GAP_OVERFLOW"}
    )
    events, _ = await bayeux.connect()
    assert len(events) == 1
    assert events[0]["data"]["event"]["replayId"] == result["replay_id"]
    header = events[0]["data"]["payload"]["ChangeEventHeader"]
    assert header["changeType"] == "GAP_OVERFLOW"
    assert header["recordIds"] == ["000000000000000AAA"]
    assert header["entityName"] == "Account"


async def test_gap_event_with_record_ids(emu: Emulator, control: Control, bayeux: Bayeux) -> None:
    record_id = emu.create_record("Account", {"Name": "Gap"})
    await bayeux.start(ACCOUNTS)
    await control.ok(
        "POST",
        "/events/gap",
        {"entity": "Account", "change_type": "GAP_UPDATE", "record_ids": [record_id]},
    )
    events, _ = await bayeux.connect()
    payload = events[0]["data"]["payload"]
    assert payload["ChangeEventHeader"]["changeType"] == "GAP_UPDATE"
    assert payload["ChangeEventHeader"]["recordIds"] == [record_id]


# -- faults and chaos -----------------------------------------------------------------------


async def test_faults_add_list_clear(emu: Emulator, control: Control, bayeux: Bayeux) -> None:
    assert await control.ok("GET", "/faults") == {"queued": [], "chaos": None, "injected": {}}
    result = await control.ok("POST", "/faults", {"kind": "http_503", "count": 2})
    assert result == {"queued": 1}
    result = await control.ok(
        "POST",
        "/faults",
        {"kind": "deny_handshake", "reason": "403::Organization concurrent user limit exceeded"},
    )
    assert result == {"queued": 2}
    listed = await control.ok("GET", "/faults")
    assert [f["kind"] for f in listed["queued"]] == ["http_503", "deny_handshake"]
    assert listed["queued"][0] == {
        "kind": "http_503",
        "count": 2,
        "target": "cometd",
        "channel": None,
        "seconds": 0.0,
        "reason": "401::Authentication invalid",
        "reconnect": "handshake",
    }
    status, _ = await bayeux.post([{"channel": "/meta/handshake", "id": "1"}])
    assert status == 503
    listed = await control.ok("GET", "/faults")
    assert listed["queued"][0]["count"] == 1
    assert listed["injected"] == {"http_503": 1}
    assert await control.ok("DELETE", "/faults") == {"queued": 0}
    assert (await control.ok("GET", "/faults"))["queued"] == []
    assert (await bayeux.handshake())["successful"] is True


async def test_fault_posted_over_http_takes_effect(
    emu: Emulator, control: Control, bayeux: Bayeux
) -> None:
    await bayeux.start(ACCOUNTS)
    await control.ok(
        "POST",
        "/faults",
        {"kind": "unknown_client", "reconnect": "none", "channel": "/meta/connect"},
    )
    _, reply = await bayeux.connect()
    assert reply["error"] == "403::Unknown client"
    assert reply["advice"] == {"interval": 0, "reconnect": "none"}


async def test_chaos_start_and_stop(emu: Emulator, control: Control, bayeux: Bayeux) -> None:
    settings = {
        "seed": 3,
        "drop": 0.0,
        "cut": 0.0,
        "http_503": 1.0,
        "stall": 0.0,
        "unknown_client": 0.0,
        "revoke_tokens": 0.0,
        "expire_clients": 0.0,
    }
    result = await control.ok("POST", "/chaos", settings)
    assert result["chaos"]["http_503"] == 1.0
    assert result["chaos"]["seed"] == 3
    assert (await control.ok("GET", "/faults"))["chaos"]["http_503"] == 1.0
    assert (await control.ok("GET", "/status"))["faults"]["chaos"] is True
    status, _ = await bayeux.post([{"channel": "/meta/handshake", "id": "1"}])
    assert status == 503
    assert await control.ok("DELETE", "/chaos") == {"chaos": None}
    assert (await bayeux.handshake())["successful"] is True
    assert (await control.ok("GET", "/faults"))["chaos"] is None


async def test_chaos_defaults(control: Control) -> None:
    result = await control.ok("POST", "/chaos")
    assert result["chaos"]["seed"] == 0
    await control.ok("DELETE", "/chaos")


# -- tokens, clients, restart ---------------------------------------------------------------


async def test_revoke_access_tokens(
    emu: Emulator, control: Control, bayeux: Bayeux, http: aiohttp.ClientSession
) -> None:
    await bayeux.start(ACCOUNTS)
    assert await control.ok("POST", "/tokens/revoke") == {"revoked": 1}
    _, reply = await bayeux.connect()
    assert reply["error"] == "401::Authentication invalid"
    # Refresh tokens still work.
    assert await _token_status(emu, http) == 200
    assert await control.ok("POST", "/tokens/revoke", {"kind": "access"}) == {"revoked": 1}


async def test_revoke_and_restore_refresh_tokens(
    emu: Emulator, control: Control, bayeux: Bayeux, http: aiohttp.ClientSession
) -> None:
    await bayeux.start(ACCOUNTS)
    result = await control.ok("POST", "/tokens/revoke", {"kind": "refresh"})
    assert result["revoked"] >= 1
    assert (await bayeux.handshake())["error"] == "403::Handshake denied"
    assert await _token_status(emu, http) == 400
    assert await control.ok("POST", "/tokens/restore") == {"restored": True}
    assert await _token_status(emu, http) == 200


@pytest.mark.parametrize("path", ["/clients/expire", "/restart"])
async def test_expire_clients_and_restart(
    emu: Emulator, control: Control, http: aiohttp.ClientSession, token: str, path: str
) -> None:
    clients = [Bayeux(http, emu.cometd_url(), token) for _ in range(3)]
    for client in clients:
        await client.start(ACCOUNTS)
    emu.create_record("Account", {"Name": "Kept"})
    assert await control.ok("POST", path) == {"expired": 3}
    assert (await control.ok("GET", "/status"))["clients"] == 0
    _, reply = await clients[0].connect()
    assert reply["error"] == "403::Unknown client"
    assert reply["advice"] == {"interval": 0, "reconnect": "handshake"}
    # Events and tokens survive.
    assert (await clients[0].start(ACCOUNTS, -2))["successful"] is True
    events, _ = await clients[0].connect()
    assert [e["data"]["payload"]["Name"] for e in events] == ["Kept"]
    assert await control.ok("POST", path) == {"expired": 1}


# -- allocation -----------------------------------------------------------------------------


async def test_allocation(emu: Emulator, control: Control, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    result = await control.ok("POST", "/allocation", {"kind": "events", "maximum": 2})
    assert result == {"kind": "events", "maximum": 2, "used": 0}
    emu.generate("Account", 3)
    events, _ = await bayeux.connect()
    assert len(events) == 2
    _, reply = await bayeux.connect()
    assert reply["error"] == "403::Organization total events daily limit exceeded"
    result = await control.ok("POST", "/allocation", {"kind": "events", "maximum": 10})
    assert result == {"kind": "events", "maximum": 10, "used": 2}
    events, _ = await bayeux.connect()
    assert len(events) == 1
    result = await control.ok("POST", "/allocation", {"kind": "events"})
    assert result["maximum"] is None


async def test_allocation_exhaust_streaming(
    emu: Emulator, control: Control, bayeux: Bayeux
) -> None:
    result = await control.ok("POST", "/allocation", {"kind": "streaming", "exhaust": True})
    assert result == {"kind": "streaming", "maximum": 0, "used": 0}
    await bayeux.handshake()
    reply = await bayeux.subscribe("/u/Notifications", -1)
    assert reply["error"] == "403::Organization total events daily limit exceeded"
    assert (await bayeux.subscribe(ACCOUNTS, -1))["successful"] is True


# -- schema, CDC selection, undelete --------------------------------------------------------


async def test_schema_change(emu: Emulator, control: Control, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    emu.create_record("Account", {"Name": "Before"})
    events, _ = await bayeux.connect()
    old_schema = events[0]["data"]["schema"]
    result = await control.ok(
        "POST",
        "/schema/Account",
        {"add": [{"name": "Tier__c", "type": "string", "length": 10}]},
    )
    new_schema = result["schema_id"]
    assert new_schema != old_schema
    emu.create_record("Account", {"Name": "After", "Tier__c": "Gold"})
    events, _ = await bayeux.connect()
    assert events[0]["data"]["schema"] == new_schema
    assert events[0]["data"]["payload"]["Tier__c"] == "Gold"
    # Schema ids are digests of the schema: undoing the change brings the old id back.
    result = await control.ok("POST", "/schema/Account", {"remove": ["Tier__c"]})
    assert result["schema_id"] == old_schema


async def test_schema_change_of_a_platform_event(emu: Emulator, control: Control) -> None:
    replay_id, _ = emu.publish_event("Low_Ink__e", {"Printer_Model__c": "XZO-5"})
    old_schema = emu.published("/event/Low_Ink__e")[0]["data"]["schema"]
    result = await control.ok(
        "POST", "/schema/Low_Ink__e", {"retype": {"Serial_Number__c": "textarea"}}
    )
    assert result["schema_id"] != old_schema
    emu.publish_event("Low_Ink__e", {"Printer_Model__c": "XZO-6"})
    latest = emu.published("/event/Low_Ink__e", after=replay_id)
    assert latest[0]["data"]["schema"] == result["schema_id"]


async def test_cdc_selection(emu: Emulator, control: Control, bayeux: Bayeux) -> None:
    await bayeux.start("/data/ChangeEvents")
    emu.create_record("Case", {"Subject": "Unselected"})
    result = await control.ok("POST", "/cdc", {"entity": "Case", "selected": True})
    assert "Case" in result["change_events"]
    emu.create_record("Case", {"Subject": "Selected"})
    result = await control.ok("POST", "/cdc", {"entity": "Account", "selected": False})
    assert "Account" not in result["change_events"]
    emu.create_record("Account", {"Name": "Deselected"})
    events, _ = await bayeux.connect()
    assert [e["data"]["payload"]["ChangeEventHeader"]["entityName"] for e in events] == ["Case"]
    assert events[0]["data"]["payload"]["Subject"] == "Selected"
    assert emu.published(ACCOUNTS) == []
    # A second identical selection changes nothing.
    again = await control.ok("POST", "/cdc", {"entity": "Case", "selected": True})
    assert again["change_events"].count("Case") == 1


async def test_undelete(emu: Emulator, control: Control, bayeux: Bayeux) -> None:
    record_id = emu.create_record("Account", {"Name": "Phoenix"})
    emu.delete_record("Account", record_id)
    await bayeux.start(ACCOUNTS)
    assert await control.ok("POST", f"/records/{record_id}/undelete") == {"undeleted": record_id}
    events, _ = await bayeux.connect()
    header = events[0]["data"]["payload"]["ChangeEventHeader"]
    assert header["changeType"] == "UNDELETE"
    assert header["recordIds"] == [record_id]
    # It is no longer deleted.
    status, body = await control.call("POST", f"/records/{record_id}/undelete")
    assert status == 404
    assert record_id in body["error"]


async def test_undelete_unknown_record(control: Control) -> None:
    status, body = await control.call("POST", "/records/001000000000000AAA/undelete")
    assert status == 404
    assert "001000000000000AAA" in body["error"]


async def test_unknown_control_path(http: aiohttp.ClientSession, emu: Emulator) -> None:
    async with http.get(f"{emu.url}/_emulator/v1/nope") as response:
        assert response.status == 404
    async with http.get(f"{emu.url}/_emulator/v1/clock/advance") as response:
        assert response.status == 405
