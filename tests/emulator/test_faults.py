"""Fault injection over real HTTP: what a client sees for each kind, and targeting."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from sfstream_emulator import ChaosSettings, Emulator, EmulatorSettings, Fault, FaultKind
from tests.emulator.conftest import Bayeux

ACCOUNTS = "/data/AccountChangeEvent"
QUICK = {"timeout": 50}
SERVER_BUSY = "Server is too busy. Please try your request again later."


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=30.0, reconnect_gap_s=40.0, seed=7)


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["payload"]["Name"] for e in events]


def _replay_ids(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["event"]["replayId"] for e in events]


async def _started(emu: Emulator, bayeux: Bayeux) -> int:
    """Subscribe and process one event; returns its replay id (the stored checkpoint)."""
    assert (await bayeux.start(ACCOUNTS, -1))["successful"]
    emu.create_record("Account", {"Name": "Processed"})
    events, _ = await bayeux.connect()
    assert _names(events) == ["Processed"]
    return int(_replay_ids(events)[0])


async def test_drop_loses_the_response_and_its_events(emu: Emulator, bayeux: Bayeux) -> None:
    checkpoint = await _started(emu, bayeux)
    emu.faults.add(Fault(kind=FaultKind.DROP, channel="/meta/connect"))
    emu.create_record("Account", {"Name": "Lost 1"})
    emu.create_record("Account", {"Name": "Lost 2"})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await bayeux.connect()
    assert emu.faults.injected == {"drop": 1}
    # The server moved past those events: the same client does not get them again...
    events, reply = await bayeux.connect(advice=QUICK)
    assert reply["successful"] is True
    assert events == []
    # ...until it resubscribes from the last replay id it processed.
    assert (await bayeux.subscribe(ACCOUNTS, checkpoint))["successful"]
    events, _ = await bayeux.connect()
    assert _names(events) == ["Lost 1", "Lost 2"]


async def test_drop_of_a_handshake(emu: Emulator, bayeux: Bayeux) -> None:
    emu.faults.add(Fault(kind=FaultKind.DROP))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await bayeux.handshake()
    assert (await bayeux.handshake())["successful"] is True


async def test_cut_sends_half_a_response(emu: Emulator, bayeux: Bayeux) -> None:
    checkpoint = await _started(emu, bayeux)
    emu.faults.add(Fault(kind=FaultKind.CUT, channel="/meta/connect"))
    emu.create_record("Account", {"Name": "Cut 1"})
    with pytest.raises(aiohttp.ClientPayloadError):
        await bayeux.connect()
    assert emu.faults.injected == {"cut": 1}
    events, _ = await bayeux.connect(advice=QUICK)
    assert events == []
    assert (await bayeux.subscribe(ACCOUNTS, checkpoint))["successful"]
    events, _ = await bayeux.connect()
    assert _names(events) == ["Cut 1"]


async def test_cut_response_starts_as_json(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    emu.faults.add(Fault(kind=FaultKind.CUT))
    async with http.post(
        emu.cometd_url(),
        json=[{"channel": "/meta/handshake", "version": "1.0", "id": "1"}],
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        first = await response.content.read(1)
        assert first == b"["
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_http_503_processes_nothing(emu: Emulator, bayeux: Bayeux) -> None:
    emu.faults.add(Fault(kind=FaultKind.HTTP_503))
    status, body = await bayeux.post([{"channel": "/meta/handshake", "version": "1.0", "id": "1"}])
    assert status == 503
    assert body == SERVER_BUSY
    assert emu.cometd.sessions == {}
    assert (await bayeux.handshake())["successful"] is True


async def test_http_503_on_connect_keeps_events(emu: Emulator, bayeux: Bayeux) -> None:
    await _started(emu, bayeux)
    emu.faults.add(Fault(kind=FaultKind.HTTP_503, channel="/meta/connect"))
    emu.create_record("Account", {"Name": "Kept"})
    connect = {
        "channel": "/meta/connect",
        "clientId": bayeux.client_id,
        "connectionType": "long-polling",
        "id": "x",
    }
    status, body = await bayeux.post([connect])
    assert (status, body) == (503, SERVER_BUSY)
    events, _ = await bayeux.connect()
    assert _names(events) == ["Kept"]


async def test_stall_outlasts_a_short_client_timeout(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    emu.faults.add(Fault(kind=FaultKind.STALL, seconds=0.4))
    client = Bayeux(http, emu.cometd_url(), token)
    message = {"channel": "/meta/handshake", "version": "1.0", "id": "1"}
    with pytest.raises(TimeoutError):
        async with http.post(
            emu.cometd_url(),
            json=[message],
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=0.2),
        ) as response:
            await response.read()
    assert emu.faults.injected == {"stall": 1}
    # Consumed: the next request is served normally.
    assert (await client.handshake())["successful"] is True


async def test_stall_then_normal_response(emu: Emulator, bayeux: Bayeux) -> None:
    emu.faults.add(Fault(kind=FaultKind.STALL, seconds=0.05))
    assert (await bayeux.handshake())["successful"] is True
    assert emu.faults.injected == {"stall": 1}


@pytest.mark.parametrize("reconnect", ["handshake", "none"])
async def test_unknown_client_on_connect(emu: Emulator, bayeux: Bayeux, reconnect: str) -> None:
    await _started(emu, bayeux)
    emu.faults.add(Fault.model_validate({"kind": "unknown_client", "reconnect": reconnect}))
    _, reply = await bayeux.connect()
    assert reply == {
        "clientId": bayeux.client_id,
        "channel": "/meta/connect",
        "id": "5",
        "advice": {"interval": 0, "reconnect": reconnect},
        "error": "403::Unknown client",
        "successful": False,
    }
    # The client really is gone: handshake and resubscribe.
    _, reply = await bayeux.connect()
    assert reply["advice"] == {"interval": 0, "reconnect": "handshake"}
    assert (await bayeux.start(ACCOUNTS))["successful"] is True


async def test_unknown_client_on_subscribe(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.handshake()
    await bayeux.connect()
    emu.faults.add(Fault(kind=FaultKind.UNKNOWN_CLIENT, channel="/meta/subscribe"))
    reply = await bayeux.subscribe(ACCOUNTS, -1)
    assert reply["error"] == "403::Unknown client"
    assert reply["successful"] is False
    assert emu.cometd.sessions == {}


async def test_unknown_client_waits_for_a_connect(emu: Emulator, bayeux: Bayeux) -> None:
    emu.faults.add(Fault(kind=FaultKind.UNKNOWN_CLIENT))
    assert (await bayeux.handshake())["successful"] is True  # not consumed by a handshake
    assert len(emu.faults.queue) == 1
    _, reply = await bayeux.connect()
    assert reply["error"] == "403::Unknown client"
    assert emu.faults.queue == []


@pytest.mark.parametrize(
    "reason",
    [
        "401::Authentication invalid",
        "403::Organization concurrent user limit exceeded",
        "503::Server is too busy. Please try your request again later.",
    ],
)
async def test_deny_handshake(emu: Emulator, bayeux: Bayeux, reason: str) -> None:
    emu.faults.add(Fault(kind=FaultKind.DENY_HANDSHAKE, reason=reason))
    reply = await bayeux.handshake()
    assert reply == {
        "ext": {"sfdc": {"failureReason": reason}, "replay": True, "payload.format": True},
        "advice": {"reconnect": "none"},
        "channel": "/meta/handshake",
        "id": "1",
        "error": "403::Handshake denied",
        "successful": False,
    }
    assert emu.cometd.sessions == {}
    assert (await bayeux.handshake())["successful"] is True


async def test_deny_handshake_waits_for_a_handshake(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.handshake()
    emu.faults.add(Fault(kind=FaultKind.DENY_HANDSHAKE))
    _, reply = await bayeux.connect()
    assert reply["successful"] is True
    assert (await bayeux.handshake())["error"] == "403::Handshake denied"


async def test_auth_invalid_on_connect(emu: Emulator, bayeux: Bayeux) -> None:
    await _started(emu, bayeux)
    emu.faults.add(Fault(kind=FaultKind.AUTH_INVALID))
    _, reply = await bayeux.connect()
    assert reply == {
        "clientId": bayeux.client_id,
        "channel": "/meta/connect",
        "id": "5",
        "advice": {"reconnect": "none", "interval": 0},
        "error": "401::Authentication invalid",
        "successful": False,
    }
    assert emu.cometd.sessions == {}
    # The token itself still works: a new handshake succeeds.
    assert (await bayeux.start(ACCOUNTS))["successful"] is True


async def test_fault_count(emu: Emulator, bayeux: Bayeux) -> None:
    emu.faults.add(Fault(kind=FaultKind.HTTP_503, count=3))
    message = [{"channel": "/meta/handshake", "version": "1.0", "id": "1"}]
    statuses = [(await bayeux.post(message))[0] for _ in range(4)]
    assert statuses == [503, 503, 503, 200]
    assert emu.faults.injected == {"http_503": 3}
    assert emu.faults.queue == []


async def test_fault_channel_targeting(emu: Emulator, bayeux: Bayeux) -> None:
    emu.faults.add(Fault(kind=FaultKind.HTTP_503, channel="/meta/subscribe"))
    assert (await bayeux.handshake())["successful"] is True
    _, reply = await bayeux.connect()
    assert reply["successful"] is True
    message = {
        "channel": "/meta/subscribe",
        "clientId": bayeux.client_id,
        "subscription": ACCOUNTS,
        "id": "3",
    }
    assert await bayeux.post([message]) == (503, SERVER_BUSY)
    assert (await bayeux.subscribe(ACCOUNTS, -1))["successful"] is True


async def test_faults_are_taken_in_queue_order(emu: Emulator, bayeux: Bayeux) -> None:
    emu.faults.add(Fault(kind=FaultKind.DENY_HANDSHAKE, reason="first"))
    emu.faults.add(Fault(kind=FaultKind.DENY_HANDSHAKE, reason="second"))
    first = await bayeux.handshake()
    second = await bayeux.handshake()
    assert first["ext"]["sfdc"]["failureReason"] == "first"
    assert second["ext"]["sfdc"]["failureReason"] == "second"


async def test_oauth_target(emu: Emulator, http: aiohttp.ClientSession, bayeux: Bayeux) -> None:
    emu.faults.add(Fault(kind=FaultKind.HTTP_503, target="oauth"))
    # CometD requests do not take an OAuth fault.
    assert (await bayeux.handshake())["successful"] is True
    creds = emu.credentials
    form = {
        "grant_type": "refresh_token",
        "client_id": creds["client_id"],
        "client_secret": creds["client_secret"],
        "refresh_token": creds["refresh_token"],
    }
    async with http.post(emu.token_url, data=form) as response:
        assert response.status == 503
    async with http.post(emu.token_url, data=form) as response:
        assert response.status == 200


async def test_rest_target(emu: Emulator, http: aiohttp.ClientSession, token: str) -> None:
    # A POST: aiohttp would silently retry an idempotent GET after a dropped connection.
    url = f"{emu.url}/services/data/v62.0/sobjects/Order_Placed__e/"
    headers = {"Authorization": f"Bearer {token}"}
    body = {"Order_Number__c": "O-1"}
    emu.faults.add(Fault(kind=FaultKind.DROP, target="rest"))
    emu.faults.add(Fault(kind=FaultKind.HTTP_503, target="rest"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post(url, json=body, headers=headers) as response:
            await response.read()
    async with http.post(url, json=body, headers=headers) as response:
        assert response.status == 503
    assert emu.bus.published_total == 0
    async with http.post(url, json=body, headers=headers) as response:
        assert response.status == 201
    assert emu.bus.published_total == 1
    assert emu.faults.injected == {"drop": 1, "http_503": 1}


async def test_rest_stall(emu: Emulator, http: aiohttp.ClientSession, token: str) -> None:
    emu.faults.add(Fault(kind=FaultKind.STALL, seconds=0.4, target="rest"))
    url = f"{emu.url}/services/data/v62.0/sobjects/"
    headers = {"Authorization": f"Bearer {token}"}
    with pytest.raises(TimeoutError):
        async with http.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=0.2)
        ) as response:
            await response.read()
    async with http.get(url, headers=headers) as response:
        assert response.status == 200


async def _chaos_run(
    emu: Emulator, http: aiohttp.ClientSession, token: str, chaos: ChaosSettings
) -> list[str]:
    """Outcomes of 30 handshakes under chaos."""
    emu.faults.start_chaos(chaos)
    client = Bayeux(http, emu.cometd_url(), token)
    outcomes = []
    for _ in range(30):
        try:
            status, body = await client.post(
                [{"channel": "/meta/handshake", "version": "1.0", "id": "1"}]
            )
        except aiohttp.ServerDisconnectedError:
            outcomes.append("drop")
        except aiohttp.ClientPayloadError:
            outcomes.append("cut")
        else:
            outcomes.append(str(status) if status != 200 else str(body[0]["successful"]))
    emu.faults.clear()
    return outcomes


def _chaos(seed: int) -> ChaosSettings:
    return ChaosSettings(
        seed=seed,
        drop=0.1,
        cut=0.1,
        http_503=0.2,
        stall=0.0,
        unknown_client=0.0,
        revoke_tokens=0.0,
        expire_clients=0.0,
    )


async def test_seeded_chaos_is_reproducible(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    first = await _chaos_run(emu, http, token, _chaos(2))
    injected = dict(emu.faults.injected)
    second = await _chaos_run(emu, http, token, _chaos(2))
    assert first == second
    assert {"drop", "cut", "503", "True"} <= set(first)
    assert sum(injected.values()) == sum(1 for o in first if o != "True")
    other = await _chaos_run(emu, http, token, _chaos(3))
    assert other != first


async def test_chaos_side_effects(emu: Emulator, bayeux: Bayeux) -> None:
    await bayeux.start(ACCOUNTS)
    emu.faults.start_chaos(
        ChaosSettings(
            seed=1,
            drop=0.0,
            cut=0.0,
            http_503=0.0,
            stall=0.0,
            unknown_client=0.0,
            revoke_tokens=0.0,
            expire_clients=1.0,
        )
    )
    _, reply = await bayeux.connect()
    assert reply["error"] == "403::Unknown client"
    assert emu.faults.injected == {"expire_clients": 1}
    emu.faults.start_chaos(
        ChaosSettings(
            seed=1,
            drop=0.0,
            cut=0.0,
            http_503=0.0,
            stall=0.0,
            unknown_client=0.0,
            revoke_tokens=1.0,
            expire_clients=0.0,
        )
    )
    reply = await bayeux.handshake()
    assert reply["ext"]["sfdc"]["failureReason"] == "401::Authentication invalid"
    emu.faults.clear()
    bayeux.token = emu.access_token()
    assert (await bayeux.handshake())["successful"] is True


async def test_chaos_unknown_client_only_hits_connects(emu: Emulator, bayeux: Bayeux) -> None:
    emu.faults.start_chaos(
        ChaosSettings(
            seed=5,
            drop=0.0,
            cut=0.0,
            http_503=0.0,
            stall=0.0,
            unknown_client=1.0,
            revoke_tokens=0.0,
            expire_clients=0.0,
        )
    )
    assert (await bayeux.handshake())["successful"] is True
    _, reply = await bayeux.connect()
    assert reply["error"] == "403::Unknown client"
    assert emu.faults.injected == {"unknown_client": 1}


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="count"):
        Fault(kind=FaultKind.DROP, count=0)
    with pytest.raises(ValueError, match="kind"):
        Fault.model_validate({"kind": "explode"})
    with pytest.raises(ValueError, match="target"):
        Fault.model_validate({"kind": "drop", "target": "soap"})
    with pytest.raises(ValueError, match="reconnect"):
        Fault.model_validate({"kind": "unknown_client", "reconnect": "retry"})
