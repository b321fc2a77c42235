"""Our client against an independent Bayeux server: Faye (Node.js), started by the test.

Faye knows nothing of Salesforce: no replay extension, no replayIds, its own clientIds and
advice. The client must still handshake, subscribe, receive in order, and disconnect.
`make test` installs Faye from npm (tests/interop/faye/package-lock.json).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from sfstream.auth import OAuthCredentials
from sfstream.bayeux import Event
from sfstream.client import ClientSettings, StreamingClient

pytestmark = pytest.mark.interop
FAYE = Path(__file__).parent / "faye"


@pytest.fixture
def faye_url() -> Iterator[str]:
    node = shutil.which("node")
    if node is None or not (FAYE / "node_modules" / "faye").is_dir():
        pytest.fail("Faye is not installed: run `make test` (it runs npm ci in tests/interop/faye)")
    process = subprocess.Popen([node, "server.js"], cwd=FAYE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = json.loads(process.stdout.readline())["port"]
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


async def test_handshake_subscribe_receive_disconnect(faye_url: str) -> None:
    credentials = OAuthCredentials(
        login_url=faye_url, client_id="faye", refresh_token=SecretStr("unused")
    )
    settings = ClientSettings(network_margin_s=5.0, backoff_base_s=0.05)
    async with aiohttp.ClientSession() as http:

        async def publish(number: int) -> None:
            body = {"channel": "/orders/new", "data": {"number": number}}
            async with http.post(f"{faye_url}/publish", json=body) as response:
                assert response.status == 200

        async def subscribers() -> int:
            async with http.get(f"{faye_url}/clients") as response:
                return int((await response.json())["subscribed"])

        async with StreamingClient(credentials, settings) as client:
            await client.subscribe("/orders/new")
            assert await subscribers() == 1
            for number in range(5):
                await publish(number)
            received: list[Event] = []
            async with asyncio.timeout(15):
                async for item in client:
                    assert isinstance(item, Event)
                    received.append(item)
                    if len(received) == 5:
                        break
            # Faye holds each connect for its 2 s timeout; stay through several of them.
            await asyncio.sleep(4.5)
            await publish(5)
            async with asyncio.timeout(10):
                late = await anext(aiter(client))
            assert client.session.counters.handshakes == 1
        assert await subscribers() == 0  # the disconnect reached Faye

    assert [e.data["number"] for e in received] == [0, 1, 2, 3, 4]
    assert all(e.channel == "/orders/new" and e.replay_id is None for e in received)
    assert isinstance(late, Event)
    assert late.data == {"number": 5}
