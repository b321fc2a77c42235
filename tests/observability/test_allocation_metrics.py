"""The allocation gauges, `/healthz` and `/readyz` while an allocation is spent, and
`sfstream check`'s allocation lines."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from sfstream.observability.metrics import RunCollector, health, readiness
from sfstream.observability.telemetry import Telemetry
from sfstream_emulator import Emulator
from tests.cli.test_check import sfstream
from tests.conftest import MakeConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scrape(telemetry: Telemetry) -> str:
    registry = CollectorRegistry()
    registry.register(RunCollector(telemetry, lambda: None))
    return generate_latest(registry).decode()


def test_the_gauges_carry_the_allocations_last_read() -> None:
    telemetry = Telemetry()
    assert "sfstream_allocation_remaining{" not in scrape(telemetry)
    telemetry.allocations_read({"DailyDeliveredPlatformEvents": (10_000, 9_120)})
    text = scrape(telemetry)
    assert 'sfstream_allocation_remaining{name="DailyDeliveredPlatformEvents"} 9120.0' in text
    assert 'sfstream_allocation_max{name="DailyDeliveredPlatformEvents"} 10000.0' in text
    telemetry.allocations_read({"DailyDeliveredPlatformEvents": (10_000, 10)})
    assert 'sfstream_allocation_remaining{name="DailyDeliveredPlatformEvents"} 10.0' in (
        scrape(telemetry)
    )


def test_waiting_for_a_spent_allocation_is_alive_but_not_ready() -> None:
    clock = Clock()
    telemetry = Telemetry(clock)
    telemetry.session_started()
    telemetry.connect_timeout_s = 125.0
    telemetry.handshake()
    telemetry.channel_up("/data/AccountChangeEvent")
    telemetry.round_trip()
    assert readiness(telemetry)[0]
    telemetry.allocation_exhausted(probe_at=clock.now + 3600)
    telemetry.channel_down("/data/AccountChangeEvent")
    clock.now += 3000  # far past a connect timeout: nothing is sent, on purpose
    alive, body = health(telemetry, 30.0)
    assert alive
    assert body["allocation_exhausted"] is True
    assert body["probe_in_s"] == 600.0
    ready, body = readiness(telemetry)
    assert not ready
    assert body["allocation_exhausted"] is True
    # A probe that never comes back is a stall, judged like a connect.
    clock.now += 600 + 125 + 31
    assert not health(telemetry, 30.0)[0]
    telemetry.allocation_restored()
    telemetry.round_trip()
    telemetry.channel_up("/data/AccountChangeEvent")
    assert health(telemetry, 30.0)[0]
    assert readiness(telemetry)[0]


async def test_check_prints_each_allocation(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    emu.set_allocation("events", 10_000)
    emu.runtime.allocations.event_deliveries.spend(880)
    await make_config(emu)
    code, out, err = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 0, out + err
    assert "ok    allocation DailyDeliveredPlatformEvents: 9,120 of 10,000 left" in out
    assert "ok    allocation DailyStreamingApiEvents:" in out

    emu.set_allocation("events", exhaust=True)
    code, out, err = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 1, out + err
    assert (
        "FAIL  allocation DailyDeliveredPlatformEvents: 0 of 880 left: spent, streaming waits "
        "until it recovers"
    ) in out
