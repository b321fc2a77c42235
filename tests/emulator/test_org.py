"""Org definitions: the bundled default org, and the errors a bad org file gets."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from sfstream_emulator import Emulator, OrgError, load_org
from sfstream_emulator.org import component_key


def write(tmp_path: Path, data: Any, name: str = "org.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def minimal(**extra: Any) -> dict[str, Any]:
    org: dict[str, Any] = {
        "objects": [
            {
                "name": "Account",
                "key_prefix": "001",
                "fields": [{"name": "Name", "type": "string", "nillable": False}],
            }
        ]
    }
    org.update(extra)
    return org


def load_error(tmp_path: Path, data: Any) -> str:
    path = write(tmp_path, data)
    with pytest.raises(OrgError) as caught:
        load_org(path)
    message = str(caught.value)
    assert message
    return message


# -- the default org -----------------------------------------------------------------------------


def test_default_org() -> None:
    org = load_org()
    assert org.org_id == "00D5g00000EmuOrgEAA"
    assert org.user.id == "0055g00000EmuUsrAAA"
    assert [o.name for o in org.objects] == [
        "Account",
        "Contact",
        "Opportunity",
        "Case",
        "Employee__c",
    ]
    assert [e.name for e in org.platform_events] == ["Order_Placed__e", "Low_Ink__e"]
    assert org.change_events == ["Account", "Contact", "Opportunity", "Employee__c"]
    assert [(c.name, c.channel_type, c.members) for c in org.channels] == [
        ("SalesEvents__chn", "data", ["Opportunity"])
    ]
    assert [t.name for t in org.push_topics] == ["HighValueDeals"]
    assert [c.name for c in org.streaming_channels] == ["/u/Notifications"]
    assert org.cdc_selected("Account")
    assert org.cdc_selected("Opportunity")
    assert not org.cdc_selected("Case")


def test_default_org_system_and_compound_fields() -> None:
    org = load_org()
    account = org.object("account")
    assert account is not None
    names = [f.name for f in account.fields]
    assert names[:2] == ["Id", "IsDeleted"]
    for system in ("OwnerId", "CreatedDate", "CreatedById", "LastModifiedDate", "SystemModstamp"):
        found = account.field(system)
        assert found is not None
        assert found.system
    billing = [f.name for f in account.compound_parts("BillingAddress")]
    assert billing[:5] == [
        "BillingStreet",
        "BillingCity",
        "BillingState",
        "BillingPostalCode",
        "BillingCountry",
    ]
    city = account.field("BillingCity")
    compound = account.field("BillingAddress")
    assert city is not None
    assert compound is not None
    assert component_key(compound, city) == "City"
    assert account.key_prefix == "001"
    assert account.change_event_name == "AccountChangeEvent"
    assert account.supports_cdc

    employee = org.object("Employee__c")
    assert employee is not None
    assert employee.change_event_name == "Employee__ChangeEvent"
    assert employee.custom
    location = employee.field("Office_Location__c")
    assert location is not None
    parts = employee.compound_parts("Office_Location__c")
    assert [p.name for p in parts] == [
        "Office_Location__Latitude__s",
        "Office_Location__Longitude__s",
    ]
    assert [component_key(location, p) for p in parts] == ["Latitude", "Longitude"]

    contact = org.object("Contact")
    assert contact is not None
    assert [p.name for p in contact.compound_parts("Name")] == [
        "Salutation",
        "FirstName",
        "LastName",
    ]

    event = org.event("order_placed__e")
    assert event is not None
    assert [f.name for f in event.fields][:4] == [
        "ReplayId",
        "CreatedDate",
        "CreatedById",
        "EventUuid",
    ]


def test_loads_are_independent() -> None:
    first = load_org()
    first.objects[0].fields = []
    first.change_events.clear()
    second = load_org()
    assert second.objects[0].fields
    assert second.change_events


def test_default_org_file_loads_from_a_path(tmp_path: Path) -> None:
    text = resources.files("sfstream_emulator").joinpath("default_org.yaml").read_text()
    assert load_org(write(tmp_path, text)) == load_org()


def test_emulator_takes_an_org_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        minimal(
            change_events=["Account"],
            push_topics=[{"name": "All", "query": "SELECT Id, Name FROM Account"}],
        ),
    )
    emulator = Emulator(org=path)
    assert {"/data/ChangeEvents", "/data/AccountChangeEvent", "/topic/All"} <= set(
        emulator.bus.channels
    )


def test_names_are_stored_as_api_names(tmp_path: Path) -> None:
    org = load_org(
        write(
            tmp_path,
            minimal(
                change_events=["account", "ACCOUNT"],
                channels=[{"name": "Mine__chn", "members": ["Account", "account"]}],
            ),
        )
    )
    assert org.change_events == ["Account"]
    assert org.channels[0].members == ["Account"]
    assert org.cdc_selected("Account")


def test_custom_and_standard_address_fields(tmp_path: Path) -> None:
    data = minimal()
    data["objects"][0]["fields"] += [
        {"name": "Home__c", "type": "address"},
        {"name": "Address", "type": "address"},
    ]
    account = load_org(write(tmp_path, data)).objects[0]
    home = account.field("Home__c")
    assert home is not None
    parts = account.compound_parts("Home__c")
    assert [p.name for p in parts][:2] == ["Home__Street__s", "Home__City__s"]
    assert [component_key(home, p) for p in parts][:2] == ["Street", "City"]
    plain = account.field("Address")
    assert plain is not None
    plain_parts = account.compound_parts("Address")
    assert [p.name for p in plain_parts][:2] == ["Street", "City"]
    assert [component_key(plain, p) for p in plain_parts][:2] == ["Street", "City"]


# -- bad files ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(OrgError, match=r"cannot read org file .*absent\.yaml: No such file"):
        load_org(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(OrgError, match=r"binary\.yaml: not UTF-8 text"):
        load_org(path)


def test_invalid_yaml(tmp_path: Path) -> None:
    message = load_error(tmp_path, "objects: [\n  - name: Account\n")
    assert message.startswith(f"{tmp_path / 'org.yaml'} is not valid YAML:")


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    message = load_error(tmp_path, text)
    assert message.endswith("an org file is a mapping at the top level")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        (
            {"objects": [{"name": "Account", "fields": []}]},
            "objects.0.key_prefix: Field required",
        ),
        (
            {
                "objects": [
                    {"name": "A", "key_prefix": "001", "fields": [{"name": "X", "type": "blob"}]}
                ]
            },
            "objects.0.fields.0.type: Input should be",
        ),
        (
            {
                "objects": [
                    {"name": "A", "key_prefix": "001", "fields": [{"name": "1X", "type": "string"}]}
                ]
            },
            "'1X' is not a valid API name",
        ),
        (
            {"objects": [{"name": "A", "key_prefix": "001", "fields": [{"type": "string"}]}]},
            "objects.0.fields.0.name: Field required",
        ),
        (
            {"push_topics": [{"name": "T" * 26, "query": "SELECT Id FROM Account"}]},
            "push_topics.0.name: String should have at most 25 characters",
        ),
        (
            {"streaming_channels": [{"name": "Notifications"}]},
            "streaming channel 'Notifications' must look like /u/Name",
        ),
        (
            {"channels": [{"name": "Sales", "members": []}]},
            "custom channel 'Sales' must end in __chn",
        ),
    ],
)
def test_schema_errors_name_the_entry(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    message = load_error(tmp_path, minimal(**change))
    assert message.startswith(f"{tmp_path / 'org.yaml'}: ")
    assert expected in message


def _two_objects(second: dict[str, Any]) -> dict[str, Any]:
    data = minimal()
    data["objects"].append(second)
    return data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            _two_objects({"name": "Contact", "key_prefix": "001"}),
            "objects Account and Contact share key prefix 001",
        ),
        (
            _two_objects({"name": "account", "key_prefix": "003"}),
            "objects: duplicate names ['account']",
        ),
        (
            minimal(
                objects=[
                    {
                        "name": "Account",
                        "key_prefix": "001",
                        "fields": [
                            {"name": "Name", "type": "string"},
                            {"name": "Name", "type": "string"},
                        ],
                    }
                ]
            ),
            "object Account: duplicate fields ['Name']",
        ),
        (
            minimal(platform_events=[{"name": "Ping", "fields": []}]),
            "platform event 'Ping' must end in __e",
        ),
        (
            minimal(
                platform_events=[
                    {"name": "Ping__e", "fields": [{"name": "Note", "type": "string"}]}
                ]
            ),
            "platform event Ping__e: custom fields must end in __c: ['Note']",
        ),
        (
            minimal(platform_events=[{"name": "Ping__e"}, {"name": "PING__e"}]),
            "platform_events: duplicate names ['ping__e']",
        ),
        (
            minimal(change_events=["Nope"]),
            "change_events: 'Nope' is not an object with change events",
        ),
        (
            _two_objects({"name": "Widget", "key_prefix": "a00", "cdc_supported": False})
            | {"change_events": ["Widget"]},
            "change_events: 'Widget' is not an object with change events",
        ),
        (
            minimal(channels=[{"name": "Mine__chn", "members": ["Nope"]}]),
            "channel Mine__chn: unknown member 'Nope'",
        ),
        (
            minimal(
                channels=[{"name": "Mine__chn", "channel_type": "event", "members": ["Account"]}]
            ),
            "channel Mine__chn: unknown member 'Account'",
        ),
        (
            minimal(channels=[{"name": "A__chn"}, {"name": "A__chn"}]),
            "channels: duplicate names ['A__chn']",
        ),
        (
            minimal(
                push_topics=[
                    {"name": "T", "query": "SELECT Id FROM Account"},
                    {"name": "T", "query": "SELECT Id FROM Account"},
                ]
            ),
            "push_topics: duplicate names ['T']",
        ),
        (
            minimal(push_topics=[{"name": "T", "query": "SELEKT Id FROM Account"}]),
            "push topic T: invalid query: unexpected token: 'SELEKT', expected SELECT",
        ),
        (
            minimal(push_topics=[{"name": "T", "query": "SELECT Id FROM Nope"}]),
            "push topic T: unknown object 'Nope' in its query",
        ),
        (
            minimal(push_topics=[{"name": "T", "query": "SELECT Id FROM Account WHERE Bogus = 1"}]),
            "push topic T: no field(s) ['Bogus'] on Account",
        ),
        (
            minimal(push_topics=[{"name": "T", "query": "SELECT Name FROM Account"}]),
            "push topic T: the query must select Id",
        ),
        (
            minimal(push_topics=[{"name": "T", "query": "SELECT COUNT() FROM Account"}]),
            "push topic T: a PushTopic query cannot use COUNT()",
        ),
        (
            minimal(streaming_channels=[{"name": "/u/A"}, {"name": "/u/A"}]),
            "streaming_channels: duplicate names ['/u/A']",
        ),
    ],
)
def test_consistency_errors(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    assert load_error(tmp_path, data) == expected


def test_org_error_is_a_value_error() -> None:
    assert issubclass(OrgError, ValueError)
