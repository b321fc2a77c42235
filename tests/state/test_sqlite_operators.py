"""SQLite state store: what operators' tools need from it.

A read-only open that changes nothing, the in-place migration of an earlier schema, the run
lock held by another process, and failures of the file system in the user's words (a
read-only or full file system, made in a private mount namespace where that is permitted).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sfstream.errors import StorageError
from sfstream.state import Checkpoint, SqliteStateStore, StreamOwnedError
from sfstream.state.sqlite import SCHEMA_VERSION

STREAM = "sf.event.account_changes"

# The schema of version 1, as earlier releases wrote it.
VERSION_1 = """
PRAGMA journal_mode=WAL;
CREATE TABLE sfstream_checkpoints (
    stream TEXT PRIMARY KEY, replay_id INTEGER NOT NULL, updated_at TEXT NOT NULL);
INSERT INTO sfstream_checkpoints VALUES
    ('sf.event.account_changes', 1553783, '2024-05-01T00:00:00.000000+00:00'),
    ('sf.event.order_placed', 12, '2024-05-01T00:00:01.000000+00:00');
PRAGMA user_version = 1;
"""

# The schema of version 2 (the previous release): the overrides table beside it.
VERSION_2 = VERSION_1.replace(
    "PRAGMA user_version = 1;",
    """CREATE TABLE sfstream_overrides (
    stream TEXT PRIMARY KEY, start INTEGER, previous INTEGER, requested_at TEXT NOT NULL);
INSERT INTO sfstream_overrides VALUES
    ('sf.event.order_placed', 5, 12, '2024-05-01T00:00:02.000000+00:00');
PRAGMA user_version = 2;""",
)

# Owns a stream until stdin closes or it is killed: what a running connector does.
HOLD_OWNER = """
import asyncio, sys
from sfstream.state import SqliteStateStore

async def main():
    async with SqliteStateStore(sys.argv[1]) as store, store.owner([sys.argv[2]]):
        print("owned", flush=True)
        await asyncio.to_thread(sys.stdin.read)

asyncio.run(main())
"""

# Commits, then loads, and reports each outcome as JSON.
PROBE = """
import asyncio, json, sys
from sfstream.errors import SfStreamError
from sfstream.state import SqliteStateStore

async def main():
    outcome = {}
    for name, read_only in (("commit", False), ("load", False), ("read_only_load", True)):
        try:
            async with SqliteStateStore(sys.argv[1], read_only=read_only) as store:
                if name == "commit":
                    await store.commit({"stream.probe": 1})
                else:
                    outcome[name + "_found"] = len(await store.load())
        except SfStreamError as exc:
            outcome[name] = str(exc)
    return outcome

print(json.dumps(asyncio.run(main())))
"""


def version_1(path: Path, script: str = VERSION_1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(script)
    finally:
        conn.close()
    path.chmod(0o600)


def checkpoint_columns(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [str(row[1]) for row in conn.execute("PRAGMA table_info(sfstream_checkpoints)")]
    finally:
        conn.close()


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


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, stat.S_IMODE(p.stat().st_mode)) for p in directory.iterdir()}


async def test_an_earlier_schema_is_migrated_in_place_keeping_its_checkpoints(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    version_1(path)
    async with SqliteStateStore(path) as store:
        loaded = await store.load()
        assert {s: c.replay_id for s, c in loaded.items()} == {
            STREAM: 1553783,
            "sf.event.order_placed": 12,
        }
        assert loaded[STREAM].updated_at == "2024-05-01T00:00:00.000000+00:00"
        assert loaded[STREAM].event_time is None
        made = await store.override(STREAM, 1500000)
        assert (made.start, made.previous) == (1500000, 1553783)
    assert SCHEMA_VERSION == 4
    assert schema(path) == (
        4,
        {"sfstream_checkpoints", "sfstream_overrides", "sfstream_leases", "sfstream_members"},
    )
    assert checkpoint_columns(path) == ["stream", "replay_id", "updated_at", "event_time"]


async def test_the_previous_schema_gets_event_times_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    version_1(path, VERSION_2)
    async with SqliteStateStore(path, read_only=True) as reader:
        # A read-only store reads the file as it is: checkpoints without event times.
        loaded = await reader.load()
        assert {s: (c.replay_id, c.event_time) for s, c in loaded.items()} == {
            STREAM: (1553783, None),
            "sf.event.order_placed": (12, None),
        }
    assert schema(path)[0] == 2
    async with SqliteStateStore(path) as store:
        loaded = await store.load()
        assert loaded[STREAM] == Checkpoint(STREAM, 1553783, "2024-05-01T00:00:00.000000+00:00")
        assert (await store.overrides())["sf.event.order_placed"].start == 5
        await store.commit({STREAM: 1553790}, {STREAM: 1714521600.25})
    assert schema(path) == (
        4,
        {"sfstream_checkpoints", "sfstream_overrides", "sfstream_leases", "sfstream_members"},
    )
    assert checkpoint_columns(path) == ["stream", "replay_id", "updated_at", "event_time"]
    async with SqliteStateStore(path, read_only=True) as reader:
        loaded = await reader.load()
        assert (loaded[STREAM].replay_id, loaded[STREAM].event_time) == (1553790, 1714521600.25)
        assert loaded["sf.event.order_placed"].replay_id == 12
        assert (await reader.overrides())["sf.event.order_placed"].start == 5


async def test_a_read_only_store_changes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nothing" / "state.db"
    async with SqliteStateStore(missing, read_only=True) as store:
        assert await store.load() == {}
        assert await store.overrides() == {}
    assert not missing.parent.exists(), "a read-only store created its directory"

    path = tmp_path / "v1" / "state.db"
    version_1(path)
    path.chmod(0o644)  # a writable store would tighten it
    before = listing(path.parent)
    async with SqliteStateStore(path, read_only=True) as store:
        assert (await store.load([STREAM]))[STREAM].replay_id == 1553783
        assert await store.overrides() == {}
        for change in (
            store.commit({STREAM: 1}),
            store.reset(STREAM),
            store.override(STREAM, 1),
        ):
            with pytest.raises(StorageError, match="opened read-only"):
                await change
        with pytest.raises(StorageError, match="opened read-only"):
            async with store.owner([STREAM]):
                pass
    assert listing(path.parent) == before, "the read-only store touched the files"
    assert schema(path) == (1, {"sfstream_checkpoints"}), "the read-only store migrated"
    assert repr(SqliteStateStore(path, read_only=True)).endswith("read_only=True)")


async def test_a_read_only_store_reads_while_a_writer_has_the_database_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    async with SqliteStateStore(path) as writer:
        await writer.commit({STREAM: 5})
        async with SqliteStateStore(path, read_only=True) as reader:
            assert (await reader.load())[STREAM].replay_id == 5
            await writer.override(STREAM, 3)
            assert (await reader.load())[STREAM].replay_id == 3
            assert (await reader.overrides())[STREAM].previous == 5


async def test_the_run_lock_names_its_holder_and_ends_with_its_process(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLD_OWNER,
        str(path),
        STREAM,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        async with asyncio.timeout(30):
            assert await holder.stdout.readline() == b"owned\n"
        async with SqliteStateStore(path) as store:
            with pytest.raises(StreamOwnedError) as caught:
                async with store.owner([STREAM]):
                    pass
            assert str(caught.value).startswith(
                f"stream {STREAM} is being streamed by a running `sfstream run` "
                f"(pid {holder.pid} on host "
            )
            assert caught.value.retryable
            # The lock covers the database: another stream is refused too, and said so.
            with pytest.raises(StreamOwnedError, match="one run uses a state database at a time"):
                async with store.owner(["sf.event.order_placed"]):
                    pass
            holder.kill()  # a crash releases it: no stale lock to clean up
            await holder.wait()
            async with store.owner([STREAM]):
                pass
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    assert mode(Path(f"{path}-run.lock")) == 0o600


# -- a read-only or full file system ---------------------------------------------------------


def _namespace_problem() -> str | None:
    unshare = shutil.which("unshare")
    if not sys.platform.startswith("linux"):
        return "mount namespaces are a Linux feature"
    if os.geteuid() != 0:
        return "mounting a read-only or a full file system needs root"
    if unshare is None:
        return "unshare(1) (util-linux) is not installed"
    with tempfile.TemporaryDirectory() as directory:
        probe = subprocess.run(
            [unshare, "--mount", "--propagation", "private", "sh", "-c", _full(directory)],
            capture_output=True,
            check=False,
        )
    if probe.returncode != 0:
        return f"mounting in a private mount namespace is not permitted here ({probe.stderr!r})"
    return None


def _full(directory: Path | str) -> str:
    quoted = shlex.quote(str(directory))
    return (
        f"mount -t tmpfs -o size=64k tmpfs {quoted} && "
        f"dd if=/dev/zero of={quoted}/fill bs=4k count=11 2>/dev/null"
    )


def _read_only(directory: Path | str) -> str:
    quoted = shlex.quote(str(directory))
    return f"mount --bind {quoted} {quoted} && mount -o remount,bind,ro {quoted}"


async def probe_in_namespace(setup: str, path: Path) -> dict[str, object]:
    problem = _namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    unshare = shutil.which("unshare")
    assert unshare is not None
    process = await asyncio.create_subprocess_exec(
        unshare,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'set -e; {setup}; exec "$@"',
        "sh",
        sys.executable,
        "-c",
        PROBE,
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out)
    return result


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
async def test_a_read_only_file_system(tmp_path: Path, existing: bool) -> None:
    directory = tmp_path / "frozen"
    directory.mkdir()
    path = directory / "state.db"
    if existing:
        async with SqliteStateStore(path) as store:
            await store.commit({"stream.a": 1})
    outcome = await probe_in_namespace(_read_only(directory), path)
    expected = (
        f"cannot write the state database {path}: the file system is read-only; "
        "point state.path at a writable place"
    )
    assert outcome["commit"] == expected
    assert outcome["load"] == expected  # a writable store opens for writing
    if existing:
        assert outcome["read_only_load_found"] == 1
    else:
        assert outcome["read_only_load_found"] == 0


async def test_a_full_file_system(tmp_path: Path) -> None:
    directory = tmp_path / "full"
    directory.mkdir()
    path = directory / "state.db"
    outcome = await probe_in_namespace(_full(directory), path)
    message = str(outcome["commit"])
    assert message.startswith(f"the disk holding the state database {path} is full (")
    assert message.endswith("); free space and restart")
    assert "disk I/O error" in message or "full" in message
