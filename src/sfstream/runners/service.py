"""The long-running service (AWS Fargate, a container, a terminal).

Runs until SIGTERM or SIGINT, then stops polling, writes what was received, commits,
disconnects and exits 0 within `runtime.shutdown_timeout_s`. A shutdown that takes longer,
or a third signal, exits 1 at once (a second one only says so): whatever was not committed is
delivered again next time.
When the process is ours (`exit_process`, as under `sfstream run`), a teardown that still
hangs after that (a worker thread blocked on a stdout reader that stopped reading, or on a
hung file system, keeps the interpreter from exiting) ends with `os._exit(1)` after
`LAST_RESORT_S`: committed checkpoints are already durable, so nothing is lost.

Exit codes (`ExitCode`): 0 stopped cleanly, 1 terminal error, 2 configuration error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Final

import structlog

from sfstream.engine.config import Config
from sfstream.errors import ConfigError, ExitCode, SfStreamError
from sfstream.observability.telemetry import Telemetry
from sfstream.observability.tracing import traced_service
from sfstream.runners import ecs
from sfstream.runners.connector import Connector, start, tune_garbage_collector

if TYPE_CHECKING:
    from sfstream.observability.status import StreamCounters

log = structlog.get_logger("sfstream.service")

FORCE_AFTER_SIGNALS: Final = 3
"""The signal that forces the exit during a clean shutdown (the first one starts it)."""
LAST_RESORT_S: Final = 5.0
"""How long a forced stop may spend tearing down before the process exits regardless."""


async def serve(
    config: Config,
    run_id: str,
    stop: asyncio.Event | None = None,
    early_signals: list[int] | None = None,
    *,
    exit_process: bool = False,
) -> int:
    """Run the connector until stopped; returns the process exit code.

    `early_signals` holds stop requests that arrived before the event loop ran. With
    `exit_process`, a forced stop whose teardown hangs ends the process (see the module).
    Every log line of the run, the signal handlers' included, carries `run_id`, and on ECS
    (Fargate) the task's ARN, cluster and family (`sfstream.runners.ecs`).
    """
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        task = await ecs.identify()  # {} outside ECS
    with structlog.contextvars.bound_contextvars(run_id=run_id, **task):
        stop = stop or asyncio.Event()
        if early_signals:
            log.info("stopped_before_start", signal=signal.Signals(early_signals[0]).name)
            return ExitCode.OK
        loop = asyncio.get_running_loop()
        forced = asyncio.Event()

        signals: list[int] = []

        def on_signal(signum: int) -> None:
            # A signal repeated during a clean shutdown (a supervisor and a shell both
            # forwarding it, say) does not abort it; the third one forces the exit.
            signals.append(signum)
            name = signal.Signals(signum).name
            if len(signals) == 1:
                log.info("stopping", signal=name)
                stop.set()
            elif len(signals) < FORCE_AFTER_SIGNALS:
                log.warning(
                    "stopping_already", signal=name, note="send it once more to force the exit"
                )
            else:
                log.warning("stop_forced", signal=name, signals=len(signals))
                forced.set()

        # The handlers run in a copy of this context, so their lines carry the run id too.
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig)
        if early_signals:
            stop.set()  # a signal between the check above and the handlers' installation
        tune_garbage_collector()
        try:
            return await _run(config, run_id, stop, forced, exit_process=exit_process)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
                if exit_process:
                    # The run is over and the process is exiting: a late signal must not
                    # turn a clean exit into a kill.
                    signal.signal(sig, signal.SIG_IGN)


async def _run(
    config: Config,
    run_id: str,
    stop: asyncio.Event,
    forced: asyncio.Event,
    *,
    exit_process: bool,
) -> int:
    telemetry = Telemetry()
    current: list[Connector] = []
    try:
        async with contextlib.AsyncExitStack() as endpoint:
            # Traces, when `OTEL_*` variables configure an exporter (None otherwise: then
            # nothing of OpenTelemetry is imported and no listener is added).
            trace = await endpoint.enter_async_context(
                traced_service(telemetry, run_id, lambda: current[0].specs if current else ())
            )
            port = config.observability.metrics_port
            if port is not None:
                from sfstream.observability.metrics import serve_metrics

                await endpoint.enter_async_context(
                    serve_metrics(
                        telemetry,
                        lambda: current[0].pipeline if current else None,
                        host=config.observability.metrics_host,
                        port=port,
                        grace_s=config.observability.connect_grace_s,
                    )
                )
            code = await _stream(
                config,
                run_id,
                stop,
                forced,
                telemetry=telemetry,
                current=current,
                exit_process=exit_process,
            )
            if trace is not None:
                trace.ended("ok" if code == ExitCode.OK else "failed", exit_code=int(code))
            return code
    except ConfigError as exc:
        log.error("config_error", error=str(exc))  # noqa: TRY400 - no traceback for users
        return ExitCode.USAGE


async def _stream(
    config: Config,
    run_id: str,
    stop: asyncio.Event,
    forced: asyncio.Event,
    *,
    telemetry: Telemetry,
    current: list[Connector],
    exit_process: bool,
) -> int:
    try:
        connector = await start(
            config,
            run_id,
            stop,
            timeout_s=config.runtime.startup_timeout_s,
            telemetry=telemetry,
            worker_id=structlog.contextvars.get_contextvars().get("ecs_task_arn"),
        )
        if connector is None:
            log.info("stopped_before_start")
            return ExitCode.OK
        current.append(connector)
        assert connector.pipeline is not None  # `start` returns an open connector
        # On a terminal with console logs, a live status line per stream under the logs.
        status = _live_status(connector.pipeline.stats, config.logging.format)
        async with connector, status:
            task = asyncio.create_task(connector.run(stop))
            deadline = asyncio.create_task(
                _shutdown_deadline(stop, forced, config.runtime.shutdown_timeout_s)
            )
            done, _ = await asyncio.wait({task, deadline}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                if forced.is_set():
                    log.error(
                        "shutdown_forced",
                        note="events not yet committed will be delivered again",
                    )
                else:
                    log.error(
                        "shutdown_timeout",
                        timeout_s=config.runtime.shutdown_timeout_s,
                        note="events not yet committed will be delivered again",
                    )
                if exit_process:
                    _arm_last_resort(ExitCode.FAILURE, LAST_RESORT_S)
                task.cancel()
                # A task stuck behind a blocked worker thread may not finish: wait a little.
                await asyncio.wait({task}, timeout=LAST_RESORT_S)
                if task.done() and not task.cancelled():
                    with contextlib.suppress(SfStreamError):
                        task.result()
                return ExitCode.FAILURE
            deadline.cancel()
            result = task.result()
    except ConfigError as exc:
        log.error("config_error", error=str(exc))  # noqa: TRY400 - no traceback for users
        return ExitCode.USAGE
    except SfStreamError as exc:
        log.error("run_failed", error=str(exc), retryable=exc.retryable)  # noqa: TRY400
        return ExitCode.FAILURE
    if result.error is not None and _stdout_gone(result.error):
        return ExitCode.FAILURE
    if result.error is not None:
        log.error("run_failed", error=str(result.error), retryable=result.error.retryable)
        return ExitCode.FAILURE
    log.info("run_stopped")
    return ExitCode.OK


def _live_status(
    streams: Mapping[str, StreamCounters], log_format: str
) -> AbstractAsyncContextManager[object]:
    """`sfstream.observability.status.live_status`, imported only when stderr is a terminal
    and logs are not JSON: a run in a container or a function never loads it."""
    try:
        terminal = log_format != "json" and sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError, OSError):
        terminal = False
    if not terminal:
        return contextlib.nullcontext()
    from sfstream.observability.status import live_status

    return live_status(streams, log_format)


async def _shutdown_deadline(stop: asyncio.Event, forced: asyncio.Event, timeout_s: float) -> None:
    await stop.wait()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await forced.wait()


def _arm_last_resort(code: int, after_s: float) -> None:
    """Exit the process with `code` in `after_s` seconds unless it has exited by then."""

    def fire() -> None:
        log.error("exit_forced", after_s=after_s, note="the teardown did not finish")
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(after_s, fire)
    timer.daemon = True
    timer.start()


def _stdout_gone(error: SfStreamError) -> bool:
    """The stdout reader went away: say so once, and keep Python quiet at exit."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, BrokenPipeError):
        cause = cause.__cause__
    if cause is None:
        return False
    log.error("run_failed", error=str(error), retryable=False)
    with contextlib.suppress(OSError):
        # Unflushed bytes of the failed batch would make the interpreter print a
        # BrokenPipeError traceback at exit; send them nowhere instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return True
