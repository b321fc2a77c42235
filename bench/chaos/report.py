"""The report of a chaos run: what it measured, and `failures()`, why it failed if it did."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.chaos.audit import Leak, StreamAudit

__all__ = ["ChaosReport"]


@dataclass(slots=True)
class ChaosReport:
    """Everything a chaos run measured; `failures` says what went wrong, if anything."""

    plan: dict[str, Any]
    sink: dict[str, Any] = field(default_factory=lambda: {"type": "file"})
    """The sink's type and where it wrote (a topic prefix, table, bucket...)."""
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
    sink_messages: int = 0
    """Messages read back from a destination other than the file (all types)."""
    read_back_s: float = 0.0
    """How long reading a destination other than the file back took."""
    workdir: str = ""

    @property
    def sink_type(self) -> str:
        return str(self.sink.get("type", "file"))

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
            what = "line(s)" if self.sink_type == "file" else "message(s) or foreign object(s)"
            found.append(f"{self.corrupt_lines} unreadable sink {what}")
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
            "sink": self.sink,
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
                **({"read_back_s": round(self.read_back_s, 1)} if self.sink_type != "file" else {}),
            },
            "sink_bytes": self.sink_bytes,
            **({"sink_messages": self.sink_messages} if self.sink_type != "file" else {}),
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
        where = ", ".join(f"{k} {v}" for k, v in self.sink.items() if k != "type")
        kind = self.sink_type
        if kind == "file":
            sink_recoveries = f"{events.get('sink.file.torn_tail_repaired', 0)} torn tails repaired"
        else:
            own = sorted((k, v) for k, v in events.items() if k.startswith(f"sink.{kind}."))
            sink_recoveries = ", ".join(f"{v} {k}" for k, v in own) or f"no sink.{kind}.* event"
        lines = [
            f"sink: {kind}" + (f" ({where})" if where else ""),
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
            f"{sink_recoveries}, "
            f"{events.get('sink_ahead_of_checkpoint', 0)} sink-ahead recoveries",
            f"checkpoints: {self.kill_checks} checks after kills, "
            f"{len(self.checkpoint_violations)} violations",
            f"secrets: {self.secrets_checked} values ({self.access_tokens_issued} access "
            f"tokens) looked for in {self.files_scanned} files, {self.bytes_scanned:,} bytes; "
            f"{len(self.leaks)} found",
            f"wall time {self.wall_s:.1f} s (publishing {self.publish_s:.1f} s, "
            f"catch-up {self.catch_up_s:.1f} s"
            + (f", read-back {self.read_back_s:.1f} s)" if kind != "file" else ")"),
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
