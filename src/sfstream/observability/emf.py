"""The AWS Lambda handler's end-of-invocation metrics: CloudWatch Embedded Metric Format
(EMF) documents on stdout, written with aws-lambda-powertools, which CloudWatch Logs turns
into metrics of the namespace `sfstream`.

The figures are those of the Prometheus families (`sfstream.observability.metrics`), counted
over one invocation: each invocation starts from zero, so CloudWatch's Sum over a period is
the period's total.

| metric | unit | dimensions |
|---|---|---|
| `events_received` | Count | `stream` |
| `records_written` | Count | `stream` |
| `duplicates_dropped` | Count | `stream` |
| `checkpoint_replay_id` | None | `stream` |
| `lag_seconds` | Seconds | `stream` |
| `errors` | Count | none (all errors), and `error`, `retryable` |
| `reconnects` | Count | none (all reconnects), and `reason` |

`checkpoint_replay_id` is written once the stream has committed a checkpoint, `lag_seconds`
(now minus the event time of the last record written) once it has written a record. One
document per stream, per error class and per reconnect reason, and one for the totals (always
written, zeros included, so that an alarm on them has data). Each document carries the run id
as the property `run_id`: searchable in CloudWatch Logs, not a dimension.

Needs the `lambda` extra (`pip install 'sfstream[lambda]'`); without it a warning is logged
once and no metrics are written.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

import structlog

from sfstream.observability.telemetry import Telemetry

if TYPE_CHECKING:
    from aws_lambda_powertools.metrics import EphemeralMetrics

    from sfstream.engine.pipeline import StreamStats

log = structlog.get_logger("sfstream.emf")

NAMESPACE: Final = "sfstream"

Figures = list[tuple[str, str, float]]
"""(metric name, unit, value)"""


@functools.cache
def _metrics_class() -> type[EphemeralMetrics] | None:
    """powertools' `EphemeralMetrics`, or None (said once) when it is not installed."""
    try:
        from aws_lambda_powertools.metrics import EphemeralMetrics
    except ImportError as exc:
        log.warning(
            "metrics_unavailable",
            error=str(exc),
            note="install the lambda extra for CloudWatch metrics: pip install 'sfstream[lambda]'",
        )
        return None
    return EphemeralMetrics


def documents(
    telemetry: Telemetry,
    streams: Mapping[str, StreamStats],
    wall_clock: Callable[[], float] = time.time,
) -> list[tuple[dict[str, str], Figures]]:
    """The metric documents of one invocation: (dimensions, figures) each."""
    found: list[tuple[dict[str, str], Figures]] = [
        (
            {},
            [
                ("errors", "Count", sum(telemetry.errors.values())),
                ("reconnects", "Count", sum(telemetry.reconnects.values())),
            ],
        )
    ]
    now = wall_clock()
    for stream, stats in streams.items():
        figures: Figures = [
            ("events_received", "Count", stats.received),
            ("records_written", "Count", stats.written),
            ("duplicates_dropped", "Count", stats.deduplicated),
        ]
        if stats.checkpoint is not None:
            figures.append(("checkpoint_replay_id", "None", stats.checkpoint))
        event_time = stats.last_written_time
        if event_time is not None:
            figures.append(("lag_seconds", "Seconds", max(0.0, now - event_time)))
        found.append(({"stream": stream}, figures))
    for (error, retryable), count in sorted(telemetry.errors.items()):
        dimensions = {"error": error, "retryable": "true" if retryable else "false"}
        found.append((dimensions, [("errors", "Count", count)]))
    for reason, count in sorted(telemetry.reconnects.items()):
        found.append(({"reason": reason}, [("reconnects", "Count", count)]))
    return found


def write_metrics(run_id: str, telemetry: Telemetry, streams: Mapping[str, StreamStats]) -> bool:
    """Print the invocation's metric documents on stdout; False when aws-lambda-powertools
    is not installed."""
    metrics = _metrics_class()
    if metrics is None:
        return False
    for dimensions, figures in documents(telemetry, streams):
        # An instance per document: powertools' `Metrics` shares its metrics, dimensions and
        # properties with every other `Metrics` of the process (the function's own included).
        document = metrics(namespace=NAMESPACE)
        for name, value in dimensions.items():
            document.add_dimension(name=name, value=value)
        document.add_metadata(key="run_id", value=run_id)
        for name, unit, amount in figures:
            document.add_metric(name=name, unit=unit, value=amount)
        document.flush_metrics()
    return True
