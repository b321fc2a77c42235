"""The at-least-once pipeline: events -> records -> batches -> sink -> checkpoints.

Two tasks share the work, in one task group. The receiver takes what the client has
received, drops events at or below each stream's last emitted replayId (counted), maps the
rest to records, and cuts batches by size or age. The writer hands each batch to the sink
and, only once the sink returns (the batch is durable), commits the checkpoints that the
`CheckpointLedger` (the commit rule, without I/O) releases for it. Between them sits a
bounded queue: a slow sink fills it, the receiver waits, the client's own queue fills, and
the client stops polling; each step of that is logged as backpressure.

Where a stream starts: the higher of its checkpoint and what the sink says it already holds
(a crash between a write and its checkpoint leaves the sink ahead); else its initial replay.
An operator's override (`sfstream state set|reset`) wins over both: the run writes a GAP
note (`operator_set` or `operator_reset`) into the sink, so that readers see the rewind or
the skip, before it takes the override over.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
import structlog

from sfstream.bayeux import Event, Gap, SubscriptionLost
from sfstream.bayeux.messages import event_time_s
from sfstream.client import StreamingClient, StreamItem
from sfstream.engine.leases import LeaseKeeper
from sfstream.engine.ledger import CheckpointLedger
from sfstream.engine.records import Mapper, mapper_for
from sfstream.errors import (
    LeaseLostError,
    SfStreamError,
    StreamSilentError,
    SubscriptionError,
    TerminalError,
)
from sfstream.observability.telemetry import BatchReport
from sfstream.protocol import GapMessage, Message, Record, SchemaMessage, StateMessage
from sfstream.salesforce.rest import RestClient
from sfstream.schema.tracker import SchemaTracker, Tracked
from sfstream.sinks.base import Sink
from sfstream.state.base import Fence, Override, StateStore
from sfstream.streams import StreamSpec

log = structlog.get_logger("sfstream.engine")
_DRAIN_LIMIT: Final = 5000
_BACKPRESSURE_LOG_EVERY_S: Final = 10.0


class StreamStats(msgspec.Struct):
    """Per-stream counters, logged in the periodic summary."""

    received: int = 0
    emitted: int = 0
    deduplicated: int = 0
    gaps: int = 0
    checkpoint: int | None = None
    checkpoints: int = 0
    started: bool = False
    """Whether the stream got its position and was subscribed: it has streamed."""
    last_event: Event | None = None
    """The last event received (the live status computes the lag from it)."""
    written: int = 0
    """Records the sink holds durably (counted per batch, once written)."""
    last_written: Event | None = None
    """The event of the last record the sink holds durably."""

    @property
    def last_event_time(self) -> float | None:
        """When Salesforce says the last event received happened (epoch seconds)."""
        return None if self.last_event is None else event_time_s(self.last_event.data)

    @property
    def last_written_time(self) -> float | None:
        """When Salesforce says the event of the last record written happened."""
        return None if self.last_written is None else event_time_s(self.last_written.data)


class RunResult(msgspec.Struct):
    """How a run ended."""

    streams: dict[str, StreamStats]
    error: SfStreamError | None = None
    lost: list[SubscriptionLost] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


class _Batch(msgspec.Struct):
    messages: list[Message] = msgspec.field(default_factory=list)
    records: int = 0
    started: float = 0.0
    seqs: list[int] = msgspec.field(default_factory=list)
    """The ledger's sequence numbers of the batches this write carries."""
    streams: dict[str, tuple[int, Event | None]] = msgspec.field(default_factory=dict)
    """stream -> (records, last event) this write carries, counted when it was sealed."""


class _Report(msgspec.Struct):
    """A batch written, waiting for its commit to be reported."""

    started: float
    write_s: float
    records: int
    streams: dict[str, tuple[int, int]]


class PipelineSettings(msgspec.Struct, frozen=True):
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
        keeper: with leases (several workers share the streams), the keeper of this
            worker's leases: the pipeline then starts with no stream and consumes those the
            keeper hands it (`start_streams`, `stop_streams`), each commit fenced by its
            lease's token.
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
        keeper: LeaseKeeper | None = None,
        rest: RestClient | None = None,
    ) -> None:
        self.specs = {spec.channel: spec for spec in specs}
        self._by_id = {spec.id: spec for spec in specs}
        self.keeper = keeper
        self.rest = rest
        """Reads gap events' records back (`on_gap_event: heal`); None: gaps are flagged."""
        self._gap_seen = False
        self._heal_fields: dict[str, list[str]] = {}
        self.client = client
        self.state = state
        self.sink = sink
        self.settings = settings
        self.run_id = run_id
        self._clock = clock
        self.stats = {spec.id: StreamStats() for spec in specs}
        self.telemetry = client.telemetry
        routes = {
            spec.channel: (spec, mapper_for(spec, run_id, self._gap_counter(spec.id)))
            for spec in specs
        }
        self._routes = routes
        """Every stream's route, by channel; `_mappers` holds those consumed now."""
        if keeper is None:
            for spec in specs:
                self.telemetry.subscribed.setdefault(spec.channel, False)
            self._mappers: dict[str, tuple[StreamSpec, Mapper]] = dict(routes)
        else:
            self._mappers = {}
        self._lease_state()
        self._sink_lock = asyncio.Lock()
        self._done_seq = -1
        """The highest batch sequence number written and committed."""
        self._progress = asyncio.Event()
        self._writer_done = False
        self._running = False
        """Whether `run` has subscribed the streams prepared before it."""
        self.ledger = CheckpointLedger({})
        self._positions: dict[str, int] | None = None
        self._announced: list[SchemaMessage] = []
        self._batch = _Batch()
        self._sealed_counts = dict.fromkeys(self.stats, 0)
        self._batches: asyncio.Queue[_Batch | None] = asyncio.Queue(settings.max_inflight)
        self._lost: list[SubscriptionLost] = []
        self._draining = False
        self.schemas = schemas
        self._schema_cache: dict[str, tuple[object, Tracked | None]] = {}
        self.backpressure = 0
        self._backpressure_logged = -_BACKPRESSURE_LOG_EVERY_S

    def _lease_state(self) -> None:
        """The state of the streams consumed under leases (empty without leases)."""
        self._tokens: dict[str, int] = {}
        """With leases: stream -> the token of the lease it is consumed under."""
        self._deadlines: dict[str, float] = {}
        """With leases: stream -> monotonic time its lease may have ended by."""
        self._deadline = math.inf
        """The earliest of `_deadlines`, checked once per chunk of events."""
        self._halted: set[str] = set()
        """Streams past their lease's deadline or fenced: no longer routed, being stopped."""
        self._fenced: set[str] = set()
        """Streams whose commit the store refused: their checkpoints are not committed."""

    def _gap_counter(self, stream: str) -> Callable[[str], None]:
        telemetry = self.telemetry

        def counted(change_type: str) -> None:
            telemetry.gap(stream, change_type.lower())
            self._gap_seen = True  # `_consume` heals it, once the event's records are in

        return counted

    # -- start ------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """What a run needs before it subscribes: positions, and the schemas to announce.

        It reads the state store and the sink and asks Salesforce for schemas, so it fails
        with a retryable error while any of them is unreachable; runners call it during
        start-up, where such failures are retried. Calling it again does nothing.
        """
        if self._positions is not None:
            return
        if self.keeper is not None:
            # The first round of leases: the streams this worker takes now get their
            # positions and schemas here, where start-up retries what is unreachable.
            self._positions = {}
            await self.keeper.step(self, first=True)
            return
        positions = await self.positions()
        if self.schemas is not None:
            self._announced = list(await self.schemas.start(self.specs.values(), positions))
        self._positions = positions

    async def positions(self) -> dict[str, int]:
        """Where each stream resumes: override, checkpoint, sink high-water mark, or initial
        replay.

        An operator's override wins over the sink's high-water mark. Its GAP note is written
        to the sink first; then a replayId or a reset is cleared from the store at once
        (the stream's checkpoint, or the note in the sink, now says the same), while
        `earliest` and `latest` stay until the stream's first checkpoint (nothing else would
        remember them if the run stopped before).
        """
        return await self._resolve(list(self.specs.values()))

    async def _resolve(self, specs: list[StreamSpec]) -> dict[str, int]:
        """`positions` of `specs`; the ledger takes each stream on from its position."""
        ids = [spec.id for spec in specs]
        checkpoints = await self.state.load(ids)
        for stream, found in checkpoints.items():
            if stream in self.stats:
                # Known before anything else can fail: a run that never starts still reports it.
                self.stats[stream].checkpoint = found.replay_id
        overrides = await self.state.overrides(ids)
        held = await self.sink.high_watermarks(ids)
        ahead: dict[str, int] = {}
        positions: dict[str, int] = {}
        start: dict[str, int | None] = {}
        notes: list[GapMessage] = []
        settled: dict[str, int] = {}
        reset: list[str] = []
        for spec in specs:
            checkpoint = checkpoints.get(spec.id)
            stored = checkpoint.replay_id if checkpoint is not None else None
            sink_mark = held.get(spec.id)
            override = overrides.get(spec.id)
            if override is not None:
                stored = _override_checkpoint(override)
                notes.append(_override_note(override, spec, sink_mark))
                if override.start is None:
                    reset.append(spec.id)
                elif override.start >= 0:
                    settled[spec.id] = override.start
            elif sink_mark is not None and (stored is None or sink_mark > stored):
                ahead[spec.id] = sink_mark
                stored = sink_mark
            start[spec.id] = stored
            self.stats[spec.id].checkpoint = stored
            positions[spec.id] = stored if stored is not None else _initial(spec, override)
        for stream, position in start.items():
            self.ledger.add(stream, position)
        if notes:
            await self._take_over(notes, settled, reset)
        if ahead:
            # The sink got a batch whose checkpoint never landed: record that it has it.
            log.warning("sink_ahead_of_checkpoint", streams=ahead)
            await self.state.commit(ahead, fence=self._fence(ahead))
        return positions

    async def _take_over(
        self, notes: list[GapMessage], settled: dict[str, int], reset: list[str]
    ) -> None:
        """Write the overrides' GAP notes (durably), then clear what the store can forget."""
        for note in notes:
            self.telemetry.gap(note.stream, note.reason)
            log.warning(
                "operator_override",
                stream=note.stream,
                reason=note.reason,
                from_replay_id=note.from_replay_id,
                to=note.to,
            )
        async with self._sink_lock:
            await self.sink.write(notes)
        for stream in reset:
            await self.state.reset(stream)  # the GAP note now starts the stream over
        if settled:
            # The checkpoint the override already set.
            await self.state.commit(settled, fence=self._fence(settled))

    async def subscribe_all(
        self, positions: dict[str, int], stop: asyncio.Event | None = None
    ) -> None:
        for spec in self.specs.values():
            if spec.id not in positions or not self._consumes(spec):
                continue
            replay_from = positions[spec.id]
            try:
                await self.client.subscribe(spec.channel, replay_from, spec.on_invalid_replay)
            except SubscriptionError as exc:
                self.telemetry.error(exc)
                self.telemetry.channel_down(spec.channel)
                self._subscription_lost(SubscriptionLost(spec.channel, exc))
            except SfStreamError:
                if stop is not None and stop.is_set():
                    return  # stopped while subscribing: the client is closing
                raise
            else:
                if not self._consumes(spec):
                    continue  # stopped (its lease given up) while it was being subscribed
                self.stats[spec.id].started = True
                log.info(
                    "stream_started", stream=spec.id, channel=spec.channel, replay_id=replay_from
                )

    def _consumes(self, spec: StreamSpec) -> bool:
        """Whether the stream is consumed now (with leases: its lease is held)."""
        return self.keeper is None or self._mappers.get(spec.channel) is not None

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
        if self._draining:
            return
        if not self.settings.continue_on_subscription_lost:
            raise lost.error
        if len(self._lost) == len(self.specs):
            raise TerminalError("every subscription failed; nothing left to stream")

    # -- run --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> RunResult:
        """Stream until `stop` is set or a terminal error; always flushes and commits.

        Three tasks in one task group: this one receives and cuts batches, the writer writes
        each batch and then commits its checkpoints, and a watcher closes the client when
        `stop` is set (everything already received is still written). The first failure of
        any of them ends the run.
        """
        error: SfStreamError | None = None
        try:
            await self.prepare()
            assert self._positions is not None
            positions = dict(self._positions)
            self._running = True  # streams started from now on subscribe themselves
            async with asyncio.TaskGroup() as tasks:
                writer = tasks.create_task(self._write_batches(), name="sfstream-writer")
                watcher = tasks.create_task(self._close_on(stop), name="sfstream-stop")
                summary = tasks.create_task(self._summaries(), name="sfstream-summary")
                silence = tasks.create_task(self._watch_silence(), name="sfstream-silence")
                keeping = None
                if self.keeper is not None:
                    keeping = tasks.create_task(self.keeper.run(self, stop), name="sfstream-leases")
                try:
                    if self._announced:
                        await self._hand_over(_Batch(messages=list(self._announced)))
                    await self.subscribe_all(positions, stop)
                    await self._receive(stop)
                except SfStreamError as exc:
                    # Kept, not raised: raising here would cancel the writer before it has
                    # written what was received.
                    error = exc
                finally:
                    watcher.cancel()
                    summary.cancel()
                    silence.cancel()
                    if keeping is not None:
                        keeping.cancel()
                        # A stream being started or stopped finishes its step first.
                        with contextlib.suppress(asyncio.CancelledError, SfStreamError):
                            await keeping
                    await self._finish(writer)
        except* SfStreamError as failures:
            first = _first(failures)
            assert isinstance(first, SfStreamError)
            if error is None:
                self.telemetry.error(first)
            error = error or first
        except* Exception as failures:
            crash = _first(failures)
            log.error("pipeline_crashed", error=repr(crash), exc_info=crash)  # noqa: TRY400
            error = TerminalError(f"the pipeline stopped: {crash!r}")
            self.telemetry.error(error)
        finally:
            self._log_summary(final=True)
        return RunResult(self.stats, error, self._lost)

    async def _close_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        await self.client.close()

    async def _finish(self, writer: asyncio.Task[None]) -> None:
        """Stop receiving; write what was received (unless the writer failed); end the writer."""
        await self.client.close()
        if writer.done():
            return  # the writer failed: the task group reports why
        # Events received before the stop (or a failure) are still written; a subscription
        # lost among them is recorded, and the run's first error stays the one reported.
        self._draining = True
        await self._consume_ready()
        if self._batch.messages or self.ledger.open_positions:
            await self._hand_over(self._flush())
        await self._hand_over(None)

    async def _receive(self, stop: asyncio.Event) -> None:
        """Take items until the client ends: closed by `stop` (normal) or failed (raised)."""
        max_wait_s = self.settings.max_wait_s
        client = self.client
        while True:
            if await self._consume_ready():
                continue
            batch = self._batch
            if batch.messages and self._clock() - batch.started >= max_wait_s:
                await self._hand_over(self._flush())
                continue
            try:
                if batch.messages:
                    wait_s = max(0.0, batch.started + max_wait_s - self._clock())
                    async with asyncio.timeout(wait_s):
                        item = await anext(client)
                else:
                    item = await anext(client)
            except TimeoutError:
                continue
            except StopAsyncIteration:
                if stop.is_set():
                    return
                raise TerminalError("the streaming client stopped") from None
            await self._consume([item])

    async def _consume_ready(self) -> bool:
        """Consume what the client has already received; whether there was anything."""
        items = self.client.take_nowait(_DRAIN_LIMIT)
        if not items:
            return False
        while items:
            await self._consume(items)
            items = self.client.take_nowait(_DRAIN_LIMIT)
        return True

    async def _consume(self, items: list[StreamItem]) -> None:
        if self._clock() >= self._deadline:
            self._overdue()
        now = _now()
        max_records = self.settings.max_records
        tracking = self.schemas is not None
        cache = self._schema_cache
        mappers = self._mappers
        for item in items:
            if type(item) is not Event:
                self._take(item, now)  # a Gap or a lost subscription
                continue
            route = mappers.get(item.channel) or self._route(item)
            if route is None:
                continue
            tracked = None
            if tracking:
                cached = cache.get(route[0].id)
                if cached is not None and cached[0] == item.schema_id:
                    tracked = cached[1]  # the common case: the schema seen last
                else:
                    tracked = await self._track_schema(item)
            self._take_event(item, route, now, tracked)
            if self._gap_seen:
                self._gap_seen = False
                await self._heal(route[0], item, now)
            if self._batch.records >= max_records:
                await self._hand_over(self._flush())

    async def _heal(self, spec: StreamSpec, event: Event, now: str) -> None:
        """After a gap event's records: the named records' current values, read through
        REST and flagged `meta.healed`, in the same batch (so the checkpoint cannot pass the
        gap event before they are written). An overflow, or a wildcard id, is announced with
        a GAP message, and the entity's records changed in its window are read instead."""
        if spec.on_gap_event != "heal" or self.rest is None:
            return
        header = event.change_header()
        entity = header.entityName
        ids = [str(i) for i in header.recordIds] if isinstance(header.recordIds, list) else []
        change_type = str(header.changeType)
        replay_id = event.replay_id if event.replay_id is not None else 0
        wildcard = change_type == "GAP_OVERFLOW" or any(i.endswith("*") for i in ids) or not ids
        since = until = None
        if wildcard:
            since, until = self._overflow_window(spec, header.commitTimestamp)
            self.telemetry.gap(spec.id, "gap_overflow_window")
            self._append(
                _overflow_note(
                    spec,
                    replay_id,
                    change_type=change_type,
                    entity=str(entity),
                    ids=ids,
                    since=since,
                    until=until,
                )
            )
        try:
            healed = await self._read_back(str(entity), ids, since, until)
        except SfStreamError as exc:
            self.telemetry.error(exc)
            log.error(  # noqa: TRY400 - the error's words say it all
                "gap_heal_failed",
                stream=spec.id,
                channel=spec.channel,
                replay_id=replay_id,
                change_type=change_type,
                record_ids=ids,
                error=str(exc),
                note="the gap event stays flagged meta.gap; resynchronize these records",
            )
            return
        meta = {
            "channel": spec.channel,
            "entity": entity,
            "change_type": change_type,
            "commit_timestamp": header.commitTimestamp,
            "gap": False,
            "healed": True,
            "run_id": self.run_id,
        }
        records = [
            Record(
                spec.id,
                record_id,
                replay_id,
                values,
                {**meta, "deleted": values is None},
                now,
            )
            for record_id, values in healed
        ]
        batch = self._batch
        for record in records:
            self._append(record)
        batch.records += len(records)
        self.stats[spec.id].emitted += len(records)
        log.info(
            "gap_healed",
            stream=spec.id,
            replay_id=replay_id,
            change_type=change_type,
            records=len(records),
            deleted=sum(1 for _, values in healed if values is None),
        )

    async def _read_back(
        self, entity: str, ids: list[str], since: datetime | None, until: datetime | None
    ) -> list[tuple[str, dict[str, Any] | None]]:
        """(record id, current values or None when deleted) of a gap's records."""
        from sfstream.salesforce import heal

        rest = self.rest
        assert rest is not None
        fields = self._heal_fields.get(entity)
        if fields is None:
            fields = self._heal_fields[entity] = await heal.readable_fields(rest, entity)
        if since is None or until is None:
            found = await heal.read_records(rest, entity, ids, fields)
            return [(record_id, found.get(record_id)) for record_id in dict.fromkeys(ids)]
        prefixes = [i[:-1] for i in ids if i.endswith("*")]
        rows = await heal.read_window(
            rest,
            entity,
            fields,
            since=since,
            until=until,
            prefix=prefixes[0] if len(prefixes) == 1 else None,
        )
        return [(str(row.get("Id")), row) for row in rows]

    def _overflow_window(
        self, spec: StreamSpec, commit_timestamp: object
    ) -> tuple[datetime, datetime]:
        """The window an overflow's records changed in: from the stream's last record
        written (or `_OVERFLOW_LOOKBACK` before the commit) to just after the commit."""
        until = _moment(commit_timestamp) or datetime.now(UTC)
        previous = self.stats[spec.id].last_written_time
        if previous is not None and previous < until.timestamp():
            return datetime.fromtimestamp(previous, UTC), until
        return until - _OVERFLOW_LOOKBACK, until

    def _route(self, event: Event) -> tuple[StreamSpec, Mapper] | None:
        return self._mappers.get(event.channel) or self._mappers.get(
            event.channel.partition("?")[0]
        )

    async def _track_schema(self, event: Event) -> Tracked | None:
        """The schema version of `event`; a SCHEMA message goes first when it is new."""
        route = self._route(event)
        if route is None:
            return None
        spec = route[0]
        schema_id = event.schema_id
        cached = self._schema_cache.get(spec.id)
        if cached is not None and cached[0] == schema_id:
            return cached[1]
        tracker = self.schemas
        assert tracker is not None
        if tracker.needs_observe(spec, event):
            await tracker.observe(spec, event)
        tracked = tracker.lookup(spec, event)
        if tracked is not None:
            self._announce(await tracker.transition(spec, tracked))
        self._schema_cache[spec.id] = (schema_id, tracked)
        return tracked

    def _announce(self, message: SchemaMessage | None) -> None:
        if message is None:
            return
        self.telemetry.schema_changed(message.stream)
        self._append(message)
        self._schema_cache.clear()

    def _append(self, message: Message) -> None:
        batch = self._batch
        if not batch.messages:
            batch.started = self._clock()
        batch.messages.append(message)

    def _take(self, item: StreamItem, now: str, tracked: Tracked | None = None) -> None:
        if isinstance(item, Event):
            route = self._route(item)
            if route is not None:
                self._take_event(item, route, now, tracked)
        elif isinstance(item, Gap):
            if item.channel not in self._mappers:
                return  # a stream this worker no longer consumes
            spec = self.specs[item.channel]
            self.stats[spec.id].gaps += 1
            self.telemetry.gap(spec.id, "replay_id_rejected")
            # The stream restarts from the fallback: ids below the old position are new.
            self.ledger.restart(spec.id)
            self._append(
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

    def _take_event(
        self, event: Event, route: tuple[StreamSpec, Mapper], now: str, tracked: Tracked | None
    ) -> None:
        spec, mapper = route
        stats = self.stats[spec.id]
        stats.received += 1
        stats.last_event = event
        replay_id = event.replay_id
        if replay_id is not None and not self.ledger.admit(spec.id, replay_id):
            stats.deduplicated += 1
            return
        batch = self._batch
        if not batch.messages:
            batch.started = self._clock()
        records = mapper(event, now)
        if tracked is not None:
            meta = records[0].meta  # shared by the records of one event
            meta["schema_version"] = tracked.version
            if tracked.subject != spec.id:
                meta["schema_subject"] = tracked.subject
        batch.messages.extend(records)
        count = len(records)
        batch.records += count
        stats.emitted += count

    def _flush(self) -> _Batch:
        """Seal the open batch: its STATE messages say what it reaches; start a new one."""
        batch = self._batch
        self._batch = _Batch()
        sealed = self.ledger.seal()
        batch.seqs.append(sealed.seq)
        counts = self._sealed_counts
        for stream, replay_id in sealed.positions.items():
            batch.messages.append(StateMessage(stream, replay_id))
            # The streams that moved: their records since the last seal are this batch's.
            stats = self.stats[stream]
            batch.streams[stream] = (stats.emitted - counts[stream], stats.last_event)
            counts[stream] = stats.emitted
        return batch

    async def _hand_over(self, batch: _Batch | None) -> None:
        """Queue a batch (or the end, None) for the writer; waits while the sink is behind.

        If the writer fails meanwhile, the task group cancels this wait and reports why.
        """
        if batch is not None and not batch.messages and not batch.seqs:
            return
        queue = self._batches
        if queue.full():
            self.backpressure += 1
            now = self._clock()
            if now - self._backpressure_logged >= _BACKPRESSURE_LOG_EVERY_S:
                self._backpressure_logged = now
                log.warning(
                    "backpressure",
                    waiting_batches=queue.qsize(),
                    client_queue=self.client.queue_depth,
                    times=self.backpressure,
                )
            await queue.put(batch)
        else:
            queue.put_nowait(batch)

    async def _write_batches(self) -> None:
        """Write each batch, then commit the checkpoints the ledger releases for it.

        A batch's commit runs while the next batch is written: checkpoints still only move
        over durably written records, and stay in order (each commit waits for the one
        before). A crash between a write and its commit is covered at start-up by the sink's
        high-water marks (or, for sinks that cannot tell, by at-least-once delivery).
        """
        try:
            await self._write_all()
        finally:
            self._writer_done = True
            self._progress.set()

    async def _write_all(self) -> None:
        async with asyncio.TaskGroup() as commits:
            committing: asyncio.Task[None] | None = None
            ended = False
            while not ended:
                batch = await self._batches.get()
                if batch is None:
                    break
                # Group commit: batches that queued up while the sink was busy share one write.
                while not self._batches.empty():
                    more = self._batches.get_nowait()
                    if more is None:
                        ended = True
                        break
                    batch.messages.extend(more.messages)
                    batch.seqs.extend(more.seqs)
                    batch.records += more.records
                    for stream, (count, last) in more.streams.items():
                        before = batch.streams.get(stream)
                        batch.streams[stream] = (count + (before[0] if before else 0), last)
                began_wall = time.time()
                began = time.perf_counter()
                if batch.messages:
                    await self._write(batch)
                write_s = time.perf_counter() - began
                for stream, (count, last) in batch.streams.items():
                    stats = self.stats[stream]
                    stats.written += count
                    if last is not None:
                        stats.last_written = last
                release: dict[str, int] = {}
                for seq in batch.seqs:
                    release.update(self.ledger.written(seq))
                if committing is not None:
                    await committing
                    committing = None
                report = self._batch_report(batch, began_wall, write_s)
                if release:
                    # Taken now: the next batch's write may move `last_written` before the
                    # commit runs.
                    times = {
                        stream: moment
                        for stream in release
                        if (moment := self.stats[stream].last_written_time) is not None
                    }
                    committing = commits.create_task(
                        self._commit(release, report, times, max(batch.seqs, default=-1))
                    )
                else:
                    self._report(report, None)
                    self._done(max(batch.seqs, default=-1))

    async def _commit(
        self,
        checkpoints: dict[str, int],
        report: _Report | None = None,
        event_times: dict[str, float] | None = None,
        seq: int = -1,
    ) -> None:
        began = time.perf_counter()
        if self.keeper is None:
            await self.state.commit(checkpoints, event_times)
        else:
            checkpoints = await self._fenced_commit(checkpoints, event_times or {})
        commit_s = time.perf_counter() - began
        self._done(seq)
        for stream, replay_id in checkpoints.items():
            stats = self.stats[stream]
            stats.checkpoint = replay_id
            stats.checkpoints += 1
        if report is not None:
            self._report(report, commit_s)

    async def _write(self, batch: _Batch) -> None:
        """Write the batch; with leases, fenced: a sink that finds a stream's token stale
        refuses the batch, and it is written again without that stream's messages."""
        if self.keeper is None:
            async with self._sink_lock:
                await self.sink.write(batch.messages)
            return
        while batch.messages:
            owned = [s for s in batch.streams if s in self._tokens and s not in self._fenced]
            try:
                async with self._sink_lock:
                    await self.sink.write(batch.messages, self._fence(owned))
            except LeaseLostError as exc:
                if not set(owned) & set(exc.streams):
                    raise  # not one of this batch's streams: nothing to drop and retry
                self.telemetry.error(exc)
                log.warning(
                    "write_fenced",
                    streams=exc.streams,
                    note="another worker owns these streams now; their records of this "
                    "batch are left to it",
                )
                self._fenced.update(exc.streams)
                self._halt(exc.streams)
                lost = set(exc.streams)
                batch.messages = [m for m in batch.messages if m.stream not in lost]
                for stream in lost:
                    batch.streams.pop(stream, None)
                continue
            return

    def _done(self, seq: int) -> None:
        if seq > self._done_seq:
            self._done_seq = seq
            self._progress.set()

    async def _wait_done(self, seq: int) -> None:
        """Until batch `seq` (and every one before) is written and committed, or the
        writer has ended."""
        while self._done_seq < seq and not self._writer_done:
            self._progress.clear()
            await self._progress.wait()

    # -- leases -----------------------------------------------------------------------------

    def _fence(self, streams: Iterable[str]) -> Fence | None:
        """The fence of a commit of `streams` (None without leases)."""
        if self.keeper is None:
            return None
        return Fence(self.keeper.worker, {stream: self._tokens[stream] for stream in streams})

    async def _fenced_commit(
        self, checkpoints: dict[str, int], event_times: dict[str, float]
    ) -> dict[str, int]:
        """Commit the checkpoints of the streams still owned, each under its lease's token;
        a stream the store says was taken over is dropped (and stopped) and the others are
        committed again. The checkpoints committed."""
        while True:
            owned = {
                stream: replay_id
                for stream, replay_id in checkpoints.items()
                if stream in self._tokens and stream not in self._fenced
            }
            if not owned:
                return {}
            times = {stream: at for stream, at in event_times.items() if stream in owned}
            try:
                await self.state.commit(owned, times, fence=self._fence(owned))
            except LeaseLostError as exc:
                if not owned.keys() & set(exc.streams):
                    raise  # not one of this commit's streams: nothing to drop and retry
                self.telemetry.error(exc)
                log.warning(
                    "commit_fenced",
                    streams=exc.streams,
                    checkpoints={stream: owned[stream] for stream in exc.streams},
                    note="another worker owns these streams now; it resumes them from "
                    "their checkpoint",
                )
                self._fenced.update(exc.streams)
                self._halt(exc.streams)
                continue
            return owned

    def _halt(self, streams: Iterable[str]) -> None:
        """Stop routing `streams` at once (their events are dropped from now on) and have
        the keeper stop them."""
        halted = [stream for stream in streams if stream in self._tokens]
        for stream in halted:
            self._halted.add(stream)
            self._mappers.pop(self._by_id[stream].channel, None)
            self._deadlines.pop(stream, None)
        self._deadline = min(self._deadlines.values(), default=math.inf)
        if halted and self.keeper is not None:
            self.keeper.lost(halted)

    def _overdue(self) -> None:
        """Streams whose lease may have ended (the keeper could not renew it in time, or
        the process was paused): consumed no more."""
        now = self._clock()
        late = [stream for stream, deadline in self._deadlines.items() if now >= deadline]
        if late:
            log.warning("leases_overdue", streams=sorted(late))
        self._halt(late)

    def extend(self, deadlines: Mapping[str, float]) -> None:
        """The keeper renewed these leases (see `sfstream.engine.leases.LeasedStreams`)."""
        for stream, deadline in deadlines.items():
            if stream in self._tokens and stream not in self._halted:
                self._deadlines[stream] = deadline
        self._deadline = min(self._deadlines.values(), default=math.inf)

    async def start_streams(
        self, tokens: Mapping[str, int], deadlines: Mapping[str, float]
    ) -> None:
        """Start consuming these streams, each under its lease's token: position (as at a
        run's start), schemas, subscription."""
        specs = [self._by_id[stream] for stream in sorted(tokens)]
        for spec in specs:
            self._tokens[spec.id] = tokens[spec.id]
            self._halted.discard(spec.id)
            self._fenced.discard(spec.id)
            self.telemetry.stream_added(spec.channel)
        self.extend(deadlines)
        positions = await self._resolve(specs)
        if self.schemas is not None:
            for message in await self.schemas.start(specs, positions):
                self._append(message)
        for spec in specs:
            if spec.id not in self._halted:
                self._mappers[spec.channel] = self._routes[spec.channel]
        started = {spec.id: positions[spec.id] for spec in specs}
        if self._running:
            await self.subscribe_all(started)
        else:
            assert self._positions is not None
            self._positions.update(started)  # `run` subscribes them

    async def stop_streams(self, streams: Iterable[str], reason: str) -> None:
        """Stop consuming these streams: unsubscribe, write and commit (under the lease,
        fenced) what was received of them, forget them."""
        stopping = sorted(stream for stream in set(streams) if stream in self._tokens)
        if not stopping:
            return
        for stream in stopping:
            spec = self._by_id[stream]
            self._mappers.pop(spec.channel, None)
            self._halted.add(stream)
            self._deadlines.pop(stream, None)
            self.stats[stream].started = False
            self.telemetry.stream_removed(spec.channel)
            with contextlib.suppress(SfStreamError):
                await self.client.unsubscribe(spec.channel)
        self._deadline = min(self._deadlines.values(), default=math.inf)
        if not self._writer_done:
            # The open batch may hold their records: seal it, and wait for everything sealed
            # to be written and committed.
            if self._batch.messages or self.ledger.open_positions:
                await self._hand_over(self._flush())
            await self._wait_done(self.ledger.last_sealed)
        for stream in stopping:
            self._tokens.pop(stream, None)
            self._halted.discard(stream)
            self._fenced.discard(stream)
            self.ledger.remove(stream)
            log.info(
                "stream_stopped",
                stream=stream,
                reason=reason,
                checkpoint=self.stats[stream].checkpoint,
            )

    def _batch_report(self, batch: _Batch, started: float, write_s: float) -> _Report | None:
        """What the telemetry is told of `batch` once committed; None when nobody listens.

        Only a listener (the traces) needs each stream's first and last replayId, found by
        a pass over the batch; the timings alone cost nothing per record."""
        telemetry = self.telemetry
        if not (telemetry.listeners or telemetry.write_timings or telemetry.commit_timings):
            return None
        streams: dict[str, tuple[int, int]] = {}
        if telemetry.listeners:
            for message in batch.messages:
                if type(message) is Record:
                    span = streams.get(message.stream)
                    replay_id = message.replay_id
                    streams[message.stream] = (
                        (replay_id, replay_id) if span is None else (span[0], replay_id)
                    )
        return _Report(started, write_s, batch.records, streams)

    def _report(self, report: _Report | None, commit_s: float | None) -> None:
        """Tell the telemetry about a batch that is through the sink (and committed)."""
        if report is None:
            return
        self.telemetry.batch_written(
            BatchReport(
                started=report.started,
                ended=time.time(),
                write_s=report.write_s,
                commit_s=commit_s,
                records=report.records,
                streams=report.streams,
            )
        )

    async def _watch_silence(self) -> None:
        """Start the session over when a stream with `max_silence_s` receives nothing that
        long (a subscription Salesforce dropped without a word, the usual "stops receiving
        events without an error"); the stream resumes from its last delivered replayId.

        Silence is seen from the stream's received count, checked a few times per
        `max_silence_s`: nothing is added to the per-event path.
        """
        watched = [spec for spec in self.specs.values() if spec.max_silence_s is not None]
        if not watched:
            return
        quietest = min(spec.max_silence_s or 0.0 for spec in watched)
        interval = max(0.05, quietest / 4)
        now = self._clock()
        seen = {spec.id: (self.stats[spec.id].received, now) for spec in watched}
        while True:
            await asyncio.sleep(interval)
            now = self._clock()
            for spec in watched:
                stats = self.stats[spec.id]
                count, since = seen[spec.id]
                if stats.received != count or not stats.started:
                    seen[spec.id] = (stats.received, now)
                    continue
                assert spec.max_silence_s is not None
                silent_s = now - since
                if silent_s < spec.max_silence_s:
                    continue
                log.warning(
                    "stream_silent",
                    stream=spec.id,
                    channel=spec.channel,
                    silent_s=round(silent_s, 1),
                    max_silence_s=spec.max_silence_s,
                    replay_id=self.ledger.last_admitted(spec.id),
                )
                error = StreamSilentError(
                    f"{spec.id} received nothing for {silent_s:.0f} s "
                    f"(max_silence_s: {spec.max_silence_s:g})",
                    channel=spec.channel,
                )
                self.client.start_over(error)
                # Every watched stream is resubscribed: each gets its full time again.
                seen = {s.id: (self.stats[s.id].received, now) for s in watched}
                break

    async def _summaries(self) -> None:
        while True:
            await asyncio.sleep(self.settings.summary_interval_s)
            self._log_summary(final=False)

    def _log_summary(self, *, final: bool) -> None:
        client = self.client.stats
        for stream, stats in self.stats.items():
            fields: dict[str, Any] = {}
            if stats.started or stats.checkpoint is not None:
                # A stream that never started shows its stored checkpoint, if it has one;
                # "None" would read as if its state were lost.
                fields["checkpoint"] = stats.checkpoint
            log.info(
                "stream_summary",
                stream=stream,
                received=stats.received,
                emitted=stats.emitted,
                deduplicated=stats.deduplicated,
                gaps=stats.gaps,
                **fields,
                started=stats.started,
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


_OVERFLOW_LOOKBACK: Final = timedelta(minutes=10)
"""An overflow's window starts at the stream's last record written, or this long before the
overflow's commit when there is none."""


def _overflow_note(
    spec: StreamSpec,
    replay_id: int,
    *,
    change_type: str,
    entity: str,
    ids: list[str],
    since: datetime,
    until: datetime,
) -> GapMessage:
    """The GAP message of an overflow (or a gap event with a wildcard id)."""
    return GapMessage(
        spec.id,
        "gap_overflow",
        replay_id,
        str(replay_id),
        f"{change_type} for {entity} ({', '.join(ids) or 'no ids'}): Salesforce sent no "
        f"change events for these records; the records of {entity} changed between "
        f"{since.isoformat()} and {until.isoformat()} follow, flagged meta.healed",
    )


def _moment(commit_timestamp: object) -> datetime | None:
    """A change event's `commitTimestamp` (epoch milliseconds) as a UTC time, a second after
    it (records changed in the transaction carry SystemModstamps up to the commit)."""
    if isinstance(commit_timestamp, bool) or not isinstance(commit_timestamp, int | float):
        return None
    return datetime.fromtimestamp(commit_timestamp / 1000 + 1, UTC)


def _override_checkpoint(override: Override) -> int | None:
    """The checkpoint a stream has once the run takes `override` over."""
    return override.start if override.start is not None and override.start >= 0 else None


def _initial(spec: StreamSpec, override: Override | None) -> int:
    """Where a stream without a position subscribes: the override's policy, or its own."""
    if override is not None and override.start is not None and override.start < 0:
        return override.start
    return spec.initial_replay


def _override_note(override: Override, spec: StreamSpec, sink_mark: int | None) -> GapMessage:
    """The GAP note that tells readers of the sink about an operator's change."""
    known = [p for p in (override.previous, sink_mark) if p is not None]
    before = max(known) if known else None
    target = _override_checkpoint(override)
    if target is not None:
        to = str(target)
        where = f"resumes after replayId {target}"
    else:
        policy = _initial(spec, override)
        to = {-2: "earliest", -1: "latest"}.get(policy, str(policy))
        where = f"starts from {to}" if policy < 0 else f"resumes after replayId {policy}"
    reason = "operator_reset" if override.start is None else "operator_set"
    command = "sfstream state reset" if override.start is None else "sfstream state set"
    was = f"replayId {before}" if before is not None else "no position"
    if target is not None and before is not None and target > before:
        effect = f"events after {before} up to {target} are skipped"
    elif target is None and to == "latest":
        effect = "events published before the run and not yet written are skipped"
    else:
        effect = (
            "events already written may be delivered again: deduplicate on (stream, replay_id, key)"
        )
    return GapMessage(
        spec.id,
        reason,
        before,
        to,
        f"an operator changed the position ({command}, {override.requested_at}): the stream "
        f"was at {was} and {where}; {effect}",
    )


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first error of a (possibly nested) exception group."""
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


def _now() -> str:
    """UTC now as `2024-05-01T12:00:00.123Z`."""
    # isoformat: several times faster than strftime, and this runs for every chunk of events.
    return datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
