"""Events become records: key, data and metadata by channel kind.

| kind | key | data | a record per |
|---|---|---|---|
| change events | the record id | the payload, with its header | record id it names |
| platform event | the configured key field, else `EventUuid` | the payload | event |
| PushTopic | `sobject.Id` | the `sobject` | event |
| generic | none | `{"payload": "..."}` | event |

`GAP_*` and `GAP_OVERFLOW` change events pass through as records with `meta.gap: true`.

A platform event's key field is checked against the event's definition at start (see
`sfstream.engine.discovery`); an event that lacks it anyway (the field was removed since, or a
platform event channel carries events without it) gets key null, and the first such event of
a run logs `key_field_missing`. Every platform event payload carries all of its fields, null
when unset, so a field that is merely unset is not reported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from msgspec import UNSET

from sfstream.bayeux import ChangeHeader, Event
from sfstream.bayeux.messages import change_header_of
from sfstream.protocol import Record
from sfstream.streams import ChannelKind, StreamSpec

log = structlog.get_logger("sfstream.engine")

Mapper = Callable[[Event, str], list[Record]]


def mapper_for(
    spec: StreamSpec, run_id: str, on_gap: Callable[[str], None] | None = None
) -> Mapper:
    """The function that turns this stream's events into records.

    A record's `data` is the event's payload as the JSON text it arrived as (a
    `msgspec.Raw`, written out unchanged): only the fields that make the key and `meta` are
    read from an event. `on_gap` is called with the change type of each gap event
    (`GAP_CREATE`, `GAP_OVERFLOW`, ...).
    """
    stream = spec.id
    channel = spec.channel
    if spec.kind.is_cdc:

        def change_records(event: Event, now: str) -> list[Record]:
            body = event.body
            header: ChangeHeader | None = None
            if body is not None and body.payload is not UNSET:
                # The hot path: the header alone is decoded; the payload stays as it came.
                header = change_header_of(body.payload)
                payload: Any = body.payload  # a header was found: it is an object
            if header is None:
                header = event.change_header()
                payload = event.payload_json()
            change_type = header.changeType
            ids = header.recordIds
            keys: list[Any] = ids if isinstance(ids, list) and ids else [None]
            schema_id = body.schema if body is not None else event.schema_id
            gap = type(change_type) is str and change_type.startswith("GAP_")
            meta = {
                "channel": channel,
                "schema_id": schema_id if type(schema_id) is str else None,
                "entity": header.entityName,
                "change_type": change_type,
                "commit_timestamp": header.commitTimestamp,
                "transaction_key": header.transactionKey,
                "sequence_number": header.sequenceNumber,
                "gap": gap,
                "run_id": run_id,
            }
            if gap and on_gap is not None:
                on_gap(change_type)
            replay_id = event.replay_id if event.replay_id is not None else 0
            if len(keys) == 1:
                return [Record(stream, _key(keys[0]), replay_id, payload, meta, now)]
            meta["merged_records"] = len(keys)
            return [Record(stream, _key(key), replay_id, payload, meta, now) for key in keys]

        return change_records
    if spec.kind in (ChannelKind.PLATFORM_EVENT, ChannelKind.PLATFORM_EVENT_CHANNEL):
        return _event_mapper(spec, run_id)
    if spec.kind is ChannelKind.PUSH_TOPIC:

        def topic_records(event: Event, now: str) -> list[Record]:
            sobject = event.sobject_json()
            found, record_id = event.member_field("sobject", "Id")
            meta = {
                "channel": channel,
                "event_type": event.info("type"),
                "created_date": event.info("createdDate"),
                "run_id": run_id,
            }
            replay_id = event.replay_id if event.replay_id is not None else 0
            key = _key(record_id) if found else None
            return [Record(stream, key, replay_id, sobject, meta, now)]

        return topic_records

    def generic_records(event: Event, now: str) -> list[Record]:
        meta = {"channel": channel, "created_date": event.info("createdDate"), "run_id": run_id}
        replay_id = event.replay_id if event.replay_id is not None else 0
        payload = event.payload_json(object_only=False)
        return [Record(stream, None, replay_id, {"payload": payload}, meta, now)]

    return generic_records


def _event_mapper(spec: StreamSpec, run_id: str) -> Mapper:
    """Platform events: keyed by the configured key field, else by `EventUuid`."""
    stream = spec.id
    channel = spec.channel
    key_field = spec.key_field
    missing_reported = False

    def event_records(event: Event, now: str) -> list[Record]:
        nonlocal missing_reported
        uuid = event.info("EventUuid")
        if key_field:
            present, key = event.payload_field(key_field)
        else:
            present, key = True, uuid
        if not present and not missing_reported:
            missing_reported = True
            log.warning(
                "key_field_missing",
                stream=stream,
                channel=channel,
                key_field=key_field,
                replay_id=event.replay_id,
                note="records of this stream get key null while its events lack the "
                "field; check the key_field against the event's definition",
            )
        meta = {
            "channel": channel,
            "schema_id": event.schema_id,
            "event_uuid": uuid,
            "run_id": run_id,
        }
        replay_id = event.replay_id if event.replay_id is not None else 0
        payload = event.payload_json()
        return [Record(stream, _key(key), replay_id, payload, meta, now)]

    return event_records


def _key(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    return str(value)
