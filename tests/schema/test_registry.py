"""The embedded schema registry passes the conformance suite."""

from __future__ import annotations

import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sfstream.errors import StorageError
from sfstream.schema.registry import SchemaRegistry, SqliteSchemaRegistry
from sfstream.testing.schemas import SCHEMA_REGISTRY_CHECKS, check_schema_registry


@pytest.fixture
def factory(tmp_path: Path) -> Callable[[], Awaitable[SchemaRegistry]]:
    async def make() -> SchemaRegistry:
        return SqliteSchemaRegistry(tmp_path / "registry" / "schemas.db")

    return make


@pytest.mark.parametrize(
    ("name", "check"), SCHEMA_REGISTRY_CHECKS, ids=[name for name, _ in SCHEMA_REGISTRY_CHECKS]
)
async def test_conformance(
    factory: Callable[[], Awaitable[SchemaRegistry]],
    name: str,
    check: Callable[..., Awaitable[None]],
) -> None:
    await check(factory)


async def test_whole_suite_on_one_file(factory: Callable[[], Awaitable[SchemaRegistry]]) -> None:
    await check_schema_registry(factory)


async def test_file_is_private(tmp_path: Path) -> None:
    registry = SqliteSchemaRegistry(tmp_path / "schemas.db")
    await registry.register("s", {"type": "object"}, avro={})
    await registry.close()
    assert stat.S_IMODE((tmp_path / "schemas.db").stat().st_mode) == 0o600


async def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "schemas.db"
    path.write_bytes(b"this is not sqlite" * 100)
    registry = SqliteSchemaRegistry(path)
    with pytest.raises(StorageError, match="not a usable SQLite database"):
        await registry.subjects()
    await registry.close()


async def test_a_read_only_registry_that_does_not_exist_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "not yet" / "schemas.db"
    registry = SqliteSchemaRegistry(path, read_only=True)
    try:
        assert not registry.exists()
        assert await registry.subjects() == []
        assert await registry.get("s") is None
        assert await registry.history("s") == []
        with pytest.raises(StorageError, match="read-only"):
            await registry.register("s", {"type": "object"}, avro={})
    finally:
        await registry.close()
    assert not path.parent.exists()


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of `directory` with its content."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


async def test_a_read_only_registry_reads_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "schemas.db"
    writer = SqliteSchemaRegistry(path)
    await writer.register("s", {"type": "object", "properties": {"A": {"type": "string"}}}, avro={})
    await writer.close()
    before = snapshot(tmp_path)
    assert list(before) == ["schemas.db"]

    registry = SqliteSchemaRegistry(path, read_only=True)
    try:
        assert await registry.subjects() == ["s"]
        found = await registry.get("s")
        assert found is not None
        assert found.version == 1
        assert [v.version for v in await registry.history("s")] == [1]
        with pytest.raises(StorageError, match="read-only"):
            await registry.register("t", {"type": "object"}, avro={})
    finally:
        await registry.close()
    assert snapshot(tmp_path) == before


async def test_a_read_only_registry_sees_what_a_running_writer_committed(tmp_path: Path) -> None:
    path = tmp_path / "schemas.db"
    writer = SqliteSchemaRegistry(path)
    try:
        await writer.register("s", {"type": "object"}, avro={})
        assert path.with_name("schemas.db-wal").exists()  # not checkpointed while open
        reader = SqliteSchemaRegistry(path, read_only=True)
        try:
            assert await reader.subjects() == ["s"]
        finally:
            await reader.close()
    finally:
        await writer.close()


async def test_a_read_only_registry_without_its_table_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "schemas.db"
    path.touch()
    registry = SqliteSchemaRegistry(path, read_only=True)
    try:
        assert await registry.subjects() == []
    finally:
        await registry.close()
    assert path.read_bytes() == b""
