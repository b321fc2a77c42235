"""Schema tracking at run time.

At start, each single-entity stream's schema is derived (eventSchema, else describe) and
registered, and a `SCHEMA` message goes out before any record. During the run every change
event and platform event names its schema in `data.schema`; an id not seen before is fetched
(`event/eventSchema/{id}`), derived, registered, and announced with a `SCHEMA` message (with
the diff) before the first record that uses it. Streams that carry several entities
(`/data/ChangeEvents`, custom channels) get one subject per entity, learnt as events arrive.

A definition that cannot be fetched is an error that is logged and counted, never a crash:
records then go out with `schema_version: null`. A breaking change stops the run when the
stream's policy is `on_breaking_change: fail`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

import structlog

from sfstream.bayeux import Event
from sfstream.errors import SfStreamError, TerminalError
from sfstream.protocol import SchemaMessage
from sfstream.salesforce.rest import RestClient
from sfstream.schema.compat import diff, is_breaking
from sfstream.schema.model import Kind, RecordModel, from_describe, from_event_schema, generic_model
from sfstream.schema.registry import SchemaRegistry, SchemaVersion
from sfstream.schema.render import to_avro, to_json_schema
from sfstream.streams import ChannelKind, StreamSpec, snake

log = structlog.get_logger("sfstream.schema")
_RETRIES: Final = 3
_SELECT: Final = re.compile(r"^\s*select\s+(.+?)\s+from\s+(\w+)", re.IGNORECASE | re.DOTALL)

BreakingPolicy = Literal["warn", "fail"]
_T = TypeVar("_T")


class SchemaChangeError(TerminalError):
    """A breaking schema change on a stream whose policy is `on_breaking_change: fail`."""


@dataclass(frozen=True, slots=True)
class Tracked:
    subject: str
    version: int


def _kind(spec: StreamSpec) -> Kind:
    if spec.kind.is_cdc:
        return "change_events"
    if spec.kind in (ChannelKind.PLATFORM_EVENT, ChannelKind.PLATFORM_EVENT_CHANNEL):
        return "platform_event"
    if spec.kind is ChannelKind.PUSH_TOPIC:
        return "push_topic"
    return "generic"


def _multi_entity(spec: StreamSpec) -> bool:
    return spec.kind in (
        ChannelKind.ALL_CHANGE_EVENTS,
        ChannelKind.CHANGE_EVENT_CHANNEL,
        ChannelKind.PLATFORM_EVENT_CHANNEL,
    )


def _event_name(spec: StreamSpec) -> str:
    """`AccountChangeEvent`, `Employee__ChangeEvent`, `Order_Placed__e`."""
    return spec.channel.partition("?")[0].rsplit("/", 1)[-1]


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
        self.changes = 0
        self.errors = 0

    async def start(self, specs: Iterable[StreamSpec]) -> list[SchemaMessage]:
        """Derive and register every single-entity stream's current schema."""
        messages = []
        for spec in specs:
            if _multi_entity(spec):
                continue
            try:
                model = await self._current_model(spec)
            except SfStreamError as exc:
                self._unavailable(spec, None, exc)
                continue
            version = await self._register(spec, spec.id, model)
            self._announced[spec.id] = version.version
            messages.append(_message(spec, version, [], False))
        return messages

    async def _current_model(self, spec: StreamSpec) -> RecordModel:
        kind = _kind(spec)
        if kind == "generic":
            return generic_model(spec.channel)
        rest = self._rest()
        if kind == "push_topic":
            return await self._topic_model(spec, rest)
        name = _event_name(spec)
        try:
            return from_event_schema(name, kind, await _retry(lambda: rest.event_schema(name)))
        except SfStreamError as exc:
            if exc.retryable:
                raise
            log.info("schema_from_describe", stream=spec.id, reason=str(exc))
            return from_describe(name, kind, await _retry(lambda: rest.describe(name)))

    async def _topic_model(self, spec: StreamSpec, rest: RestClient) -> RecordModel:
        name = spec.entity
        found = await _retry(
            # The name is a validated API name ([A-Za-z0-9_]): nothing to escape.
            lambda: rest.query(f"SELECT Name, Query FROM PushTopic WHERE Name = '{name}'")  # noqa: S608
        )
        if not found:
            raise TerminalError(f"PushTopic {name} does not exist", channel=spec.channel)
        match = _SELECT.match(str(found[0].get("Query", "")))
        if match is None:
            raise TerminalError(
                f"PushTopic {name} has a query sfstream cannot read", channel=spec.channel
            )
        fields = [f.strip() for f in match.group(1).split(",")]
        described = await _retry(lambda: rest.describe(match.group(2)))
        model = from_describe(name, "push_topic", described, only=fields)
        return RecordModel(name, "push_topic", model.fields, origin="describe")

    def _rest(self) -> RestClient:
        if self.rest is None:
            raise TerminalError("schema derivation needs a connection to the org")
        return self.rest

    # -- per event --------------------------------------------------------------------------

    def lookup(self, spec: StreamSpec, event: Event) -> Tracked | None:
        """The subject and version of an event already known (None: `observe` it first)."""
        schema_id = event.data.get("schema")
        if isinstance(schema_id, str):
            return self._by_schema_id.get((spec.id, schema_id))
        return self._static.get(spec.id)

    def needs_observe(self, spec: StreamSpec, event: Event) -> bool:
        schema_id = event.data.get("schema")
        return (
            isinstance(schema_id, str)
            and (spec.id, schema_id) not in self._by_schema_id
            and (spec.id, schema_id) not in self._failed
        )

    async def observe(self, spec: StreamSpec, event: Event) -> None:
        """Learn (derive and register) the schema an event names."""
        schema_id = event.data.get("schema")
        assert isinstance(schema_id, str)
        try:
            document = await _retry(lambda: self._rest().event_schema_by_id(schema_id))
            name = str(document.get("name") or _event_name(spec))
            model = from_event_schema(name, _kind(spec), {**document, "uuid": schema_id})
        except SfStreamError as exc:
            self._failed.add((spec.id, schema_id))
            self._unavailable(spec, schema_id, exc)
            return
        subject = spec.id
        if _multi_entity(spec):
            entity = re.sub(r"(__ChangeEvent|ChangeEvent|__e)$", "", name)
            subject = f"{spec.id}.{snake(entity)}"
        await self._register(spec, subject, model)

    async def transition(self, spec: StreamSpec, tracked: Tracked) -> SchemaMessage | None:
        """Records of `tracked` come next: the SCHEMA message to write first, if any.

        Its diff is against the schema of the subject's previous records in this run, and a
        breaking one stops a stream whose policy is `fail`. Compatibility follows the data:
        replaying events written before a definition changed is not a change.
        """
        subject = tracked.subject
        previous = self._used.get(subject)
        if previous is not None and previous.version == tracked.version:
            return None
        version = await self.registry.get(subject, tracked.version)
        if version is None:
            return None
        changes = diff(previous.schema, version.schema) if previous is not None else []
        breaking = is_breaking(changes)
        self._used[subject] = version
        if previous is not None:
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
        tracked = Tracked(subject, version.version)
        if model.schema_id is not None:
            self._by_schema_id[(spec.id, model.schema_id)] = tracked
        if model.kind in ("push_topic", "generic"):
            self._static[spec.id] = tracked
        if created:
            log.info(
                "schema_registered",
                stream=spec.id,
                subject=subject,
                version=version.version,
                schema_id=model.schema_id,
            )
        return version

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
