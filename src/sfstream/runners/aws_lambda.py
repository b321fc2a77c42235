"""The AWS Lambda handler: stream until the invocation's deadline nears, then stop cleanly.

    handler(event, context) -> {"run_id", "ok", "streams": {...}, "error"}

The configuration file comes from `event["config"]` or the `SFSTREAM_CONFIG` environment
variable; secrets from the configured store (AWS Secrets Manager in production). The run
stops `SFSTREAM_LAMBDA_MARGIN_S` seconds (default 20) before the deadline, leaving that time
to flush, commit and disconnect. Schedule it (EventBridge every few minutes) to keep the
streams flowing; each invocation resumes from the checkpoints of the last one.

At the end of each invocation the run's figures are printed as CloudWatch Embedded Metric
Format documents (`sfstream.observability.emf`, with the `lambda` extra). When the `OTEL_*`
variables configure an exporter, each invocation is traced (`sfstream.observability.tracing`)
under the `traceparent` (and `tracestate`) of the event, and its spans are exported before
the handler returns: the runtime freezes the process afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import structlog

from sfstream.engine.config import Config, load_config, log_warnings
from sfstream.errors import SfStreamError
from sfstream.observability import configure_logging
from sfstream.observability.emf import write_metrics
from sfstream.observability.telemetry import Telemetry
from sfstream.observability.tracing import RunTrace, Tracing, from_environment
from sfstream.runners.connector import Connector, new_run_id, start, tune_garbage_collector

log = structlog.get_logger("sfstream.lambda")
DEFAULT_MARGIN_S = 20.0


class LambdaContext(Protocol):
    aws_request_id: str

    def get_remaining_time_in_millis(self) -> int: ...


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Lambda entry point."""
    config_path = event.get("config") or os.environ.get("SFSTREAM_CONFIG")
    run_id = str(event.get("run_id") or getattr(context, "aws_request_id", "") or new_run_id())
    if not config_path:
        return {
            "run_id": run_id,
            "ok": False,
            "error": "no configuration: pass event.config or set SFSTREAM_CONFIG",
        }
    margin_s = float(os.environ.get("SFSTREAM_LAMBDA_MARGIN_S", DEFAULT_MARGIN_S))
    budget_s = context.get_remaining_time_in_millis() / 1000 - margin_s
    tracing = _tracing()
    parent = {
        header: str(event[header]) for header in ("traceparent", "tracestate") if event.get(header)
    }
    tune_garbage_collector()
    try:
        return asyncio.run(
            run_until(str(config_path), run_id, budget_s, tracing=tracing, parent=parent)
        )
    finally:
        if tracing is not None:
            tracing.flush()


@functools.cache
def _tracing() -> Tracing | None:
    """The process's tracing, set up by its first invocation and kept while it is warm."""
    return from_environment()


async def run_until(
    config_path: str,
    run_id: str,
    budget_s: float,
    *,
    tracing: Tracing | None = None,
    parent: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Stream for `budget_s` seconds, then flush, commit and return a summary.

    The budget counts from the call: loading the configuration, logging in and start-up
    retries (see `sfstream.runners.connector.start`) spend it too. Once the connector was
    tried, the invocation's metrics are printed (see the module); with `tracing`, the
    invocation is traced under the W3C trace context in `parent`.
    """
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(max(budget_s, 0.0), stop.set)
    try:
        config = await load_config(config_path)
    except SfStreamError as exc:
        return {"run_id": run_id, "ok": False, "error": str(exc)}
    configure_logging(level=config.logging.level, json=True, secrets=config.secret_values())
    log_warnings(config)
    if budget_s <= 0:
        return {
            "run_id": run_id,
            "ok": False,
            "error": "not enough time left in the invocation to stream",
        }
    telemetry = Telemetry()
    opened: list[Connector] = []
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        with _traced(tracing, telemetry, run_id, parent or {}, opened) as trace:
            summary, error = await _stream(config, run_id, stop, telemetry, opened)
            if trace is not None:
                failed = "failed" if error is None else type(error).__name__
                trace.ended("ok" if summary["ok"] else failed)
        pipeline = opened[0].pipeline if opened else None
        write_metrics(run_id, telemetry, pipeline.stats if pipeline is not None else {})
    return summary


@contextlib.contextmanager
def _traced(
    tracing: Tracing | None,
    telemetry: Telemetry,
    run_id: str,
    parent: Mapping[str, str],
    opened: list[Connector],
) -> Iterator[RunTrace | None]:
    if tracing is None:
        yield None
        return
    with tracing.run(
        telemetry,
        run_id,
        runner="lambda",
        parent=parent,
        streams=lambda: opened[0].specs if opened else (),
    ) as trace:
        yield trace


async def _stream(
    config: Config,
    run_id: str,
    stop: asyncio.Event,
    telemetry: Telemetry,
    opened: list[Connector],
) -> tuple[dict[str, Any], SfStreamError | None]:
    """Run the connector until `stop`: the summary, and the error that ended the run."""
    try:
        connector = await start(config, run_id, stop, telemetry=telemetry)
        if connector is None:
            return {
                "run_id": run_id,
                "ok": False,
                "error": "the invocation's time ran out before the connector could start "
                "(see the startup_retry log lines)",
            }, None
        opened.append(connector)
        async with connector:
            result = await connector.run(stop)
    except SfStreamError as exc:
        log.error("run_failed", error=str(exc))  # noqa: TRY400 - one clear line
        return {"run_id": run_id, "ok": False, "error": str(exc)}, exc
    return {
        "run_id": run_id,
        "ok": result.ok,
        "error": str(result.error) if result.error else None,
        "streams": {
            stream: {
                "emitted": s.emitted,
                "deduplicated": s.deduplicated,
                "checkpoint": s.checkpoint,
                "gaps": s.gaps,
            }
            for stream, s in result.streams.items()
        },
    }, result.error
