"""StdoutSink: the conformance suite over a buffered byte stream, and real pipes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from typing import Any

import pytest

from sfstream.errors import StorageError
from sfstream.protocol import Record, StateMessage, encode
from sfstream.sinks import Sink, StdoutSink
from sfstream.testing.sinks import SINK_CHECKS, SinkCheck, check_sink, decode_json_lines


class StdoutHarness:
    """A stream whose reader sees only flushed bytes: a 1 MiB buffer over a BytesIO."""

    def __init__(self) -> None:
        self.received = io.BytesIO()
        self.stream = io.BufferedWriter(self.received, buffer_size=1024 * 1024)

    async def open(self) -> Sink:
        return StdoutSink(self.stream)

    async def read_back(self) -> list[dict[str, Any]]:
        return decode_json_lines(self.received.getvalue())


def record(replay_id: int, stream: str = "sf.event.account_changes") -> Record:
    return Record(stream, None, replay_id, {"n": replay_id}, {}, "2024-05-01T00:00:00Z")


@pytest.mark.parametrize(("name", "check"), SINK_CHECKS, ids=[name for name, _ in SINK_CHECKS])
async def test_conformance(name: str, check: SinkCheck) -> None:
    await check(StdoutHarness())


async def test_whole_suite_on_one_stream() -> None:
    await check_sink(StdoutHarness())


async def test_writes_one_line_per_message_and_flushes_it() -> None:
    harness = StdoutHarness()
    messages = [record(1), StateMessage("sf.event.account_changes", 1)]
    async with StdoutSink(harness.stream) as sink:
        await sink.write(messages)
        assert harness.received.getvalue() == b"".join(encode(m) + b"\n" for m in messages)
    assert not harness.stream.closed, "the sink closed a stream it does not own"


async def test_default_stream_is_standard_output(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    sink = StdoutSink()
    await sink.write([record(7)])
    await sink.close()
    assert capsysbinary.readouterr().out == encode(record(7)) + b"\n"


async def test_a_closed_pipe_means_the_reader_went_away() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "wb")
    sink = StdoutSink(stream)
    try:
        with pytest.raises(StorageError, match="reader went away") as raised:
            await sink.write([record(1)])
        assert isinstance(raised.value.__cause__, BrokenPipeError)
        assert not raised.value.retryable
        with pytest.raises(StorageError, match="reader went away"):
            await sink.write([record(2)])
        await sink.close()  # does not flush the dead pipe again
        await sink.close()
    finally:
        # The buffer still holds the failed batch; closing tries to flush it once more.
        with contextlib.suppress(BrokenPipeError):
            stream.close()


async def test_a_closed_stream_is_a_storage_error() -> None:
    stream = io.BytesIO()
    stream.close()
    with pytest.raises(StorageError, match="output stream is closed"):
        await StdoutSink(stream).write([record(1)])


@pytest.mark.timeout(60)
async def test_a_full_pipe_does_not_block_the_event_loop() -> None:
    """The reader runs on the event loop: if `write` blocked the loop, this would deadlock."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    stream = os.fdopen(write_end, "wb")
    messages = [record(i, stream=f"s{i % 7}") for i in range(40_000)]
    expected = b"".join(encode(m) + b"\n" for m in messages)
    assert len(expected) > 16 * 65536, "must overflow the pipe buffer many times"
    received = bytearray()
    complete = asyncio.Event()

    def on_readable() -> None:
        received.extend(os.read(read_end, 1 << 16))
        if len(received) >= len(expected):
            complete.set()

    loop = asyncio.get_running_loop()
    loop.add_reader(read_end, on_readable)
    try:
        async with StdoutSink(stream) as sink, asyncio.TaskGroup() as tasks:
            tasks.create_task(sink.write(messages))
            await complete.wait()
    finally:
        loop.remove_reader(read_end)
        os.close(read_end)
        stream.close()
    assert bytes(received) == expected
