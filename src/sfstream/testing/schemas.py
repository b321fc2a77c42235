"""Conformance suite for `SchemaRegistry` backends.

    async def factory() -> SchemaRegistry: ...   # a fresh registry on the SAME location
    await check_schema_registry(factory)

or parametrize over `SCHEMA_REGISTRY_CHECKS` to get one test per check.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sfstream.schema.registry import SchemaRegistry

RegistryFactory = Callable[[], Awaitable[SchemaRegistry]]


def _schema(*fields: tuple[str, str, bool]) -> dict[str, Any]:
    properties = {}
    for name, json_type, nullable in fields:
        properties[name] = {
            "type": [json_type, "null"] if nullable else json_type,
            "x-salesforce-type": json_type,
        }
    return {"type": "object", "properties": properties}


def _subject(label: str) -> str:
    return f"check.{label}.{uuid.uuid4().hex[:8]}"


async def check_first_version_is_one(factory: RegistryFactory) -> None:
    registry = await factory()
    try:
        subject = _subject("first")
        assert await registry.get(subject) is None
        version, created = await registry.register(
            subject,
            _schema(("Name", "string", True)),
            avro={"type": "record", "name": "A", "fields": []},
            schema_id="sid1",
        )
        assert created
        assert (version.subject, version.version, version.diff, version.breaking) == (
            subject,
            1,
            [],
            False,
        )
        assert version.schema_id == "sid1"
        assert version.avro["name"] == "A"
        assert len(version.fingerprint) == 64
    finally:
        await registry.close()


async def check_identical_schema_returns_the_existing_version(factory: RegistryFactory) -> None:
    registry = await factory()
    try:
        subject = _subject("same")
        schema = _schema(("Name", "string", True), ("Amount", "number", True))
        first, _ = await registry.register(subject, schema, avro={})
        # Same content, keys in another order: the canonical form makes them identical.
        reordered = {
            "properties": dict(reversed(list(schema["properties"].items()))),
            "type": "object",
        }
        again, created = await registry.register(subject, reordered, avro={})
        assert not created
        assert again.version == first.version
        assert again.fingerprint == first.fingerprint
        assert len(await registry.history(subject)) == 1
    finally:
        await registry.close()


async def check_versions_count_up_with_diffs(factory: RegistryFactory) -> None:
    registry = await factory()
    try:
        subject = _subject("grow")
        v1 = _schema(("Name", "string", True))
        v2 = _schema(("Name", "string", True), ("Tier", "string", True))
        v3 = _schema(("Name", "integer", True), ("Tier", "string", True))
        for schema in (v1, v2, v3):
            await registry.register(subject, schema, avro={})
        history = await registry.history(subject)
        assert [v.version for v in history] == [1, 2, 3]
        assert [c["change"] for c in history[1].diff] == ["field_added"]
        assert not history[1].breaking
        assert [c["change"] for c in history[2].diff] == ["type_changed"]
        assert history[2].breaking
        latest = await registry.get(subject)
        assert latest is not None
        assert latest.version == 3
        second = await registry.get(subject, 2)
        assert second is not None
        assert second.schema == v2
        assert await registry.get(subject, 9) is None
        # Going back to an earlier shape returns that version; the latest stays.
        back, created = await registry.register(subject, v1, avro={})
        assert (back.version, created) == (1, False)
    finally:
        await registry.close()


async def check_subjects_are_listed_and_kept_apart(factory: RegistryFactory) -> None:
    registry = await factory()
    try:
        a, b = _subject("a"), _subject("b")
        await registry.register(a, _schema(("X", "string", True)), avro={})
        await registry.register(b, _schema(("Y", "string", True)), avro={})
        subjects = await registry.subjects()
        assert a in subjects
        assert b in subjects
        assert subjects == sorted(subjects)
        history = await registry.history(a)
        assert [list(v.schema["properties"]) for v in history] == [["X"]]
    finally:
        await registry.close()


async def check_versions_survive_reopen(factory: RegistryFactory) -> None:
    subject = _subject("reopen")
    registry = await factory()
    try:
        await registry.register(subject, _schema(("X", "string", True)), avro={"k": 1})
    finally:
        await registry.close()
    registry = await factory()
    try:
        found = await registry.get(subject)
        assert found is not None
        assert (found.version, found.avro) == (1, {"k": 1})
    finally:
        await registry.close()


async def check_concurrent_registrations_agree(factory: RegistryFactory) -> None:
    subject = _subject("race")
    registries = [await factory() for _ in range(3)]
    try:
        schema = _schema(("X", "string", True))
        results = await asyncio.gather(
            *(r.register(subject, schema, avro={}) for r in registries for _ in range(3))
        )
        assert {version.version for version, _ in results} == {1}
        assert sum(created for _, created in results) == 1
    finally:
        for registry in registries:
            await registry.close()


SCHEMA_REGISTRY_CHECKS: list[tuple[str, Callable[[RegistryFactory], Awaitable[None]]]] = [
    ("first_version_is_one", check_first_version_is_one),
    (
        "identical_schema_returns_the_existing_version",
        check_identical_schema_returns_the_existing_version,
    ),
    ("versions_count_up_with_diffs", check_versions_count_up_with_diffs),
    ("subjects_are_listed_and_kept_apart", check_subjects_are_listed_and_kept_apart),
    ("versions_survive_reopen", check_versions_survive_reopen),
    ("concurrent_registrations_agree", check_concurrent_registrations_agree),
]


async def check_schema_registry(factory: RegistryFactory) -> None:
    """Run every check of `SCHEMA_REGISTRY_CHECKS` against registries made by `factory`."""
    for name, check in SCHEMA_REGISTRY_CHECKS:
        try:
            await check(factory)
        except AssertionError as exc:
            raise AssertionError(f"schema registry check {name} failed: {exc}") from exc
