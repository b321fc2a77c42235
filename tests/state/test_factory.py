"""`open_state_store`: one string names a backend and its location."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfstream.errors import ConfigError
from sfstream.state import PostgresStateStore, SqliteStateStore, open_state_store


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("state.db", Path("state.db")),
        ("/var/lib/sfstream/state.db", Path("/var/lib/sfstream/state.db")),
        ("sqlite:///state.db", Path("state.db")),
        ("sqlite:////var/lib/sfstream/state.db", Path("/var/lib/sfstream/state.db")),
        ("SQLITE:///state.db", Path("state.db")),
        ("~/state.db", Path.home() / "state.db"),
        (Path("relative/state.db"), Path("relative/state.db")),
    ],
)
def test_sqlite_locations(location: str | Path, expected: Path) -> None:
    store = open_state_store(location)
    assert isinstance(store, SqliteStateStore)
    assert store.path == expected


@pytest.mark.parametrize(
    "url",
    ["postgresql://sf:pw@db.example.com:5433/state", "postgres://sf@db.example.com/state"],
)
def test_postgres_urls(url: str) -> None:
    store = open_state_store(url)
    assert isinstance(store, PostgresStateStore)
    assert store.table == "sfstream_checkpoints"
    assert "pw" not in repr(store)


@pytest.mark.parametrize(
    "location", ["", "  ", "sqlite://", "sqlite:///", "sqlite:///:memory:", "redis://cache/0"]
)
def test_refused_locations(location: str) -> None:
    with pytest.raises(ConfigError):
        open_state_store(location)


async def test_opened_store_works(tmp_path: Path) -> None:
    store = open_state_store(f"sqlite:///{tmp_path}/nested/state.db")
    try:
        await store.commit({"sf.event.account_changes": 12})
        assert (await store.load())["sf.event.account_changes"].replay_id == 12
    finally:
        await store.close()
    assert (tmp_path / "nested" / "state.db").is_file()
