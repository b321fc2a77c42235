"""Chaos runs: the connector under seeded faults and SIGKILLs, then an audit of its output.

A chaos run starts the bundled emulator in this process, turns on its seeded chaos mode
(dropped and cut responses, 503s, stalls, unknown clients, token revocations, expired
clients), publishes events across several channels at a steady rate, and meanwhile runs
`sfstream run` as a subprocess (file sink, SQLite state) that it SIGKILLs and restarts at
random moments. The run after the last kill catches up and is stopped with SIGTERM. Then
the audit checks:

- every published event is in the sink (per stream, by replayId), none lost;
- no record appears twice (`(stream, replayId, key)`), and within a stream replayIds never
  go backwards;
- no `GAP`, no unreadable line, no line that disappeared between two reads;
- at every kill, each checkpoint was at or below what the sink held; at the end each
  checkpoint equals its channel's last replayId;
- every connector run ended by a kill or by the final SIGTERM (exit 0), no traceback;
- no secret (client secret, refresh token, password, every access token the emulator
  issued) appears in any file the connector wrote: sink, state database, stdout, stderr.

`bench/chaos.py` (`make chaos`) runs the full version and `tests/runners/test_chaos.py` a
reduced one; both call `run_chaos`:

    report = await run_chaos(ChaosPlan(workdir=tmp, events=5_000, duration_s=8, kills=3))
    assert report.ok, report.summary()

Fault choice is seeded, but which request a fault hits depends on timing, so two runs with
the same seed publish the same events and kill at the same moments, without being
identical request for request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import random
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
import yaml

from sfstream.errors import ConfigError
from sfstream.state import SqliteStateStore
from sfstream.streams import ChannelKind, parse_channel, stream_id
from sfstream_emulator import ChaosSettings, Emulator, EmulatorSettings

__all__ = [
    "DEFAULT_CHANNELS",
    "ChaosPlan",
    "ChaosReport",
    "Leak",
    "SinkAudit",
    "StreamAudit",
    "count_log_events",
    "default_faults",
    "run_chaos",
    "scan_for_secrets",
]

DEFAULT_CHANNELS: Final = (
    "/data/AccountChangeEvent",
    "/data/ContactChangeEvent",
    "/event/Order_Placed__e",
    "/event/Low_Ink__e",
)
"""Two change event channels (views of the one CDC stream) and two platform events."""

_SECRETS_FILE: Final = "secrets.env"
_CONFIG_FILE: Final = "sfstream.yaml"
_SINK_FILE: Final = "records.jsonl"
_STATE_FILE: Final = "state.db"
_LOG_DIR: Final = "logs"
_MARKER: Final = ".sfstream-chaos"
_POLL_S: Final = 0.25

# Required fields of the objects and events the publisher raises, and a field to update.
_RECORD_VALUES: Final[Mapping[str, Callable[[int], dict[str, Any]]]] = {
    "Account": lambda n: {"Name": f"Chaos Account {n}", "Industry": "Energy"},
    "Contact": lambda n: {"LastName": f"Chaos {n}", "FirstName": "Contact"},
    "Opportunity": lambda n: {
        "Name": f"Chaos Deal {n}",
        "StageName": "Prospecting",
        "CloseDate": "2026-12-31",
        "Amount": n % 250_000,
    },
    "Employee__c": lambda n: {"Name": f"Chaos Employee {n}", "Level__c": n % 10},
}
_UPDATE_FIELD: Final = {
    "Account": "Description",
    "Contact": "Title",
    "Opportunity": "NextStep",
    "Employee__c": "First_Name__c",
}
_EVENT_VALUES: Final[Mapping[str, Callable[[int], dict[str, Any]]]] = {
    "Order_Placed__e": lambda n: {"Order_Number__c": f"O-{n}", "Amount__c": n % 1000 + 0.5},
    "Low_Ink__e": lambda n: {"Printer_Model__c": f"XZ-{n % 100}", "Ink_Percentage__c": 0.05},
}
_BATCH_CHOICES: Final = {
    "max_records": (7, 50, 500, 2000),
    "max_wait_ms": (5, 50, 200),
    "max_inflight": (1, 2, 4),
}


def default_faults(seed: int) -> ChaosSettings:
    """The fault mix of a chaos run: the emulator's chaos defaults with 3 s stalls.

    Rates are per CometD request: 1% dropped, 1% cut, 2% HTTP 503, 0.5% stalled, 0.5%
    `403::Unknown client`, and before 0.2% of requests every access token is revoked,
    before another 0.2% every client is forgotten.
    """
    return ChaosSettings(seed=seed, stall_s=3.0)


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    """What a chaos run does.

    Attributes:
        workdir: where the configuration, sink, state and logs go: an empty or new
            directory, or one an earlier chaos run used (it is emptied first).
        events: how many events to publish, spread over `channels`.
        duration_s: how long publishing takes (a steady rate); the kills fall in it.
        kills: how many times the connector is SIGKILLed (and restarted).
        seed: drives the events, the channel mix, the kill moments, the batch settings of
            each connector run and the emulator's faults.
        channels: `/data/<Entity>ChangeEvent` and `/event/<Name>__e` channels to publish on
            and stream.
        faults: the emulator's chaos settings (`default_faults(seed)` when None); all
            rates at zero turn chaos off.
        poll_timeout_s: the emulator's long-poll timeout (Salesforce's is 110 s; short so
            that idle connects and stalls cost seconds, not minutes).
        catch_up_timeout_s: how long the last run may take to deliver every event after
            publishing ended.
        shutdown_timeout_s: the connector's `runtime.shutdown_timeout_s`, and how long the
            final SIGTERM may take.
        python: the interpreter that runs `python -m sfstream.cli run`.
    """

    workdir: Path
    events: int = 100_000
    duration_s: float = 180.0
    kills: int = 20
    seed: int = 1
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    faults: ChaosSettings | None = None
    poll_timeout_s: float = 2.0
    catch_up_timeout_s: float = 600.0
    shutdown_timeout_s: float = 20.0
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.events < 1 or self.kills < 0 or self.duration_s <= 0:
            raise ValueError("events >= 1, kills >= 0 and duration_s > 0 are required")
        if not self.channels:
            raise ValueError("at least one channel is required")
        for channel in self.channels:
            _publisher_for(channel)  # raises ValueError for a channel it cannot feed

    def fault_settings(self) -> ChaosSettings:
        return self.faults if self.faults is not None else default_faults(self.seed)

    def describe(self) -> dict[str, Any]:
        """The plan as JSON-ready values."""
        return {
            "events": self.events,
            "duration_s": self.duration_s,
            "kills": self.kills,
            "seed": self.seed,
            "channels": list(self.channels),
            "faults": self.fault_settings().model_dump(),
            "poll_timeout_s": self.poll_timeout_s,
            "catch_up_timeout_s": self.catch_up_timeout_s,
            "shutdown_timeout_s": self.shutdown_timeout_s,
        }


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


# -- the report -----------------------------------------------------------------------------


@dataclass(slots=True)
class ChaosReport:
    """Everything a chaos run measured; `failures` says what went wrong, if anything."""

    plan: dict[str, Any]
    streams: list[StreamAudit] = field(default_factory=list)
    kills: int = 0
    runs: int = 0
    unexpected_exits: list[int] = field(default_factory=list)
    """Exit codes of connector runs that ended without being killed or stopped."""
    final_exit_code: int | None = None
    caught_up: bool = False
    corrupt_lines: int = 0
    gaps: int = 0
    truncations: int = 0
    unknown_streams: int = 0
    kills_while_streaming: int = 0
    """Kills of a run that had logged `run_started` (the others hit one still starting)."""
    kill_checks: int = 0
    checkpoint_violations: list[str] = field(default_factory=list)
    """Moments where a checkpoint was ahead of the sink (after a kill), or a final
    checkpoint differed from the last published replayId."""
    faults_injected: dict[str, int] = field(default_factory=dict)
    emulator_stats: dict[str, int] = field(default_factory=dict)
    access_tokens_issued: int = 0
    log_events: dict[str, int] = field(default_factory=dict)
    tracebacks: int = 0
    secrets_checked: int = 0
    files_scanned: int = 0
    bytes_scanned: int = 0
    leaks: list[Leak] = field(default_factory=list)
    wall_s: float = 0.0
    publish_s: float = 0.0
    catch_up_s: float = 0.0
    sink_bytes: int = 0
    workdir: str = ""

    @property
    def published(self) -> int:
        return sum(s.published for s in self.streams)

    @property
    def delivered(self) -> int:
        return sum(s.delivered for s in self.streams)

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.streams)

    @property
    def duplicates(self) -> int:
        return sum(s.duplicates for s in self.streams)

    @property
    def out_of_order(self) -> int:
        return sum(s.out_of_order for s in self.streams)

    @property
    def reconnects(self) -> int:
        """Recoveries the connector logged (`reconnecting`), over every run."""
        return self.log_events.get("reconnecting", 0)

    def failures(self) -> list[str]:
        """Why the run failed; empty when it passed."""
        found: list[str] = []
        if self.published == 0:
            found.append("nothing was published")
        if self.lost:
            found.append(f"{self.lost} event(s) lost")
        if self.duplicates:
            found.append(f"{self.duplicates} duplicate record(s)")
        if self.out_of_order:
            found.append(f"{self.out_of_order} record(s) out of replayId order")
        unexpected = sum(s.unexpected for s in self.streams)
        if unexpected:
            found.append(f"{unexpected} replayId(s) in the sink that were never published")
        if self.corrupt_lines:
            found.append(f"{self.corrupt_lines} unreadable sink line(s)")
        if self.gaps:
            found.append(f"{self.gaps} GAP message(s)")
        if self.truncations:
            found.append("complete sink lines disappeared between two reads")
        if self.unknown_streams:
            found.append(f"{self.unknown_streams} record(s) of streams nobody configured")
        found.extend(self.checkpoint_violations)
        if self.unexpected_exits:
            found.append(f"connector runs exited on their own: {self.unexpected_exits}")
        if not self.caught_up:
            found.append("the last run did not catch up in time")
        if self.final_exit_code != 0:
            found.append(f"the final SIGTERM stop exited {self.final_exit_code}, not 0")
        if self.tracebacks:
            found.append(f"{self.tracebacks} traceback(s) in the connector's output")
        found.extend(
            f"secret {leak.secret} found in {leak.file} at byte {leak.offset}"
            for leak in self.leaks
        )
        return found

    @property
    def ok(self) -> bool:
        return not self.failures()

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready values (no secret values in it)."""
        return {
            "ok": self.ok,
            "failures": self.failures(),
            "plan": self.plan,
            "events": {
                "published": self.published,
                "delivered": self.delivered,
                "lost": self.lost,
                "duplicates": self.duplicates,
                "out_of_order": self.out_of_order,
                "gaps": self.gaps,
                "corrupt_lines": self.corrupt_lines,
            },
            "streams": [s.as_json() for s in self.streams],
            "connector": {
                "kills": self.kills,
                "kills_while_streaming": self.kills_while_streaming,
                "runs": self.runs,
                "unexpected_exits": self.unexpected_exits,
                "final_exit_code": self.final_exit_code,
                "caught_up": self.caught_up,
                "reconnects": self.reconnects,
                "tracebacks": self.tracebacks,
                "log_events": dict(sorted(self.log_events.items())),
            },
            "checkpoints": {
                "kill_checks": self.kill_checks,
                "violations": self.checkpoint_violations,
            },
            "faults_injected": dict(sorted(self.faults_injected.items())),
            "emulator": dict(sorted(self.emulator_stats.items())),
            "secrets": {
                "values_checked": self.secrets_checked,
                "access_tokens_issued": self.access_tokens_issued,
                "files_scanned": self.files_scanned,
                "bytes_scanned": self.bytes_scanned,
                "leaks": [asdict(leak) for leak in self.leaks],
            },
            "timing": {
                "wall_s": round(self.wall_s, 1),
                "publish_s": round(self.publish_s, 1),
                "catch_up_s": round(self.catch_up_s, 1),
            },
            "sink_bytes": self.sink_bytes,
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
            },
        }

    def summary(self) -> str:
        """A human-readable summary, one fact per line."""
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults_injected.items())) or "none"
        events = self.log_events
        lines = [
            f"published {self.published:,} events on {len(self.streams)} streams, "
            f"delivered {self.delivered:,}; lost {self.lost}, duplicates {self.duplicates}, "
            f"out of order {self.out_of_order}, gaps {self.gaps}",
            f"connector: {self.kills} SIGKILLs ({self.kills_while_streaming} of a running run, the "
            f"others of one still starting), {self.runs} runs, final stop exit "
            f"{self.final_exit_code}, unexpected exits {self.unexpected_exits or 'none'}",
            f"faults injected: {faults}",
            f"connector recoveries: {self.reconnects} reconnects, "
            f"{events.get('reauthenticating', 0)} re-authentications, "
            f"{events.get('handshake', 0)} handshakes, "
            f"{events.get('sink.file.torn_tail_repaired', 0)} torn tails repaired, "
            f"{events.get('sink_ahead_of_checkpoint', 0)} sink-ahead recoveries",
            f"checkpoints: {self.kill_checks} checks after kills, "
            f"{len(self.checkpoint_violations)} violations",
            f"secrets: {self.secrets_checked} values ({self.access_tokens_issued} access "
            f"tokens) looked for in {self.files_scanned} files, {self.bytes_scanned:,} bytes; "
            f"{len(self.leaks)} found",
            f"wall time {self.wall_s:.1f} s (publishing {self.publish_s:.1f} s, "
            f"catch-up {self.catch_up_s:.1f} s)",
        ]
        lines.extend(
            f"  {s.stream}: published {s.published:,}, delivered {s.delivered:,}, "
            f"lost {s.lost}, duplicates {s.duplicates}, checkpoint {s.checkpoint} "
            f"(last {s.last_published})"
            for s in self.streams
        )
        failures = self.failures()
        lines.append("RESULT: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
        return "\n".join(lines)


# -- the run --------------------------------------------------------------------------------


def _publisher_for(channel: str) -> tuple[str, str]:
    """("record", entity) or ("event", name) for a channel the publisher can feed."""
    try:
        info = parse_channel(channel)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    if info.kind is ChannelKind.CHANGE_EVENTS and info.entity in _RECORD_VALUES:
        return "record", info.entity
    if info.kind is ChannelKind.PLATFORM_EVENT and info.entity in _EVENT_VALUES:
        return "event", info.entity
    known = [f"/data/{e}ChangeEvent" for e in _RECORD_VALUES if not e.endswith("__c")]
    known += [f"/event/{e}" for e in _EVENT_VALUES]
    raise ValueError(f"the chaos publisher cannot raise events on {channel}; use {known}")


class _Publisher:
    """Publishes `plan.events` events at a steady rate over `plan.duration_s`."""

    def __init__(self, emu: Emulator, plan: ChaosPlan, rng: random.Random) -> None:
        self._emu = emu
        self._plan = plan
        self._rng = rng
        self._targets = [_publisher_for(c) for c in plan.channels]
        self._records: dict[str, list[str]] = {}
        self.published = 0
        self.seconds = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        plan = self._plan
        while self.published < plan.events:
            elapsed = loop.time() - start
            due = min(plan.events, int(plan.events * elapsed / plan.duration_s) + 1)
            while self.published < due:
                self._one(self.published)
                self.published += 1
            await asyncio.sleep(0.01)
        self.seconds = loop.time() - start

    def _one(self, number: int) -> None:
        kind, name = self._rng.choice(self._targets)
        if kind == "event":
            self._emu.publish_event(name, _EVENT_VALUES[name](number))
            return
        existing = self._records.setdefault(name, [])
        if existing and self._rng.random() < 0.3:
            record_id = self._rng.choice(existing)
            self._emu.update_record(name, record_id, {_UPDATE_FIELD[name]: f"update {number}"})
            return
        existing.append(self._emu.create_record(name, _RECORD_VALUES[name](number)))


class _Connector:
    """`sfstream run` subprocesses, one at a time, with their output in numbered files."""

    def __init__(self, plan: ChaosPlan, rng: random.Random) -> None:
        self._plan = plan
        self._rng = rng
        self.process: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.logs: list[Path] = []
        self.stderr = plan.workdir / _LOG_DIR / "none"
        """The current run's stderr."""
        self._document: dict[str, Any] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("SFSTREAM_")}
        env["PYTHONUNBUFFERED"] = "1"
        self._env = env

    def configure(self, document: dict[str, Any]) -> None:
        self._document = document

    async def start(self) -> None:
        """Start a run with freshly drawn batch settings."""
        assert self.process is None or self.process.returncode is not None
        workdir = self._plan.workdir
        document = dict(self._document)
        document["batch"] = {k: self._rng.choice(v) for k, v in _BATCH_CHOICES.items()}
        (workdir / _CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False))
        logs = workdir / _LOG_DIR
        stdout_path = logs / f"run-{self.runs:02d}.stdout"
        stderr_path = logs / f"run-{self.runs:02d}.stderr"
        self.logs += [stdout_path, stderr_path]
        self.stderr = stderr_path
        self.runs += 1
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            self.process = await asyncio.create_subprocess_exec(
                self._plan.python,
                "-m",
                "sfstream.cli",
                "run",
                "--config",
                str(workdir / _CONFIG_FILE),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env=self._env,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def exited(self, timeout_s: float) -> int | None:
        """The exit code if the run ends within `timeout_s`, else None."""
        process = self.process
        if process is None:
            return None
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                return await process.wait()
        except TimeoutError:
            return None

    async def kill(self) -> None:
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            await process.wait()

    async def terminate(self, timeout_s: float) -> int | None:
        """SIGTERM and wait; returns the exit code (None: it had to be killed)."""
        process = self.process
        if process is None:
            return None
        if process.returncode is not None:
            return process.returncode
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        code = await self.exited(timeout_s)
        if code is None:
            await self.kill()
        return code


async def _checkpoints(path: Path) -> dict[str, int]:
    store = SqliteStateStore(path)
    try:
        return {k: v.replay_id for k, v in (await store.load(None)).items()}
    finally:
        await store.close()


def _published_ids(emu: Emulator, channel: str, limit: int) -> list[int]:
    return [int(m["data"]["event"]["replayId"]) for m in emu.published(channel, limit=limit)]


def _prepare(workdir: Path) -> None:
    """Create `workdir`, or empty it if an earlier chaos run left it (and nothing else)."""
    workdir.mkdir(parents=True, exist_ok=True)
    marker = workdir / _MARKER
    children = list(workdir.iterdir())
    if children and not marker.exists():
        raise ValueError(
            f"{workdir} holds files of something else than a chaos run; pick an empty directory"
        )
    for child in children:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    marker.touch()
    (workdir / _LOG_DIR).mkdir()


def _output_files(workdir: Path) -> list[Path]:
    """Every file the connector may have written (all but its inputs)."""
    inputs = {workdir / _SECRETS_FILE, workdir / _CONFIG_FILE}
    return sorted(p for p in workdir.rglob("*") if p.is_file() and p not in inputs)


async def run_chaos(plan: ChaosPlan, say: Callable[[str], None] | None = None) -> ChaosReport:
    """Run the plan and audit the result (see the module docstring).

    Args:
        plan: what to do.
        say: receives progress lines (the bench prints them); silent when None.
    """
    return await _ChaosRun(plan, say).run()


class _ChaosRun:
    def __init__(self, plan: ChaosPlan, say: Callable[[str], None] | None) -> None:
        self.plan = plan
        self._say = say
        self.started = time.monotonic()
        # Secrets of this run only, so that finding one in the output is no coincidence.
        self.settings = EmulatorSettings(
            poll_timeout_s=plan.poll_timeout_s,
            seed=plan.seed,
            client_secret=f"chaos-client-secret-{secrets.token_hex(16)}",
            refresh_token=f"chaos-refresh-token-{secrets.token_hex(24)}",
            password=f"chaos-password-{secrets.token_hex(12)}",
        )
        self.channels = {channel: stream_id(channel) for channel in plan.channels}
        self.audit = SinkAudit(plan.workdir / _SINK_FILE, self.channels)
        self.report = ChaosReport(plan=plan.describe(), workdir=str(plan.workdir))
        # Separate seeded generators, so that changing one aspect keeps the others.
        self.connector = _Connector(plan, random.Random(plan.seed + 1))  # noqa: S311
        kills = random.Random(plan.seed + 2)  # noqa: S311 - a schedule, not a secret
        self.kill_at = sorted(kills.uniform(0.0, plan.duration_s) for _ in range(plan.kills))
        self.secret_values: dict[str, str] = {}

    def note(self, message: str) -> None:
        if self._say is not None:
            self._say(f"[{time.monotonic() - self.started:6.1f}s] {message}")

    async def run(self) -> ChaosReport:
        plan = self.plan
        _prepare(plan.workdir)
        async with Emulator(self.settings) as emu:
            self.connector.configure(_connector_config(plan, emu, self.channels))
            emu.faults.start_chaos(plan.fault_settings())
            publisher = _Publisher(emu, plan, random.Random(plan.seed + 3))  # noqa: S311
            self.note(
                f"emulator at {emu.url}; publishing {plan.events:,} events over "
                f"{plan.duration_s:.0f} s on {len(self.channels)} channels; {plan.kills} kills"
            )
            publishing = asyncio.create_task(publisher.run(), name="chaos-publisher")
            try:
                await self._drive(emu, publisher, publishing)
            finally:
                publishing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publishing
                await self.connector.kill()
                emu.faults.clear()
            self._collect(emu)
        await self._finish()
        return self.report

    async def _drive(
        self, emu: Emulator, publisher: _Publisher, publishing: asyncio.Task[None]
    ) -> None:
        """Kill and restart while publishing; then let the last run catch up and stop it."""
        plan, report, connector = self.plan, self.report, self.connector
        begin = asyncio.get_running_loop().time()
        await connector.start()
        for number, moment in enumerate(self.kill_at, 1):
            await self._run_until(begin + moment)
            await connector.kill()
            report.kills += 1
            if b'"run_started"' in connector.stderr.read_bytes():
                report.kills_while_streaming += 1
            self.audit.ingest()
            await self._check_after_kill(number)
            self.note(
                f"kill {number}/{plan.kills}: {self.audit.lines:,} sink lines, "
                f"{publisher.published:,} published"
            )
            await connector.start()
        while not publishing.done():
            await self._run_until(None, publishing)
        await publishing
        report.publish_s = publisher.seconds
        last: dict[str, int | None] = {}
        for channel, stream in self.channels.items():
            ids = _published_ids(emu, channel, plan.events + 1)
            last[stream] = ids[-1] if ids else None
        self.note(f"published {publisher.published:,}; waiting for the last run to catch up")
        catch_up_from = time.monotonic()
        report.caught_up = await self._catch_up(last)
        report.catch_up_s = time.monotonic() - catch_up_from
        report.final_exit_code = await connector.terminate(plan.shutdown_timeout_s + 10)
        self.note(f"final run stopped with SIGTERM: exit {report.final_exit_code}")

    async def _run_until(self, until: float | None, also: asyncio.Task[None] | None = None) -> None:
        """Let the connector run until the loop time `until` (or until `also` ends).

        A run that exits on its own is recorded as unexpected and started again.
        """
        loop = asyncio.get_running_loop()
        while True:
            remaining = None if until is None else until - loop.time()
            if remaining is not None and remaining <= 0:
                return
            if also is not None and also.done():
                return
            wait_s = _POLL_S if remaining is None else min(_POLL_S, remaining)
            code = await self.connector.exited(wait_s)
            if code is not None:
                self.report.unexpected_exits.append(code)
                self.note(
                    f"connector run {self.connector.runs} exited on its own with {code}; restarting"
                )
                await self.connector.start()

    async def _check_after_kill(self, number: int) -> None:
        """After a kill: no checkpoint may be ahead of what the sink holds."""
        state = self.plan.workdir / _STATE_FILE
        if not state.exists():
            return
        self.report.kill_checks += 1
        streams = self.audit.streams
        for stream, replay_id in (await _checkpoints(state)).items():
            held = streams[stream].max_replay_id if stream in streams else None
            if held is None or replay_id > held:
                self.report.checkpoint_violations.append(
                    f"after kill {number}: {stream} checkpoint {replay_id} is ahead of the "
                    f"sink's {held}"
                )

    async def _catch_up(self, last: Mapping[str, int | None]) -> bool:
        """Wait until the sink holds the last published event of every stream."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.plan.catch_up_timeout_s
        shown = loop.time()
        while True:
            self.audit.ingest()
            if self.audit.reached(last):
                return True
            if loop.time() >= deadline:
                return False
            await self._run_until(loop.time() + 0.5)
            if loop.time() - shown >= 10:
                shown = loop.time()
                self.note(f"catching up: {self.audit.lines:,} sink lines")

    def _collect(self, emu: Emulator) -> None:
        """What only the emulator knows: the published ids, the faults, the tokens."""
        report = self.report
        report.runs = self.connector.runs
        self.audit.ingest()
        for channel, stream in self.channels.items():
            self.audit.streams[stream].compare(_published_ids(emu, channel, self.plan.events + 1))
        report.faults_injected = dict(emu.faults.injected)
        report.emulator_stats = dict(emu.cometd.stats)
        report.access_tokens_issued = len(emu.tokens.access_tokens)
        settings = self.settings
        self.secret_values = {
            "client_secret": settings.client_secret,
            "refresh_token": settings.refresh_token,
            "password": settings.password,
        }
        for index, token in enumerate(emu.tokens.access_tokens):
            self.secret_values[f"access_token[{index}]"] = token

    async def _finish(self) -> None:
        """The final checkpoints, the logs and the secret scan."""
        report, audit, workdir = self.report, self.audit, self.plan.workdir
        final = await _checkpoints(workdir / _STATE_FILE)
        for stream in audit.streams.values():
            stream.checkpoint = final.get(stream.stream)
            if stream.checkpoint != stream.last_published:
                report.checkpoint_violations.append(
                    f"{stream.stream}: final checkpoint {stream.checkpoint}, "
                    f"last published {stream.last_published}"
                )
        report.streams = list(audit.streams.values())
        report.corrupt_lines = audit.corrupt_lines
        report.gaps = audit.gaps
        report.truncations = audit.truncations
        report.unknown_streams = audit.unknown_streams
        report.sink_bytes = audit.offset
        events, report.tracebacks = count_log_events(self.connector.logs)
        report.log_events = dict(events)
        files = _output_files(workdir)
        report.secrets_checked = len(self.secret_values)
        report.files_scanned = len(files)
        report.leaks, report.bytes_scanned = scan_for_secrets(
            files, self.secret_values, root=workdir
        )
        report.wall_s = time.monotonic() - self.started


def _connector_config(
    plan: ChaosPlan, emu: Emulator, channels: Mapping[str, str]
) -> dict[str, Any]:
    """Write the secrets file; return the connector's configuration (batch drawn per run)."""
    creds = emu.credentials
    secrets_file = plan.workdir / _SECRETS_FILE
    secrets_file.write_text(
        f"SF_CLIENT_SECRET={creds['client_secret']}\nSF_REFRESH_TOKEN={creds['refresh_token']}\n"
    )
    secrets_file.chmod(0o600)
    return {
        "salesforce": {
            "login_url": emu.url,
            "client_id": creds["client_id"],
            "client_secret": "${secret:SF_CLIENT_SECRET}",
            "refresh_token": "${secret:SF_REFRESH_TOKEN}",
        },
        "secrets": {"backend": "file", "file": _SECRETS_FILE},
        "streams": [{"channel": c, "initial_replay": "earliest"} for c in channels],
        "state": {"path": _STATE_FILE},
        "sink": {"type": "file", "path": _SINK_FILE},
        "runtime": {"summary_interval_s": 10, "shutdown_timeout_s": plan.shutdown_timeout_s},
        "logging": {"format": "json", "level": "info"},
    }
