"""The AWS Lambda handler: stream until the invocation's deadline nears, then stop cleanly.

    handler(event, context) -> {"run_id", "ok", "streams": {...}, "error"}

The configuration file comes from `event["config"]` or the `SFSTREAM_CONFIG` environment
variable; secrets from the configured store (AWS Secrets Manager in production). The run
stops `SFSTREAM_LAMBDA_MARGIN_S` seconds (default 20) before the deadline, leaving that time
to flush, commit and disconnect. Schedule it (EventBridge every few minutes) to keep the
streams flowing; each invocation resumes from the checkpoints of the last one.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Protocol

import structlog

from sfstream.engine.config import load_config, log_warnings
from sfstream.errors import SfStreamError
from sfstream.observability import configure_logging
from sfstream.runners.connector import new_run_id, start, tune_garbage_collector

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
    tune_garbage_collector()
    return asyncio.run(run_until(str(config_path), run_id, budget_s))


async def run_until(config_path: str, run_id: str, budget_s: float) -> dict[str, Any]:
    """Stream for `budget_s` seconds, then flush, commit and return a summary.

    The budget counts from the call: loading the configuration, logging in and start-up
    retries (see `sfstream.runners.connector.start`) spend it too.
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
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        try:
            connector = await start(config, run_id, stop)
            if connector is None:
                return {
                    "run_id": run_id,
                    "ok": False,
                    "error": "the invocation's time ran out before the connector could start "
                    "(see the startup_retry log lines)",
                }
            async with connector:
                result = await connector.run(stop)
        except SfStreamError as exc:
            log.error("run_failed", error=str(exc))  # noqa: TRY400 - one clear line
            return {"run_id": run_id, "ok": False, "error": str(exc)}
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
    }
