"""Fuzzing checkpoints: random histories of publishing, runs, crashes, bad and expired positions.

Each example drives the real connector (in process) against the emulator, with the real
SQLite state store and file sink, through a random sequence of:

- `publish`: events on one of three channels;
- `run`: the connector runs until it has caught up, then stops (as on SIGTERM), with batch
  settings drawn per run;
- `crash`: the files are put in a state a SIGKILL leaves: the last write cut at any byte
  (a torn line included) and each checkpoint back to before that write, or the write whole
  and its checkpoint not yet committed;
- `future`: a stream's checkpoint set to a replayId Salesforce never issued;
- `expire`: the emulator's clock moves 73 h, so every event published so far expires.

The replayIds the pipeline sees therefore repeat (a cut batch is delivered again), go back
(after a `GAP`, the stream restarts from the oldest retained event) and jump. After every
run an oracle that knows what was published and retained checks the new lines of each
stream exactly: a `GAP` when (and only when) the position was refused, then every retained
event after the position, in order, nothing twice; the checkpoint is the last record
written (never beyond what the sink holds), the SQLite file passes `integrity_check`, and
every event that was retained at some run is in the sink (unless a crash cut it and it
expired before the next run).
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sfstream.engine.config import load_config
from sfstream.runners.connector import Connector
from sfstream.state import SqliteStateStore
from sfstream.streams import stream_id
from sfstream_emulator import Emulator, EmulatorSettings
from tests.fuzz.budget import fuzz_settings

CHANNELS = ("/event/Order_Placed__e", "/event/Low_Ink__e", "/data/AccountChangeEvent")
STREAMS = tuple(stream_id(c) for c in CHANNELS)
FUTURE = 9_000_000_000_000
"""A replayId no stream has issued (the emulator's start in the millions)."""
RUN_TIMEOUT_S = 20.0

operations = st.one_of(
    st.tuples(st.just("publish"), st.integers(0, 2), st.integers(1, 25)),
    st.tuples(st.just("run"), st.sampled_from([1, 3, 50]), st.sampled_from([0, 5, 50])),
    st.tuples(st.just("crash"), st.floats(0.0, 1.0), st.booleans()),
    st.tuples(st.just("future"), st.integers(0, 2), st.just(0)),
    st.tuples(st.just("expire"), st.just(0), st.just(0)),
)


@dataclass
class Line:
    start: int
    end: int
    message: dict[str, Any]


def read_lines(path: Path) -> list[Line]:
    """The complete lines of the sink (a torn tail is what the sink cuts at its next open)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines: list[Line] = []
    start = 0
    while True:
        end = data.find(b"\n", start)
        if end < 0:
            return lines
        lines.append(Line(start, end + 1, orjson.loads(data[start:end])))
        start = end + 1


def sink_mark(lines: list[Line], stream: str) -> int | None:
    """The stream's latest RECORD/STATE replayId after its latest GAP (the resume point)."""
    for line in reversed(lines):
        message = line.message
        if message.get("stream") != stream:
            continue
        if message["type"] == "GAP":
            return None
        if message["type"] in ("RECORD", "STATE"):
            return int(message["replay_id"])
    return None


@dataclass
class Scenario:
    emu: Emulator
    workdir: Path
    deliverable: dict[str, set[int]] = field(default_factory=lambda: {s: set() for s in STREAMS})
    runs: int = 0

    @property
    def sink(self) -> Path:
        return self.workdir / "records.jsonl"

    def retained(self, channel: str) -> list[int]:
        return [int(m["data"]["event"]["replayId"]) for m in self.emu.published(channel)]

    def publish(self, channel_index: int, count: int) -> None:
        channel = CHANNELS[channel_index]
        for number in range(count):
            if channel.startswith("/data/"):
                self.emu.create_record("Account", {"Name": f"A{number}"})
            elif channel.endswith("Order_Placed__e"):
                self.emu.publish_event("Order_Placed__e", {"Order_Number__c": f"O{number}"})
            else:
                self.emu.publish_event("Low_Ink__e", {"Printer_Model__c": f"P{number}"})

    async def checkpoints(self) -> dict[str, int]:
        store = SqliteStateStore(self.workdir / "state.db")
        try:
            return {k: v.replay_id for k, v in (await store.load(None)).items()}
        finally:
            await store.close()

    async def set_checkpoint(self, stream: str, replay_id: int | None) -> None:
        store = SqliteStateStore(self.workdir / "state.db")
        try:
            if replay_id is None:
                await store.reset(stream)
            else:
                await store.commit({stream: replay_id})
        finally:
            await store.close()

    def write_config(self, max_records: int, max_wait_ms: int) -> Path:
        creds = self.emu.credentials
        secrets = self.workdir / "secrets.env"
        secrets.write_text(
            f"SF_CLIENT_SECRET={creds['client_secret']}\n"
            f"SF_REFRESH_TOKEN={creds['refresh_token']}\n"
        )
        secrets.chmod(0o600)
        document = {
            "salesforce": {
                "login_url": self.emu.url,
                "client_id": creds["client_id"],
                "client_secret": "${secret:SF_CLIENT_SECRET}",
                "refresh_token": "${secret:SF_REFRESH_TOKEN}",
            },
            "secrets": {"backend": "file", "file": "secrets.env"},
            "streams": [
                {"channel": c, "initial_replay": "earliest", "on_invalid_replay": "earliest"}
                for c in CHANNELS
            ],
            "state": {"path": "state.db"},
            "sink": {"type": "file", "path": "records.jsonl"},
            "batch": {"max_records": max_records, "max_wait_ms": max_wait_ms},
            "runtime": {"summary_interval_s": 3600, "shutdown_timeout_s": 10},
        }
        path = self.workdir / "sfstream.yaml"
        path.write_text(yaml.safe_dump(document))
        return path

    # -- a run and its oracle ---------------------------------------------------------------

    async def run(self, max_records: int, max_wait_ms: int) -> None:
        self.runs += 1
        before = read_lines(self.sink)
        offset = before[-1].end if before else 0
        checkpoints = await self.checkpoints()
        expected: dict[str, tuple[bool, list[int]]] = {}
        for channel, stream in zip(CHANNELS, STREAMS, strict=True):
            retained = self.retained(channel)
            self.deliverable[stream].update(retained)
            mark = sink_mark(before, stream)
            stored = checkpoints.get(stream)
            position = mark if mark is not None and (stored is None or mark > stored) else stored
            refused = position is not None and position not in retained
            if position is None or refused:
                expected[stream] = (refused, retained)
            else:
                expected[stream] = (False, [r for r in retained if r > position])

        config = await load_config(self.write_config(max_records, max_wait_ms), environ={})
        stop = asyncio.Event()
        async with Connector(config, run_id=f"fuzz-{self.runs}") as connector:
            task = asyncio.create_task(connector.run(stop))
            async with asyncio.timeout(RUN_TIMEOUT_S):
                while not task.done() and not self.caught_up(offset, expected):
                    await asyncio.sleep(0.02)
            stop.set()
            result = await task
        assert result.ok, result.error
        await self.check_run(offset, checkpoints, before, expected)

    def new_lines(self, offset: int, stream: str) -> list[dict[str, Any]]:
        return [
            line.message
            for line in read_lines(self.sink)
            if line.start >= offset
            and line.message.get("stream") == stream
            and line.message["type"] in ("RECORD", "GAP")
        ]

    def caught_up(self, offset: int, expected: dict[str, tuple[bool, list[int]]]) -> bool:
        for stream, (gap, ids) in expected.items():
            lines = self.new_lines(offset, stream)
            if gap and not any(m["type"] == "GAP" for m in lines):
                return False
            if ids and not any(m.get("replay_id") == ids[-1] for m in lines):
                return False
        return True

    async def check_run(
        self,
        offset: int,
        checkpoints_before: dict[str, int],
        before: list[Line],
        expected: dict[str, tuple[bool, list[int]]],
    ) -> None:
        checkpoints = await self.checkpoints()
        for stream, (gap, ids) in expected.items():
            lines = self.new_lines(offset, stream)
            gaps = [m for m in lines if m["type"] == "GAP"]
            records = [m["replay_id"] for m in lines if m["type"] == "RECORD"]
            if gap:
                assert len(gaps) == 1, f"{stream}: expected one GAP, got {lines}"
                assert lines[0]["type"] == "GAP", f"{stream}: records before the GAP"
            else:
                assert not gaps, f"{stream}: unexpected GAP {gaps}"
            assert records == ids, f"{stream}: wrote {records}, expected {ids}"
            mark = sink_mark(before, stream)
            stored = checkpoints_before.get(stream)
            if records:
                want = records[-1]
            elif mark is not None and (stored is None or mark > stored):
                want = mark  # the sink was ahead: its position is committed at start
            else:
                want = stored
            assert checkpoints.get(stream) == want, (
                f"{stream}: checkpoint {checkpoints.get(stream)}, expected {want}"
            )
        self.check_files()

    def check_files(self) -> None:
        data = self.sink.read_bytes() if self.sink.exists() else b""
        assert not data or data.endswith(b"\n"), "a torn line after a clean stop"
        with sqlite3.connect(f"file:{self.workdir / 'state.db'}?mode=ro", uri=True) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            for stream, replay_id in db.execute(
                "SELECT stream, replay_id FROM sfstream_checkpoints"
            ):
                assert stream in STREAMS
                assert isinstance(replay_id, int)
                assert replay_id >= 0
        db.close()
        lines = read_lines(self.sink)
        for stream in STREAMS:
            # Between GAPs a stream's replayIds only grow, and the checkpoint is never past
            # the last one the sink holds.
            last: int | None = None
            for line in lines:
                message = line.message
                if message.get("stream") != stream:
                    continue
                if message["type"] == "GAP":
                    last = None
                elif message["type"] == "RECORD":
                    replay_id = int(message["replay_id"])
                    assert last is None or replay_id > last, f"{stream}: {replay_id} after {last}"
                    last = replay_id

    # -- crash states -----------------------------------------------------------------------

    async def crash(self, where: float, during_write: bool) -> None:
        """Leave the files as a SIGKILL during (or right after) the last write would."""
        lines = read_lines(self.sink)
        if not lines:
            return
        # The last write starts after the last STATE group that other lines follow.
        start = 0
        for index, line in enumerate(lines[:-1]):
            if line.message["type"] == "STATE" and lines[index + 1].message["type"] != "STATE":
                start = line.end
        size = self.sink.stat().st_size
        cut = start + round((size - start) * where) if during_write else size
        with self.sink.open("r+b") as file:
            file.truncate(cut)
        for line in lines:
            if line.end > cut and line.message["type"] == "RECORD":
                # Never acknowledged: due again only if still retained at the next run.
                self.deliverable[line.message["stream"]].discard(int(line.message["replay_id"]))
        kept = [line for line in lines if line.end <= start]
        for stream in STREAMS:
            previous = [
                int(line.message["replay_id"])
                for line in kept
                if line.message["type"] == "STATE" and line.message["stream"] == stream
            ]
            await self.set_checkpoint(stream, previous[-1] if previous else None)

    async def future(self, stream_index: int) -> None:
        await self.set_checkpoint(STREAMS[stream_index], FUTURE)

    def final_check(self) -> None:
        held: dict[str, set[int]] = {s: set() for s in STREAMS}
        for line in read_lines(self.sink):
            if line.message["type"] == "RECORD":
                held[line.message["stream"]].add(int(line.message["replay_id"]))
        for stream in STREAMS:
            missing = self.deliverable[stream] - held[stream]
            assert not missing, f"{stream}: retained events never written: {sorted(missing)}"


async def play(history: list[tuple[str, Any, Any]]) -> None:
    settings = EmulatorSettings(poll_timeout_s=0.3, seed=11)
    with tempfile.TemporaryDirectory() as scratch:
        async with Emulator(settings) as emu:
            scenario = Scenario(emu, Path(scratch))
            for kind, first, second in [*history, ("run", 50, 5)]:
                if kind == "publish":
                    scenario.publish(first, second)
                elif kind == "run":
                    await scenario.run(first, second)
                elif kind == "crash":
                    await scenario.crash(first, second)
                elif kind == "future":
                    await scenario.future(first)
                else:
                    emu.advance(73 * 3600)
            scenario.final_check()


@fuzz_settings(15)
@given(history=st.lists(operations, min_size=1, max_size=10))
def test_checkpoints_and_resumes_stay_exact_through_any_history(
    history: list[tuple[str, Any, Any]],
) -> None:
    asyncio.run(play(history))


def test_a_crash_mid_write_then_a_refused_position_then_expiry() -> None:
    """One history with every operation, so the CI budget always covers each of them."""
    asyncio.run(
        play(
            [
                ("publish", 0, 20),
                ("publish", 2, 10),
                ("run", 3, 0),
                ("publish", 1, 7),
                ("run", 1, 5),
                ("crash", 0.5, True),
                ("run", 50, 50),
                ("crash", 1.0, False),
                ("future", 1, 0),
                ("run", 3, 5),
                ("publish", 0, 5),
                ("expire", 0, 0),
                ("publish", 0, 3),
                ("run", 50, 0),
            ]
        )
    )
