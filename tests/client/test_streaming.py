"""StreamingClient against the emulator: every fault ends with every event delivered once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from pydantic import SecretStr
from structlog.testing import capture_logs

from sfstream.auth import OAuthCredentials
from sfstream.bayeux import Event, Gap, ReplayPolicy, SubscriptionLost
from sfstream.client import ClientSettings, StreamingClient
from sfstream.errors import (
    AllocationExceededError,
    AllSubscriptionsLostError,
    AuthenticationError,
    ChannelNotFoundError,
    InvalidReplayIdError,
    ProtocolError,
)
from sfstream_emulator import ChaosSettings, Emulator, EmulatorSettings, Fault, FaultKind
from tests.client.proxy import RewritingProxy

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


async def drain(client: StreamingClient, items: list[Any], timeout_s: float = 15.0) -> None:
    """Append every item to `items` until the iteration ends (raising what it raises)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                item = await anext(client)
            except StopAsyncIteration:
                return
            items.append(item)  # kept even when the next read raises


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


async def test_allocation_exhaustion_without_probing_ends_the_stream_with_a_terminal_error(
    sfstream_emulator: Emulator,
) -> None:
    settings = msgspec.structs.replace(FAST, allocation_probe_s=None)
    async with StreamingClient(credentials(sfstream_emulator), settings) as client:
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


# -- retries back off on one schedule -------------------------------------------------------


async def test_token_refresh_failures_back_off_on_the_session_schedule(
    sfstream_emulator: Emulator,
) -> None:
    emu = sfstream_emulator
    settings = ClientSettings(
        backoff_base_s=0.05, backoff_cap_s=0.4, network_margin_s=1.0, request_timeout_s=2.0
    )
    async with StreamingClient(credentials(emu), settings, rng=random.Random(4)) as client:
        await client.subscribe(CHANNEL, -1)
        create(emu, "before")
        received = await collect(client, 1)
        # The token is revoked and the token endpoint is down for a while.
        emu.faults.add(Fault(kind=FaultKind.HTTP_503, target="oauth", count=5))
        with capture_logs() as logs:
            emu.revoke_access_tokens()
            create(emu, "after")
            received += await collect(client, 1)
    assert names(received) == ["before", "after"]
    assert client.stats.token_refresh_failures == 5
    waits = [e["retry_in_s"] for e in logs if e["event"] == "token_refresh_failed"]
    assert len(waits) == 5
    assert all(0 <= w <= 0.4 for w in waits)
    assert len(set(waits)) > 1, "jittered, never a fixed pace"


class TopOfRange(random.Random):
    """Jitter that always picks the top of its range."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_close_does_not_wait_for_a_token_refresh_backoff(
    sfstream_emulator: Emulator,
) -> None:
    emu = sfstream_emulator
    settings = ClientSettings(
        backoff_base_s=20.0, backoff_cap_s=60.0, network_margin_s=1.0, request_timeout_s=2.0
    )
    client = StreamingClient(credentials(emu), settings, rng=TopOfRange())
    await client.open()
    try:
        await client.subscribe(CHANNEL, -1)
        emu.faults.add(Fault(kind=FaultKind.HTTP_503, target="oauth", count=10))
        with capture_logs() as logs:
            emu.revoke_access_tokens()
            create(emu, "x")  # the held connect returns, the next one meets the revoked token
            async with asyncio.timeout(10):
                while not any(e["event"] == "reauthenticating" for e in logs):
                    await asyncio.sleep(0.05)
    finally:
        started = asyncio.get_running_loop().time()
        await client.close()
        took = asyncio.get_running_loop().time() - started
    (reauth,) = [e for e in logs if e["event"] == "reauthenticating"]
    assert reauth["delay_s"] == 20.0, "the refresh waits on the retry schedule"
    assert took < 2.0, f"close waited {took:.1f} s for a backoff"


# -- a -1 stream across a re-handshake before its first event --------------------------------


def _label(kind: str, item: Event) -> str:
    data = item.data
    if kind == "cdc":
        return str(data["payload"]["Name"])
    if kind == "platform_event":
        return str(data["payload"]["Order_Number__c"])
    if kind == "push_topic":
        return str(data["sobject"]["Name"])
    return str(data["payload"])


def _publish(emu: Emulator, kind: str, label: str) -> None:
    if kind == "cdc":
        emu.create_record("Account", {"Name": label})
    elif kind == "platform_event":
        emu.publish_event("Order_Placed__e", {"Order_Number__c": label})
    elif kind == "push_topic":
        emu.create_record(
            "Opportunity",
            {
                "Name": label,
                "Amount": 250000,
                "StageName": "Prospecting",
                "CloseDate": "2030-01-01",
            },
        )
    else:
        emu.push("/u/Notifications", label)


LATEST_KINDS = {
    "cdc": CHANNEL,  # payload.ChangeEventHeader.commitTimestamp
    "platform_event": EVENT_CHANNEL,  # payload.CreatedDate
    "push_topic": "/topic/HighValueDeals",  # event.createdDate
    "generic": "/u/Notifications",  # event.createdDate
}


@pytest.mark.parametrize("kind", list(LATEST_KINDS))
async def test_a_latest_stream_loses_nothing_across_a_rehandshake_before_its_first_event(
    sfstream_emulator: Emulator, kind: str
) -> None:
    emu = sfstream_emulator
    channel = LATEST_KINDS[kind]
    _publish(emu, kind, "before-1")
    _publish(emu, kind, "before-2")
    emu.advance(600)  # the events above are ten minutes older than the subscribe
    async with StreamingClient(
        credentials(emu), FAST, rng=random.Random(2), wall_clock=emu.clock.now
    ) as client:
        assert await client.subscribe(channel, -1) == -1
        # Nothing arrives; the server forgets the client, and events are published before
        # it comes back: a resubscribe at -1 would skip them.
        emu.expire_clients()
        _publish(emu, kind, "during-1")
        _publish(emu, kind, "during-2")
        items = await collect(client, 2, timeout_s=10.0)
        _publish(emu, kind, "after")
        items += await collect(client, 1, timeout_s=10.0)
        # Once the stream has delivered an event, it resumes by replayId again.
        emu.expire_clients()
        _publish(emu, kind, "later")
        items += await collect(client, 1, timeout_s=10.0)
    events = [i for i in items if isinstance(i, Event)]
    assert [_label(kind, e) for e in events] == ["during-1", "during-2", "after", "later"]
    assert [e.replay_id for e in events] == [
        m["data"]["event"]["replayId"] for m in emu.published(channel)[2:]
    ]
    assert client.stats.replay_skipped == 2
    assert client.stats.rehandshakes >= 2


# -- corrupt events --------------------------------------------------------------------------

CORRUPTIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "string": lambda e: e.update(replayId=str(e["replayId"])),
    "float": lambda e: e.update(replayId=float(e["replayId"])),
    "huge-float": lambda e: e.update(replayId=1e300),
    "minus-one": lambda e: e.update(replayId=-1),
    "two-to-the-63": lambda e: e.update(replayId=2**63),
    "bool": lambda e: e.update(replayId=True),
    "null": lambda e: e.update(replayId=None),
    "missing": lambda e: e.pop("replayId"),
}


@dataclass
class Corrupter:
    """Rewrites the replayId of the event named `marker` on `channel` (`times` times, or
    always when None), and notes what followed it on the channel in the same response."""

    channel: str
    marker: str
    corrupt: Callable[[dict[str, Any]], None]
    times: int | None = 1
    done: int = 0
    followers: list[list[str]] = field(default_factory=list)

    def __call__(self, messages: list[Any]) -> list[Any]:
        if not isinstance(messages, list):
            return messages
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("channel") != self.channel:
                continue
            data = message["data"]
            if data["payload"].get("Name") != self.marker:
                continue
            if self.times is not None and self.done >= self.times:
                continue
            self.done += 1
            self.corrupt(data["event"])
            self.followers.append(
                [
                    m["data"]["payload"].get("Name")
                    for m in messages[index + 1 :]
                    if m.get("channel") == self.channel
                ]
            )
        return messages


@pytest.mark.parametrize("variant", list(CORRUPTIONS))
async def test_a_corrupt_event_is_never_delivered_and_its_stream_resumes_before_it(
    sfstream_emulator: Emulator, variant: str
) -> None:
    emu = sfstream_emulator
    corrupter = Corrupter(CHANNEL, "poison", CORRUPTIONS[variant])
    async with RewritingProxy(emu.url, corrupter) as proxy:
        creds = credentials(emu, login_url=proxy.url)
        async with StreamingClient(creds, FAST, rng=random.Random(3)) as client:
            await client.subscribe(CHANNEL, -1)
            create(emu, "before")
            items = await collect(client, 1)
            with capture_logs() as logs:
                create(emu, "good-1", "poison", "good-2")  # one /meta/connect response
                items += await collect(client, 3)
    assert corrupter.done == 1
    assert corrupter.followers == [["good-2"]], "the event after it came in the same response"
    # The corrupt copy never became an event; the event itself came again, in its place.
    assert names(items) == ["before", "good-1", "poison", "good-2"]
    assert replay_ids(items) == [m["data"]["event"]["replayId"] for m in emu.published(CHANNEL)]
    assert client.stats.protocol_errors == 1
    assert client.stats.rehandshakes >= 1
    (logged,) = [e for e in logs if e["event"] == "protocol_error"]
    assert logged["channel"] == CHANNEL
    assert (
        logged["value_type"]
        == {
            "string": "str",
            "float": "float",
            "huge-float": "float",
            "minus-one": "int",
            "two-to-the-63": "int",
            "bool": "bool",
            "null": "null",
            "missing": "missing",
        }[variant]
    )
    assert "poison" not in repr(logged), "the payload stays out of the logs"


async def test_an_event_corrupt_every_time_ends_its_subscription_not_the_others(
    sfstream_emulator: Emulator,
) -> None:
    emu = sfstream_emulator
    settings = msgspec.structs.replace(FAST, protocol_error_limit=3)
    corrupter = Corrupter(CHANNEL, "poison", CORRUPTIONS["string"], times=None)
    async with RewritingProxy(emu.url, corrupter) as proxy:
        creds = credentials(emu, login_url=proxy.url)
        async with StreamingClient(creds, settings, rng=random.Random(3)) as client:
            await client.subscribe(CHANNEL, -1)
            await client.subscribe(EVENT_CHANNEL, -1)
            with capture_logs() as logs:
                create(emu, "good", "poison", "never")
                items: list[Any] = []
                async with asyncio.timeout(15):
                    async for item in client:
                        items.append(item)
                        if isinstance(item, SubscriptionLost):
                            break
            emu.publish_event("Order_Placed__e", {"Order_Number__c": "still-flowing"})
            items += await collect(client, 1)
    (lost,) = [i for i in items if isinstance(i, SubscriptionLost)]
    assert lost.channel == CHANNEL
    assert isinstance(lost.error, ProtocolError)
    assert lost.error.replay_id == emu.published(CHANNEL)[0]["data"]["event"]["replayId"]
    events = [i for i in items if isinstance(i, Event)]
    assert [e.data["payload"].get("Name") for e in events if e.channel == CHANNEL] == ["good"]
    assert [e.channel for e in events][-1] == EVENT_CHANNEL
    assert corrupter.done == 3
    assert client.stats.protocol_errors == 3
    # It did not spin: each attempt waited on the backoff schedule first.
    waits = [e["delay_s"] for e in logs if e["event"] == "reconnecting"]
    assert len(waits) >= 2
    assert all(0 <= w <= FAST.backoff_cap_s for w in waits)


async def test_when_the_only_subscription_is_lost_to_corrupt_events_the_client_ends(
    sfstream_emulator: Emulator,
) -> None:
    emu = sfstream_emulator
    settings = msgspec.structs.replace(FAST, protocol_error_limit=2)
    corrupter = Corrupter(CHANNEL, "poison", CORRUPTIONS["two-to-the-63"], times=None)
    items: list[Any] = []
    async with RewritingProxy(emu.url, corrupter) as proxy:
        creds = credentials(emu, login_url=proxy.url)
        async with StreamingClient(creds, settings, rng=random.Random(3)) as client:
            await client.subscribe(CHANNEL, -1)
            create(emu, "poison")
            with pytest.raises(AllSubscriptionsLostError):
                await drain(client, items)
            assert emu.cometd.sessions == {}, "the client disconnected"
    assert [type(i) for i in items] == [SubscriptionLost]
    assert isinstance(items[0].error, ProtocolError)


# -- nothing left to stream ------------------------------------------------------------------


async def test_a_client_whose_every_subscription_is_refused_disconnects_and_ends(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    emu = sfstream_emulator
    await client.subscribe("/event/Nope__e", -1, wait=False)
    await client.subscribe("/topic/Nope", -1, wait=False)
    items: list[Any] = []
    with pytest.raises(AllSubscriptionsLostError, match="nothing left to stream"):
        await drain(client, items, 10.0)
    assert sorted(i.channel for i in items if isinstance(i, SubscriptionLost)) == [
        "/event/Nope__e",
        "/topic/Nope",
    ]
    assert all(isinstance(i.error, ChannelNotFoundError) for i in items)
    assert emu.cometd.sessions == {}, "the client sent /meta/disconnect"
    with pytest.raises(AllSubscriptionsLostError):
        await client.subscribe(CHANNEL, -1)


async def test_a_client_whose_last_subscription_is_lost_after_a_rehandshake_ends(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    emu = sfstream_emulator
    create(emu, "old")
    stored = emu.published(CHANNEL)[0]["data"]["event"]["replayId"]
    await client.subscribe(CHANNEL, stored)  # policy fail
    clients_before = emu.status()["clients"]
    assert clients_before == 1
    emu.advance(73 * 3600)  # the stored replayId leaves the retention window
    emu.expire_clients()  # and the resubscribe offers it again
    items: list[Any] = []
    with pytest.raises(AllSubscriptionsLostError):
        await drain(client, items, 10.0)
    (lost,) = items
    assert isinstance(lost, SubscriptionLost)
    assert isinstance(lost.error, InvalidReplayIdError)
    assert emu.status()["clients"] == 0


async def test_a_refusal_raised_by_subscribe_leaves_the_client_open_for_others(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    with pytest.raises(ChannelNotFoundError):
        await client.subscribe("/event/Nope__e", -1)
    await asyncio.sleep(0.3)
    assert await client.subscribe(CHANNEL, -1) == -1
    create(sfstream_emulator, "flowing")
    assert names(await collect(client, 1)) == ["flowing"]


async def test_a_client_without_subscriptions_stays_open_until_it_subscribes(
    sfstream_emulator: Emulator, client: StreamingClient
) -> None:
    await asyncio.sleep(2.5)  # more than one empty long poll
    assert sfstream_emulator.status()["clients"] == 1
    await client.subscribe(EVENT_CHANNEL, -1)
    await client.unsubscribe(EVENT_CHANNEL)
    await asyncio.sleep(0.3)
    assert sfstream_emulator.status()["clients"] == 1, "unsubscribing is not losing"
    await client.subscribe(CHANNEL, -1)
    create(sfstream_emulator, "late")
    assert names(await collect(client, 1)) == ["late"]
