"""StreamingClient against the emulator: every fault ends with every event delivered once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from pydantic import SecretStr

from sfstream.auth import OAuthCredentials
from sfstream.bayeux import Event, Gap, ReplayPolicy, SubscriptionLost
from sfstream.client import ClientSettings, StreamingClient
from sfstream.errors import (
    AllocationExceededError,
    AuthenticationError,
    ChannelNotFoundError,
    InvalidReplayIdError,
)
from sfstream_emulator import ChaosSettings, Emulator, EmulatorSettings, Fault, FaultKind

CHANNEL = "/data/AccountChangeEvent"
EVENT_CHANNEL = "/event/Order_Placed__e"


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, reconnect_gap_s=40.0, seed=5)


def credentials(emu: Emulator, **overrides: Any) -> OAuthCredentials:
    creds = emu.credentials
    values: dict[str, Any] = {
        "login_url": emu.url,
        "client_id": creds["client_id"],
        "client_secret": SecretStr(creds["client_secret"]),
        "refresh_token": SecretStr(creds["refresh_token"]),
    }
    values.update(overrides)
    return OAuthCredentials(**values)


FAST = ClientSettings(
    backoff_base_s=0.05, backoff_cap_s=0.2, network_margin_s=1.0, request_timeout_s=2.0
)


@pytest_asyncio.fixture
async def client(sfstream_emulator: Emulator) -> AsyncIterator[StreamingClient]:
    async with StreamingClient(
        credentials(sfstream_emulator), FAST, rng=random.Random(1)
    ) as streaming:
        yield streaming


async def collect(client: StreamingClient, count: int, timeout_s: float = 15.0) -> list[Any]:
    items: list[Any] = []
    async with asyncio.timeout(timeout_s):
        async for item in client:
            items.append(item)
            if sum(isinstance(i, Event) for i in items) >= count:
                break
    return items


def names(items: list[Any]) -> list[str]:
    return [i.data["payload"]["Name"] for i in items if isinstance(i, Event)]


def replay_ids(items: list[Any]) -> list[int]:
    return [i.replay_id for i in items if isinstance(i, Event)]


def create(emu: Emulator, *labels: str) -> None:
    for label in labels:
        emu.create_record("Account", {"Name": label})


async def test_replays_retained_events_then_streams_new_ones(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    create(sfstream_emulator, "a", "b")
    assert await client.subscribe(CHANNEL, -2) == -2
    create(sfstream_emulator, "c")
    items = await collect(client, 3)
    assert names(items) == ["a", "b", "c"]
    expected = [m["data"]["event"]["replayId"] for m in sfstream_emulator.published(CHANNEL)]
    assert replay_ids(items) == expected


async def test_resumes_after_a_stored_replay_id(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    create(sfstream_emulator, "a", "b", "c", "d")
    stored = sfstream_emulator.published(CHANNEL)[1]["data"]["event"]["replayId"]
    await client.subscribe(CHANNEL, stored)
    assert names(await collect(client, 2)) == ["c", "d"]


@pytest.mark.parametrize(
    "fault",
    [
        Fault(kind=FaultKind.DROP, channel="/meta/connect"),
        Fault(kind=FaultKind.CUT, channel="/meta/connect"),
        Fault(kind=FaultKind.HTTP_503, channel="/meta/connect", count=3),
        Fault(kind=FaultKind.UNKNOWN_CLIENT, channel="/meta/connect"),
        Fault(kind=FaultKind.UNKNOWN_CLIENT, channel="/meta/connect", reconnect="none"),
        Fault(kind=FaultKind.AUTH_INVALID, channel="/meta/connect"),
        Fault(kind=FaultKind.STALL, channel="/meta/connect", seconds=3.5),
        Fault(kind=FaultKind.DROP, channel="/meta/subscribe"),
        Fault(kind=FaultKind.HTTP_503, channel="/meta/handshake", count=2),
        Fault(kind=FaultKind.DENY_HANDSHAKE, reason="401::Authentication invalid"),
        Fault(
            kind=FaultKind.DENY_HANDSHAKE, reason="403::Organization concurrent user limit exceeded"
        ),
    ],
    ids=lambda f: f"{f.kind.value}-{f.channel or 'any'}-{f.reconnect}-{f.reason[:8]}",
)
async def test_every_fault_is_survived_without_loss(
    sfstream_emulator: Emulator, client: StreamingClient, fault: Fault
) -> None:
    emu = sfstream_emulator
    await client.subscribe(CHANNEL, -1)
    create(emu, "before-1", "before-2")
    first = await collect(client, 2)
    emu.faults.add(fault)
    if fault.channel in (None, "/meta/handshake", "/meta/subscribe"):
        emu.expire_clients()  # make the client handshake and subscribe again
    create(emu, "during-1", "during-2", "during-3")
    rest = await collect(client, 3, timeout_s=25.0)
    items = first + rest
    assert names(items) == ["before-1", "before-2", "during-1", "during-2", "during-3"]
    ids = replay_ids(items)
    assert ids == sorted(set(ids))
    assert not emu.faults.queue, "the fault was never triggered"
    assert client.stats.reconnects + client.stats.reauthentications >= 1


async def test_token_revocation_is_survived_with_one_refresh(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    await client.subscribe(CHANNEL, -1)
    create(sfstream_emulator, "w")
    received = await collect(client, 1)
    requests_before = client.stats.token_requests
    sfstream_emulator.revoke_access_tokens()
    create(sfstream_emulator, "x", "y")
    received += await collect(client, 2)
    assert names(received) == ["w", "x", "y"]
    assert client.stats.reauthentications == 1
    assert client.stats.token_requests == requests_before + 1


async def test_expired_clients_and_restarts_are_survived(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    await client.subscribe(CHANNEL, -2)
    create(sfstream_emulator, "1")
    received = await collect(client, 1)
    sfstream_emulator.expire_clients()
    create(sfstream_emulator, "2")
    received += await collect(client, 1)
    sfstream_emulator.restart()
    create(sfstream_emulator, "3")
    received += await collect(client, 1)
    assert names(received) == ["1", "2", "3"]
    assert client.stats.rehandshakes >= 2


async def test_reconnect_gap_expiry_is_survived(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    await client.subscribe(CHANNEL, -1)
    create(sfstream_emulator, "1")
    received = await collect(client, 1)
    # Forty emulated seconds of silence after a response: the server forgets the client.
    sfstream_emulator.advance(41)
    create(sfstream_emulator, "2")
    received += await collect(client, 1)
    assert names(received) == ["1", "2"]


async def test_seeded_chaos_loses_nothing(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    emu = sfstream_emulator
    await client.subscribe(CHANNEL, -1)
    await client.subscribe(EVENT_CHANNEL, -1)
    emu.faults.start_chaos(
        ChaosSettings(
            seed=3,
            drop=0.08,
            cut=0.08,
            http_503=0.08,
            stall=0.0,
            unknown_client=0.05,
            revoke_tokens=0.03,
            expire_clients=0.03,
        )
    )
    expected_accounts = [f"acct-{i}" for i in range(60)]
    expected_orders = [f"order-{i}" for i in range(60)]

    async def publish() -> None:
        for account, order in zip(expected_accounts, expected_orders, strict=True):
            create(emu, account)
            emu.publish_event("Order_Placed__e", {"Order_Number__c": order})
            await asyncio.sleep(0.01)

    publisher = asyncio.create_task(publish())
    items = await collect(client, 120, timeout_s=60.0)
    await publisher
    events = [i for i in items if isinstance(i, Event)]
    accounts = [e.data["payload"]["Name"] for e in events if e.channel == CHANNEL]
    orders = [e.data["payload"]["Order_Number__c"] for e in events if e.channel == EVENT_CHANNEL]
    assert accounts == expected_accounts
    assert orders == expected_orders
    assert sum(emu.faults.injected.values()) > 5
    assert client.stats.rehandshakes >= 1


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (ReplayPolicy.EARLIEST, ["kept-1", "kept-2", "new"]),
        (ReplayPolicy.LATEST, ["new"]),
    ],
)
async def test_expired_replay_id_falls_back_by_policy_with_a_gap(
    sfstream_emulator: Emulator,
    client: StreamingClient,
    policy: ReplayPolicy,
    expected: list[str],
) -> None:
    emu = sfstream_emulator
    create(emu, "expired")
    stale = emu.published(CHANNEL)[0]["data"]["event"]["replayId"]
    emu.advance(73 * 3600)
    create(emu, "kept-1", "kept-2")
    accepted = await client.subscribe(CHANNEL, stale, policy)
    assert accepted == (-2 if policy is ReplayPolicy.EARLIEST else -1)
    create(emu, "new")
    items = await collect(client, len(expected))
    (gap,) = [i for i in items if isinstance(i, Gap)]
    assert (gap.channel, gap.replay_id) == (CHANNEL, stale)
    assert names(items) == expected


async def test_expired_replay_id_with_fail_policy_raises_with_context(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    create(sfstream_emulator, "old")
    stale = sfstream_emulator.published(CHANNEL)[0]["data"]["event"]["replayId"]
    sfstream_emulator.advance(73 * 3600)
    with pytest.raises(InvalidReplayIdError) as info:
        await client.subscribe(CHANNEL, stale)
    assert info.value.channel == CHANNEL
    assert info.value.replay_id == stale
    assert "you provided was invalid" in (info.value.server_text or "")


async def test_a_bad_subscription_does_not_stop_the_others(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    await client.subscribe(CHANNEL, -1)
    with pytest.raises(ChannelNotFoundError) as info:
        await client.subscribe("/event/Nope__e", -1)
    assert info.value.channel == "/event/Nope__e"
    create(sfstream_emulator, "still-flowing")
    assert names(await collect(client, 1)) == ["still-flowing"]


async def test_a_subscription_lost_later_is_reported_in_the_stream(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    emu = sfstream_emulator
    await client.subscribe(CHANNEL, -1)
    await client.subscribe(EVENT_CHANNEL, -1)
    create(emu, "before")
    await collect(client, 1)
    emu.runtime.spec.restricted_channels.append(EVENT_CHANNEL)
    emu.expire_clients()
    create(emu, "after")
    items = await collect(client, 1)
    lost = [i for i in items if isinstance(i, SubscriptionLost)]
    assert [(i.channel, i.error.server_text) for i in lost] == [
        (EVENT_CHANNEL, "403::Restricted channel")
    ]
    assert names(items) == ["after"]


async def test_allocation_exhaustion_ends_the_stream_with_a_terminal_error(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    await client.subscribe(CHANNEL, -1)
    allocation = sfstream_emulator.runtime.allocations.event_deliveries
    allocation.maximum = allocation.used + 1
    create(sfstream_emulator, "last", "over")
    with pytest.raises(AllocationExceededError):
        await collect(client, 2)


async def test_bad_refresh_token_is_terminal_with_advice(sfstream_emulator: Emulator) -> None:
    creds = credentials(sfstream_emulator, refresh_token=SecretStr("not-the-token"))
    with pytest.raises(AuthenticationError, match="Re-authorize the connected app") as info:
        async with StreamingClient(creds, FAST):
            pass
    assert "not-the-token" not in str(info.value)


async def test_revoked_refresh_token_mid_stream_is_terminal(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    await client.subscribe(CHANNEL, -1)
    sfstream_emulator.revoke_refresh_tokens()
    create(sfstream_emulator, "x")
    with pytest.raises(AuthenticationError):
        await collect(client, 5)


async def test_slow_consumer_applies_backpressure_and_loses_nothing(
    sfstream_emulator: Emulator,
) -> None:
    emu = sfstream_emulator
    settings = ClientSettings(
        max_pending_events=5,
        backoff_base_s=0.05,
        backoff_cap_s=0.2,
        network_margin_s=1.0,
        request_timeout_s=2.0,
    )
    async with StreamingClient(credentials(emu), settings) as slow:
        await slow.subscribe(CHANNEL, -1)
        emu.generate("Account", 40, 64)
        await asyncio.sleep(0.3)
        assert slow.queue_depth < 5 + 40  # polling paused once the queue was full
        # The consumer stalls past the reconnect window: the server forgets the client.
        emu.advance(41)
        items = await collect(slow, 40)
    ids = replay_ids(items)
    assert ids == [m["data"]["event"]["replayId"] for m in emu.published(CHANNEL)]
    assert slow.stats.backpressure_waits >= 1


async def test_unsubscribe_stops_delivery(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    await client.subscribe(CHANNEL, -1)
    await client.subscribe(EVENT_CHANNEL, -1)
    await client.unsubscribe(CHANNEL)
    await asyncio.sleep(0.1)
    create(sfstream_emulator, "ignored")
    sfstream_emulator.publish_event("Order_Placed__e", {"Order_Number__c": "kept"})
    items = await collect(client, 1)
    assert [i.channel for i in items if isinstance(i, Event)] == [EVENT_CHANNEL]


async def test_close_sends_disconnect(sfstream_emulator: Emulator) -> None:
    async with StreamingClient(credentials(sfstream_emulator), FAST) as streaming:
        await streaming.subscribe(CHANNEL, -1)
        assert len(sfstream_emulator.cometd.sessions) == 1
    assert sfstream_emulator.cometd.sessions == {}
