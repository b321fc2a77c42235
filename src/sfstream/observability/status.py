"""A live status line per stream, kept under the log lines of a run on a terminal.

Each stream gets one line, redrawn in place a few times a second:

    sf.event.account_changes      1,204 events     38.2 rec/s  checkpoint 17244804  lag 0.4s

events received so far, records per second over the last few seconds, the last committed
checkpoint, and how far behind the stream is: now minus the time Salesforce gives for the last
event received, when the stream's counters carry it (`last_event_time`, epoch seconds), or
else the time since the last event arrived (`last event 3.0s ago`).

It is drawn only on a terminal showing console log lines (`status_wanted`): JSON logs and
output that is not a terminal never carry it. While it is shown, log lines that structlog
and the standard library's handlers write to the same terminal go through it: it clears the
block, prints the line and draws the block again below, so that lines are never garbled.
When it stops, the block is cleared and log lines go straight to the terminal again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol, TextIO, cast

import structlog

INTERVAL_S: Final = 0.25
"""How often the block is redrawn."""
RATE_WINDOW_S: Final = 5.0
"""Records per second are counted over this many seconds."""
_FALLBACK_SIZE: Final = os.terminal_size((80, 24))
_ERASE_BELOW: Final = "\x1b[J"


class StreamCounters(Protocol):
    """What the status reads of a stream (`sfstream.engine.pipeline.StreamStats` has it)."""

    @property
    def received(self) -> int: ...

    @property
    def emitted(self) -> int: ...

    @property
    def checkpoint(self) -> int | None: ...


def status_wanted(log_format: str, stream: TextIO | None = None) -> bool:
    """Whether a live status belongs on `stream` (stderr by default): a terminal that can
    move its cursor (not `TERM=dumb`), showing console log lines (`logging.format` auto or
    console, not json)."""
    out = stream if stream is not None else sys.stderr
    if log_format == "json" or out is None:
        return False
    try:
        terminal = out.isatty()
    except (AttributeError, ValueError, OSError):
        return False
    return terminal and os.environ.get("TERM") != "dumb"


@dataclass(slots=True)
class _Seen:
    """What the status remembers of one stream between two samples."""

    received: int = 0
    changed_at: float | None = None
    """When `received` last grew (monotonic seconds); None before the first event."""
    emitted: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    """(monotonic seconds, records emitted) over the last `window_s`."""


class StatusDisplay:
    """The live status block of some streams on a terminal.

    Args:
        streams: stream id -> its counters, read at each redraw (updated in place by the
            pipeline).
        out: the terminal (the stream the logs are written to).
        interval_s: time between redraws.
        window_s: the window of the records-per-second rate.
        clock: monotonic seconds; wall_clock: seconds since the epoch (for lag).
        size: the terminal's size; by default asked of `out` each redraw.
    """

    def __init__(
        self,
        streams: Mapping[str, StreamCounters],
        out: TextIO,
        *,
        interval_s: float = INTERVAL_S,
        window_s: float = RATE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        size: Callable[[], os.terminal_size] | None = None,
    ) -> None:
        self.streams = streams
        self.out = out
        self.interval_s = interval_s
        self.window_s = window_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._size = size or self._terminal_size
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.RLock()
        self._drawn: list[str] = []
        """The lines on screen now, the cursor at the start of the line below them."""
        self._pending = ""
        """Written by a logger, not yet ended by a newline."""
        self._active = False
        self._broken = False
        self._task: asyncio.Task[None] | None = None
        self._routed = _Routing(self)

    # -- what it shows ------------------------------------------------------------------------

    def render(self) -> list[str]:
        """Sample the counters and return the block's lines, fitted to the terminal."""
        now = self._clock()
        columns, rows = self._size()
        columns = columns or _FALLBACK_SIZE.columns
        rows = rows or _FALLBACK_SIZE.lines
        width = max((len(stream) for stream in self.streams), default=0)
        lines = [
            self._line(stream, counters, now, width) for stream, counters in self.streams.items()
        ]
        room = max(1, min(rows // 2, rows - 2))
        if len(lines) > room:
            hidden = len(lines) - (room - 1)
            lines = [*lines[: room - 1], f"... and {hidden} more streams"]
        return [line[: max(1, columns - 1)] for line in lines]

    def _line(self, stream: str, counters: StreamCounters, now: float, width: int) -> str:
        seen = self._seen.get(stream)
        if seen is None:
            seen = self._seen[stream] = _Seen(received=counters.received)
            if counters.received:
                seen.changed_at = now
        received = counters.received
        if received != seen.received:
            seen.received = received
            seen.changed_at = now
        samples = seen.emitted
        samples.append((now, counters.emitted))
        while len(samples) > 2 and now - samples[1][0] >= self.window_s:
            samples.popleft()
        first_at, first = samples[0]
        rate = (counters.emitted - first) / (now - first_at) if now > first_at else 0.0
        checkpoint = "-" if counters.checkpoint is None else str(counters.checkpoint)
        return (
            f"{stream:<{width}}  {received:>9,} events  {rate:>7.1f} rec/s  "
            f"checkpoint {checkpoint}  {self._behind(counters, seen, now)}"
        )

    def _behind(self, counters: StreamCounters, seen: _Seen, now: float) -> str:
        event_time = getattr(counters, "last_event_time", None)
        if isinstance(event_time, int | float):
            return f"lag {_duration(max(0.0, self._wall_clock() - event_time))}"
        if seen.changed_at is None:
            return "no event yet"
        return f"last event {_duration(now - seen.changed_at)} ago"

    def _terminal_size(self) -> os.terminal_size:
        try:
            return os.get_terminal_size(self.out.fileno())
        except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
            return _FALLBACK_SIZE

    # -- drawing ------------------------------------------------------------------------------

    def redraw(self) -> None:
        """Draw the block again with fresh numbers."""
        lines = self.render()
        with self._lock:
            if not self._active or self._broken or lines == self._drawn:
                return
            self._write(self._erase() + _block(lines))
            self._drawn = lines

    def log_lines(self, text: str) -> None:
        """Print what a logger wrote above the block (complete lines only)."""
        with self._lock:
            if not self._active or self._broken:
                self.out.write(self._pending + text)
                self._pending = ""
                self.out.flush()
                return
            text = self._pending + text
            cut = text.rfind("\n") + 1
            self._pending = text[cut:]
            if cut:
                self._write(self._erase() + text[:cut] + _block(self._drawn))

    def flush_logs(self) -> None:
        with self._lock:
            self.out.flush()

    def _erase(self) -> str:
        """Move to the block's first line and clear it and everything below."""
        if not self._drawn:
            return ""
        return f"\r\x1b[{len(self._drawn)}A{_ERASE_BELOW}"

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            # The terminal is gone: stop drawing; log lines still go to it as before.
            self._broken = True
            self._drawn = []

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Draw the block, route the log lines written to `out` through it, keep it fresh."""
        if self._active:
            return
        with self._lock:
            self._active = True
        self._routed.install()
        self.redraw()
        self._task = asyncio.get_running_loop().create_task(self._refresh(), name="sfstream-status")

    async def stop(self) -> None:
        """Stop redrawing, clear the block and give the terminal back to the logs."""
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.wait({task})  # a cancellation of the caller still propagates
        finally:
            self._clear()

    def _clear(self) -> None:
        with self._lock:
            if not self._active:
                return
            self._active = False
            if not self._broken:
                self._write(self._erase() + self._pending)
            self._pending = ""
            self._drawn = []
        # A line logged from now on goes through to `out` (see `log_lines`) until then.
        self._routed.uninstall()

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.redraw()

    async def __aenter__(self) -> StatusDisplay:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _Routing:
    """Sends the log lines bound for the display's terminal through the display."""

    def __init__(self, display: StatusDisplay) -> None:
        self.display = display
        self.stream = cast(TextIO, _LogStream(display))
        self._factory: structlog.PrintLoggerFactory | None = None
        self._handlers: list[logging.StreamHandler[TextIO]] = []

    def install(self) -> None:
        out = self.display.out
        factory = structlog.get_config().get("logger_factory")
        # Only a factory that prints to this very terminal is rerouted (the PrintLoggerFactory
        # that `configure_logging` sets up); logs going elsewhere cannot garble the block.
        if isinstance(factory, structlog.PrintLoggerFactory) and (
            getattr(factory, "_file", None) is out
        ):
            self._factory = factory
            structlog.configure(logger_factory=structlog.PrintLoggerFactory(self.stream))
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is out:
                handler.setStream(self.stream)
                self._handlers.append(handler)

    def uninstall(self) -> None:
        out = self.display.out
        if self._factory is not None:
            current = structlog.get_config().get("logger_factory")
            if getattr(current, "_file", None) is self.stream:
                structlog.configure(logger_factory=self._factory)
            self._factory = None
        for handler in self._handlers:
            if handler.stream is self.stream:
                handler.setStream(out)
        self._handlers = []


class _LogStream(io.TextIOBase):
    """The file log lines are written to while the display is shown."""

    def __init__(self, display: StatusDisplay) -> None:
        self._display = display

    def write(self, text: str) -> int:
        self._display.log_lines(text)
        return len(text)

    def flush(self) -> None:
        self._display.flush_logs()

    def isatty(self) -> bool:
        return self._display.out.isatty()

    def fileno(self) -> int:
        return self._display.out.fileno()

    def writable(self) -> bool:
        return True


@contextlib.asynccontextmanager
async def live_status(
    streams: Mapping[str, StreamCounters], log_format: str, stream: TextIO | None = None
) -> AsyncIterator[StatusDisplay | None]:
    """Show the status of `streams` on `stream` (stderr) while the block runs, if it is
    wanted there (`status_wanted`); yields the display, or None when there is none."""
    out = stream if stream is not None else sys.stderr
    if not status_wanted(log_format, out):
        yield None
        return
    display = StatusDisplay(streams, out)
    display.start()
    try:
        yield display
    finally:
        await display.stop()


def _block(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def _duration(seconds: float) -> str:
    """`0.4s`, `12.0s`, `4m05s`, `2h03m`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
