"""Traces of a run, exported over OTLP/HTTP when the standard `OTEL_*` variables configure
an exporter.

Tracing is on when `OTEL_TRACES_EXPORTER` names `otlp`, or when `OTEL_EXPORTER_OTLP_ENDPOINT`
or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and `OTEL_TRACES_EXPORTER` names no other
exporter); `OTEL_SDK_DISABLED=true` turns it off. The exporter, the batch span processor, the
sampler and the resource read their other variables as OpenTelemetry documents them
(`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_TRACES_SAMPLER`,
`OTEL_RESOURCE_ATTRIBUTES`, ...). The service name is `sfstream` unless `OTEL_SERVICE_NAME`
(or `service.name` in `OTEL_RESOURCE_ATTRIBUTES`) names another. With tracing off, nothing of
OpenTelemetry is imported and no listener is added to the telemetry: the pipeline then builds
no batch report at all.

| span | parent | from, to |
|---|---|---|
| `sfstream.run` | the orchestrator's (below) | the whole run, or the Lambda invocation |
| `sfstream.session` | `sfstream.run` | the streaming client's open to its close |
| `sfstream.reconnect` | the session | the moment the session starts over (no duration) |
| `sfstream.batch` | the session (or the run) | the sink write to the checkpoint commit |

The run's parent is the W3C trace context the orchestrator passes: `TRACEPARENT` and
`TRACESTATE` in the service's environment, `traceparent` and `tracestate` in the Lambda
event. Without one, the run's span starts a trace. A batch written after its session closed
(the last one, at shutdown) is a child of the run.

Attributes: every span has `sfstream.run_id`.
- run: `sfstream.runner` (`service`, `lambda`), `sfstream.outcome` (`ok`, the error class, or
  `failed`), `sfstream.exit_code` (service).
- session: `sfstream.outcome` (`ok`, the error class that ended it, or `unfinished` for a
  session whose end was not reported), `sfstream.streams`
  and `sfstream.channels` (arrays, in the same order).
- reconnect: `sfstream.reconnect.reason` (the `reason` of `sfstream_reconnects_total`),
  `error.type` (the error class), `sfstream.channel` when the error names one.
- batch: `sfstream.records`, `sfstream.write_s`, `sfstream.commit_s`, `sfstream.outcome`;
  for a batch of one stream `sfstream.stream`, `sfstream.channel`,
  `sfstream.first_replay_id`, `sfstream.last_replay_id`; for several, the arrays
  `sfstream.streams`, `sfstream.channels`, `sfstream.first_replay_ids`,
  `sfstream.last_replay_ids`, in the same order.

A span that ends with an error has the status ERROR; error messages are never exported
(they may quote what Salesforce answered), only error classes.

The resource also carries the attributes of where the process runs, when a runner found out
(`set_platform_attributes`: the ECS task of `sfstream.runners.ecs`, on Fargate);
`OTEL_RESOURCE_ATTRIBUTES` overrides them.

Needs the `otel` extra (`pip install 'sfstream[otel]'`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Final

import structlog

from sfstream.observability.telemetry import BatchReport, Telemetry

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

    from sfstream.errors import SfStreamError
    from sfstream.streams import StreamSpec

log = structlog.get_logger("sfstream.tracing")

SERVICE_NAME: Final = "sfstream"
RUN_ID: Final = "sfstream.run_id"
FLUSH_TIMEOUT_S: Final = 10.0
"""How long the end of a run (or of a Lambda invocation) waits for the last spans' export."""
_HTTP_PROTOCOLS: Final = frozenset({"", "http/protobuf"})

Streams = Callable[[], Iterable["StreamSpec"]]
"""The connector's streams, once known (none before the connector has started)."""


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the `OTEL_*` variables of `environ` configure a trace exporter (see the
    module)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    }
    if "otlp" in exporters:
        return True
    if exporters:
        return False  # `none`, or exporters this connector does not ship
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def environment_parent(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The orchestrator's trace context, from `TRACEPARENT` and `TRACESTATE` (W3C)."""
    carrier = {}
    for variable, header in (("TRACEPARENT", "traceparent"), ("TRACESTATE", "tracestate")):
        value = environ.get(variable)
        if value:
            carrier[header] = value
    return carrier


def from_environment() -> Tracing | None:
    """The process's tracing when its `OTEL_*` variables configure it, else None (then
    nothing is imported). Without the `otel` extra installed, a warning says so and the run
    goes on untraced."""
    if not enabled():
        return None
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or ""
    )
    if protocol.strip().lower() not in _HTTP_PROTOCOLS:
        log.warning(
            "tracing_protocol_ignored", protocol=protocol, note="traces go over http/protobuf"
        )
    try:
        return Tracing()
    except ImportError as exc:
        log.warning(
            "tracing_unavailable",
            error=str(exc),
            note="install the otel extra: pip install 'sfstream[otel]'",
        )
        return None


@contextlib.asynccontextmanager
async def traced_service(
    telemetry: Telemetry, run_id: str, streams: Streams
) -> AsyncIterator[RunTrace | None]:
    """The service's run traced, when configured (None when not): the run's span, parented
    by `TRACEPARENT`, around the body. At the end the spans still queued are exported, and
    the exporter shut down, in a worker thread: the event loop keeps serving signals."""
    tracing = from_environment()
    if tracing is None:
        yield None
        return
    try:
        with tracing.run(
            telemetry, run_id, runner="service", parent=environment_parent(), streams=streams
        ) as trace:
            yield trace
    finally:
        await asyncio.to_thread(tracing.shutdown)


class Tracing:
    """A tracer provider exporting through a batch span processor.

    Args:
        exporter: where spans go; by default OTLP/HTTP as the `OTEL_*` variables say.

    Raises:
        ImportError: the `otel` extra is not installed.
    """

    def __init__(self, exporter: SpanExporter | None = None) -> None:
        from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_NAME_KEY
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from sfstream import __version__

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        resource = Resource.create()
        if _platform:
            # The platform's attributes under those of `OTEL_RESOURCE_ATTRIBUTES`.
            resource = Resource(dict(_platform)).merge(resource)
        if str(resource.attributes.get(SERVICE_NAME_KEY, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME_KEY: SERVICE_NAME}))
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("sfstream", __version__)

    @contextlib.contextmanager
    def run(
        self,
        telemetry: Telemetry,
        run_id: str,
        *,
        runner: str,
        parent: Mapping[str, str],
        streams: Streams = tuple,
    ) -> Iterator[RunTrace]:
        """Trace one run (or Lambda invocation): its span around the body, parented by the
        W3C trace context in `parent` (`traceparent`, `tracestate`), and the spans of what
        `telemetry` reports meanwhile. An exception ends the run's span with its class."""
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        context = TraceContextTextMapPropagator().extract(dict(parent))
        span = self.tracer.start_span(
            "sfstream.run", context, attributes={RUN_ID: run_id, "sfstream.runner": runner}
        )
        trace = RunTrace(span)
        listener = SpanListener(self.tracer, span, run_id, streams)
        telemetry.listeners.append(listener)
        try:
            yield trace
        except BaseException as exc:
            trace.ended(type(exc).__name__)
            raise
        finally:
            telemetry.listeners.remove(listener)
            listener.close()
            if not trace.outcome:
                trace.ended("ok")
            span.end()

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Export the spans still queued; whether it finished within `timeout_s`."""
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Export what is still queued and stop the exporter."""
        self.flush()
        self.provider.shutdown()


class RunTrace:
    """The span of one run, told by its runner how the run ended."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.outcome = ""

    def ended(self, outcome: str, exit_code: int | None = None) -> None:
        """`outcome`: `ok`, the class of the error that ended the run, or `failed`."""
        from opentelemetry.trace import StatusCode

        self.outcome = outcome
        self.span.set_attribute("sfstream.outcome", outcome)
        if exit_code is not None:
            self.span.set_attribute("sfstream.exit_code", exit_code)
        if outcome != "ok":
            self.span.set_status(StatusCode.ERROR, outcome)


class SpanListener:
    """The telemetry's reports as spans (a `sfstream.observability.telemetry.Listener`).

    Called on the event loop, at most once per batch, reconnect and session: a span is
    started and ended and handed to the batch span processor's queue, nothing more.
    """

    def __init__(self, tracer: Tracer, run: Span, run_id: str, streams: Streams) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import StatusCode

        self._tracer = tracer
        self._run = run
        self._run_id = run_id
        self._streams = streams
        self._in_context = trace.set_span_in_context
        self._error = StatusCode.ERROR
        self._session: Span | None = None

    def _parent(self) -> Context:
        return self._in_context(self._session if self._session is not None else self._run)

    def _channels(self) -> dict[str, str]:
        return {spec.id: spec.channel for spec in self._streams()}

    def session_started(self) -> None:
        self._end_session("unfinished")
        self._session = self._tracer.start_span(
            "sfstream.session", self._in_context(self._run), attributes={RUN_ID: self._run_id}
        )

    def session_ended(self, error: SfStreamError | None) -> None:
        self._end_session("ok" if error is None else type(error).__name__)

    def _end_session(self, outcome: str) -> None:
        span, self._session = self._session, None
        if span is None:
            return
        channels = self._channels()
        if channels:
            span.set_attribute("sfstream.streams", list(channels))
            span.set_attribute("sfstream.channels", list(channels.values()))
        span.set_attribute("sfstream.outcome", outcome)
        if outcome != "ok":
            span.set_status(self._error, outcome)
        span.end()

    def reconnected(self, reason: str, error: SfStreamError) -> None:
        now = time.time_ns()
        attributes: dict[str, AttributeValue] = {
            RUN_ID: self._run_id,
            "sfstream.reconnect.reason": reason,
            "error.type": type(error).__name__,
        }
        if error.channel is not None:
            attributes["sfstream.channel"] = error.channel
        span = self._tracer.start_span(
            "sfstream.reconnect", self._parent(), attributes=attributes, start_time=now
        )
        span.end(end_time=now)

    def batch_written(self, batch: BatchReport) -> None:
        outcome = "ok" if batch.error is None else type(batch.error).__name__
        attributes: dict[str, AttributeValue] = {
            RUN_ID: self._run_id,
            "sfstream.records": batch.records,
            "sfstream.write_s": batch.write_s,
            "sfstream.outcome": outcome,
        }
        if batch.commit_s is not None:
            attributes["sfstream.commit_s"] = batch.commit_s
        channels = self._channels()
        if len(batch.streams) == 1:
            ((stream, (first, last)),) = batch.streams.items()
            attributes["sfstream.stream"] = stream
            if stream in channels:
                attributes["sfstream.channel"] = channels[stream]
            attributes["sfstream.first_replay_id"] = first
            attributes["sfstream.last_replay_id"] = last
        elif batch.streams:
            streams = list(batch.streams)
            attributes["sfstream.streams"] = streams
            if channels:
                attributes["sfstream.channels"] = [channels.get(stream, "") for stream in streams]
            attributes["sfstream.first_replay_ids"] = [span[0] for span in batch.streams.values()]
            attributes["sfstream.last_replay_ids"] = [span[1] for span in batch.streams.values()]
        span = self._tracer.start_span(
            "sfstream.batch",
            self._parent(),
            attributes=attributes,
            start_time=int(batch.started * 1e9),
        )
        if batch.error is not None:
            span.set_status(self._error, outcome)
        span.end(end_time=int(batch.ended * 1e9))

    def close(self) -> None:
        """End the session's span (outcome `unfinished`) if the run ends before the session
        reported its end."""
        self._end_session("unfinished")


# -- the platform's resource attributes ------------------------------------------------------

_platform: dict[str, str] = {}


def set_platform_attributes(attributes: Mapping[str, str]) -> None:
    """Resource attributes of where the process runs (the ECS task, from
    `sfstream.runners.ecs`), for every `Tracing` created afterwards; they replace those set
    before, and `OTEL_RESOURCE_ATTRIBUTES` overrides them."""
    _platform.clear()
    _platform.update(attributes)
