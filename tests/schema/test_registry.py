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
