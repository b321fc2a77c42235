"""Microseconds per event of each step of sfstream's event path, without I/O.

A companion to bench/throughput.py that splits its CPU per event into steps, on the same
events: one CometD response of N change events of about 1 KB, taken from an in-process
emulator (`emu.generate`, then `emu.published`). Each step runs on a fresh copy of the
response (as in a real run, nothing is warm in the caches); the figure is the median of
`--repeat` runs of the process CPU time:

- `raw_loads`, `raw_dumps`: the raw floor's work: `orjson.loads` of the response, then
  `orjson.dumps` of each message + a newline;
- `decode`: `sfstream.bayeux.decode`: the envelope and each event's `data` decoded once,
  typed, the payload kept as the bytes it arrived as;
- `map`: the stream's mapper (`sfstream.engine.records.mapper_for`): the change event
  header decoded alone, event -> `Record` with the payload still as bytes;
- `encode`: `sfstream.protocol.encode_lines`: the output lines, assembled around the payload
  bytes (what `FileSink.write` does before it writes);
- `old_decode`: `orjson.loads` + `sfstream.bayeux.parse` (every payload decoded into Python
  objects), for reference: the path before payloads passed through as bytes.

    .venv/bin/python bench/event_path.py [--events 2000] [--repeat 25]

Results go to bench/results/event_path.json (not into the docs: the figures explain
throughput.json).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson

from benchlib import finish_machine, machine, write_result
from sfstream.bayeux import Event, decode, parse
from sfstream.engine.records import mapper_for
from sfstream.protocol import encode_lines
from sfstream.runners.connector import tune_garbage_collector
from sfstream.streams import ChannelKind, StreamSpec
from sfstream_emulator import Emulator, EmulatorSettings

CHANNEL = "/data/AccountChangeEvent"
RUN_ID = "0" * 32


async def response_body(events: int) -> bytes:
    """A /meta/connect response as the emulator sends it: N events, then the connect reply."""
    async with Emulator(EmulatorSettings(seed=1)) as emu:
        emu.generate("Account", events, 1024)
        messages = emu.published(CHANNEL, after=-2, limit=events)
    reply = {"channel": "/meta/connect", "successful": True, "clientId": "x", "id": "9"}
    return orjson.dumps([*messages, reply])


def median_us(step: Callable[[bytes], Any], body: bytes, repeat: int, events: int) -> float:
    """The median CPU time of `step` on a fresh copy of `body`, in microseconds per event."""
    times = []
    for _ in range(repeat):
        fresh = bytes(bytearray(body))
        started = time.process_time()
        step(fresh)
        times.append(time.process_time() - started)
    times.sort()
    return times[len(times) // 2] / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    started_machine = machine()
    body = asyncio.run(response_body(args.events))
    spec = StreamSpec(
        id="sf.event.account_changes",
        channel=CHANNEL,
        kind=ChannelKind.CHANGE_EVENTS,
        entity="Account",
    )
    mapper = mapper_for(spec, RUN_ID)
    now = "2026-01-01T00:00:00.000Z"
    n = len([e for e in decode(body)[1] if isinstance(e, Event)])
    # As in `sfstream run` (sfstream.runners.connector.tune_garbage_collector).
    tune_garbage_collector()

    def mapped(raw: bytes) -> list[Any]:
        return [r for e in decode(raw)[1] if isinstance(e, Event) for r in mapper(e, now)]

    steps: dict[str, float] = {}
    steps["raw_loads"] = median_us(orjson.loads, body, args.repeat, n)
    steps["raw_dumps"] = (
        median_us(
            lambda raw: b"".join([orjson.dumps(m) + b"\n" for m in orjson.loads(raw)]),
            body,
            args.repeat,
            n,
        )
        - steps["raw_loads"]
    )
    steps["decode"] = median_us(decode, body, args.repeat, n)
    steps["map"] = median_us(mapped, body, args.repeat, n) - steps["decode"]
    steps["encode"] = median_us(lambda raw: encode_lines(mapped(raw)), body, args.repeat, n) - (
        steps["decode"] + steps["map"]
    )
    steps["old_decode"] = median_us(lambda raw: parse(orjson.loads(raw)), body, args.repeat, n)
    # The output must not depend on the path the payload took.
    lines = encode_lines(mapped(body)).splitlines()
    assert [orjson.loads(line)["data"] for line in lines] == [
        m["data"]["payload"] for m in orjson.loads(body) if m["channel"] == CHANNEL
    ]
    sfstream_path = steps["decode"] + steps["map"] + steps["encode"]
    raw_path = steps["raw_loads"] + steps["raw_dumps"]
    result = {
        "benchmark": "event_path",
        "events": n,
        "bytes_per_event": len(body) / n,
        "repeat": args.repeat,
        "us_per_event": steps,
        "sfstream_steps_us": sfstream_path,
        "raw_steps_us": raw_path,
        "machine": finish_machine(started_machine),
        "command": f"bench/event_path.py --events {args.events} --repeat {args.repeat}",
    }
    write_result("event_path", result)
    for name, value in steps.items():
        print(f"{name:>30}: {value:6.2f} µs/event")
    print(
        f"sfstream decode+map+encode {sfstream_path:.2f} µs/event; "
        f"raw loads+dumps {raw_path:.2f}; ratio {sfstream_path / raw_path:.2f}"
    )


if __name__ == "__main__":
    main()
