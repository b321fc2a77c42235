"""Microseconds per event of each step of sfstream's event path, without I/O.

A companion to bench/throughput.py that splits its CPU per event into steps, on the same
events: one CometD response of N change events of about 1 KB, taken from an in-process
emulator (`emu.generate`, then `emu.published`). Each step runs on the whole response, best
of `--repeat` runs (the minimum: the least disturbed by other work on the machine):

- `decode`: `orjson.loads` of the response bytes (the raw floor does this too);
- `parse`: `sfstream.bayeux.parse` (typed `Reply` and `Event` values);
- `map`: the stream's mapper (`sfstream.engine.records.mapper_for`), event -> `Record`;
- `encode`: `sfstream.protocol.encode` of each record + a newline, joined (what
  `FileSink.write` does before it writes);
- `raw_dumps`: `orjson.dumps` of each decoded message + a newline, joined (the raw floor);

and alternatives that proposals rest on:

- `encode_append_newline`: `orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)`;
- `decode_with_live_heap`: `decode` again while 10,000 decoded events are alive (what the
  client queue holds at `max_pending_events`), with the garbage collector on, then off;
- `fused`: one loop from the decoded messages straight to output lines, the same bytes
  as parse + map + encode for change events with one record id (no `Event` or `Record`
  objects; the constant part of `meta` built once per stream): a sketch of how far the
  per-event Python work can shrink.

    .venv/bin/python bench/event_path.py [--events 2000] [--repeat 20]

Results go to bench/results/event_path.json (not into the docs: the figures explain
throughput.json).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import orjson

from benchlib import finish_machine, machine, write_result
from sfstream.bayeux import parse
from sfstream.engine.records import mapper_for
from sfstream.protocol import encode
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


def fused(decoded: list[dict[str, Any]], stream: str, now: str) -> bytes:
    """decoded messages -> output lines in one loop (the sketch measured as `fused`)."""
    dumps = orjson.dumps
    lines = []
    for message in decoded:
        if message.get("channel") != CHANNEL:
            continue
        data = message["data"]
        payload = data.get("payload")
        header = payload.get("ChangeEventHeader") if isinstance(payload, dict) else None
        if not isinstance(header, dict):
            raise ValueError("the sketch covers change events only")
        ids = header.get("recordIds")
        change_type = header.get("changeType")
        replay_id = data["event"]["replayId"]
        meta = {
            "channel": CHANNEL,
            "schema_id": data.get("schema"),
            "entity": header.get("entityName"),
            "change_type": change_type,
            "commit_timestamp": header.get("commitTimestamp"),
            "transaction_key": header.get("transactionKey"),
            "sequence_number": header.get("sequenceNumber"),
            "gap": isinstance(change_type, str) and change_type.startswith("GAP_"),
            "run_id": RUN_ID,
        }
        lines.append(
            dumps(
                {
                    "stream": stream,
                    "key": ids[0],
                    "replay_id": replay_id,
                    "data": payload,
                    "meta": meta,
                    "emitted_at": now,
                    "type": "RECORD",
                },
                option=orjson.OPT_APPEND_NEWLINE,
            )
        )
    return b"".join(lines)


def best_us(step: Callable[[], Any], repeat: int, events: int) -> float:
    """The fastest of `repeat` runs, in microseconds per event."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    started_machine = machine()
    body = asyncio.run(response_body(args.events))
    decoded = orjson.loads(body)
    _, events = parse(decoded)
    spec = StreamSpec(
        id="sf.event.account_changes",
        channel=CHANNEL,
        kind=ChannelKind.CHANGE_EVENTS,
        entity="Account",
    )
    mapper = mapper_for(spec, RUN_ID)
    now = "2026-01-01T00:00:00.000Z"
    records = [record for event in events for record in mapper(event, now)]
    messages = [m for m in decoded if m["channel"] == CHANNEL]
    n = len(events)
    steps: dict[str, float] = {}
    steps["decode"] = best_us(lambda: orjson.loads(body), args.repeat, n)
    steps["parse"] = best_us(lambda: parse(decoded), args.repeat, n)
    steps["map"] = best_us(lambda: [r for e in events for r in mapper(e, now)], args.repeat, n)
    steps["encode"] = best_us(
        lambda: b"".join([encode(r) + b"\n" for r in records]), args.repeat, n
    )
    steps["raw_dumps"] = best_us(
        lambda: b"".join([orjson.dumps(m) + b"\n" for m in messages]), args.repeat, n
    )
    steps["encode_append_newline"] = best_us(
        lambda: b"".join([orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records]),
        args.repeat,
        n,
    )
    steps["fused"] = best_us(lambda: fused(decoded, spec.id, now), args.repeat, n)
    expected = b"".join([encode(r) + b"\n" for r in records])
    assert fused(decoded, spec.id, now) == expected, "the fused sketch must write the same bytes"
    live = [orjson.loads(body) for _ in range(max(1, 10_000 // n))]
    steps["decode_with_live_heap_gc_on"] = best_us(lambda: orjson.loads(body), args.repeat, n)
    gc.disable()
    steps["decode_with_live_heap_gc_off"] = best_us(lambda: orjson.loads(body), args.repeat, n)
    gc.enable()
    del live
    sfstream_path = steps["decode"] + steps["parse"] + steps["map"] + steps["encode"]
    fused_path = steps["decode"] + steps["fused"]
    raw_path = steps["decode"] + steps["raw_dumps"]
    result = {
        "benchmark": "event_path",
        "events": n,
        "bytes_per_event": len(body) / n,
        "repeat": args.repeat,
        "us_per_event": steps,
        "sfstream_steps_us": sfstream_path,
        "raw_steps_us": raw_path,
        "fused_steps_us": fused_path,
        "machine": finish_machine(started_machine),
        "command": f"bench/event_path.py --events {args.events} --repeat {args.repeat}",
    }
    write_result("event_path", result)
    for name, value in steps.items():
        print(f"{name:>30}: {value:6.2f} µs/event")
    print(
        f"sfstream decode+parse+map+encode {sfstream_path:.2f} µs/event; "
        f"decode+fused {fused_path:.2f}; raw decode+dumps {raw_path:.2f}"
    )


if __name__ == "__main__":
    main()
