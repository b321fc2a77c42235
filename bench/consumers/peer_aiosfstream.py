"""The peer of bench/throughput.py: aiosfstream-ng, an independent Streaming API client.

It logs in with its own refresh-token authenticator (pointed at the emulator, as in
tests/interop/test_aiosfstream.py), subscribes with `ReplayOption.ALL_EVENTS` and writes
each event it yields as a JSON line until it has the event with replayId `--last`. The
client runs with its defaults (stdlib `json` for decoding, `max_pending_count=100`) unless
`--json orjson` asks it to decode with orjson; lines are written with orjson either way, so
that the comparison is about the client, not the line encoder.

    python bench/consumers/peer_aiosfstream.py --url URL --out FILE --last REPLAY_ID

With `--last 0` it subscribes to new events only, closes and exits (the fixed cost of a run).
"""

from __future__ import annotations

import argparse
import asyncio
import warnings
from typing import Any

import orjson
from aiosfstream_ng import Client, RefreshTokenAuthenticator, ReplayOption

CHANNEL = "/data/AccountChangeEvent"


class EmulatorAuthenticator(RefreshTokenAuthenticator):
    """aiosfstream's refresh-token authenticator, pointed at the emulator's login URL."""

    def __init__(self, token_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._emulator_token_url = token_url

    @property
    def _token_url(self) -> str:
        return self._emulator_token_url


async def consume(url: str, out_path: str, last: int, decoder: str, channel: str) -> int:
    auth = EmulatorAuthenticator(
        f"{url}/services/oauth2/token",
        consumer_key="sfstream-emulator-client-id",
        consumer_secret="sfstream-emulator-client-secret",
        refresh_token="sfstream-emulator-refresh-token",
    )
    options: dict[str, Any] = {}
    if decoder == "orjson":
        options["json_loads"] = orjson.loads
    replay = ReplayOption.ALL_EVENTS if last > 0 else ReplayOption.NEW_EVENTS
    received = 0
    async with Client(auth, replay=replay, **options) as client:
        await client.subscribe(channel)
        if last <= 0:
            return 0
        with open(out_path, "wb") as out:  # noqa: ASYNC230 - once, before the loop
            async for message in client:
                out.write(orjson.dumps(message) + b"\n")
                received += 1
                if message["data"]["event"]["replayId"] >= last:
                    break
    return received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--last", type=int, required=True)
    parser.add_argument("--json", dest="decoder", choices=["json", "orjson"], default="json")
    parser.add_argument("--channel", default=CHANNEL)
    args = parser.parse_args()
    # aiocometd-ng predates Python 3.10's removal of the loop argument and warns about it.
    warnings.simplefilter("ignore", DeprecationWarning)
    asyncio.run(consume(args.url, args.out, args.last, args.decoder, args.channel))


if __name__ == "__main__":
    main()
