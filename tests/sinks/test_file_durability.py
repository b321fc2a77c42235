"""FileSink under real failures: a killed writer, refused permissions, a 50 MB file."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from sfstream.protocol import Record, StateMessage, decode, encode
from sfstream.sinks import FileSink
from tests.sinks import sink_child

CHILD = Path(sink_child.__file__)


async def run_child(mode: str, path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        mode,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


@pytest.mark.timeout(60)
async def test_every_acknowledged_line_survives_a_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    child = await run_child("crash", path)
    assert child.stdout is not None
    acknowledged = 0
    while acknowledged < 20:
        line = await child.stdout.readline()
        assert line, "the writer exited early"
        if line == b"done\n":
            break
        acknowledged = int(line)
    # Killed right after a `write` returned, while the next one is probably under way.
    child.kill()
    await child.communicate()
    assert child.returncode == -9

    async with FileSink(path) as sink:
        # A batch caught mid-write may have left a torn line (never acknowledged): opening
        # cut it, and the sink appends on a line boundary.
        marks = await sink.high_watermarks([sink_child.STREAM])
        await sink.write([StateMessage(sink_child.STREAM, marks[sink_child.STREAM])])
    messages = [decode(line) for line in path.read_bytes().splitlines()]
    records, state = messages[:-1], messages[-1]
    assert [m["replay_id"] for m in records] == list(range(1, len(records) + 1))
    assert len(records) >= acknowledged * sink_child.BATCH
    expected = [orjson.loads(encode(r)) for r in sink_child.batch(0)]
    assert records[: sink_child.BATCH] == expected
    assert all(m["data"]["pad"] == "p" * (m["replay_id"] % 977) for m in records)
    assert state == {"type": "STATE", "stream": sink_child.STREAM, "replay_id": len(records)}


async def test_a_refused_write_leaves_no_partial_batch(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    child = await run_child("limited", path)
    out, _ = await child.communicate()
    assert child.returncode == 0
    # The undo is logged (structlog's default goes to stdout); the outcome is the last line.
    outcome = json.loads(out.splitlines()[-1])
    assert outcome["error"] == "StorageError"
    assert outcome["cause"] == "OSError"
    assert "File too large [EFBIG]" in outcome["message"]
    # The refused batch had reached the limit before failing; it was cut back out whole.
    expected = b"".join(encode(m) + b"\n" for m in [*sink_child.batch(0), *sink_child.batch(1)])
    assert len(expected) < sink_child.SIZE_LIMIT
    assert path.read_bytes() == expected


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's own temp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="sfstream-sinks-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("case", ["read_only_directory", "read_only_file"])
async def test_permission_denied_is_a_storage_error(shared_dir: Path, case: str) -> None:
    if case == "read_only_directory":
        target = shared_dir / "locked" / "out.jsonl"
        target.parent.mkdir(mode=0o555)
        target.parent.chmod(0o555)
    else:
        target = shared_dir / "out.jsonl"
        target.write_bytes(b"")
        target.chmod(0o444)
    # The child drops root (which ignores permissions) before it opens the sink.
    child = await run_child("denied", target)
    out, _ = await child.communicate()
    assert child.returncode == 0
    outcome = json.loads(out)
    assert outcome["error"] == "StorageError"
    assert outcome["cause"] == "PermissionError"
    assert str(target) in outcome["message"]
    assert "Permission denied [EACCES]" in outcome["message"]
    assert not target.exists() or target.stat().st_size == 0


BIG_BYTES = 50 * 1024 * 1024
BLOCK = 64 * 1024


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """About 50 MB of records of streams a, b and c, ending with a and b."""
    path = tmp_path_factory.mktemp("big") / "out.jsonl"
    highest: dict[str, int] = {}
    size = 0
    replay_id = 0
    with path.open("wb") as file:
        while size < BIG_BYTES:
            chunk = []
            for _ in range(10_000):
                replay_id += 1
                stream = "abc"[replay_id % 3]
                data = {"Id": f"001{replay_id:015d}", "Name": "Acme " * 30, "n": replay_id}
                message = Record(stream, None, replay_id, data, {}, "2024-05-01T00:00:00Z")
                chunk.append(encode(message) + b"\n")
                highest[stream] = replay_id
            data_bytes = b"".join(chunk)
            file.write(data_bytes)
            size += len(data_bytes)
    return path, highest


async def test_recent_activity_reads_only_the_last_block(
    big_file: tuple[Path, dict[str, int]],
) -> None:
    path, highest = big_file
    async with FileSink(path, block_bytes=BLOCK) as sink:
        assert await sink.high_watermarks(["a", "b", "c"]) == highest
        assert sink.last_scan_bytes_read == BLOCK
    assert path.stat().st_size >= BIG_BYTES


async def test_an_absent_stream_reads_the_whole_big_file(
    big_file: tuple[Path, dict[str, int]],
) -> None:
    path, highest = big_file
    async with FileSink(path, block_bytes=BLOCK) as sink:
        assert await sink.high_watermarks(["a", "absent"]) == {"a": highest["a"]}
        assert sink.last_scan_bytes_read == path.stat().st_size
