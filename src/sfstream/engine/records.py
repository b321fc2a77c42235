"""Events become records: key, data and metadata by channel kind.

| kind | key | data | a record per |
|---|---|---|---|
| change events | the record id | the payload, with its header | record id it names |
| platform event | the configured key field, else `EventUuid` | the payload | event |
| PushTopic | `sobject.Id` | the `sobject` | event |
| generic | none | `{"payload": "..."}` | event |

`GAP_*` and `GAP_OVERFLOW` change events pass through as records with `meta.gap: true`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sfstream.bayeux import Event
from sfstream.protocol import Record
from sfstream.streams import ChannelKind, StreamSpec

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
        key_field = spec.key_field

        def event_records(event: Event, now: str) -> list[Record]:
            data = event.data
            payload = data.get("payload")
            if not isinstance(payload, dict):
                payload = {}
            info = data.get("event")
            uuid = info.get("EventUuid") if isinstance(info, dict) else None
            key = payload.get(key_field) if key_field else uuid
            meta = {
                "channel": channel,
                "schema_id": data.get("schema"),
                "event_uuid": uuid,
                "run_id": run_id,
            }
            replay_id = event.replay_id if event.replay_id is not None else 0
            return [Record(stream, _key(key), replay_id, payload, meta, now)]

        return event_records
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


def _key(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)
