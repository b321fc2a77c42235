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

from sfstream.bayeux import Event
from sfstream.protocol import Record
from sfstream.streams import ChannelKind, StreamSpec

log = structlog.get_logger("sfstream.engine")

Mapper = Callable[[Event, str], list[Record]]


def mapper_for(spec: StreamSpec, run_id: str) -> Mapper:
    """The function that turns this stream's events into records."""
    stream = spec.id
    channel = spec.channel
    if spec.kind.is_cdc:

        def change_records(event: Event, now: str) -> list[Record]:
            data = event.data
            payload = data.get("payload")
            if not isinstance(payload, dict):
                payload = {}
            header = payload.get("ChangeEventHeader")
            if not isinstance(header, dict):
                header = {}
            change_type = header.get("changeType")
            ids = header.get("recordIds")
            keys: list[Any] = ids if isinstance(ids, list) and ids else [None]
            meta = {
                "channel": channel,
                "schema_id": data.get("schema"),
                "entity": header.get("entityName"),
                "change_type": change_type,
                "commit_timestamp": header.get("commitTimestamp"),
                "transaction_key": header.get("transactionKey"),
                "sequence_number": header.get("sequenceNumber"),
                "gap": isinstance(change_type, str) and change_type.startswith("GAP_"),
                "run_id": run_id,
            }
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
            data = event.data
            sobject = data.get("sobject")
            if not isinstance(sobject, dict):
                sobject = {}
            info = data.get("event")
            info = info if isinstance(info, dict) else {}
            meta = {
                "channel": channel,
                "event_type": info.get("type"),
                "created_date": info.get("createdDate"),
                "run_id": run_id,
            }
            replay_id = event.replay_id if event.replay_id is not None else 0
            return [Record(stream, _key(sobject.get("Id")), replay_id, sobject, meta, now)]

        return topic_records

    def generic_records(event: Event, now: str) -> list[Record]:
        data = event.data
        info = data.get("event")
        info = info if isinstance(info, dict) else {}
        meta = {"channel": channel, "created_date": info.get("createdDate"), "run_id": run_id}
        replay_id = event.replay_id if event.replay_id is not None else 0
        return [Record(stream, None, replay_id, {"payload": data.get("payload")}, meta, now)]

    return generic_records


def _event_mapper(spec: StreamSpec, run_id: str) -> Mapper:
    """Platform events: keyed by the configured key field, else by `EventUuid`."""
    stream = spec.id
    channel = spec.channel
    key_field = spec.key_field
    missing_reported = False

    def event_records(event: Event, now: str) -> list[Record]:
        nonlocal missing_reported
        data = event.data
        payload = data.get("payload")
        if not isinstance(payload, dict):
            payload = {}
        info = data.get("event")
        uuid = info.get("EventUuid") if isinstance(info, dict) else None
        key = payload.get(key_field) if key_field else uuid
        if key is None and key_field and not missing_reported and key_field not in payload:
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
            "schema_id": data.get("schema"),
            "event_uuid": uuid,
            "run_id": run_id,
        }
        replay_id = event.replay_id if event.replay_id is not None else 0
        return [Record(stream, _key(key), replay_id, payload, meta, now)]

    return event_records


def _key(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)
