"""The audit of a chaos run: the sink, the checkpoints, the logs and a search for secrets.

Each check reads files only, so that it can be tried on files written by hand
(`tests/bench/test_chaos.py`) as well as on what the connector left behind.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.chaos.plan import CONFIG_FILE, SECRETS_FILE
from sfstream.state import SqliteStateStore

__all__ = [
    "Leak",
    "SinkAudit",
    "StreamAudit",
    "count_log_events",
    "load_checkpoints",
    "output_files",
    "scan_for_secrets",
]

# -- the sink audit -------------------------------------------------------------------------


@dataclass(slots=True)
class StreamAudit:
    """What the sink holds for one stream, and how it compares with what was published."""

    stream: str
    channel: str
    records: int = 0
    """RECORD lines."""
    duplicates: int = 0
    """RECORD lines whose `(replay_id, key)` came earlier in the file."""
    out_of_order: int = 0
    """RECORD lines whose replayId is below an earlier one of the stream."""
    max_replay_id: int | None = None
    published: int = 0
    last_published: int | None = None
    lost: int = 0
    lost_sample: list[int] = field(default_factory=list)
    """Up to 10 replayIds that were published and are not in the sink."""
    unexpected: int = 0
    """Distinct replayIds in the sink that were never published on the channel."""
    checkpoint: int | None = None
    """The state store's checkpoint after the final run."""
    replay_ids: set[int] = field(default_factory=set, repr=False)
    keys: set[tuple[int, str | None]] = field(default_factory=set, repr=False)

    @property
    def delivered(self) -> int:
        """Distinct replayIds in the sink."""
        return len(self.replay_ids)

    def compare(self, published: Sequence[int]) -> None:
        """Fill `published`, `lost` and `unexpected` from the channel's replayIds."""
        wanted = set(published)
        self.published = len(published)
        self.last_published = published[-1] if published else None
        missing = sorted(wanted - self.replay_ids)
        self.lost = len(missing)
        self.lost_sample = missing[:10]
        self.unexpected = len(self.replay_ids - wanted)

    def as_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "channel": self.channel,
            "published": self.published,
            "delivered": self.delivered,
            "records": self.records,
            "lost": self.lost,
            "lost_sample": self.lost_sample,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "unexpected": self.unexpected,
            "last_published": self.last_published,
            "max_replay_id": self.max_replay_id,
            "checkpoint": self.checkpoint,
        }


class SinkAudit:
    """Reads a file sink incrementally, as it grows, and keeps per-stream tallies.

    Only complete lines (ending in a newline) are read: a torn last line of a killed
    writer is left for the next writer to cut away. If the file ever shrinks below what
    was read, complete lines were removed, which is counted in `truncations`.

    Args:
        path: the sink file.
        channels: channel -> stream id of the streams to tally.
    """

    def __init__(self, path: Path, channels: Mapping[str, str]) -> None:
        self.path = path
        self.streams = {s: StreamAudit(s, c) for c, s in channels.items()}
        self.offset = 0
        self.lines = 0
        self.corrupt_lines = 0
        self.gaps = 0
        self.truncations = 0
        self.unknown_streams = 0
        self.states: dict[str, int] = {}
        """The last STATE line's replayId per stream."""

    def ingest(self) -> int:
        """Read the lines appended since the last call; returns how many."""
        try:
            with self.path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size < self.offset:
                    self.truncations += 1
                    self.offset = size
                    return 0
                file.seek(self.offset)
                data = file.read(size - self.offset)
        except FileNotFoundError:
            return 0
        end = data.rfind(b"\n")
        if end < 0:
            return 0
        complete = data[: end + 1]
        self.offset += len(complete)
        count = 0
        for line in complete.splitlines():
            count += 1
            self._line(line)
        self.lines += count
        return count

    def _line(self, line: bytes) -> None:
        try:
            message = orjson.loads(line)
            kind = message["type"]
            stream = message.get("stream")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            self.corrupt_lines += 1
            return
        if kind == "GAP":
            self.gaps += 1
            return
        if kind == "STATE":
            replay = message.get("replay_id")
            if isinstance(stream, str) and isinstance(replay, int):
                self.states[stream] = replay
            else:
                self.corrupt_lines += 1
            return
        if kind != "RECORD":
            return
        audit = self.streams.get(stream) if isinstance(stream, str) else None
        replay_id = message.get("replay_id")
        key = message.get("key")
        if audit is None:
            self.unknown_streams += 1
            return
        if not isinstance(replay_id, int) or not (key is None or isinstance(key, str)):
            self.corrupt_lines += 1
            return
        audit.records += 1
        if (replay_id, key) in audit.keys:
            audit.duplicates += 1
        else:
            audit.keys.add((replay_id, key))
        if audit.max_replay_id is not None and replay_id < audit.max_replay_id:
            audit.out_of_order += 1
        else:
            audit.max_replay_id = replay_id
        audit.replay_ids.add(replay_id)

    def reached(self, last_ids: Mapping[str, int | None]) -> bool:
        """Whether every stream holds its `last_ids` replayId (None: nothing to hold)."""
        for stream, last in last_ids.items():
            if last is not None and last not in self.streams[stream].replay_ids:
                return False
        return True


# -- secrets and logs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leak:
    """A secret value found in a file (the value itself is never reported)."""

    file: str
    secret: str
    """Which secret: `client_secret`, `refresh_token`, `password`, `access_token[3]`..."""
    offset: int


def scan_for_secrets(
    files: Iterable[Path], secret_values: Mapping[str, str], *, root: Path | None = None
) -> tuple[list[Leak], int]:
    """Every occurrence (the first per file and secret) of a secret in `files`.

    Secrets sharing a 12-character prefix (every access token of an org does) are looked
    for only where that prefix occurs, so thousands of tokens cost one pass per prefix.

    Returns the leaks and the number of bytes scanned.
    """
    groups: dict[bytes, list[tuple[str, bytes]]] = {}
    for name, value in secret_values.items():
        raw = value.encode()
        if len(raw) < 8:
            raise ValueError(f"secret {name} is too short to search for reliably")
        groups.setdefault(raw[:12], []).append((name, raw))
    leaks: list[Leak] = []
    scanned = 0
    for path in files:
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            continue
        scanned += len(data)
        shown = str(path.relative_to(root)) if root is not None else str(path)
        for prefix, members in groups.items():
            if data.find(prefix) < 0:
                continue
            for name, raw in members:
                offset = data.find(raw)
                if offset >= 0:
                    leaks.append(Leak(shown, name, offset))
    return leaks, scanned


def count_log_events(files: Iterable[Path]) -> tuple[Counter[str], int]:
    """The `event` names of JSON log lines in `files`, and the number of tracebacks.

    A traceback is a line starting one (Python printed it) or a log entry carrying an
    `exception` (the logger formatted one). Other lines that are not JSON (the torn last
    line of a killed process) are skipped.
    """
    events: Counter[str] = Counter()
    tracebacks = 0
    for path in files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        for line in data.splitlines():
            if line.startswith(b"Traceback (most recent call last)"):
                tracebacks += 1
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("event"), str):
                events[entry["event"]] += 1
                if "exception" in entry:
                    tracebacks += 1
    return events, tracebacks


# -- checkpoints and output files -----------------------------------------------------------


async def load_checkpoints(path: Path) -> dict[str, int]:
    """The replayId of each stream's checkpoint in the SQLite state store at `path`."""
    store = SqliteStateStore(path)
    try:
        return {k: v.replay_id for k, v in (await store.load(None)).items()}
    finally:
        await store.close()


def output_files(workdir: Path) -> list[Path]:
    """Every file the connector may have written (all but its inputs)."""
    inputs = {workdir / SECRETS_FILE, workdir / CONFIG_FILE}
    return sorted(p for p in workdir.rglob("*") if p.is_file() and p not in inputs)
