"""A FileSink in another process, for the crash and permission tests (not a test module).

Usage: `python sink_child.py MODE PATH`.

- `crash` writes batches (up to a bound), printing how many were acknowledged after each
  `write` returns; it never closes the sink, and waits on stdin to be killed.
- `denied` tries to write as an unprivileged user (dropping root first).
- `limited` writes under a file-size limit (a stand-in for a full disk: a partial write,
  then a refusal) a batch that fits, one that does not, and one that fits again.

`denied` and `limited` print the outcome as JSON on their last line of output.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.thread  # imported before dropping privileges: asyncio needs it
import json
import os
import resource
import signal
import sys

from sfstream.errors import SfStreamError
from sfstream.protocol import Record
from sfstream.sinks import FileSink

BATCH = 50
MAX_BATCHES = 2_000
STREAM = "sf.event.crash_test"
NOBODY = 65534
SIZE_LIMIT = 100_000

assert concurrent.futures.thread


def batch(index: int) -> list[Record]:
    """The `index`-th batch: replay ids `index * BATCH + 1` onwards, payloads of varied size."""
    first = index * BATCH + 1
    return [
        Record(STREAM, None, r, {"n": r, "pad": "p" * (r % 977)}, {}, "2024-05-01T00:00:00Z")
        for r in range(first, first + BATCH)
    ]


async def crash(path: str) -> None:
    sink = FileSink(path)
    await sink.open()
    for index in range(MAX_BATCHES):
        await sink.write(batch(index))
        print(index + 1, flush=True)
    print("done", flush=True)
    sys.stdin.read()  # blocks until killed; the sink is never closed


async def denied(path: str) -> None:
    try:
        async with FileSink(path) as sink:
            await sink.write(batch(0))
    except SfStreamError as exc:
        outcome = outcome_of(exc)
    else:
        outcome = {"error": None}
    print(json.dumps(outcome), flush=True)


def outcome_of(exc: SfStreamError) -> dict[str, object]:
    cause = exc.__cause__
    return {
        "error": type(exc).__name__,
        "message": str(exc),
        "cause": type(cause).__name__ if cause is not None else None,
    }


async def limited(path: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (SIZE_LIMIT, resource.RLIM_INFINITY))
    outcome: dict[str, object] = {"error": None}
    async with FileSink(path) as sink:
        await sink.write(batch(0))
        try:
            await sink.write([m for index in range(2, 12) for m in batch(index)])
        except SfStreamError as exc:
            outcome = outcome_of(exc)
        await sink.write(batch(1))
    print(json.dumps(outcome), flush=True)


def main() -> None:
    mode, path = sys.argv[1:]
    if mode == "denied" and os.geteuid() == 0:
        # Root ignores file permissions; a real permission check needs an ordinary user.
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    modes = {"crash": crash, "denied": denied, "limited": limited}
    asyncio.run(modes[mode](path))


if __name__ == "__main__":
    main()
