"""Event allocations: reading `/limits`, the poller's warnings, and the client's wait for a
spent daily delivery allocation (against the emulator)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from pydantic import SecretStr
from structlog.testing import capture_logs

from sfstream.auth import OAuthCredentials, TokenProvider
from sfstream.bayeux import Event, Recovering, RequestKind, Session
from sfstream.bayeux.messages import decode
from sfstream.bayeux.types import Phase
from sfstream.client import ClientSettings, StreamingClient
from sfstream.errors import AllocationExceededError, TransportError
from sfstream.observability.telemetry import Telemetry
from sfstream.salesforce.limits import (
    Allocation,
    LimitsPoller,
    LowWatch,
    event_allocations,
    parse_limits,
)
from sfstream.salesforce.rest import RestClient
from sfstream_emulator import Emulator, EmulatorSettings

CHANNEL = "/data/AccountChangeEvent"
DAILY_LIMIT = "403::Organization total events daily limit exceeded"
DELIVERED = "DailyDeliveredPlatformEvents"


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=7)


def credentials(emu: Emulator) -> OAuthCredentials:
    c = emu.credentials
    return OAuthCredentials(
        login_url=emu.url,
        client_id=c["client_id"],
        client_secret=SecretStr(c["client_secret"]),
        refresh_token=SecretStr(c["refresh_token"]),
    )


@pytest_asyncio.fixture
async def rest(sfstream_emulator: Emulator) -> AsyncIterator[RestClient]:
    async with aiohttp.ClientSession() as http:
        yield RestClient(http, TokenProvider(credentials(sfstream_emulator), http))


def client(emu: Emulator, probe_s: float | None = 0.5) -> StreamingClient:
    settings = ClientSettings(
        backoff_base_s=0.05,
        backoff_cap_s=0.2,
        network_margin_s=1.0,
        request_timeout_s=2.0,
        allocation_probe_s=probe_s,
    )
    return StreamingClient(credentials(emu), settings, rng=random.Random(1))


async def take(streaming: StreamingClient, count: int, timeout_s: float = 15.0) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(timeout_s):
        async for item in streaming:
            if isinstance(item, Event):
                events.append(item)
                if len(events) >= count:
                    return events
    return events


def create(emu: Emulator, *names: str) -> None:
    for name in names:
        emu.create_record("Account", {"Name": name})


# -- reading /limits ---------------------------------------------------------------------------


def test_parse_keeps_limits_with_integer_max_and_remaining() -> None:
    limits = parse_limits(
        {
            DELIVERED: {"Max": 10_000, "Remaining": 9_120},
            "DailyApiRequests": {"Max": 15_000, "Remaining": 14_000, "Ant Migration Tool": {}},
            "Odd": {"Max": "1", "Remaining": 1},
            "Flag": {"Max": True, "Remaining": 1},
            "Scalar": 3,
        }
    )
    assert set(limits) == {DELIVERED, "DailyApiRequests"}
    delivered = limits[DELIVERED]
    assert (delivered.used, delivered.maximum, delivered.remaining) == (880, 10_000, 9_120)
    assert [a.name for a in event_allocations(limits)] == [DELIVERED]


def test_low_warnings_fire_once_at_80_and_at_95_percent_then_again_after_a_reset() -> None:
    watch = LowWatch()

    def at(used: int) -> list[float]:
        return [t for _, t in watch.update([Allocation(DELIVERED, 100, 100 - used)])]

    assert at(50) == []
    assert at(80) == [0.80]
    assert at(85) == []
    assert at(96) == [0.95]
    assert at(100) == []
    assert at(3) == []  # a new day
    assert at(97) == [0.95]  # straight past both: one warning, the higher
    assert watch.update([Allocation("HourlyPublishedPlatformEvents", 10, 0)]) == []


async def test_rest_limits_reports_the_emulators_delivery_allocation(
    sfstream_emulator: Emulator, rest: RestClient
) -> None:
    sfstream_emulator.set_allocation("events", 10_000)
    limits = parse_limits(await rest.limits())
    assert limits[DELIVERED] == Allocation(DELIVERED, 10_000, 10_000)
    for name in ("DailyStreamingApiEvents", "HourlyPublishedPlatformEvents"):
        assert name in limits


# -- the poller --------------------------------------------------------------------------------


async def test_gauges_move_as_events_are_delivered_and_the_warning_fires_at_80_percent(
    sfstream_emulator: Emulator, rest: RestClient
) -> None:
    emu = sfstream_emulator
    emu.set_allocation("events", 10)
    telemetry = Telemetry()
    poller = LimitsPoller(rest, telemetry, interval_s=300)
    with capture_logs() as logs:
        await poller.poll_once()
    assert telemetry.allocations[DELIVERED] == (10, 10)
    assert next(e["name"] for e in logs if e["event"] == "allocation") == DELIVERED
    async with client(emu) as streaming:
        await streaming.subscribe(CHANNEL, -1)
        create(emu, *(f"a{i}" for i in range(8)))
        await take(streaming, 8)
    with capture_logs() as logs:
        await poller.poll_once()
        await poller.poll_once()  # still 80%: not again
    assert telemetry.allocations[DELIVERED] == (10, 2)
    low = [e for e in logs if e["event"] == "allocation_low" and e["name"] == DELIVERED]
    assert len(low) == 1
    assert low[0]["log_level"] == "warning"
    assert (low[0]["name"], low[0]["used"], low[0]["max"]) == (DELIVERED, 8, 10)


class _Flaky:
    """A `/limits` that fails once, then answers."""

    def __init__(self) -> None:
        self.calls = 0

    async def limits(self) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            raise TransportError("GET limits/: connection refused")
        return {DELIVERED: {"Max": 100, "Remaining": 100}}


async def test_a_failed_read_is_logged_and_tried_at_the_next_interval() -> None:
    source = _Flaky()
    telemetry = Telemetry()
    poller = LimitsPoller(source, telemetry, interval_s=0.05)
    with capture_logs() as logs:
        task = asyncio.create_task(poller.run())
        try:
            async with asyncio.timeout(5):
                while poller.reads < 1:
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert poller.failures == 1
    assert telemetry.allocations == {DELIVERED: (100, 100)}
    assert telemetry.errors == {("TransportError", True): 1}
    assert any(e["event"] == "allocation_read_failed" for e in logs)


# -- the session's policy (pure) ----------------------------------------------------------------


def _connected(probe_s: float | None) -> tuple[Session, Any]:
    s = Session(rng=random.Random(1), allocation_probe_s=probe_s)
    s.subscribe(CHANNEL, -1)
    (handshake,) = s.poll(0.0)
    s.receive(
        handshake,
        0.0,
        *decode(
            b'[{"channel":"/meta/handshake","successful":true,"clientId":"c1","id":"1",'
            b'"ext":{"replay":true}}]'
        ),
    )
    requests = s.poll(0.0)
    connect = next(r for r in requests if r.kind is RequestKind.CONNECT)
    subscribe = next(r for r in requests if r.kind is RequestKind.SUBSCRIBE)
    return s, (connect, subscribe)


def test_a_spent_allocation_waits_a_probe_interval_then_handshakes_again() -> None:
    s, (connect, subscribe) = _connected(probe_s=3600.0)
    body = (
        b'[{"channel":"/meta/subscribe","successful":false,"subscription":"%s","id":"%s",'
        b'"error":"%s"}]'
        % (CHANNEL.encode(), subscribe.messages[0]["id"].encode(), DAILY_LIMIT.encode())
    )
    step = s.receive(subscribe, 10.0, *decode(body))
    (notice,) = step.notices
    assert isinstance(notice, Recovering)
    assert isinstance(notice.error, AllocationExceededError)
    assert 3600.0 <= notice.delay_s <= 3960.0
    assert s.phase is Phase.WAITING
    assert s.next_deadline(10.0) == 10.0 + notice.delay_s
    # A farewell frees the client's slot; nothing else goes out until the probe.
    assert [r.kind for r in s.poll(11.0)] == [RequestKind.DISCONNECT]
    assert s.poll(3000.0) == []
    # The connect refused in the meantime is stale: no second wait.
    stale = (
        b'[{"channel":"/meta/connect","successful":false,"clientId":"c1","id":"%s",'
        b'"error":"%s"}]' % (connect.messages[0]["id"].encode(), DAILY_LIMIT.encode())
    )
    assert s.receive(connect, 12.0, *decode(stale)).notices == []
    (probe,) = s.poll(10.0 + notice.delay_s)
    assert probe.kind is RequestKind.HANDSHAKE


def test_without_a_probe_interval_a_spent_allocation_fails_the_session() -> None:
    s, (connect, _) = _connected(probe_s=None)
    body = (
        b'[{"channel":"/meta/connect","successful":false,"clientId":"c1","id":"%s",'
        b'"error":"%s"}]' % (connect.messages[0]["id"].encode(), DAILY_LIMIT.encode())
    )
    s.receive(connect, 1.0, *decode(body))
    assert s.phase is Phase.FAILED
    assert isinstance(s.failure, AllocationExceededError)


# -- the client against the emulator ------------------------------------------------------------


async def _backs_off_then_resumes(emu: Emulator, restore: str) -> None:
    allocation = emu.runtime.allocations.event_deliveries
    emu.set_allocation("events", allocation.used + 2)
    probe_s = 0.6
    async with client(emu, probe_s) as streaming:
        await streaming.subscribe(CHANNEL, -1)
        with capture_logs() as logs:
            create(emu, "one", "two", "three", "four")
            first = await take(streaming, 2)
            # The third event is refused: the client stops and waits for its probe.
            async with asyncio.timeout(10):
                while streaming.stats.allocation_waits < 1:
                    await asyncio.sleep(0.01)
            seen = emu.cometd.stats["requests"]
            await asyncio.sleep(probe_s * 2.5)  # two or three probes, each refused
            during = emu.cometd.stats["requests"] - seen
            waits = streaming.stats.allocation_waits
            assert streaming.telemetry.allocation_probe_at is not None
            assert not streaming.telemetry.ready()
            assert streaming.telemetry.alive()
            if restore == "clock":
                emu.advance(86_400)  # past the day: the allocation starts over
            else:
                emu.set_allocation("events", None)
            rest = await take(streaming, 2)
        assert streaming.telemetry.allocation_probe_in_s() is None
    # No retry storm: a probe is a handshake, a connect, a subscribe (and a farewell).
    assert 1 <= waits <= 4
    assert during <= 5 * waits, during
    assert [e.data["payload"]["Name"] for e in first + rest] == ["one", "two", "three", "four"]
    # Resumed from the last delivered replayId: nothing again, nothing skipped.
    ids = [e.replay_id or 0 for e in first + rest]
    assert ids == sorted(set(ids))
    exhausted = [e for e in logs if e["event"] == "allocation_exhausted"]
    assert exhausted
    assert exhausted[0]["error"] == DAILY_LIMIT
    assert {"probe_in_s", "probe_at"} <= set(exhausted[0])
    assert any(e["event"] == "allocation_restored" for e in logs)


async def test_a_spent_allocation_backs_off_and_resumes_after_the_day(
    sfstream_emulator: Emulator,
) -> None:
    await _backs_off_then_resumes(sfstream_emulator, "clock")


async def test_a_spent_allocation_resumes_when_it_is_raised(sfstream_emulator: Emulator) -> None:
    await _backs_off_then_resumes(sfstream_emulator, "control")
