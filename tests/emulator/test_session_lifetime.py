"""A connected CometD client's session does not expire; an idle one does.

Salesforce: "Invalidated client authentication doesn't include Salesforce session
expiration. The Salesforce session never expires in a CometD client." It keeps extending the
timeout while the client is connected (Streaming API Developer Guide, "Handling Streaming API
Errors"). The emulator counts each `/meta/connect` made with a token (and the end of a held
one) as activity of that token's session; a token nobody connects with still expires
`access_token_ttl_s` after its last use, on REST and on a new handshake.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import aiohttp
import pytest

from sfstream_emulator import Emulator, EmulatorSettings

from .conftest import Bayeux

ACCOUNTS: Final = "/data/AccountChangeEvent"
TTL_S: Final = 30.0
STEP_S: Final = 20.0
"""Shorter than the token's lifetime and than the 40 s reconnect window."""
QUICK: Final = {"timeout": 0}
"""Client advice that answers a connect at once."""
SESSION_INVALID: Final = [
    {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
]
AUTH_INVALID: Final = "401::Authentication invalid"


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(
        poll_timeout_s=30.0, reconnect_gap_s=40.0, access_token_ttl_s=TTL_S, seed=7
    )


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["payload"]["Name"] for e in events]


async def _rest_status(http: aiohttp.ClientSession, emu: Emulator, token: str) -> int:
    async with http.get(
        f"{emu.url}/services/data/v62.0/limits", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        if response.status == 401:
            assert await response.json() == SESSION_INVALID
        return response.status


def _assert_denied(reply: dict[str, Any]) -> None:
    """A handshake refused for its token, as Salesforce refuses it."""
    assert {k: v for k, v in reply.items() if k != "id"} == {
        "ext": {"sfdc": {"failureReason": AUTH_INVALID}, "replay": True, "payload.format": True},
        "advice": {"reconnect": "none"},
        "channel": "/meta/handshake",
        "error": "403::Handshake denied",
        "successful": False,
    }


async def _held(emu: Emulator, client: Bayeux) -> asyncio.Task[Any]:
    """A `/meta/connect` running in its own task, returned once the server holds it."""
    task = asyncio.create_task(client.connect())
    assert client.client_id is not None
    async with asyncio.timeout(5):
        await emu.cometd.wait_held(client.client_id)
    return task


async def test_a_connected_client_outlives_the_token_lifetime(
    emu: Emulator, bayeux: Bayeux
) -> None:
    assert (await bayeux.start(ACCOUNTS))["successful"] is True
    received: list[str] = []
    steps = int(2 * TTL_S // STEP_S) + 2  # 120 s of emulated time: four token lifetimes
    for step in range(steps):
        emu.advance(STEP_S)
        emu.create_record("Account", {"Name": f"A{step}"})
        events, reply = await bayeux.connect(advice=QUICK)
        assert reply["successful"] is True, reply
        assert "error" not in reply
        received += _names(events)
    assert emu.clock.offset_s > 2 * TTL_S
    assert received == [f"A{step}" for step in range(steps)]


async def test_a_connected_clients_token_stays_good_for_rest_and_handshakes(
    emu: Emulator, bayeux: Bayeux, http: aiohttp.ClientSession
) -> None:
    await bayeux.start(ACCOUNTS)
    for _ in range(4):
        emu.advance(STEP_S)
        assert (await bayeux.connect(advice=QUICK))[1]["successful"] is True
    # The same session serves REST calls, and a new handshake after the server forgot the
    # client (a restart) succeeds with it.
    assert await _rest_status(http, emu, bayeux.token) == 200
    emu.restart()
    _, reply = await bayeux.connect(advice=QUICK)
    assert reply["error"] == "403::Unknown client"
    assert (await bayeux.start(ACCOUNTS))["successful"] is True


async def test_a_held_connect_keeps_the_session_alive(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    task = await _held(emu, bayeux)
    # Time passes while the client waits connected; an event then ends the poll.
    emu.advance(2 * TTL_S + 1)
    emu.create_record("Account", {"Name": "After the lifetime"})
    async with asyncio.timeout(10):
        events, reply = await task
    assert reply["successful"] is True
    assert _names(events) == ["After the lifetime"]
    emu.advance(TTL_S - 1)
    _, reply = await bayeux.connect(advice=QUICK)
    assert reply["successful"] is True


async def test_the_session_ends_a_lifetime_after_the_last_connect(
    emu: Emulator, bayeux: Bayeux, http: aiohttp.ClientSession
) -> None:
    await bayeux.start(ACCOUNTS)
    for _ in range(3):
        emu.advance(STEP_S)
        assert (await bayeux.connect(advice=QUICK))[1]["successful"] is True
    status, _ = await bayeux.post([{"channel": "/meta/disconnect", "clientId": bayeux.client_id}])
    assert status == 200
    emu.advance(TTL_S - 1)
    assert await _rest_status(http, emu, bayeux.token) == 200  # REST is no activity
    emu.advance(2)
    assert await _rest_status(http, emu, bayeux.token) == 401
    _assert_denied(await bayeux.handshake())
    assert emu.cometd.sessions == {}


async def test_an_idle_token_is_refused_on_rest_and_handshake(
    emu: Emulator, bayeux: Bayeux, http: aiohttp.ClientSession
) -> None:
    idle = emu.access_token()
    assert await _rest_status(http, emu, idle) == 200
    # Another token's client stays connected the whole time; that is no activity of `idle`.
    await bayeux.start(ACCOUNTS)
    for _ in range(2):
        emu.advance(STEP_S)
        assert (await bayeux.connect(advice=QUICK))[1]["successful"] is True
    assert await _rest_status(http, emu, idle) == 401
    other = Bayeux(http, emu.cometd_url(), idle)
    _assert_denied(await other.handshake())
    assert await _rest_status(http, emu, bayeux.token) == 200


async def test_connecting_does_not_revive_a_revoked_token(
    emu: Emulator, bayeux: Bayeux, http: aiohttp.ClientSession
) -> None:
    await bayeux.start(ACCOUNTS)
    emu.revoke_access_tokens()
    _, reply = await bayeux.connect(advice=QUICK)
    assert reply["error"] == AUTH_INVALID
    assert reply["advice"] == {"reconnect": "none", "interval": 0}
    assert await _rest_status(http, emu, bayeux.token) == 401
    _assert_denied(await bayeux.handshake())


async def test_a_token_revoked_during_a_long_held_connect_is_refused(
    emu: Emulator, bayeux: Bayeux
) -> None:
    await bayeux.start(ACCOUNTS)
    task = await _held(emu, bayeux)
    emu.advance(2 * TTL_S)
    emu.revoke_access_tokens()
    emu.create_record("Account", {"Name": "Not for you"})
    async with asyncio.timeout(10):
        events, reply = await task
    assert events == []
    assert reply["error"] == AUTH_INVALID
