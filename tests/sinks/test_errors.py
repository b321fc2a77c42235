"""The one translation of OS errors into storage errors, shared by every sink."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sfstream.errors import StorageError, StorageUnavailableError
from sfstream.sinks._io import run_blocking, storage_error, translate_os_errors


@pytest.mark.parametrize(
    ("code", "kind", "text"),
    [
        (errno.EACCES, StorageError, "cannot write to /data/out.jsonl: Permission denied [EACCES]"),
        (errno.ENOSPC, StorageError, "No space left on device [ENOSPC]"),
        (errno.EDQUOT, StorageError, "[EDQUOT]"),
        (errno.EROFS, StorageError, "Read-only file system [EROFS]"),
        (errno.EIO, StorageError, "Input/output error [EIO]"),
        (errno.EPIPE, StorageError, "the reader went away (the pipe is closed) [EPIPE]"),
        (errno.ETIMEDOUT, StorageUnavailableError, "right now: Connection timed out"),
        (errno.ESTALE, StorageUnavailableError, "[ESTALE]"),
        (errno.EAGAIN, StorageUnavailableError, "[EAGAIN]"),
    ],
)
def test_errno_decides_refusal_or_unavailability(
    code: int, kind: type[StorageError | StorageUnavailableError], text: str
) -> None:
    error = storage_error(OSError(code, os.strerror(code)), "/data/out.jsonl", "write to")
    assert type(error) is kind
    assert text in str(error)
    assert error.retryable is (kind is StorageUnavailableError)


def test_translation_chains_the_os_error() -> None:
    original = PermissionError(errno.EACCES, "Permission denied", "/data/out.jsonl")
    with pytest.raises(StorageError) as raised, translate_os_errors("/data/out.jsonl", "open"):
        raise original
    assert raised.value.__cause__ is original


def test_errors_without_errno_still_read_well() -> None:
    error = storage_error(OSError("something odd"), "stdout", "flush")
    assert isinstance(error, StorageError)
    assert str(error) == "cannot flush stdout: something odd [?]"


async def test_blocking_work_runs_in_a_thread_and_is_translated() -> None:
    def refuse() -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    assert await run_blocking("x", "read", lambda: 42) == 42
    with pytest.raises(StorageError, match="cannot write to x: No space left on device"):
        await run_blocking("x", "write to", refuse)


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize("sink_type", ["file", "stdout"])
async def test_an_event_that_cannot_be_encoded_is_a_classified_error(
    tmp_path: Path, sink_type: str
) -> None:
    from sfstream.errors import EncodingError
    from sfstream.protocol import Record, StateMessage
    from sfstream.sinks import FileSink, StdoutSink

    good = Record("sf.event.account_changes", "001", 7, {"Name": "a"}, {}, "now")
    deep = Record("sf.event.account_changes", "001", 8, _nested(5000), {}, "now")
    sink = FileSink(tmp_path / "out.jsonl") if sink_type == "file" else StdoutSink()
    try:
        with pytest.raises(EncodingError) as raised:
            await sink.write([good, deep, StateMessage("sf.event.account_changes", 8)])
    finally:
        await sink.close()
    text = str(raised.value)
    assert "replayId 8 of stream sf.event.account_changes" in text
    assert "sfstream state set sf.event.account_changes 8" in text
    assert raised.value.replay_id == 8
    assert not raised.value.retryable
    if sink_type == "file":
        assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_bytes() == b""


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.EROFS, "; the file system is read-only: point sink.path at a writable place"),
        (errno.ENOSPC, "; the disk is full: free space and restart"),
        (errno.EDQUOT, "; the disk quota is used up: free space or raise the quota"),
        (errno.EACCES, "; check the permissions of the file and its directory"),
    ],
)
def test_common_refusals_say_what_to_do(code: int, advice: str) -> None:
    error = storage_error(OSError(code, os.strerror(code)), "/data/out.jsonl", "write to")
    text = str(error)
    assert text.startswith(f"cannot write to /data/out.jsonl: {os.strerror(code)} [")
    assert advice in text
