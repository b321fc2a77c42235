"""`sfstream.runners.wiring`: the configuration names each backend, built in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sfstream.engine.config import load_config
from sfstream.runners.wiring import open_registry, open_sink, open_state
from sfstream.schema.registry import SqliteSchemaRegistry
from sfstream.sinks.file import FileSink
from sfstream.sinks.stdout import StdoutSink
from sfstream.state.postgres import PostgresStateStore
from sfstream.state.sqlite import SqliteStateStore


async def _config(tmp_path: Path, **sections: Any) -> Any:
    document: dict[str, Any] = {
        "salesforce": {
            "login_url": "http://localhost:1",
            "client_id": "id",
            "refresh_token": "token",
        },
        "streams": [{"channel": "/data/AccountChangeEvent"}],
        **sections,
    }
    path = tmp_path / "sfstream.yaml"
    path.write_text(yaml.safe_dump(document))
    return await load_config(path, environ={})


async def test_sqlite_state_beside_the_config(tmp_path: Path) -> None:
    config = await _config(tmp_path, state={"path": "nested/state.db"})
    store = open_state(config)
    assert isinstance(store, SqliteStateStore)
    assert store.path == tmp_path / "nested" / "state.db"
    try:
        await store.commit({"sf.event.account_changes": 12})
        assert (await store.load())["sf.event.account_changes"].replay_id == 12
    finally:
        await store.close()
    assert (tmp_path / "nested" / "state.db").is_file()


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://sf:pw@db.example.com:5433/state", "postgres://sf@db.example.com/state"],
)
async def test_postgres_state(tmp_path: Path, dsn: str) -> None:
    config = await _config(tmp_path, state={"backend": "postgres", "dsn": dsn})
    store = open_state(config)
    assert isinstance(store, PostgresStateStore)
    assert store.table == "sfstream_checkpoints"
    assert "pw" not in repr(store)


async def test_sinks_and_registry(tmp_path: Path) -> None:
    config = await _config(tmp_path, sink={"type": "file", "path": "out/records.jsonl"})
    sink = open_sink(config)
    assert isinstance(sink, FileSink)
    assert isinstance(open_sink(await _config(tmp_path)), StdoutSink)
    registry = open_registry(config)
    assert isinstance(registry, SqliteSchemaRegistry)
    await registry.close()
