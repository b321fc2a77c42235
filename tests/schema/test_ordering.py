"""Version numbers follow the stream: a replay of old events registers old schemas first."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from sfstream.engine.config import Config
from sfstream.engine.discovery import discover
from sfstream.runners.connector import Connector
from sfstream.runners.wiring import open_registry, org_session
from sfstream.schema.tracker import Derived, SchemaChangeError, SchemaTracker
from sfstream_emulator import Emulator, EmulatorSettings, FieldDef
from tests.conftest import MakeConfig
from tests.schema.test_tracking import output, records, until

ACCOUNTS = "sf.event.account_changes"


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=21)


def three_definitions(emu: Emulator) -> list[str]:
    """A1 under the first definition, A2 after a field is added, A3 after a breaking retype."""
    ids = []
    emu.create_record("Account", {"Name": "A1", "NumberOfEmployees": 5})
    ids.append(emu.published("/data/AccountChangeEvent")[-1]["data"]["schema"])
    emu.alter_fields("Account", add=[FieldDef(name="Tier__c", type="string", length=20)])
    emu.create_record("Account", {"Name": "A2", "Tier__c": "Gold"})
    ids.append(emu.published("/data/AccountChangeEvent")[-1]["data"]["schema"])
    emu.alter_fields("Account", retype={"NumberOfEmployees": "string"})
    emu.create_record("Account", {"Name": "A3", "NumberOfEmployees": "many"})
    ids.append(emu.published("/data/AccountChangeEvent")[-1]["data"]["schema"])
    assert len(set(ids)) == 3
    return ids


async def replay(config: Config, count: int) -> tuple[list[dict[str, Any]], Any]:
    """Run the connector until `count` records are written; (captured logs, result)."""
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with Connector(config, "replay") as connector:
            task = asyncio.create_task(connector.run(stop))
            await until(lambda: len(records(config)) >= count, timeout_s=60)
            stop.set()
            result = await task
    return logs, result


def subscribers(emu: Emulator, channel: str) -> int:
    return sum(c["subscribers"] for c in emu.channel_summary() if c["channel"] == channel)


def sequence(config: Config) -> list[tuple[str, int | None, str | None]]:
    return [
        (
            m["type"],
            m["version"] if m["type"] == "SCHEMA" else m["meta"].get("schema_version"),
            m["data"].get("Name") if m["type"] == "RECORD" else None,
        )
        for m in output(config)
        if m["type"] in ("SCHEMA", "RECORD")
    ]


async def test_a_replay_into_an_empty_registry_numbers_versions_in_stream_order(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    ids = three_definitions(emu)
    config = await make_config(
        emu, [{"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"}]
    )
    logs, result = await replay(config, 3)
    assert result.ok, result.error

    assert sequence(config) == [
        ("SCHEMA", 1, None),
        ("RECORD", 1, "A1"),
        ("SCHEMA", 2, None),
        ("RECORD", 2, "A2"),
        ("SCHEMA", 3, None),
        ("RECORD", 3, "A3"),
    ]
    schemas = [m for m in output(config) if m["type"] == "SCHEMA"]
    assert [m["schema_id"] for m in schemas] == ids
    assert [m["breaking"] for m in schemas] == [False, False, True]
    assert [[c["field"] for c in m["diff"]] for m in schemas] == [
        [],
        ["Tier__c"],
        ["NumberOfEmployees"],
    ]
    changed = [(e["version"], e["previous"]) for e in logs if e["event"] == "schema_changed"]
    assert changed == [(2, 1), (3, 2)]
    registered = [(e["version"], e["schema_id"]) for e in logs if e["event"] == "schema_registered"]
    assert registered == [(1, ids[0]), (2, ids[1]), (3, ids[2])]

    registry = open_registry(config)
    try:
        history = await registry.history(ACCOUNTS)
    finally:
        await registry.close()
    assert [(v.version, v.schema_id, v.breaking) for v in history] == [
        (1, ids[0], False),
        (2, ids[1], False),
        (3, ids[2], True),
    ]
    assert [[c["field"] for c in v.diff] for v in history] == [
        [],
        ["Tier__c"],
        ["NumberOfEmployees"],
    ]


async def test_a_stream_starting_at_the_tip_announces_its_schema_before_any_event(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    ids = three_definitions(emu)
    config = await make_config(
        emu, [{"channel": "/data/AccountChangeEvent", "initial_replay": "latest"}]
    )
    stop = asyncio.Event()
    async with Connector(config, "tip") as connector:
        task = asyncio.create_task(connector.run(stop))
        await until(lambda: len(output(config)) >= 1)
        (announced,) = output(config)
        assert (announced["type"], announced["version"]) == ("SCHEMA", 1)
        assert announced["schema_id"] == ids[2]
        # From `latest`: only events published once the subscription is in place arrive.
        await until(lambda: subscribers(emu, "/data/AccountChangeEvent") > 0)
        emu.create_record("Account", {"Name": "A4", "NumberOfEmployees": "few"})
        await until(lambda: len(records(config)) == 1)
        stop.set()
        assert (await task).ok
    assert sequence(config) == [("SCHEMA", 1, None), ("RECORD", 1, "A4")]


async def derive(config: Config) -> list[Derived]:
    """Register each stream's current schema, as `sfstream schema derive` does."""
    registry = open_registry(config)
    try:
        async with org_session(config) as session:
            tracker = SchemaTracker(session.rest, registry)
            return await tracker.derive(await discover(config, None))
    finally:
        await registry.close()


async def test_a_replay_after_derive_gives_old_schemas_the_next_versions(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    ids = three_definitions(emu)
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
    (derived,) = await derive(config)
    assert derived.version is not None
    assert (derived.version.version, derived.version.schema_id, derived.created) == (
        1,
        ids[2],
        True,
    )

    # The replay meets the two older definitions first: they are registered as they come
    # (2 and 3), and reaching the present one, registered before the run, is no change.
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with Connector(config, "after-derive") as connector:
            task = asyncio.create_task(connector.run(stop))
            await until(lambda: len(records(config)) == 3, timeout_s=60)
            # Once caught up, a new definition is a change again, judged as usual.
            emu.alter_fields("Account", retype={"AnnualRevenue": "string"})
            emu.create_record("Account", {"Name": "A4", "AnnualRevenue": "lots"})
            result = await asyncio.wait_for(task, 60)
    assert isinstance(result.error, SchemaChangeError)
    assert "version 1 to 4" in str(result.error)

    assert sequence(config) == [
        ("SCHEMA", 2, None),
        ("RECORD", 2, "A1"),
        ("SCHEMA", 3, None),
        ("RECORD", 3, "A2"),
        ("SCHEMA", 1, None),
        ("RECORD", 1, "A3"),
    ]
    schemas = [m for m in output(config) if m["type"] == "SCHEMA"]
    assert [m["schema_id"] for m in schemas] == ids
    assert [m["breaking"] for m in schemas] == [False, False, False]
    # The diff still follows the stream: A2 -> A3 retyped NumberOfEmployees.
    assert [c["field"] for c in schemas[2]["diff"]] == ["NumberOfEmployees"]
    changed = [
        (e["version"], e["previous"], e["breaking"]) for e in logs if e["event"] == "schema_changed"
    ]
    assert changed == [(3, 2, False), (4, 1, True)]
    known = [(e["version"], e["previous"]) for e in logs if e["event"] == "schema_known"]
    assert known == [(1, 3)]

    registry = open_registry(config)
    try:
        history = await registry.history(ACCOUNTS)
    finally:
        await registry.close()
    assert [(v.version, v.schema_id) for v in history[:3]] == [
        (1, ids[2]),
        (2, ids[0]),
        (3, ids[1]),
    ]
    assert len(history) == 4


async def test_replaying_known_versions_again_is_no_change(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    three_definitions(emu)
    config = await make_config(
        emu, [{"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"}]
    )
    _, result = await replay(config, 3)
    assert result.ok, result.error

    # The checkpoint is forgotten and the stream rebuilt from the start, under a policy that
    # stops at breaking changes: the breaking change of the first run is known by now.
    assert config.sink.path is not None
    config.sink.path.unlink()
    config.state.path.unlink()
    strict = await make_config(
        emu,
        [
            {
                "channel": "/data/AccountChangeEvent",
                "initial_replay": "earliest",
                "on_breaking_change": "fail",
            }
        ],
    )
    logs, result = await replay(strict, 3)
    assert result.ok, result.error
    assert sequence(strict) == [
        ("SCHEMA", 1, None),
        ("RECORD", 1, "A1"),
        ("SCHEMA", 2, None),
        ("RECORD", 2, "A2"),
        ("SCHEMA", 3, None),
        ("RECORD", 3, "A3"),
    ]
    assert not [e for e in logs if e["event"] in ("schema_changed", "schema_registered")]
    assert [(e["version"], e["previous"]) for e in logs if e["event"] == "schema_known"] == [
        (2, 1),
        (3, 2),
    ]
    assert not any(m["breaking"] for m in output(strict) if m["type"] == "SCHEMA")


async def test_start_uses_the_positions_the_pipeline_resolved(
    sfstream_emulator: Emulator, make_config: MakeConfig
) -> None:
    emu = sfstream_emulator
    ids = three_definitions(emu)
    config = await make_config(
        emu, [{"channel": "/data/AccountChangeEvent", "initial_replay": "latest"}]
    )
    (spec,) = await discover(config, None)
    registry = open_registry(config)
    try:
        async with org_session(config) as session:
            # Resuming from a checkpoint: older events may come, nothing is registered yet.
            resuming = SchemaTracker(session.rest, registry)
            assert await resuming.start([spec], {spec.id: 123}) == []
            assert await registry.subjects() == []
            # At the tip: the current schema is registered and announced before any record.
            at_tip = SchemaTracker(session.rest, registry)
            (message,) = await at_tip.start([spec], {spec.id: -1})
            assert (message.version, message.schema_id) == (1, ids[2])
    finally:
        await registry.close()
