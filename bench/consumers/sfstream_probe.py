"""`sfstream` with one probe: when each file-sink write returned (bench/latency.py).

Runs the `sfstream` command unchanged (`sfstream_probe.py PROBE_FILE run --config X` is
`sfstream run --config X`), after wrapping `FileSink.write` so that, each time a write
returns (its batch is appended and fsynced: durable), one line goes to PROBE_FILE:

    {"t": <CLOCK_MONOTONIC ns right after write returned>, "ids": [<replay ids written>]}

The timestamp is taken before the probe line is written, and the probe line itself is a
buffered write of a few hundred bytes per batch, flushed at exit: the connector's code is not
changed, and the cost it adds per batch is a few microseconds.

Experiments, to estimate what a proposed change would save (never the reported sfstream
figures), chosen with `SFSTREAM_PROBE_EXPERIMENT` (comma-separated):

- `no-trust-env`: every aiohttp session ignores the environment (`trust_env=False`), as if
  the proxy were resolved once instead of per request (aiohttp then skips two thread-pool
  hops per request: the netrc lookup and the proxy lookup);
- `gc-freeze`: `gc.freeze()` once the run path is imported, so that collections no longer
  scan the ~100k objects of the imported modules;
- `gc-threshold`: `gc.set_threshold(50_000, 20, 100)`, fewer young collections while
  responses of thousands of events are decoded;
- `inline-io`: the file sink's write and the SQLite commit run on the event loop's thread
  instead of a worker thread (blocking the loop for an fsync), to measure what the two
  thread hops per batch cost;
- `time-steps`: no change; the main thread's CPU time (`time.thread_time`) spent in the
  client's `_decode` (orjson.loads + parse of each response) and in `parse` is summed and
  written to stderr at exit as a `probe_steps` JSON line;
- `switch-interval`: `sys.setswitchinterval(0.0005)` (CPython's default is 5 ms), so that a
  worker thread finishing an fsync waits less for the GIL held by the busy event loop.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from sfstream.sinks.file import FileSink


def install(probe_path: str) -> None:
    probe = open(probe_path, "ab")  # noqa: SIM115 - closed at exit
    atexit.register(probe.close)
    original = FileSink.write

    async def write(self: FileSink, messages: Sequence[Any]) -> None:
        await original(self, messages)
        now = time.monotonic_ns()
        ids = [m.replay_id for m in messages if getattr(m, "type", None) == "RECORD"]
        probe.write(orjson.dumps({"t": now, "ids": ids}) + b"\n")

    FileSink.write = write  # type: ignore[method-assign]


def no_trust_env() -> None:
    import aiohttp

    original = aiohttp.ClientSession.__init__

    def init(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        kwargs["trust_env"] = False
        original(self, *args, **kwargs)

    aiohttp.ClientSession.__init__ = init  # type: ignore[method-assign]


def inline_io() -> None:
    from collections.abc import Callable

    import sfstream.sinks.file
    from sfstream.sinks._io import translate_os_errors
    from sfstream.state.sqlite import SqliteStateStore

    async def run_inline(target: str, action: str, function: Callable[[], Any]) -> Any:
        with translate_os_errors(target, action):
            return function()

    async def run_locked(self: SqliteStateStore, work: Callable[[Any], Any]) -> Any:
        return self._locked(work)

    sfstream.sinks.file.run_blocking = run_inline  # type: ignore[assignment]
    SqliteStateStore._run = run_locked  # type: ignore[method-assign]


def time_steps() -> None:
    import sfstream.client.streaming as streaming

    totals = {"decode_s": 0.0, "parse_s": 0.0, "responses": 0, "events": 0}
    decode, parse = streaming._decode, streaming.parse

    def timed_parse(decoded: Any) -> Any:
        started = time.thread_time()
        try:
            result = parse(decoded)
        finally:
            totals["parse_s"] += time.thread_time() - started
        totals["events"] += len(result[1])
        return result

    def timed_decode(status: int, raw: bytes) -> Any:
        started = time.thread_time()
        try:
            return decode(status, raw)
        finally:
            totals["decode_s"] += time.thread_time() - started
            totals["responses"] += 1

    streaming._decode = timed_decode
    streaming.parse = timed_parse
    atexit.register(lambda: sys.stderr.write(orjson.dumps({"probe_steps": totals}).decode() + "\n"))


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: sfstream_probe.py PROBE_FILE run --config FILE")
    install(sys.argv[1])
    experiments = set(filter(None, os.environ.get("SFSTREAM_PROBE_EXPERIMENT", "").split(",")))
    if "no-trust-env" in experiments:
        no_trust_env()
    if "time-steps" in experiments:
        time_steps()
    if "switch-interval" in experiments:
        sys.setswitchinterval(0.0005)
    if "inline-io" in experiments:
        inline_io()
    if "gc-threshold" in experiments:
        gc.set_threshold(50_000, 20, 100)
    if "gc-freeze" in experiments:
        import sfstream.cli.run
        import sfstream.runners.service
        import sfstream.sinks
        import sfstream.state  # the run path, imported before the freeze

        gc.collect()
        gc.freeze()
    from sfstream.cli import main as sfstream

    sys.argv = ["sfstream", *sys.argv[2:]]
    sfstream()


if __name__ == "__main__":
    main()
