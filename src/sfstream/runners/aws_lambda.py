"""The AWS Lambda handler: stream until the invocation's deadline nears, then stop cleanly.

    handler(event, context) -> {"run_id", "ok", "error", "retryable", "streams",
                                "cold_start", "startup_ms", "logins"}

The configuration file comes from `event["config"]` or the `SFSTREAM_CONFIG` environment
variable; secrets from the configured store (AWS Secrets Manager in production). Schedule it
(EventBridge every few minutes) to keep the streams flowing; each invocation resumes from the
checkpoints of the last one.

The budget. An invocation has the time the runtime gives it, read at entry
(`context.get_remaining_time_in_millis()`): loading the configuration, logging in and
starting spend it as streaming does. With D the deadline and M the margin
(`SFSTREAM_LAMBDA_MARGIN_S`, default 20 s, but at least 0.5 s and at most a third of the time
left at entry; see `Budget`):

- at D - M, set-up and streaming end: a start still under way (a token endpoint, REST call or
  state store that stalls) is cancelled; a running connector flushes, commits and
  disconnects;
- at D - M/4, whatever still runs (a commit, a sink write or a disconnect that stalls) is
  cancelled, and cancelled again until it ends;
- at D - M/8, the handler returns, whether the work has ended or not.

An invocation that gave up on a step returns `ok: false, retryable: true` and logs
`invocation_abandoned` (with the step it waited for). It has committed checkpoints only for
records the sink had accepted (a commit follows the sink's write), so the next invocation
resumes without loss or duplicates. The work runs on an event loop in a thread of its own
while the handler's thread waits for it: even a step that blocks the loop (a file sink on a
stalled disk) cannot keep the handler past D - M/8.

Warm invocations. The process keeps, from one invocation to the next, its event loop, the
loaded configuration (and so the secrets read for it), the org session (HTTP connections, the
token provider with its access token, the secrets store a rotated refresh token is written
to), the state store and the schema registry with their connections; each is created on first
use (`Warm`). A warm
invocation makes no token request while its access token is valid (a 401 refreshes it). The
configuration is loaded again when its file or the `SFSTREAM_*` variables change; after a
failed invocation all of it is closed, and the next invocation starts afresh. Nothing runs
between invocations, since the runtime freezes the process: each invocation ends with no task
left on the loop and no thread of its own alive.

Remote state. Under Lambda (`AWS_LAMBDA_FUNCTION_NAME` set) an SQLite state store, or an
SQLite schema registry, is a configuration error, returned and logged: its file would live on
the disk of one execution environment, lost when the environment is recycled and not seen by
the others.

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
import math
import os
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Protocol, TypeVar

import msgspec
import structlog

from sfstream.engine.config import ENV_PREFIX, Config, load_config, log_warnings
from sfstream.engine.pipeline import StreamStats
from sfstream.errors import ConfigError, RetryableError, SfStreamError
from sfstream.observability import configure_logging
from sfstream.observability.emf import write_metrics
from sfstream.observability.telemetry import Telemetry
from sfstream.observability.tracing import RunTrace, Tracing, from_environment
from sfstream.runners.connector import (
    Connector,
    new_run_id,
    recording_steps,
    start,
    tune_garbage_collector,
)
from sfstream.runners.wiring import (
    OrgSession,
    open_registry,
    open_state,
    org_session,
    registry_backend,
)
from sfstream.schema.registry import SchemaRegistry
from sfstream.state.base import StateStore

T = TypeVar("T")
log = structlog.get_logger("sfstream.lambda")

DEFAULT_MARGIN_S: Final = 20.0
MIN_MARGIN_S: Final = 0.5
MARGIN_SHARE: Final = 1 / 3
"""The margin is at most this share of the time left at entry."""
MIN_RUN_S: Final = 0.5
"""An invocation with less time than this before its stop refuses to start."""
_RECANCEL_MIN_S: Final = 0.01


class LambdaContext(Protocol):
    aws_request_id: str

    def get_remaining_time_in_millis(self) -> int: ...


class InvocationDeadlineError(RetryableError):
    """A step was still running when the invocation's time ran out, and was abandoned."""


class Budget(msgspec.Struct, frozen=True):
    """The time of one invocation, on the monotonic clock (`time.monotonic()`).

    Attributes:
        began: when the invocation began.
        deadline: when the runtime ends it.
        margin_s: kept before the deadline to flush, commit, disconnect and return.
    """

    began: float
    deadline: float
    margin_s: float

    @classmethod
    def starting(
        cls, remaining_s: float, margin_s: float = DEFAULT_MARGIN_S, *, now: float | None = None
    ) -> Budget:
        """The budget of an invocation with `remaining_s` left `now` (default: now).

        The margin is `margin_s`, but at least `MIN_MARGIN_S` (0.5 s) and at most a third of
        `remaining_s`: a short invocation keeps most of its time for streaming.
        """
        began = time.monotonic() if now is None else now
        remaining_s = max(0.0, remaining_s)
        margin = min(max(margin_s, MIN_MARGIN_S), remaining_s * MARGIN_SHARE)
        return cls(began, began + remaining_s, margin)

    @property
    def stop_at(self) -> float:
        """When set-up and streaming end (the deadline less the margin)."""
        return self.deadline - self.margin_s

    @property
    def cut_at(self) -> float:
        """When whatever still runs is abandoned (the deadline less a quarter of the margin)."""
        return self.deadline - self.margin_s / 4

    @property
    def return_at(self) -> float:
        """When the handler returns, ended or not (the deadline less an eighth of the margin)."""
        return self.deadline - self.margin_s / 8

    def left_s(self, until: float) -> float:
        """Seconds from now until `until` (0 once it has passed)."""
        return max(0.0, until - time.monotonic())


class Warm:
    """What an execution environment keeps from one invocation to the next.

    The event loop, the configuration, the org session, the state store and the schema
    registry; each is created on first use, and `release` closes all but the loop. `run`
    runs one invocation's work on the loop, in the calling thread.

    Attributes:
        broken: work of an invocation did not end in time and may still be on the loop; the
            next invocation takes a new `Warm`.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.broken = False
        self._source: tuple[object, ...] | None = None
        self._config: Config | None = None
        self._session: OrgSession | None = None
        self._state: StateStore | None = None
        self._registry: SchemaRegistry | None = None
        self._stack = contextlib.AsyncExitStack()

    async def config(self, path: str) -> Config:
        """The configuration at `path`, kept from the last invocation unless the file or the
        `SFSTREAM_*` environment has changed (then it is loaded again, and what was opened
        for the previous one closed)."""
        source = _source(path)
        if self._config is not None and source is not None and source == self._source:
            return self._config
        await self.release()
        config = await load_config(path)
        self._config, self._source = config, source
        return config

    async def org_session(self, config: Config) -> OrgSession:
        if self._session is None:
            self._session = await self._stack.enter_async_context(org_session(config))
        return self._session

    def state_store(self, config: Config) -> StateStore:
        if self._state is None:
            self._state = open_state(config)
            self._stack.push_async_callback(self._state.close)
        return self._state

    def registry(self, config: Config) -> SchemaRegistry:
        if self._registry is None:
            self._registry = open_registry(config)
            self._stack.push_async_callback(self._registry.close)
        return self._registry

    @property
    def token_requests(self) -> int:
        """Token requests the kept org session has sent."""
        return self._session.tokens.refreshes if self._session is not None else 0

    async def release(self) -> None:
        """Close the org session and the state store, and forget the configuration (a
        failure to close is logged: what failed is dropped all the same)."""
        stack, self._stack = self._stack, contextlib.AsyncExitStack()
        self._source = self._config = self._session = self._state = self._registry = None
        try:
            await stack.aclose()
        except Exception as exc:  # noqa: BLE001 - closing what is dropped anyway
            log.warning("warm_release_failed", error=repr(exc))

    def run(self, work: Coroutine[Any, Any, T], budget: Budget) -> tuple[T, int]:
        """Run `work` on the loop; its result, and how many tasks it left on the loop (they
        are cancelled, and given until `budget.return_at` to end).

        Blocking calls (`asyncio.to_thread`, name lookups) get worker threads of this run
        only, stopped before it returns.
        """
        with self._executor():
            result = self.loop.run_until_complete(work)
            self.loop.run_until_complete(asyncio.sleep(0))  # tasks cancelled at the end end
            left = asyncio.all_tasks(self.loop)
            if left:
                for task in left:
                    task.cancel()
                waiting = asyncio.wait(left, timeout=budget.left_s(budget.return_at))
                self.loop.run_until_complete(waiting)
                self.broken = self.broken or not all(task.done() for task in left)
        return result, len(left)

    def close(self) -> None:
        """Release what is kept and close the loop (in a thread where no loop runs)."""
        with self._executor():
            self.loop.run_until_complete(self.release())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    @contextlib.contextmanager
    def _executor(self) -> Iterator[None]:
        executor = ThreadPoolExecutor(thread_name_prefix="sfstream-lambda-io")
        self.loop.set_default_executor(executor)
        try:
            yield
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


def _source(path: str) -> tuple[object, ...] | None:
    """What the configuration at `path` is loaded from: the file's identity and the
    `SFSTREAM_*` variables (None when the file cannot be read: loading it says why)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    overrides = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(ENV_PREFIX)))
    return (os.path.abspath(path), found.st_ino, found.st_mtime_ns, found.st_size, overrides)


_warm: Warm | None = None
_given_up: list[Warm] = []
"""Environments left to work that did not end in time: kept from the garbage collector."""
_invocations = 0


def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Lambda entry point."""
    remaining_ms = context.get_remaining_time_in_millis()
    began = time.monotonic()
    global _invocations  # noqa: PLW0603 - the process's invocation count
    cold = _invocations == 0
    _invocations += 1
    if not structlog.is_configured():
        configure_logging(json=True)  # before any line: stdout is for the metrics
    run_id = str(event.get("run_id") or getattr(context, "aws_request_id", "") or new_run_id())
    config_path = event.get("config") or os.environ.get("SFSTREAM_CONFIG")
    if not config_path:
        return _refused(run_id, cold, "no configuration: pass event.config or set SFSTREAM_CONFIG")
    margin_text = os.environ.get("SFSTREAM_LAMBDA_MARGIN_S", str(DEFAULT_MARGIN_S))
    try:
        margin_s = float(margin_text)
    except ValueError:
        margin_s = math.nan
    if not math.isfinite(margin_s) or margin_s < 0:
        return _refused(
            run_id,
            cold,
            "SFSTREAM_LAMBDA_MARGIN_S must be a number of seconds (0 or more), got "
            f"{margin_text!r}",
        )
    budget = Budget.starting(remaining_ms / 1000, margin_s, now=began)
    if budget.stop_at - began < MIN_RUN_S:
        return _refused(
            run_id,
            cold,
            f"not enough time left in the invocation to stream: {remaining_ms} ms, less a "
            f"margin of {budget.margin_s:.2f} s, leaves under {MIN_RUN_S:g} s; give the "
            "function a longer timeout",
        )
    tracing = _tracing()
    parent = {
        header: str(event[header]) for header in ("traceparent", "tracestate") if event.get(header)
    }
    tune_garbage_collector()
    try:
        summary, tasks_left = _invoke(str(config_path), run_id, budget, tracing, parent)
    finally:
        if tracing is not None and (left_s := budget.left_s(budget.return_at)) > 0:
            tracing.flush(left_s)
    summary["cold_start"] = cold
    ended = time.monotonic()
    log.info(
        "invocation_ended",
        run_id=run_id,
        ok=summary["ok"],
        cold_start=cold,
        elapsed_ms=round((ended - began) * 1000, 1),
        left_ms=round((budget.deadline - ended) * 1000, 1),
        startup_ms=summary.get("startup_ms"),
        logins=summary.get("logins"),
        tasks_left=tasks_left,
    )
    return summary


def _refused(run_id: str, cold: bool, error: str) -> dict[str, Any]:
    log.error("invocation_refused", run_id=run_id, error=error)
    return {"run_id": run_id, "ok": False, "error": error, "retryable": False, "cold_start": cold}


def _invoke(
    config_path: str,
    run_id: str,
    budget: Budget,
    tracing: Tracing | None,
    parent: Mapping[str, str],
) -> tuple[dict[str, Any], int | None]:
    """Run the invocation on the warm loop, in a thread, and wait for it until
    `budget.return_at`; the summary, and how many tasks it left on the loop."""
    global _warm  # noqa: PLW0603 - kept for the next invocation
    warm = _warm if _warm is not None else Warm()
    _warm = warm
    outcome: list[tuple[dict[str, Any], int] | BaseException] = []

    def run() -> None:
        work = run_until(config_path, run_id, budget, tracing=tracing, parent=parent, warm=warm)
        try:
            outcome.append(warm.run(work, budget))
        except BaseException as exc:  # noqa: BLE001 - raised again in the handler's thread
            outcome.append(exc)

    thread = threading.Thread(target=run, name="sfstream-lambda-invocation", daemon=True)
    thread.start()
    thread.join(budget.left_s(budget.return_at))
    raised = bool(outcome) and isinstance(outcome[0], BaseException)
    if thread.is_alive() or warm.broken or raised:
        _warm = None  # the next invocation starts afresh
        _given_up.append(warm)
    if thread.is_alive():
        warm.loop.call_soon_threadsafe(_cancel_all, warm.loop)
        error = InvocationDeadlineError(
            "the invocation's work blocked its event loop past the invocation's time and was "
            "abandoned; the next invocation starts afresh"
        )
        log.error("invocation_abandoned", run_id=run_id, phase="unknown", error=str(error))
        return {"run_id": run_id, "ok": False, "error": str(error), "retryable": True}, None
    (ended,) = outcome
    if isinstance(ended, BaseException):
        raise ended
    return ended


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


@functools.cache
def _tracing() -> Tracing | None:
    """The process's tracing, set up by its first invocation and kept while it is warm."""
    return from_environment()


def release() -> None:
    """Close what warm invocations keep (org session, state store, schema registry, loop).

    For a process that goes on without the handler, such as a test run; the Lambda runtime
    never needs it. Call it where no event loop runs.
    """
    global _warm
    warm, _warm = _warm, None
    if warm is not None:
        closing = threading.Thread(target=warm.close, name="sfstream-lambda-release")
        closing.start()
        closing.join()


def lambda_state_problem(config: Config) -> ConfigError | None:
    """Why `config` cannot run under AWS Lambda, when this process runs there
    (`AWS_LAMBDA_FUNCTION_NAME` set); None when it can."""
    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return None
    lost = (
        "would be files on the disk of one execution environment, lost when it is recycled "
        "and not seen by the environments that run the next invocations"
    )
    if config.state.backend == "sqlite":
        return ConfigError(
            f"state.backend is sqlite, which AWS Lambda cannot keep: the checkpoints "
            f"({config.state.path}) and the schema registry ({config.schema_registry.path}) "
            f"{lost}; keep the state in a remote store (state.backend: dynamodb with "
            "state.table, or postgres with state.dsn)"
        )
    if registry_backend(config) == "sqlite":
        return ConfigError(
            "schema_registry.backend is sqlite, which AWS Lambda cannot keep: the schema "
            f"versions ({config.schema_registry.path}) {lost}; keep them with the state "
            "(schema_registry.backend: state, the default)"
        )
    return None


async def run_until(
    config_path: str,
    run_id: str,
    budget: Budget,
    *,
    tracing: Tracing | None = None,
    parent: Mapping[str, str] | None = None,
    warm: Warm | None = None,
) -> dict[str, Any]:
    """Stream until `budget.stop_at`, then flush, commit and return a summary.

    The budget counts from `budget.began`: loading the configuration, logging in and start-up
    retries (see `sfstream.runners.connector.start`) spend it too, and a step still running
    at its stop (set-up) or cut (flush, commit, disconnect) is abandoned (see the module).
    Once the connector was tried, the invocation's metrics are printed; with `tracing`, the
    invocation is traced under the W3C trace context in `parent`. With `warm`, the
    configuration, the org session and the state store are taken from it, and released
    after a failure.
    """
    stop = asyncio.Event()
    timer = asyncio.get_running_loop().call_later(budget.left_s(budget.stop_at), stop.set)
    try:
        summary = await _run(
            config_path, run_id, budget, stop, tracing=tracing, parent=parent or {}, warm=warm
        )
    finally:
        timer.cancel()
    if warm is not None and not summary["ok"]:
        try:
            await _within(warm.release(), budget.return_at, budget.return_at)
        except _AbandonedError:
            warm.broken = True
    return summary


async def _run(
    config_path: str,
    run_id: str,
    budget: Budget,
    stop: asyncio.Event,
    *,
    tracing: Tracing | None,
    parent: Mapping[str, str],
    warm: Warm | None,
) -> dict[str, Any]:
    try:
        config = await _within(_load(config_path, warm), budget.stop_at, budget.cut_at)
    except _AbandonedError as gave_up:
        error = InvocationDeadlineError(
            "the invocation's stop time came while the configuration and its secrets were "
            "loading: abandoned; the next invocation tries again"
        )
        return _abandoned(
            run_id, error, phase="configuring", step=None, ended=gave_up.ended, budget=budget
        )
    except SfStreamError as exc:
        log.error("configuration_error", run_id=run_id, error=str(exc))  # noqa: TRY400
        return {"run_id": run_id, "ok": False, "error": str(exc), "retryable": exc.retryable}
    configure_logging(level=config.logging.level, json=True, secrets=config.secret_values())
    log_warnings(config)
    problem = lambda_state_problem(config)
    if problem is not None:
        log.error("configuration_error", run_id=run_id, error=str(problem))
        return {"run_id": run_id, "ok": False, "error": str(problem), "retryable": False}
    telemetry = Telemetry()
    opened: list[Connector] = []
    with structlog.contextvars.bound_contextvars(run_id=run_id):
        with _traced(tracing, telemetry, run_id, parent, opened) as trace:
            summary, ended_by = await _stream(
                config, run_id, budget, stop, telemetry=telemetry, opened=opened, warm=warm
            )
            if trace is not None:
                failed = "failed" if ended_by is None else type(ended_by).__name__
                trace.ended("ok" if summary["ok"] else failed)
        pipeline = opened[0].pipeline if opened else None
        write_metrics(run_id, telemetry, pipeline.stats if pipeline is not None else {})
    return summary


async def _load(config_path: str, warm: Warm | None) -> Config:
    if warm is None:
        return await load_config(config_path)
    return await warm.config(config_path)


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
    budget: Budget,
    stop: asyncio.Event,
    *,
    telemetry: Telemetry,
    opened: list[Connector],
    warm: Warm | None,
) -> tuple[dict[str, Any], SfStreamError | None]:
    """Run the connector until `stop`: the summary, and the error that ended the run."""
    started: list[float] = []
    tokens_before = warm.token_requests if warm is not None else 0

    async def run() -> dict[str, Any]:
        shared: dict[str, Any] = {}
        if warm is not None:
            shared["session"] = await warm.org_session(config)
            shared["state"] = warm.state_store(config)
            shared["registry"] = warm.registry(config)
        connector = await start(config, run_id, stop, telemetry=telemetry, **shared)
        if connector is None:
            raise _NotStartedError
        opened.append(connector)
        started.append(time.monotonic())
        async with connector:
            result = await connector.run(stop)
        return {
            "run_id": run_id,
            "ok": result.ok,
            "error": str(result.error) if result.error else None,
            "retryable": result.error.retryable if result.error else None,
            "streams": _streams(result.streams),
        }

    with recording_steps() as steps:
        try:
            summary = await _within(run(), budget.cut_at, budget.return_at)
            error: SfStreamError | None = None
        except (_AbandonedError, _NotStartedError) as gave_up:
            ended = gave_up.ended if isinstance(gave_up, _AbandonedError) else True
            phase = "starting" if not opened else "stopping" if stop.is_set() else "streaming"
            step = steps[-1] if steps and not opened else None
            error = InvocationDeadlineError(_deadline_message(phase, step, budget))
            telemetry.error(error)
            pipeline = opened[0].pipeline if opened else None
            summary = _abandoned(run_id, error, phase=phase, step=step, ended=ended, budget=budget)
            if pipeline is not None:
                summary["streams"] = _streams(pipeline.stats)
            if not ended and warm is not None:
                warm.broken = True
        except SfStreamError as exc:
            log.error("run_failed", error=str(exc))  # noqa: TRY400 - one clear line
            summary = {"run_id": run_id, "ok": False, "error": str(exc), "retryable": exc.retryable}
            error = exc
    if started:
        summary["startup_ms"] = round((started[0] - budget.began) * 1000, 1)
    if warm is not None:
        summary["logins"] = warm.token_requests - tokens_before
    return summary, error


def _deadline_message(phase: str, step: str | None, budget: Budget) -> str:
    if phase == "starting":
        waiting = f", waiting for {step}" if step else ""
        return (
            f"the invocation's stop time ({budget.margin_s:.2f} s before its deadline) came "
            f"while the connector was starting{waiting}: abandoned with nothing committed; "
            "the next invocation tries again"
        )
    return (
        f"the connector was still {phase} (flush, commit, disconnect) "
        f"{budget.margin_s / 4:.2f} s before the invocation's deadline: abandoned; records the "
        "sink holds without their checkpoint are found there by the next invocation"
    )


def _abandoned(
    run_id: str,
    error: InvocationDeadlineError,
    *,
    phase: str,
    step: str | None,
    ended: bool,
    budget: Budget,
) -> dict[str, Any]:
    log.error(
        "invocation_abandoned",
        run_id=run_id,
        phase=phase,
        step=step,
        ended=ended,
        left_ms=round((budget.deadline - time.monotonic()) * 1000, 1),
        error=str(error),
    )
    return {"run_id": run_id, "ok": False, "error": str(error), "retryable": True}


def _streams(stats: Mapping[str, StreamStats]) -> dict[str, dict[str, Any]]:
    return {
        stream: {
            "emitted": s.emitted,
            "deduplicated": s.deduplicated,
            "checkpoint": s.checkpoint,
            "gaps": s.gaps,
        }
        for stream, s in stats.items()
    }


class _NotStartedError(Exception):
    """`start` returned without a connector: the stop came first."""


class _AbandonedError(Exception):
    """Work did not end in time and was cancelled.

    Attributes:
        ended: whether it has ended since (else it may still be on the loop).
    """

    def __init__(self, ended: bool) -> None:
        super().__init__()
        self.ended = ended


async def _within(work: Awaitable[T], until: float, give_up_at: float) -> T:
    """`work`'s result when it ends by `until` (monotonic time).

    Past `until` it is cancelled, and cancelled again while it goes on (cleanup that waits
    on a stalled peer is cut short too), until `give_up_at`.

    Raises:
        _AbandonedError: it did not end by `until`, or ended by its cancellation.
    """
    task = asyncio.ensure_future(work)
    await asyncio.wait({task}, timeout=max(0.0, until - time.monotonic()))
    if task.done():
        return task.result()
    every = max(_RECANCEL_MIN_S, (give_up_at - until) / 4)
    while not task.done():
        task.cancel()
        left = give_up_at - time.monotonic()
        if left <= 0:
            break
        await asyncio.wait({task}, timeout=min(every, left))
    if not task.done():
        raise _AbandonedError(ended=False)
    if task.cancelled() or task.exception() is not None:
        raise _AbandonedError(ended=True)
    return task.result()
