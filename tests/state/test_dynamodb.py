"""DynamoDB state store against moto's server: the conformance suite, the table's layout,
the run lock across processes, and failures."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable

import orjson
import pytest

from sfstream.errors import ConfigError, StorageError, StorageUnavailableError
from sfstream.state import DynamoDbStateStore, StateStore, StreamOwnedError
from sfstream.state.dynamodb import SHARDS, shard_of
from sfstream.testing.state import STATE_STORE_CHECKS, StoreFactory, check_state_store
from tests.aws import Aws


@pytest.fixture
async def table(aws: Aws) -> str:
    name = aws.name("sfstream-state")
    store = DynamoDbStateStore(name, region=aws.region, endpoint_url=aws.endpoint)
    try:
        assert await store.create_table() is True
    finally:
        await store.close()
    return name


@pytest.fixture
def factory(aws: Aws, table: str) -> StoreFactory:
    async def make() -> StateStore:
        return DynamoDbStateStore(table, region=aws.region, endpoint_url=aws.endpoint)

    return make


@pytest.mark.parametrize(
    ("name", "check"), STATE_STORE_CHECKS, ids=[name for name, _ in STATE_STORE_CHECKS]
)
async def test_conformance(
    name: str, check: Callable[[StoreFactory], Awaitable[None]], factory: StoreFactory
) -> None:
    await check(factory)


async def test_whole_suite_on_one_table(factory: StoreFactory) -> None:
    await check_state_store(factory)


async def test_creating_the_table_again_changes_nothing(aws: Aws, table: str) -> None:
    async with DynamoDbStateStore(table, endpoint_url=aws.endpoint) as store:
        await store.commit({"sf.event.a": 7})
        assert await store.create_table() is False
        assert (await store.load())["sf.event.a"].replay_id == 7
    described = aws.client("dynamodb").describe_table(TableName=table)["Table"]
    assert {(k["AttributeName"], k["KeyType"]) for k in described["KeySchema"]} == {
        ("pk", "HASH"),
        ("sk", "RANGE"),
    }
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


async def test_a_table_with_other_keys_is_refused(aws: Aws) -> None:
    name = aws.name("other-keys")
    aws.client("dynamodb").create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    async with DynamoDbStateStore(name, endpoint_url=aws.endpoint) as store:
        with pytest.raises(StorageError, match="exists with the keys id") as caught:
            await store.create_table()
        assert not caught.value.retryable
        with pytest.raises(StorageError, match="string keys pk") as caught:
            await store.commit({"sf.event.a": 1})
        assert not caught.value.retryable


async def test_items_are_laid_out_as_documented(aws: Aws, table: str) -> None:
    streams = {f"sf.event.s{index}": index for index in range(40)}
    async with DynamoDbStateStore(table, endpoint_url=aws.endpoint) as store:
        await store.commit(streams, {"sf.event.s1": 1714521600.25})
        await store.override("sf.event.s2", -2)
    client = aws.client("dynamodb")
    items = client.query(
        TableName=table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "checkpoints"}},
        ConsistentRead=True,
    )["Items"]
    assert {item["sk"]["S"] for item in items} == {
        f"shard#{shard_of(stream):02d}" for stream in streams
    }
    assert all(item["sk"]["S"] < f"shard#{SHARDS:02d}" for item in items)
    held = {
        stream: fields
        for item in items
        for stream, fields in orjson.loads(item["checkpoints"]["S"]).items()
    }
    assert held["sf.event.s1"]["replay_id"] == 1
    assert held["sf.event.s1"]["event_time"] == 1714521600.25
    assert "event_time" not in held["sf.event.s3"]
    assert "sf.event.s2" not in held
    pending = {
        stream: fields
        for item in items
        for stream, fields in orjson.loads(item["overrides"]["S"]).items()
    }
    assert pending["sf.event.s2"]["start"] == -2
    assert pending["sf.event.s2"]["previous"] == 2
    assert {int(item["version"]["N"]) for item in items} <= {1, 2}


async def test_a_commit_lost_to_another_store_is_applied_again(aws: Aws, table: str) -> None:
    async with (
        DynamoDbStateStore(table, endpoint_url=aws.endpoint) as one,
        DynamoDbStateStore(table, endpoint_url=aws.endpoint) as two,
    ):
        await one.commit({"sf.event.a": 1})
        # `two` writes the same shard after `one` last saw it: `one`'s next conditional
        # write fails, and it reads the shard again instead of overwriting `two`'s stream.
        neighbour = next(
            f"sf.event.n{index}"
            for index in range(1000)
            if shard_of(f"sf.event.n{index}") == shard_of("sf.event.a")
        )
        await two.commit({neighbour: 5})
        await one.commit({"sf.event.a": 2})
        assert {s: c.replay_id for s, c in (await two.load()).items()} == {
            "sf.event.a": 2,
            neighbour: 5,
        }


async def test_a_read_only_store_writes_nothing_and_reads_a_missing_table_as_empty(
    aws: Aws, table: str
) -> None:
    missing = aws.name("missing")
    async with DynamoDbStateStore(missing, endpoint_url=aws.endpoint, read_only=True) as store:
        assert await store.load() == {}
        assert await store.overrides(["sf.event.a"]) == {}
        for change in (store.commit({"a": 1}), store.reset("a"), store.override("a", 1)):
            with pytest.raises(StorageError, match="opened read-only"):
                await change
        with pytest.raises(StorageError, match="read-only"):
            async with store.owner(["a"]):
                pass
    assert "read_only=True" in repr(store)
    async with DynamoDbStateStore(table, endpoint_url=aws.endpoint) as writer:
        await writer.commit({"a": 3})
    async with DynamoDbStateStore(table, endpoint_url=aws.endpoint, read_only=True) as reader:
        assert (await reader.load())["a"].replay_id == 3


async def test_a_missing_table_is_terminal_and_says_how_to_create_it(aws: Aws) -> None:
    name = aws.name("missing")
    async with DynamoDbStateStore(name, region=aws.region, endpoint_url=aws.endpoint) as store:
        for call in (store.load, lambda: store.commit({"a": 1})):
            with pytest.raises(StorageError, match="sfstream state init") as caught:
                await call()
            assert not caught.value.retryable
            assert name in str(caught.value)


async def test_an_unreachable_endpoint_is_retryable(aws: Aws) -> None:
    async with DynamoDbStateStore("sfstream-state", endpoint_url="http://127.0.0.1:1") as store:
        with pytest.raises(StorageUnavailableError, match="cannot be reached") as caught:
            await store.load()
    assert caught.value.retryable


async def test_without_a_region_the_store_says_how_to_set_one(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    async with DynamoDbStateStore("sfstream-state") as store:
        with pytest.raises(StorageError, match=r"set state\.region or AWS_REGION") as caught:
            await store.load()
    assert not caught.value.retryable


@pytest.mark.parametrize("table", ["", "ab", "has space", "a" * 256, "semi;colon"])
def test_invalid_table_name(table: str) -> None:
    with pytest.raises(ConfigError, match="DynamoDB table name"):
        DynamoDbStateStore(table)


async def test_closed_store_refuses_calls(aws: Aws, table: str) -> None:
    store = DynamoDbStateStore(table, endpoint_url=aws.endpoint)
    await store.commit({"a": 1})
    await store.close()
    with pytest.raises(StorageError, match="closed"):
        await store.load()


async def test_ownership_is_per_stream_and_names_its_holder(aws: Aws, table: str) -> None:
    async with (
        DynamoDbStateStore(table, endpoint_url=aws.endpoint) as one,
        DynamoDbStateStore(table, endpoint_url=aws.endpoint) as two,
        one.owner(["sf.event.a", "sf.event.b"]),
    ):
        with pytest.raises(StreamOwnedError) as caught:
            async with two.owner(["sf.event.c", "sf.event.b"]):
                pass
        assert str(caught.value).startswith(
            f"stream sf.event.b is being streamed by a running `sfstream run` "
            f"(pid {os.getpid()} on host "
        )
        assert caught.value.streams == ["sf.event.b"]
        # Several connectors may share one table, each with its own streams; a refused
        # attempt left none of its streams owned.
        async with two.owner(["sf.event.c"]):
            pass


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from sfstream.state.dynamodb import DynamoDbStateStore

    async def main():
        store = DynamoDbStateStore(sys.argv[1], endpoint_url=sys.argv[2], lock_ttl_s=3.0)
        async with store.owner(["sf.event.a"]):
            print("owned", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_the_lock_of_a_live_holder_is_renewed_and_a_dead_ones_expires(
    aws: Aws, table: str
) -> None:
    holder = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", HOLDER, table, aws.endpoint), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        async with asyncio.timeout(30):
            assert await holder.stdout.readline() == b"owned\n"
        async with DynamoDbStateStore(table, endpoint_url=aws.endpoint) as store:
            # Past its 3 s time to live: renewed by the live holder.
            for _ in range(3):
                await asyncio.sleep(2)
                with pytest.raises(StreamOwnedError, match=f"pid {holder.pid} on host"):
                    async with store.owner(["sf.event.a"]):
                        pass
            holder.send_signal(signal.SIGKILL)
            await holder.wait()
            with pytest.raises(StreamOwnedError):
                async with store.owner(["sf.event.a"]):
                    pass
            await asyncio.sleep(3.5)
            async with store.owner(["sf.event.a"]):
                pass
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


def test_importing_the_state_package_does_not_import_boto3() -> None:
    code = (
        "import sys, sfstream, sfstream.state, sfstream.testing.state\n"
        "sfstream.state.DynamoDbStateStore('sfstream-state')\n"
        "assert 'boto3' not in sys.modules, 'boto3 was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
