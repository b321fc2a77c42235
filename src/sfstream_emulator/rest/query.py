"""SOQL over REST: `query`, `queryAll` and `tooling/query`.

`query` and `queryAll` (which adds the recycle bin) read the org's records, with one level
of relationship fields (`Account.Name`), and the PushTopic and StreamingChannel sObjects.
The Tooling API answers PushTopic, StreamingChannel, `PlatformEventChannel` and
`PlatformEventChannelMember`. Every result comes in one page (`done: true`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from aiohttp import web

from sfstream_emulator.describe import streaming_sobject_fields
from sfstream_emulator.ids import to18
from sfstream_emulator.org import FieldDef, ObjectDef
from sfstream_emulator.rest.common import (
    RestContext,
    invalid_field,
    invalid_type,
    json_response,
    rest_error,
)
from sfstream_emulator.rest.streaming_sobjects import push_topic_row, streaming_channel_row
from sfstream_emulator.soql import Query, SoqlError, parse, run

_RECORD: Final = "\x00record"
"""Key of a query row that holds the stored record it was built from."""

Relations = dict[str, tuple[FieldDef, ObjectDef]]
"""Lower-case relationship name -> its reference field and the object it points at."""


class QueryApi:
    """SOQL queries over records, streaming sObjects and Tooling channel metadata."""

    def __init__(self, context: RestContext) -> None:
        self.runtime = context.runtime
        self.store = context.store

    async def query(self, request: web.Request) -> web.StreamResponse:
        return self._query(request, tooling=False, include_deleted=False)

    async def query_all(self, request: web.Request) -> web.StreamResponse:
        return self._query(request, tooling=False, include_deleted=True)

    async def tooling_query(self, request: web.Request) -> web.StreamResponse:
        return self._query(request, tooling=True, include_deleted=False)

    def _query(self, request: web.Request, *, tooling: bool, include_deleted: bool) -> web.Response:
        text = request.query.get("q", "")
        try:
            query = parse(text)
        except SoqlError as exc:
            return rest_error(400, exc.error_code, str(exc))
        entity = query.entity.lower()
        version = request.match_info["version"]
        rows: list[dict[str, Any]]
        if tooling and entity == "platformeventchannelmember":
            rows = self._channel_member_rows(version)
        elif tooling and entity == "platformeventchannel":
            rows = self._channel_rows(version)
        elif entity == "pushtopic":
            rows = [push_topic_row(t, version) for t in self.runtime.spec.push_topics]
        elif entity == "streamingchannel":
            rows = [streaming_channel_row(c, version) for c in self.runtime.spec.streaming_channels]
        elif not tooling and (obj := self.runtime.spec.object(query.entity)) is not None:
            return self._query_records(query, obj, include_deleted, version)
        else:
            return invalid_type(query.entity)
        known = _known_fields(entity)
        for name in _referenced_fields(query):
            if name.lower() not in known:
                return invalid_field(name, query.entity)
        return json_response(_query_result(query, rows))

    # -- records ----------------------------------------------------------------------------

    def _query_records(
        self, query: Query, obj: ObjectDef, include_deleted: bool, version: str
    ) -> web.Response:
        relations: Relations = {}
        for name in _referenced_fields(query):
            if "." not in name:
                if obj.field_ci(name) is None:
                    return invalid_field(name, obj.name)
                continue
            relation, _, target_field = name.partition(".")
            resolved = self._relationship(obj, relation)
            if resolved is None:
                return _bad_relationship(relation)
            if "." in target_field or resolved[1].field_ci(target_field) is None:
                return invalid_field(target_field, resolved[1].name)
            relations[relation.lower()] = resolved
        live = list(self.store.records[obj.name].values())
        if include_deleted:
            live += [r for o, r in self.store.recycle_bin.values() if o == obj.name]
        # Conditions and ordering see stored values (datetimes in the `Z` form SOQL literals
        # take); the result shows REST values. A relationship path filters on the related
        # record's value.
        rows: list[dict[str, Any]] = []
        for record in live:
            row: dict[str, Any] = {**record, _RECORD: record}
            for path in _referenced_fields(query):
                if "." in path:
                    row[path] = self._related_value(record, path, relations)
            rows.append(row)
        matched = run(query, rows)
        if query.count_only:
            return json_response({"totalSize": len(matched), "done": True, "records": []})
        records = []
        plain = [n for n in query.fields if "." not in n]
        for row in matched:
            record = row[_RECORD]
            shaped = self.store.rest_record(obj, record, plain, version=version)
            for path in query.fields:
                if "." not in path:
                    continue
                relation, _, target_field = path.partition(".")
                reference, target_obj = relations[relation.lower()]
                key = reference.relationship_name or relation
                related = self._related_record(record, reference, target_obj)
                if related is None:
                    shaped.setdefault(key, None)
                    continue
                nested = self.store.rest_record(
                    target_obj, related, [target_field], version=version
                )
                existing = shaped.get(key)
                if isinstance(existing, dict):
                    existing.update({k: v for k, v in nested.items() if k != "attributes"})
                else:
                    shaped[key] = nested
            records.append(shaped)
        return json_response({"totalSize": len(records), "done": True, "records": records})

    def _related_value(self, record: dict[str, Any], path: str, relations: Relations) -> Any:
        relation, _, target_field = path.partition(".")
        reference, target_obj = relations[relation.lower()]
        related = self._related_record(record, reference, target_obj)
        field = target_obj.field_ci(target_field)
        if related is None or field is None:
            return None
        return related.get(field.name)

    def _relationship(self, obj: ObjectDef, relation: str) -> tuple[FieldDef, ObjectDef] | None:
        """The reference field behind relationship `relation` and the object it points at."""
        for field in obj.fields:
            if field.relationship_name and field.relationship_name.lower() == relation.lower():
                for target_name in field.reference_to:
                    target = self.runtime.spec.object(target_name)
                    if target is not None:
                        return field, target
        return None

    def _related_record(
        self, record: dict[str, Any], field: FieldDef, target: ObjectDef
    ) -> dict[str, Any] | None:
        target_id = record.get(field.name)
        if not target_id:
            return None
        return self.store.records.get(target.name, {}).get(target_id)

    # -- Tooling channel metadata -----------------------------------------------------------

    def _channel_member_rows(self, version: str) -> list[dict[str, Any]]:
        spec = self.runtime.spec
        rows: list[dict[str, Any]] = []
        members = [("ChangeEvents", entity) for entity in spec.change_events]
        members += [
            (chn.name, entity)
            for chn in spec.channels
            for entity in chn.members
            if chn.channel_type == "data"
        ]
        for channel, entity in members:
            obj = spec.object(entity)
            assert obj is not None
            selected = obj.change_event_name
            developer = f"{channel.replace('__chn', '_chn')}_{selected}"
            record_id = to18(f"0v8{_digest15(developer)[3:]}")
            rows.append(
                {
                    "attributes": {
                        "type": "PlatformEventChannelMember",
                        "url": f"/services/data/v{version}/tooling/sobjects/"
                        f"PlatformEventChannelMember/{record_id}",
                    },
                    "Id": record_id,
                    "DeveloperName": developer,
                    "MasterLabel": developer,
                    "FullName": developer,
                    "EventChannel": channel,
                    "SelectedEntity": selected,
                    "EnrichedFields": [],
                    "FilterExpression": None,
                }
            )
        return rows

    def _channel_rows(self, version: str) -> list[dict[str, Any]]:
        rows = []
        for chn in self.runtime.spec.channels:
            record_id = to18(f"0YL{_digest15(chn.name)[3:]}")
            rows.append(
                {
                    "attributes": {
                        "type": "PlatformEventChannel",
                        "url": f"/services/data/v{version}/tooling/sobjects/PlatformEventChannel/"
                        f"{record_id}",
                    },
                    "Id": record_id,
                    "DeveloperName": chn.name.removesuffix("__chn"),
                    "MasterLabel": chn.label or chn.name,
                    "FullName": chn.name,
                    "ChannelType": chn.channel_type,
                }
            )
        return rows


def _referenced_fields(query: Query) -> list[str]:
    """Every field a query names: SELECT, WHERE and ORDER BY."""
    names = [*query.fields, *query.where_fields]
    if query.order_by is not None:
        names.append(query.order_by[0])
    return names


def _bad_relationship(relation: str) -> web.Response:
    return rest_error(
        400,
        "INVALID_FIELD",
        f"Didn't understand relationship '{relation}' in field path. If you are attempting to "
        "use a custom relationship, be sure to append the '__r' after the custom relationship "
        "name. Please reference your WSDL or the describe call for the appropriate names.",
    )


def _digest15(text: str) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    digest = hashlib.sha256(text.encode()).digest()
    return "".join(alphabet[b % 62] for b in digest[:15])


def _known_fields(entity: str) -> set[str]:
    names: dict[str, tuple[str, ...]] = {
        "pushtopic": tuple(f.name for f in streaming_sobject_fields("PushTopic")),
        "streamingchannel": tuple(f.name for f in streaming_sobject_fields("StreamingChannel")),
        "platformeventchannelmember": (
            "Id",
            "DeveloperName",
            "MasterLabel",
            "FullName",
            "EventChannel",
            "SelectedEntity",
            "EnrichedFields",
            "FilterExpression",
        ),
        "platformeventchannel": ("Id", "DeveloperName", "MasterLabel", "FullName", "ChannelType"),
    }
    return {n.lower() for n in names.get(entity, ())}


def _query_result(query: Query, rows: list[dict[str, Any]]) -> dict[str, Any]:
    matched = run(query, rows)
    if query.count_only:
        return {"totalSize": len(matched), "done": True, "records": []}
    records = []
    for row in matched:
        lowered = {k.lower(): k for k in row}
        shaped: dict[str, Any] = {"attributes": row["attributes"]}
        for name in query.fields:
            key = lowered.get(name.lower(), name)
            shaped[key] = row.get(key)
        records.append(shaped)
    return {"totalSize": len(records), "done": True, "records": records}
