"""Schemas tracked end to end: the emulator changes a definition mid-stream."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from sfstream.engine.config import Config
from sfstream.runners.connector import Connector
from sfstream.runners.wiring import open_registry
from sfstream.schema.tracker import SchemaChangeError
from sfstream_emulator import Emulator, EmulatorSettings, Fault, FaultKind, FieldDef
from tests.conftest import MakeConfig

ACCOUNTS = "sf.event.account_changes"


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=21)


def output(config: Config) -> list[dict[str, Any]]:
    assert config.sink.path is not None
    if not config.sink.path.exists():
        return []
    return [orjson.loads(line) for line in config.sink.path.read_bytes().splitlines()]


def records(config: Config) -> list[dict[str, Any]]:
    return [m for m in output(config) if m["type"] == "RECORD"]


async def until(predicate: Any, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_added_then_retyped_field_mid_stream(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    config = await make_config(
        emu, [{"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"}]
    )
    stop = asyncio.Event()
    async with Connector(config, "schemas") as connector:
        task = asyncio.create_task(connector.run(stop))
        emu.create_record("Account", {"Name": "A1", "NumberOfEmployees": 5})
        await until(lambda: len(records(config)) == 1)
        emu.alter_fields("Account", add=[FieldDef(name="Tier__c", type="string", length=20)])
        emu.create_record("Account", {"Name": "A2", "Tier__c": "Gold"})
        await until(lambda: len(records(config)) == 2)
        emu.alter_fields("Account", retype={"NumberOfEmployees": "string"})
        emu.create_record("Account", {"Name": "A3", "NumberOfEmployees": "many"})
        await until(lambda: len(records(config)) == 3)
        stop.set()
        result = await task
    assert result.ok, result.error

    sequence = [
        (
            m["type"],
            m.get("version") or m["meta"].get("schema_version"),
            m.get("data", {}).get("Name"),
        )
        for m in output(config)
        if m["type"] in ("SCHEMA", "RECORD")
    ]
    assert sequence == [
        ("SCHEMA", 1, None),
        ("RECORD", 1, "A1"),
        ("SCHEMA", 2, None),
        ("RECORD", 2, "A2"),
        ("SCHEMA", 3, None),
        ("RECORD", 3, "A3"),
    ]
    schemas = [m for m in output(config) if m["type"] == "SCHEMA"]
    assert all(m["stream"] == ACCOUNTS and m["subject"] == ACCOUNTS for m in schemas)
    assert schemas[0]["diff"] == []
    assert schemas[1]["diff"] == [
        {
            "change": "field_added",
            "field": "Tier__c",
            "before": None,
            "after": "string (string)",
            "compatible": True,
        }
    ]
    assert not schemas[1]["breaking"]
    assert schemas[2]["diff"] == [
        {
            "change": "type_changed",
            "field": "NumberOfEmployees",
            "before": "integer (int)",
            "after": "string (string)",
            "compatible": False,
        }
    ]
    assert schemas[2]["breaking"]
    assert "Tier__c" in schemas[1]["schema"]["properties"]
    assert [m["schema_id"] for m in schemas] == [r["meta"]["schema_id"] for r in records(config)]

    registry = open_registry(config)
    try:
        history = await registry.history(ACCOUNTS)
    finally:
        await registry.close()
    assert [(v.version, v.breaking) for v in history] == [(1, False), (2, False), (3, True)]
    assert [c["field"] for c in history[2].diff] == ["NumberOfEmployees"]


async def test_a_breaking_change_stops_a_stream_whose_policy_is_fail(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    config = await make_config(
        emu,
        [
            {
                "channel": "/data/AccountChangeEvent",
                "initial_replay": "earliest",
                "on_breaking_change": "fail",
            }
        ],
    )
    emu.create_record("Account", {"Name": "before"})
    emu.alter_fields("Account", add=[FieldDef(name="Tier__c", type="string")])
    emu.create_record("Account", {"Name": "compatible"})
    emu.alter_fields("Account", remove=["Industry"], retype={"AnnualRevenue": "string"})
    emu.create_record("Account", {"Name": "breaking"})
    stop = asyncio.Event()
    async with Connector(config, "fail") as connector:
        result = await connector.run(stop)
    assert isinstance(result.error, SchemaChangeError)
    assert "AnnualRevenue" in str(result.error)
    assert [r["data"]["Name"] for r in records(config)] == ["before", "compatible"]


async def test_multi_entity_streams_get_a_subject_per_entity(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    config = await make_config(
        emu, [{"channel": "/data/ChangeEvents", "initial_replay": "earliest"}]
    )
    emu.create_record("Account", {"Name": "acct"})
    emu.create_record("Contact", {"LastName": "Smith"})
    emu.create_record("Account", {"Name": "acct 2"})
    stop = asyncio.Event()
    async with Connector(config, "multi") as connector:
        task = asyncio.create_task(connector.run(stop))
        await until(lambda: len(records(config)) == 3)
        stop.set()
        assert (await task).ok
    schemas = [(m["subject"], m["version"]) for m in output(config) if m["type"] == "SCHEMA"]
    assert schemas == [("sf.event.all_changes.account", 1), ("sf.event.all_changes.contact", 1)]
    assert [r["meta"]["schema_subject"] for r in records(config)] == [
        "sf.event.all_changes.account",
        "sf.event.all_changes.contact",
        "sf.event.all_changes.account",
    ]


async def test_an_unavailable_schema_is_logged_and_records_still_flow(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    config = await make_config(
        emu, [{"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"}]
    )
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with Connector(config, "unavailable") as connector:
            task = asyncio.create_task(connector.run(stop))
            emu.create_record("Account", {"Name": "known"})
            await until(lambda: len(records(config)) == 1)
            emu.alter_fields("Account", add=[FieldDef(name="Tier__c", type="string")])
            emu.faults.add(Fault(kind=FaultKind.HTTP_503, target="rest", count=10))
            emu.create_record("Account", {"Name": "unknown schema"})
            await until(lambda: len(records(config)) == 2)
            stop.set()
            result = await task
    assert result.ok, result.error
    assert [r["meta"].get("schema_version") for r in records(config)] == [1, None]
    (failure,) = [e for e in logs if e["event"] == "schema_unavailable"]
    assert failure["retryable"] is True
    assert "503" in failure["error"]
