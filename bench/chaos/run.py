"""The run itself: the emulator, the publisher, and the connector runs it kills and restarts.

`run_chaos` starts the emulator with the plan's faults, publishes at a steady rate, runs
`sfstream run` subprocesses that it SIGKILLs at the plan's moments, lets the last run catch
up, stops it with SIGTERM, and hands the result to the audit (`bench.chaos.audit`, or for a
sink other than the file, the read-back of `bench.chaos.destinations`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from bench.chaos.audit import (
    SinkAudit,
    StreamAudit,
    count_log_events,
    load_checkpoints,
    output_files,
    scan_for_secrets,
)
from bench.chaos.destinations import DUMP_FILE, Holding
from bench.chaos.plan import (
    BATCH_CHOICES,
    CONFIG_FILE,
    EVENT_VALUES,
    LOG_DIR,
    MARKER,
    RECORD_VALUES,
    SECRETS_FILE,
    SINK_FILE,
    STATE_FILE,
    UPDATE_FIELD,
    ChaosPlan,
    publisher_for,
)
from bench.chaos.report import ChaosReport
from sfstream.streams import stream_id
from sfstream_emulator import Emulator, EmulatorSettings

__all__ = ["run_chaos"]

_POLL_S: Final = 0.25
_DESTINATION_POLL_S: Final = 1.0
"""How often the catch-up asks a destination other than the file what it holds."""


class _Publisher:
    """Publishes `plan.events` events at a steady rate over `plan.duration_s`."""

    def __init__(self, emu: Emulator, plan: ChaosPlan, rng: random.Random) -> None:
        self._emu = emu
        self._plan = plan
        self._rng = rng
        self._targets = [publisher_for(c) for c in plan.channels]
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
            self._emu.publish_event(name, EVENT_VALUES[name](number))
            return
        existing = self._records.setdefault(name, [])
        if existing and self._rng.random() < 0.3:
            record_id = self._rng.choice(existing)
            self._emu.update_record(name, record_id, {UPDATE_FIELD[name]: f"update {number}"})
            return
        existing.append(self._emu.create_record(name, RECORD_VALUES[name](number)))


class _Connector:
    """`sfstream run` subprocesses, one at a time, with their output in numbered files."""

    def __init__(self, plan: ChaosPlan, rng: random.Random) -> None:
        self._plan = plan
        self._rng = rng
        self.process: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.logs: list[Path] = []
        self.stderr = plan.workdir / LOG_DIR / "none"
        """The current run's stderr."""
        self._document: dict[str, Any] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("SFSTREAM_")}
        env["PYTHONUNBUFFERED"] = "1"
        if plan.destination is not None:
            env = plan.destination.connector_environment(env)
        self._env = env

    def configure(self, document: dict[str, Any]) -> None:
        self._document = document

    async def start(self) -> None:
        """Start a run with freshly drawn batch settings."""
        assert self.process is None or self.process.returncode is not None
        workdir = self._plan.workdir
        document = dict(self._document)
        document["batch"] = {k: self._rng.choice(v) for k, v in BATCH_CHOICES.items()}
        (workdir / CONFIG_FILE).write_text(yaml.safe_dump(document, sort_keys=False))
        logs = workdir / LOG_DIR
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
                str(workdir / CONFIG_FILE),
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


def _published_ids(emu: Emulator, channel: str, limit: int) -> list[int]:
    return [int(m["data"]["event"]["replayId"]) for m in emu.published(channel, limit=limit)]


def _prepare(workdir: Path) -> None:
    """Create `workdir`, or empty it if an earlier chaos run left it (and nothing else)."""
    workdir.mkdir(parents=True, exist_ok=True)
    marker = workdir / MARKER
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
    (workdir / LOG_DIR).mkdir()


async def run_chaos(plan: ChaosPlan, say: Callable[[str], None] | None = None) -> ChaosReport:
    """Run the plan and audit the result (see the `bench.chaos` package docstring).

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
        self.audit = SinkAudit(plan.workdir / SINK_FILE, self.channels)
        """The file sink's incremental audit (unused for other sinks)."""
        self.destination = plan.destination
        sink = (
            {"type": "file", "path": SINK_FILE}
            if self.destination is None
            else self.destination.describe()
        )
        self.report = ChaosReport(plan=plan.describe(), workdir=str(plan.workdir), sink=sink)
        self.published: dict[str, list[int]] = {}
        """The replayIds published per stream (filled once publishing ended)."""
        # Separate seeded generators, so that changing one aspect keeps the others.
        self.connector = _Connector(plan, random.Random(plan.seed + 1))
        kills = random.Random(plan.seed + 2)  # a schedule, not a secret
        self.kill_at = sorted(kills.uniform(0.0, plan.duration_s) for _ in range(plan.kills))
        self.secret_values: dict[str, str] = {}

    def note(self, message: str) -> None:
        if self._say is not None:
            self._say(f"[{time.monotonic() - self.started:6.1f}s] {message}")

    async def run(self) -> ChaosReport:
        plan = self.plan
        _prepare(plan.workdir)
        if self.destination is not None:
            await self.destination.prepare(self.channels)
        try:
            await self._run()
        finally:
            if self.destination is not None:
                await self.destination.close()
        return self.report

    async def _run(self) -> None:
        plan = self.plan
        async with Emulator(self.settings) as emu:
            self.connector.configure(_connector_config(plan, emu, self.channels))
            emu.faults.start_chaos(plan.fault_settings())
            publisher = _Publisher(emu, plan, random.Random(plan.seed + 3))
            self.note(
                f"emulator at {emu.url}; publishing {plan.events:,} events over "
                f"{plan.duration_s:.0f} s on {len(self.channels)} channels; {plan.kills} kills; "
                f"{plan.sink} sink"
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
            holding = await self._holding()
            await self._check_after_kill(number, holding)
            self.note(
                f"kill {number}/{plan.kills}: {self._progress(holding)}, "
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

    async def _holding(self) -> Holding:
        """What the sink holds now: the file read further, or the destination asked."""
        if self.destination is not None:
            return await self.destination.held()
        self.audit.ingest()
        streams = self.audit.streams.values()
        held = {s.stream: s.max_replay_id for s in streams if s.max_replay_id is not None}
        return Holding(held, sum(s.records for s in streams))

    def _progress(self, holding: Holding) -> str:
        if self.destination is None:
            return f"{self.audit.lines:,} sink lines"
        return f"{holding.records:,} records in {self.destination.name}"

    async def _check_after_kill(self, number: int, holding: Holding) -> None:
        """After a kill: no checkpoint may be ahead of what the sink holds."""
        state = self.plan.workdir / STATE_FILE
        if not state.exists():
            return
        self.report.kill_checks += 1
        for stream, replay_id in (await load_checkpoints(state)).items():
            held = holding.max_replay_ids.get(stream)
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
        every_s = 0.5 if self.destination is None else _DESTINATION_POLL_S
        while True:
            if self.destination is None:
                self.audit.ingest()
                if self.audit.reached(last):
                    return True
            else:
                holding = await self.destination.held()
                if holding.reached(last):
                    return True
            if loop.time() >= deadline:
                return False
            await self._run_until(loop.time() + every_s)
            if loop.time() - shown >= 10:
                shown = loop.time()
                self.note(f"catching up: {self._progress(await self._holding())}")

    def _collect(self, emu: Emulator) -> None:
        """What only the emulator knows: the published ids, the faults, the tokens."""
        report = self.report
        report.runs = self.connector.runs
        for channel, stream in self.channels.items():
            self.published[stream] = _published_ids(emu, channel, self.plan.events + 1)
        if self.destination is None:
            self.audit.ingest()
            for stream, audit in self.audit.streams.items():
                audit.compare(self.published[stream])
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
        """The read-back of a destination, the final checkpoints, the logs and the secret scan."""
        report, workdir = self.report, self.plan.workdir
        streams = await self._audit_streams()
        final = await load_checkpoints(workdir / STATE_FILE)
        for stream in streams.values():
            stream.checkpoint = final.get(stream.stream)
            if stream.checkpoint != stream.last_published:
                report.checkpoint_violations.append(
                    f"{stream.stream}: final checkpoint {stream.checkpoint}, "
                    f"last published {stream.last_published}"
                )
        report.streams = list(streams.values())
        events, report.tracebacks = count_log_events(self.connector.logs)
        report.log_events = dict(events)
        files = output_files(workdir)
        report.secrets_checked = len(self.secret_values)
        report.files_scanned = len(files)
        report.leaks, report.bytes_scanned = scan_for_secrets(
            files, self.secret_values, root=workdir
        )
        report.wall_s = time.monotonic() - self.started

    async def _audit_streams(self) -> dict[str, StreamAudit]:
        """The per-stream audit: the file's, or a destination read back from the start."""
        report = self.report
        if self.destination is None:
            audit = self.audit
            report.corrupt_lines = audit.corrupt_lines
            report.gaps = audit.gaps
            report.truncations = audit.truncations
            report.unknown_streams = audit.unknown_streams
            report.sink_bytes = audit.offset
            return audit.streams
        self.note(f"reading {self.destination.name} back from the start")
        started = time.monotonic()
        back = await self.destination.read_back(self.plan.workdir / DUMP_FILE)
        report.read_back_s = time.monotonic() - started
        report.corrupt_lines = back.corrupt
        report.gaps = back.gaps
        report.unknown_streams = back.unknown_streams
        report.sink_bytes = back.bytes
        report.sink_messages = back.messages
        for stream, audit in back.streams.items():
            audit.compare(self.published[stream])
        self.note(f"read back {back.messages:,} messages in {report.read_back_s:.1f} s")
        return back.streams


def _connector_config(
    plan: ChaosPlan, emu: Emulator, channels: Mapping[str, str]
) -> dict[str, Any]:
    """Write the secrets file; return the connector's configuration (batch drawn per run)."""
    creds = emu.credentials
    secrets_file = plan.workdir / SECRETS_FILE
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
        "secrets": {"backend": "file", "file": SECRETS_FILE},
        "streams": [{"channel": c, "initial_replay": "earliest"} for c in channels],
        "state": {"path": STATE_FILE},
        "sink": (
            {"type": "file", "path": SINK_FILE}
            if plan.destination is None
            else plan.destination.sink_settings()
        ),
        "runtime": {"summary_interval_s": 10, "shutdown_timeout_s": plan.shutdown_timeout_s},
        "logging": {"format": "json", "level": "info"},
    }
