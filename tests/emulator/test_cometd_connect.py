"""`/meta/connect`: the long poll, event batches, expiry, auth loss and allocation limits."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from sfstream_emulator import Emulator, EmulatorSettings
from tests.emulator.conftest import Bayeux

ACCOUNTS = "/data/AccountChangeEvent"
UNKNOWN_CLIENT_ADVICE = {"interval": 0, "reconnect": "handshake"}
QUICK = {"timeout": 50}
"""Client advice that shortens a held poll to 50 ms."""


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    # A long poll that only an event (or the client's own advice) ends within a test.
    return EmulatorSettings(poll_timeout_s=30.0, reconnect_gap_s=40.0, seed=7)


async def _held(emu: Emulator, client: Bayeux, **extra: Any) -> asyncio.Task[Any]:
    """A `/meta/connect` running in its own task, returned once the server holds it."""
    task = asyncio.create_task(client.connect(**extra))
    assert client.client_id is not None
    async with asyncio.timeout(5):
        await emu.cometd.wait_held(client.client_id)
    return task


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["payload"]["Name"] for e in events]


async def test_first_connect_returns_at_once_with_advice(bayeux: Bayeux) -> None:
    await bayeux.handshake()
    async with asyncio.timeout(5):
        events, reply = await bayeux.connect()
    assert events == []
    assert reply == {
        "clientId": bayeux.client_id,
        "advice": {"interval": 0, "timeout": 30000, "reconnect": "retry"},
        "channel": "/meta/connect",
        "id": "2",
        "successful": True,
    }


@pytest.mark.parametrize(
    "sfstream_emulator_settings", [EmulatorSettings(poll_timeout_s=0.2, seed=7)]
)
async def test_later_connect_is_held_until_the_poll_timeout(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    task = await _held(emu, bayeux)
    events, reply = await task
    assert events == []
    # Later connects carry no advice.
    assert reply == {
        "clientId": bayeux.client_id,
        "channel": "/meta/connect",
        "id": "4",
        "successful": True,
    }


async def test_first_connect_advice_reports_the_poll_timeout(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.handshake()
    _, reply = await bayeux.connect()
    assert reply["advice"]["timeout"] == int(emu.settings.poll_timeout_s * 1000)


async def test_client_advice_timeout_is_honoured(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    async with asyncio.timeout(10):  # far below the 30 s server poll
        events, reply = await bayeux.connect(advice=QUICK)
    assert events == []
    assert reply["successful"] is True
    assert "advice" not in reply


async def test_held_connect_is_released_by_a_publish(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    task = await _held(emu, bayeux)
    assert not task.done()
    record_id = emu.create_record("Account", {"Name": "Released"})
    async with asyncio.timeout(10):  # far below the 30 s server poll
        events, reply = await task
    assert reply["successful"] is True
    assert _names(events) == ["Released"]
    assert events[0]["data"]["payload"]["ChangeEventHeader"]["recordIds"] == [record_id]


async def test_held_connect_is_released_by_a_publish_from_another_task(
    emu: Emulator, bayeux: Bayeux
) -> None:
    await bayeux.start("/event/Order_Placed__e")
    task = await _held(emu, bayeux)

    async def publish() -> int:
        replay_id, _uuid = emu.publish_event("Order_Placed__e", {"Order_Number__c": "O-1"})
        return replay_id

    replay_id = await asyncio.create_task(publish())
    async with asyncio.timeout(10):
        events, reply = await task
    assert reply["successful"] is True
    assert [e["data"]["event"]["replayId"] for e in events] == [replay_id]


async def test_pending_events_are_returned_without_holding(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    emu.create_record("Account", {"Name": "Waiting"})
    async with asyncio.timeout(10):
        events, _ = await bayeux.connect()
    assert _names(events) == ["Waiting"]


async def test_events_share_the_response_array_with_the_connect_reply(
    emu: Emulator, bayeux: Bayeux
) -> None:
    await bayeux.start(ACCOUNTS)
    for name in ("One", "Two", "Three"):
        emu.create_record("Account", {"Name": name})
    message = {
        "channel": "/meta/connect",
        "clientId": bayeux.client_id,
        "connectionType": "long-polling",
        "id": "9",
    }
    status, body = await bayeux.post([message])
    assert status == 200
    assert isinstance(body, list)
    assert len(body) == 4
    events = [m for m in body if m["channel"] == ACCOUNTS]
    assert _names(events) == ["One", "Two", "Three"]
    assert [m for m in body if m["channel"] == "/meta/connect"] == [
        {"clientId": bayeux.client_id, "channel": "/meta/connect", "id": "9", "successful": True}
    ]
    replay_ids = [e["data"]["event"]["replayId"] for e in events]
    assert replay_ids == sorted(replay_ids)
    for event in events:
        assert set(event) == {"data", "channel"}
        assert set(event["data"]) == {"schema", "payload", "event"}


async def test_events_are_delivered_once(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    emu.create_record("Account", {"Name": "Once"})
    events, _ = await bayeux.connect()
    assert _names(events) == ["Once"]
    events, reply = await bayeux.connect(advice=QUICK)
    assert events == []
    assert reply["successful"] is True


@pytest.mark.parametrize(
    "sfstream_emulator_settings",
    [EmulatorSettings(poll_timeout_s=30.0, max_batch_events=2, seed=7)],
)
async def test_max_batch_events_is_respected(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    for index in range(5):
        emu.create_record("Account", {"Name": f"A{index}"})
    batches = []
    for _ in range(3):
        events, reply = await bayeux.connect()
        assert reply["successful"] is True
        batches.append(_names(events))
    assert batches == [["A0", "A1"], ["A2", "A3"], ["A4"]]


@pytest.mark.parametrize(
    "sfstream_emulator_settings",
    [EmulatorSettings(poll_timeout_s=30.0, max_batch_bytes=1024, seed=7)],
)
async def test_max_batch_bytes_still_sends_one_event(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    emu.create_record("Account", {"Name": "Big", "Description": "x" * 5000})
    emu.create_record("Account", {"Name": "Next"})
    events, _ = await bayeux.connect()
    assert _names(events) == ["Big"]
    events, _ = await bayeux.connect()
    assert _names(events) == ["Next"]


async def test_unknown_client_after_the_reconnect_gap(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    emu.advance(emu.settings.reconnect_gap_s + 1)
    events, reply = await bayeux.connect()
    assert events == []
    assert reply == {
        "clientId": bayeux.client_id,
        "channel": "/meta/connect",
        "id": "4",
        "advice": UNKNOWN_CLIENT_ADVICE,
        "error": "403::Unknown client",
        "successful": False,
    }
    # Once forgotten, a client stays forgotten.
    _, again = await bayeux.connect()
    assert again["error"] == "403::Unknown client"


async def test_client_within_the_reconnect_gap_is_kept(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    emu.advance(emu.settings.reconnect_gap_s - 1)
    emu.create_record("Account", {"Name": "Kept"})
    events, reply = await bayeux.connect()
    assert reply["successful"] is True
    assert _names(events) == ["Kept"]
    # Every response restarts the window.
    emu.advance(emu.settings.reconnect_gap_s - 1)
    _, reply = await bayeux.connect(advice=QUICK)
    assert reply["successful"] is True


async def test_held_connect_does_not_expire(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    task = await _held(emu, bayeux)
    emu.advance(emu.settings.reconnect_gap_s * 3)
    assert emu.cometd.sweep() == 0
    emu.create_record("Account", {"Name": "Still here"})
    events, reply = await task
    assert reply["successful"] is True
    assert _names(events) == ["Still here"]


@pytest.mark.parametrize("how", ["restart", "expire_clients"])
async def test_unknown_client_after_restart(emu: Emulator, bayeux: Bayeux, how: str) -> None:
    await bayeux.start(ACCOUNTS)
    assert getattr(emu, how)() == 1
    _, reply = await bayeux.connect()
    assert reply["error"] == "403::Unknown client"
    assert reply["advice"] == UNKNOWN_CLIENT_ADVICE
    assert reply["successful"] is False
    # Recovery: handshake, connect and subscribe again.
    reply = await bayeux.start(ACCOUNTS)
    assert reply["successful"] is True


@pytest.mark.parametrize("how", ["restart", "expire_clients"])
async def test_restart_releases_a_held_connect(emu: Emulator, bayeux: Bayeux, how: str) -> None:
    await bayeux.start(ACCOUNTS)
    task = await _held(emu, bayeux)
    getattr(emu, how)()
    async with asyncio.timeout(10):
        events, reply = await task
    assert events == []
    assert reply["error"] == "403::Unknown client"
    assert reply["advice"] == UNKNOWN_CLIENT_ADVICE


async def test_events_published_while_forgotten_are_replayable(
    emu: Emulator, bayeux: Bayeux
) -> None:
    await bayeux.start(ACCOUNTS)
    emu.create_record("Account", {"Name": "Before"})
    events, _ = await bayeux.connect()
    last = events[-1]["data"]["event"]["replayId"]
    emu.restart()
    emu.create_record("Account", {"Name": "During"})
    reply = await bayeux.start(ACCOUNTS, last)
    assert reply["successful"] is True
    events, _ = await bayeux.connect()
    assert _names(events) == ["During"]


@pytest.mark.parametrize("client_id", ["nosuchclient0000000000000000", None, 42])
async def test_unknown_client_id(bayeux: Bayeux, client_id: Any) -> None:
    await bayeux.handshake()
    bayeux.client_id = client_id
    events, reply = await bayeux.connect()
    assert events == []
    assert reply["error"] == "403::Unknown client"
    assert reply["advice"] == UNKNOWN_CLIENT_ADVICE
    assert reply["successful"] is False


async def test_revoked_token_gives_authentication_invalid(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    emu.revoke_access_tokens()
    _, reply = await bayeux.connect()
    assert reply == {
        "clientId": bayeux.client_id,
        "channel": "/meta/connect",
        "id": "4",
        "advice": {"reconnect": "none", "interval": 0},
        "error": "401::Authentication invalid",
        "successful": False,
    }
    # The client must re-authenticate, handshake and resubscribe.
    bayeux.token = emu.access_token()
    _, reply = await bayeux.connect()
    assert reply["error"] == "403::Unknown client"
    assert (await bayeux.start(ACCOUNTS))["successful"] is True


async def test_token_revoked_during_a_held_connect(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    task = await _held(emu, bayeux)
    emu.revoke_access_tokens()
    emu.create_record("Account", {"Name": "Not for you"})
    events, reply = await task
    assert events == []
    assert reply["error"] == "401::Authentication invalid"
    assert reply["advice"] == {"reconnect": "none", "interval": 0}


@pytest.mark.parametrize(
    "sfstream_emulator_settings",
    # A reconnect window longer than the token's lifetime keeps the client known while its
    # token runs out between two connects (each connect extends the session; see
    # test_session_lifetime.py).
    [EmulatorSettings(poll_timeout_s=30.0, access_token_ttl_s=60.0, reconnect_gap_s=120.0, seed=7)],
)
async def test_expired_token_gives_authentication_invalid(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    emu.advance(30)  # the client keeps polling within the reconnect window
    _, reply = await bayeux.connect(advice={"timeout": 0})
    assert reply["successful"] is True
    emu.advance(61)  # longer than the token's lifetime without a connect
    _, reply = await bayeux.connect(advice={"timeout": 0})
    assert reply["error"] == "401::Authentication invalid"
    assert reply["advice"] == {"reconnect": "none", "interval": 0}


DAILY_LIMIT = "403::Organization total events daily limit exceeded"


@pytest.mark.parametrize(
    "sfstream_emulator_settings",
    [EmulatorSettings(poll_timeout_s=30.0, daily_delivery_allocation=3, seed=7)],
)
async def test_daily_allocation_on_connect_and_subscribe(
    emu: Emulator, bayeux: Bayeux, http: aiohttp.ClientSession, token: str
) -> None:
    await bayeux.start(ACCOUNTS)
    for index in range(5):
        emu.create_record("Account", {"Name": f"A{index}"})
    events, reply = await bayeux.connect()
    assert reply["successful"] is True
    assert _names(events) == ["A0", "A1", "A2"]
    events, reply = await bayeux.connect()
    assert events == []
    assert reply == {
        "clientId": bayeux.client_id,
        "channel": "/meta/connect",
        "id": "5",
        "error": DAILY_LIMIT,
        "successful": False,
    }
    # A new subscription is refused too.
    other = Bayeux(http, emu.cometd_url(), token)
    await other.handshake()
    await other.connect()
    reply = await other.subscribe("/data/ContactChangeEvent", -1)
    assert reply == {
        "clientId": other.client_id,
        "channel": "/meta/subscribe",
        "id": "3",
        "subscription": "/data/ContactChangeEvent",
        "error": DAILY_LIMIT,
        "successful": False,
    }
    # PushTopic and generic events count against another allocation.
    assert (await other.subscribe("/u/Notifications", -1))["successful"] is True
    # The allocation recovers after 24 h; undelivered events are still retained.
    emu.advance(86400)
    bayeux.token = emu.access_token()
    reply = await bayeux.start(ACCOUNTS, -2)
    assert reply["successful"] is True
    events, _ = await bayeux.connect()
    assert _names(events) == ["A0", "A1", "A2"]


async def test_daily_allocation_exhausted_by_the_control_api(
    emu: Emulator, bayeux: Bayeux, http: aiohttp.ClientSession
) -> None:
    await bayeux.start(ACCOUNTS)
    async with http.post(
        f"{emu.url}/_emulator/v1/allocation", json={"kind": "events", "exhaust": True}
    ) as response:
        assert response.status == 200
    _, reply = await bayeux.connect()
    assert reply["error"] == DAILY_LIMIT
    assert (await bayeux.subscribe("/event/Order_Placed__e", -1))["error"] == DAILY_LIMIT
    async with http.post(
        f"{emu.url}/_emulator/v1/allocation", json={"kind": "events", "maximum": None}
    ) as response:
        assert response.status == 200
    emu.create_record("Account", {"Name": "Unlimited"})
    events, reply = await bayeux.connect()
    assert reply["successful"] is True
    assert _names(events) == ["Unlimited"]


async def test_a_second_connect_supersedes_a_held_one(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    first = await _held(emu, bayeux)
    second = asyncio.create_task(bayeux.connect())
    async with asyncio.timeout(10):
        events, reply = await first
    assert events == []
    assert reply["successful"] is True
    assert reply["id"] == "4"
    assert not second.done()
    emu.create_record("Account", {"Name": "For the second"})
    async with asyncio.timeout(10):
        events, reply = await second
    assert reply["successful"] is True
    assert reply["id"] == "5"
    assert _names(events) == ["For the second"]


async def test_disconnect(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    status, body = await bayeux.post(
        [{"channel": "/meta/disconnect", "clientId": bayeux.client_id, "id": "8"}]
    )
    assert status == 200
    assert body == [
        {"clientId": bayeux.client_id, "channel": "/meta/disconnect", "id": "8", "successful": True}
    ]
    assert emu.cometd.sessions == {}
    _, reply = await bayeux.connect()
    assert reply["error"] == "403::Unknown client"


async def test_disconnect_releases_a_held_connect(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    task = await _held(emu, bayeux)
    status, body = await bayeux.post(
        [{"channel": "/meta/disconnect", "clientId": bayeux.client_id, "id": "8"}]
    )
    assert status == 200
    assert body[0]["successful"] is True
    async with asyncio.timeout(10):
        events, reply = await task
    assert events == []
    assert reply["successful"] is False


@pytest.mark.parametrize("connection_type", ["websocket", "callback-polling"])
async def test_invalid_connection_type(bayeux: Bayeux, connection_type: str) -> None:
    await bayeux.handshake()
    _, reply = await bayeux.connect(connectionType=connection_type)
    assert reply == {
        "clientId": bayeux.client_id,
        "channel": "/meta/connect",
        "id": "2",
        "error": f"400::Invalid connection type {{{connection_type}}}",
        "successful": False,
    }
    # The client can still connect properly.
    _, reply = await bayeux.connect()
    assert reply["successful"] is True


async def test_connect_without_subscriptions_waits_quietly(bayeux: Bayeux) -> None:
    await bayeux.handshake()
    await bayeux.connect()
    events, reply = await bayeux.connect(advice=QUICK)
    assert events == []
    assert reply["successful"] is True


async def test_subscribe_with_backlog_releases_a_held_connect(
    emu: Emulator, bayeux: Bayeux
) -> None:
    emu.create_record("Account", {"Name": "Backlog"})
    await bayeux.handshake()
    await bayeux.connect()
    task = await _held(emu, bayeux)
    reply = await bayeux.subscribe(ACCOUNTS, -2)
    assert reply["successful"] is True
    async with asyncio.timeout(10):
        events, connect = await task
    assert connect["successful"] is True
    assert _names(events) == ["Backlog"]


async def test_subscribe_restarts_the_reconnect_window(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    emu.advance(30)
    assert (await bayeux.subscribe("/event/Order_Placed__e", -1))["successful"]
    emu.advance(30)  # 60 s after the connect, 30 s after the subscribe
    _, reply = await bayeux.connect(advice=QUICK)
    assert reply["successful"] is True
