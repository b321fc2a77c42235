"""The schema registry where the state lives: a PostgreSQL table (against the local server)
and items of the state's DynamoDB table (against moto's server). Both pass the conformance
suite; the configuration puts the registry with the state, never in a stray local file."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from psycopg import sql

from sfstream.engine.config import load_config
from sfstream.errors import ConfigError, StorageError, StorageUnavailableError
from sfstream.runners.wiring import open_registry
from sfstream.schema.dynamodb import DynamoDbSchemaRegistry
from sfstream.schema.postgres import PostgresSchemaRegistry, table_beside
from sfstream.schema.registry import SchemaRegistry, SqliteSchemaRegistry
from sfstream.state.dynamodb import DynamoDbStateStore
from sfstream.testing.schemas import SCHEMA_REGISTRY_CHECKS, check_schema_registry
from tests.aws import Aws

DSN = os.environ.get("SFSTREAM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
RegistryFactory = Callable[[], Awaitable[SchemaRegistry]]
CHECK_IDS = [name for name, _ in SCHEMA_REGISTRY_CHECKS]


def schema(*names: str) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": ["string", "null"]} for name in names}}


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
async def pg_table() -> AsyncIterator[str]:
    name = f"sfstream_schemas_{uuid.uuid4().hex[:12]}"
    yield name
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def pg_factory(pg_table: str) -> RegistryFactory:
    async def make() -> SchemaRegistry:
        return PostgresSchemaRegistry(DSN, pg_table)

    return make


@pytest.mark.parametrize(("name", "check"), SCHEMA_REGISTRY_CHECKS, ids=CHECK_IDS)
async def test_postgres_conformance(
    pg_factory: RegistryFactory, name: str, check: Callable[..., Awaitable[None]]
) -> None:
    await check(pg_factory)


async def test_postgres_whole_suite_on_one_table(pg_factory: RegistryFactory) -> None:
    await check_schema_registry(pg_factory)


async def test_postgres_table_and_read_only_registry(pg_table: str) -> None:
    reader = PostgresSchemaRegistry(DSN, pg_table, read_only=True)
    try:
        assert await reader.subjects() == []
        assert await reader.get("s") is None
        assert await reader.history("s") == []
        with pytest.raises(StorageError, match="read-only"):
            await reader.register("s", schema("A"), avro={})
    finally:
        await reader.close()
    writer = PostgresSchemaRegistry(DSN, pg_table)
    try:
        assert await writer.create_table() is True
        assert await writer.create_table() is False
        made, created = await writer.register("s", schema("A"), avro={"type": "record"})
        assert created
    finally:
        await writer.close()
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        cursor = await conn.execute(
            sql.SQL("SELECT subject, version, json_schema, avro_schema FROM {}").format(
                sql.Identifier(pg_table)
            )
        )
        assert await cursor.fetchall() == [("s", 1, made.schema, {"type": "record"})]
    reader = PostgresSchemaRegistry(DSN, pg_table, read_only=True)
    try:
        found = await reader.get("s")
        assert found == made
    finally:
        await reader.close()


def test_postgres_registry_sits_in_the_schema_of_the_state_table() -> None:
    assert table_beside("sfstream_checkpoints") == "sfstream_schemas"
    assert table_beside("state.checkpoints") == "state.sfstream_schemas"


async def test_postgres_unreachable_is_retryable_and_hides_the_password() -> None:
    registry = PostgresSchemaRegistry("postgresql://u:hunter22-secret@127.0.0.1:1/db")
    try:
        with pytest.raises(StorageUnavailableError, match="Connection refused") as caught:
            await registry.subjects()
    finally:
        await registry.close()
    assert caught.value.retryable
    assert "hunter22-secret" not in str(caught.value)
    assert "hunter22-secret" not in repr(registry)


# -- DynamoDB ------------------------------------------------------------------------------------


@pytest.fixture
async def ddb_table(aws: Aws) -> str:
    name = aws.name("sfstream-state")
    store = DynamoDbStateStore(name, endpoint_url=aws.endpoint)
    try:
        await store.create_table()
    finally:
        await store.close()
    return name


@pytest.fixture
def ddb_factory(aws: Aws, ddb_table: str) -> RegistryFactory:
    async def make() -> SchemaRegistry:
        return DynamoDbSchemaRegistry(ddb_table, endpoint_url=aws.endpoint)

    return make


@pytest.mark.parametrize(("name", "check"), SCHEMA_REGISTRY_CHECKS, ids=CHECK_IDS)
async def test_dynamodb_conformance(
    ddb_factory: RegistryFactory, name: str, check: Callable[..., Awaitable[None]]
) -> None:
    await check(ddb_factory)


async def test_dynamodb_whole_suite_on_one_table(ddb_factory: RegistryFactory) -> None:
    await check_schema_registry(ddb_factory)


async def test_dynamodb_versions_sit_beside_the_checkpoints(aws: Aws, ddb_table: str) -> None:
    async with DynamoDbStateStore(ddb_table, endpoint_url=aws.endpoint) as store:
        await store.commit({"sf.event.a": 3})
    registry = DynamoDbSchemaRegistry(ddb_table, endpoint_url=aws.endpoint)
    try:
        await registry.register("sf.event.a", schema("A"), avro={}, schema_id="sid")
        await registry.register("sf.event.a", schema("A", "B"), avro={})
        # A subject whose name starts like another's is kept apart.
        await registry.register("sf.event.a#v", schema("C"), avro={})
        assert [v.version for v in await registry.history("sf.event.a")] == [1, 2]
        assert await registry.subjects() == ["sf.event.a", "sf.event.a#v"]
    finally:
        await registry.close()
    items = aws.client("dynamodb").query(
        TableName=ddb_table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "schemas"}},
        ConsistentRead=True,
    )["Items"]
    keys = sorted(item["sk"]["S"] for item in items)
    assert keys == ["sf.event.a#v#v0000000001", "sf.event.a#v0000000001", "sf.event.a#v0000000002"]
    first = next(item for item in items if item["sk"]["S"] == "sf.event.a#v0000000001")
    assert orjson.loads(first["json_schema"]["S"]) == schema("A")
    assert first["schema_id"] == {"S": "sid"}
    async with DynamoDbStateStore(ddb_table, endpoint_url=aws.endpoint) as store:
        assert (await store.load())["sf.event.a"].replay_id == 3


async def test_dynamodb_a_schema_too_large_for_an_item_is_compressed(
    aws: Aws, ddb_table: str
) -> None:
    wide = schema(*(f"Field_{index:04d}__c_with_a_long_descriptive_name" for index in range(6000)))
    registry = DynamoDbSchemaRegistry(ddb_table, endpoint_url=aws.endpoint)
    try:
        made, _ = await registry.register("sf.event.wide", wide, avro={"fields": list(wide)})
        found = await registry.get("sf.event.wide", 1)
    finally:
        await registry.close()
    assert found == made
    assert found is not None
    assert found.schema == wide


async def test_dynamodb_read_only_registry(aws: Aws) -> None:
    registry = DynamoDbSchemaRegistry(
        aws.name("missing"), endpoint_url=aws.endpoint, read_only=True
    )
    try:
        assert await registry.subjects() == []
        assert await registry.get("s") is None
        assert await registry.get("s", 1) is None
        with pytest.raises(StorageError, match="read-only"):
            await registry.register("s", schema("A"), avro={})
    finally:
        await registry.close()
    writable = DynamoDbSchemaRegistry(aws.name("missing"), endpoint_url=aws.endpoint)
    try:
        with pytest.raises(StorageError, match="sfstream state init"):
            await writable.register("s", schema("A"), avro={})
    finally:
        await writable.close()


# -- with the state, through the configuration ---------------------------------------------------


async def load(tmp_path: Path, **sections: Any) -> Any:
    document = {
        "salesforce": {"client_id": "id", "refresh_token": "rt"},
        "streams": [{"channel": "/data/AccountChangeEvent"}],
        **sections,
    }
    path = tmp_path / "sfstream.yaml"
    path.write_text(yaml.safe_dump(document))
    return await load_config(path, environ={})


async def test_the_registry_follows_the_state(aws: Aws, tmp_path: Path) -> None:
    config = await load(tmp_path, state={"path": "data/state.db"})
    registry = open_registry(config)
    assert isinstance(registry, SqliteSchemaRegistry)
    assert registry.path == tmp_path / "data" / "schemas.db"

    config = await load(
        tmp_path, state={"backend": "postgres", "dsn": DSN, "table": "public.checkpoints"}
    )
    assert config.schema_registry.path is None
    registry = open_registry(config, read_only=True)
    assert isinstance(registry, PostgresSchemaRegistry)
    assert (registry.table, registry.read_only) == ("public.sfstream_schemas", True)

    config = await load(
        tmp_path,
        state={"backend": "dynamodb", "table": "sfstream-state", "endpoint_url": aws.endpoint},
    )
    assert config.schema_registry.path is None
    registry = open_registry(config)
    assert isinstance(registry, DynamoDbSchemaRegistry)
    assert registry.table == "sfstream-state"

    config = await load(
        tmp_path,
        state={"backend": "dynamodb", "table": "sfstream-state"},
        schema_registry={"backend": "sqlite", "path": "/var/lib/sfstream/schemas.db"},
    )
    registry = open_registry(config)
    assert isinstance(registry, SqliteSchemaRegistry)
    assert registry.path == Path("/var/lib/sfstream/schemas.db")
    assert not (tmp_path / "schemas.db").exists()
    assert not (tmp_path / ".sfstream").exists()


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        (
            {
                "state": {"backend": "dynamodb", "table": "sfstream-state"},
                "schema_registry": {"path": "schemas.db"},
            },
            "schema_registry.path: with state.backend: dynamodb the schema registry lives with "
            "the state, not in a local file",
        ),
        (
            {
                "state": {"backend": "postgres", "dsn": DSN},
                "schema_registry": {"backend": "sqlite"},
            },
            "schema_registry: the sqlite backend under a postgres state needs `path`",
        ),
        (
            {"schema_registry": {"backend": "dynamodb"}},
            "schema_registry.backend: dynamodb keeps schema versions with the state, which is "
            "not in dynamodb (state.backend: sqlite)",
        ),
        (
            {"state": {"backend": "dynamodb"}},
            "state: the dynamodb backend needs `table`",
        ),
    ],
)
async def test_a_registry_away_from_a_remote_state_is_a_configuration_error(
    tmp_path: Path, sections: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        await load(tmp_path, **sections)
    assert expected in str(caught.value)
