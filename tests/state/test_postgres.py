"""PostgreSQL state store against the local server: the conformance suite and failures.

The server comes from `SFSTREAM_TEST_POSTGRES_DSN` (default: trust auth on 127.0.0.1:5432,
database `test`); `.ci/run` starts it. Every test gets a table of its own and drops it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from sfstream.errors import ConfigError, StorageError, StorageUnavailableError
from sfstream.state import PostgresStateStore, StateStore, StreamOwnedError
from sfstream.state.pg import redact_dsn
from sfstream.testing.leases import LEASE_STORE_CHECKS, check_lease_store
from sfstream.testing.state import STATE_STORE_CHECKS, StoreFactory, check_state_store

DSN = os.environ.get("SFSTREAM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "pw-Zq81-never-shown"


@pytest.fixture
async def admin() -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    try:
        conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {redact_dsn(DSN)} ({exc}); start it with "
            f"`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
            f"or set SFSTREAM_TEST_POSTGRES_DSN"
        )
    async with conn:
        yield conn


@pytest.fixture
async def table(admin: psycopg.AsyncConnection[Any]) -> AsyncIterator[str]:
    name = f"sfstream_test_{uuid.uuid4().hex[:12]}"
    yield name
    for dropped in (name, f"{name}_overrides", f"{name}_leases", f"{name}_members"):
        await admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(dropped)))


@pytest.fixture
def factory(table: str) -> StoreFactory:
    async def make() -> StateStore:
        return PostgresStateStore(DSN, table=table)

    return make


def unreachable_dsn(**overrides: str) -> str:
    return make_conninfo(DSN, password=SECRET, **overrides)


def messages(error: BaseException) -> str:
    """The text of an error and of everything chained to it."""
    texts: list[str] = []
    current: BaseException | None = error
    while current is not None:
        texts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


@pytest.mark.parametrize(
    ("name", "check"), STATE_STORE_CHECKS, ids=[name for name, _ in STATE_STORE_CHECKS]
)
async def test_conformance(
    name: str, check: Callable[[StoreFactory], Awaitable[None]], factory: StoreFactory
) -> None:
    await check(factory)


async def test_whole_suite_on_one_table(factory: StoreFactory) -> None:
    await check_state_store(factory)


async def test_table_is_created_with_its_schema(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    async with PostgresStateStore(DSN, table=table) as store:
        await store.commit({"a": 2**63 - 1})
    cursor = await admin.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_name = %s ORDER BY ordinal_position",
        (table,),
    )
    assert await cursor.fetchall() == [
        ("stream", "text", "NO"),
        ("replay_id", "bigint", "NO"),
        ("updated_at", "timestamp with time zone", "NO"),
        ("event_time", "double precision", "YES"),
    ]


async def test_schema_qualified_table(table: str) -> None:
    async with PostgresStateStore(DSN, table=f"public.{table}") as store:
        await store.commit({"a": 1})
    async with PostgresStateStore(DSN, table=table) as store:
        assert (await store.load())["a"].replay_id == 1


async def test_first_use_from_many_stores_at_once(table: str) -> None:
    stores = [PostgresStateStore(DSN, table=table) for _ in range(6)]
    try:
        results = await asyncio.gather(*(store.load() for store in stores))
    finally:
        for store in stores:
            await store.close()
    assert results == [{}] * 6


async def test_reconnects_after_the_connection_drops(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    async with PostgresStateStore(make_conninfo(DSN, application_name=table), table) as store:
        await store.commit({"a": 1})
        cursor = await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (table,),
        )
        assert await cursor.fetchall() == [(True,)]
        await store.commit({"a": 2})
        assert (await store.load())["a"].replay_id == 2


@pytest.mark.parametrize("call", ["load", "commit", "reset"])
async def test_unreachable_server_is_retryable_and_hides_the_password(call: str) -> None:
    dsn = unreachable_dsn(port="1")
    async with PostgresStateStore(dsn) as store:
        assert SECRET not in repr(store)
        attempt = {
            "load": store.load,
            "commit": lambda: store.commit({"a": 1}),
            "reset": lambda: store.reset("a"),
        }[call]
        with pytest.raises(StorageUnavailableError) as caught:
            await attempt()
    assert caught.value.retryable
    assert "port 1" in str(caught.value)
    assert SECRET not in messages(caught.value)


async def test_missing_database_is_terminal() -> None:
    dsn = unreachable_dsn(dbname=f"sfstream_missing_{uuid.uuid4().hex[:8]}")
    async with PostgresStateStore(dsn) as store:
        with pytest.raises(StorageError, match="does not exist") as caught:
            await store.load()
    assert not caught.value.retryable
    assert SECRET not in messages(caught.value)


async def test_incompatible_table_is_terminal(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    await admin.execute(
        sql.SQL("CREATE TABLE {} (stream text PRIMARY KEY, position integer)").format(
            sql.Identifier(table)
        )
    )
    async with PostgresStateStore(DSN, table=table) as store:
        with pytest.raises(StorageError, match="replay_id") as caught:
            await store.commit({"a": 1})
        assert not caught.value.retryable
        with pytest.raises(StorageError):
            await store.load()


async def test_closed_store_refuses_calls(table: str) -> None:
    store = PostgresStateStore(DSN, table=table)
    await store.commit({"a": 1})
    await store.close()
    with pytest.raises(StorageError, match="closed"):
        await store.load()


def test_repr_names_the_database_without_the_password() -> None:
    store = PostgresStateStore(f"postgresql://sf:{SECRET}@db.example.com:5433/state")
    assert store.database == "postgresql://sf@db.example.com:5433/state"
    assert repr(store) == (
        "PostgresStateStore('postgresql://sf@db.example.com:5433/state', "
        "table='sfstream_checkpoints')"
    )


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=db.example.com password={SECRET} nonsense",
        f"host=db.example.com password='{SECRET}' dbname",
        f"postgresql://sf:{SECRET}@db.example.com/state?password={SECRET}&nonsense=1",
    ],
)
def test_malformed_dsn_hides_the_password(dsn: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PostgresStateStore(dsn)
    assert SECRET not in messages(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize("table", ["", "a.b.c", "checkpoints; DROP TABLE x", "1st", "a-b"])
def test_invalid_table_name(table: str) -> None:
    with pytest.raises(ConfigError, match="table name"):
        PostgresStateStore(DSN, table=table)


def test_importing_sfstream_does_not_import_psycopg() -> None:
    code = (
        "import sys, sfstream, sfstream.state, sfstream.testing.state\n"
        "assert 'psycopg' not in sys.modules, 'psycopg was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def columns(admin: psycopg.AsyncConnection[Any], table: str) -> list[tuple[str, str, str]]:
    cursor = await admin.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_name = %s ORDER BY ordinal_position",
        (table,),
    )
    return [(str(a), str(b), str(c)) for a, b, c in await cursor.fetchall()]


async def test_an_existing_table_keeps_its_data_and_gets_its_overrides_table(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    # A table as earlier releases left it, with checkpoints.
    await admin.execute(
        sql.SQL(
            "CREATE TABLE {} (stream text PRIMARY KEY, replay_id bigint NOT NULL,"
            " updated_at timestamptz NOT NULL)"
        ).format(sql.Identifier(table))
    )
    await admin.execute(
        sql.SQL(
            "INSERT INTO {} VALUES ('sf.event.a', 1553783, now()), ('sf.event.b', 7, now())"
        ).format(sql.Identifier(table))
    )
    async with PostgresStateStore(DSN, table=table, read_only=True) as reader:
        # A read-only store reads the table as it is: checkpoints without event times.
        loaded = await reader.load()
        assert {s: (c.replay_id, c.event_time) for s, c in loaded.items()} == {
            "sf.event.a": (1553783, None),
            "sf.event.b": (7, None),
        }
        assert list(await reader.load(["sf.event.b"])) == ["sf.event.b"]
    assert [name for name, _, _ in await columns(admin, table)] == [
        "stream",
        "replay_id",
        "updated_at",
    ]
    async with PostgresStateStore(DSN, table=table) as store:
        assert (await store.load())["sf.event.a"].replay_id == 1553783
        made = await store.override("sf.event.a", None)
        assert (made.start, made.previous) == (None, 1553783)
        assert list(await store.load()) == ["sf.event.b"]
        await store.commit({"sf.event.b": 9}, {"sf.event.b": 1714521600.25})
    assert await columns(admin, table) == [
        ("stream", "text", "NO"),
        ("replay_id", "bigint", "NO"),
        ("updated_at", "timestamp with time zone", "NO"),
        ("event_time", "double precision", "YES"),
    ]
    async with PostgresStateStore(DSN, table=table, read_only=True) as reader:
        point = (await reader.load())["sf.event.b"]
        assert (point.replay_id, point.event_time) == (9, 1714521600.25)
    assert await columns(admin, f"{table}_overrides") == [
        ("stream", "text", "NO"),
        ("start", "bigint", "YES"),
        ("previous", "bigint", "YES"),
        ("requested_at", "timestamp with time zone", "NO"),
    ]


async def test_a_read_only_store_creates_nothing(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    async with PostgresStateStore(DSN, table=table, read_only=True) as store:
        assert await store.load() == {}
        assert await store.overrides(["sf.event.a"]) == {}
        for change in (store.commit({"a": 1}), store.reset("a"), store.override("a", 1)):
            with pytest.raises(StorageError, match="opened read-only"):
                await change
    assert await columns(admin, table) == []
    assert "read_only=True" in repr(PostgresStateStore(DSN, table=table, read_only=True))
    async with PostgresStateStore(DSN, table=table) as writer:
        await writer.commit({"a": 3})
        await writer.override("b", -2)
    async with PostgresStateStore(DSN, table=table, read_only=True) as store:
        assert (await store.load())["a"].replay_id == 3
        assert (await store.overrides())["b"].start == -2


async def test_ownership_is_per_stream_names_its_holder_and_ends_with_its_session(
    admin: psycopg.AsyncConnection[Any], table: str
) -> None:
    async with (
        PostgresStateStore(DSN, table=table) as one,
        PostgresStateStore(DSN, table=table) as two,
        one.owner(["sf.event.a", "sf.event.b"]),
    ):
        with pytest.raises(StreamOwnedError) as caught:
            async with two.owner(["sf.event.c", "sf.event.b"]):
                pass
        assert str(caught.value).startswith(
            f"stream sf.event.b is being streamed by a running `sfstream run` "
            f"(pid {os.getpid()} on "
        )
        assert caught.value.streams == ["sf.event.b"]
        # Several connectors may share one table, each with its own streams.
        async with two.owner(["sf.event.c"]):
            pass
        # A session that ends (the process died, the server dropped it) frees its locks.
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE %s AND pid <> pg_backend_pid()",
            (f"sfstream pid {os.getpid()} on %",),
        )
        async with two.owner(["sf.event.b"]):
            pass


def test_a_table_name_leaves_room_for_its_overrides_table() -> None:
    PostgresStateStore(DSN, table="t" * 53)
    with pytest.raises(ConfigError, match="too long: at most 53 characters"):
        PostgresStateStore(DSN, table="t" * 54)


# -- leases --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "check"), LEASE_STORE_CHECKS, ids=[name for name, _ in LEASE_STORE_CHECKS]
)
async def test_lease_conformance(
    name: str, check: Callable[[StoreFactory], Awaitable[None]], factory: StoreFactory
) -> None:
    await check(factory)


async def test_whole_lease_suite_on_one_table(factory: StoreFactory) -> None:
    await check_lease_store(factory)


async def test_leases_live_beside_the_checkpoints(
    table: str, admin: psycopg.AsyncConnection[Any]
) -> None:
    async with PostgresStateStore(DSN, table=table) as store:
        assert store.tables == [table, f"{table}_overrides", f"{table}_leases", f"{table}_members"]
        await store.acquire(["sf.event.a"], "w1", 30)
        await store.join("w1", 30)
    cursor = await admin.execute(
        "SELECT count(*) FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NOT NULL",
        ([f"{table}_leases", f"{table}_members"],),
    )
    assert await cursor.fetchone() == (2,)


async def test_a_read_only_store_reads_no_leases_where_none_were_taken(table: str) -> None:
    async with PostgresStateStore(DSN, table=table, read_only=True) as store:
        assert await store.leases() == {}
        assert await store.members() == []
