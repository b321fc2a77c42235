"""A run of the connector: from a `Config` to a running pipeline, and back down cleanly.

`Connector` owns every resource of a run (HTTP session and token provider shared by REST and
streaming, the state store, the sink, the streaming client) as one async context manager;
`sfstream.runners.wiring` builds each of them from the configuration. A caller that keeps
the org session, the state store and the schema registry from one run to the next (a warm
AWS Lambda function) passes them in; the connector then uses them and leaves them open.
Both runners use it: the service runs it until a signal, the Lambda handler until its
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import random
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextvars import ContextVar
from typing import Any, Final

import structlog

from sfstream.bayeux.backoff import Backoff
from sfstream.client import ClientSettings, StreamingClient
from sfstream.engine.config import Config
from sfstream.engine.discovery import (
    StreamCheckError,
    failures,
    streams_from_config,
    validate_streams,
)
from sfstream.engine.leases import LeaseKeeper, LeaseSettings, default_worker_id
from sfstream.engine.pipeline import Pipeline, PipelineSettings, RunResult
from sfstream.errors import ConfigError, SfStreamError, StartupTimeoutError
from sfstream.netfail import host_of
from sfstream.observability.telemetry import Telemetry
from sfstream.runners.wiring import (
    OrgSession,
    credentials_of,
    open_registry,
    open_sink,
    open_state,
    org_session,
)
from sfstream.salesforce.limits import LimitsPoller
from sfstream.schema.registry import SchemaRegistry
from sfstream.schema.tracker import SchemaTracker
from sfstream.state.base import LeaseStore, StateStore
from sfstream.streams import StreamSpec

log = structlog.get_logger("sfstream.connector")
_STARTUP_BACKOFF_BASE_S: Final = 1.0
_STARTUP_BACKOFF_CAP_S: Final = 60.0
_WAIT_NOTICE_S: Final = 10.0
"""A start-up step that takes longer says what it waits for: after 10 s, 20 s, 40 s, ..."""
_STEPS: Final[ContextVar[list[str] | None]] = ContextVar("sfstream_start_steps", default=None)


def tune_garbage_collector() -> None:
    """Fit the garbage collector to a streaming process.

    Call once, after start-up. Every event allocates dicts that live for milliseconds; with
    the default thresholds the collector rescans the long-lived heap (modules, config,
    caches) thousands of times a second. Freezing what exists at start-up and collecting the
    young generation less often cut CPU per event by about 16% in bench/throughput.py.

    The first call collects the young generations only: the old one holds what the imports
    left (a few dozen unreachable objects, frozen with the rest), and a full collection of
    it took about 50 ms of every cold start (bench/footprint.py). A later call (the next
    invocation of a warm AWS Lambda function) collects everything first, so that the
    previous run's garbage is not frozen.
    """
    gc.collect(2 if gc.get_freeze_count() else 1)
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    _keep_freed_heap()


_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_TRIM_THRESHOLD_BYTES: Final = 64 * 1024 * 1024
_MMAP_THRESHOLD_BYTES: Final = 32 * 1024 * 1024


def _keep_freed_heap() -> None:
    """Let glibc keep up to 64 MiB of freed heap instead of returning it after every batch,
    and serve blocks up to 32 MiB from that heap.

    Each batch allocates a few MB (a response, its events and records) and frees them all
    once written. With glibc's default trim threshold (128 KiB, raised only for large
    blocks) that memory went back to the kernel after each batch and came back as fresh
    page faults: about 2 per event, most of the CPU that `sfstream run` spent above the raw
    floor in bench/throughput.py (210,000 page faults for 100,000 events; 16,000 with this).
    The memory kept is what the peak batch needed anyway. Elsewhere than glibc: nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
        # Setting one threshold fixes the other at its default (128 KiB): a batch's output
        # (megabytes) would be mapped and unmapped each time, page faults again.
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


def new_run_id() -> str:
    return uuid.uuid4().hex


class Connector:
    """One run of the connector over its configured streams.

    Args:
        session: the org session to use (HTTP session, token provider, REST client), opened
            by the caller and left open; the connector opens and closes its own when None.
        state: the state store to use, likewise.
        registry: the schema registry to use, likewise.
        worker_id: this worker's id in the leases when `state.worker_id` does not set it
            (the service passes the ECS task's ARN); else `<host>:<pid>`.
    """

    def __init__(
        self,
        config: Config,
        run_id: str | None = None,
        telemetry: Telemetry | None = None,
        *,
        session: OrgSession | None = None,
        state: StateStore | None = None,
        registry: SchemaRegistry | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.config = config
        self.keeper: LeaseKeeper | None = None
        self._worker_id = worker_id
        self.run_id = run_id or new_run_id()
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.specs: list[StreamSpec] = []
        self.pipeline: Pipeline | None = None
        self.limits: LimitsPoller | None = None
        """Reads the event allocations (`/limits`) beside the pipeline while it runs."""
        self._session = session
        self._state = state
        self._registry = registry
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Connector:
        if self.pipeline is None:
            await self.open()  # `start` returns a connector already open
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def open(self) -> None:
        """Log in, find and check the streams, open the stores and read where each stream
        resumes.

        Raises:
            SfStreamError: retryable while Salesforce, the state store or the sink is
                unreachable (see `start`), terminal for what needs fixing: a
                `ConfigError` for colliding stream ids, a `StreamCheckError` for a stream
                `sfstream check` fails.
        """
        config = self.config
        try:
            session = self._session
            if session is None:
                session = await self._stack.enter_async_context(org_session(config))
            self.specs = await self._validate(session)
            state = self._state
            if state is None:
                state = open_state(config)
                self._stack.push_async_callback(state.close)
            keeper = None
            if config.state.leased:
                keeper = self._keeper(state)
            else:
                # One run owns its streams: a second run, or `state set`, is refused meanwhile.
                await self._stack.enter_async_context(state.owner([spec.id for spec in self.specs]))
            sink = open_sink(config)
            self._stack.push_async_callback(sink.close)
            registry = self._registry
            if registry is None:
                registry = open_registry(config)
                self._stack.push_async_callback(registry.close)
            tracker = SchemaTracker(
                session.rest, registry, {spec.id: spec.on_breaking_change for spec in self.specs}
            )
            settings = ClientSettings(
                api_version=config.salesforce.api_version,
                max_pending_events=config.runtime.max_pending_events,
                network_margin_s=config.runtime.connect_margin_s,
            )
            client = StreamingClient(
                credentials_of(config), settings, tokens=session.tokens, telemetry=self.telemetry
            )
            self.limits = LimitsPoller(
                session.rest, self.telemetry, config.runtime.limits_interval_s
            )
            batch = config.batch
            self.pipeline = Pipeline(
                self.specs,
                client=client,
                state=state,
                sink=sink,
                run_id=self.run_id,
                schemas=tracker,
                keeper=keeper,
                rest=session.rest,
                settings=PipelineSettings(
                    max_records=batch.max_records,
                    max_wait_s=batch.max_wait_ms / 1000,
                    max_inflight=batch.max_inflight,
                    summary_interval_s=config.runtime.summary_interval_s,
                    continue_on_subscription_lost=(
                        config.runtime.on_subscription_lost == "continue"
                    ),
                ),
            )
            async with _waiting("the state store, the sink and the event schemas"):
                await self.pipeline.prepare()
            await client.open()
            self._stack.push_async_callback(client.close)
        except BaseException:
            self.pipeline = None
            await self._stack.aclose()
            raise

    async def _validate(self, session: OrgSession) -> list[StreamSpec]:
        """The streams to run, checked as `sfstream check` checks them: once per start.

        A warning is logged (`stream_warning`) and the run goes on. So is a stream that
        nothing is selected for (Change Data Capture): `stream_not_selected`, with what to
        select and where, at start and again when the session resubscribes (at most every
        5 minutes, `sfstream.runners.selection`). Selecting entities is an admin's step in
        Setup, which may come after the connector is deployed; Salesforce accepts the
        subscription meanwhile and it delivers from then on, so ending the run would only
        stop the other streams (and, under a supervisor, restart into the same refusal).

        Other errors end the run with the words `check` prints, except with
        `runtime.on_subscription_lost: continue` (the operator wants the other streams to go
        on) and for a channel Salesforce refuses itself (its subscription fails in
        Salesforce's words and that policy applies): then each is logged as
        `stream_check_failed`, in the same words, and the run goes on.

        Raises:
            ConfigError: two streams map to one stream id (found before any request).
            StreamCheckError: a stream would stay empty for good or run with null keys.
            SfStreamError: the org cannot be reached or read (retryable) or refuses the login.
        """
        config = self.config
        streams_from_config(config)
        async with _waiting(f"token endpoint {host_of(config.salesforce.login_url)}"):
            token = await session.tokens.token()
        loop = asyncio.get_running_loop()
        began = loop.time()
        async with _waiting(f"REST API {host_of(token.instance_url)}"):
            specs, problems = await validate_streams(config, session.rest)
        streams = {spec.channel: spec.id for spec in specs}
        unselected = [problem for problem in problems if problem.unselected]
        if unselected:
            from sfstream.runners.selection import warn_unselected

            for problem in unselected:
                warn_unselected(problem, streams.get(problem.channel))
            self._watch_selection(
                session, {problem.channel: streams.get(problem.channel) for problem in unselected}
            )
        problems = [problem for problem in problems if not problem.unselected]
        warnings = [problem for problem in problems if problem.severity == "warning"]
        for problem in warnings:
            log.warning(
                "stream_warning",
                stream=streams.get(problem.channel),
                channel=problem.channel,
                warning=problem.message,
            )
        found = failures(specs, problems)
        fatal = config.runtime.on_subscription_lost == "fail"
        ending = [failure.text for failure in found if fatal and not failure.refused]
        if ending:
            raise StreamCheckError("; ".join(ending))
        for failure in found:
            log.error(
                "stream_check_failed",
                stream=failure.spec.id,
                channel=failure.spec.channel,
                error=failure.text,
            )
        log.info(
            "streams_checked",
            streams=len(specs),
            warnings=len(warnings),
            not_selected=len(unselected),
            errors=len(found),
            elapsed_ms=round((loop.time() - began) * 1000, 1),
        )
        return specs

    def _keeper(self, state: StateStore) -> LeaseKeeper:
        """The keeper of this worker's leases in `state` (`state.coordination: leases`)."""
        config = self.config.state
        if not isinstance(state, LeaseStore):
            raise ConfigError(
                f"state.coordination: leases needs a state store with leases; the "
                f"{config.backend} store has none"
            )
        worker = config.worker_id or self._worker_id or default_worker_id()
        keeper = LeaseKeeper(
            state,
            [spec.id for spec in self.specs],
            LeaseSettings(worker=worker, ttl_s=config.lease_ttl_s),
            self.telemetry,
        )
        # After the run's last commit (the pipeline has returned), or if it never ran.
        self._stack.push_async_callback(keeper.release_all)
        self.keeper = keeper
        return keeper

    def _watch_selection(self, session: OrgSession, unselected: dict[str, str | None]) -> None:
        """Look at the unselected streams again when the session resubscribes (see
        `sfstream.runners.selection`)."""
        from sfstream.runners.selection import SelectionWatch

        watch = SelectionWatch(self.config, session.rest, unselected)
        listeners = self.telemetry.listeners
        listeners.append(watch)
        self._stack.callback(_discard, listeners, watch)
        self._stack.push_async_callback(watch.close)

    async def close(self) -> None:
        await self._stack.aclose()

    async def run(self, stop: asyncio.Event) -> RunResult:
        assert self.pipeline is not None
        log.info("run_started", streams=[s.id for s in self.specs])
        try:
            async with asyncio.TaskGroup() as tasks:
                # The allocations are read at start and every `runtime.limits_interval_s`;
                # the poller never fails by itself, and stops with the pipeline.
                poller = None
                if self.limits is not None:
                    poller = tasks.create_task(self.limits.run(), name="sfstream-limits")
                try:
                    return await self.pipeline.run(stop)
                finally:
                    if poller is not None:
                        poller.cancel()
        finally:
            if self.keeper is not None:
                # At once: another worker takes the streams over at its next poll.
                await self.keeper.release_all()


async def start(
    config: Config,
    run_id: str,
    stop: asyncio.Event,
    *,
    timeout_s: float | None = None,
    rng: random.Random | None = None,
    telemetry: Telemetry | None = None,
    session: OrgSession | None = None,
    state: StateStore | None = None,
    registry: SchemaRegistry | None = None,
    worker_id: str | None = None,
) -> Connector | None:
    """Open a connector, retrying what may pass, until it opens or `stop` is set.

    A retryable failure (the token endpoint, REST, the state store or the sink unreachable,
    refusing connections or answering 5xx) is logged and retried after an exponential
    backoff with full jitter (1 s doubling up to 60 s); a terminal one (a refused login, a
    bad configuration, a permission denied) is raised at once. `stop` ends the attempts at
    once and returns None; so does the end of `timeout_s` (None: no limit), with the last
    error raised. Each failure is counted in `telemetry`, which the connector then reports
    to. `session`, `state` and `registry` are shared with the connector (see `Connector`).
    """
    backoff = Backoff(base_s=_STARTUP_BACKOFF_BASE_S, cap_s=_STARTUP_BACKOFF_CAP_S)
    if rng is not None:
        backoff.rng = rng
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    attempt = 0
    while not stop.is_set():
        attempt += 1
        connector = Connector(
            config,
            run_id,
            telemetry,
            session=session,
            state=state,
            registry=registry,
            worker_id=worker_id,
        )
        try:
            opened = await _unless_stopped(connector.open(), stop)
        except SfStreamError as exc:
            connector.telemetry.error(exc)
            if not exc.retryable:
                raise
            delay = backoff.next_delay()
            if deadline is not None and loop.time() + delay >= deadline:
                raise StartupTimeoutError(
                    f"the connector could not start within {timeout_s:g} s "
                    f"(runtime.startup_timeout_s), {attempt} attempt(s); last error: {exc}"
                ) from exc
            log.warning(
                "startup_retry",
                attempt=attempt,
                error=str(exc),
                error_class=type(exc).__name__,
                retry_in_s=round(delay, 2),
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
        else:
            return connector if opened else None
    return None


def _discard(items: list[Any], item: object) -> None:
    with contextlib.suppress(ValueError):
        items.remove(item)


@contextlib.contextmanager
def recording_steps() -> Iterator[list[str]]:
    """The start-up steps (`token endpoint login.salesforce.com`, ...) that `start` and
    `Connector.open` begin within the block and do not complete, last begun last: a step
    under way, or one that failed or was cancelled. A caller that gives up on a start names
    what it waited for with the last one.
    """
    steps: list[str] = []
    token = _STEPS.set(steps)
    try:
        yield steps
    finally:
        _STEPS.reset(token)


@contextlib.asynccontextmanager
async def _waiting(what: str) -> AsyncIterator[None]:
    """Log `waiting` (`on`: what, `for_s`) while the body runs past 10 s, 20 s, 40 s, ...;
    the step is recorded meanwhile (see `recording_steps`)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    steps = _STEPS.get()
    if steps is not None:
        steps.append(what)

    async def notices() -> None:
        after = _WAIT_NOTICE_S
        while True:
            await asyncio.sleep(max(0.0, began + after - loop.time()))
            log.info("waiting", on=what, for_s=round(loop.time() - began))
            after *= 2

    task = asyncio.create_task(notices())
    try:
        yield
    finally:
        task.cancel()
    if steps is not None:  # completed: no longer under way
        del steps[max(i for i, step in enumerate(steps) if step == what)]


async def _unless_stopped(opening: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run `opening` unless `stop` is set first (then cancel it); whether it completed."""
    task = asyncio.create_task(opening)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return not task.cancelled() and task.result() is None
