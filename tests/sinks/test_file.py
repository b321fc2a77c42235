"""FileSink: the conformance suite, torn tails, high-water marks, refusals."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sfstream.errors import StorageError
from sfstream.protocol import GapMessage, Message, Record, StateMessage, encode
from sfstream.sinks import FileSink, Sink
from sfstream.testing.sinks import SINK_CHECKS, SinkCheck, check_sink, decode_json_lines


class FileHarness:
    """Sinks on one file; read back from the file's bytes, not through the sink."""

    def __init__(self, path: Path, block_bytes: int = 64 * 1024, *, inline: bool = False) -> None:
        self.path = path
        self.block_bytes = block_bytes
        self.inline = inline

    async def open(self) -> Sink:
        return FileSink(self.path, block_bytes=self.block_bytes, inline_writes=self.inline)

    async def read_back(self) -> list[dict[str, Any]]:
        return decode_json_lines(self.path.read_bytes()) if self.path.exists() else []


def record(stream: str, replay_id: int, pad: int = 0) -> Record:
    data = {"n": replay_id, "pad": "x" * pad}
    return Record(stream, None, replay_id, data, {}, "2024-05-01T00:00:00Z")


def lines(messages: list[Message]) -> bytes:
    return b"".join(encode(m) + b"\n" for m in messages)


@pytest.mark.parametrize("inline", [False, True], ids=["thread-writes", "inline-writes"])
@pytest.mark.parametrize(("name", "check"), SINK_CHECKS, ids=[name for name, _ in SINK_CHECKS])
async def test_conformance(name: str, check: SinkCheck, inline: bool, tmp_path: Path) -> None:
    await check(FileHarness(tmp_path / "out.jsonl", inline=inline))


async def test_whole_suite_on_one_file_with_small_blocks(tmp_path: Path) -> None:
    await check_sink(FileHarness(tmp_path / "out.jsonl", block_bytes=4096))


async def test_appends_exact_lines_to_a_new_file_in_new_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.jsonl"
    messages: list[Message] = [record("s", 1), StateMessage("s", 1)]
    async with FileSink(path) as sink:
        assert sink.path == path
        await sink.write(messages)
        assert path.read_bytes() == lines(messages)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o600 == 0o600, oct(mode)
    assert mode | 0o644 == 0o644, f"data files are 0644 at most, not {oct(mode)}"


async def test_opens_lazily_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = FileSink(path)
    assert not path.exists()
    assert await sink.high_watermarks(["s"]) == {}
    assert path.exists()
    await sink.close()


@pytest.mark.parametrize(
    ("tail", "block_bytes"),
    [
        (b"{", 64 * 1024),
        (b'{"type":"RECORD","stream":"s","replay_id":4,"da', 64 * 1024),
        (b'{"type":"STATE","stream":"s","replay_id":4}', 64 * 1024),  # complete JSON, no newline
        (b'{"type":"RECORD","data":"' + b"y" * 10_000, 64),  # longer than many blocks
    ],
    ids=["one_byte", "partial_record", "missing_newline", "longer_than_a_block"],
)
async def test_a_torn_tail_is_cut_at_open_and_counted(
    tmp_path: Path, tail: bytes, block_bytes: int
) -> None:
    path = tmp_path / "out.jsonl"
    complete = lines([record("s", 1), record("s", 2, pad=300), StateMessage("s", 2)])
    path.write_bytes(complete + tail)
    sink = FileSink(path, block_bytes=block_bytes)
    with capture_logs() as logs:
        await sink.open()
    assert sink.repaired_bytes == len(tail)
    assert path.read_bytes() == complete
    assert [e for e in logs if e["event"] == "sink.file.torn_tail_repaired"] == [
        {
            "event": "sink.file.torn_tail_repaired",
            "log_level": "warning",
            "path": str(path),
            "bytes": len(tail),
            "kept_bytes": len(complete),
        }
    ]
    assert await sink.high_watermarks(["s"]) == {"s": 2}
    await sink.write([record("s", 3)])
    await sink.close()
    assert path.read_bytes() == complete + lines([record("s", 3)])


async def test_a_file_holding_only_a_torn_line_becomes_empty(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"type":"REC')
    async with FileSink(path, block_bytes=4) as sink:
        assert sink.repaired_bytes == 12
        assert await sink.high_watermarks(["s"]) == {}
    assert path.read_bytes() == b""


async def test_complete_files_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    complete = lines([record("s", 1), record("t", 2)])
    path.write_bytes(complete)
    with capture_logs() as logs:
        async with FileSink(path) as sink:
            assert sink.repaired_bytes == 0
    assert path.read_bytes() == complete
    assert logs == []


def interleaved(seed: int, count: int) -> tuple[list[Message], dict[str, int]]:
    """Messages of five streams in random interleaving, each stream's ids increasing (as
    the engine writes them), with long lines, GAPs, and one stream with STATE lines only."""
    rng = random.Random(seed)
    streams = ["s0", "s1", "s2", "s3", "state_only"]
    last = dict.fromkeys(streams, 0)
    messages: list[Message] = []
    for _ in range(count):
        stream = rng.choice(streams)
        last[stream] += rng.randint(1, 50)
        if stream == "state_only" or rng.random() < 0.2:
            messages.append(StateMessage(stream, last[stream]))
        elif rng.random() < 0.1:
            messages.append(GapMessage(stream, "expired", last[stream] + 10**6, "latest"))
        else:
            messages.append(record(stream, last[stream], pad=rng.choice([0, 10, 3000])))
    highest: dict[str, int] = {}
    for message in messages:
        if isinstance(message, Record | StateMessage):
            highest[message.stream] = max(highest.get(message.stream, 0), message.replay_id)
    return messages, highest


@pytest.mark.parametrize("block_bytes", [1, 7, 100, 4096, 1 << 20])
async def test_high_watermarks_of_interleaved_streams(tmp_path: Path, block_bytes: int) -> None:
    messages, highest = interleaved(seed=block_bytes, count=400)
    path = tmp_path / "out.jsonl"
    async with FileSink(path, block_bytes=block_bytes) as sink:
        for start in range(0, len(messages), 37):
            await sink.write(messages[start : start + 37])
        assert await sink.high_watermarks(highest) == highest
        for stream, replay_id in highest.items():
            assert await sink.high_watermarks([stream]) == {stream: replay_id}


async def test_an_absent_stream_is_left_out_after_reading_everything(tmp_path: Path) -> None:
    messages, highest = interleaved(seed=3, count=300)
    path = tmp_path / "out.jsonl"
    async with FileSink(path, block_bytes=512) as sink:
        await sink.write(messages)
        assert await sink.high_watermarks(["s1", "absent"]) == {"s1": highest["s1"]}
        assert sink.last_scan_bytes_read == path.stat().st_size
        assert await sink.high_watermarks(["absent"]) == {}
        assert sink.last_scan_bytes_read == path.stat().st_size


async def test_the_scan_stops_once_every_stream_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    old = [record("a", i, pad=100) for i in range(1, 2_000)]
    async with FileSink(path, block_bytes=4096) as sink:
        await sink.write([*old, record("b", 7), record("a", 2_000)])
        assert await sink.high_watermarks(["a", "b"]) == {"a": 2_000, "b": 7}
        assert sink.last_scan_bytes_read == 4096
        assert await sink.high_watermarks([]) == {}
        assert sink.last_scan_bytes_read == 0


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"not json", "not an sfstream message"),
        (b"", "not an sfstream message"),
        (b'["RECORD"]', "not an sfstream message"),
        (b'{"type":"RECORD","stream":"s"}', "lacks a string `stream` or an integer `replay_id`"),
        (b'{"type":"STATE","stream":"s","replay_id":"9"}', "lacks a string"),
        (b'{"type":"STATE","stream":7,"replay_id":9}', "lacks a string"),
    ],
    ids=["garbage", "blank", "array", "no_replay_id", "string_replay_id", "number_stream"],
)
async def test_a_bad_line_names_the_file_and_offset(
    tmp_path: Path, bad: bytes, reason: str
) -> None:
    path = tmp_path / "out.jsonl"
    head = lines([record("s", 1), record("s", 2)])
    tail = lines([record("t", 3), record("s", 4)])
    path.write_bytes(head + bad + b"\n" + tail)
    async with FileSink(path, block_bytes=16) as sink:
        # Recent lines answer without reaching the bad line...
        assert await sink.high_watermarks(["s", "t"]) == {"s": 4, "t": 3}
        # ...a full scan reaches it.
        with pytest.raises(StorageError, match=reason) as raised:
            await sink.high_watermarks(["absent"])
    assert str(path) in str(raised.value)
    assert f"byte offset {len(head)}" in str(raised.value)


async def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    async with FileSink(path) as first:
        with pytest.raises(StorageError, match="another sink has the file open"):
            await FileSink(path).open()
        await first.write([record("s", 1)])
    async with FileSink(path) as second:
        assert await second.high_watermarks(["s"]) == {"s": 1}


async def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot open") as raised:
        await FileSink(tmp_path).open()
    assert isinstance(raised.value.__cause__, IsADirectoryError)
    assert not raised.value.retryable


async def test_a_fifo_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    with pytest.raises(StorageError, match="not a regular file"):
        await FileSink(path).open()


async def test_a_parent_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(StorageError, match="cannot open") as raised:
        await FileSink(tmp_path / "plain" / "out.jsonl").open()
    assert isinstance(raised.value.__cause__, OSError)


async def test_nothing_works_after_close(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "out.jsonl")
    await sink.close()
    for attempt in (sink.open(), sink.write([]), sink.high_watermarks(["s"])):
        with pytest.raises(StorageError, match="the sink is closed"):
            await attempt


def test_block_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        FileSink(tmp_path / "out.jsonl", block_bytes=0)


async def test_a_file_that_cannot_be_opened_is_reported_as_a_write_even_from_a_scan(
    tmp_path: Path,
) -> None:
    # The sink opens its file for appending, whichever call comes first: a refusal there is
    # about writing, even when the engine asked for high-water marks.
    (tmp_path / "occupied").write_text("a file where a directory should be")
    path = tmp_path / "occupied" / "out.jsonl"
    sink = FileSink(path)
    try:
        with pytest.raises(StorageError) as caught:
            await sink.high_watermarks(["sf.event.a"])
    finally:
        await sink.close()
    assert str(caught.value).startswith(f"cannot open {path} for writing: ")
    assert "cannot read" not in str(caught.value)
