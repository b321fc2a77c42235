"""The live status of a run: one line per stream under the logs, on a terminal only.

The end-to-end tests run `sfstream run` with its stderr on a pseudo-terminal and replay what
it wrote through a small terminal model (`Screen`), to see what a person would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import logging
import os
import re
import signal
import struct
import sys
import termios
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from sfstream.engine.pipeline import StreamStats
from sfstream.observability import StatusDisplay, configure_logging, status_wanted
from sfstream_emulator import Emulator, EmulatorSettings
from tests.conftest import MakeConfig

ACCOUNTS = "sf.event.account_changes"
ORDERS = "sf.event.order_placed"
STREAMS = [
    {"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"},
    {"channel": "/event/Order_Placed__e", "initial_replay": "earliest"},
]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d")
STATUS = re.compile(r"^(?P<stream>\S+)\s+(?P<events>[\d,]+) events\s+[\d.]+ rec/s\s+checkpoint ")


class Screen:
    """The text a terminal shows after some output: enough of VT100 for logs and the status
    (printable text, CR, LF, cursor up, erase below, erase line, colours ignored)."""

    _TOKEN = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\r|\n|[^\x1b\r\n]+|\x1b")

    def __init__(self) -> None:
        self.rows: list[list[str]] = [[]]
        self.row = 0
        self.col = 0
        self.unknown: list[str] = []

    def feed(self, text: str) -> None:
        for match in self._TOKEN.finditer(text):
            token = match.group(0)
            if token == "\r":
                self.col = 0
            elif token == "\n":  # as a terminal's output processing does (ONLCR)
                self.row += 1
                self.col = 0
                if self.row == len(self.rows):
                    self.rows.append([])
            elif match.group(2) is not None:
                self._control(match.group(1), match.group(2))
            elif token == "\x1b":
                self.unknown.append(token)
            else:
                line = self.rows[self.row]
                line.extend(" " * (self.col - len(line)))
                line[self.col : self.col + len(token)] = token
                self.col += len(token)

    def _control(self, params: str, command: str) -> None:
        count = int(params) if params.isdigit() else 1
        if command == "m":
            return
        if command == "A":
            self.row = max(0, self.row - count)
        elif command == "J" and params in ("", "0"):
            del self.rows[self.row][self.col :]
            del self.rows[self.row + 1 :]
        elif command == "K" and params in ("", "0"):
            del self.rows[self.row][self.col :]
        elif command == "K" and params == "2":
            self.rows[self.row] = []
        else:
            self.unknown.append(f"ESC[{params}{command}")

    @property
    def lines(self) -> list[str]:
        return ["".join(row).rstrip() for row in self.rows if "".join(row).strip()]

    def statuses(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for line in self.lines:
            match = STATUS.match(line)
            if match:
                found.setdefault(match["stream"], []).append(match["events"])
        return found


class Terminal:
    """A pseudo-terminal: give `slave` to a process as its stderr; `output` is what it wrote."""

    def __init__(self, columns: int = 200, rows: int = 40) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return  # EIO: every writer has closed the slave side
            if not chunk:
                return
            with self._lock:
                self._output += chunk

    @property
    def output(self) -> str:
        with self._lock:
            return self._output.decode(errors="replace")

    def screen(self) -> Screen:
        screen = Screen()
        screen.feed(self.output)
        return screen

    def drain(self) -> str:
        """Once the process has exited: everything it wrote."""
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1
        self._reader.join(timeout=10)
        return self.output

    def close(self) -> None:
        self.drain()
        with contextlib.suppress(OSError):
            os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    yield term
    term.close()


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=3)


async def start_run(config_path: Path, stderr: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfstream.cli",
        "run",
        "--config",
        str(config_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr,
        env={**os.environ, "TERM": "xterm-256color"},
    )


async def stop(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        return await process.wait()


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 45.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)


# -- sfstream run on a terminal, and not -----------------------------------------------------


async def test_a_terminal_shows_a_live_status_line_per_stream_and_clears_it_at_the_end(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path, terminal: Terminal
) -> None:
    emu = sfstream_emulator
    await make_config(emu, STREAMS)
    for number in range(3):
        emu.create_record("Account", {"Name": f"A{number}"})
    for number in range(2):
        emu.publish_event("Order_Placed__e", {"Order_Number__c": f"O-{number}"})
    process = await start_run(tmp_path / "sfstream.yaml", terminal.slave)

    async def shown(accounts: int, orders: int) -> Screen:
        """The screen once the block says so, whole: it ends the output, after the logs."""
        last = emu.published("/data/AccountChangeEvent")[-1]["data"]["event"]["replayId"]
        found: list[Screen] = []

        def check() -> bool:
            screen = terminal.screen()
            block = screen.lines[-2:]
            if (
                screen.statuses() == {ACCOUNTS: [str(accounts)], ORDERS: [str(orders)]}
                and all(STATUS.match(line) for line in block)
                and any(f"checkpoint {last} " in line for line in block if ACCOUNTS in line)
            ):
                found.append(screen)
            return bool(found) or process.returncode is not None

        await wait_for(check)
        assert found, terminal.output
        return found[0]

    try:
        screen = await shown(3, 2)
        # Updated in place: new events change the same line, no second one appears.
        for number in range(3, 5):
            emu.create_record("Account", {"Name": f"A{number}"})
        screen = await shown(5, 2)
        # The log lines above the block are intact.
        assert all(TIMESTAMP.match(line) for line in screen.lines[:-2]), screen.lines
        assert "stream_started" in "\n".join(screen.lines)
        (accounts,) = [line for line in screen.lines[-2:] if line.startswith(ACCOUNTS)]
        assert " lag " in accounts  # now minus the time of the stream's last event
    finally:
        code = await stop(process)
    terminal.drain()
    screen = terminal.screen()
    assert code == 0, terminal.output
    assert screen.unknown == []
    # Gone at the end: what is left is log lines, whole, one per row.
    assert screen.statuses() == {}
    assert "rec/s" not in "\n".join(screen.lines)
    assert all(TIMESTAMP.match(line) for line in screen.lines), screen.lines
    events = " ".join(screen.lines)
    for event in ("stopping", "stream_summary", "run_stopped"):
        assert event in events
    assert emu.credentials["client_secret"] not in terminal.output
    assert emu.credentials["refresh_token"] not in terminal.output


@pytest.mark.parametrize("log_format", ["auto", "console", "json"])
async def test_without_a_terminal_nothing_of_it_appears(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path, log_format: str
) -> None:
    emu = sfstream_emulator
    await make_config(emu, STREAMS, logging={"format": log_format})
    for number in range(3):
        emu.create_record("Account", {"Name": f"A{number}"})
    log = tmp_path / "run.log"
    with log.open("wb") as stderr:
        process = await start_run(tmp_path / "sfstream.yaml", stderr.fileno())
    try:
        await wait_for(lambda: "stream_started" in log.read_text())
        await asyncio.sleep(1.0)  # several redraws, were there a status
    finally:
        code = await stop(process)
    text = log.read_text()
    assert code == 0, text
    assert "\x1b" not in text
    assert " rec/s" not in text
    if log_format != "console":
        assert all(orjson.loads(line) for line in text.splitlines())


async def test_json_logs_on_a_terminal_stay_json_lines_without_a_status(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path, terminal: Terminal
) -> None:
    emu = sfstream_emulator
    await make_config(emu, STREAMS, logging={"format": "json"})
    emu.create_record("Account", {"Name": "A0"})
    process = await start_run(tmp_path / "sfstream.yaml", terminal.slave)
    try:
        await wait_for(lambda: "stream_started" in terminal.output)
        await asyncio.sleep(1.0)
    finally:
        code = await stop(process)
    terminal.drain()
    assert code == 0, terminal.output
    assert "\x1b" not in terminal.output
    lines = terminal.output.replace("\r\n", "\n").splitlines()
    assert [orjson.loads(line)["event"] for line in lines][-1] == "run_stopped"


# -- the display itself ------------------------------------------------------------------------


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class WithEventTime:
    """Counters that also say when the last event happened (epoch seconds)."""

    received: int = 0
    emitted: int = 0
    checkpoint: int | None = None
    last_event_time: float | None = None


def display(
    streams: dict[str, Any], out: io.StringIO | None = None, columns: int = 120, rows: int = 30
) -> tuple[StatusDisplay, Clock]:
    clock = Clock()
    shown = StatusDisplay(
        streams,
        out or io.StringIO(),
        clock=clock,
        wall_clock=lambda: clock.now + 5000.0,
        size=lambda: os.terminal_size((columns, rows)),
    )
    return shown, clock


def test_a_line_says_events_rate_checkpoint_and_how_long_ago() -> None:
    stats = StreamStats()
    shown, clock = display({ACCOUNTS: stats, ORDERS: StreamStats(received=2, emitted=2)})
    first = shown.render()
    assert first[0].split() == (f"{ACCOUNTS} 0 events 0.0 rec/s checkpoint - no event yet".split())
    assert first[1].startswith(f"{ORDERS}     ")  # stream ids are aligned
    stats.received = stats.emitted = 1200
    stats.checkpoint = 17244804
    clock.now += 2.0
    assert shown.render()[0].split() == (
        f"{ACCOUNTS} 1,200 events 600.0 rec/s checkpoint 17244804 last event 0.0s ago".split()
    )
    clock.now += 3.5
    assert shown.render()[0].endswith("last event 3.5s ago")
    # The rate covers the last few seconds only: nothing new for a while is 0.
    clock.now += 90.0
    line = shown.render()[0]
    assert " 0.0 rec/s" in line
    assert line.endswith("last event 1m33s ago")


def test_lag_is_now_minus_the_last_events_time_when_the_counters_have_it() -> None:
    counters = WithEventTime()
    shown, clock = display({ACCOUNTS: counters})
    assert shown.render()[0].endswith("no event yet")
    counters.received = 1
    counters.last_event_time = clock.now + 5000.0 - 2.25
    assert shown.render()[0].endswith("lag 2.2s")


def test_lines_fit_the_terminal_and_many_streams_are_summed_up() -> None:
    streams = {f"sf.event.stream_{number:02d}": StreamStats() for number in range(30)}
    shown, _ = display(streams, columns=40, rows=12)
    lines = shown.render()
    assert len(lines) == 6
    assert lines[-1] == "... and 25 more streams"
    assert all(len(line) <= 39 for line in lines)


def test_status_is_wanted_on_a_terminal_with_console_logs_only(
    terminal: Terminal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERM", "xterm")
    with os.fdopen(os.dup(terminal.slave), "w") as tty:
        assert status_wanted("auto", tty)
        assert status_wanted("console", tty)
        assert not status_wanted("json", tty)
        monkeypatch.setenv("TERM", "dumb")
        assert not status_wanted("auto", tty)
    assert not status_wanted("console", io.StringIO())


async def test_log_lines_go_above_the_block_whole_and_the_block_goes_at_the_end() -> None:
    out = io.StringIO()
    configure_logging(json=False, stream=out)
    stats = StreamStats()
    shown, clock = display({ACCOUNTS: stats}, out)
    log = structlog.get_logger("test")
    markers = ["ev-before", "ev-first", "stdlib-warning", "ev-second", "ev-after"]

    def logged(screen: Screen) -> list[str]:
        """The marker of each line on screen, which must be whole (with its timestamp)."""
        found = []
        for line in screen.lines:
            if STATUS.match(line):
                continue
            assert TIMESTAMP.match(line), line
            (marker,) = [m for m in markers if m in line]
            found.append(marker)
        return found

    log.info("ev-before")
    async with shown:
        log.info("ev-first", detail="x")
        stats.received = stats.emitted = 7
        clock.now += 1.0
        shown.redraw()
        logging.getLogger("aiohttp.client").warning("stdlib-warning")
        log.info("ev-second")
        screen = Screen()
        screen.feed(out.getvalue())
        assert logged(screen) == markers[:4]
        assert screen.statuses() == {ACCOUNTS: ["7"]}
        assert STATUS.match(screen.lines[-1])
    log.info("ev-after")
    screen = Screen()
    screen.feed(out.getvalue())
    assert screen.unknown == []
    assert screen.statuses() == {}
    assert logged(screen) == markers
    # Logging writes straight to the stream again.
    assert getattr(structlog.get_config()["logger_factory"], "_file", None) is out
    assert [getattr(h, "stream", None) for h in logging.getLogger().handlers] == [out]
