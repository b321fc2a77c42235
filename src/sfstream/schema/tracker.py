"""Schema tracking at run time.

Every change event and platform event names its schema in `data.schema`. A schema is
registered when the stream first delivers a record that uses it, and announced with a
`SCHEMA` message (with the diff from the subject's previous records) before that record: so
in a registry that runs fill, versions are numbered in the order the schemas occur in the
stream, which is the order of the org's definitions, even when a stream replays old events.

At start, each single-entity stream's current schema is derived from the org's definitions
(eventSchema, else describe). A stream that starts at the tip (nothing older can arrive)
registers it and announces it before any record; a stream that replays keeps it for the
first event that names it, and remembers it as the point where the replay catches up with
the present. Streams that carry several entities (`/data/ChangeEvents`, custom channels) get
one subject per entity, learnt as events arrive. PushTopic and generic streams have no
schema ids: theirs is registered and announced at start.

Transitions are judged in the order of the stream: the diff is from the schema of the
subject's previous records in this run, never from the version with the number below. While
a stream replays events older than the org's current definition, a switch to a version that
was registered before the run (by `sfstream schema derive`, or by an earlier run) is a known
schema, not a change: its `SCHEMA` message says `breaking: false` and the run goes on.

A definition that cannot be fetched is an error that is logged and counted, never a crash:
records then go out with `schema_version: null`. A breaking change stops the run when the
stream's policy is `on_breaking_change: fail`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Literal, TypeVar

import msgspec
import structlog

from sfstream.bayeux import Event
from sfstream.bayeux.types import LATEST
from sfstream.errors import SfStreamError, TerminalError
from sfstream.protocol import SchemaMessage
from sfstream.salesforce.rest import RestClient
from sfstream.schema.compat import diff, is_breaking
from sfstream.schema.model import Kind, RecordModel, from_describe, from_event_schema, generic_model
from sfstream.schema.registry import SchemaRegistry, SchemaVersion
from sfstream.schema.render import fingerprint, to_avro, to_json_schema
from sfstream.streams import ChannelKind, StreamSpec, snake

log = structlog.get_logger("sfstream.schema")
_RETRIES: Final = 3
_SELECT: Final = r"(?is)^\s*select\s+(.+?)\s+from\s+(\w+)"
"""A PushTopic's query (compiled on first use, by `re`: only PushTopic streams need it)."""

BreakingPolicy = Literal["warn", "fail"]
_T = TypeVar("_T")


class SchemaChangeError(TerminalError):
    """A breaking schema change on a stream whose policy is `on_breaking_change: fail`."""


class Tracked(msgspec.Struct, frozen=True):
    subject: str
    version: int
    schema_id: str | None = None
    """The Salesforce schema id the events of this version name (None: no schema ids)."""


class CurrentSchema(msgspec.Struct, frozen=True):
    """A stream's schema as the org defines it now, rendered for its subject."""

    subject: str
    model: RecordModel
    schema: dict[str, Any]
    """JSON Schema (draft 2020-12) of the records' `data`."""
    avro: dict[str, Any]

    @property
    def schema_id(self) -> str | None:
        return self.model.schema_id

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.schema)


class Derived(msgspec.Struct, frozen=True):
    """What `SchemaTracker.derive` did for one stream."""

    spec: StreamSpec
    version: SchemaVersion | None = None
    """The registered version (None: not derived, see `skipped` or `error`)."""
    created: bool = False
    """Whether the version is new (False: that schema was registered already)."""
    skipped: str | None = None
    """Why a stream has no schema of its own to derive (multi-entity streams)."""
    error: str | None = None


def _kind(spec: StreamSpec) -> Kind:
    if spec.kind.is_cdc:
        return "change_events"
    if spec.kind in (ChannelKind.PLATFORM_EVENT, ChannelKind.PLATFORM_EVENT_CHANNEL):
        return "platform_event"
    if spec.kind is ChannelKind.PUSH_TOPIC:
        return "push_topic"
    return "generic"


def multi_entity(spec: StreamSpec) -> bool:
    """Whether the stream carries several entities, each a subject learnt from events."""
    return spec.kind in (
        ChannelKind.ALL_CHANGE_EVENTS,
        ChannelKind.CHANGE_EVENT_CHANNEL,
        ChannelKind.PLATFORM_EVENT_CHANNEL,
    )


def _event_name(spec: StreamSpec) -> str:
    """`AccountChangeEvent`, `Employee__ChangeEvent`, `Order_Placed__e`."""
    return spec.channel.partition("?")[0].rsplit("/", 1)[-1]


async def current_model(spec: StreamSpec, rest: RestClient | None) -> RecordModel:
    """The stream's schema as the org defines it now: eventSchema, else describe (PushTopics:
    the topic's query and describe of its object; generic streams: fixed).

    Raises:
        SfStreamError: the definition cannot be fetched (after retries of transient failures);
            a TerminalError without `rest` for streams whose schema comes from the org.
    """
    kind = _kind(spec)
    if kind == "generic":
        return generic_model(spec.channel)
    if rest is None:
        raise TerminalError("schema derivation needs a connection to the org")
    if kind == "push_topic":
        return await _topic_model(spec, rest)
    name = _event_name(spec)
    try:
        return from_event_schema(name, kind, await _retry(lambda: rest.event_schema(name)))
    except SfStreamError as exc:
        if exc.retryable:
            raise
        log.info("schema_from_describe", stream=spec.id, reason=str(exc))
        return from_describe(name, kind, await _retry(lambda: rest.describe(name)))


async def current_schema(spec: StreamSpec, rest: RestClient | None) -> CurrentSchema:
    """`current_model` rendered as JSON Schema and Avro for the stream's subject.

    Raises:
        ValueError: a multi-entity stream (`multi_entity`): it has one subject per entity.
        SfStreamError: as `current_model`.
    """
    if multi_entity(spec):
        raise ValueError(f"{spec.id} carries several entities: one subject per entity")
    model = await current_model(spec, rest)
    return CurrentSchema(spec.id, model, to_json_schema(model, spec.id), to_avro(model, spec.id))


async def _topic_model(spec: StreamSpec, rest: RestClient) -> RecordModel:
    name = spec.entity
    found = await _retry(
        # The name is a validated API name ([A-Za-z0-9_]): nothing to escape.
        lambda: rest.query(f"SELECT Name, Query FROM PushTopic WHERE Name = '{name}'")  # noqa: S608
    )
    if not found:
        raise TerminalError(f"PushTopic {name} does not exist", channel=spec.channel)
    match = re.match(_SELECT, str(found[0].get("Query", "")))
    if match is None:
        raise TerminalError(
            f"PushTopic {name} has a query sfstream cannot read", channel=spec.channel
        )
    fields = [f.strip() for f in match.group(1).split(",")]
    described = await _retry(lambda: rest.describe(match.group(2)))
    model = from_describe(name, "push_topic", described, only=fields)
    return RecordModel(name, "push_topic", model.fields, origin="describe")


class SchemaTracker:
    """Derives, registers and announces each stream's schemas.

    Args:
        rest: fetches eventSchema and describe results (None: no derivation, e.g. offline).
        registry: where versions are kept.
        policies: `warn` or `fail` per stream id, for breaking changes.
    """

    def __init__(
        self,
        rest: RestClient | None,
        registry: SchemaRegistry,
        policies: dict[str, BreakingPolicy] | None = None,
    ) -> None:
        self.rest = rest
        self.registry = registry
        self.policies = policies or {}
        self._by_schema_id: dict[tuple[str, str], Tracked] = {}
        self._static: dict[str, Tracked] = {}
        self._announced: dict[str, int] = {}
        self._used: dict[str, SchemaVersion] = {}
        self._failed: set[tuple[str, str]] = set()
        self._pending: dict[tuple[str, str], RecordModel] = {}
        """Current schemas of replaying streams, registered at the first event naming them."""
        self._replaying: dict[str, str] = {}
        """Stream id -> the org's current schema id, for streams that have not reached it yet."""
        self._created: set[tuple[str, int]] = set()
        """(subject, version) registered by this run; any other was known before it."""
        self.changes = 0
        self.errors = 0

    async def start(
        self, specs: Iterable[StreamSpec], positions: Mapping[str, int] | None = None
    ) -> list[SchemaMessage]:
        """Derive every single-entity stream's current schema; the SCHEMA messages to write
        before any record.

        A stream that starts at the tip registers its current schema now and announces it;
        one that replays keeps it for its first event (see the module's docstring).

        Args:
            positions: where each stream starts (stream id -> replayId, -1 the tip), as the
                pipeline resolved them from checkpoints. Without them, a stream starts at the
                tip when its `initial_replay` is latest and its subject has no version yet
                (one that has may resume from a checkpoint).
        """
        messages = []
        for spec in specs:
            if multi_entity(spec):
                continue
            try:
                model = await current_model(spec, self.rest)
            except SfStreamError as exc:
                self._unavailable(spec, None, exc)
                continue
            if model.schema_id is None or not await self._replays(spec, positions):
                # At the tip, or no schema ids to order by (PushTopic, generic, describe).
                version = await self._register(spec, spec.id, model)
                self._announced[spec.id] = version.version
                messages.append(_message(spec, version, [], False))
                continue
            # Replaying: older events may come first. Register the current schema when the
            # stream reaches it, unless it is registered already.
            self._replaying[spec.id] = model.schema_id
            known = await self._find(spec.id, to_json_schema(model, spec.id))
            if known is None:
                self._pending[(spec.id, model.schema_id)] = model
            else:
                self._by_schema_id[(spec.id, model.schema_id)] = Tracked(
                    spec.id, known.version, model.schema_id
                )
        return messages

    async def derive(self, specs: Iterable[StreamSpec]) -> list[Derived]:
        """Register each single-entity stream's current schema (`sfstream schema derive`).

        Registering a schema that is registered already returns its version: deriving twice
        creates nothing new. Never raises for one stream's failure: see `Derived.error`.
        """
        results = []
        for spec in specs:
            if multi_entity(spec):
                results.append(Derived(spec, skipped="one subject per entity, learnt from events"))
                continue
            try:
                current = await current_schema(spec, self.rest)
                version, created = await self.registry.register(
                    spec.id, current.schema, avro=current.avro, schema_id=current.schema_id
                )
            except SfStreamError as exc:
                self._unavailable(spec, None, exc)
                results.append(Derived(spec, error=str(exc)))
                continue
            if created:
                self._log_registered(spec, version)
            results.append(Derived(spec, version, created))
        return results

    async def _replays(self, spec: StreamSpec, positions: Mapping[str, int] | None) -> bool:
        """Whether events older than the org's current definition may come first."""
        if positions is not None and spec.id in positions:
            return positions[spec.id] != LATEST
        if spec.initial_replay != LATEST:
            return True
        return await self.registry.get(spec.id) is not None

    async def _find(self, subject: str, schema: dict[str, Any]) -> SchemaVersion | None:
        """The registered version of `schema`, if any."""
        digest = fingerprint(schema)
        for version in await self.registry.history(subject):
            if version.fingerprint == digest:
                return version
        return None

    def _rest(self) -> RestClient:
        if self.rest is None:
            raise TerminalError("schema derivation needs a connection to the org")
        return self.rest

    # -- per event --------------------------------------------------------------------------

    def lookup(self, spec: StreamSpec, event: Event) -> Tracked | None:
        """The subject and version of an event already known (None: `observe` it first)."""
        schema_id = event.schema_id
        if schema_id is not None:
            return self._by_schema_id.get((spec.id, schema_id))
        return self._static.get(spec.id)

    def needs_observe(self, spec: StreamSpec, event: Event) -> bool:
        schema_id = event.schema_id
        return (
            schema_id is not None
            and (spec.id, schema_id) not in self._by_schema_id
            and (spec.id, schema_id) not in self._failed
        )

    async def observe(self, spec: StreamSpec, event: Event) -> None:
        """Learn (derive and register) the schema an event names."""
        schema_id = event.schema_id
        assert schema_id is not None
        pending = self._pending.pop((spec.id, schema_id), None)
        if pending is not None:
            # The stream's current schema, derived at start: it is registered only now, so
            # that older schemas met first in a replay get the lower versions.
            await self._register(spec, spec.id, pending)
            return
        try:
            document = await _retry(lambda: self._rest().event_schema_by_id(schema_id))
            name = str(document.get("name") or _event_name(spec))
            model = from_event_schema(name, _kind(spec), {**document, "uuid": schema_id})
        except SfStreamError as exc:
            self._failed.add((spec.id, schema_id))
            self._unavailable(spec, schema_id, exc)
            return
        subject = spec.id
        if multi_entity(spec):
            entity = re.sub(r"(__ChangeEvent|ChangeEvent|__e)$", "", name)
            subject = f"{spec.id}.{snake(entity)}"
        await self._register(spec, subject, model)

    async def transition(self, spec: StreamSpec, tracked: Tracked) -> SchemaMessage | None:
        """Records of `tracked` come next: the SCHEMA message to write first, if any.

        Its diff is against the schema of the subject's previous records in this run (the
        order of the stream, not of version numbers), and a breaking one stops a stream
        whose policy is `fail`. While a stream replays events older than the org's current
        definition, a switch to a version registered before this run is a known schema, not
        a change: never breaking.
        """
        subject = tracked.subject
        replaying = spec.id in self._replaying
        if replaying and tracked.schema_id == self._replaying[spec.id]:
            del self._replaying[spec.id]  # caught up with the org's current definition
        previous = self._used.get(subject)
        if previous is not None and previous.version == tracked.version:
            return None
        version = await self.registry.get(subject, tracked.version)
        if version is None:
            return None
        changes = diff(previous.schema, version.schema) if previous is not None else []
        known = replaying and (subject, version.version) not in self._created
        breaking = is_breaking(changes) and not known
        self._used[subject] = version
        if previous is not None and known:
            log.info(
                "schema_known",
                stream=spec.id,
                subject=subject,
                version=version.version,
                previous=previous.version,
                changes=len(changes),
                schema_id=version.schema_id,
            )
        elif previous is not None:
            self.changes += 1
            log.warning(
                "schema_changed",
                stream=spec.id,
                subject=subject,
                version=version.version,
                previous=previous.version,
                breaking=breaking,
                changes=len(changes),
                schema_id=version.schema_id,
            )
            if breaking and self.policies.get(spec.id) == "fail":
                raise SchemaChangeError(
                    f"breaking schema change on {subject} (version {previous.version} to "
                    f"{version.version}): "
                    + "; ".join(f"{c.kind} {c.field}" for c in changes if not c.compatible)
                    + " -- the stream's policy is on_breaking_change: fail",
                    channel=spec.channel,
                )
        if self._announced.get(subject) == version.version and previous is None:
            return None  # announced at start, before any record
        self._announced[subject] = version.version
        return _message(spec, version, [c.as_dict() for c in changes], breaking)

    # -- registration -----------------------------------------------------------------------

    async def _register(self, spec: StreamSpec, subject: str, model: RecordModel) -> SchemaVersion:
        schema = to_json_schema(model, subject)
        version, created = await self.registry.register(
            subject, schema, avro=to_avro(model, subject), schema_id=model.schema_id
        )
        tracked = Tracked(subject, version.version, model.schema_id)
        if model.schema_id is not None:
            self._by_schema_id[(spec.id, model.schema_id)] = tracked
        if model.kind in ("push_topic", "generic"):
            self._static[spec.id] = tracked
        if created:
            self._created.add((subject, version.version))
            self._log_registered(spec, version)
        return version

    def _log_registered(self, spec: StreamSpec, version: SchemaVersion) -> None:
        log.info(
            "schema_registered",
            stream=spec.id,
            subject=version.subject,
            version=version.version,
            schema_id=version.schema_id,
        )

    def _unavailable(self, spec: StreamSpec, schema_id: str | None, error: SfStreamError) -> None:
        self.errors += 1
        log.error(
            "schema_unavailable",
            stream=spec.id,
            channel=spec.channel,
            schema_id=schema_id,
            error=str(error),
            retryable=error.retryable,
        )


def _message(
    spec: StreamSpec, version: SchemaVersion, changes: list[dict[str, object]], breaking: bool
) -> SchemaMessage:
    return SchemaMessage(
        stream=spec.id,
        subject=version.subject,
        version=version.version,
        schema=version.schema,
        diff=changes,
        breaking=breaking,
        schema_id=version.schema_id,
    )


async def _retry(call: Callable[[], Awaitable[_T]]) -> _T:
    """Run a REST call, retrying transient failures with a short backoff."""
    delay = 0.2
    for attempt in range(_RETRIES):
        try:
            return await call()
        except SfStreamError as exc:
            if not exc.retryable or attempt == _RETRIES - 1:
                raise
            await asyncio.sleep(delay)
            delay *= 4
    raise AssertionError("unreachable")
