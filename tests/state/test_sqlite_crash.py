"""SQLite state store under hostile conditions: killed writers, read-only directories.

These tests run a second Python process and synchronize with it through its stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from sfstream.state import SqliteStateStore

STREAMS = [f"stream.{index:04d}" for index in range(1000)]

# Rewrites every checkpoint and adds many rows inside one transaction, with a page cache so
# small that SQLite spills the uncommitted pages into the WAL; then waits to be killed.
HOLD_TRANSACTION = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA cache_size = 8")
conn.execute("BEGIN IMMEDIATE")
conn.executemany(
    "INSERT INTO sfstream_checkpoints (stream, replay_id, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (stream) DO UPDATE SET replay_id = excluded.replay_id",
    [(f"stream.{i:04d}", 999, "2001-01-01T00:00:00.000000+00:00") for i in range(20000)],
)
print("inside", flush=True)
sys.stdin.read()
"""

# Commits one generation after another to every stream, reporting each one when it returned.
COMMIT_FOREVER = """
import asyncio, sys
from sfstream.state import SqliteStateStore

async def main():
    streams = [f"stream.{i:04d}" for i in range(int(sys.argv[2]))]
    store = SqliteStateStore(sys.argv[1])
    generation = 0
    while True:
        generation += 1
        await store.commit(dict.fromkeys(streams, generation))
        print(generation, flush=True)

asyncio.run(main())
"""

# Tries a commit and reports the error as JSON.
PROBE = """
import asyncio, json, sys
from sfstream.errors import SfStreamError
from sfstream.state import SqliteStateStore

async def main():
    async with SqliteStateStore(sys.argv[1]) as store:
        try:
            await store.commit({"stream.probe": 1})
        except SfStreamError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": None}

print(json.dumps(asyncio.run(main())))
"""


async def spawn(script: str, *args: str, prefix: tuple[str, ...] = ()) -> Any:
    return await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-c",
        script,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def kill(process: Any) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()
    process.stdin.close()


def wal_size(path: Path) -> int:
    return Path(f"{path}-wal").stat().st_size


async def test_transaction_killed_midway_leaves_previous_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SqliteStateStore(path) as store:
        await store.commit(dict.fromkeys(STREAMS, 1))
        before = await store.load()
    process = await spawn(HOLD_TRANSACTION, str(path))
    try:
        assert await process.stdout.readline() == b"inside\n"
        # The uncommitted rows reached the WAL file, not only the killed process's memory.
        assert wal_size(path) > 100_000
    finally:
        await kill(process)
    async with SqliteStateStore(path) as store:
        assert await store.load() == before
        await store.commit({STREAMS[0]: 2})
        assert (await store.load([STREAMS[0]]))[STREAMS[0]].replay_id == 2


async def test_process_killed_during_commits_keeps_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    count = 5000
    process = await spawn(COMMIT_FOREVER, str(path), str(count))
    try:
        assert await process.stdout.readline() == b"1\n"
        async with SqliteStateStore(path) as observer:
            # Watch the first stream of the batch rather than the writer's stdout, which
            # speaks only after a whole commit: a writer that stored a batch in pieces would
            # be caught half-way through it.
            seen = 1
            while seen < 4:
                assert process.returncode is None, "the committing process died by itself"
                seen = (await observer.load(["stream.0000"]))["stream.0000"].replay_id
            await kill(process)
    finally:
        await kill(process)
    async with SqliteStateStore(path) as store:
        loaded = await store.load()
        assert len(loaded) == count
        generations = {point.replay_id for point in loaded.values()}
        assert len(generations) == 1, f"a batch was cut in two: {sorted(generations)}"
        assert generations.pop() >= seen, "a committed generation was lost"
        assert len({point.updated_at for point in loaded.values()}) == 1


def without_write_access() -> tuple[str, ...]:
    """A command prefix that makes the probe obey file permissions, even as root."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: nothing takes root's write access")
    caps = "-dac_override,-dac_read_search"
    return (setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}")


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
async def test_read_only_directory(tmp_path: Path, existing: bool) -> None:
    directory = tmp_path / "read-only"
    directory.mkdir()
    path = directory / "state.db"
    if existing:
        async with SqliteStateStore(path) as store:
            await store.commit({"stream.a": 1})
    directory.chmod(0o555)
    try:
        process = await spawn(PROBE, str(path), prefix=without_write_access())
        output, _ = await process.communicate()
    finally:
        directory.chmod(0o755)
    result = json.loads(output)
    assert result["error"] == "StorageError"
    assert str(path) in result["message"]
    assert "writable" in result["message"] or "Permission denied" in result["message"]
