"""The metrics and health endpoint of `sfstream run` (`observability.metrics_port`).

`/metrics` serves the Prometheus text format; `/healthz` and `/readyz` answer 200 or 503
with a JSON body that says why. The endpoint runs on the connector's event loop, so an
answer from it also proves the loop is not wedged.

The per-stream figures are read from the pipeline's counters when Prometheus scrapes (a
custom collector): the event path pays nothing for them. Only the two histograms are
observed as batches go by, once per batch.

| family | type | labels |
|---|---|---|
| `sfstream_events_received_total` | counter | stream |
| `sfstream_records_written_total` | counter | stream |
| `sfstream_duplicates_dropped_total` | counter | stream |
| `sfstream_errors_total` | counter | error, retryable |
| `sfstream_reconnects_total` | counter | reason |
| `sfstream_token_refreshes_total` | counter | |
| `sfstream_checkpoint_replay_id` | gauge | stream |
| `sfstream_last_event_timestamp_seconds` | gauge | stream |
| `sfstream_lag_seconds` | gauge | stream |
| `sfstream_subscription_up` | gauge | stream |
| `sfstream_gaps_total` | counter | stream, reason |
| `sfstream_schema_changes_total` | counter | stream |
| `sfstream_leases_held` | gauge | (with leases) |
| `sfstream_lease_takeovers_total` | counter | stream (with leases) |
| `sfstream_allocation_remaining` | gauge | name (Salesforce's `/limits` name) |
| `sfstream_allocation_max` | gauge | name |
| `sfstream_sink_write_seconds` | histogram | |
| `sfstream_checkpoint_commit_seconds` | histogram | |

plus `prometheus_client`'s process, platform and garbage-collector collectors.

Needs the `metrics` extra (`pip install 'sfstream[metrics]'`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sfstream.errors import ConfigError
from sfstream.observability.telemetry import CONNECT_GRACE_S, Telemetry

if TYPE_CHECKING:
    from sfstream.engine.pipeline import Pipeline

log = structlog.get_logger("sfstream.metrics")

_TIMING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
"""Seconds: a local fsync takes a millisecond, a remote store tens."""


class RunCollector(Collector):
    """The run's figures, read from the telemetry and the current pipeline at each scrape.

    Args:
        telemetry: the connector's telemetry.
        pipeline: the current pipeline (None before the connector has started).
        wall_clock: epoch seconds, for the lag.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        pipeline: Callable[[], Pipeline | None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.telemetry = telemetry
        self.pipeline = pipeline
        self.wall_clock = wall_clock

    def collect(self) -> Iterator[Metric]:
        telemetry = self.telemetry
        pipeline = self.pipeline()
        stream_label = ["stream"]
        received = CounterMetricFamily(
            "sfstream_events_received", "Events taken off the wire.", labels=stream_label
        )
        written = CounterMetricFamily(
            "sfstream_records_written",
            "Records the sink accepted durably.",
            labels=stream_label,
        )
        duplicates = CounterMetricFamily(
            "sfstream_duplicates_dropped",
            "Events dropped because their replayId was already delivered.",
            labels=stream_label,
        )
        checkpoint = GaugeMetricFamily(
            "sfstream_checkpoint_replay_id", "Last committed replayId.", labels=stream_label
        )
        last_event = GaugeMetricFamily(
            "sfstream_last_event_timestamp_seconds",
            "Event time (Salesforce's) of the last record written, in epoch seconds.",
            labels=stream_label,
        )
        lag = GaugeMetricFamily(
            "sfstream_lag_seconds",
            "Now minus the event time of the last record written.",
            labels=stream_label,
        )
        up = GaugeMetricFamily(
            "sfstream_subscription_up", "1 while the stream is subscribed.", labels=stream_label
        )
        schema_changes = CounterMetricFamily(
            "sfstream_schema_changes",
            "New schema versions seen while streaming.",
            labels=stream_label,
        )
        gaps = CounterMetricFamily(
            "sfstream_gaps",
            "GAP messages (replayId rejected, operator overrides) and gap change events.",
            labels=["stream", "reason"],
        )
        tokens = CounterMetricFamily(
            "sfstream_token_refreshes", "Access tokens obtained (the login and every refresh)."
        )
        now = self.wall_clock()
        refreshes = 0
        if pipeline is not None:
            refreshes = pipeline.client.token_refreshes
            for spec in pipeline.specs.values():
                stats = pipeline.stats[spec.id]
                labels = [spec.id]
                received.add_metric(labels, stats.received)
                written.add_metric(labels, stats.written)
                duplicates.add_metric(labels, stats.deduplicated)
                if stats.checkpoint is not None:
                    checkpoint.add_metric(labels, stats.checkpoint)
                event_time = stats.last_written_time
                if event_time is not None:
                    last_event.add_metric(labels, event_time)
                    lag.add_metric(labels, max(0.0, now - event_time))
                up.add_metric(labels, 1.0 if telemetry.subscribed.get(spec.channel) else 0.0)
                schema_changes.add_metric(labels, telemetry.schema_changes.get(spec.id, 0))
        for (stream, reason), count in sorted(telemetry.gaps.items()):
            gaps.add_metric([stream, reason], count)
        tokens.add_metric([], refreshes)
        errors = CounterMetricFamily(
            "sfstream_errors",
            "Classified errors, by class and whether they are retryable.",
            labels=["error", "retryable"],
        )
        for (name, retryable), count in sorted(telemetry.errors.items()):
            errors.add_metric([name, "true" if retryable else "false"], count)
        reconnects = CounterMetricFamily(
            "sfstream_reconnects",
            "Sessions started over (re-handshakes and reconnects), by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(telemetry.reconnects.items()):
            reconnects.add_metric([reason], count)
        yield from (received, written, duplicates, errors, reconnects, tokens, checkpoint)
        yield from (last_event, lag, up, gaps, schema_changes)
        if telemetry.leased:
            held = GaugeMetricFamily(
                "sfstream_leases_held", "Stream leases this worker holds (consumes) now."
            )
            held.add_metric([], telemetry.leases_held)
            takeovers = CounterMetricFamily(
                "sfstream_lease_takeovers",
                "Leases this worker took from another worker that let them expire.",
                labels=stream_label,
            )
            for stream, count in sorted(telemetry.lease_takeovers.items()):
                takeovers.add_metric([stream], count)
            yield from (held, takeovers)
        yield from _allocations(telemetry)


def _allocations(telemetry: Telemetry) -> Iterator[Metric]:
    """The event allocations last read from `/limits` (`runtime.limits_interval_s`)."""
    remaining = GaugeMetricFamily(
        "sfstream_allocation_remaining",
        "What is left of an event allocation, as /limits last reported it.",
        labels=["name"],
    )
    maximum = GaugeMetricFamily(
        "sfstream_allocation_max",
        "The size of an event allocation, as /limits last reported it.",
        labels=["name"],
    )
    for name, (top, left) in sorted(telemetry.allocations.items()):
        remaining.add_metric([name], left)
        maximum.add_metric([name], top)
    yield from (remaining, maximum)


class Metrics:
    """The registry of one process's run: the collector, the histograms, and the library's
    process collectors."""

    def __init__(self, telemetry: Telemetry, pipeline: Callable[[], Pipeline | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(RunCollector(telemetry, pipeline))
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(_Forward(collector))
        self.sink_write = Histogram(
            "sfstream_sink_write_seconds",
            "One sink write (with its fsync or flush).",
            registry=self.registry,
            buckets=_TIMING_BUCKETS,
        )
        self.checkpoint_commit = Histogram(
            "sfstream_checkpoint_commit_seconds",
            "One checkpoint commit to the state store.",
            registry=self.registry,
            buckets=_TIMING_BUCKETS,
        )
        telemetry.write_timings.append(self.sink_write.observe)
        telemetry.commit_timings.append(self.checkpoint_commit.observe)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Forward(Collector):
    """A collector of the library's default registry, registered in ours as well."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def collect(self) -> Iterator[Metric]:
        return iter(self.collector.collect())


def health(telemetry: Telemetry, grace_s: float) -> tuple[bool, dict[str, Any]]:
    """(`/healthz` passes, its body)."""
    alive = telemetry.alive(grace_s)
    body: dict[str, Any] = {"status": "ok" if alive else "stalled"}
    probe_in_s = telemetry.allocation_probe_in_s()
    if probe_in_s is not None:
        body["allocation_exhausted"] = True
        body["probe_in_s"] = round(probe_in_s, 3)
    if telemetry.last_round_trip is not None:
        body["last_connect_s_ago"] = round(telemetry.since_round_trip(), 3)
    if telemetry.connect_timeout_s is not None:
        body["limit_s"] = telemetry.connect_timeout_s + grace_s
    return alive, body


def readiness(telemetry: Telemetry) -> tuple[bool, dict[str, Any]]:
    """(`/readyz` passes, its body)."""
    ready = telemetry.ready()
    down = sorted(channel for channel, up in telemetry.subscribed.items() if not up)
    body: dict[str, Any] = {
        "status": "ready" if ready else "not_ready",
        "logged_in": telemetry.logged_in,
        "handshaken": telemetry.handshaken,
        "reconnecting": telemetry.reconnecting,
    }
    probe_in_s = telemetry.allocation_probe_in_s()
    if probe_in_s is not None:
        body["allocation_exhausted"] = True
        body["probe_in_s"] = round(probe_in_s, 3)
    if down:
        body["not_subscribed"] = down
    return ready, body


@contextlib.asynccontextmanager
async def serve_metrics(
    telemetry: Telemetry,
    pipeline: Callable[[], Pipeline | None],
    *,
    host: str,
    port: int,
    grace_s: float = CONNECT_GRACE_S,
) -> AsyncIterator[int]:
    """Serve `/metrics`, `/healthz` and `/readyz` on `host:port` for the block; yields the
    port (the one chosen, with `port` 0)."""
    metrics = Metrics(telemetry, pipeline)

    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(request: web.Request) -> web.Response:
        passed, body = health(telemetry, grace_s)
        return _json(body, 200 if passed else 503)

    async def readyz(request: web.Request) -> web.Response:
        passed, body = readiness(telemetry)
        return _json(body, 200 if passed else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port} (observability.metrics_port): "
                f"{exc.strerror or exc}"
            ) from None
        # The port bound (the one chosen, with `port` 0).
        addresses = runner.addresses
        bound = int(addresses[0][1]) if addresses else port
        log.info(
            "metrics_endpoint", host=host, port=bound, paths=["/metrics", "/healthz", "/readyz"]
        )
        yield bound
    finally:
        await runner.cleanup()


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
