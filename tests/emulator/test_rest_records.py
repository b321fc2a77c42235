"""Record writes over REST and the change events, PushTopic and generic events they raise.

Every event test subscribes a raw Bayeux client first and reads what a streaming client would
receive; `/meta/connect` is sent with `advice.timeout = 0` so that "no event" answers at once.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from sfstream_emulator import Emulator
from sfstream_emulator.ids import is_valid_id
from tests.emulator.conftest import Bayeux

V = "62.0"
BASE = f"/services/data/v{V}"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ISO_REST = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000$")
USER = "0055g00000EmuUsrAAA"
ORIGIN = f"com/salesforce/api/rest/{V}"


class Rest:
    """Plain REST calls with the session header."""

    def __init__(self, http: aiohttp.ClientSession, emu: Emulator, token: str) -> None:
        self.http = http
        self.emu = emu
        self.token = token

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        sent = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        if raw is not None:
            sent["Content-Type"] = "application/json"
        async with self.http.request(
            method,
            f"{self.emu.url}{BASE}{path}",
            json=body if raw is None else None,
            data=raw,
            params=params,
            headers=sent,
        ) as response:
            if response.status == 204:
                assert await response.read() == b""
                return 204, None
            assert response.content_type == "application/json", await response.text()
            return response.status, await response.json()

    async def create(self, sobject: str, values: dict[str, Any], **kwargs: Any) -> str:
        status, body = await self.call("POST", f"/sobjects/{sobject}", values, **kwargs)
        assert status == 201, body
        assert body["success"] is True
        assert body["errors"] == []
        return str(body["id"])

    async def update(self, sobject: str, record_id: str, values: dict[str, Any]) -> None:
        status, body = await self.call("PATCH", f"/sobjects/{sobject}/{record_id}", values)
        assert status == 204, body

    async def delete(self, sobject: str, record_id: str) -> None:
        status, body = await self.call("DELETE", f"/sobjects/{sobject}/{record_id}")
        assert status == 204, body

    async def query(self, soql: str) -> dict[str, Any]:
        status, body = await self.call("GET", "/query", params={"q": soql})
        assert status == 200, body
        result: dict[str, Any] = body
        return result


@pytest.fixture
def rest(emu: Emulator, http: aiohttp.ClientSession, token: str) -> Rest:
    return Rest(http, emu, token)


async def listen(bayeux: Bayeux, *channels: str) -> None:
    """Handshake and subscribe to `channels` from the tip."""
    reply = await bayeux.start(channels[0], -1)
    assert reply["successful"], reply
    for channel in channels[1:]:
        reply = await bayeux.subscribe(channel, -1)
        assert reply["successful"], reply


async def receive(bayeux: Bayeux) -> list[dict[str, Any]]:
    """Everything waiting for the client, without holding the poll."""
    events, reply = await bayeux.connect(advice={"timeout": 0})
    assert reply["successful"], reply
    return events


def on(events: list[dict[str, Any]], channel: str) -> list[dict[str, Any]]:
    return [e for e in events if e["channel"] == channel]


def header(event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = event["data"]["payload"]["ChangeEventHeader"]
    return result


def body_fields(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event["data"]["payload"].items() if k != "ChangeEventHeader"}


# -- create / read / update / delete ------------------------------------------------------------


async def test_create_and_read(rest: Rest) -> None:
    record_id = await rest.create(
        "Account", {"Name": "Acme", "BillingCity": "Paris", "NumberOfEmployees": 12}
    )
    assert len(record_id) == 18
    assert record_id.startswith("001")
    assert is_valid_id(record_id)
    status, record = await rest.call("GET", f"/sobjects/Account/{record_id}")
    assert status == 200
    assert record["attributes"] == {
        "type": "Account",
        "url": f"{BASE}/sobjects/Account/{record_id}",
    }
    assert record["Id"] == record_id
    assert record["Name"] == "Acme"
    assert record["NumberOfEmployees"] == 12
    assert record["IsDeleted"] is False
    assert record["OwnerId"] == USER
    assert record["CreatedById"] == USER
    assert ISO_REST.match(record["CreatedDate"])
    assert record["LastModifiedDate"] == record["CreatedDate"]
    assert record["Phone"] is None
    assert record["BillingAddress"]["city"] == "Paris"
    assert record["BillingAddress"]["street"] is None
    assert record["BillingCity"] == "Paris"
    assert record["ShippingAddress"] is None
    # A 15-character id reads the same record.
    status, again = await rest.call("GET", f"/sobjects/account/{record_id[:15]}")
    assert (status, again["Id"]) == (200, record_id)


async def test_read_selected_fields(rest: Rest) -> None:
    record_id = await rest.create("Account", {"Name": "Acme", "Rating": "Hot"})
    status, record = await rest.call(
        "GET", f"/sobjects/Account/{record_id}", params={"fields": "name,Rating"}
    )
    assert status == 200
    assert set(record) == {"attributes", "Name", "Rating"}
    status, body = await rest.call(
        "GET", f"/sobjects/Account/{record_id}", params={"fields": "Name,Bogus"}
    )
    assert status == 400
    assert body[0]["errorCode"] == "INVALID_FIELD"
    assert body[0]["message"].startswith("No such column 'Bogus' on entity 'Account'")


async def test_update_and_delete(rest: Rest) -> None:
    record_id = await rest.create("Account", {"Name": "Acme"})
    await rest.update("Account", record_id, {"Name": "Acme Corp", "Rating": "Warm"})
    _, record = await rest.call("GET", f"/sobjects/Account/{record_id}")
    assert (record["Name"], record["Rating"]) == ("Acme Corp", "Warm")
    await rest.delete("Account", record_id)
    status, body = await rest.call("GET", f"/sobjects/Account/{record_id}")
    assert status == 404
    assert body == [
        {"message": "entity is deleted", "errorCode": "ENTITY_IS_DELETED", "fields": []}
    ]
    status, body = await rest.call("DELETE", f"/sobjects/Account/{record_id}")
    assert (status, body[0]["errorCode"]) == (404, "ENTITY_IS_DELETED")
    status, body = await rest.call("PATCH", f"/sobjects/Account/{record_id}", {"Name": "x"})
    assert (status, body[0]["errorCode"]) == (404, "ENTITY_IS_DELETED")


async def test_unknown_records(rest: Rest) -> None:
    unknown = "001000000000001AAA"
    for method in ("GET", "PATCH", "DELETE"):
        status, body = await rest.call(method, f"/sobjects/Account/{unknown}", {})
        assert status == 404, method
        assert body[0]["errorCode"] == "NOT_FOUND"
    status, body = await rest.call("GET", "/sobjects/Account/notAnId")
    assert status == 404
    assert body == [
        {
            "message": "Provided external ID field does not exist or is not accessible: notAnId",
            "errorCode": "NOT_FOUND",
        }
    ]
    status, body = await rest.call("POST", "/sobjects/Nope__c", {"Name": "x"})
    assert (status, body[0]["errorCode"]) == (404, "NOT_FOUND")
    status, body = await rest.call("POST", "/sobjects/AccountChangeEvent", {"Name": "x"})
    assert (status, body[0]["errorCode"]) == (400, "INVALID_TYPE_FOR_OPERATION")


async def test_defaults_and_auto_numbers(rest: Rest) -> None:
    first = await rest.create("Case", {"Subject": "Broken"})
    second = await rest.create("Case", {"Subject": "Also broken"})
    _, one = await rest.call("GET", f"/sobjects/Case/{first}")
    _, two = await rest.call("GET", f"/sobjects/Case/{second}")
    assert (one["Status"], one["Priority"], one["IsEscalated"]) == ("New", "Medium", False)
    assert int(two["CaseNumber"]) == int(one["CaseNumber"]) + 1
    assert len(one["CaseNumber"]) == 8


async def test_contact_name_is_derived(rest: Rest) -> None:
    contact = await rest.create("Contact", {"FirstName": "Ada", "LastName": "Lovelace"})
    _, record = await rest.call("GET", f"/sobjects/Contact/{contact}")
    assert record["Name"] == "Ada Lovelace"
    await rest.update("Contact", contact, {"FirstName": "Augusta"})
    _, record = await rest.call("GET", f"/sobjects/Contact/{contact}")
    assert record["Name"] == "Augusta Lovelace"


# -- validation errors -----------------------------------------------------------------------


LONG = "x" * 256


VALIDATION_ERRORS: list[tuple[str, dict[str, Any], str, str, list[str]]] = [
    (
        "Account",
        {},
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing: [Name]",
        ["Name"],
    ),
    (
        "Account",
        {"Name": ""},
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing: [Name]",
        ["Name"],
    ),
    (
        "Account",
        {"Name": None},
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing: [Name]",
        ["Name"],
    ),
    (
        "Opportunity",
        {"Name": "Deal"},
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing: [CloseDate, StageName]",
        ["CloseDate", "StageName"],
    ),
    (
        "Account",
        {"Name": "A", "Bogus__c": 1},
        "INVALID_FIELD",
        "No such column 'Bogus__c' on sobject of type Account",
        [],
    ),
    (
        "Account",
        {"Name": LONG},
        "STRING_TOO_LONG",
        f"Account Name: data value too large: {LONG[:40]} (max length=255)",
        ["Name"],
    ),
    (
        "Contact",
        {"LastName": "L", "Email": "not-an-email"},
        "INVALID_EMAIL_ADDRESS",
        "Email: invalid email address: not-an-email",
        ["Email"],
    ),
    (
        "Employee__c",
        {"Name": "E", "Department__c": "Legal"},
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "Department: bad value for restricted picklist field: Legal",
        ["Department__c"],
    ),
    (
        "Account",
        {"Name": "A", "NumberOfEmployees": "many"},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of int from VALUE_STRING value many or request may "
        "be missing a required field",
        ["NumberOfEmployees"],
    ),
    (
        "Employee__c",
        {"Name": "E", "Active__c": "yes"},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of boolean from VALUE_STRING value yes or request may "
        "be missing a required field",
        ["Active__c"],
    ),
    (
        "Account",
        {"Name": ["A"]},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of string from START_ARRAY value [ or request may be "
        "missing a required field",
        ["Name"],
    ),
    (
        "Opportunity",
        {"Name": "D", "StageName": "Prospecting", "CloseDate": "tomorrow"},
        "JSON_PARSER_ERROR",
        "Cannot deserialize instance of date from VALUE_STRING value tomorrow or request "
        "may be missing a required field",
        ["CloseDate"],
    ),
    (
        "Contact",
        {"LastName": "L", "AccountId": "xyz"},
        "MALFORMED_ID",
        "Account ID: id value of incorrect type: xyz",
        ["AccountId"],
    ),
    (
        "Opportunity",
        {
            "Name": "D",
            "StageName": "Prospecting",
            "CloseDate": "2025-01-01",
            "Probability": 1000,
        },
        "NUMBER_OUTSIDE_VALID_RANGE",
        "Probability (%): value outside of valid range on numeric field: 1000",
        ["Probability"],
    ),
    (
        "Account",
        {"Name": "A", "NumberOfEmployees": 123456789},
        "NUMBER_OUTSIDE_VALID_RANGE",
        "Employees: value outside of valid range on numeric field: 123456789",
        ["NumberOfEmployees"],
    ),
]


async def test_create_validation_errors(
    rest: Rest, emu: Emulator, subtests: pytest.Subtests
) -> None:
    for sobject, values, code, message, fields in VALIDATION_ERRORS:
        with subtests.test(code=code, sobject=sobject, fields=fields):
            status, body = await rest.call("POST", f"/sobjects/{sobject}", values)
            assert status == 400
            assert body == [{"message": message, "errorCode": code, "fields": fields}]
    # Nothing was written, nothing was published.
    for sobject in {entry[0] for entry in VALIDATION_ERRORS}:
        assert (await rest.query(f"SELECT COUNT() FROM {sobject}"))["totalSize"] == 0
    assert emu.published("/data/ChangeEvents") == []


async def test_read_only_fields_are_refused(rest: Rest, subtests: pytest.Subtests) -> None:
    for values, field in (
        ({"Name": "A", "BillingAddress": {"City": "Paris"}}, "BillingAddress"),
        ({"Name": "A", "Id": "001000000000001AAA"}, "Id"),
        ({"Name": "A", "CreatedDate": "2020-01-01T00:00:00Z"}, "CreatedDate"),
        ({"Name": "A", "isdeleted": True}, "IsDeleted"),
        ({"Name": "A", "systemmodstamp": None}, "SystemModstamp"),
    ):
        with subtests.test(field):
            status, body = await rest.call("POST", "/sobjects/Account", values)
            assert status == 400
            assert body[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
            assert body[0]["fields"] == [field]
            assert body[0]["message"].startswith(f"Unable to create/update fields: {field}.")
    record_id = await rest.create("Account", {"Name": "A"})
    status, body = await rest.call(
        "PATCH", f"/sobjects/Account/{record_id}", {"CreatedById": record_id}
    )
    assert (status, body[0]["errorCode"]) == (400, "INVALID_FIELD_FOR_INSERT_UPDATE")


async def test_bad_json_bodies(rest: Rest) -> None:
    status, body = await rest.call("POST", "/sobjects/Account", raw=b"{not json")
    assert status == 400
    assert body[0]["errorCode"] == "JSON_PARSER_ERROR"
    status, body = await rest.call("POST", "/sobjects/Account", ["Name"])
    assert (status, body[0]["errorCode"]) == (400, "JSON_PARSER_ERROR")


async def test_values_are_normalised(rest: Rest) -> None:
    record_id = await rest.create(
        "Employee__c",
        {
            "Name": "E",
            "Hire_Date__c": "2024-02-29",
            "Last_Review__c": "2025-01-02T04:04:05.5+01:00",
            "Shift_Start__c": "08:30",
            "Level__c": 3.0,
            "Salary__c": "1234.567",
            "Phone__c": 5551234,
            "Manager__c": None,
            "Account__c": "",
        },
    )
    _, record = await rest.call("GET", f"/sobjects/Employee__c/{record_id}")
    assert record["Hire_Date__c"] == "2024-02-29"
    assert record["Last_Review__c"] == "2025-01-02T03:04:05.500+0000"
    assert record["Shift_Start__c"] == "08:30:00.000Z"
    assert record["Level__c"] == 3
    assert record["Salary__c"] == 1234.57
    assert record["Phone__c"] == "5551234"
    assert record["Account__c"] is None
    assert record["Active__c"] is True


async def test_update_validation_leaves_the_record_alone(
    rest: Rest, emu: Emulator, bayeux: Bayeux
) -> None:
    record_id = await rest.create("Account", {"Name": "Acme"})
    await listen(bayeux, "/data/AccountChangeEvent")
    status, body = await rest.call(
        "PATCH", f"/sobjects/Account/{record_id}", {"Rating": "Hot", "NumberOfEmployees": "x"}
    )
    assert (status, body[0]["errorCode"]) == (400, "JSON_PARSER_ERROR")
    status, body = await rest.call("PATCH", f"/sobjects/Account/{record_id}", {"Name": None})
    assert status == 400
    assert body == [
        {
            "message": "Required fields are missing: [Name]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["Name"],
        }
    ]
    _, record = await rest.call("GET", f"/sobjects/Account/{record_id}")
    assert (record["Name"], record["Rating"]) == ("Acme", None)
    assert await receive(bayeux) == []


# -- change events: CREATE, UPDATE, DELETE ------------------------------------------------------


async def test_create_event(rest: Rest, emu: Emulator, bayeux: Bayeux) -> None:
    await listen(bayeux, "/data/ChangeEvents", "/data/AccountChangeEvent")
    before_ms = emu.clock.now_ms()
    record_id = await rest.create(
        "Account",
        {"Name": "Acme", "BillingCity": "Paris", "BillingCountry": "France", "Rating": "Hot"},
    )
    after_ms = emu.clock.now_ms()
    events = await receive(bayeux)
    assert [e["channel"] for e in events] == ["/data/ChangeEvents", "/data/AccountChangeEvent"]
    # One event, on both channels, with one replay id.
    assert events[0]["data"] == events[1]["data"]
    event = events[1]
    data = event["data"]
    assert isinstance(data["event"]["replayId"], int)
    assert set(data) == {"schema", "payload", "event"}
    head = header(event)
    assert head["entityName"] == "Account"
    assert head["recordIds"] == [record_id]
    assert head["changeType"] == "CREATE"
    assert head["changeOrigin"] == ORIGIN
    assert UUID.match(head["transactionKey"])
    assert head["sequenceNumber"] == 1
    assert isinstance(head["commitTimestamp"], int)
    assert before_ms <= head["commitTimestamp"] <= after_ms
    assert isinstance(head["commitNumber"], int)
    assert head["commitUser"] == USER
    assert head["changedFields"] == []
    assert "nulledFields" not in head
    assert "diffFields" not in head
    fields = body_fields(event)
    _, record = await rest.call("GET", f"/sobjects/Account/{record_id}")
    assert fields == {
        "Name": "Acme",
        "Rating": "Hot",
        "BillingAddress": {"City": "Paris", "Country": "France"},
        "OwnerId": USER,
        "CreatedDate": record["CreatedDate"].replace("+0000", "Z"),
        "CreatedById": USER,
        "LastModifiedDate": record["LastModifiedDate"].replace("+0000", "Z"),
        "LastModifiedById": USER,
    }
    assert ISO_Z.match(fields["CreatedDate"])


async def test_create_event_of_every_field_type(rest: Rest, bayeux: Bayeux) -> None:
    await listen(bayeux, "/data/Employee__ChangeEvent")
    manager = await rest.create("Employee__c", {"Name": "Boss"})
    await receive(bayeux)
    await rest.create(
        "Employee__c",
        {
            "Name": "Ada",
            "Hire_Date__c": "2024-02-29",
            "Last_Review__c": "2025-01-02T03:04:05Z",
            "Skills__c": "Python;SQL",
            "Salary__c": 10.5,
            "Active__c": False,
            "Manager__c": manager,
            "Office_Location__Latitude__s": 52.5,
            "Office_Location__Longitude__s": 13.25,
        },
    )
    (event,) = await receive(bayeux)
    fields = body_fields(event)
    assert fields["Hire_Date__c"] == "2024-02-29"
    assert fields["Last_Review__c"] == "2025-01-02T03:04:05.000Z"
    assert fields["Skills__c"] == "Python;SQL"
    assert fields["Salary__c"] == 10.5
    assert fields["Active__c"] is False  # false is a value, not an empty field
    assert fields["Manager__c"] == manager
    assert fields["Office_Location__c"] == {"Latitude": 52.5, "Longitude": 13.25}
    assert "Bio__c" not in fields


async def test_update_event(rest: Rest, emu: Emulator, bayeux: Bayeux) -> None:
    record_id = await rest.create("Account", {"Name": "Acme", "Phone": "1", "BillingCity": "Paris"})
    await listen(bayeux, "/data/AccountChangeEvent")
    emu.advance(5)
    await rest.update(
        "Account",
        record_id,
        {"BillingCity": "Lyon", "Phone": None, "Name": "Acme", "Rating": "Hot"},
    )
    (event,) = await receive(bayeux)
    head = header(event)
    assert head["changeType"] == "UPDATE"
    assert head["recordIds"] == [record_id]
    assert sorted(head["changedFields"]) == [
        "BillingAddress.City",
        "LastModifiedDate",
        "Phone",
        "Rating",
    ]
    _, record = await rest.call("GET", f"/sobjects/Account/{record_id}")
    assert record["LastModifiedDate"] != record["CreatedDate"]
    # Only the changed fields (a nulled one with null) and LastModifiedDate.
    assert body_fields(event) == {
        "BillingAddress": {"City": "Lyon"},
        "Phone": None,
        "Rating": "Hot",
        "LastModifiedDate": record["LastModifiedDate"].replace("+0000", "Z"),
    }


async def test_update_of_a_contact_name(rest: Rest, bayeux: Bayeux) -> None:
    contact = await rest.create("Contact", {"FirstName": "Ada", "LastName": "Byron"})
    await listen(bayeux, "/data/ContactChangeEvent")
    await rest.update("Contact", contact, {"LastName": "Lovelace"})
    (event,) = await receive(bayeux)
    assert sorted(header(event)["changedFields"]) == ["LastModifiedDate", "Name.LastName"]
    fields = body_fields(event)
    assert fields["Name"] == {"LastName": "Lovelace"}
    assert set(fields) == {"Name", "LastModifiedDate"}


async def test_delete_event(rest: Rest, bayeux: Bayeux) -> None:
    record_id = await rest.create("Account", {"Name": "Acme"})
    await listen(bayeux, "/data/AccountChangeEvent")
    await rest.delete("Account", record_id)
    (event,) = await receive(bayeux)
    head = header(event)
    assert (head["changeType"], head["recordIds"], head["changedFields"]) == (
        "DELETE",
        [record_id],
        [],
    )
    assert body_fields(event) == {}


async def test_commit_numbers_grow_and_transactions_differ(
    rest: Rest, emu: Emulator, bayeux: Bayeux
) -> None:
    await listen(bayeux, "/data/ChangeEvents")
    first = await rest.create("Account", {"Name": "A"})
    await rest.update("Account", first, {"Name": "B"})
    await rest.create("Contact", {"LastName": "C"})
    await rest.delete("Account", first)
    events = await receive(bayeux)
    assert [header(e)["changeType"] for e in events] == ["CREATE", "UPDATE", "CREATE", "DELETE"]
    commits = [header(e)["commitNumber"] for e in events]
    assert commits == sorted(commits)
    assert len(set(commits)) == 4
    assert len({header(e)["transactionKey"] for e in events}) == 4
    assert all(header(e)["sequenceNumber"] == 1 for e in events)
    replays = [e["data"]["event"]["replayId"] for e in events]
    assert replays == sorted(replays)
    assert len(set(replays)) == 4
    stamps = [header(e)["commitTimestamp"] for e in events]
    assert stamps == sorted(stamps)


async def test_change_origin_names_the_client(rest: Rest, bayeux: Bayeux) -> None:
    await listen(bayeux, "/data/AccountChangeEvent")
    await rest.create(
        "Account", {"Name": "A"}, headers={"Sforce-Call-Options": "client=SfdcInternalAPI/"}
    )
    await rest.create(
        "Account", {"Name": "B"}, headers={"Sforce-Call-Options": "defaultNamespace=ns, client=etl"}
    )
    status, _ = await rest.call("POST", "/sobjects/Account", {"Name": "C"})
    assert status == 201
    status, _ = await rest.call("GET", "/limits")
    async with rest.http.post(
        f"{rest.emu.url}/services/data/v58.0/sobjects/Account",
        json={"Name": "D"},
        headers={"Authorization": f"Bearer {rest.token}"},
    ) as response:
        assert response.status == 201
    origins = [header(e)["changeOrigin"] for e in await receive(bayeux)]
    assert origins == [
        f"{ORIGIN};client=SfdcInternalAPI/",
        f"{ORIGIN};client=etl",
        ORIGIN,
        "com/salesforce/api/rest/58.0",
    ]


async def test_entities_not_selected_raise_no_events(
    rest: Rest, emu: Emulator, bayeux: Bayeux
) -> None:
    await listen(bayeux, "/data/ChangeEvents", "/data/CaseChangeEvent")
    case = await rest.create("Case", {"Subject": "Broken"})
    await rest.update("Case", case, {"Status": "Working"})
    await rest.delete("Case", case)
    assert await receive(bayeux) == []
    account = await rest.create("Account", {"Name": "A"})
    events = await receive(bayeux)
    assert [(e["channel"], header(e)["recordIds"]) for e in events] == [
        ("/data/ChangeEvents", [account])
    ]
    assert emu.published("/data/CaseChangeEvent") == []


async def test_unselected_entities_take_no_sequence_number(rest: Rest, bayeux: Bayeux) -> None:
    await listen(bayeux, "/data/ChangeEvents")
    status, body = await rest.call(
        "POST",
        "/composite/sobjects",
        {
            "records": [
                {"attributes": {"type": "Case"}, "Subject": "S"},
                account("A"),
                {"attributes": {"type": "Case"}, "Subject": "T"},
                {"attributes": {"type": "Contact"}, "LastName": "L"},
            ]
        },
    )
    assert status == 200
    events = await receive(bayeux)
    assert [header(e)["entityName"] for e in events] == ["Account", "Contact"]
    assert [header(e)["sequenceNumber"] for e in events] == [1, 2]
    assert [header(e)["recordIds"] for e in events] == [[body[1]["id"]], [body[3]["id"]]]


async def test_custom_channel_carries_its_members(
    rest: Rest, emu: Emulator, bayeux: Bayeux
) -> None:
    await listen(bayeux, "/data/SalesEvents__chn", "/data/OpportunityChangeEvent")
    await rest.create("Account", {"Name": "A"})
    deal = await rest.create(
        "Opportunity", {"Name": "Deal", "StageName": "Prospecting", "CloseDate": "2025-06-30"}
    )
    events = await receive(bayeux)
    assert [e["channel"] for e in events] == [
        "/data/SalesEvents__chn",
        "/data/OpportunityChangeEvent",
    ]
    custom, entity = events
    assert custom["data"]["event"]["replayId"] == entity["data"]["event"]["replayId"]
    assert header(custom)["recordIds"] == [deal]
    assert body_fields(custom)["CloseDate"] == "2025-06-30"
    assert body_fields(custom)["IsPrivate"] is False
    (on_all,) = emu.published("/data/ChangeEvents")[-1:]
    assert on_all["data"]["event"]["replayId"] == entity["data"]["event"]["replayId"]


# -- composite/sobjects -----------------------------------------------------------------------


def account(name: str, **values: Any) -> dict[str, Any]:
    return {"attributes": {"type": "Account"}, "Name": name, **values}


async def test_composite_create(rest: Rest, bayeux: Bayeux) -> None:
    await listen(bayeux, "/data/ChangeEvents")
    status, body = await rest.call(
        "POST",
        "/composite/sobjects",
        {
            "allOrNone": False,
            "records": [
                account("A", Rating="Hot"),
                {"attributes": {"type": "Contact"}, "LastName": "L"},
                account("B", Rating="Cold"),
            ],
        },
    )
    assert status == 200
    assert [(r["success"], r["errors"]) for r in body] == [(True, [])] * 3
    assert [r["id"][:3] for r in body] == ["001", "003", "001"]
    events = await receive(bayeux)
    assert [header(e)["recordIds"] for e in events] == [[r["id"]] for r in body]
    # One transaction: one key, one commit, sequence numbers 1..n.
    assert len({header(e)["transactionKey"] for e in events}) == 1
    assert len({header(e)["commitNumber"] for e in events}) == 1
    assert [header(e)["sequenceNumber"] for e in events] == [1, 2, 3]


async def test_composite_merges_identical_changes(rest: Rest, bayeux: Bayeux) -> None:
    status, created = await rest.call(
        "POST",
        "/composite/sobjects",
        {"records": [account("Twin"), account("Twin"), account("Other")]},
    )
    assert status == 200
    ids = [r["id"] for r in created]
    await listen(bayeux, "/data/AccountChangeEvent")
    status, updated = await rest.call(
        "PATCH",
        "/composite/sobjects",
        {
            "records": [
                {"attributes": {"type": "Account"}, "id": ids[0], "Rating": "Hot"},
                {"attributes": {"type": "Account"}, "Id": ids[1], "Rating": "Hot"},
                {"attributes": {"type": "Account"}, "id": ids[2], "Rating": "Cold"},
            ]
        },
    )
    assert status == 200
    assert updated == [{"id": i, "success": True, "errors": []} for i in ids]
    events = await receive(bayeux)
    assert [header(e)["recordIds"] for e in events] == [ids[:2], ids[2:]]
    assert [header(e)["sequenceNumber"] for e in events] == [1, 2]
    assert [body_fields(e)["Rating"] for e in events] == ["Hot", "Cold"]
    assert sorted(header(events[0])["changedFields"]) == ["LastModifiedDate", "Rating"]

    status, deleted = await rest.call(
        "DELETE", "/composite/sobjects", params={"ids": ",".join(ids)}
    )
    assert status == 200
    assert deleted == [{"id": i, "success": True, "errors": []} for i in ids]
    (event,) = await receive(bayeux)
    assert header(event)["changeType"] == "DELETE"
    assert header(event)["recordIds"] == ids


async def test_composite_create_merges_identical_records(rest: Rest, bayeux: Bayeux) -> None:
    await listen(bayeux, "/data/AccountChangeEvent")
    status, created = await rest.call(
        "POST", "/composite/sobjects", {"records": [account("Same"), account("Same")]}
    )
    assert status == 200
    (event,) = await receive(bayeux)
    assert header(event)["recordIds"] == [r["id"] for r in created]


async def test_composite_partial_success(rest: Rest, emu: Emulator, bayeux: Bayeux) -> None:
    await listen(bayeux, "/data/AccountChangeEvent")
    status, body = await rest.call(
        "POST",
        "/composite/sobjects",
        {"allOrNone": False, "records": [account("Good"), {"attributes": {"type": "Account"}}]},
    )
    assert status == 200
    good, bad = body
    assert good["success"] is True
    assert bad == {
        "success": False,
        "errors": [
            {
                "statusCode": "REQUIRED_FIELD_MISSING",
                "message": "Required fields are missing: [Name]",
                "fields": ["Name"],
            }
        ],
    }
    (event,) = await receive(bayeux)
    assert header(event)["recordIds"] == [good["id"]]


async def test_composite_all_or_none_rolls_back(rest: Rest, emu: Emulator, bayeux: Bayeux) -> None:
    existing = await rest.create("Account", {"Name": "Keep", "Rating": "Warm"})
    await listen(bayeux, "/data/ChangeEvents")
    status, body = await rest.call(
        "POST",
        "/composite/sobjects",
        {
            "allOrNone": True,
            "records": [account("One"), account("x" * 300), account("Three")],
        },
    )
    assert status == 200
    rolled_back = {
        "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "message": "Record rolled back because not all records were valid and the request was "
        "using AllOrNone header",
        "fields": [],
    }
    assert body[0] == {"success": False, "errors": [rolled_back]}
    assert body[1]["success"] is False
    assert body[1]["errors"][0]["statusCode"] == "STRING_TOO_LONG"
    assert body[2] == {"success": False, "errors": [rolled_back]}
    assert (await rest.query("SELECT COUNT() FROM Account"))["totalSize"] == 1

    status, body = await rest.call(
        "PATCH",
        "/composite/sobjects",
        {
            "allOrNone": True,
            "records": [
                {"attributes": {"type": "Account"}, "id": existing, "Rating": "Hot"},
                {"attributes": {"type": "Account"}, "id": existing, "Rating": "Lukewarm?" * 40},
            ],
        },
    )
    assert status == 200
    assert [r["success"] for r in body] == [False, False]
    _, record = await rest.call("GET", f"/sobjects/Account/{existing}")
    assert record["Rating"] == "Warm"

    status, body = await rest.call(
        "DELETE",
        "/composite/sobjects",
        params={"ids": f"{existing},001000000000001AAA", "allOrNone": "true"},
    )
    assert status == 200
    assert [r["success"] for r in body] == [False, False]
    status, _ = await rest.call("GET", f"/sobjects/Account/{existing}")
    assert status == 200
    # Nothing of the three rolled-back requests was published.
    assert await receive(bayeux) == []


async def test_composite_limits_and_errors(rest: Rest) -> None:
    status, body = await rest.call(
        "POST", "/composite/sobjects", {"records": [account(f"A{i}") for i in range(201)]}
    )
    assert status == 400
    assert body == [
        {
            "message": "record limit reached. cannot submit more than 200 records into this call",
            "errorCode": "EXCEEDED_ID_LIMIT",
        }
    ]
    status, body = await rest.call(
        "DELETE",
        "/composite/sobjects",
        params={"ids": ",".join(["001000000000001AAA"] * 201)},
    )
    assert (status, body[0]["errorCode"]) == (400, "EXCEEDED_ID_LIMIT")
    status, body = await rest.call(
        "POST", "/composite/sobjects", {"records": [account(f"A{i}") for i in range(200)]}
    )
    assert status == 200
    assert len(body) == 200
    assert all(r["success"] for r in body)
    status, body = await rest.call("POST", "/composite/sobjects", {"nope": []})
    assert (status, body[0]["errorCode"]) == (400, "JSON_PARSER_ERROR")
    status, body = await rest.call(
        "POST",
        "/composite/sobjects",
        {"records": [{"Name": "untyped"}, {"attributes": {"type": "Nope"}}]},
    )
    assert status == 200
    assert [r["errors"][0]["statusCode"] for r in body] == ["INVALID_TYPE", "INVALID_TYPE"]
    status, body = await rest.call("DELETE", "/composite/sobjects")
    assert (status, body[0]["errorCode"]) == (400, "MISSING_ARGUMENT")


async def test_composite_update_errors(rest: Rest) -> None:
    gone = await rest.create("Account", {"Name": "Gone"})
    await rest.delete("Account", gone)
    status, body = await rest.call(
        "PATCH",
        "/composite/sobjects",
        {
            "records": [
                {"attributes": {"type": "Account"}, "Rating": "Hot"},
                {"attributes": {"type": "Account"}, "id": gone, "Rating": "Hot"},
                {"attributes": {"type": "Account"}, "id": "001000000000001AAA", "Rating": "Hot"},
            ]
        },
    )
    assert status == 200
    assert [r["errors"][0]["statusCode"] for r in body] == [
        "MISSING_ARGUMENT",
        "ENTITY_IS_DELETED",
        "INVALID_CROSS_REFERENCE_KEY",
    ]
    status, body = await rest.call("DELETE", "/composite/sobjects", params={"ids": f"{gone},bad"})
    assert status == 200
    assert [r["errors"][0]["statusCode"] for r in body] == ["ENTITY_IS_DELETED", "MALFORMED_ID"]


async def test_composite_read(rest: Rest) -> None:
    first = await rest.create("Account", {"Name": "A", "Rating": "Hot"})
    second = await rest.create("Account", {"Name": "B"})
    status, body = await rest.call(
        "GET",
        "/composite/sobjects/Account",
        params={"ids": f"{first},{second},001000000000001AAA", "fields": "Name,Rating"},
    )
    assert status == 200
    assert body[2] is None
    assert [(r["Name"], r["Rating"]) for r in body[:2]] == [("A", "Hot"), ("B", None)]
    assert body[0]["attributes"]["type"] == "Account"
    status, body = await rest.call("GET", "/composite/sobjects/Account", params={"ids": first})
    assert (status, body[0]["errorCode"]) == (400, "MISSING_ARGUMENT")


# -- platform events ---------------------------------------------------------------------------


async def test_publish_platform_event(rest: Rest, emu: Emulator, bayeux: Bayeux) -> None:
    await listen(bayeux, "/event/Order_Placed__e")
    status, body = await rest.call(
        "POST",
        "/sobjects/Order_Placed__e",
        {"Order_Number__c": "A-1", "Amount__c": 10.5, "Placed_At__c": "2025-01-02T03:04:05Z"},
    )
    assert status == 201
    assert body["id"].startswith("e01")
    assert len(body["id"]) == 18
    assert body["success"] is True
    (enqueued,) = body["errors"]
    assert enqueued["statusCode"] == "OPERATION_ENQUEUED"
    assert enqueued["fields"] == []
    event_uuid = enqueued["message"]
    assert UUID.match(event_uuid)

    (event,) = await receive(bayeux)
    assert event["channel"] == "/event/Order_Placed__e"
    data = event["data"]
    assert data["event"]["EventUuid"] == event_uuid
    assert isinstance(data["event"]["replayId"], int)
    payload = data["payload"]
    assert ISO_Z.match(payload["CreatedDate"])
    assert payload["CreatedById"] == USER
    assert payload["Order_Number__c"] == "A-1"
    assert payload["Amount__c"] == 10.5
    assert payload["Placed_At__c"] == "2025-01-02T03:04:05.000Z"
    assert payload["Express__c"] is False
    assert payload["Notes__c"] is None
    assert "EventUuid" not in payload
    assert "ReplayId" not in payload
    _, schema = await rest.call("GET", "/sobjects/Order_Placed__e/eventSchema")
    assert data["schema"] == schema["uuid"]


async def test_platform_event_errors(rest: Rest, emu: Emulator) -> None:
    status, body = await rest.call("POST", "/sobjects/Order_Placed__e", {"Amount__c": 1})
    assert status == 400
    assert body == [
        {
            "message": "Required fields are missing: [Order_Number__c]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["Order_Number__c"],
        }
    ]
    status, body = await rest.call(
        "POST", "/sobjects/Order_Placed__e", {"Order_Number__c": "1", "Nope__c": 1}
    )
    assert (status, body[0]["errorCode"]) == (400, "INVALID_FIELD")
    status, body = await rest.call(
        "POST",
        "/sobjects/Order_Placed__e",
        {"Order_Number__c": "1", "CreatedDate": "2020-01-01T00:00:00Z"},
    )
    assert (status, body[0]["errorCode"]) == (400, "INVALID_FIELD_FOR_INSERT_UPDATE")
    status, body = await rest.call(
        "POST", "/sobjects/Order_Placed__e", {"Order_Number__c": "1", "Amount__c": "lots"}
    )
    assert (status, body[0]["errorCode"]) == (400, "JSON_PARSER_ERROR")
    assert emu.published("/event/Order_Placed__e") == []


async def test_publish_platform_events_in_composite(rest: Rest, bayeux: Bayeux) -> None:
    await listen(bayeux, "/event/Low_Ink__e")
    status, body = await rest.call(
        "POST",
        "/composite/sobjects",
        {
            "records": [
                {"attributes": {"type": "Low_Ink__e"}, "Printer_Model__c": "XZO-5"},
                {"attributes": {"type": "Low_Ink__e"}, "Ink_Percentage__c": 0.2},
            ]
        },
    )
    assert status == 200
    assert all(r["success"] for r in body)
    uuids = [r["errors"][0]["message"] for r in body]
    events = await receive(bayeux)
    assert [e["data"]["event"]["EventUuid"] for e in events] == uuids
    assert events[1]["data"]["payload"]["Ink_Percentage__c"] == 0.2


async def test_composite_platform_events_wait_for_the_commit(
    rest: Rest, emu: Emulator, bayeux: Bayeux
) -> None:
    await listen(bayeux, "/event/Order_Placed__e")
    order = {"attributes": {"type": "Order_Placed__e"}, "Order_Number__c": "A-1"}
    status, body = await rest.call(
        "POST", "/composite/sobjects", {"allOrNone": True, "records": [order, account("")]}
    )
    assert status == 200
    assert body[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert body[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert await receive(bayeux) == []
    bad_order = {"attributes": {"type": "Order_Placed__e"}, "Amount__c": 1}
    status, body = await rest.call(
        "POST", "/composite/sobjects", {"records": [bad_order, order, account("Fine")]}
    )
    assert status == 200
    assert body[0] == {
        "success": False,
        "errors": [
            {
                "statusCode": "REQUIRED_FIELD_MISSING",
                "message": "Required fields are missing: [Order_Number__c]",
                "fields": ["Order_Number__c"],
            }
        ],
    }
    assert body[1]["success"] is True
    assert body[1]["id"].startswith("e01")
    assert body[2]["success"] is True
    (event,) = await receive(bayeux)
    assert event["data"]["event"]["EventUuid"] == body[1]["errors"][0]["message"]


# -- PushTopic ---------------------------------------------------------------------------------


def deal(name: str, amount: float | None, **values: Any) -> dict[str, Any]:
    return {
        "Name": name,
        "Amount": amount,
        "StageName": "Prospecting",
        "CloseDate": "2025-06-30",
        **values,
    }


async def test_push_topic_events(rest: Rest, emu: Emulator, bayeux: Bayeux) -> None:
    await listen(bayeux, "/topic/HighValueDeals")
    small = await rest.create("Opportunity", deal("Small", 50))
    assert await receive(bayeux) == []
    big = await rest.create("Opportunity", deal("Big", 200000))
    (created,) = await receive(bayeux)
    assert created["channel"] == "/topic/HighValueDeals"
    event = created["data"]["event"]
    assert event["type"] == "created"
    assert ISO_Z.match(event["createdDate"])
    assert isinstance(event["replayId"], int)
    assert created["data"]["sobject"] == {
        "Id": big,
        "Name": "Big",
        "Amount": 200000,
        "StageName": "Prospecting",
        "AccountId": None,
    }
    # An update that makes a record match the WHERE clause notifies.
    await rest.update("Opportunity", small, {"Amount": 150000})
    (updated,) = await receive(bayeux)
    assert updated["data"]["event"]["type"] == "updated"
    assert updated["data"]["sobject"]["Id"] == small
    # Referenced (default): a change to a field the query does not name is silent.
    await rest.update("Opportunity", big, {"NextStep": "Call"})
    assert await receive(bayeux) == []
    await rest.update("Opportunity", big, {"StageName": "Negotiation"})
    (updated,) = await receive(bayeux)
    assert updated["data"]["sobject"]["StageName"] == "Negotiation"
    # A record that no longer matches is not sent.
    await rest.update("Opportunity", big, {"Amount": 10})
    assert await receive(bayeux) == []
    await rest.delete("Opportunity", small)
    (deleted,) = await receive(bayeux)
    assert deleted["data"]["event"]["type"] == "deleted"
    assert deleted["data"]["sobject"]["Id"] == small


async def create_topic(rest: Rest, **values: Any) -> str:
    return await rest.create("PushTopic", {"ApiVersion": 62.0, **values})


@pytest.mark.parametrize(
    ("notify", "expected"),
    [
        ("All", ["Rating", "Name", "Phone"]),
        ("Referenced", ["Rating", "Name"]),
        ("Select", ["Name"]),
        ("Where", ["Rating"]),
    ],
)
async def test_notify_for_fields(
    rest: Rest, bayeux: Bayeux, notify: str, expected: list[str]
) -> None:
    await create_topic(
        rest,
        Name="Accounts",
        Query="SELECT Id, Name FROM Account WHERE Rating != 'Cold'",
        NotifyForFields=notify,
    )
    record_id = await rest.create("Account", {"Name": "A", "Rating": "Hot"})
    await listen(bayeux, "/topic/Accounts")
    seen = []
    for field, value in (("Rating", "Warm"), ("Name", "B"), ("Phone", "123")):
        await rest.update("Account", record_id, {field: value})
        events = await receive(bayeux)
        assert len(events) <= 1
        if events:
            assert events[0]["data"]["event"]["type"] == "updated"
            assert set(events[0]["data"]["sobject"]) == {"Id", "Name"}
            seen.append(field)
    assert seen == expected


async def test_push_topic_operations(rest: Rest, bayeux: Bayeux) -> None:
    topic = await create_topic(
        rest,
        Name="NoCreates",
        Query="SELECT Id, Name, Rating FROM Account",
        NotifyForOperationCreate=False,
        NotifyForOperationDelete=False,
    )
    assert topic.startswith("0IF")
    await listen(bayeux, "/topic/NoCreates")
    record_id = await rest.create("Account", {"Name": "A"})
    await rest.delete("Account", record_id)
    assert await receive(bayeux) == []
    other = await rest.create("Account", {"Name": "B"})
    await rest.update("Account", other, {"Rating": "Hot"})
    (event,) = await receive(bayeux)
    assert event["data"]["event"]["type"] == "updated"
    assert event["data"]["sobject"] == {"Id": other, "Name": "B", "Rating": "Hot"}


async def test_push_topic_where_on_dates(rest: Rest, bayeux: Bayeux) -> None:
    await create_topic(
        rest,
        Name="Reviewed",
        Query="SELECT Id, Last_Review__c, Hire_Date__c FROM Employee__c "
        "WHERE Last_Review__c = 2025-01-02T04:04:05+01:00 AND Hire_Date__c > 2020-01-01",
    )
    await listen(bayeux, "/topic/Reviewed")
    await rest.create(
        "Employee__c",
        {"Name": "No", "Last_Review__c": "2025-01-02T03:04:05Z", "Hire_Date__c": "2019-05-05"},
    )
    yes = await rest.create(
        "Employee__c",
        {"Name": "Yes", "Last_Review__c": "2025-01-02T03:04:05Z", "Hire_Date__c": "2021-05-05"},
    )
    (event,) = await receive(bayeux)
    assert event["data"]["sobject"] == {
        "Id": yes,
        "Last_Review__c": "2025-01-02T03:04:05.000+0000",
        "Hire_Date__c": "2021-05-05",
    }


async def test_push_topic_crud(rest: Rest, bayeux: Bayeux) -> None:
    topic = await create_topic(rest, Name="Cities", Query="SELECT Id, BillingCity FROM Account")
    result = await rest.query(
        "SELECT Id, Name, Query, ApiVersion, IsActive, NotifyForFields FROM PushTopic "
        "WHERE Name = 'Cities'"
    )
    (row,) = result["records"]
    assert row["Id"] == topic
    assert row["ApiVersion"] == 62.0
    assert row["IsActive"] is True
    assert row["NotifyForFields"] == "Referenced"
    status, read = await rest.call("GET", f"/sobjects/PushTopic/{topic}")
    assert (status, read["Name"]) == (200, "Cities")

    await listen(bayeux, "/topic/Cities")
    status, _ = await rest.call(
        "PATCH", f"/sobjects/PushTopic/{topic}", {"NotifyForOperationCreate": False}
    )
    assert status == 204
    await rest.create("Account", {"Name": "A", "BillingCity": "Oslo"})
    assert await receive(bayeux) == []

    status, body = await rest.call(
        "PATCH", f"/sobjects/PushTopic/{topic}", {"Query": "SELECT Name FROM Account"}
    )
    assert status == 400
    assert body[0]["fields"] == ["Query"]
    status, body = await rest.call(
        "PATCH", f"/sobjects/PushTopic/{topic}", {"NotifyForFields": "Sometimes"}
    )
    assert (status, body[0]["errorCode"]) == (400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST")
    status, body = await rest.call(
        "PATCH", f"/sobjects/PushTopic/{topic}", {"Id": "0IF000000000001AAA"}
    )
    assert (status, body[0]["errorCode"]) == (400, "INVALID_FIELD_FOR_INSERT_UPDATE")
    status, body = await rest.call(
        "PATCH", f"/sobjects/PushTopic/{topic}", {"Name": "HighValueDeals"}
    )
    assert (status, body[0]["errorCode"]) == (400, "DUPLICATE_VALUE")
    (row,) = (await rest.query(f"SELECT Query FROM PushTopic WHERE Id = '{topic}'"))["records"]
    assert row["Query"] == "SELECT Id, BillingCity FROM Account"

    # Renaming a topic renames its channel.
    status, _ = await rest.call(
        "PATCH",
        f"/sobjects/PushTopic/{topic}",
        {"Name": "Towns", "NotifyForOperationCreate": True},
    )
    assert status == 204
    assert (await bayeux.subscribe("/topic/Towns", -1))["successful"]
    await rest.create("Account", {"Name": "B", "BillingCity": "Bergen"})
    (event,) = await receive(bayeux)
    assert event["channel"] == "/topic/Towns"
    assert event["data"]["sobject"]["BillingCity"] == "Bergen"

    status, _ = await rest.call("DELETE", f"/sobjects/PushTopic/{topic}")
    assert status == 204
    assert (await rest.query("SELECT COUNT() FROM PushTopic WHERE Name = 'Towns'"))[
        "totalSize"
    ] == 0
    status, _ = await rest.call("DELETE", f"/sobjects/PushTopic/{topic}")
    assert status == 404


TOPIC_ERRORS: list[tuple[dict[str, Any], str, str]] = [
    ({"Name": "HighValueDeals", "Query": "SELECT Id FROM Account"}, "DUPLICATE_VALUE", "Name"),
    ({"Name": "N" * 26, "Query": "SELECT Id FROM Account"}, "STRING_TOO_LONG", "Name"),
    ({"Query": "SELECT Id FROM Account"}, "REQUIRED_FIELD_MISSING", "Name"),
    ({"Name": "T", "Query": "SELEKT Id FROM Account"}, "INVALID_FIELD", "Query"),
    ({"Name": "T", "Query": "SELECT Id FROM Nope__c"}, "INVALID_FIELD", "Query"),
    ({"Name": "T", "Query": "SELECT Name FROM Account"}, "INVALID_FIELD", "Query"),
    ({"Name": "T", "Query": "SELECT Id, Bogus FROM Account"}, "INVALID_FIELD", "Query"),
    (
        {"Name": "T", "Query": "SELECT Id FROM Account", "NotifyForFields": "Some"},
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "NotifyForFields",
    ),
    (
        {"Name": "T", "Query": "SELECT Id FROM Account", "IsActive": "maybe"},
        "JSON_PARSER_ERROR",
        "IsActive",
    ),
    (
        {"Name": "T", "Query": "SELECT Id FROM Account", "ApiVersion": "new"},
        "JSON_PARSER_ERROR",
        "ApiVersion",
    ),
    (
        {"Name": "T", "Query": "SELECT Id FROM Account", "Id": "0IF000000000001AAA"},
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        "Id",
    ),
]


async def test_push_topic_create_errors(rest: Rest, subtests: pytest.Subtests) -> None:
    for values, code, field in TOPIC_ERRORS:
        with subtests.test(code=code, field=field, values=values):
            status, body = await rest.call("POST", "/sobjects/PushTopic", values)
            assert status == 400, body
            assert body[0]["errorCode"] == code
            assert body[0]["fields"] == [field]
    assert (await rest.query("SELECT COUNT() FROM PushTopic"))["totalSize"] == 1


# -- generic streaming -------------------------------------------------------------------------


async def channel_id(rest: Rest, name: str) -> str:
    (row,) = (await rest.query(f"SELECT Id, Name FROM StreamingChannel WHERE Name = '{name}'"))[
        "records"
    ]
    return str(row["Id"])


async def test_streaming_channel_push(rest: Rest, bayeux: Bayeux) -> None:
    cid = await channel_id(rest, "/u/Notifications")
    assert cid.startswith("0M6")
    status, body = await rest.call(
        "POST",
        f"/sobjects/StreamingChannel/{cid}/push",
        {"pushEvents": [{"payload": "nobody listens", "userIds": []}]},
    )
    assert (status, body) == (200, [{"fanoutCount": 0, "userOnlineStatus": {}}])

    await listen(bayeux, "/u/Notifications")
    status, body = await rest.call(
        "POST",
        f"/sobjects/StreamingChannel/{cid}/push",
        {
            "pushEvents": [
                {"payload": "This is a message.", "userIds": []},
                {"payload": '{"json": "stays a string"}', "userIds": [USER]},
            ]
        },
    )
    assert status == 200
    assert body == [
        {"fanoutCount": 1, "userOnlineStatus": {}},
        {"fanoutCount": 1, "userOnlineStatus": {USER: True}},
    ]
    events = await receive(bayeux)
    assert [e["data"]["payload"] for e in events] == [
        "This is a message.",
        '{"json": "stays a string"}',
    ]
    first = events[0]
    assert first["channel"] == "/u/Notifications"
    assert set(first["data"]) == {"event", "payload"}
    assert set(first["data"]["event"]) == {"createdDate", "replayId"}
    assert ISO_Z.match(first["data"]["event"]["createdDate"])
    assert first["data"]["event"]["replayId"] < events[1]["data"]["event"]["replayId"]

    status, online = await rest.call("GET", f"/sobjects/StreamingChannel/{cid}/push")
    assert (status, online) == (200, {"OnlineUserIds": [USER]})


async def test_streaming_channel_push_errors(rest: Rest) -> None:
    cid = await channel_id(rest, "/u/Notifications")
    path = f"/sobjects/StreamingChannel/{cid}/push"
    for body in ({"pushEvents": []}, {}, {"pushEvents": [{"payload": {"not": "a string"}}]}):
        status, answer = await rest.call("POST", path, body)
        assert (status, answer[0]["errorCode"]) == (400, "JSON_PARSER_ERROR"), body
    status, answer = await rest.call("POST", path, {"pushEvents": [{"payload": "x" * 3001}]})
    assert (status, answer[0]["errorCode"]) == (400, "STRING_TOO_LONG")
    status, answer = await rest.call(
        "POST", "/sobjects/StreamingChannel/0M6000000000001AAA/push", {"pushEvents": []}
    )
    assert (status, answer[0]["errorCode"]) == (404, "NOT_FOUND")


async def test_create_streaming_channel(rest: Rest, bayeux: Bayeux) -> None:
    cid = await rest.create("StreamingChannel", {"Name": "/u/Fresh", "Description": "new"})
    assert cid.startswith("0M6")
    status, body = await rest.call("POST", "/sobjects/StreamingChannel", {"Name": "/u/Fresh"})
    assert (status, body[0]["errorCode"]) == (400, "DUPLICATE_VALUE")
    status, body = await rest.call("POST", "/sobjects/StreamingChannel", {"Name": "Fresh"})
    assert status == 400
    await listen(bayeux, "/u/Fresh")
    status, body = await rest.call(
        "POST", f"/sobjects/StreamingChannel/{cid}/push", {"pushEvents": [{"payload": "hi"}]}
    )
    assert (status, body[0]["fanoutCount"]) == (200, 1)
    (event,) = await receive(bayeux)
    assert (event["channel"], event["data"]["payload"]) == ("/u/Fresh", "hi")
