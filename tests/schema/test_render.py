"""Every Salesforce field type maps deliberately; the same definition gives the same bytes."""

from __future__ import annotations

import random
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfstream.schema.model import FieldModel, RecordModel, from_describe, from_event_schema
from sfstream.schema.render import canonical_bytes, fingerprint, to_avro, to_json_schema
from sfstream_emulator.describe import describe_change_event, describe_event, describe_object
from sfstream_emulator.org import load_org
from sfstream_emulator.schemas import event_schema

# (Salesforce type, expected JSON Schema of a nullable field, without annotations)
TYPES: list[tuple[str, dict[str, Any]]] = [
    ("id", {"type": ["string", "null"], "pattern": "^[a-zA-Z0-9]{15}([a-zA-Z0-9]{3})?$"}),
    ("reference", {"type": ["string", "null"], "pattern": "^[a-zA-Z0-9]{15}([a-zA-Z0-9]{3})?$"}),
    ("string", {"type": ["string", "null"], "maxLength": 80}),
    ("textarea", {"type": ["string", "null"], "maxLength": 80}),
    ("phone", {"type": ["string", "null"], "maxLength": 80}),
    ("email", {"type": ["string", "null"], "format": "email", "maxLength": 80}),
    ("url", {"type": ["string", "null"], "format": "uri-reference", "maxLength": 80}),
    ("picklist", {"type": ["string", "null"], "maxLength": 80}),
    ("multipicklist", {"type": ["string", "null"], "maxLength": 80}),
    ("combobox", {"type": ["string", "null"], "maxLength": 80}),
    ("encryptedstring", {"type": ["string", "null"], "maxLength": 80}),
    ("json", {"type": ["string", "null"], "maxLength": 80}),
    ("boolean", {"type": ["boolean", "null"]}),
    ("int", {"type": ["integer", "null"], "minimum": -(2**31), "maximum": 2**31 - 1}),
    ("long", {"type": ["integer", "null"], "minimum": -(2**63), "maximum": 2**63 - 1}),
    ("double", {"type": ["number", "null"]}),
    ("currency", {"type": ["number", "null"]}),
    ("percent", {"type": ["number", "null"]}),
    ("date", {"type": ["string", "null"], "format": "date"}),
    ("datetime", {"type": ["string", "null"], "format": "date-time"}),
    ("time", {"type": ["string", "null"], "format": "time"}),
    ("base64", {"type": ["string", "null"], "contentEncoding": "base64"}),
    ("address", {"type": ["object", "null"]}),
    ("location", {"type": ["object", "null"]}),
    ("complexvalue", {"type": ["object", "null"]}),
    ("anyType", {}),
]
AVRO: dict[str, Any] = {
    "boolean": "boolean",
    "int": "int",
    "long": "long",
    "double": "double",
    "currency": "double",
    "percent": "double",
}


@pytest.mark.parametrize(("sf_type", "expected"), TYPES, ids=[t for t, _ in TYPES])
def test_every_salesforce_type(sf_type: str, expected: dict[str, Any]) -> None:
    field = FieldModel("F", sf_type, nullable=True, length=80)
    model = RecordModel("X__e", "platform_event", (field,))
    prop = to_json_schema(model, "sf.event.x")["properties"]["F"]
    assert prop.pop("x-salesforce-type") == sf_type
    assert prop == expected
    avro = to_avro(model, "sf.event.x")
    fastavro.parse_schema(avro)
    assert avro["fields"][0]["type"] == ["null", AVRO.get(sf_type, "string")]


def test_required_fields_and_annotations() -> None:
    model = RecordModel(
        "X__e",
        "platform_event",
        (
            FieldModel("Amount__c", "currency", nullable=False, precision=16, scale=2),
            FieldModel("Stage__c", "picklist", picklist=("A", "B"), length=40),
            FieldModel("Owner__c", "reference", reference_to=("User",)),
        ),
    )
    schema = to_json_schema(model, "sf.event.x")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["Amount__c"]
    amount = schema["properties"]["Amount__c"]
    assert (amount["type"], amount["x-salesforce-precision"], amount["x-salesforce-scale"]) == (
        "number",
        16,
        2,
    )
    assert schema["properties"]["Stage__c"]["x-salesforce-picklist"] == ["A", "B"]
    assert schema["properties"]["Owner__c"]["x-salesforce-reference-to"] == ["User"]


def test_change_event_from_event_schema_has_header_compounds_and_only_nullable_fields() -> None:
    org = load_org()
    account = org.object("Account")
    assert account is not None
    model = from_event_schema(
        "AccountChangeEvent", "change_events", event_schema(account, "EXPANDED")
    )
    schema = to_json_schema(model, "sf.event.account_changes")
    assert schema["required"] == ["ChangeEventHeader"]
    header = schema["properties"]["ChangeEventHeader"]
    assert header["type"] == "object"
    assert set(header["required"]) >= {"changeType", "recordIds", "commitTimestamp"}
    assert header["properties"]["recordIds"] == {
        "type": "array",
        "items": {"type": "string"},
        "x-salesforce-type": "array",
    }
    billing = schema["properties"]["BillingAddress"]
    assert billing["type"] == ["object", "null"]
    assert billing["x-salesforce-type"] == "address"
    assert billing["properties"]["City"]["type"] == ["string", "null"]
    assert billing["properties"]["Latitude"]["type"] == ["number", "null"]
    assert schema["properties"]["AnnualRevenue"]["x-salesforce-type"] == "currency"
    assert schema["properties"]["LastModifiedDate"]["format"] == "date-time"
    assert "Id" not in schema["properties"]
    fastavro.parse_schema(to_avro(model, "sf.event.account_changes"))


def test_event_schema_and_describe_agree_on_types() -> None:
    org = load_org()
    for name in ("Employee__c", "Contact"):
        obj = org.object(name)
        assert obj is not None
        from_schema = from_event_schema(
            obj.change_event_name, "change_events", event_schema(obj, "EXPANDED")
        )
        from_desc = from_describe(
            obj.change_event_name, "change_events", describe_change_event(obj, "62.0")
        )
        flat_a = {f.name: (f.sf_type, f.nullable) for f in from_schema.fields}
        flat_b = {f.name: (f.sf_type, f.nullable) for f in from_desc.fields}
        assert flat_a == flat_b, name
    event = org.event("Order_Placed__e")
    assert event is not None
    a = from_event_schema("Order_Placed__e", "platform_event", event_schema(event))
    b = from_describe("Order_Placed__e", "platform_event", describe_event(event, "62.0"))
    assert {f.name: f.nullable for f in a.fields} == {f.name: f.nullable for f in b.fields}
    assert {f.name for f in a.fields if not f.nullable} == {
        "CreatedById",
        "CreatedDate",
        "Order_Number__c",
        "Express__c",
    }


def test_push_topic_fields_come_from_the_query() -> None:
    org = load_org()
    opportunity = org.object("Opportunity")
    assert opportunity is not None
    model = from_describe(
        "HighValueDeals",
        "push_topic",
        describe_object(opportunity, "62.0"),
        only=["Id", "Name", "Amount", "StageName", "accountid"],
    )
    assert [f.name for f in model.fields] == ["AccountId", "Amount", "Id", "Name", "StageName"]
    schema = to_json_schema(model, "sf.topic.high_value_deals")
    assert schema["required"] == ["Id", "Name", "StageName"]


def test_same_definition_same_bytes() -> None:
    org = load_org()
    employee = org.object("Employee__c")
    assert employee is not None
    first = to_json_schema(
        from_event_schema("Employee__ChangeEvent", "change_events", event_schema(employee)), "s"
    )
    second = to_json_schema(
        from_event_schema("Employee__ChangeEvent", "change_events", event_schema(employee)), "s"
    )
    assert canonical_bytes(first) == canonical_bytes(second)
    assert fingerprint(first) == fingerprint(second)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_field_order_in_the_source_does_not_change_the_fingerprint(seed: int) -> None:
    org = load_org()
    employee = org.object("Employee__c")
    assert employee is not None
    describe = describe_object(employee, "62.0")
    shuffled = dict(describe)
    fields = list(describe["fields"])
    random.Random(seed).shuffle(fields)
    shuffled["fields"] = fields
    base = to_json_schema(from_describe("Employee__c", "push_topic", describe), "s")
    other = to_json_schema(from_describe("Employee__c", "push_topic", shuffled), "s")
    assert canonical_bytes(base) == canonical_bytes(other)
