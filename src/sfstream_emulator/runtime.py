"""The living org: channels, schemas, allocations, and every way an event gets published.

`OrgRuntime` joins the org definition (`OrgSpec`) to the event bus. It knows which channel
names exist, which entity feeds which channel, what each event's schema id is, how much of
the daily delivery allocation is spent, and how to publish change events, platform events,
PushTopic events and generic events with exactly the payload shapes Salesforce sends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson

from sfstream_emulator.bus import CDC_STREAM, BusEvent, Channel, ChannelKind, EventBus, Stream
from sfstream_emulator.clock import Clock
from sfstream_emulator.generator import Sampler, check_payload_bytes, pad_fields, plan_padding
from sfstream_emulator.ids import EMPTY_ID, IdFactory, is_valid_id
from sfstream_emulator.org import EventDef, FieldDef, ObjectDef, OrgSpec
from sfstream_emulator.schemas import event_schema, schema_id
from sfstream_emulator.values import FieldValueError, coerce, format_datetime

DAY_S: Final = 86400.0
GAP_TYPES: Final = ("GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW")


class SubscribeError(Exception):
    """A subscription Salesforce refuses; `error` is the exact Bayeux error string."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def channel_does_not_exist(name: str) -> SubscribeError:
    return SubscribeError(
        f"400::The channel you requested to subscribe to does not exist {{{name}}}"
    )


@dataclass(slots=True)
class Allocation:
    """A counted limit over a rolling period, as `/limits` reports it."""

    maximum: int | None
    period_s: float = DAY_S
    used: int = 0
    window_start: float = 0.0

    def roll(self, now: float) -> None:
        """Start a new period at the period boundary of the emulator's clock (periods are
        counted from the emulator's start, so advancing the clock a day always resets)."""
        elapsed = now - self.window_start
        if elapsed >= self.period_s:
            self.window_start += (elapsed // self.period_s) * self.period_s
            self.used = 0

    def remaining(self, now: float) -> int | None:
        self.roll(now)
        return None if self.maximum is None else max(self.maximum - self.used, 0)

    def exhausted(self, now: float) -> bool:
        remaining = self.remaining(now)
        return remaining is not None and remaining <= 0

    def spend(self, count: int) -> None:
        self.used += count


@dataclass(slots=True)
class SchemaSnapshot:
    """One version of an event's schema, kept so old schema ids stay resolvable."""

    event_name: str
    expanded: dict[str, Any]
    compact: dict[str, Any]


@dataclass(slots=True)
class ChangeEvent:
    """A change event before it is numbered and serialized."""

    entity: str
    change_type: str
    record_ids: list[str]
    fields: dict[str, Any] = field(default_factory=dict)
    changed_fields: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Allocations:
    """The org's streaming allocations."""

    event_deliveries: Allocation
    """High-volume platform events and change events delivered to CometD clients."""
    streaming_deliveries: Allocation
    """PushTopic and generic events delivered."""
    concurrent_clients: int = 2000

    def for_kind(self, kind: ChannelKind) -> Allocation:
        if kind in (ChannelKind.CHANGE_EVENTS, ChannelKind.PLATFORM_EVENT):
            return self.event_deliveries
        return self.streaming_deliveries


class OrgRuntime:
    """An org definition brought to life on an event bus.

    Args:
        spec: the org definition (completed by `org.complete`).
        bus: where events are stored.
        clock: emulated time.
        ids: record id source.
        api_version: the version used in `changeOrigin` strings.
        delivery_allocation: daily change-event and platform-event deliveries; None for
            unlimited.
    """

    def __init__(
        self,
        spec: OrgSpec,
        bus: EventBus,
        clock: Clock,
        ids: IdFactory,
        *,
        api_version: str = "62.0",
        delivery_allocation: int | None = None,
        streaming_allocation: int | None = None,
        concurrent_clients: int = 2000,
        overflow_threshold: int = 100_000,
    ) -> None:
        self.spec = spec
        self.overflow_threshold = overflow_threshold
        """Changes of one transaction that get change events; the rest overflow."""
        self.bus = bus
        self.clock = clock
        self.ids = ids
        self.api_version = api_version
        self.allocations = Allocations(
            Allocation(delivery_allocation, window_start=clock.now()),
            Allocation(streaming_allocation, window_start=clock.now()),
            concurrent_clients,
        )
        self.published_platform_events = Allocation(None, period_s=3600.0)
        self._schemas: dict[str, SchemaSnapshot] = {}
        self._current_schema: dict[tuple[str, int], str] = {}
        # Commit numbers only grow, also across emulator restarts.
        self._commit_number = clock.now_ms() * 10
        self.cdc_stream = bus.stream(CDC_STREAM, ChannelKind.CHANGE_EVENTS)
        self._cdc_routes: dict[str, tuple[ObjectDef | None, list[Channel]]] = {}
        self._generated: dict[str, int] = {}
        """How many events `generate` made per entity: the counter in their values."""
        for topic in spec.push_topics:
            topic.id = topic.id or ids.new("0IF")
        for channel in spec.streaming_channels:
            channel.id = channel.id or ids.new("0M6")
        self.rebuild_channels()

    # -- channels ---------------------------------------------------------------------------

    def rebuild_channels(self) -> None:
        """Create the bus channels the org definition implies (existing ones are kept).

        Call it after changing which entities, topics or channels the org has.
        """
        self._cdc_routes.clear()
        bus = self.bus
        bus.channel("/data/ChangeEvents", self.cdc_stream, ChannelKind.CHANGE_EVENTS)
        for obj in self.spec.objects:
            if obj.supports_cdc:
                bus.channel(
                    f"/data/{obj.change_event_name}", self.cdc_stream, ChannelKind.CHANGE_EVENTS
                )
        for chn in self.spec.channels:
            if chn.channel_type == "data":
                bus.channel(f"/data/{chn.name}", self.cdc_stream, ChannelKind.CHANGE_EVENTS)
        for event in self.spec.platform_events:
            stream = bus.stream(f"/event/{event.name}", ChannelKind.PLATFORM_EVENT)
            bus.channel(stream.name, stream, ChannelKind.PLATFORM_EVENT)
        for chn in self.spec.channels:
            if chn.channel_type == "event":
                stream = bus.stream(f"/event/{chn.name}", ChannelKind.PLATFORM_EVENT)
                bus.channel(stream.name, stream, ChannelKind.PLATFORM_EVENT)
        for topic in self.spec.push_topics:
            stream = bus.stream(f"/topic/{topic.name}", ChannelKind.PUSH_TOPIC)
            bus.channel(stream.name, stream, ChannelKind.PUSH_TOPIC)
        for generic in self.spec.streaming_channels:
            stream = bus.stream(generic.name, ChannelKind.GENERIC)
            bus.channel(generic.name, stream, ChannelKind.GENERIC)

    def cdc_channels_for(self, entity: str) -> list[Channel]:
        """The CDC channels an event of `entity` appears on."""
        return self._cdc_route(entity)[1]

    def _cdc_route(self, entity: str) -> tuple[ObjectDef | None, list[Channel]]:
        route = self._cdc_routes.get(entity)
        if route is not None:
            return route
        spec = self.spec
        obj = spec.object(entity)
        result: list[Channel] = []
        if obj is not None and spec.cdc_selected(obj.name):
            channels = self.bus.channels
            result.append(channels[f"/data/{obj.change_event_name}"])
            if obj.name in spec.change_events:
                result.append(channels["/data/ChangeEvents"])
            result.extend(
                channels[f"/data/{chn.name}"]
                for chn in spec.channels
                if chn.channel_type == "data" and obj.name in chn.members
            )
        route = (obj, result)
        self._cdc_routes[entity] = route
        return route

    def resolve_channel(self, name: str) -> Channel:
        """The channel a `/meta/subscribe` names.

        Raises:
            SubscribeError: with the Bayeux error Salesforce returns for this name.
        """
        if not name:
            raise SubscribeError("400::Channel name not specified")
        if not name.startswith("/"):
            raise SubscribeError("400::Channel subscriptions must start with a leading '/'")
        base, _, query = name.partition("?")
        channel = self.bus.channels.get(base)
        if channel is None:
            raise channel_does_not_exist(base)
        if channel.kind is ChannelKind.PUSH_TOPIC:
            topic = self.spec.push_topic(base.removeprefix("/topic/"))
            if topic is None or not topic.is_active:
                raise channel_does_not_exist(base)
        if name in self.spec.restricted_channels or base in self.spec.restricted_channels:
            raise SubscribeError("403::Restricted channel")
        if channel.kind is ChannelKind.CHANGE_EVENTS and not self.spec.user.view_all_data:
            raise SubscribeError(
                "403::User not allowed to subscribe CDC without View All Data permissions"
            )
        if query:
            if channel.kind is not ChannelKind.PUSH_TOPIC:
                raise channel_does_not_exist(name)
            return self._filtered_topic(channel, name, query)
        return channel

    def _filtered_topic(self, base: Channel, name: str, query: str) -> Channel:
        existing = self.bus.channels.get(name)
        if existing is not None:
            return existing
        topic = self.spec.push_topic(base.name.removeprefix("/topic/"))
        assert topic is not None
        entity = _topic_entity(topic.query)
        obj = self.spec.object(entity)
        filters = parse_qsl(query, keep_blank_values=True)
        unknown = [k for k, _ in filters if obj is None or obj.field_ci(k) is None]
        if unknown or not filters:
            raise SubscribeError(
                f"400::Query fields {{{', '.join(unknown) or query}}} do not exist on the "
                "topic entity"
            )
        channel = self.bus.channel(name, base.stream, ChannelKind.PUSH_TOPIC)
        channel.events.extend(e for e in base.retained() if _topic_filter_match(e, filters))
        return channel

    def topic_filters(self) -> Iterable[tuple[Channel, Channel, list[tuple[str, str]]]]:
        """(base channel, filtered channel, filters) for every filtered topic subscription."""
        for channel in self.bus.channels.values():
            if channel.kind is ChannelKind.PUSH_TOPIC and "?" in channel.name:
                base_name, _, query = channel.name.partition("?")
                yield self.bus.channels[base_name], channel, parse_qsl(query)

    # -- schemas ----------------------------------------------------------------------------

    def schema_id(self, defn: ObjectDef | EventDef) -> str:
        """The current schema id of an object's change event or of a platform event."""
        key = (defn.name, defn.schema_revision)
        sid = self._current_schema.get(key)
        if sid is None:
            sid = schema_id(defn)
            self._current_schema[key] = sid
            name = defn.change_event_name if isinstance(defn, ObjectDef) else defn.name
            self._schemas[sid] = SchemaSnapshot(
                name, event_schema(defn, "EXPANDED"), event_schema(defn, "COMPACT")
            )
        return sid

    def schema_by_id(self, sid: str) -> SchemaSnapshot | None:
        """A schema by id, including ids of definitions that have since changed."""
        return self._schemas.get(sid)

    def definition_for_event(self, name: str) -> ObjectDef | EventDef | None:
        """The object behind a change event name, or the platform event called `name`."""
        event = self.spec.event(name)
        if event is not None:
            return event
        lowered = name.lower()
        return next(
            (
                o
                for o in self.spec.objects
                if o.supports_cdc and o.change_event_name.lower() == lowered
            ),
            None,
        )

    def alter_fields(
        self,
        entity: str,
        add: Iterable[FieldDef] = (),
        remove: Iterable[str] = (),
        retype: dict[str, str] | None = None,
    ) -> str:
        """Change an object's or event's fields, as a metadata deployment would.

        Returns the new schema id.

        Raises:
            KeyError: unknown entity or field.
            ValueError: a field to add exists already.
        """
        defn: ObjectDef | EventDef | None = self.spec.object(entity) or self.spec.event(entity)
        if defn is None:
            raise KeyError(f"no object or platform event called {entity!r}")
        fields = list(defn.fields)
        removing = set(remove)
        for name in removing:
            found = defn.field(name)
            if found is None or found.system:
                raise KeyError(f"{defn.name} has no removable field {name!r}")
        fields = [
            f for f in fields if f.name not in removing and f.compound_field_name not in removing
        ]
        for name, new_type in (retype or {}).items():
            index = next((i for i, f in enumerate(fields) if f.name == name), None)
            if index is None or fields[index].system:
                raise KeyError(f"{defn.name} has no retypable field {name!r}")
            fields[index] = fields[index].model_copy(update={"type": new_type})
            FieldDef.model_validate(fields[index].model_dump())
        for new in add:
            if any(f.name == new.name for f in fields):
                raise ValueError(f"{defn.name} already has a field {new.name!r}")
            fields.append(new)
        defn.fields = fields
        defn.schema_revision += 1
        return self.schema_id(defn)

    # -- publishing -------------------------------------------------------------------------

    def next_commit(self) -> tuple[int, int]:
        """(commitNumber, commitTimestamp ms) for a new transaction."""
        self._commit_number += 1 + (self._commit_number % 7)
        return self._commit_number, self.clock.now_ms()

    def publish_change_events(
        self, events: list[ChangeEvent], change_origin: str, *, wake: bool = True
    ) -> list[BusEvent]:
        """Publish one transaction's change events on the CDC channels that carry them.

        As in Salesforce, the first `overflow_threshold` changes of the transaction get change
        events (a create, delete or undelete counts one per record, an update one per changed
        field and record); the changes beyond get one `GAP_OVERFLOW` event per entity, with
        header fields only (Change Data Capture Developer Guide, "Overflow Events").
        """
        if not events:
            return []
        commit = (*self.next_commit(), _transaction_key())
        published: list[BusEvent] = []
        sequence = 0
        counted = 0
        overflowed: list[str] = []
        for change in events:
            obj, channels = self._cdc_route(change.entity)
            if obj is None or not channels:
                continue
            if not change.change_type.startswith("GAP_"):
                cost = len(change.record_ids) * (
                    max(1, len(change.changed_fields)) if change.change_type == "UPDATE" else 1
                )
                if counted + cost > self.overflow_threshold:
                    if obj.name not in overflowed:
                        overflowed.append(obj.name)
                    continue
                counted += cost
            sequence += 1
            stream = self.cdc_stream
            replay_id = stream.allocate_replay_id()
            data = self._change_event_data(
                obj, change, change_origin, commit, sequence=sequence, replay_id=replay_id
            )
            published.append(
                self.bus.publish(stream, channels, data, replay_id, obj.name, wake=wake)
            )
        for entity in overflowed:
            obj, channels = self._cdc_route(entity)
            assert obj is not None
            sequence += 1
            replay_id = self.cdc_stream.allocate_replay_id()
            data = self._change_event_data(
                obj,
                ChangeEvent(entity, "GAP_OVERFLOW", [EMPTY_ID]),
                change_origin,
                commit,
                sequence=sequence,
                replay_id=replay_id,
            )
            published.append(
                self.bus.publish(self.cdc_stream, channels, data, replay_id, obj.name, wake=wake)
            )
        return published

    def _change_event_data(
        self,
        obj: ObjectDef,
        change: ChangeEvent,
        change_origin: str,
        commit: tuple[int, int, str],
        *,
        sequence: int,
        replay_id: int,
    ) -> bytes:
        """The `data` of a change event; `commit` is (commitNumber, commitTimestamp, key)."""
        commit_number, commit_ts, transaction_key = commit
        header = {
            "entityName": obj.name,
            "recordIds": change.record_ids,
            "changeType": change.change_type,
            "changeOrigin": change_origin,
            "transactionKey": transaction_key,
            "sequenceNumber": sequence,
            "commitTimestamp": commit_ts,
            "commitNumber": commit_number,
            "commitUser": self.spec.user.id,
            "changedFields": change.changed_fields,
        }
        return orjson.dumps(
            {
                "schema": self.schema_id(obj),
                "payload": {"ChangeEventHeader": header, **change.fields},
                "event": {"replayId": replay_id},
            }
        )

    def publish_gap(self, entity: str, change_type: str, record_ids: list[str]) -> BusEvent:
        """Emit a `GAP_*` or `GAP_OVERFLOW` change event for `entity`.

        Raises:
            ValueError: unknown change type, or an entity without change events selected.
        """
        if change_type not in GAP_TYPES:
            raise ValueError(f"change type must be one of {', '.join(GAP_TYPES)}")
        obj = self.spec.object(entity)
        if obj is None or not self.cdc_channels_for(obj.name):
            raise ValueError(f"{entity!r} is not an object with change events selected")
        ids = [EMPTY_ID] if change_type == "GAP_OVERFLOW" else record_ids
        if not ids:
            raise ValueError(f"{change_type} needs at least one record id")
        origin = f"com/salesforce/api/rest/{self.api_version}"
        (event,) = self.publish_change_events([ChangeEvent(obj.name, change_type, ids)], origin)
        return event

    def publish_platform_event(
        self, name: str, values: dict[str, Any], *, wake: bool = True
    ) -> tuple[BusEvent, str]:
        """Publish one platform event; returns the stored event and its EventUuid.

        Raises:
            KeyError: no such platform event.
            FieldValueError: a bad, unknown or missing field.
        """
        event_def = self.spec.event(name)
        if event_def is None:
            raise KeyError(name)
        payload = self.platform_event_payload(event_def, values)
        return self._publish_payload(event_def, payload, wake=wake)

    def _publish_payload(
        self, event_def: EventDef, payload: dict[str, Any], *, wake: bool
    ) -> tuple[BusEvent, str]:
        """Publish a platform event whose payload is checked already."""
        event_uuid = str(uuid.uuid4())
        stream = self.bus.streams[f"/event/{event_def.name}"]
        channels = self._event_channels(event_def, stream)
        replay_id = stream.allocate_replay_id()
        data = self._platform_event_data(event_def, payload, event_uuid, replay_id)
        self.published_platform_events.spend(1)
        bus_event = self.bus.publish(stream, channels, data, replay_id, event_def.name, wake=wake)
        return bus_event, event_uuid

    def _platform_event_data(
        self, event_def: EventDef, payload: dict[str, Any], event_uuid: str, replay_id: int
    ) -> bytes:
        return orjson.dumps(
            {
                "schema": self.schema_id(event_def),
                "payload": payload,
                "event": {"EventUuid": event_uuid, "replayId": replay_id},
            }
        )

    def _event_channels(self, event_def: EventDef, stream: Stream) -> list[Channel]:
        channels = [self.bus.channels[stream.name]]
        channels.extend(
            self.bus.channels[f"/event/{chn.name}"]
            for chn in self.spec.channels
            if chn.channel_type == "event" and event_def.name in chn.members
        )
        return channels

    def platform_event_payload(self, event_def: EventDef, values: dict[str, Any]) -> dict[str, Any]:
        """Check published values and build the payload subscribers receive."""
        given: dict[str, Any] = {}
        for key, value in values.items():
            if key == "attributes":
                continue
            field_def = event_def.field_ci(key)
            if field_def is None:
                raise FieldValueError(
                    "INVALID_FIELD",
                    f"No such column '{key}' on sobject of type {event_def.name}",
                    key,
                )
            if field_def.system:
                raise FieldValueError(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {field_def.name}. Please check the "
                    "security settings of this field and verify that it is read/write for "
                    "your profile or permission set.",
                    field_def.name,
                )
            given[field_def.name] = coerce(field_def, value)
        payload: dict[str, Any] = {
            "CreatedDate": format_datetime(self.clock.now()),
            "CreatedById": self.spec.user.id,
        }
        missing = []
        for field_def in event_def.fields:
            if field_def.system:
                continue
            value = given.get(field_def.name, field_def.default_value)
            if value is None and not field_def.nillable:
                missing.append(field_def.name)
            payload[field_def.name] = value
        if missing:
            raise FieldValueError(
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                ",".join(missing),
            )
        return payload

    def publish_push_topic(
        self,
        topic_name: str,
        event_type: str,
        sobject: dict[str, Any],
        record: dict[str, Any] | None = None,
    ) -> BusEvent:
        """Publish a PushTopic notification (`created`, `updated`, `deleted`, `undeleted`).

        `record` (all field values) decides which filtered subscriptions also get it; the
        `sobject` (the topic's selected fields) is used when it is not given.
        """
        base = self.bus.channels[f"/topic/{topic_name}"]
        stream = base.stream
        replay_id = stream.allocate_replay_id()
        data = orjson.dumps(
            {
                "event": {
                    "createdDate": format_datetime(self.clock.now()),
                    "replayId": replay_id,
                    "type": event_type,
                },
                "sobject": sobject,
            }
        )
        channels = [base]
        for parent, filtered, filters in self.topic_filters():
            if parent is base and _filters_match(record or sobject, filters):
                channels.append(filtered)
        return self.bus.publish(stream, channels, data, replay_id, topic_name)

    def publish_generic(self, channel_name: str, payload: str) -> BusEvent:
        """Publish a generic streaming event: its payload is a plain string."""
        channel = self.bus.channels[channel_name]
        stream = channel.stream
        replay_id = stream.allocate_replay_id()
        data = orjson.dumps(
            {
                "event": {"createdDate": format_datetime(self.clock.now()), "replayId": replay_id},
                "payload": payload,
            }
        )
        return self.bus.publish(stream, [channel], data, replay_id, channel_name)

    def generate(self, target: str, count: int, payload_bytes: int | None = None) -> list[BusEvent]:
        """Publish `count` synthetic events of `payload_bytes` each, as fast as possible.

        `target` is an object with change events (`Account`: CREATE events) or a platform
        event (`Order_Placed__e`). Sizes are those of each message's `data` in JSON, within
        a few bytes, reached by padding text fields up to their declared lengths; without
        `payload_bytes`, 1,024 bytes or as much as the text fields allow. Text and number
        fields carry a counter unique to each generated event of `target` (see
        `generator`). Waiting subscribers are woken once, at the end.

        Raises:
            KeyError: `target` is neither.
            ValueError: a count below 1, or a `payload_bytes` that is negative, over
                `MAX_PAYLOAD_BYTES`, or more than the target's text fields can carry.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        check_payload_bytes(payload_bytes)
        event_def = self.spec.event(target)
        if event_def is not None:
            return self._generate_platform_events(event_def, count, payload_bytes)
        obj = self.spec.object(target)
        if obj is None or not self.cdc_channels_for(obj.name):
            raise KeyError(f"{target!r} is neither a platform event nor an object with CDC")
        return self._generate_change_events(obj, count, payload_bytes)

    def _next_generated(self, entity: str) -> int:
        """The counter of the next generated event of `entity`."""
        return self._generated.get(entity, 0) + 1

    def _reference(self, field_def: FieldDef) -> str | None:
        """An id for a generated lookup value: the org's user, or a fresh id of the object."""
        if "User" in field_def.reference_to:
            user = self.spec.user.id
            # An org file may give its user an id the REST API would refuse in a lookup.
            return user if is_valid_id(user) else self.ids.new("005")
        for name in field_def.reference_to:
            target = self.spec.object(name)
            if target is not None:
                return self.ids.new(target.key_prefix)
        return None

    def _generate_platform_events(
        self, event_def: EventDef, count: int, payload_bytes: int | None
    ) -> list[BusEvent]:
        custom = [f for f in event_def.fields if not f.system]
        sample = Sampler(self.clock.now(), self._reference)

        def values(n: int) -> dict[str, Any]:
            given = {f.name: sample.value(f, n) for f in custom}
            return {k: v for k, v in given.items() if v is not None}

        stream = self.bus.streams[f"/event/{event_def.name}"]
        # Sizes are measured with ids of the width the next events will have.
        placeholder = (str(uuid.UUID(int=0)), stream.last_allocated_replay_id)

        def measure(trial: dict[str, Any]) -> int:
            payload = self.platform_event_payload(event_def, trial)
            return len(self._platform_event_data(event_def, payload, *placeholder))

        first = self._next_generated(event_def.name)
        last = first + count - 1
        padding = plan_padding(
            event_def.name,
            values(first),
            pad_fields(custom),
            measure,
            payload_bytes=payload_bytes,
            n=first,
        )
        # The first and the last event go through the event's validation (values only grow
        # from one to the other); the payloads in between are built like theirs.
        checked = [values(n) for n in (first, last)]
        for n, given in zip((first, last), checked, strict=True):
            padding.apply(given, n)
            self.platform_event_payload(event_def, given)
        self._generated[event_def.name] = last
        header = {
            "CreatedDate": format_datetime(self.clock.now()),
            "CreatedById": self.spec.user.id,
        }
        defaults = {f.name: f.default_value for f in custom}
        published: list[BusEvent] = []
        for n in range(first, last + 1):
            given = values(n)
            padding.apply(given, n)
            payload = {**header, **defaults, **given}
            event, _ = self._publish_payload(event_def, payload, wake=False)
            published.append(event)
        self.bus.channels[f"/event/{event_def.name}"].wake()
        return published

    def _generate_change_events(
        self, obj: ObjectDef, count: int, payload_bytes: int | None
    ) -> list[BusEvent]:
        origin = f"com/salesforce/api/rest/{self.api_version};client=sfstream-generate"
        now_text = format_datetime(self.clock.now())
        user = self.spec.user.id
        name_field = obj.name_field
        named = name_field is not None and name_field.createable

        def values(n: int) -> dict[str, Any]:
            fields: dict[str, Any] = {
                "OwnerId": user,
                "CreatedDate": now_text,
                "CreatedById": user,
                "LastModifiedDate": now_text,
                "LastModifiedById": user,
            }
            if named:
                assert name_field is not None
                fields[name_field.name] = f"Generated {n:08d}"
            return fields

        # Only top-level fields: a compound's components are nested in change events.
        pads = pad_fields(
            [
                f
                for f in obj.top_level_fields()
                if f.createable
                and not (f.system or f.calculated or f.external_id)
                and f is not name_field
            ]
        )
        commit = (self._commit_number, self.clock.now_ms(), str(uuid.UUID(int=0)))
        replay_placeholder = self.cdc_stream.last_allocated_replay_id

        def measure(trial: dict[str, Any]) -> int:
            change = ChangeEvent(obj.name, "CREATE", [EMPTY_ID], trial)
            data = self._change_event_data(
                obj, change, origin, commit, sequence=1, replay_id=replay_placeholder
            )
            return len(data)

        first = self._next_generated(obj.name)
        padding = plan_padding(
            obj.name, values(first), pads, measure, payload_bytes=payload_bytes, n=first
        )
        self._generated[obj.name] = first + count - 1
        published: list[BusEvent] = []
        for n in range(first, first + count):
            fields = values(n)
            padding.apply(fields, n)
            change = ChangeEvent(obj.name, "CREATE", [self.ids.new(obj.key_prefix)], fields)
            published.extend(self.publish_change_events([change], origin, wake=False))
        for channel in self.cdc_channels_for(obj.name):
            channel.wake()
        return published


def _transaction_key() -> str:
    raw = os.urandom(16).hex()
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:32]}"


def _topic_entity(query: str) -> str:
    from sfstream_emulator.soql import parse

    return parse(query).entity


def _filters_match(sobject: dict[str, Any], filters: list[tuple[str, str]]) -> bool:
    lowered = {k.lower(): v for k, v in sobject.items()}
    for key, expected in filters:
        actual = lowered.get(key.lower())
        wanted = expected.strip("'\"")
        if actual is None or str(actual).lower() != wanted.lower():
            return False
    return True


def _topic_filter_match(event: BusEvent, filters: list[tuple[str, str]]) -> bool:
    sobject = orjson.loads(event.data).get("sobject", {})
    return isinstance(sobject, dict) and _filters_match(sobject, filters)
