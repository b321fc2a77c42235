"""SQLite state store: leases with fencing tokens (the lease conformance suite, the migration
to schema 4, read-only stores, and two processes racing for the same leases)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sfstream.errors import ConfigError, LeaseLostError, StorageError
from sfstream.state import SqliteStateStore, StateStore
from sfstream.state.base import Fence, LeaseStore
from sfstream.state.sqlite import SCHEMA_VERSION
from sfstream.testing.leases import LEASE_STORE_CHECKS, check_lease_store
from sfstream.testing.state import StoreFactory

STREAM = "sf.event.account_changes"

# The schema of version 3 (the previous release), with a checkpoint and an override.
VERSION_3 = """
PRAGMA journal_mode=WAL;
CREATE TABLE sfstream_checkpoints (
    stream TEXT PRIMARY KEY, replay_id INTEGER NOT NULL, updated_at TEXT NOT NULL,
    event_time REAL);
INSERT INTO sfstream_checkpoints VALUES
    ('sf.event.account_changes', 1553783, '2024-05-01T00:00:00.000000+00:00', 1714521600.5),
    ('sf.event.order_placed', 12, '2024-05-01T00:00:01.000000+00:00', NULL);
CREATE TABLE sfstream_overrides (
    stream TEXT PRIMARY KEY, start INTEGER, previous INTEGER, requested_at TEXT NOT NULL);
INSERT INTO sfstream_overrides VALUES
    ('sf.event.order_placed', 5, 12, '2024-05-01T00:00:02.000000+00:00');
PRAGMA user_version = 3;
"""

RACE_STREAMS = [f"race.{index:02d}" for index in range(20)]

# Opens the database, says "ready", waits for a line on stdin, then acquires every race
# stream one at a time for its worker, in order or reversed (so that two racers meet
# half-way), and prints what it took as JSON.
RACER = """
import asyncio, json, sys
from sfstream.state import SqliteStateStore

async def main():
    path, worker, order = sys.argv[1:4]
    streams = [f"race.{index:02d}" for index in range(20)]
    if order == "reversed":
        streams.reverse()
    async with SqliteStateStore(path) as store:
        await store.members()  # connects: the race is over leases, not over opening
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        taken = {}
        for stream in streams:
            taken.update(await store.acquire([stream], worker, 60.0))
        # All of them at once: renews its own (same token), takes none of the other's.
        again = await store.acquire(streams, worker, 60.0)
        assert {s: l.token for s, l in again.items()} == {s: l.token for s, l in taken.items()}
    print(json.dumps({s: [lease.owner, lease.token] for s, lease in taken.items()}))

asyncio.run(main())
"""


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "leases.db"


@pytest.fixture(params=[False, True], ids=["thread-commits", "inline-commits"])
def factory(db_path: Path, request: pytest.FixtureRequest) -> StoreFactory:
    inline: bool = request.param

    async def make() -> StateStore:
        return SqliteStateStore(db_path, inline_commits=inline)

    return make


# File-system helpers are plain functions: the async tests stay free of blocking calls.
def version_3(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(VERSION_3)
    finally:
        conn.close()
    path.chmod(0o600)


def schema(path: Path) -> tuple[int, set[str]]:
    conn = sqlite3.connect(path)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    finally:
        conn.close()
    return version, tables


def columns(path: Path, table: str) -> dict[str, tuple[str, bool, object, bool]]:
    """name -> (type, not null, default, primary key)."""
    conn = sqlite3.connect(path)
    try:
        return {
            row[1]: (row[2], bool(row[3]), row[4], bool(row[5]))
            for row in conn.execute(f"PRAGMA table_info({table})")
        }
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("name", "check"), LEASE_STORE_CHECKS, ids=[name for name, _ in LEASE_STORE_CHECKS]
)
async def test_lease_conformance(
    name: str, check: Callable[[StoreFactory], Awaitable[None]], factory: StoreFactory
) -> None:
    await check(factory)


async def test_whole_lease_suite_on_one_location(db_path: Path) -> None:
    async def make() -> StateStore:
        return SqliteStateStore(db_path, inline_commits=True)

    await check_lease_store(make)


async def test_a_store_is_a_lease_store(db_path: Path) -> None:
    async with SqliteStateStore(db_path) as store:
        assert isinstance(store, LeaseStore)
        assert isinstance(store, StateStore)


async def test_a_refused_commit_names_its_stale_streams_sorted(db_path: Path) -> None:
    async with SqliteStateStore(db_path) as store:
        taken = await store.acquire(["b", "c"], "zombie", 0.2)
        await store.override("b", 7)
        await asyncio.sleep(0.5)
        await store.acquire(["b"], "heir", 30.0)
        fence = Fence("zombie", {"c": taken["c"].token, "b": taken["b"].token, "a": 1})
        with pytest.raises(LeaseLostError) as caught:
            await store.commit({"c": 3, "b": 3, "a": 3}, fence=fence)
        assert caught.value.streams == ["a", "b"]  # "a" was never leased
        assert "streams a, b" in str(caught.value)
        assert "zombie" in str(caught.value)
        assert {s: c.replay_id for s, c in (await store.load()).items()} == {"b": 7}
        assert (await store.overrides())["b"].start == 7, "a refused commit cleared it"
        leases = await store.leases()
        assert set(leases) == {"b", "c"}, "a refusal created a lease"
        assert (leases["b"].refused, leases["b"].refused_worker) == (1, "zombie")
        assert leases["c"].refused == 0
        # Without a fence, a commit is not checked.
        await store.commit({"b": 8})
        assert (await store.load(["b"]))["b"].replay_id == 8


@pytest.mark.parametrize(
    "fence",
    [Fence("one", {"a": 2**63}), Fence("one", {"a": 0}), Fence("", {"a": 1})],
    ids=["token-beyond-int64", "token-0", "empty-worker"],
)
async def test_an_unusable_fence_is_a_config_error(db_path: Path, fence: Fence) -> None:
    async with SqliteStateStore(db_path) as store:
        await store.acquire(["a"], "one", 30.0)
        with pytest.raises(ConfigError):
            await store.commit({"a": 1}, fence=fence)
        assert await store.load() == {}
        assert (await store.leases(["a"]))["a"].refused == 0


async def test_more_leases_than_one_query_binds(db_path: Path) -> None:
    streams = [f"many.{index:04d}" for index in range(1234)]
    async with SqliteStateStore(db_path, inline_commits=True) as store:
        taken = await store.acquire(streams, "one", 30.0)
        assert sorted(taken) == streams
        assert len(await store.leases(streams)) == len(streams)
        tokens = {stream: lease.token for stream, lease in taken.items()}
        assert len(await store.renew(tokens, "one", 30.0)) == len(streams)
        await store.commit(dict.fromkeys(streams, 5), fence=Fence("one", tokens))
        assert len(await store.load()) == len(streams)
        await store.release(tokens, "one")
        assert not any(lease.held for lease in (await store.leases()).values())


async def test_the_previous_schema_gets_leases_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    version_3(path)
    async with SqliteStateStore(path, read_only=True) as reader:
        assert await reader.leases() == {}
        assert await reader.members() == []
        for change in (
            reader.acquire([STREAM], "one", 30.0),
            reader.renew({STREAM: 1}, "one", 30.0),
            reader.release({STREAM: 1}, "one"),
            reader.join("one", 30.0),
            reader.leave("one"),
            reader.commit({STREAM: 1}, fence=Fence("one", {STREAM: 1})),
        ):
            with pytest.raises(StorageError, match="opened read-only"):
                await change
    assert schema(path)[0] == 3, "the read-only store migrated"

    async with SqliteStateStore(path) as store:
        loaded = await store.load()
        assert {s: (c.replay_id, c.event_time) for s, c in loaded.items()} == {
            STREAM: (1553783, 1714521600.5),
            "sf.event.order_placed": (12, None),
        }
        assert loaded[STREAM].updated_at == "2024-05-01T00:00:00.000000+00:00"
        assert (await store.overrides())["sf.event.order_placed"].start == 5
        assert await store.leases() == {}
        taken = await store.acquire([STREAM], "one", 30.0)
        await store.join("one", 30.0)
        await store.commit({STREAM: 1553790}, fence=Fence("one", {STREAM: taken[STREAM].token}))
    assert SCHEMA_VERSION == 4
    assert schema(path) == (
        4,
        {"sfstream_checkpoints", "sfstream_overrides", "sfstream_leases", "sfstream_members"},
    )
    assert columns(path, "sfstream_leases") == {
        "stream": ("TEXT", False, None, True),
        "owner": ("TEXT", False, None, False),
        "token": ("INTEGER", True, None, False),
        "expires_at": ("REAL", False, None, False),
        "acquired_at": ("REAL", False, None, False),
        "refused": ("INTEGER", True, "0", False),
        "refused_at": ("REAL", False, None, False),
        "refused_token": ("INTEGER", False, None, False),
        "refused_worker": ("TEXT", False, None, False),
    }
    assert columns(path, "sfstream_members") == {
        "worker": ("TEXT", False, None, True),
        "expires_at": ("REAL", False, None, False),
        "joined_at": ("REAL", False, None, False),
    }

    async with SqliteStateStore(path, read_only=True) as reader:
        loaded = await reader.load()
        assert loaded[STREAM].replay_id == 1553790
        assert loaded["sf.event.order_placed"].replay_id == 12
        lease = (await reader.leases([STREAM]))[STREAM]
        assert (lease.owner, lease.token, lease.held) == ("one", 1, True)
        assert [m.worker for m in await reader.members()] == ["one"]


async def test_a_read_only_store_on_a_missing_file_has_no_leases(tmp_path: Path) -> None:
    missing = tmp_path / "nothing" / "state.db"
    async with SqliteStateStore(missing, read_only=True) as reader:
        assert await reader.leases() == {}
        assert await reader.leases([STREAM]) == {}
        assert await reader.members() == []
    assert not missing.parent.exists(), "a read-only store created its directory"


async def test_two_processes_racing_for_the_same_leases(db_path: Path) -> None:
    workers = ["worker-a", "worker-b"]
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RACER,
            str(db_path),
            worker,
            order,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for worker, order in zip(workers, ["forward", "reversed"], strict=True)
    ]
    try:
        async with asyncio.timeout(60):
            for process in processes:
                assert process.stdout is not None
                assert await process.stdout.readline() == b"ready\n"
            outputs = await asyncio.gather(*(p.communicate(b"go\n") for p in processes))
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert [p.returncode for p in processes] == [0, 0]
    taken = [json.loads(stdout) for stdout, _ in outputs]
    for worker, got in zip(workers, taken, strict=True):
        assert all(owner == worker and token == 1 for owner, token in got.values()), got
    assert not set(taken[0]) & set(taken[1]), "a lease was taken by both processes"
    assert set(taken[0]) | set(taken[1]) == set(RACE_STREAMS)
    async with SqliteStateStore(db_path, read_only=True) as reader:
        leases = await reader.leases()
    assert sorted(leases) == RACE_STREAMS
    for stream, lease in leases.items():
        winner = workers[0] if stream in taken[0] else workers[1]
        assert (lease.owner, lease.token, lease.held) == (winner, 1, True), lease
