"""The REST API subset streaming clients and their test harnesses use.

Everything lives under `/services/data/vXX.X/`: describe global and sobject describe,
`eventSchema`, SOQL `query`/`queryAll`/`tooling/query`, `limits`, record create, read,
update and delete, `composite/sobjects`, platform event publishing and generic streaming
`push`. Response bodies and error arrays have Salesforce's shapes: success bodies as the
REST API documents them, errors as `[{"message", "errorCode", "fields"}]`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from sfstream_emulator.describe import (
    STREAMING_SOBJECTS,
    describe_change_event,
    describe_event,
    describe_global,
    describe_object,
    describe_streaming_sobject,
    sobject_basic_info,
    streaming_sobject_fields,
)
from sfstream_emulator.ids import is_valid_id, to18
from sfstream_emulator.org import FieldDef, ObjectDef, PushTopicDef, StreamingChannelDef
from sfstream_emulator.records import RecordError, RecordStore, Transaction
from sfstream_emulator.runtime import OrgRuntime
from sfstream_emulator.settings import API_VERSIONS
from sfstream_emulator.soql import Query, SoqlError, parse, run
from sfstream_emulator.values import FieldValueError, coerce

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_COMPOSITE_RECORDS: Final = 200
_SEASONS: Final = ("Winter", "Spring", "Summer")
_ENQUEUED: Final = "OPERATION_ENQUEUED"


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        charset="UTF-8",
    )


def rest_error(
    status: int, error_code: str, message: str, fields: list[str] | None = None
) -> web.Response:
    entry: dict[str, Any] = {"message": message, "errorCode": error_code}
    if fields is not None:
        entry["fields"] = fields
    return json_response([entry], status)


def release_label(version: str) -> str:
    """`62.0` -> `Winter '25`: three releases a year since Winter '11 (v20.0)."""
    index = int(float(version)) - 20
    return f"{_SEASONS[index % 3]} '{11 + index // 3:02d}"


def _invalid_type(name: str) -> web.Response:
    return rest_error(
        400,
        "INVALID_TYPE",
        f"sObject type '{name}' is not supported. If you are attempting to use a custom "
        "object, be sure to append the '__c' after the entity name. Please reference your "
        "WSDL or the describe call for the appropriate names.",
    )


def _invalid_field(name: str, entity: str) -> web.Response:
    return rest_error(
        400,
        "INVALID_FIELD",
        f"No such column '{name}' on entity '{entity}'. If you are attempting to use a custom "
        "field, be sure to append the '__c' after the custom field name. Please reference "
        "your WSDL or the describe call for the appropriate names.",
    )


class RestApi:
    """Handlers for `/services/data`; `routes()` lists them for the app."""

    def __init__(
        self,
        runtime: OrgRuntime,
        store: RecordStore,
        subscriber_count: Callable[[str], int],
        client_count: Callable[[], int],
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.subscriber_count = subscriber_count
        self.client_count = client_count
        self.requests = 0

    def routes(self) -> list[web.RouteDef]:
        v = "/services/data/v{version:[0-9]+\\.[0-9]}"
        s = "{slash:/?}"
        return [
            web.get("/services/data" + s, self.versions),
            web.get(v + s, self.resources),
            web.get(v + "/sobjects" + s, self.sobjects),
            web.get(v + "/sobjects/{name}" + s, self.sobject_info),
            web.post(v + "/sobjects/{name}" + s, self.create),
            web.get(v + "/sobjects/{name}/describe" + s, self.describe),
            web.get(v + "/sobjects/{name}/eventSchema" + s, self.event_schema),
            web.post(v + "/sobjects/StreamingChannel/{id}/push" + s, self.push),
            web.get(v + "/sobjects/StreamingChannel/{id}/push" + s, self.push_status),
            web.get(v + "/sobjects/{name}/{id}" + s, self.read),
            web.patch(v + "/sobjects/{name}/{id}" + s, self.update),
            web.delete(v + "/sobjects/{name}/{id}" + s, self.delete),
            web.get(v + "/event/eventSchema/{sid}" + s, self.event_schema_by_id),
            web.get(v + "/query" + s, self.query),
            web.get(v + "/queryAll" + s, self.query_all),
            web.get(v + "/tooling/query" + s, self.tooling_query),
            web.get(v + "/limits" + s, self.limits),
            web.post(v + "/composite/sobjects" + s, self.composite_create),
            web.patch(v + "/composite/sobjects" + s, self.composite_update),
            web.delete(v + "/composite/sobjects" + s, self.composite_delete),
            web.get(v + "/composite/sobjects/{name}" + s, self.composite_read),
        ]

    # -- helpers ----------------------------------------------------------------------------

    def _origin(self, request: web.Request) -> str:
        version = request.match_info.get("version", self.runtime.api_version)
        origin = f"com/salesforce/api/rest/{version}"
        options = request.headers.get("Sforce-Call-Options", "")
        for option in options.split(","):
            key, _, value = option.strip().partition("=")
            if key.strip().lower() == "client" and value.strip():
                return f"{origin};client={value.strip()}"
        return origin

    async def _json_body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # `text=`, not `body=`: aiohttp deprecates bodies on HTTP exceptions, and the
            # deprecation warning turned every malformed body into a 500.
            raise web.HTTPBadRequest(
                text=orjson.dumps(
                    [
                        {
                            "message": f"Unexpected character in JSON body: {exc.msg}",
                            "errorCode": "JSON_PARSER_ERROR",
                        }
                    ]
                ).decode(),
                content_type="application/json",
            ) from exc

    # -- discovery --------------------------------------------------------------------------

    async def versions(self, request: web.Request) -> web.StreamResponse:
        return json_response(
            [
                {"label": release_label(v), "url": f"/services/data/v{v}", "version": v}
                for v in API_VERSIONS
            ]
        )

    async def resources(self, request: web.Request) -> web.StreamResponse:
        base = f"/services/data/v{request.match_info['version']}"
        names = ("sobjects", "query", "queryAll", "tooling", "limits", "composite", "event")
        return json_response({name: f"{base}/{name}" for name in names})

    async def sobjects(self, request: web.Request) -> web.StreamResponse:
        return json_response(describe_global(self.runtime.spec, request.match_info["version"]))

    def _describe_any(self, name: str, version: str) -> dict[str, Any] | None:
        spec = self.runtime.spec
        obj = spec.object(name)
        if obj is not None:
            return describe_object(obj, version)
        event = spec.event(name)
        if event is not None:
            return describe_event(event, version)
        for candidate in spec.objects:
            if candidate.supports_cdc and candidate.change_event_name.lower() == name.lower():
                return describe_change_event(candidate, version)
        for streaming in STREAMING_SOBJECTS:
            if streaming.lower() == name.lower():
                return describe_streaming_sobject(streaming, version)
        return None

    async def describe(self, request: web.Request) -> web.StreamResponse:
        body = self._describe_any(request.match_info["name"], request.match_info["version"])
        if body is None:
            return rest_error(404, "NOT_FOUND", "The requested resource does not exist")
        return json_response(body)

    async def sobject_info(self, request: web.Request) -> web.StreamResponse:
        body = self._describe_any(request.match_info["name"], request.match_info["version"])
        if body is None:
            return rest_error(404, "NOT_FOUND", "The requested resource does not exist")
        return json_response(sobject_basic_info(body))

    def _payload_format(self, request: web.Request) -> str | web.Response:
        fmt = request.query.get("payloadFormat", "EXPANDED").upper()
        if fmt not in ("EXPANDED", "COMPACT"):
            return rest_error(
                400,
                "INVALID_QUERY_FILTER_OPERATOR",
                f"Invalid payloadFormat: {request.query.get('payloadFormat')}. Valid values "
                "are EXPANDED and COMPACT.",
            )
        return fmt

    async def event_schema(self, request: web.Request) -> web.StreamResponse:
        fmt = self._payload_format(request)
        if isinstance(fmt, web.Response):
            return fmt
        defn = self.runtime.definition_for_event(request.match_info["name"])
        if defn is None:
            return rest_error(404, "NOT_FOUND", "The requested resource does not exist")
        sid = self.runtime.schema_id(defn)
        snapshot = self.runtime.schema_by_id(sid)
        assert snapshot is not None
        body = snapshot.expanded if fmt == "EXPANDED" else snapshot.compact
        return json_response({**body, "uuid": sid})

    async def event_schema_by_id(self, request: web.Request) -> web.StreamResponse:
        fmt = self._payload_format(request)
        if isinstance(fmt, web.Response):
            return fmt
        sid = request.match_info["sid"]
        snapshot = self.runtime.schema_by_id(sid)
        if snapshot is None:
            return rest_error(404, "NOT_FOUND", "The requested resource does not exist")
        body = snapshot.expanded if fmt == "EXPANDED" else snapshot.compact
        return json_response({**body, "uuid": sid})

    async def limits(self, request: web.Request) -> web.StreamResponse:
        now = self.runtime.clock.now()
        allocations = self.runtime.allocations

        def entry(maximum: int | None, used: int) -> dict[str, int]:
            top = maximum if maximum is not None else 2_147_483_647
            return {"Max": top, "Remaining": max(top - used, 0)}

        events = allocations.event_deliveries
        events.roll(now)
        streaming = allocations.streaming_deliveries
        streaming.roll(now)
        clients = allocations.concurrent_clients
        live = self.client_count()
        published = self.runtime.published_platform_events
        published.roll(now)
        return json_response(
            {
                "DailyApiRequests": entry(15000, self.requests),
                "DailyDeliveredPlatformEvents": entry(events.maximum, events.used),
                "DailyDurableGenericStreamingApiEvents": entry(streaming.maximum, streaming.used),
                "DailyDurableStreamingApiEvents": entry(streaming.maximum, streaming.used),
                "DailyGenericStreamingApiEvents": entry(streaming.maximum, streaming.used),
                "DailyStreamingApiEvents": entry(streaming.maximum, streaming.used),
                "DurableStreamingApiConcurrentClients": {
                    "Max": clients,
                    "Remaining": clients - live,
                },
                "DailyStandardVolumePlatformEvents": entry(10000, 0),
                "HourlyPublishedPlatformEvents": entry(250000, published.used),
                "HourlyPublishedStandardVolumePlatformEvents": entry(1000, 0),
                "MonthlyPlatformEvents": entry(events.maximum, events.used),
                "MonthlyPlatformEventsUsageEntitlement": entry(events.maximum, events.used),
                "StreamingApiConcurrentClients": {"Max": clients, "Remaining": clients - live},
            }
        )

    # -- query ------------------------------------------------------------------------------

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
            rows = [self._push_topic_row(t, version) for t in self.runtime.spec.push_topics]
        elif entity == "streamingchannel":
            rows = [
                self._streaming_channel_row(c, version)
                for c in self.runtime.spec.streaming_channels
            ]
        elif not tooling and (obj := self.runtime.spec.object(query.entity)) is not None:
            return self._query_records(query, obj, include_deleted, version)
        else:
            return _invalid_type(query.entity)
        known = _known_fields(entity)
        for name in _referenced_fields(query):
            if name.lower() not in known:
                return _invalid_field(name, query.entity)
        return json_response(_query_result(query, rows))

    def _query_records(
        self, query: Query, obj: ObjectDef, include_deleted: bool, version: str
    ) -> web.Response:
        relations: dict[str, tuple[FieldDef, ObjectDef]] = {}
        for name in _referenced_fields(query):
            if "." not in name:
                if obj.field_ci(name) is None:
                    return _invalid_field(name, obj.name)
                continue
            relation, _, target_field = name.partition(".")
            resolved = self._relationship(obj, relation)
            if resolved is None:
                return _bad_relationship(relation)
            if "." in target_field or resolved[1].field_ci(target_field) is None:
                return _invalid_field(target_field, resolved[1].name)
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

    def _related_value(
        self, record: dict[str, Any], path: str, relations: dict[str, tuple[FieldDef, ObjectDef]]
    ) -> Any:
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

    def _push_topic_row(self, topic: PushTopicDef, version: str) -> dict[str, Any]:
        return {
            "attributes": {
                "type": "PushTopic",
                "url": f"/services/data/v{version}/sobjects/PushTopic/{topic.id}",
            },
            "Id": topic.id,
            "Name": topic.name,
            "Query": topic.query,
            "ApiVersion": topic.api_version,
            "IsActive": topic.is_active,
            "NotifyForFields": topic.notify_for_fields,
            "NotifyForOperationCreate": topic.notify_for_operation_create,
            "NotifyForOperationUpdate": topic.notify_for_operation_update,
            "NotifyForOperationDelete": topic.notify_for_operation_delete,
            "NotifyForOperationUndelete": topic.notify_for_operation_undelete,
            "Description": topic.description,
        }

    def _streaming_channel_row(self, channel: StreamingChannelDef, version: str) -> dict[str, Any]:
        return {
            "attributes": {
                "type": "StreamingChannel",
                "url": f"/services/data/v{version}/sobjects/StreamingChannel/{channel.id}",
            },
            "Id": channel.id,
            "Name": channel.name,
            "Description": channel.description,
        }

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

    # -- records ----------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await self._json_body(request)
        if not isinstance(body, dict):
            return rest_error(
                400,
                "JSON_PARSER_ERROR",
                "Cannot deserialize instance of an sObject from a non-object body",
            )
        return self._create_one(request, name, body, status=201)

    def _create_one(
        self, request: web.Request, name: str, body: dict[str, Any], status: int
    ) -> web.Response:
        spec = self.runtime.spec
        if spec.event(name) is not None:
            try:
                result = self._publish(name, body)
            except FieldValueError as exc:
                return rest_error(400, exc.error_code, str(exc), exc.field.split(","))
            return json_response(result, status)
        if name.lower() in ("pushtopic", "streamingchannel"):
            return self._create_streaming_sobject(name, body, status)
        obj = spec.object(name)
        if obj is None:
            if self.runtime.definition_for_event(name) is not None:
                return rest_error(
                    400, "INVALID_TYPE_FOR_OPERATION", f"entity type {name} does not support insert"
                )
            return rest_error(404, "NOT_FOUND", "The requested resource does not exist")
        transaction = self.store.transaction(self._origin(request))
        try:
            record_id = transaction.create(obj, body)
        except RecordError as exc:
            transaction.rollback()
            return json_response([exc.as_error()], exc.status)
        transaction.commit()
        return json_response({"id": record_id, "success": True, "errors": []}, status)

    def _publish(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        _event, event_uuid = self.runtime.publish_platform_event(name, body)
        event_def = self.runtime.spec.event(name)
        assert event_def is not None
        return {
            "id": self.runtime.ids.new(event_def.key_prefix),
            "success": True,
            "errors": [{"statusCode": _ENQUEUED, "message": event_uuid, "fields": []}],
        }

    def _create_streaming_sobject(
        self, name: str, body: dict[str, Any], status: int
    ) -> web.Response:
        spec = self.runtime.spec
        checked = _streaming_values(name, body, creating=True)
        if isinstance(checked, web.Response):
            return checked
        values = checked
        if name.lower() == "streamingchannel":
            channel_name = values.get("Name")
            if not isinstance(channel_name, str) or not channel_name.startswith("/u/"):
                return rest_error(
                    400,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    "Name: a streaming channel name must start with /u/",
                    ["Name"],
                )
            if spec.streaming_channel(channel_name) is not None:
                return rest_error(
                    400,
                    "DUPLICATE_VALUE",
                    f"duplicate value found: Name duplicates {channel_name}",
                    ["Name"],
                )
            channel = StreamingChannelDef(
                name=channel_name,
                description=values.get("Description"),
                id=self.runtime.ids.new("0M6"),
            )
            spec.streaming_channels.append(channel)
            self.runtime.rebuild_channels()
            return json_response({"id": channel.id, "success": True, "errors": []}, status)
        problem = self._check_topic_values(values)
        if problem is not None:
            return problem

        def given(key: str, default: Any) -> Any:
            value = values.get(key)
            return default if value is None else value

        topic = PushTopicDef(
            name=values["Name"],
            query=values["Query"],
            api_version=float(given("ApiVersion", self.runtime.api_version)),
            is_active=given("IsActive", True),
            notify_for_fields=given("NotifyForFields", "Referenced"),
            notify_for_operation_create=given("NotifyForOperationCreate", True),
            notify_for_operation_update=given("NotifyForOperationUpdate", True),
            notify_for_operation_delete=given("NotifyForOperationDelete", True),
            notify_for_operation_undelete=given("NotifyForOperationUndelete", True),
            description=values.get("Description"),
            id=self.runtime.ids.new("0IF"),
        )
        spec.push_topics.append(topic)
        self.runtime.rebuild_channels()
        return json_response({"id": topic.id, "success": True, "errors": []}, status)

    def _check_topic_values(self, values: dict[str, Any]) -> web.Response | None:
        name, text = values.get("Name"), values.get("Query")
        if not isinstance(name, str) or not isinstance(text, str):
            missing = [k for k in ("Name", "Query") if not isinstance(values.get(k), str)]
            return rest_error(
                400,
                "REQUIRED_FIELD_MISSING",
                f"Required fields are missing: [{', '.join(missing)}]",
                missing,
            )
        if self.runtime.spec.push_topic(name) is not None:
            return rest_error(
                400, "DUPLICATE_VALUE", f"duplicate value found: Name duplicates {name}", ["Name"]
            )
        return self._check_topic_query(text)

    def _check_topic_query(self, text: str) -> web.Response | None:
        try:
            query = parse(text)
        except SoqlError as exc:
            return rest_error(400, "INVALID_FIELD", f"Query: {exc}", ["Query"])
        obj = self.runtime.spec.object(query.entity)
        if obj is None:
            return rest_error(
                400,
                "INVALID_FIELD",
                f"Query: entity {query.entity} is not supported for PushTopic",
                ["Query"],
            )
        if "id" not in {f.lower() for f in query.fields}:
            return rest_error(
                400, "INVALID_FIELD", "Query: the SELECT clause must include Id", ["Query"]
            )
        for field in (*query.fields, *query.where_fields):
            if obj.field_ci(field) is None:
                return rest_error(
                    400,
                    "INVALID_FIELD",
                    f"Query: No such column '{field}' on entity '{obj.name}'",
                    ["Query"],
                )
        return None

    def _resolve(self, request: web.Request) -> tuple[ObjectDef, str] | web.Response:
        name, record_id = request.match_info["name"], request.match_info["id"]
        obj = self.runtime.spec.object(name)
        if obj is None:
            return rest_error(404, "NOT_FOUND", "The requested resource does not exist")
        if not is_valid_id(record_id) or record_id[:3] != obj.key_prefix:
            return rest_error(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {record_id}",
            )
        return obj, record_id

    async def read(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name.lower() in ("pushtopic", "streamingchannel"):
            return self._read_streaming_sobject(request)
        resolved = self._resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        obj, record_id = resolved
        try:
            record = self.store.get(obj, record_id)
        except RecordError as exc:
            return json_response([exc.as_error()], exc.status)
        fields = request.query.get("fields")
        wanted = [f.strip() for f in fields.split(",")] if fields else None
        if wanted:
            for field in wanted:
                if obj.field_ci(field) is None:
                    return _invalid_field(field, obj.name)
        return json_response(
            self.store.rest_record(obj, record, wanted, version=request.match_info["version"])
        )

    def _read_streaming_sobject(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        record_id = request.match_info["id"]
        for topic in self.runtime.spec.push_topics:
            if topic.id is not None and to18(record_id) == topic.id:
                return json_response(self._push_topic_row(topic, version))
        for channel in self.runtime.spec.streaming_channels:
            if channel.id is not None and to18(record_id) == channel.id:
                return json_response(self._streaming_channel_row(channel, version))
        return rest_error(404, "NOT_FOUND", "The requested resource does not exist")

    async def update(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["name"].lower() == "pushtopic":
            return await self._update_push_topic(request)
        resolved = self._resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        obj, record_id = resolved
        body = await self._json_body(request)
        if not isinstance(body, dict):
            return rest_error(400, "JSON_PARSER_ERROR", "the body must be a JSON object")
        transaction = self.store.transaction(self._origin(request))
        try:
            transaction.update(obj, record_id, body)
        except RecordError as exc:
            transaction.rollback()
            return json_response([exc.as_error()], exc.status)
        transaction.commit()
        return web.Response(status=204)

    async def _update_push_topic(self, request: web.Request) -> web.StreamResponse:
        record_id = request.match_info["id"]
        topic = next(
            (
                t
                for t in self.runtime.spec.push_topics
                if is_valid_id(record_id) and t.id == to18(record_id)
            ),
            None,
        )
        if topic is None:
            return rest_error(404, "NOT_FOUND", "The requested resource does not exist")
        body = await self._json_body(request)
        if not isinstance(body, dict):
            return rest_error(400, "JSON_PARSER_ERROR", "the body must be a JSON object")
        checked = _streaming_values("PushTopic", body, creating=False)
        if isinstance(checked, web.Response):
            return checked
        attributes = {
            "Name": "name",
            "IsActive": "is_active",
            "Description": "description",
            "Query": "query",
            "NotifyForFields": "notify_for_fields",
            "ApiVersion": "api_version",
            "NotifyForOperationCreate": "notify_for_operation_create",
            "NotifyForOperationUpdate": "notify_for_operation_update",
            "NotifyForOperationDelete": "notify_for_operation_delete",
            "NotifyForOperationUndelete": "notify_for_operation_undelete",
        }
        for key, value in checked.items():
            if key not in attributes:
                return _not_updateable(key)
            if value is None and key != "Description":
                return rest_error(
                    400, "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{key}]", [key]
                )
        if "Query" in checked:
            problem = self._check_topic_query(checked["Query"])
            if problem is not None:
                return problem
        renamed = checked.get("Name", topic.name) != topic.name
        if renamed and self.runtime.spec.push_topic(checked["Name"]) is not None:
            return rest_error(
                400,
                "DUPLICATE_VALUE",
                f"duplicate value found: Name duplicates {checked['Name']}",
                ["Name"],
            )
        # Validated as a whole first, so a refused update changes nothing.
        for key, value in checked.items():
            setattr(topic, attributes[key], value)
        if renamed:
            # The name is the channel: `/topic/<new name>` from now on.
            self.runtime.rebuild_channels()
        return web.Response(status=204)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name.lower() == "pushtopic":
            record_id = request.match_info["id"]
            topics = self.runtime.spec.push_topics
            for index, topic in enumerate(topics):
                if is_valid_id(record_id) and topic.id == to18(record_id):
                    del topics[index]
                    return web.Response(status=204)
            return rest_error(404, "NOT_FOUND", "The requested resource does not exist")
        resolved = self._resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        obj, record_id = resolved
        transaction = self.store.transaction(self._origin(request))
        try:
            transaction.delete(obj, record_id)
        except RecordError as exc:
            transaction.rollback()
            return json_response([exc.as_error()], exc.status)
        transaction.commit()
        return web.Response(status=204)

    # -- generic streaming ------------------------------------------------------------------

    def _streaming_channel(self, request: web.Request) -> StreamingChannelDef | None:
        record_id = request.match_info["id"]
        if not is_valid_id(record_id):
            return None
        return next(
            (c for c in self.runtime.spec.streaming_channels if c.id == to18(record_id)), None
        )

    async def push(self, request: web.Request) -> web.StreamResponse:
        channel = self._streaming_channel(request)
        if channel is None:
            return rest_error(404, "NOT_FOUND", "The requested resource does not exist")
        body = await self._json_body(request)
        events = body.get("pushEvents") if isinstance(body, dict) else None
        if not isinstance(events, list) or not events:
            return rest_error(
                400,
                "JSON_PARSER_ERROR",
                "pushEvents must be a non-empty array of {payload, userIds}",
            )
        results = []
        for item in events:
            payload = item.get("payload") if isinstance(item, dict) else None
            if not isinstance(payload, str):
                return rest_error(
                    400, "JSON_PARSER_ERROR", "each push event needs a string payload"
                )
            if len(payload) > 3000:
                return rest_error(
                    400, "STRING_TOO_LONG", "payload: data value too large (max length=3000)"
                )
            self.runtime.publish_generic(channel.name, payload)
            fanout = self.subscriber_count(channel.name)
            users = item.get("userIds") or []
            status = {str(u): fanout > 0 for u in users} if isinstance(users, list) else {}
            results.append({"fanoutCount": fanout, "userOnlineStatus": status})
        return json_response(results)

    async def push_status(self, request: web.Request) -> web.StreamResponse:
        channel = self._streaming_channel(request)
        if channel is None:
            return rest_error(404, "NOT_FOUND", "The requested resource does not exist")
        online = [self.runtime.spec.user.id] if self.subscriber_count(channel.name) else []
        return json_response({"OnlineUserIds": online})

    # -- composite --------------------------------------------------------------------------

    async def _composite_body(self, request: web.Request) -> tuple[bool, list[Any]] | web.Response:
        body = await self._json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            return rest_error(
                400, "JSON_PARSER_ERROR", 'the body must be {"allOrNone": bool, "records": [...]}'
            )
        records = body["records"]
        if len(records) > MAX_COMPOSITE_RECORDS:
            return rest_error(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        return bool(body.get("allOrNone", False)), records

    async def composite_create(self, request: web.Request) -> web.StreamResponse:
        parsed = await self._composite_body(request)
        if isinstance(parsed, web.Response):
            return parsed
        all_or_none, records = parsed
        return self._composite(request, all_or_none, records, "create")

    async def composite_update(self, request: web.Request) -> web.StreamResponse:
        parsed = await self._composite_body(request)
        if isinstance(parsed, web.Response):
            return parsed
        all_or_none, records = parsed
        return self._composite(request, all_or_none, records, "update")

    async def composite_delete(self, request: web.Request) -> web.StreamResponse:
        ids = [i for i in request.query.get("ids", "").split(",") if i]
        if not ids:
            return rest_error(400, "MISSING_ARGUMENT", "ids parameter is required")
        if len(ids) > MAX_COMPOSITE_RECORDS:
            return rest_error(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        all_or_none = request.query.get("allOrNone", "false").lower() == "true"
        return self._composite(request, all_or_none, ids, "delete")

    async def composite_read(self, request: web.Request) -> web.StreamResponse:
        obj = self.runtime.spec.object(request.match_info["name"])
        if obj is None:
            return rest_error(404, "NOT_FOUND", "The requested resource does not exist")
        ids = [i for i in request.query.get("ids", "").split(",") if i]
        fields = [f for f in request.query.get("fields", "").split(",") if f]
        if not ids or not fields:
            return rest_error(400, "MISSING_ARGUMENT", "ids and fields parameters are required")
        result: list[Any] = []
        for record_id in ids:
            try:
                record = self.store.get(obj, record_id)
            except RecordError:
                result.append(None)
            else:
                result.append(
                    self.store.rest_record(
                        obj, record, fields, version=request.match_info["version"]
                    )
                )
        return json_response(result)

    def _composite(
        self, request: web.Request, all_or_none: bool, items: list[Any], op: str
    ) -> web.Response:
        transaction = self.store.transaction(self._origin(request))
        results: list[dict[str, Any]] = []
        # Platform events are published when the request commits ("publish after commit",
        # the default publish behaviour), so an all-or-none rollback publishes none of them.
        events: list[tuple[int, str, dict[str, Any]]] = []
        failed = False
        for item in items:
            try:
                event = self._composite_event(item) if op == "create" else None
                if event is not None:
                    events.append((len(results), event, item))
                    results.append({"success": True})
                else:
                    results.append(self._composite_one(transaction, item, op))
            except RecordError as exc:
                failed = True
                results.append(
                    {
                        "success": False,
                        "errors": [
                            {
                                "statusCode": exc.error_code,
                                "message": exc.message,
                                "fields": exc.fields,
                            }
                        ],
                    }
                )
        if failed and all_or_none:
            transaction.rollback()
            rolled_back = {
                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "message": "Record rolled back because not all records were valid and the "
                "request was using AllOrNone header",
                "fields": [],
            }
            results = [
                r if not r["success"] else {"success": False, "errors": [rolled_back]}
                for r in results
            ]
            return json_response(results)
        transaction.commit()
        for index, name, item in events:
            results[index] = self._publish(name, item)
        return json_response(results)

    def _composite_event(self, item: Any) -> str | None:
        """The platform event `item` publishes (its values checked), or None for a record."""
        if not isinstance(item, dict):
            return None
        attributes = item.get("attributes")
        sobject_type = attributes.get("type") if isinstance(attributes, dict) else None
        event = self.runtime.spec.event(sobject_type) if isinstance(sobject_type, str) else None
        if event is None:
            return None
        try:
            self.runtime.platform_event_payload(event, item)
        except FieldValueError as exc:
            raise RecordError.from_value(exc) from exc
        return event.name

    def _composite_one(self, transaction: Transaction, item: Any, op: str) -> dict[str, Any]:
        if op == "delete":
            record_id = str(item)
            obj = self.store.object_for_id(record_id) if is_valid_id(record_id) else None
            if obj is None:
                raise RecordError(400, "MALFORMED_ID", f"malformed id {record_id}", [])
            transaction.delete(obj, record_id)
            return {"id": to18(record_id), "success": True, "errors": []}
        if not isinstance(item, dict):
            raise RecordError(400, "JSON_PARSER_ERROR", "each record must be a JSON object")
        attributes = item.get("attributes")
        sobject_type = attributes.get("type") if isinstance(attributes, dict) else None
        if not isinstance(sobject_type, str):
            raise RecordError(400, "INVALID_TYPE", "Must specify a type in attributes", [])
        obj = self.runtime.spec.object(sobject_type)
        if obj is None:
            raise RecordError(
                400, "INVALID_TYPE", f"sObject type '{sobject_type}' is not supported.", []
            )
        if op == "create":
            record_id = transaction.create(obj, item)
            return {"id": record_id, "success": True, "errors": []}
        given_id = item.get("id") or item.get("Id")
        if not isinstance(given_id, str) or not is_valid_id(given_id):
            raise RecordError(400, "MISSING_ARGUMENT", "Id not specified in an update call", [])
        record_id = given_id
        values = {k: v for k, v in item.items() if k.lower() != "id"}
        try:
            transaction.update(obj, record_id, values)
        except RecordError as exc:
            if exc.status == 404 and exc.error_code == "NOT_FOUND":
                raise RecordError(
                    400,
                    "ENTITY_IS_DELETED"
                    if to18(record_id) in self.store.recycle_bin
                    else "INVALID_CROSS_REFERENCE_KEY",
                    "invalid cross reference id",
                    [],
                ) from exc
            raise
        return {"id": to18(record_id), "success": True, "errors": []}


def _not_updateable(name: str) -> web.Response:
    return rest_error(
        400,
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        f"Unable to create/update fields: {name}. Please check the security settings of this "
        "field and verify that it is read/write for your profile or permission set.",
        [name],
    )


def _streaming_values(
    name: str, body: dict[str, Any], *, creating: bool
) -> dict[str, Any] | web.Response:
    """Checked values of a PushTopic or StreamingChannel write, by canonical field name."""
    sobject = "PushTopic" if name.lower() == "pushtopic" else "StreamingChannel"
    fields = {f.name.lower(): f for f in streaming_sobject_fields(sobject)}
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key == "attributes":
            continue
        field = fields.get(key.lower())
        if field is None:
            return rest_error(
                400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {sobject}"
            )
        if not (field.createable if creating else field.updateable):
            return _not_updateable(field.name)
        try:
            values[field.name] = coerce(field, value)
        except FieldValueError as exc:
            return rest_error(400, exc.error_code, str(exc), [field.name])
    return values


_RECORD: Final = "\x00record"
"""Key of a query row that holds the stored record it was built from."""


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
