"""An independent reader for bench/latency.py: when each output line became visible.

Follows a JSON-lines file with inotify (`IN_MODIFY`, through ctypes; no polling) and, for
every complete line that appears, notes CLOCK_MONOTONIC ns and the line's replay id
(`replay_id` of sfstream RECORD lines, `data.event.replayId` of raw CometD messages). A line
is visible once the writer's `write` returned, which is before its `fsync` returns: this is a
lower bound of the durable time, measured outside the writer's process.

    python bench/consumers/tail_reader.py FILE OUT

Runs until SIGTERM (then reads what is left), and writes `[[ns, replay_id], ...]` to OUT as JSON.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time
from pathlib import Path

import orjson

IN_MODIFY = 0x00000002
IN_NONBLOCK = 0o4000


def replay_id_of(line: bytes) -> int | None:
    message = orjson.loads(line)
    if message.get("type") == "RECORD":
        return int(message["replay_id"])
    data = message.get("data")
    if isinstance(data, dict) and isinstance(data.get("event"), dict):
        return int(data["event"]["replayId"])
    return None


def follow(path: Path, out: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    inotify = libc.inotify_init1(0)
    if inotify < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    while not path.exists():
        time.sleep(0.001)
    if libc.inotify_add_watch(inotify, str(path).encode(), IN_MODIFY) < 0:
        raise OSError(ctypes.get_errno(), "inotify_add_watch")
    seen: list[tuple[int, int]] = []
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    pending = b""
    with path.open("rb") as handle:
        while True:
            chunk = handle.read()
            now = time.monotonic_ns()
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    replay_id = replay_id_of(line) if line else None
                    if replay_id is not None:
                        seen.append((now, replay_id))
                continue
            if stopping:
                break
            # Until the file is modified again (or 0.2 s, to notice SIGTERM).
            ready, _, _ = select.select([inotify], [], [], 0.2)
            if ready:
                os.read(inotify, 4096)
    out.write_bytes(orjson.dumps(seen))


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: tail_reader.py FILE OUT")
    follow(Path(sys.argv[1]), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
