"""Publishing events and writing records through the control API, over real HTTP.

`POST /_emulator/v1/events/publish` and `POST/PATCH/DELETE /_emulator/v1/records/...` need
no token, and must behave exactly like the REST API calls they stand in for: the same
validation, the same error words, the same change events.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from sfstream_emulator import Emulator, EmulatorSettings
from tests.emulator.conftest import Bayeux
from tests.emulator.test_control import Control

ACCOUNTS = "/data/AccountChangeEvent"
ORDERS = "/event/Order_Placed__e"
REST = "/services/data/v62.0"


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=30.0, reconnect_gap_s=40.0, seed=11)


@pytest.fixture
def control(http: aiohttp.ClientSession, emu: Emulator) -> Control:
    return Control(http, emu)


async def _rest(
    http: aiohttp.ClientSession, emu: Emulator, token: str, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """A REST API call with a token, for comparing the control API's answers with it."""
    headers = {"Authorization": f"Bearer {token}"}
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    async with http.request(method, f"{emu.url}{REST}{path}", **kwargs) as response:
        text = await response.text()
        return response.status, (await response.json(content_type=None)) if text else None


def _as_control_error(rest_body: Any) -> dict[str, Any]:
    """The control API's error body for the REST API's `[{"message", "errorCode", "fields"}]`."""
    (entry,) = rest_body
    return {
        "error": entry["message"],
        "errorCode": entry["errorCode"],
        "fields": entry.get("fields", []),
    }


# -- events/publish -------------------------------------------------------------------------


async def test_publish_event_without_a_token(
    emu: Emulator, control: Control, bayeux: Bayeux
) -> None:
    await bayeux.start(ORDERS)
    fields = {
        "Order_Number__c": "ORD-1",
        "Amount__c": 12.5,
        "Quantity__c": 3,
        "Placed_At__c": "2024-05-01T12:00:00Z",
        "Express__c": True,
    }
    status, result = await control.call(
        "POST", "/events/publish", {"event": "Order_Placed__e", "fields": fields}
    )
    assert status == 201, result
    assert set(result) == {"channel", "replay_id", "event_uuid"}
    assert result["channel"] == ORDERS
    events, _ = await bayeux.connect()
    (event,) = events
    assert event["channel"] == ORDERS
    assert event["data"]["event"] == {
        "EventUuid": result["event_uuid"],
        "replayId": result["replay_id"],
    }
    payload = event["data"]["payload"]
    assert payload["Order_Number__c"] == "ORD-1"
    assert payload["Amount__c"] == 12.5
    assert payload["Placed_At__c"] == "2024-05-01T12:00:00.000Z"
    assert payload["Express__c"] is True
    assert payload["Notes__c"] is None


async def test_publish_event_name_is_case_insensitive_and_fields_default_to_none(
    emu: Emulator, control: Control
) -> None:
    result = await control.ok("POST", "/events/publish", {"event": "low_ink__e"})
    assert result["channel"] == "/event/Low_Ink__e"
    (message,) = emu.published("/event/Low_Ink__e")
    assert message["data"]["event"]["replayId"] == result["replay_id"]
    assert message["data"]["payload"]["Printer_Model__c"] is None


# Bodies the REST API refuses; the control API must refuse them with the same words.
REFUSED_EVENTS: list[dict[str, Any]] = [
    {"Order_Number__c": "ORD-1", "Nope__c": 1},
    {"Order_Number__c": "ORD-1", "Amount__c": "lots"},
    {"Order_Number__c": "ORD-1", "Express__c": "maybe"},
    {"Order_Number__c": "ORD-1", "Placed_At__c": "yesterday"},
    {"Order_Number__c": "x" * 41},
    {"Order_Number__c": "ORD-1", "ReplayId": "5"},
    {"Order_Number__c": "ORD-1", "Amount__c": 1e20},
    {"Amount__c": 1},
    {},
]


async def test_publish_event_errors_are_the_rest_api_errors(
    emu: Emulator,
    control: Control,
    http: aiohttp.ClientSession,
    token: str,
    subtests: pytest.Subtests,
) -> None:
    for fields in REFUSED_EVENTS:
        with subtests.test(fields=fields):
            rest_status, rest_body = await _rest(
                http, emu, token, "POST", "/sobjects/Order_Placed__e", fields
            )
            assert rest_status == 400, rest_body
            status, body = await control.call(
                "POST", "/events/publish", {"event": "Order_Placed__e", "fields": fields}
            )
            assert status == 400, body
            assert body == _as_control_error(rest_body)
    assert emu.bus.published_total == 0


async def test_publish_event_refuses_what_is_not_an_event(
    emu: Emulator, control: Control, subtests: pytest.Subtests
) -> None:
    for name in ("Nope__e", "Account", "AccountChangeEvent", ""):
        with subtests.test(name=name):
            status, body = await control.call("POST", "/events/publish", {"event": name})
            assert status == 400, body
            assert body["errorCode"] == "INVALID_TYPE"
            assert body["error"].startswith(f"sObject type '{name}' is not supported")
            assert body["fields"] == []
    assert emu.bus.published_total == 0


PUBLISH_BAD_BODIES: list[Any] = [
    {},
    {"fields": {"Order_Number__c": "ORD-1"}},
    {"event": 7},
    {"event": "Order_Placed__e", "fields": []},
    {"event": "Order_Placed__e", "fields": "Order_Number__c=1"},
    {"event": "Order_Placed__e", "values": {}},
    [],
]


async def test_publish_event_bad_bodies(
    emu: Emulator, control: Control, subtests: pytest.Subtests
) -> None:
    for body in PUBLISH_BAD_BODIES:
        with subtests.test(body=body):
            await control.bad("POST", "/events/publish", body)
    error = await control.bad("POST", "/events/publish", raw=b"{nope")
    assert "json" in error.lower()
    assert emu.bus.published_total == 0


# -- records --------------------------------------------------------------------------------


def _comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A change event without what differs between two writes (ids, times, keys)."""
    payload = dict(message["data"]["payload"])
    header = dict(payload.pop("ChangeEventHeader"))
    for key in ("recordIds", "transactionKey", "commitTimestamp", "commitNumber"):
        header.pop(key)
    for key in ("CreatedDate", "LastModifiedDate"):
        payload.pop(key, None)
    return {"header": header, "payload": payload, "schema": message["data"]["schema"]}


async def test_create_record_as_the_rest_api_does(
    emu: Emulator,
    control: Control,
    bayeux: Bayeux,
    http: aiohttp.ClientSession,
    token: str,
) -> None:
    await bayeux.start(ACCOUNTS)
    fields = {"Name": "Acme", "BillingCity": "Paris", "NumberOfEmployees": 12, "Industry": "Retail"}
    status, result = await control.call("POST", "/records/Account", {"fields": fields})
    assert status == 201, result
    assert set(result) == {"id", "replay_id"}
    record_id = result["id"]
    assert record_id.startswith("001")
    assert len(record_id) == 18
    events, _ = await bayeux.connect()
    (event,) = events
    assert event["data"]["event"]["replayId"] == result["replay_id"]
    header = event["data"]["payload"]["ChangeEventHeader"]
    assert header["changeType"] == "CREATE"
    assert header["recordIds"] == [record_id]
    assert header["changeOrigin"] == "com/salesforce/api/rest/62.0"
    assert event["data"]["payload"]["BillingAddress"] == {"City": "Paris"}
    # The same fields created over REST raise the same event.
    rest_status, rest_body = await _rest(http, emu, token, "POST", "/sobjects/Account", fields)
    assert rest_status == 201, rest_body
    events, _ = await bayeux.connect()
    (rest_event,) = events
    assert _comparable(rest_event) == _comparable(event)
    # And the record reads back over REST like the REST-created one.
    _, mine = await _rest(http, emu, token, "GET", f"/sobjects/Account/{record_id}")
    _, theirs = await _rest(http, emu, token, "GET", f"/sobjects/Account/{rest_body['id']}")
    for key in ("Name", "BillingAddress", "NumberOfEmployees", "Industry", "OwnerId"):
        assert mine[key] == theirs[key], key


async def test_create_record_raises_push_topic_events(emu: Emulator, control: Control) -> None:
    result = await control.ok(
        "POST",
        "/records/Opportunity",
        {
            "fields": {
                "Name": "Big",
                "Amount": 250000,
                "CloseDate": "2025-01-31",
                "StageName": "Prospecting",
            }
        },
    )
    (topic_event,) = emu.published("/topic/HighValueDeals")
    assert topic_event["data"]["sobject"]["Id"] == result["id"]
    assert topic_event["data"]["event"]["type"] == "created"
    (change,) = emu.published("/data/SalesEvents__chn")
    assert change["data"]["event"]["replayId"] == result["replay_id"]


async def test_create_record_of_an_object_without_change_events(
    emu: Emulator, control: Control
) -> None:
    result = await control.ok("POST", "/records/Case", {"fields": {"Subject": "Quiet"}})
    assert result["id"].startswith("500")
    assert result["replay_id"] is None
    assert emu.store.records["Case"][result["id"]]["Subject"] == "Quiet"


# Bodies the REST API's sObject create refuses, by object.
REFUSED_RECORDS: list[tuple[str, dict[str, Any]]] = [
    ("Account", {}),
    ("Account", {"Name": "A", "Nope__c": 1}),
    ("Account", {"Name": "x" * 256}),
    ("Account", {"Name": "A", "NumberOfEmployees": "many"}),
    ("Account", {"Name": "A", "BillingAddress": {"City": "Paris"}}),
    ("Account", {"Name": "A", "CreatedDate": "2024-01-01T00:00:00Z"}),
    ("Account", {"Name": "A", "ParentId": "not-an-id"}),
    ("Opportunity", {"Name": "O"}),
    ("Employee__c", {"Name": "E", "Department__c": "Marketing"}),
    ("Employee__c", {"Name": "E", "Email__c": "nobody"}),
    ("Contact", {"LastName": None}),
]


async def test_create_record_errors_are_the_rest_api_errors(
    emu: Emulator,
    control: Control,
    http: aiohttp.ClientSession,
    token: str,
    subtests: pytest.Subtests,
) -> None:
    for entity, fields in REFUSED_RECORDS:
        with subtests.test(entity=entity, fields=fields):
            rest_status, rest_body = await _rest(
                http, emu, token, "POST", f"/sobjects/{entity}", fields
            )
            assert rest_status == 400, rest_body
            status, body = await control.call("POST", f"/records/{entity}", {"fields": fields})
            assert status == rest_status, body
            assert body == _as_control_error(rest_body)
    assert emu.bus.published_total == 0
    assert all(not records for records in emu.store.records.values())


async def test_create_record_of_what_is_not_an_object(
    emu: Emulator,
    control: Control,
    http: aiohttp.ClientSession,
    token: str,
    subtests: pytest.Subtests,
) -> None:
    # Unknown names and change events: as the REST API answers them.
    for entity in ("Nope__c", "AccountChangeEvent"):
        with subtests.test(entity=entity):
            rest_status, rest_body = await _rest(
                http, emu, token, "POST", f"/sobjects/{entity}", {}
            )
            status, body = await control.call("POST", f"/records/{entity}", {"fields": {}})
            assert status == rest_status, body
            assert body == _as_control_error(rest_body)
    # A platform event is published, not created: events/publish does that.
    status, body = await control.call("POST", "/records/Order_Placed__e", {"fields": {}})
    assert status == 400, body
    assert body["errorCode"] == "INVALID_TYPE_FOR_OPERATION"
    assert "events/publish" in body["error"]
    assert emu.bus.published_total == 0


async def test_update_record(emu: Emulator, control: Control, bayeux: Bayeux) -> None:
    created = await control.ok("POST", "/records/Account", {"fields": {"Name": "Before"}})
    record_id = created["id"]
    await bayeux.start(ACCOUNTS)
    status, result = await control.call(
        "PATCH", f"/records/Account/{record_id}", {"fields": {"Name": "After", "Phone": "555"}}
    )
    assert status == 200, result
    assert result["id"] == record_id
    events, _ = await bayeux.connect()
    (event,) = events
    assert event["data"]["event"]["replayId"] == result["replay_id"]
    payload = event["data"]["payload"]
    assert payload["ChangeEventHeader"]["changeType"] == "UPDATE"
    assert payload["ChangeEventHeader"]["recordIds"] == [record_id]
    assert payload["ChangeEventHeader"]["changedFields"] == ["Name", "Phone", "LastModifiedDate"]
    assert payload["Name"] == "After"
    # The 15-character id works too, and a write that changes nothing raises no event.
    same = await control.ok(
        "PATCH", f"/records/account/{record_id[:15]}", {"fields": {"Phone": "555"}}
    )
    assert same == {"id": record_id, "replay_id": None}


async def test_delete_record(
    emu: Emulator,
    control: Control,
    bayeux: Bayeux,
    http: aiohttp.ClientSession,
    token: str,
) -> None:
    created = await control.ok("POST", "/records/Account", {"fields": {"Name": "Doomed"}})
    record_id = created["id"]
    await bayeux.start(ACCOUNTS)
    status, result = await control.call("DELETE", f"/records/Account/{record_id}")
    assert status == 200, result
    assert result["id"] == record_id
    events, _ = await bayeux.connect()
    (event,) = events
    assert event["data"]["event"]["replayId"] == result["replay_id"]
    header = event["data"]["payload"]["ChangeEventHeader"]
    assert header["changeType"] == "DELETE"
    assert header["recordIds"] == [record_id]
    rest_status, rest_body = await _rest(http, emu, token, "GET", f"/sobjects/Account/{record_id}")
    assert rest_status == 404
    assert rest_body[0]["errorCode"] == "ENTITY_IS_DELETED"
    # Deleting it again is refused as REST refuses it; undelete brings it back.
    status, body = await control.call("DELETE", f"/records/Account/{record_id}")
    assert status == 404, body
    assert body["errorCode"] == "ENTITY_IS_DELETED"
    await control.ok("POST", f"/records/{record_id}/undelete")
    await control.ok("PATCH", f"/records/Account/{record_id}", {"fields": {"Name": "Alive"}})


async def test_update_and_delete_errors_are_the_rest_api_errors(
    emu: Emulator,
    control: Control,
    http: aiohttp.ClientSession,
    token: str,
    subtests: pytest.Subtests,
) -> None:
    account = await control.ok("POST", "/records/Account", {"fields": {"Name": "Kept"}})
    contact = await control.ok("POST", "/records/Contact", {"fields": {"LastName": "Kept"}})
    published = emu.bus.published_total
    cases: list[tuple[str, str, dict[str, Any] | None]] = [
        ("PATCH", f"/Account/{account['id']}", {"Name": None}),
        ("PATCH", f"/Account/{account['id']}", {"Nope__c": 1}),
        ("PATCH", f"/Account/{account['id']}", {"Name": "x" * 256}),
        ("PATCH", f"/Account/{contact['id']}", {"Name": "Wrong object"}),
        ("PATCH", "/Account/001nope", {"Name": "Bad id"}),
        ("PATCH", "/Account/001000000000000AAA", {"Name": "Unknown id"}),
        ("PATCH", f"/Nope__c/{account['id']}", {"Name": "Unknown object"}),
        ("DELETE", f"/Account/{contact['id']}", None),
        ("DELETE", "/Account/001nope", None),
        ("DELETE", "/Account/001000000000000AAA", None),
        ("DELETE", f"/Nope__c/{account['id']}", None),
    ]
    for method, path, fields in cases:
        with subtests.test(method=method, path=path, fields=fields):
            rest_status, rest_body = await _rest(
                http, emu, token, method, f"/sobjects{path}", fields
            )
            assert rest_status in (400, 404), rest_body
            body = None if fields is None else {"fields": fields}
            status, result = await control.call(method, f"/records{path}", body)
            assert status == rest_status, result
            assert result == _as_control_error(rest_body)
    assert emu.bus.published_total == published
    assert emu.store.records["Account"][account["id"]]["Name"] == "Kept"


RECORD_BAD_BODIES: list[tuple[str, str, Any]] = [
    ("POST", "/records/Account", {"Name": "A"}),
    ("POST", "/records/Account", {"fields": []}),
    ("POST", "/records/Account", {"fields": {"Name": "A"}, "allOrNone": True}),
    ("POST", "/records/Account", []),
    ("PATCH", "/records/Account/001000000000000AAA", {"Name": "A"}),
    ("PATCH", "/records/Account/001000000000000AAA", {"fields": "Name=A"}),
]


async def test_record_bad_bodies(
    emu: Emulator, control: Control, subtests: pytest.Subtests
) -> None:
    for method, path, body in RECORD_BAD_BODIES:
        with subtests.test(method=method, path=path, body=body):
            await control.bad(method, path, body)
    for method, path in (("POST", "/records/Account"), ("PATCH", "/records/Account/001x")):
        with subtests.test(method=method, path=path, body="malformed JSON"):
            error = await control.bad(method, path, raw=b"{nope")
            assert "json" in error.lower()
    assert emu.bus.published_total == 0
    assert all(not records for records in emu.store.records.values())


async def test_record_routes_do_not_shadow_undelete(
    http: aiohttp.ClientSession, emu: Emulator, control: Control
) -> None:
    async with http.post(f"{emu.url}/_emulator/v1/records/Account/001000000000000AAA") as response:
        assert response.status == 405
    status, body = await control.call("POST", "/records/001000000000000AAA/undelete")
    assert status == 404, body
