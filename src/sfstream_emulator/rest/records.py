"""Records over REST: `POST sobjects/{name}`, `GET/PATCH/DELETE sobjects/{name}/{id}`.

A record write is one transaction of the record store, so it raises change events and
PushTopic events when it commits. `POST` of a platform event publishes it; PushTopic and
StreamingChannel records are handed to `StreamingSObjects`.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from sfstream_emulator.org import ObjectDef
from sfstream_emulator.records import RecordError, check_record_id
from sfstream_emulator.rest.common import (
    RestContext,
    change_origin,
    invalid_field,
    json_body,
    json_response,
    not_found,
    rest_error,
)
from sfstream_emulator.rest.streaming_sobjects import STREAMING_SOBJECT_NAMES, StreamingSObjects
from sfstream_emulator.runtime import OrgRuntime
from sfstream_emulator.values import FieldValueError

_ENQUEUED: Final = "OPERATION_ENQUEUED"


def publish_platform_event(runtime: OrgRuntime, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Publish platform event `name`; the save result Salesforce returns for it.

    Raises:
        FieldValueError: a value the event's fields refuse.
    """
    _event, event_uuid = runtime.publish_platform_event(name, body)
    event_def = runtime.spec.event(name)
    assert event_def is not None
    return {
        "id": runtime.ids.new(event_def.key_prefix),
        "success": True,
        "errors": [{"statusCode": _ENQUEUED, "message": event_uuid, "fields": []}],
    }


class RecordsApi:
    """Create, read, update and delete single records."""

    def __init__(self, context: RestContext, streaming: StreamingSObjects) -> None:
        self.runtime = context.runtime
        self.store = context.store
        self.streaming = streaming

    def _origin(self, request: web.Request) -> str:
        return change_origin(request, self.runtime.api_version)

    async def create(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await json_body(request)
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
                result = publish_platform_event(self.runtime, name, body)
            except FieldValueError as exc:
                return rest_error(400, exc.error_code, str(exc), exc.field.split(","))
            return json_response(result, status)
        if name.lower() in STREAMING_SOBJECT_NAMES:
            return self.streaming.create(name, body, status)
        obj = spec.object(name)
        if obj is None:
            if self.runtime.definition_for_event(name) is not None:
                return rest_error(
                    400, "INVALID_TYPE_FOR_OPERATION", f"entity type {name} does not support insert"
                )
            return not_found()
        transaction = self.store.transaction(self._origin(request))
        try:
            record_id = transaction.create(obj, body)
        except RecordError as exc:
            transaction.rollback()
            return json_response([exc.as_error()], exc.status)
        transaction.commit()
        return json_response({"id": record_id, "success": True, "errors": []}, status)

    def _resolve(self, request: web.Request) -> tuple[ObjectDef, str] | web.Response:
        name, record_id = request.match_info["name"], request.match_info["id"]
        obj = self.runtime.spec.object(name)
        if obj is None:
            return not_found()
        try:
            check_record_id(obj, record_id)
        except RecordError as exc:
            return rest_error(exc.status, exc.error_code, exc.message)
        return obj, record_id

    async def read(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name.lower() in STREAMING_SOBJECT_NAMES:
            return self.streaming.read(request)
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
                    return invalid_field(field, obj.name)
        return json_response(
            self.store.rest_record(obj, record, wanted, version=request.match_info["version"])
        )

    async def update(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["name"].lower() == "pushtopic":
            return await self.streaming.update_push_topic(request)
        resolved = self._resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        obj, record_id = resolved
        body = await json_body(request)
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

    async def delete(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["name"].lower() == "pushtopic":
            return self.streaming.delete_push_topic(request)
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
