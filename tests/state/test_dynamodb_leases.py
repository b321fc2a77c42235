"""DynamoDB leases against moto's server: the lease conformance suite, racing workers, the
items' layout, fenced commits too big for one transaction's lease checks, and failures."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from sfstream.errors import LeaseLostError, StorageError, StorageUnavailableError
from sfstream.state import DynamoDbStateStore, StateStore
from sfstream.state.base import Fence, LeaseStore
from sfstream.state.dynamodb import shard_of
from sfstream.testing.leases import LEASE_STORE_CHECKS, check_lease_store
from sfstream.testing.state import StoreFactory
from tests.aws import Aws


@pytest.fixture
async def table(aws: Aws) -> str:
    name = aws.name("sfstream-leases")
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


def _names(label: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"sf.{label}.{run}.{index:03d}" for index in range(count)]


@pytest.mark.parametrize(
    ("name", "check"), LEASE_STORE_CHECKS, ids=[name for name, _ in LEASE_STORE_CHECKS]
)
async def test_conformance(
    name: str, check: Callable[[StoreFactory], Awaitable[None]], factory: StoreFactory
) -> None:
    await check(factory)


async def test_whole_suite_on_one_table(factory: StoreFactory) -> None:
    await check_lease_store(factory)


async def test_racing_workers_leave_each_stream_exactly_one_owner(aws: Aws, table: str) -> None:
    streams = _names("race", 20)
    workers = [f"worker-{index}" for index in range(4)]
    # Each store has its own boto3 client: the race is between separate connections.
    stores = [DynamoDbStateStore(table, endpoint_url=aws.endpoint) for _ in workers]
    try:
        results = await asyncio.gather(
            *(
                store.acquire(streams, worker, 30.0)
                for store, worker in zip(stores, workers, strict=True)
            )
        )
        winners = {
            stream: [worker for worker, got in zip(workers, results, strict=True) if stream in got]
            for stream in streams
        }
        assert all(len(owners) == 1 for owners in winners.values()), winners
        seen = await stores[0].leases(streams)
        assert {stream: (lease.owner, lease.token) for stream, lease in seen.items()} == {
            stream: (owners[0], 1) for stream, owners in winners.items()
        }
    finally:
        for store in stores:
            await store.close()


async def test_items_are_laid_out_as_documented(aws: Aws, table: str) -> None:
    (stream,) = _names("layout", 1)
    async with DynamoDbStateStore(table, endpoint_url=aws.endpoint) as store:
        taken = await store.acquire([stream], "worker-a", 30.0)
        await store.join("worker-a", 30.0)
    client = aws.client("dynamodb")
    item = client.get_item(
        TableName=table,
        Key={"pk": {"S": f"lease#{shard_of(stream):02d}"}, "sk": {"S": stream}},
        ConsistentRead=True,
    )["Item"]
    assert item["owner"] == {"S": "worker-a"}
    assert item["token"] == {"N": "1"}
    assert float(item["expires_at"]["N"]) == taken[stream].expires_at
    assert float(item["acquired_at"]["N"]) == taken[stream].acquired_at
    member = client.get_item(
        TableName=table, Key={"pk": {"S": "member"}, "sk": {"S": "worker-a"}}, ConsistentRead=True
    )["Item"]
    assert member["worker"] == {"S": "worker-a"}
    assert float(member["joined_at"]["N"]) <= float(member["expires_at"]["N"])
    # Taking the lease moved the stream's checkpoint shard on a version (and made it).
    shard = client.get_item(
        TableName=table,
        Key={"pk": {"S": "checkpoints"}, "sk": {"S": f"shard#{shard_of(stream):02d}"}},
        ConsistentRead=True,
    )["Item"]
    assert shard["version"] == {"N": "1"}
    assert shard["checkpoints"] == {"S": "{}"}


async def test_a_fenced_commit_too_big_for_lease_checks_is_fenced_too(aws: Aws, table: str) -> None:
    streams = _names("big", 120)
    async with (
        DynamoDbStateStore(table, endpoint_url=aws.endpoint) as zombie,
        DynamoDbStateStore(table, endpoint_url=aws.endpoint) as heir,
    ):
        first = await zombie.acquire(streams, "zombie", 0.5)
        fence = Fence("zombie", {stream: lease.token for stream, lease in first.items()})
        await zombie.commit(dict.fromkeys(streams, 10), fence=fence)
        assert {c.replay_id for c in (await heir.load(streams)).values()} == {10}
        await asyncio.sleep(1.0)
        taken = await heir.acquire(streams[7:9], "heir", 30.0)
        assert set(taken) == set(streams[7:9])
        with pytest.raises(LeaseLostError) as caught:
            await zombie.commit(dict.fromkeys(streams, 20), fence=fence)
        assert caught.value.streams == streams[7:9]
        assert {c.replay_id for c in (await heir.load(streams)).values()} == {10}
        refused = await heir.leases(streams[7:9])
        assert {(lease.refused, lease.refused_worker) for lease in refused.values()} == {
            (1, "zombie")
        }
        rest = [stream for stream in streams if stream not in taken]
        await zombie.commit(dict.fromkeys(rest, 30), fence=fence)
        loaded = await heir.load(streams)
        assert {stream: c.replay_id for stream, c in loaded.items()} == {
            stream: 10 if stream in taken else 30 for stream in streams
        }


async def test_an_expired_member_that_joins_again_is_a_new_member(aws: Aws, table: str) -> None:
    async with DynamoDbStateStore(table, endpoint_url=aws.endpoint) as store:
        await store.join("worker-a", 0.2)
        first = (await store.members())[0]
        await asyncio.sleep(0.5)
        assert await store.members() == []
        await store.join("worker-a", 30.0)
        (again,) = await store.members()
        assert again.joined_at > first.joined_at
        assert again.expires_at > time.time()


async def test_a_read_only_store_reads_leases_and_changes_none(aws: Aws, table: str) -> None:
    (stream,) = _names("read-only", 1)
    async with DynamoDbStateStore(table, endpoint_url=aws.endpoint) as writer:
        await writer.acquire([stream], "worker-a", 30.0)
        await writer.join("worker-a", 30.0)
    async with DynamoDbStateStore(table, endpoint_url=aws.endpoint, read_only=True) as reader:
        assert isinstance(reader, LeaseStore)
        assert (await reader.leases([stream]))[stream].owner == "worker-a"
        assert [m.worker for m in await reader.members()] == ["worker-a"]
        for change in (
            reader.acquire([stream], "worker-b", 30.0),
            reader.renew({stream: 1}, "worker-a", 30.0),
            reader.release({stream: 1}, "worker-a"),
            reader.join("worker-b", 30.0),
            reader.leave("worker-a"),
            reader.commit({stream: 1}, fence=Fence("worker-a", {stream: 1})),
        ):
            with pytest.raises(StorageError, match="read-only"):
                await change
    missing = aws.name("missing")
    async with DynamoDbStateStore(missing, endpoint_url=aws.endpoint, read_only=True) as reader:
        assert await reader.leases() == {}
        assert await reader.members() == []


async def test_failures_are_translated(aws: Aws) -> None:
    missing = aws.name("missing")
    async with DynamoDbStateStore(missing, endpoint_url=aws.endpoint) as store:
        for call in (
            lambda: store.acquire(["sf.event.a"], "worker-a", 30.0),
            store.leases,
            lambda: store.commit({"sf.event.a": 1}, fence=Fence("worker-a", {"sf.event.a": 1})),
        ):
            with pytest.raises(StorageError, match="sfstream state init") as caught:
                await call()
            assert not caught.value.retryable
    async with DynamoDbStateStore("sfstream-state", endpoint_url="http://127.0.0.1:1") as store:
        with pytest.raises(StorageUnavailableError, match="cannot be reached") as unreachable:
            await store.acquire(["sf.event.a"], "worker-a", 30.0)
    assert unreachable.value.retryable
