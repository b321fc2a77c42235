"""The org's event allocations, read from `/limits`, exported and watched.

`GET /services/data/vXX.X/limits` answers one object per limit, `{"Max": n, "Remaining": n}`
(REST API Developer Guide, "Limits"). The ones about events, by Salesforce's names:

| name | counts |
|---|---|
| `DailyDeliveredPlatformEvents` | high-volume platform and change events delivered |
| `MonthlyPlatformEventsUsageEntitlement` | the same, against the add-on's monthly entitlement |
| `DailyStandardVolumePlatformEvents` | standard-volume platform events delivered |
| `DailyStreamingApiEvents` (`DailyDurable...`) | PushTopic events delivered |
| `DailyGenericStreamingApiEvents` (`DailyDurable...`) | generic streaming events delivered |
| `HourlyPublishedPlatformEvents` | platform events published (not a delivery allocation) |

Deliveries are counted per subscribed CometD client (1,000 events to 2 clients: 2,000).

When a delivery allocation is spent, `/meta/connect` and `/meta/subscribe` answer
`403::Organization total events daily limit exceeded` (Platform Event Allocations; Streaming
API Developer Guide, "PushTopic Streaming Allocations"); the client then waits for it to
recover (`sfstream.client.ClientSettings.allocation_probe_s`). Salesforce reports the
figures "within five minutes of resource consumption": the poller reads them every
`runtime.limits_interval_s` (300 s by default), not faster.

`LimitsPoller` reads them at start and then every interval, hands them to the telemetry
(the `sfstream_allocation_remaining{name}` and `sfstream_allocation_max{name}` gauges),
logs an `allocation` line per allocation, and warns (`allocation_low`) once when a delivery
allocation passes 80% used and once more at 95%. A failed read is logged
(`allocation_read_failed`) and tried again at the next interval: it never ends the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import msgspec
import structlog

from sfstream.errors import ProtocolError, SfStreamError
from sfstream.observability.telemetry import Telemetry

log = structlog.get_logger("sfstream.limits")

DELIVERY_ALLOCATIONS: Final = (
    "DailyDeliveredPlatformEvents",
    "MonthlyPlatformEventsUsageEntitlement",
    "DailyStandardVolumePlatformEvents",
    "DailyStreamingApiEvents",
    "DailyDurableStreamingApiEvents",
    "DailyGenericStreamingApiEvents",
    "DailyDurableGenericStreamingApiEvents",
)
"""Deliveries to CometD clients: running out of one stops streaming."""
PUBLISHING_ALLOCATIONS: Final = ("HourlyPublishedPlatformEvents",)
"""Publications: exported for context, never warned about (the connector publishes nothing)."""
EVENT_ALLOCATIONS: Final = DELIVERY_ALLOCATIONS + PUBLISHING_ALLOCATIONS
"""Every allocation the connector exports, in this order."""
LOW_THRESHOLDS: Final = (0.80, 0.95)
"""Fractions used at which `allocation_low` is logged, once each."""


class Allocation(msgspec.Struct, frozen=True):
    """One limit of `/limits`: its name, `Max` and `Remaining`."""

    name: str
    maximum: int
    remaining: int

    @property
    def used(self) -> int:
        return max(self.maximum - self.remaining, 0)

    @property
    def fraction_used(self) -> float:
        """0.0 to 1.0; 0.0 for an allocation of 0 with nothing left to spend of it."""
        return self.used / self.maximum if self.maximum > 0 else 0.0


class LimitsSource(Protocol):
    """What the poller reads (`sfstream.salesforce.rest.RestClient` is one)."""

    async def limits(self) -> dict[str, Any]: ...


def parse_limits(body: Mapping[str, Any]) -> dict[str, Allocation]:
    """Every limit of a `/limits` answer that has integer `Max` and `Remaining`.

    Raises:
        ProtocolError: the answer is not an object of limits.
    """
    if not isinstance(body, Mapping):
        raise ProtocolError("the /limits answer is not an object")
    limits: dict[str, Allocation] = {}
    for name, value in body.items():
        if not isinstance(value, Mapping):
            continue
        maximum, remaining = value.get("Max"), value.get("Remaining")
        if (
            isinstance(maximum, int)
            and isinstance(remaining, int)
            and not isinstance(maximum, bool)
            and not isinstance(remaining, bool)
        ):
            limits[str(name)] = Allocation(str(name), maximum, remaining)
    return limits


def event_allocations(limits: Mapping[str, Allocation]) -> list[Allocation]:
    """The event allocations among `limits`, in `EVENT_ALLOCATIONS` order (an org lacks
    some: `MonthlyPlatformEventsUsageEntitlement` exists only with the add-on)."""
    return [limits[name] for name in EVENT_ALLOCATIONS if name in limits]


async def read_allocations(source: LimitsSource) -> list[Allocation]:
    """The org's event allocations now."""
    return event_allocations(parse_limits(await source.limits()))


class LowWatch:
    """Which `allocation_low` warnings are due: each threshold once per allocation, again
    only after the allocation has recovered below the lowest threshold (a new day).

    Pure: fed the allocations read, it returns the (allocation, threshold) pairs to warn of.
    """

    def __init__(self, thresholds: Sequence[float] = LOW_THRESHOLDS) -> None:
        self.thresholds = tuple(sorted(thresholds))
        self._passed: dict[str, float] = {}

    def update(self, allocations: Iterable[Allocation]) -> list[tuple[Allocation, float]]:
        due: list[tuple[Allocation, float]] = []
        for allocation in allocations:
            if allocation.name not in DELIVERY_ALLOCATIONS:
                continue
            used = allocation.fraction_used
            reached = [t for t in self.thresholds if used >= t]
            passed = self._passed.get(allocation.name, 0.0)
            if not reached:
                self._passed.pop(allocation.name, None)  # recovered: warn again next time
                continue
            highest = reached[-1]
            if highest > passed:
                self._passed[allocation.name] = highest
                due.append((allocation, highest))
        return due


class LimitsPoller:
    """Reads the event allocations at start and every `interval_s`, for as long as it runs.

    Args:
        source: where `/limits` is read (the run's REST client).
        telemetry: where the figures go (the gauges read them).
        interval_s: time between two reads (`runtime.limits_interval_s`).
        thresholds: the fractions used that trigger `allocation_low`.
    """

    def __init__(
        self,
        source: LimitsSource,
        telemetry: Telemetry,
        interval_s: float,
        *,
        thresholds: Sequence[float] = LOW_THRESHOLDS,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.source = source
        self.telemetry = telemetry
        self.interval_s = interval_s
        self.watch = LowWatch(thresholds)
        self.reads = 0
        self.failures = 0

    async def poll_once(self) -> list[Allocation] | None:
        """Read, export and log the allocations once; None (logged) if the read failed."""
        try:
            allocations = await read_allocations(self.source)
        except SfStreamError as exc:
            self.failures += 1
            self.telemetry.error(exc)
            log.warning(
                "allocation_read_failed",
                error=str(exc),
                error_class=type(exc).__name__,
                retry_in_s=self.interval_s,
            )
            return None
        self.reads += 1
        self.telemetry.allocations_read({a.name: (a.maximum, a.remaining) for a in allocations})
        for allocation in allocations:
            log.info(
                "allocation",
                name=allocation.name,
                used=allocation.used,
                max=allocation.maximum,
                remaining=allocation.remaining,
            )
        for allocation, threshold in self.watch.update(allocations):
            log.warning(
                "allocation_low",
                name=allocation.name,
                used=allocation.used,
                max=allocation.maximum,
                percent_used=round(allocation.fraction_used * 100, 1),
                threshold_percent=round(threshold * 100),
            )
        return allocations

    async def run(self) -> None:
        """Poll until cancelled; never raises anything else."""
        while True:
            try:
                await self.poll_once()
            except Exception:
                # A bug here must not end the run it only watches; the next read may pass.
                self.failures += 1
                log.exception("allocation_read_failed", retry_in_s=self.interval_s)
            await asyncio.sleep(self.interval_s)
