"""`events/generate`: synthetic events of the requested size, with distinct field values.

Sizes are those of each message's `data` member as JSON, which is what a subscriber
receives per event.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from sfstream_emulator import Emulator, EmulatorSettings
from tests.emulator.test_control import Control

ORDERS = "/event/Order_Placed__e"
LOW_INK = "/event/Low_Ink__e"
ACCOUNTS = "/data/AccountChangeEvent"
# A replay id can gain a digit between the first generated event and the last.
SIZE_TOLERANCE = 1


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=30.0, reconnect_gap_s=40.0, seed=5)


@pytest.fixture
def control(http: aiohttp.ClientSession, emu: Emulator) -> Control:
    return Control(http, emu)


async def _generated(control: Control, channel: str, result: dict[str, Any]) -> list[Any]:
    """The messages a `generate` call published on `channel`."""
    messages = await control.ok(
        "GET", "/events", params={"channel": channel, "after": str(result["first_replay_id"] - 1)}
    )
    assert len(messages) == result["count"]
    assert messages[-1]["data"]["event"]["replayId"] == result["last_replay_id"]
    return list(messages)


def _size(message: dict[str, Any]) -> int:
    return len(orjson.dumps(message["data"]))


@pytest.mark.parametrize("payload_bytes", [600, 1024, 2000, 50_000, 131_000])
async def test_platform_events_honour_payload_bytes(control: Control, payload_bytes: int) -> None:
    result = await control.ok(
        "POST",
        "/events/generate",
        {"target": "Order_Placed__e", "count": 3, "payload_bytes": payload_bytes},
    )
    for message in await _generated(control, ORDERS, result):
        assert abs(_size(message) - payload_bytes) <= SIZE_TOLERANCE, _size(message)


@pytest.mark.parametrize("payload_bytes", [1024, 2000, 20_000])
async def test_change_events_honour_payload_bytes(control: Control, payload_bytes: int) -> None:
    result = await control.ok(
        "POST",
        "/events/generate",
        {"target": "Account", "count": 3, "payload_bytes": payload_bytes},
    )
    for message in await _generated(control, ACCOUNTS, result):
        assert abs(_size(message) - payload_bytes) <= SIZE_TOLERANCE, _size(message)


async def test_every_event_of_a_batch_has_the_size(control: Control) -> None:
    # Counters grow from one digit to three and booleans alternate: the padding makes up
    # for both, event by event.
    for target, channel in (
        ("Order_Placed__e", ORDERS),
        ("Employee__c", "/data/Employee__ChangeEvent"),
    ):
        result = await control.ok(
            "POST", "/events/generate", {"target": target, "count": 150, "payload_bytes": 3000}
        )
        sizes = [_size(m) for m in await _generated(control, channel, result)]
        assert all(abs(size - 3000) <= SIZE_TOLERANCE for size in sizes), sorted(set(sizes))


async def test_small_payload_bytes_give_events_their_natural_size(control: Control) -> None:
    result = await control.ok(
        "POST", "/events/generate", {"target": "Order_Placed__e", "count": 2, "payload_bytes": 0}
    )
    sizes = {_size(m) for m in await _generated(control, ORDERS, result)}
    assert max(sizes) < 1024
    assert max(sizes) - min(sizes) <= SIZE_TOLERANCE


async def test_generated_orders_have_distinct_values(control: Control) -> None:
    messages = []
    for _ in range(2):
        result = await control.ok(
            "POST", "/events/generate", {"target": "Order_Placed__e", "count": 3}
        )
        messages.extend(await _generated(control, ORDERS, result))
    payloads = [m["data"]["payload"] for m in messages]
    # Every custom field has a value, and the order number is unique, also across calls.
    for name in ("Order_Number__c", "Customer_Id__c", "Amount__c", "Quantity__c", "Notes__c"):
        values = [p[name] for p in payloads]
        assert None not in values, name
        assert len(set(values)) == len(values), (name, values)
    assert all(p["Placed_At__c"] is not None for p in payloads)
    assert {p["Express__c"] for p in payloads} == {True, False}


async def test_generated_platform_events_are_valid_events(control: Control) -> None:
    """Each generated payload is one the event's own validation accepts."""
    for target, channel in (("Order_Placed__e", ORDERS), ("Low_Ink__e", LOW_INK)):
        result = await control.ok(
            "POST", "/events/generate", {"target": target, "count": 2, "payload_bytes": 300}
        )
        for message in await _generated(control, channel, result):
            payload = message["data"]["payload"]
            fields = {k: v for k, v in payload.items() if k.endswith("__c")}
            await control.ok("POST", "/events/publish", {"event": target, "fields": fields})


async def test_payload_bytes_an_event_cannot_carry(emu: Emulator, control: Control) -> None:
    # Low_Ink__e has two 20-character text fields: 2,000 bytes cannot be reached without
    # values longer than its fields allow, so the request is refused, naming the maximum.
    error = await control.bad(
        "POST", "/events/generate", {"target": "Low_Ink__e", "count": 1, "payload_bytes": 2000}
    )
    assert "Low_Ink__e" in error
    assert "2000" in error
    maximum = int(error.split("at most ")[1].split(" ")[0])
    assert 200 < maximum < 2000
    assert emu.bus.published_total == 0
    # Up to the maximum, the size is honoured.
    result = await control.ok(
        "POST",
        "/events/generate",
        {"target": "Low_Ink__e", "count": 2, "payload_bytes": maximum},
    )
    for message in await _generated(control, LOW_INK, result):
        assert abs(_size(message) - maximum) <= SIZE_TOLERANCE
        assert len(message["data"]["payload"]["Printer_Model__c"]) <= 20
    # Without payload_bytes, events are 1,024 bytes or as large as their fields allow.
    result = await control.ok("POST", "/events/generate", {"target": "Low_Ink__e", "count": 1})
    (message,) = await _generated(control, LOW_INK, result)
    assert abs(_size(message) - maximum) <= SIZE_TOLERANCE


async def test_generated_change_events_keep_compound_fields_nested(control: Control) -> None:
    for target, channel in (("Account", ACCOUNTS), ("Contact", "/data/ContactChangeEvent")):
        result = await control.ok(
            "POST", "/events/generate", {"target": target, "count": 1, "payload_bytes": 700}
        )
        (message,) = await _generated(control, channel, result)
        payload = message["data"]["payload"]
        # Components of addresses are nested (`BillingAddress.Street`), never top-level.
        assert not {"BillingStreet", "ShippingStreet", "MailingStreet"} & set(payload), payload
        assert all(value != "" for value in payload.values()), payload


async def test_generated_names_are_distinct_across_calls(control: Control) -> None:
    names = []
    for _ in range(2):
        result = await control.ok("POST", "/events/generate", {"target": "Account", "count": 2})
        names += [m["data"]["payload"]["Name"] for m in await _generated(control, ACCOUNTS, result)]
    assert len(set(names)) == 4, names


async def test_payload_bytes_limit_is_named(emu: Emulator, control: Control) -> None:
    for target in ("Account", "Order_Placed__e"):
        error = await control.bad(
            "POST", "/events/generate", {"target": target, "count": 1, "payload_bytes": 1_000_001}
        )
        assert "1000000" in error
        assert "1 MB" in error
        with pytest.raises(ValueError, match="1000000") as raised:
            emu.generate(target, 1, 1_000_001)
        assert str(raised.value) == error
    assert emu.bus.published_total == 0


async def test_generated_events_of_every_field_type_are_valid(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """An event with every kind of field: each generated payload republishes unchanged."""
    fields: list[dict[str, Any]] = [
        {"name": "Key__c", "type": "string", "length": 6, "nillable": False},
        {"name": "Body__c", "type": "textarea", "length": 3000},
        {"name": "Mail__c", "type": "email", "length": 80},
        {"name": "Site__c", "type": "url", "length": 255},
        {"name": "Phone__c", "type": "phone", "length": 40},
        {"name": "Day__c", "type": "date"},
        {"name": "At__c", "type": "datetime"},
        {"name": "Clock__c", "type": "time"},
        {"name": "Count__c", "type": "int", "precision": 2},
        {"name": "Ratio__c", "type": "percent", "precision": 5, "scale": 2},
        {"name": "Done__c", "type": "boolean", "nillable": False, "default_value": False},
        {
            "name": "Level__c",
            "type": "picklist",
            "picklist": ["Low", "High"],
            "restricted_picklist": True,
        },
        {"name": "Tags__c", "type": "multipicklist", "picklist": ["A", "B", "C"]},
        {"name": "Blob__c", "type": "base64"},
        {"name": "Account__c", "type": "reference", "reference_to": ["Account"], "nillable": False},
        {"name": "Owner__c", "type": "reference", "reference_to": ["User"]},
    ]
    org = yaml.safe_load(
        resources.files("sfstream_emulator").joinpath("default_org.yaml").read_text()
    )
    org["platform_events"].append({"name": "Audit__e", "key_prefix": "e09", "fields": fields})
    path = tmp_path / "org.yaml"
    path.write_text(yaml.safe_dump(org), encoding="utf-8")
    async with Emulator(EmulatorSettings(seed=3), org=path) as emu:
        control = Control(http, emu)
        result = await control.ok(
            "POST", "/events/generate", {"target": "Audit__e", "count": 120, "payload_bytes": 2500}
        )
        messages = await _generated(control, "/event/Audit__e", result)
        keys = set()
        for message in messages:
            assert abs(_size(message) - 2500) <= SIZE_TOLERANCE
            payload = message["data"]["payload"]
            fields = {k: v for k, v in payload.items() if k.endswith("__c")}
            assert None not in fields.values(), fields
            keys.add(fields["Key__c"])
            republished = await control.ok(
                "POST", "/events/publish", {"event": "Audit__e", "fields": fields}
            )
            (copy,) = emu.published("/event/Audit__e", after=republished["replay_id"] - 1)
            assert copy["data"]["payload"] | {"CreatedDate": None} == payload | {
                "CreatedDate": None
            }
        # A six-character key holds the last six digits of the counter: still unique here.
        assert len(keys) == len(messages)
