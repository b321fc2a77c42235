"""The raw floor of bench/throughput.py: the least a CometD consumer can do.

A minimal aiohttp long-poll loop: get a token, handshake, subscribe with a replay id,
`orjson.loads` each response and write each event (`orjson.dumps` of its message) as a line
to a file, until it has the event with replayId `--last`. No recovery, no checkpoint, no
fsync, no logging: this is what any Python consumer pays at least.

    python bench/consumers/raw_floor.py --url URL --out FILE --last REPLAY_ID [--replay -2]

With `--last 0` it subscribes, disconnects and exits (the fixed cost of a run). For
bench/latency.py, `--last -1` runs until SIGTERM, `--fsync` makes each response's lines
durable (write, flush, fsync) before the next poll, and `--probe FILE` notes, per response,
CLOCK_MONOTONIC ns once its lines are written (and fsynced) with their replay ids.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from typing import Any

import aiohttp
import orjson

CHANNEL = "/data/AccountChangeEvent"


async def consume(
    url: str,
    out_path: str,
    last: int,
    replay: int,
    channel: str,
    *,
    fsync: bool = False,
    probe_path: str | None = None,
) -> int:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.post(
            f"{url}/services/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "client_id": "sfstream-emulator-client-id",
                "client_secret": "sfstream-emulator-client-secret",
                "refresh_token": "sfstream-emulator-refresh-token",
            },
        ) as response:
            token = orjson.loads(await response.read())
        cometd = f"{token['instance_url']}/cometd/62.0"
        headers = {
            "Authorization": f"Bearer {token['access_token']}",
            "Content-Type": "application/json",
        }

        async def post(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
            async with http.post(cometd, data=orjson.dumps(messages), headers=headers) as reply:
                body: list[dict[str, Any]] = orjson.loads(await reply.read())
            return body

        handshake = await post(
            [
                {
                    "channel": "/meta/handshake",
                    "version": "1.0",
                    "supportedConnectionTypes": ["long-polling"],
                }
            ]
        )
        client_id = handshake[0]["clientId"]
        connect = [
            {"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling"}
        ]
        await post(connect)
        await post(
            [
                {
                    "channel": "/meta/subscribe",
                    "clientId": client_id,
                    "subscription": channel,
                    "ext": {"replay": {channel: replay}},
                }
            ]
        )
        print("subscribed", file=sys.stderr, flush=True)
        received = 0
        seen = 0
        forever = last < 0
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(out_path, "wb"))  # noqa: ASYNC230 - once
            probe = files.enter_context(open(probe_path, "wb")) if probe_path else None  # noqa: ASYNC230
            while forever or seen < last:
                ids = []
                for message in await post(connect):
                    if message["channel"] == channel:
                        out.write(orjson.dumps(message) + b"\n")
                        received += 1
                        seen = message["data"]["event"]["replayId"]
                        ids.append(seen)
                if fsync and ids:
                    out.flush()
                    os.fsync(out.fileno())
                if probe is not None and ids:
                    probe.write(orjson.dumps({"t": time.monotonic_ns(), "ids": ids}) + b"\n")
        await post([{"channel": "/meta/disconnect", "clientId": client_id}])
    return received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--last", type=int, required=True)
    parser.add_argument("--replay", type=int, default=-2)
    parser.add_argument("--channel", default=CHANNEL)
    parser.add_argument("--fsync", action="store_true")
    parser.add_argument("--probe")
    args = parser.parse_args()

    async def run() -> None:
        task = asyncio.ensure_future(
            consume(
                args.url,
                args.out,
                args.last,
                args.replay,
                args.channel,
                fsync=args.fsync,
                probe_path=args.probe,
            )
        )
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
