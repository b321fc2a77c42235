"""SQLite state store: the conformance suite, file modes, WAL, schema and damaged files."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from sfstream.errors import StorageError, StorageUnavailableError
from sfstream.state import SqliteStateStore, StateStore
from sfstream.state.sqlite import SCHEMA_VERSION
from sfstream.testing.state import STATE_STORE_CHECKS, StoreFactory, check_state_store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    # The parent does not exist yet: the store creates it.
    return tmp_path / "state" / "checkpoints.db"


@pytest.fixture(params=[False, True], ids=["thread-commits", "inline-commits"])
def factory(db_path: Path, request: pytest.FixtureRequest) -> StoreFactory:
    inline: bool = request.param

    async def make() -> StateStore:
        return SqliteStateStore(db_path, inline_commits=inline)

    return make


@pytest.fixture
def no_umask() -> Iterator[None]:
    """A umask that takes nothing away, so only the store decides the file mode."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


# File-system helpers are plain functions: the async tests stay free of blocking calls.
def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def set_mode(path: Path, mode: int) -> None:
    path.chmod(mode)


async def committed(path: Path) -> None:
    async with SqliteStateStore(path) as store:
        await store.commit({f"stream.{index:03d}": index for index in range(300)})


@pytest.mark.parametrize(
    ("name", "check"), STATE_STORE_CHECKS, ids=[name for name, _ in STATE_STORE_CHECKS]
)
async def test_conformance(
    name: str, check: Callable[[StoreFactory], Awaitable[None]], factory: StoreFactory
) -> None:
    await check(factory)


async def test_whole_suite_on_one_location(factory: StoreFactory) -> None:
    await check_state_store(factory)


@pytest.mark.usefixtures("no_umask")
async def test_database_and_companions_are_private(db_path: Path) -> None:
    async with SqliteStateStore(db_path) as store:
        await store.commit({"a": 1})
        assert db_path.parent.is_dir()
        for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
            assert path.exists(), path
            assert mode(path) == 0o600, path


@pytest.mark.usefixtures("no_umask")
async def test_existing_loose_file_is_tightened(db_path: Path) -> None:
    await committed(db_path)
    set_mode(db_path, 0o644)
    async with SqliteStateStore(db_path) as store:
        assert len(await store.load()) == 300
    assert mode(db_path) == 0o600


async def test_loose_file_of_another_user_is_refused(db_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    await committed(db_path)
    set_mode(db_path, 0o644)
    os.chown(db_path, 65534, 65534)
    async with SqliteStateStore(db_path) as store:
        with pytest.raises(StorageError, match="accessible by other users") as caught:
            await store.load()
    assert str(db_path) in str(caught.value)
    assert f"chmod 600 {db_path}" in str(caught.value)
    assert mode(db_path) == 0o644


async def test_wal_journal_and_schema(db_path: Path) -> None:
    await committed(db_path)
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = {
            row[1]: (row[2], bool(row[3]), bool(row[5]))
            for row in conn.execute("PRAGMA table_info(sfstream_checkpoints)")
        }
        row = conn.execute(
            "SELECT replay_id, updated_at FROM sfstream_checkpoints WHERE stream = ?",
            ("stream.007",),
        ).fetchone()
    finally:
        conn.close()
    assert columns == {
        "stream": ("TEXT", False, True),
        "replay_id": ("INTEGER", True, False),
        "updated_at": ("TEXT", True, False),
        "event_time": ("REAL", False, False),
    }
    assert row[0] == 7
    assert row[1].endswith("+00:00")


async def test_newer_schema_is_refused(db_path: Path) -> None:
    await committed(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    async with SqliteStateStore(db_path) as store:
        with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1}") as caught:
            await store.commit({"a": 1})
    assert str(db_path) in str(caught.value)


def _not_sqlite(path: Path) -> None:
    path.write_bytes(b"stream,replay_id\naccount_changes,17\n" * 200)


def _smashed_header(path: Path) -> None:
    with path.open("r+b") as file:
        file.write(b"definitely not SQLite")


def _smashed_pages(path: Path) -> None:
    with path.open("r+b") as file:
        file.seek(4096)
        file.write(b"\xa5" * (path.stat().st_size - 4096))


def damaged(path: Path, damage: Callable[[Path], None]) -> bytes:
    damage(path)
    path.chmod(0o600)
    return path.read_bytes()


def move_aside(path: Path) -> bytes:
    contents = path.read_bytes()
    path.rename(path.with_suffix(".broken"))
    return contents


@pytest.mark.parametrize("damage", [_not_sqlite, _smashed_header, _smashed_pages])
async def test_damaged_file_is_a_clear_error_and_left_alone(
    db_path: Path, damage: Callable[[Path], None]
) -> None:
    await committed(db_path)
    broken = damaged(db_path, damage)
    store = SqliteStateStore(db_path)
    try:
        for attempt in (store.load(), store.commit({"a": 1})):
            with pytest.raises(StorageError, match="corrupt or not an SQLite database") as caught:
                await attempt
            assert str(db_path) in str(caught.value)
            assert not caught.value.retryable
        assert move_aside(db_path) == broken, "the damaged file was rewritten"
        # Once someone moved the file away, the same store starts afresh.
        assert await store.load() == {}
    finally:
        await store.close()


async def test_path_that_is_a_directory(db_path: Path) -> None:
    os.makedirs(db_path)
    async with SqliteStateStore(db_path) as store:
        with pytest.raises(StorageError, match="not a regular file") as caught:
            await store.load()
    assert str(db_path) in str(caught.value)


async def test_parent_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    path = tmp_path / "state" / "checkpoints.db"
    async with SqliteStateStore(path) as store:
        with pytest.raises(StorageError) as caught:
            await store.commit({"a": 1})
    assert str(path) in str(caught.value)
    assert not isinstance(caught.value, StorageUnavailableError)


async def test_closed_store_refuses_calls(db_path: Path) -> None:
    store = SqliteStateStore(db_path)
    await store.commit({"a": 1})
    await store.close()
    with pytest.raises(StorageError, match="closed"):
        await store.load()


def test_repr_and_home_expansion() -> None:
    store = SqliteStateStore("~/sfstream/state.db")
    assert store.path == Path.home() / "sfstream" / "state.db"
    assert repr(store) == f"SqliteStateStore({str(store.path)!r})"
