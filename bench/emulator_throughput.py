"""How fast the emulator serves a pre-filled channel to one long-polling client.

The emulator runs in its own process (`sfstream emulator`). The channel is pre-filled through
the control API with N change events of about 1 KB each; then one client handshakes,
subscribes with replay -2 and long-polls until it has the last event. Two clients alternate:

- `count`: reads each response and counts the events in the raw bytes, so that the figure is
  the emulator's (the target is >= 100,000 events/s of ~1 KB);
- `parse`: also decodes every response with orjson, as a real consumer must.

Reported per round: events/s, MB/s, and the emulator's own CPU seconds per 100k events (from
/proc), with medians over the rounds.

    .venv/bin/python bench/emulator_throughput.py [--events 200000] [--rounds 3]

Results go to bench/results/emulator_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchlib import start_emulator

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CHANNEL = "/data/AccountChangeEvent"


async def token(http: aiohttp.ClientSession, base: str) -> str:
    status = await (await http.get(f"{base}/_emulator/v1/status")).json()
    assert status["url"] == base
    async with http.post(
        f"{base}/services/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "client_id": "sfstream-emulator-client-id",
            "client_secret": "sfstream-emulator-client-secret",
            "refresh_token": "sfstream-emulator-refresh-token",
        },
    ) as response:
        body = await response.json()
    return str(body["access_token"])


async def prefill(http: aiohttp.ClientSession, base: str, events: int) -> tuple[int, float]:
    started = time.perf_counter()
    remaining = events
    last = 0
    while remaining:
        count = min(remaining, 100_000)
        async with http.post(
            f"{base}/_emulator/v1/events/generate",
            json={"target": "Account", "count": count, "payload_bytes": 1024},
        ) as response:
            body = await response.json()
        last = body["last_replay_id"]
        remaining -= count
    return last, time.perf_counter() - started


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drain(
    http: aiohttp.ClientSession,
    base: str,
    access: str,
    last: int,
    *,
    parse: bool,
    emulator_pid: int,
) -> dict[str, Any]:
    url = f"{base}/cometd/62.0"
    headers = {"Authorization": f"Bearer {access}", "Content-Type": "application/json"}

    marker = b'"channel":"' + CHANNEL.encode() + b'"'
    received_bytes = 0

    async def post_raw(messages: list[dict[str, Any]]) -> bytes:
        nonlocal received_bytes
        async with http.post(url, data=orjson.dumps(messages), headers=headers) as response:
            raw = await response.read()
        received_bytes += len(raw)
        return raw

    async def post(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        parsed: list[dict[str, Any]] = orjson.loads(await post_raw(messages))
        return parsed

    reply = await post(
        [
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": ["long-polling"],
                "id": "1",
            }
        ]
    )
    client_id = reply[0]["clientId"]
    await post(
        [
            {
                "channel": "/meta/connect",
                "clientId": client_id,
                "connectionType": "long-polling",
                "id": "2",
            }
        ]
    )
    started = time.perf_counter()
    cpu_started = time.process_time()
    emulator_cpu_started = process_cpu_s(emulator_pid)
    await post(
        [
            {
                "channel": "/meta/subscribe",
                "clientId": client_id,
                "subscription": CHANNEL,
                "id": "3",
                "ext": {"replay": {CHANNEL: -2}},
            }
        ]
    )
    received = 0
    seen_last = 0
    responses = 0
    last_marker = f'"replayId":{last}}}'.encode()
    while seen_last < last:
        connect = [
            {
                "channel": "/meta/connect",
                "clientId": client_id,
                "connectionType": "long-polling",
                "id": str(4 + responses),
            }
        ]
        responses += 1
        if parse:
            for message in await post(connect):
                if message["channel"] == CHANNEL:
                    received += 1
                    seen_last = message["data"]["event"]["replayId"]
        else:
            raw = await post_raw(connect)
            received += raw.count(marker)
            if last_marker in raw:
                seen_last = last
    elapsed = time.perf_counter() - started
    emulator_cpu = process_cpu_s(emulator_pid) - emulator_cpu_started
    return {
        "client": "parse" if parse else "count",
        "events": received,
        "responses": responses,
        "seconds": elapsed,
        "client_cpu_seconds": time.process_time() - cpu_started,
        "emulator_cpu_seconds": emulator_cpu,
        "emulator_cpu_s_per_100k": emulator_cpu / received * 100_000,
        "events_per_s": received / elapsed,
        "mb_per_s": received_bytes / elapsed / 1e6,
        "bytes_per_event": received_bytes / max(received, 1),
    }


async def run(events: int, rounds: int) -> dict[str, Any]:
    process, base = start_emulator()
    try:
        async with aiohttp.ClientSession() as http:
            access = await token(http, base)
            last, fill_s = await prefill(http, base, events)
            print(f"pre-filled {events} events in {fill_s:.1f} s ({events / fill_s:,.0f}/s)")
            runs = []
            for index in range(rounds):
                for parse in (False, True):
                    result = await drain(
                        http, base, access, last, parse=parse, emulator_pid=process.pid
                    )
                    runs.append(result)
                    print(
                        f"round {index + 1} {result['client']:>5}: {result['events']:,} "
                        f"events in {result['seconds']:.2f} s = "
                        f"{result['events_per_s']:,.0f} events/s, "
                        f"{result['mb_per_s']:.0f} MB/s, emulator CPU "
                        f"{result['emulator_cpu_s_per_100k']:.2f} s/100k events"
                    )
    finally:
        process.terminate()
        process.wait(timeout=10)

    def median(client: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["client"] == client)

    return {
        "benchmark": "emulator_throughput",
        "events": events,
        "rounds": runs,
        "median_events_per_s": median("count", "events_per_s"),
        "median_mb_per_s": median("count", "mb_per_s"),
        "median_parse_events_per_s": median("parse", "events_per_s"),
        "median_emulator_cpu_s_per_100k": median("count", "emulator_cpu_s_per_100k"),
        "prefill_events_per_s": events / fill_s,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": f"python bench/emulator_throughput.py --events {events} --rounds {rounds}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(run(args.events, args.rounds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "emulator_throughput.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"median {result['median_events_per_s']:,.0f} events/s "
        f"({result['median_mb_per_s']:.0f} MB/s) to a counting client, "
        f"{result['median_parse_events_per_s']:,.0f} events/s to a parsing client; "
        f"emulator CPU {result['median_emulator_cpu_s_per_100k']:.2f} s per 100k events; "
        f"written to {out.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
