"""`sfstream state init` creates where the state and the schema registry live, says what it
did, and changes nothing when run again; the other `state` commands then work on it. Run as
`python -m sfstream.cli` against moto's server (DynamoDB), the local PostgreSQL server and
SQLite files."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from psycopg import sql

from tests.aws import Aws
from tests.cli.test_commands import sfstream

DSN = os.environ.get("SFSTREAM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
STREAM = "sf.event.account_changes"


@pytest.fixture(autouse=True)
def refresh_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """`state set` and `reset` load the configuration with its secrets (from the environment)."""
    monkeypatch.setenv("SF_REFRESH_TOKEN", "rt")


def write_config(tmp_path: Path, **sections: Any) -> str:
    document = {
        "salesforce": {"client_id": "id", "refresh_token": "${secret:SF_REFRESH_TOKEN}"},
        "streams": [{"channel": "/data/AccountChangeEvent"}],
        **sections,
    }
    path = tmp_path / "sfstream.yaml"
    path.write_text(yaml.safe_dump(document))
    return str(path)


async def test_dynamodb_table_is_created_once_and_then_used(aws: Aws, tmp_path: Path) -> None:
    table = aws.name("sfstream-state")
    config = write_config(
        tmp_path,
        state={
            "backend": "dynamodb",
            "table": table,
            "region": aws.region,
            "endpoint_url": aws.endpoint,
        },
    )
    # Before `init`: reading finds nothing, changing says how to create the table.
    code, out, err = await sfstream("state", "show", "--config", config)
    assert (code, out.strip()) == (0, "no checkpoints yet"), err
    code, out, err = await sfstream("state", "set", "--config", config, STREAM, "42")
    assert code == 1, out
    assert f"DynamoDB table '{table}' ({aws.region}) does not exist" in err
    assert "sfstream state init --config FILE" in err

    code, out, err = await sfstream("state", "init", "--config", config)
    assert code == 0, err
    assert out.splitlines() == [
        f"state: created DynamoDB table {table} in {aws.region} (on-demand capacity; string keys "
        f"pk (HASH) and sk (RANGE))",
        f"schema registry: in the same table (DynamoDB table {table} ({aws.region})), under "
        f"pk = schemas",
    ]
    code, out, err = await sfstream("state", "init", "--config", config)
    assert code == 0, err
    assert out.splitlines()[0] == (
        f"state: DynamoDB table {table} in {aws.region} exists with the keys sfstream needs; "
        f"left as it is"
    )
    described = aws.client("dynamodb").describe_table(TableName=table)["Table"]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"

    code, out, err = await sfstream("state", "set", "--config", config, STREAM, "42")
    assert code == 0, err
    assert f"{STREAM}: checkpoint set to 42 (it had none)" in out
    code, out, err = await sfstream("state", "show", "--config", config, "--json")
    assert code == 0, err
    (row,) = orjson.loads(out)["checkpoints"]
    assert (row["stream"], row["replay_id"], row["pending"]["start"]) == (STREAM, 42, 42)
    code, out, err = await sfstream("state", "reset", "--config", config, STREAM)
    assert code == 0, err
    assert "checkpoint removed (was 42)" in out
    assert not (tmp_path / ".sfstream").exists()  # nothing local beside a remote state


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    name = f"sfstream_init_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


async def test_postgres_tables_are_created_explicitly(pg_schema: str, tmp_path: Path) -> None:
    table = f"{pg_schema}.checkpoints"
    config = write_config(tmp_path, state={"backend": "postgres", "dsn": DSN, "table": table})
    database = "postgresql://postgres@127.0.0.1:5432/test"
    code, out, err = await sfstream("state", "init", "--config", config)
    assert code == 0, err
    assert out.splitlines() == [
        f"state: created table {table} in {database}",
        f"state: created table {table}_overrides in {database}",
        f"state: created table {table}_leases in {database}",
        f"state: created table {table}_members in {database}",
        f"schema registry: created table {pg_schema}.sfstream_schemas in {database}",
    ]
    code, out, err = await sfstream("state", "init", "--config", config)
    assert code == 0, err
    assert out.splitlines() == [
        f"state: kept the existing table {table} in {database}",
        f"state: kept the existing table {table}_overrides in {database}",
        f"state: kept the existing table {table}_leases in {database}",
        f"state: kept the existing table {table}_members in {database}",
        f"schema registry: kept the existing table {pg_schema}.sfstream_schemas in {database}",
    ]
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
            " ORDER BY table_name",
            (pg_schema,),
        )
        assert [row[0] for row in await cursor.fetchall()] == [
            "checkpoints",
            "checkpoints_leases",
            "checkpoints_members",
            "checkpoints_overrides",
            "sfstream_schemas",
        ]


async def test_sqlite_files_are_created_explicitly(tmp_path: Path) -> None:
    config = write_config(tmp_path, state={"path": "data/state.db"})
    code, out, err = await sfstream("state", "init", "--config", config)
    assert code == 0, err
    state, schemas = tmp_path / "data" / "state.db", tmp_path / "data" / "schemas.db"
    assert out.splitlines() == [
        f"state: created the database {state} (mode 600)",
        f"schema registry: {schemas} created",
    ]
    assert state.stat().st_mode & 0o777 == 0o600
    assert schemas.is_file()
    code, out, err = await sfstream("state", "init", "--config", config)
    assert code == 0, err
    assert out.splitlines() == [
        f"state: the database {state} is ready (it existed; migrated if it was older)",
        f"schema registry: {schemas} is ready (it existed)",
    ]


async def test_a_table_with_other_keys_is_refused(aws: Aws, tmp_path: Path) -> None:
    table = aws.name("taken")
    aws.client("dynamodb").create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    config = write_config(
        tmp_path, state={"backend": "dynamodb", "table": table, "endpoint_url": aws.endpoint}
    )
    code, out, err = await sfstream("state", "init", "--config", config)
    assert code == 1, out
    assert "exists with the keys id (HASH); sfstream needs the string keys pk (HASH)" in err
