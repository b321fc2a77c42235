"""REST discovery over real HTTP: versions, describe, eventSchema, limits, and the session gate."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
import fastavro
import pytest

from sfstream_emulator import Emulator, FieldDef

V = "62.0"
NOT_FOUND = [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]
SESSION_INVALID = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


async def get(
    http: aiohttp.ClientSession,
    emu: Emulator,
    token: str | None,
    path: str,
    params: dict[str, str] | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = path if path.startswith("http") else f"{emu.url}{path}"
    async with http.get(url, headers=headers, params=params) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


async def post(
    http: aiohttp.ClientSession, emu: Emulator, token: str, path: str, body: Any
) -> tuple[int, Any]:
    async with http.post(
        f"{emu.url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        return response.status, await response.json()


def by_name(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in entries}


# -- versions and resources ---------------------------------------------------------------


async def test_versions_need_no_session(emu: Emulator, http: aiohttp.ClientSession) -> None:
    for path in ("/services/data", "/services/data/"):
        status, body = await get(http, emu, None, path)
        assert status == 200
        versions = [v["version"] for v in body]
        assert versions == sorted(versions, key=float)
        assert versions[0] == "20.0"
        assert versions[-1] == "65.0"
        entries = {v["version"]: v for v in body}
        assert entries["62.0"] == {
            "label": "Winter '25",
            "url": "/services/data/v62.0",
            "version": "62.0",
        }
        assert entries["20.0"]["label"] == "Winter '11"
        assert entries["59.0"]["label"] == "Winter '24"
        assert entries["60.0"]["label"] == "Spring '24"
        assert entries["61.0"]["label"] == "Summer '24"


async def test_resources(emu: Emulator, http: aiohttp.ClientSession, token: str) -> None:
    status, body = await get(http, emu, token, f"/services/data/v{V}/")
    assert status == 200
    for name in ("sobjects", "query", "queryAll", "tooling", "limits", "composite", "event"):
        assert body[name] == f"/services/data/v{V}/{name}"


# -- the session gate and unknown resources ---------------------------------------------------


GATED_PATHS = [
    f"/services/data/v{V}/",
    f"/services/data/v{V}/sobjects",
    f"/services/data/v{V}/sobjects/Account/describe",
    f"/services/data/v{V}/sobjects/Low_Ink__e/eventSchema",
    f"/services/data/v{V}/limits",
    f"/services/data/v{V}/query?q=SELECT+Id+FROM+Account",
    "/services/data/v99.0/sobjects",
]


async def test_missing_or_bad_token_is_401(
    emu: Emulator, http: aiohttp.ClientSession, subtests: pytest.Subtests
) -> None:
    for path in GATED_PATHS:
        for authorization in (None, "Bearer nope", "OAuth", "", "Basic Zm9vOmJhcg=="):
            with subtests.test(path=path, authorization=authorization):
                headers = {} if authorization is None else {"Authorization": authorization}
                async with http.get(f"{emu.url}{path}", headers=headers) as response:
                    assert response.status == 401
                    assert response.content_type == "application/json"
                    assert await response.json() == SESSION_INVALID


async def test_unknown_version_is_404(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    for path in ("/services/data/v99.0/sobjects", "/services/data/v19.0/", "/services/data/v1.0"):
        status, body = await get(http, emu, token, path)
        assert (status, body) == (404, NOT_FOUND), path


async def test_unknown_resources_are_404(
    emu: Emulator, http: aiohttp.ClientSession, token: str, subtests: pytest.Subtests
) -> None:
    for path in (
        "/sobjects/Nope__c/describe",
        "/sobjects/Nope__c",
        "/sobjects/NopeChangeEvent/describe",
        "/sobjects/CaseChangeEvents/describe",
        "/sobjects/Nope__e/eventSchema",
        "/sobjects/Account/eventSchema",
        "/event/eventSchema/notAnId",
        "/no/such/resource",
    ):
        with subtests.test(path):
            status, body = await get(http, emu, token, f"/services/data/v{V}{path}")
            assert (status, body) == (404, NOT_FOUND)


# -- describe global --------------------------------------------------------------------------


async def test_describe_global(emu: Emulator, http: aiohttp.ClientSession, token: str) -> None:
    status, body = await get(http, emu, token, f"/services/data/v{V}/sobjects/")
    assert status == 200
    assert body["encoding"] == "UTF-8"
    assert body["maxBatchSize"] == 200
    entries = by_name(body["sobjects"])
    names = [e["name"] for e in body["sobjects"]]
    assert names == sorted(names, key=str.lower)

    account = entries["Account"]
    assert account["keyPrefix"] == "001"
    assert account["associateEntityType"] is None
    assert account["associateParentEntity"] is None
    assert account["queryable"] is True
    assert account["createable"] is True
    assert account["custom"] is False
    assert account["urls"]["rowTemplate"] == f"/services/data/v{V}/sobjects/Account/{{ID}}"

    for parent in ("Account", "Contact", "Opportunity", "Case"):
        change = entries[f"{parent}ChangeEvent"]
        assert change["associateEntityType"] == "ChangeEvent"
        assert change["associateParentEntity"] == parent
        assert change["queryable"] is False
        assert change["createable"] is False
        assert change["urls"]["eventSchema"] == (
            f"/services/data/v{V}/sobjects/{parent}ChangeEvent/eventSchema"
        )
    custom_change = entries["Employee__ChangeEvent"]
    assert custom_change["associateParentEntity"] == "Employee__c"
    assert custom_change["custom"] is True
    assert entries["Employee__c"]["keyPrefix"] == "a05"

    events = {n: e for n, e in entries.items() if n.endswith("__e")}
    assert set(events) == {"Order_Placed__e", "Low_Ink__e"}
    assert events["Order_Placed__e"]["keyPrefix"] == "e01"
    assert events["Low_Ink__e"]["keyPrefix"] == "e02"
    for event in events.values():
        assert event["createable"] is True
        assert event["queryable"] is False
        assert event["custom"] is True
        assert event["associateEntityType"] is None
        assert event["urls"]["eventSchema"].endswith(f"/sobjects/{event['name']}/eventSchema")

    assert entries["PushTopic"]["keyPrefix"] == "0IF"
    assert entries["StreamingChannel"]["keyPrefix"] == "0M6"


async def test_describe_global_follows_the_request_version(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    status, body = await get(http, emu, token, "/services/data/v58.0/sobjects")
    assert status == 200
    account = by_name(body["sobjects"])["Account"]
    assert account["urls"]["describe"] == "/services/data/v58.0/sobjects/Account/describe"


# -- sobject describe ---------------------------------------------------------------------------


async def test_describe_object(emu: Emulator, http: aiohttp.ClientSession, token: str) -> None:
    status, body = await get(http, emu, token, f"/services/data/v{V}/sobjects/Account/describe")
    assert status == 200
    assert body["name"] == "Account"
    assert body["keyPrefix"] == "001"
    fields = by_name(body["fields"])
    assert fields["Id"]["type"] == "id"
    assert fields["Id"]["nillable"] is False
    assert fields["Id"]["createable"] is False
    assert fields["Name"]["type"] == "string"
    assert fields["Name"]["length"] == 255
    assert fields["Name"]["nameField"] is True
    assert fields["Name"]["nillable"] is False
    assert fields["BillingAddress"]["type"] == "address"
    assert fields["BillingAddress"]["compoundFieldName"] is None
    assert fields["BillingAddress"]["createable"] is False
    for part in ("Street", "City", "State", "PostalCode", "Country", "Latitude", "Longitude"):
        assert fields[f"Billing{part}"]["compoundFieldName"] == "BillingAddress"
        assert fields[f"Shipping{part}"]["compoundFieldName"] == "ShippingAddress"
    assert fields["BillingLatitude"]["type"] == "double"
    assert fields["BillingStreet"]["type"] == "textarea"
    assert [p["value"] for p in fields["Rating"]["picklistValues"]] == ["Hot", "Warm", "Cold"]
    assert fields["Rating"]["type"] == "picklist"
    assert fields["Rating"]["picklistValues"][0] == {
        "active": True,
        "defaultValue": False,
        "label": "Hot",
        "validFor": None,
        "value": "Hot",
    }
    assert fields["ParentId"]["type"] == "reference"
    assert fields["ParentId"]["referenceTo"] == ["Account"]
    assert fields["ParentId"]["relationshipName"] == "Parent"
    assert fields["OwnerId"]["referenceTo"] == ["User"]
    assert fields["AnnualRevenue"]["type"] == "currency"
    assert (fields["AnnualRevenue"]["precision"], fields["AnnualRevenue"]["scale"]) == (18, 0)
    assert fields["NumberOfEmployees"]["type"] == "int"
    assert fields["NumberOfEmployees"]["digits"] == 8
    assert fields["CreatedDate"]["type"] == "datetime"
    assert fields["CreatedDate"]["soapType"] == "xsd:dateTime"
    assert fields["External_Account_ID__c"]["custom"] is True
    assert fields["External_Account_ID__c"]["externalId"] is True


async def test_describe_is_case_insensitive(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    status, body = await get(http, emu, token, f"/services/data/v{V}/sobjects/account/describe/")
    assert status == 200
    assert body["name"] == "Account"


async def test_describe_custom_object_types(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    status, body = await get(http, emu, token, f"/services/data/v{V}/sobjects/Employee__c/describe")
    assert status == 200
    fields = by_name(body["fields"])
    expected = {
        "Email__c": "email",
        "Phone__c": "phone",
        "Hire_Date__c": "date",
        "Last_Review__c": "datetime",
        "Shift_Start__c": "time",
        "Salary__c": "currency",
        "Bonus_Pct__c": "percent",
        "Level__c": "double",
        "Active__c": "boolean",
        "Department__c": "picklist",
        "Skills__c": "multipicklist",
        "Home_Page__c": "url",
        "Bio__c": "textarea",
        "Manager__c": "reference",
        "Office_Location__c": "location",
        "Tax_Id__c": "encryptedstring",
    }
    assert {name: fields[name]["type"] for name in expected} == expected
    assert fields["Department__c"]["restrictedPicklist"] is True
    assert fields["Skills__c"]["restrictedPicklist"] is False
    assert fields["Manager__c"]["referenceTo"] == ["Employee__c"]
    assert fields["Manager__c"]["relationshipName"] == "Manager__r"
    assert fields["Office_Location__Latitude__s"]["compoundFieldName"] == "Office_Location__c"
    assert fields["Office_Location__Longitude__s"]["type"] == "double"
    assert fields["Active__c"]["defaultValue"] is True


async def test_describe_change_event(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    status, body = await get(
        http, emu, token, f"/services/data/v{V}/sobjects/AccountChangeEvent/describe"
    )
    assert status == 200
    assert body["name"] == "AccountChangeEvent"
    assert body["associateEntityType"] == "ChangeEvent"
    assert body["associateParentEntity"] == "Account"
    fields = by_name(body["fields"])
    assert fields["ChangeEventHeader"]["type"] == "complexvalue"
    assert fields["ReplayId"]["type"] == "string"
    assert fields["Id"]["type"] == "id"
    # The body never carries these.
    assert "IsDeleted" not in fields
    assert "SystemModstamp" not in fields
    assert fields["BillingAddress"]["type"] == "address"
    assert fields["BillingCity"]["compoundFieldName"] == "BillingAddress"
    assert fields["Name"]["type"] == "string"
    assert fields["LastModifiedDate"]["type"] == "datetime"
    assert all(not f["createable"] and not f["updateable"] for f in body["fields"])


async def test_describe_change_event_of_contact_name(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    status, body = await get(
        http, emu, token, f"/services/data/v{V}/sobjects/ContactChangeEvent/describe"
    )
    assert status == 200
    fields = by_name(body["fields"])
    for part in ("Salutation", "FirstName", "LastName"):
        assert fields[part]["compoundFieldName"] == "Name"


async def test_describe_platform_event(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    status, body = await get(
        http, emu, token, f"/services/data/v{V}/sobjects/Order_Placed__e/describe"
    )
    assert status == 200
    assert body["name"] == "Order_Placed__e"
    assert body["custom"] is True
    assert body["keyPrefix"] == "e01"
    fields = by_name(body["fields"])
    assert {"ReplayId", "CreatedDate", "CreatedById", "EventUuid"} <= set(fields)
    assert fields["CreatedById"]["referenceTo"] == ["User"]
    assert fields["Order_Number__c"]["nillable"] is False
    assert fields["Order_Number__c"]["length"] == 40
    assert fields["Amount__c"]["type"] == "double"
    assert fields["Express__c"]["type"] == "boolean"
    assert fields["Placed_At__c"]["type"] == "datetime"


async def test_sobject_basic_info(emu: Emulator, http: aiohttp.ClientSession, token: str) -> None:
    status, body = await get(http, emu, token, f"/services/data/v{V}/sobjects/Account")
    assert status == 200
    assert body["recentItems"] == []
    assert body["objectDescribe"]["name"] == "Account"
    assert "fields" not in body["objectDescribe"]


async def test_describe_streaming_sobjects(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    status, body = await get(http, emu, token, f"/services/data/v{V}/sobjects/PushTopic/describe")
    assert status == 200
    fields = by_name(body["fields"])
    assert [p["value"] for p in fields["NotifyForFields"]["picklistValues"]] == [
        "All",
        "Referenced",
        "Select",
        "Where",
    ]
    assert fields["Name"]["length"] == 25
    assert fields["Query"]["length"] == 1300
    status, body = await get(
        http, emu, token, f"/services/data/v{V}/sobjects/StreamingChannel/describe"
    )
    assert status == 200
    assert {"Id", "Name", "Description"} <= set(by_name(body["fields"]))


# -- eventSchema ----------------------------------------------------------------------------


async def test_event_schema_expanded_platform_event(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    status, body = await get(
        http, emu, token, f"/services/data/v{V}/sobjects/Low_Ink__e/eventSchema"
    )
    assert status == 200
    assert body["name"] == "Low_Ink__e"
    assert body["namespace"] == "com.sforce.eventbus"
    assert body["type"] == "expanded-record"
    assert isinstance(body["uuid"], str)
    assert len(body["uuid"]) == 22
    data, channel = body["fields"]
    assert channel == {"name": "channel", "type": "string"}
    assert data["name"] == "data"
    assert data["type"]["name"] == "Data"
    schema_field, payload, event = data["type"]["fields"]
    assert schema_field == {"name": "schema", "type": "string"}
    assert payload["type"]["name"] == "Payload"
    fields = by_name(payload["type"]["fields"])
    assert fields["CreatedDate"] == {
        "name": "CreatedDate",
        "type": "string",
        "doc": "CreatedDate:DateTime",
    }
    assert fields["CreatedById"] == {
        "name": "CreatedById",
        "type": "string",
        "doc": "CreatedBy:EntityId",
    }
    model = fields["Printer_Model__c"]
    assert model["type"] == ["null", "string"]
    assert model["default"] is None
    assert model["doc"].startswith("Data:Text:00N")
    assert len(model["doc"].split(":")[2]) == 18
    assert fields["Ink_Percentage__c"]["type"] == ["null", "double"]
    assert "ReplayId" not in fields
    assert "EventUuid" not in fields
    event_fields = by_name(event["type"]["fields"])
    assert event_fields["replayId"]["type"] == "long"
    assert "EventUuid" in event_fields


async def test_event_schema_by_id_matches(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    for name in ("Order_Placed__e", "AccountChangeEvent", "Employee__ChangeEvent"):
        for fmt in ("EXPANDED", "COMPACT"):
            status, by_event = await get(
                http,
                emu,
                token,
                f"/services/data/v{V}/sobjects/{name}/eventSchema",
                {"payloadFormat": fmt},
            )
            assert status == 200
            status, by_id = await get(
                http,
                emu,
                token,
                f"/services/data/v{V}/event/eventSchema/{by_event['uuid']}",
                {"payloadFormat": fmt},
            )
            assert status == 200
            assert by_id == by_event


async def test_event_schema_default_is_expanded(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    path = f"/services/data/v{V}/sobjects/AccountChangeEvent/eventSchema"
    _, default = await get(http, emu, token, path)
    _, expanded = await get(http, emu, token, path, {"payloadFormat": "EXPANDED"})
    _, compact = await get(http, emu, token, path, {"payloadFormat": "COMPACT"})
    assert default == expanded
    assert expanded["type"] == "expanded-record"
    assert compact["type"] == "record"
    # One schema, two forms: the same id.
    assert compact["uuid"] == expanded["uuid"]


async def test_change_event_expanded_schema(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    status, body = await get(
        http, emu, token, f"/services/data/v{V}/sobjects/AccountChangeEvent/eventSchema"
    )
    assert status == 200
    payload = body["fields"][0]["type"]["fields"][1]["type"]
    fields = by_name(payload["fields"])
    header = fields["ChangeEventHeader"]["type"]
    header_fields = by_name(header["fields"])
    assert header_fields["changeType"]["type"]["symbols"][:4] == [
        "CREATE",
        "UPDATE",
        "DELETE",
        "UNDELETE",
    ]
    assert "GAP_OVERFLOW" in header_fields["changeType"]["type"]["symbols"]
    assert header_fields["commitTimestamp"]["type"] == "long"
    assert header_fields["recordIds"]["type"] == {"type": "array", "items": "string"}
    assert fields["LastModifiedDate"]["type"] == ["null", "string"]
    assert fields["LastModifiedDate"]["doc"] == "LastModifiedDate:DateTime"
    billing = fields["BillingAddress"]["type"][1]
    assert billing["type"] == "record"
    assert [f["name"] for f in billing["fields"]][:5] == [
        "Street",
        "City",
        "State",
        "PostalCode",
        "Country",
    ]
    assert "IsDeleted" not in fields
    assert "SystemModstamp" not in fields


async def test_compact_schemas_are_valid_avro(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    names = [
        *(f"{o}ChangeEvent" for o in ("Account", "Contact", "Opportunity", "Case")),
        "Employee__ChangeEvent",
        "Order_Placed__e",
        "Low_Ink__e",
    ]
    for name in names:
        status, body = await get(
            http,
            emu,
            token,
            f"/services/data/v{V}/sobjects/{name}/eventSchema",
            {"payloadFormat": "COMPACT"},
        )
        assert status == 200
        assert body["name"] == name
        assert body["namespace"] == "com.sforce.eventbus"
        parsed = fastavro.parse_schema(body)
        assert parsed["name"] == f"com.sforce.eventbus.{name}"


async def test_compact_schema_types(emu: Emulator, http: aiohttp.ClientSession, token: str) -> None:
    status, body = await get(
        http,
        emu,
        token,
        f"/services/data/v{V}/sobjects/Employee__ChangeEvent/eventSchema",
        {"payloadFormat": "COMPACT"},
    )
    assert status == 200
    fields = by_name(body["fields"])
    assert fields["Last_Review__c"]["type"] == ["null", "long"]
    assert fields["Hire_Date__c"]["type"] == ["null", "int"]
    assert fields["Shift_Start__c"]["type"] == ["null", "long"]
    assert fields["Active__c"]["type"] == ["null", "boolean"]
    assert fields["Salary__c"]["type"] == ["null", "double"]
    assert fields["Skills__c"]["doc"].startswith("Data:MultiselectPicklist:00N")
    location = fields["Office_Location__c"]["type"][1]
    assert [f["name"] for f in location["fields"]] == ["Latitude", "Longitude"]


def _avro_value(schema: Any, doc: str, value: Any, named: dict[str, Any]) -> Any:
    """A CometD (JSON) value in the form the COMPACT (Avro) schema describes."""
    if isinstance(schema, list):
        if value is None:
            return None
        (branch,) = [s for s in schema if s != "null"]
        return _avro_value(branch, doc, value, named)
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, dict) and schema.get("type") == "record":
        named[schema["name"]] = schema
        return {
            f["name"]: _avro_value(f["type"], f.get("doc", ""), value.get(f["name"]), named)
            for f in schema["fields"]
        }
    if isinstance(schema, dict) and schema.get("type") == "array":
        return value if value is not None else []
    if isinstance(schema, dict):  # enum
        return value
    kind = doc.split(":")[1] if ":" in doc else ""
    if kind == "DateTime":
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return int(moment.timestamp() * 1000)
    if kind == "Date":
        return (date.fromisoformat(value) - date(1970, 1, 1)).days
    if kind == "Time":
        clock = datetime.strptime(value, "%H:%M:%S.%fZ").replace(tzinfo=UTC)
        return ((clock.hour * 60 + clock.minute) * 60 + clock.second) * 1000 + (
            clock.microsecond // 1000
        )
    return value


async def test_compact_schema_encodes_real_events(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    """The payloads the emulator publishes fit their COMPACT schema, field for field."""
    status, created = await post(
        http,
        emu,
        token,
        f"/services/data/v{V}/sobjects/Employee__c",
        {
            "Name": "Ada",
            "Email__c": "ada@example.com",
            "Hire_Date__c": "2024-02-29",
            "Last_Review__c": "2025-01-02T03:04:05.678Z",
            "Shift_Start__c": "08:30:00.000Z",
            "Salary__c": 1234.5,
            "Skills__c": "Python;SQL",
            "Office_Location__Latitude__s": 52.5,
            "Office_Location__Longitude__s": 13.4,
        },
    )
    assert status == 201, created
    status, _ = await post(
        http,
        emu,
        token,
        f"/services/data/v{V}/sobjects/Account",
        {"Name": "Acme", "BillingCity": "Paris", "ShippingCity": "Lyon"},
    )
    assert status == 201
    status, _ = await post(
        http,
        emu,
        token,
        f"/services/data/v{V}/sobjects/Order_Placed__e",
        {"Order_Number__c": "A-1", "Placed_At__c": "2025-01-02T03:04:05Z"},
    )
    assert status == 201
    for channel in (
        "/data/Employee__ChangeEvent",
        "/data/AccountChangeEvent",
        "/event/Order_Placed__e",
    ):
        (message,) = emu.published(channel)
        sid = message["data"]["schema"]
        status, schema = await get(
            http,
            emu,
            token,
            f"/services/data/v{V}/event/eventSchema/{sid}",
            {"payloadFormat": "COMPACT"},
        )
        assert status == 200
        parsed = fastavro.parse_schema(schema)
        datum = _avro_value(schema, "", message["data"]["payload"], {})
        assert fastavro.validation.validate(datum, parsed, raise_errors=True)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed, datum)
        buffer.seek(0)
        assert fastavro.schemaless_reader(buffer, parsed) == datum


async def test_invalid_payload_format_is_400(
    emu: Emulator, http: aiohttp.ClientSession, token: str, subtests: pytest.Subtests
) -> None:
    sid = emu.runtime.schema_id(emu.runtime.spec.platform_events[0])
    for fmt in ("JSON", "", "expandedx", "AVRO"):
        for path in (
            f"/services/data/v{V}/sobjects/Low_Ink__e/eventSchema",
            f"/services/data/v{V}/sobjects/AccountChangeEvent/eventSchema",
            f"/services/data/v{V}/event/eventSchema/{sid}",
        ):
            with subtests.test(fmt=fmt, path=path):
                status, body = await get(http, emu, token, path, {"payloadFormat": fmt})
                assert status == 400
                assert isinstance(body, list)
                assert "payloadFormat" in body[0]["message"]
                assert body[0]["errorCode"]


async def test_schema_id_changes_with_the_definition(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    path = f"/services/data/v{V}/sobjects/AccountChangeEvent/eventSchema"
    _, before = await get(http, emu, token, path)
    old_id = before["uuid"]
    # Asking again does not change it.
    _, again = await get(http, emu, token, path)
    assert again["uuid"] == old_id

    new_id = emu.alter_fields("Account", add=[FieldDef(name="Tier__c", type="string", length=10)])
    assert new_id != old_id
    _, after = await get(http, emu, token, path)
    assert after["uuid"] == new_id
    payload = after["fields"][0]["type"]["fields"][1]["type"]["fields"]
    assert "Tier__c" in {f["name"] for f in payload}

    # The old id stays resolvable and still describes the old shape, in both forms.
    status, old = await get(http, emu, token, f"/services/data/v{V}/event/eventSchema/{old_id}")
    assert status == 200
    assert old == before
    status, old_compact = await get(
        http,
        emu,
        token,
        f"/services/data/v{V}/event/eventSchema/{old_id}",
        {"payloadFormat": "COMPACT"},
    )
    assert status == 200
    assert "Tier__c" not in {f["name"] for f in old_compact["fields"]}

    # Events published from now on name the new schema.
    status, _ = await post(
        http, emu, token, f"/services/data/v{V}/sobjects/Account", {"Name": "A", "Tier__c": "Gold"}
    )
    assert status == 201
    (message,) = emu.published("/data/AccountChangeEvent")
    assert message["data"]["schema"] == new_id
    assert message["data"]["payload"]["Tier__c"] == "Gold"


async def test_schema_id_changes_for_platform_events(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    path = f"/services/data/v{V}/sobjects/Low_Ink__e/eventSchema"
    _, before = await get(http, emu, token, path)
    new_id = emu.alter_fields("Low_Ink__e", retype={"Serial_Number__c": "double"})
    _, after = await get(http, emu, token, path, {"payloadFormat": "COMPACT"})
    assert after["uuid"] == new_id != before["uuid"]
    assert by_name(after["fields"])["Serial_Number__c"]["type"] == ["null", "double"]
    status, _ = await get(
        http, emu, token, f"/services/data/v{V}/event/eventSchema/{before['uuid']}"
    )
    assert status == 200


async def test_published_events_carry_the_schema_id(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    status, _ = await post(
        http, emu, token, f"/services/data/v{V}/sobjects/Low_Ink__e", {"Printer_Model__c": "XZO-5"}
    )
    assert status == 201
    _, schema = await get(http, emu, token, f"/services/data/v{V}/sobjects/Low_Ink__e/eventSchema")
    (message,) = emu.published("/event/Low_Ink__e")
    assert message["data"]["schema"] == schema["uuid"]


# -- limits -----------------------------------------------------------------------------------


async def test_limits(emu: Emulator, http: aiohttp.ClientSession, token: str) -> None:
    status, body = await get(http, emu, token, f"/services/data/v{V}/limits/")
    assert status == 200
    for key in (
        "DailyApiRequests",
        "DailyDurableStreamingApiEvents",
        "DailyDurableGenericStreamingApiEvents",
        "DailyGenericStreamingApiEvents",
        "DailyStreamingApiEvents",
        "DurableStreamingApiConcurrentClients",
        "StreamingApiConcurrentClients",
        "DailyDeliveredPlatformEvents",
        "HourlyPublishedPlatformEvents",
        "DailyStandardVolumePlatformEvents",
        "MonthlyPlatformEvents",
        "MonthlyPlatformEventsUsageEntitlement",
    ):
        entry = body[key]
        assert set(entry) == {"Max", "Remaining"}, key
        assert isinstance(entry["Max"], int)
        assert 0 <= entry["Remaining"] <= entry["Max"], key
    assert body["DurableStreamingApiConcurrentClients"] == {"Max": 2000, "Remaining": 2000}


async def test_limits_count_published_events_and_clients(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    _, before = await get(http, emu, token, f"/services/data/v{V}/limits")
    status, _ = await post(
        http, emu, token, f"/services/data/v{V}/sobjects/Low_Ink__e", {"Printer_Model__c": "X"}
    )
    assert status == 201
    _, after = await get(http, emu, token, f"/services/data/v{V}/limits")
    published = "HourlyPublishedPlatformEvents"
    assert after[published]["Remaining"] == before[published]["Remaining"] - 1
    assert after["DailyApiRequests"]["Remaining"] < before["DailyApiRequests"]["Remaining"]
