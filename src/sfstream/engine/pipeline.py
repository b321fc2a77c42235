"""The at-least-once pipeline: events -> records -> batches -> sink -> checkpoints.

Two tasks share the work. The receiver takes what the client has received, drops events at
or below each stream's last emitted replayId (counted), maps the rest to records, and cuts
batches by size or age. The writer hands each batch to the sink and, only once the sink
returns (the batch is durable), commits the batch's checkpoints. Between them sits a bounded
queue: a slow sink fills it, the receiver waits, the client's own queue fills, and the client
stops polling; each step of that is logged as backpressure.

Where a stream starts: the higher of its checkpoint and what the sink says it already holds
(a crash between a write and its checkpoint leaves the sink ahead); else its initial replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from sfstream.bayeux import Event, Gap, SubscriptionLost
from sfstream.client import StreamingClient, StreamItem
from sfstream.engine.records import Mapper, mapper_for
from sfstream.errors import SfStreamError, SubscriptionError, TerminalError
from sfstream.protocol import GapMessage, Message, SchemaMessage, StateMessage
from sfstream.schema.tracker import SchemaTracker, Tracked
from sfstream.sinks.base import Sink
from sfstream.state.base import StateStore
from sfstream.streams import StreamSpec

log = structlog.get_logger("sfstream.engine")
_DRAIN_LIMIT: Final = 5000
_BACKPRESSURE_LOG_EVERY_S: Final = 10.0


@dataclass(slots=True)
class StreamStats:
    """Per-stream counters, logged in the periodic summary."""

    received: int = 0
    emitted: int = 0
    deduplicated: int = 0
    gaps: int = 0
    checkpoint: int | None = None
    checkpoints: int = 0


@dataclass(slots=True)
class RunResult:
    """How a run ended."""

    streams: dict[str, StreamStats]
    error: SfStreamError | None = None
    lost: list[SubscriptionLost] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class _Batch:
    messages: list[Message] = field(default_factory=list)
    last: dict[str, int] = field(default_factory=dict)
    records: int = 0
    started: float = 0.0


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    max_records: int = 2000
    max_wait_s: float = 0.0
    max_inflight: int = 2
    summary_interval_s: float = 60.0
    continue_on_subscription_lost: bool = False


class Pipeline:
    """Runs the streams of one connector until stopped or a terminal error.

    Args:
        specs: the streams.
        client: an open streaming client (not yet subscribed).
        state: the checkpoint store.
        sink: where records go.
        settings: batching and behaviour.
        run_id: put into every record's metadata and every log line.
    """

    def __init__(
        self,
        specs: Sequence[StreamSpec],
        *,
        client: StreamingClient,
        state: StateStore,
        sink: Sink,
        settings: PipelineSettings,
        run_id: str,
        clock: Callable[[], float] = time.monotonic,
        schemas: SchemaTracker | None = None,
    ) -> None:
        self.specs = {spec.channel: spec for spec in specs}
        self.client = client
        self.state = state
        self.sink = sink
        self.settings = settings
        self.run_id = run_id
        self._clock = clock
        self.stats = {spec.id: StreamStats() for spec in specs}
        self._mappers: dict[str, tuple[StreamSpec, Mapper]] = {
            spec.channel: (spec, mapper_for(spec, run_id)) for spec in specs
        }
        self._emitted: dict[str, int | None] = {}
        self._batches: asyncio.Queue[_Batch | None] = asyncio.Queue(settings.max_inflight)
        self._writer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lost: list[SubscriptionLost] = []
        self.schemas = schemas
        self._schema_cache: dict[str, tuple[object, Tracked | None]] = {}
        self.backpressure = 0
        self._backpressure_logged = -_BACKPRESSURE_LOG_EVERY_S

    # -- start ------------------------------------------------------------------------------

    async def positions(self) -> dict[str, int]:
        """Where each stream resumes: checkpoint, sink high-water mark, or initial replay."""
        ids = [spec.id for spec in self.specs.values()]
        checkpoints = await self.state.load(ids)
        held = await self.sink.high_watermarks(ids)
        ahead: dict[str, int] = {}
        positions: dict[str, int] = {}
        for spec in self.specs.values():
            checkpoint = checkpoints.get(spec.id)
            stored = checkpoint.replay_id if checkpoint is not None else None
            sink_mark = held.get(spec.id)
            if sink_mark is not None and (stored is None or sink_mark > stored):
                ahead[spec.id] = sink_mark
                stored = sink_mark
            self._emitted[spec.id] = stored
            self.stats[spec.id].checkpoint = stored
            positions[spec.id] = stored if stored is not None else spec.initial_replay
        if ahead:
            # The sink got a batch whose checkpoint never landed: record that it has it.
            log.warning("sink_ahead_of_checkpoint", streams=ahead)
            await self.state.commit(ahead)
        return positions

    async def subscribe_all(self, positions: dict[str, int]) -> None:
        for spec in self.specs.values():
            replay_from = positions[spec.id]
            try:
                await self.client.subscribe(spec.channel, replay_from, spec.on_invalid_replay)
            except SubscriptionError as exc:
                self._subscription_lost(SubscriptionLost(spec.channel, exc))
            else:
                log.info(
                    "stream_started", stream=spec.id, channel=spec.channel, replay_id=replay_from
                )

    def _subscription_lost(self, lost: SubscriptionLost) -> None:
        spec = self.specs.get(lost.channel)
        log.error(
            "subscription_lost",
            channel=lost.channel,
            stream=spec.id if spec else None,
            replay_id=lost.error.replay_id,
            error=lost.error.server_text or str(lost.error),
        )
        self._lost.append(lost)
        if not self.settings.continue_on_subscription_lost:
            raise lost.error
        if len(self._lost) == len(self.specs):
            raise TerminalError("every subscription failed; nothing left to stream")

    # -- run --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> RunResult:
        """Stream until `stop` is set or a terminal error; always flushes and commits."""
        error: SfStreamError | None = None
        writer = asyncio.create_task(self._write_batches(), name="sfstream-writer")
        self._writer = writer
        summary = asyncio.create_task(self._summaries(), name="sfstream-summary")
        try:
            positions = await self.positions()
            if self.schemas is not None:
                announced = await self.schemas.start(self.specs.values())
                if announced:
                    await self._hand_over(_Batch(messages=list(announced)))
            await self.subscribe_all(positions)
            await self._receive(stop)
        except SfStreamError as exc:
            error = exc
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await self.client.close()
            try:
                # Events received before the stop (or the failure) are still written.
                await self._drain_client()
            except SfStreamError as exc:
                error = error or exc
            if not writer.done():
                await self._hand_over(None)
            try:
                await writer
            except SfStreamError as exc:
                error = error or exc
            summary.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await summary
            self._log_summary(final=True)
        return RunResult(self.stats, error, self._lost)

    async def _receive(self, stop: asyncio.Event) -> None:
        batch = _Batch()
        stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                items = self.client.take_nowait(_DRAIN_LIMIT)
                if not items:
                    if batch.messages and self._clock() - batch.started >= self.settings.max_wait_s:
                        batch = await self._flush(batch)
                        continue
                    timeout = None
                    if batch.messages:
                        timeout = max(0.0, batch.started + self.settings.max_wait_s - self._clock())
                    item = await self._next(stopper, timeout)
                    if item is None:
                        continue
                    items = [item]
                batch = await self._consume(items, batch)
        finally:
            stopper.cancel()
            if batch.messages:
                await self._flush(batch)

    async def _next(self, stopper: asyncio.Future[Any], wait_s: float | None) -> StreamItem | None:
        getter: asyncio.Future[Any] = asyncio.ensure_future(anext(aiter(self.client)))
        done, _ = await asyncio.wait(
            {getter, stopper, self._writer}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
        )
        if self._writer in done:
            getter.cancel()
            self._writer_failed()
        if getter in done:
            try:
                item: StreamItem = getter.result()
            except StopAsyncIteration:
                raise TerminalError("the streaming client stopped") from None
            return item
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await getter
        return None

    async def _drain_client(self) -> None:
        """After close: everything already received still gets written."""
        batch = _Batch()
        while True:
            items = self.client.take_nowait(_DRAIN_LIMIT)
            if not items:
                break
            batch = await self._consume(items, batch)
        if batch.messages:
            await self._flush(batch)

    async def _consume(self, items: list[StreamItem], batch: _Batch) -> _Batch:
        now = _now()
        max_records = self.settings.max_records
        tracking = self.schemas is not None
        cache = self._schema_cache
        for item in items:
            tracked = None
            if tracking and isinstance(item, Event):
                route = self._route(item)
                if route is not None:
                    cached = cache.get(route[0].id)
                    if cached is not None and cached[0] == item.data.get("schema"):
                        tracked = cached[1]  # the common case: the schema seen last
                    else:
                        tracked = await self._track_schema(item, batch)
            self._take(item, batch, now, tracked)
            if batch.records >= max_records:
                batch = await self._flush(batch)
        return batch

    def _route(self, event: Event) -> tuple[StreamSpec, Mapper] | None:
        return self._mappers.get(event.channel) or self._mappers.get(
            event.channel.partition("?")[0]
        )

    async def _track_schema(self, event: Event, batch: _Batch) -> Tracked | None:
        """The schema version of `event`; a SCHEMA message goes first when it is new."""
        route = self._route(event)
        if route is None:
            return None
        spec = route[0]
        schema_id = event.data.get("schema")
        cached = self._schema_cache.get(spec.id)
        if cached is not None and cached[0] == schema_id:
            return cached[1]
        tracker = self.schemas
        assert tracker is not None
        if tracker.needs_observe(spec, event):
            await tracker.observe(spec, event)
        tracked = tracker.lookup(spec, event)
        if tracked is not None:
            self._announce(batch, await tracker.transition(spec, tracked))
        self._schema_cache[spec.id] = (schema_id, tracked)
        return tracked

    def _announce(self, batch: _Batch, message: SchemaMessage | None) -> None:
        if message is None:
            return
        if not batch.messages:
            batch.started = self._clock()
        batch.messages.append(message)
        self._schema_cache.clear()

    def _take(
        self, item: StreamItem, batch: _Batch, now: str, tracked: Tracked | None = None
    ) -> None:
        if isinstance(item, Event):
            route = self._route(item)
            if route is None:
                return
            spec, mapper = route
            stats = self.stats[spec.id]
            stats.received += 1
            replay_id = item.replay_id
            last = self._emitted.get(spec.id)
            if replay_id is not None and last is not None and replay_id <= last:
                stats.deduplicated += 1
                return
            if not batch.messages:
                batch.started = self._clock()
            records = mapper(item, now)
            if tracked is not None:
                meta = records[0].meta
                meta["schema_version"] = tracked.version
                if tracked.subject != spec.id:
                    meta["schema_subject"] = tracked.subject
            batch.messages.extend(records)
            batch.records += len(records)
            stats.emitted += len(records)
            if replay_id is not None:
                self._emitted[spec.id] = replay_id
                batch.last[spec.id] = replay_id
        elif isinstance(item, Gap):
            spec = self.specs[item.channel]
            self.stats[spec.id].gaps += 1
            # The stream restarts from the fallback: ids below the old position are new.
            self._emitted[spec.id] = None
            batch.last.pop(spec.id, None)
            if not batch.messages:
                batch.started = self._clock()
            batch.messages.append(
                GapMessage(
                    spec.id,
                    "replay_id_rejected",
                    item.replay_id,
                    "earliest" if item.fallback == -2 else "latest",
                    item.error.server_text,
                )
            )
            log.warning(
                "gap",
                stream=spec.id,
                channel=spec.channel,
                replay_id=item.replay_id,
                fallback=item.fallback,
            )
        elif isinstance(item, SubscriptionLost):
            self._subscription_lost(item)

    async def _flush(self, batch: _Batch) -> _Batch:
        for stream, replay_id in batch.last.items():
            batch.messages.append(StateMessage(stream, replay_id))
        if self._batches.full():
            self.backpressure += 1
            now = self._clock()
            if now - self._backpressure_logged >= _BACKPRESSURE_LOG_EVERY_S:
                self._backpressure_logged = now
                log.warning(
                    "backpressure",
                    waiting_batches=self._batches.qsize(),
                    client_queue=self.client.queue_depth,
                    times=self.backpressure,
                )
        await self._hand_over(batch)
        return _Batch()

    async def _hand_over(self, batch: _Batch | None) -> None:
        """Queue a batch for the writer, unless the writer has failed (then raise its error)."""
        if self._writer.done():
            self._writer_failed()
        if not self._batches.full():
            self._batches.put_nowait(batch)
            return
        put = asyncio.ensure_future(self._batches.put(batch))
        done, _ = await asyncio.wait({put, self._writer}, return_when=asyncio.FIRST_COMPLETED)
        if put not in done:
            put.cancel()
            self._writer_failed()

    def _writer_failed(self) -> None:
        error = self._writer.exception()
        if isinstance(error, SfStreamError):
            raise error
        raise TerminalError(f"the sink writer stopped: {error!r}") from error

    async def _write_batches(self) -> None:
        """Write each batch, then commit its checkpoints.

        A batch's commit runs while the next batch is written: checkpoints still only move
        over durably written records, and stay in order (each commit waits for the one
        before). A crash between a write and its commit is covered at start-up by the sink's
        high-water marks (or, for sinks that cannot tell, by at-least-once delivery).
        """
        committing: asyncio.Task[None] | None = None
        try:
            while True:
                batch = await self._batches.get()
                if batch is None:
                    break
                # Group commit: batches that queued up while the sink was busy share one write.
                ended = False
                while not self._batches.empty():
                    more = self._batches.get_nowait()
                    if more is None:
                        ended = True
                        break
                    batch.messages.extend(more.messages)
                    batch.last.update(more.last)
                    batch.records += more.records
                await self.sink.write(batch.messages)
                if committing is not None:
                    await committing
                    committing = None
                if batch.last:
                    committing = asyncio.create_task(self._commit(batch))
                if ended:
                    break
        finally:
            if committing is not None:
                await committing

    async def _commit(self, batch: _Batch) -> None:
        await self.state.commit(batch.last)
        for stream, replay_id in batch.last.items():
            stats = self.stats[stream]
            stats.checkpoint = replay_id
            stats.checkpoints += 1

    async def _summaries(self) -> None:
        while True:
            await asyncio.sleep(self.settings.summary_interval_s)
            self._log_summary(final=False)

    def _log_summary(self, *, final: bool) -> None:
        client = self.client.stats
        for stream, stats in self.stats.items():
            log.info(
                "stream_summary",
                stream=stream,
                received=stats.received,
                emitted=stats.emitted,
                deduplicated=stats.deduplicated,
                gaps=stats.gaps,
                checkpoint=stats.checkpoint,
                final=final,
            )
        log.info(
            "client_summary",
            reconnects=client.reconnects,
            rehandshakes=client.rehandshakes,
            reauthentications=client.reauthentications,
            queue_depth=client.queue_depth,
            backpressure_waits=client.backpressure_waits,
            final=final,
        )


def _now() -> str:
    """UTC now as `2024-05-01T12:00:00.123Z`."""
    # isoformat: several times faster than strftime, and this runs for every chunk of events.
    return datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
