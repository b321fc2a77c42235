"""`sfstream tail`: print a channel's events as JSON lines, like kafka-console-consumer.

Each line on stdout is one message as Salesforce delivered it (`{"channel", "data"}`, with
`data.event.replayId`). Gaps and recoveries are logged on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass
from typing import BinaryIO

import orjson
import structlog

from sfstream.auth import OAuthCredentials
from sfstream.bayeux import Event, Gap, ReplayPolicy, SubscriptionLost
from sfstream.client import ClientSettings, StreamingClient
from sfstream.errors import SfStreamError

log = structlog.get_logger("sfstream.tail")


@dataclass(frozen=True, slots=True)
class TailRequest:
    channels: tuple[str, ...]
    replay_from: int
    on_invalid_replay: ReplayPolicy
    max_messages: int | None
    api_version: str


async def tail(credentials: OAuthCredentials, request: TailRequest, out: BinaryIO) -> int:
    """Stream until interrupted or `max_messages` printed; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    printed = 0
    lost = 0
    settings = ClientSettings(api_version=request.api_version)
    async with StreamingClient(credentials, settings) as client:
        for channel in request.channels:
            await client.subscribe(channel, request.replay_from, request.on_invalid_replay)
        iterator = aiter(client)
        while not stop.is_set():
            next_item = asyncio.ensure_future(anext(iterator))
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({next_item, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if next_item not in done:
                next_item.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await next_item
                break
            stopper.cancel()
            item = next_item.result()
            if isinstance(item, Event):
                out.write(orjson.dumps({"channel": item.channel, "data": item.data}) + b"\n")
                out.flush()
                printed += 1
                if request.max_messages is not None and printed >= request.max_messages:
                    break
            elif isinstance(item, Gap):
                log.warning(
                    "replay_gap",
                    channel=item.channel,
                    replay_id=item.replay_id,
                    fallback=item.fallback,
                )
            elif isinstance(item, SubscriptionLost):
                lost += 1
                log.error("subscription_lost", channel=item.channel, error=str(item.error))
                if lost == len(request.channels):
                    return 1
    log.info("tail_stopped", messages=printed)
    return 0


def run_tail(credentials: OAuthCredentials, request: TailRequest) -> int:
    """Run `tail` to completion; terminal errors become exit code 1 with one log line."""
    try:
        return asyncio.run(tail(credentials, request, sys.stdout.buffer))
    except SfStreamError as exc:
        # One clear line, no traceback: the error says what to fix.
        log.error("tail_failed", error=str(exc), retryable=exc.retryable)  # noqa: TRY400
        return 1
    except BrokenPipeError:
        return 0
