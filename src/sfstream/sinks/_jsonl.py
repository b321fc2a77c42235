"""Reading a JSON-lines file from its end: the torn tail and the high-water marks.

Blocking functions over an open file descriptor; `FileSink` calls them from a worker
thread. They never load the whole file: they read fixed-size blocks backwards with
`os.pread` and count what they read, so that callers (and tests) can see how cheap a scan
was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Set
from typing import Any, Final

from sfstream.errors import StorageError
from sfstream.protocol import GAP, RECORD, STATE, decode

DEFAULT_BLOCK_BYTES: Final = 64 * 1024
_NEWLINE: Final = b"\n"


def _pread_exact(fd: int, length: int, offset: int, path: str) -> bytes:
    """`length` bytes at `offset`; short reads are retried (they happen only at EOF)."""
    parts: list[bytes] = []
    missing = length
    while missing > 0:
        part = os.pread(fd, missing, offset + length - missing)
        if not part:
            raise StorageError(
                f"{path}: the file ended at byte {offset + length - missing} while being read: "
                "something else truncated it"
            )
        parts.append(part)
        missing -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def torn_tail_length(fd: int, size: int, path: str, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """How many bytes follow the file's last newline: a line cut short by a crash.

    Args:
        fd: a readable file descriptor.
        size: the file's size.
        path: the file's name, for error messages.
        block_bytes: how much to read at a time while looking for the newline.

    Returns:
        0 when the file is empty or ends with a newline; otherwise the length of the
        unterminated last line (the whole file when it holds no newline at all).
    """
    position = size
    while position > 0:
        start = max(0, position - block_bytes)
        block = _pread_exact(fd, position - start, start, path)
        newline = block.rfind(_NEWLINE)
        if newline >= 0:
            return size - (start + newline + 1)
        position = start
    return size


class ReverseLines:
    """The lines of the first `size` bytes of a file, last line first, with their offsets.

    Iterating yields `(offset, line)` pairs, the line without its newline. The end of the
    file ends a line too, so an unterminated tail comes out as a line (and fails to parse,
    if it is torn). Memory stays at about one block plus the longest line: a block without
    a newline is kept aside and joined only once the line's start is found.

    Attributes:
        bytes_read: how many bytes the iteration has read so far.
    """

    def __init__(
        self, fd: int, size: int, path: str, block_bytes: int = DEFAULT_BLOCK_BYTES
    ) -> None:
        if block_bytes < 1:
            raise ValueError("block_bytes must be positive")
        self._fd = fd
        self._size = size
        self._path = path
        self._block_bytes = block_bytes
        self.bytes_read = 0

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        position = self._size
        # Later parts of the line that starts before `position`, the latest part first.
        pieces: list[bytes] = []
        first = True
        while position > 0:
            start = max(0, position - self._block_bytes)
            block = _pread_exact(self._fd, position - start, start, self._path)
            self.bytes_read += len(block)
            position = start
            if first:
                # The file's final newline ends its last line; from here on the end of the
                # data ends a line and every newline separates two lines.
                first = False
                if block.endswith(_NEWLINE):
                    block = block[:-1]
            if start > 0 and _NEWLINE not in block:
                pieces.append(block)
                continue
            buffer = block + b"".join(reversed(pieces)) if pieces else block
            pieces = []
            end = len(buffer)
            while True:
                newline = buffer.rfind(_NEWLINE, 0, end)
                if newline < 0 and start > 0:
                    # The line's start is in an earlier block: carry what we have of it.
                    pieces.append(buffer[:end])
                    break
                yield start + newline + 1, buffer[newline + 1 : end]
                if newline < 0:
                    break
                end = newline


def parse_line(line: bytes, path: str, offset: int) -> dict[str, Any]:
    """One decoded line of the file at `path`.

    Raises:
        StorageError: the line is not an sfstream message; names the file and byte offset
            (never the line's content, which may hold personal data).
    """
    try:
        return decode(line)
    except ValueError as exc:
        raise StorageError(
            f"{path}: the line at byte offset {offset} is not an sfstream message ({exc})"
        ) from exc


def _position(message: dict[str, Any], path: str, offset: int) -> tuple[str, int] | None:
    """`(stream, replay_id)` of a RECORD or STATE message; None for other types."""
    if message["type"] not in (RECORD, STATE):
        return None
    stream = message.get("stream")
    replay_id = message.get("replay_id")
    if not isinstance(stream, str) or not isinstance(replay_id, int) or isinstance(replay_id, bool):
        raise StorageError(
            f"{path}: the {message['type']} line at byte offset {offset} lacks a string "
            "`stream` or an integer `replay_id`"
        )
    return stream, replay_id


def scan_high_watermarks(lines: ReverseLines, streams: Set[str], path: str) -> dict[str, int]:
    """Each stream's position: the replayId of its latest RECORD or STATE line.

    Lines are read from the end and the scan stops as soon as every stream has been seen.
    Between gaps a stream's replayIds only grow, so its latest line holds its highest. A
    `GAP` line restarts the stream (Salesforce rejected the old position and the stream
    fell back to -2 or -1), so a stream whose latest line is a GAP has no position here and
    older, pre-gap lines are not used.

    Args:
        lines: the file's lines, last first.
        streams: the streams asked for; those without RECORD or STATE lines are absent from
            the result, and the whole file is read to be sure of it.
        path: the file's name, for error messages.

    Raises:
        StorageError: a line read does not parse, or a RECORD/STATE line lacks its fields.
    """
    marks: dict[str, int] = {}
    seen: set[str] = set()
    if not streams:
        return marks
    for offset, line in lines:
        message = parse_line(line, path, offset)
        if message["type"] == GAP and message.get("stream") in streams:
            seen.add(str(message["stream"]))
        else:
            position = _position(message, path, offset)
            if position is None:
                continue
            stream, replay_id = position
            if stream in streams and stream not in seen:
                marks[stream] = replay_id
                seen.add(stream)
        if len(seen) == len(streams):
            break
    return marks
