"""sObject collections: `POST/PATCH/DELETE composite/sobjects`, `GET composite/sobjects/{name}`.

Up to 200 records a request, one transaction a request: with `allOrNone` a failure rolls
every record back (`ALL_OR_NONE_OPERATION_ROLLED_BACK`), otherwise each record succeeds or
fails on its own. Platform events in a create are published when the request commits.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from sfstream_emulator.ids import is_valid_id, to18
from sfstream_emulator.records import RecordError, Transaction
from sfstream_emulator.rest.common import (
    RestContext,
    change_origin,
    json_body,
    json_response,
    not_found,
    rest_error,
)
from sfstream_emulator.rest.records import publish_platform_event
from sfstream_emulator.values import FieldValueError

MAX_COMPOSITE_RECORDS: Final = 200


def _too_many() -> web.Response:
    return rest_error(
        400,
        "EXCEEDED_ID_LIMIT",
        "record limit reached. cannot submit more than 200 records into this call",
    )


class CompositeApi:
    """Create, update, delete and read records in collections."""

    def __init__(self, context: RestContext) -> None:
        self.runtime = context.runtime
        self.store = context.store

    async def _composite_body(self, request: web.Request) -> tuple[bool, list[Any]] | web.Response:
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            return rest_error(
                400, "JSON_PARSER_ERROR", 'the body must be {"allOrNone": bool, "records": [...]}'
            )
        records = body["records"]
        if len(records) > MAX_COMPOSITE_RECORDS:
            return _too_many()
        return bool(body.get("allOrNone", False)), records

    async def create(self, request: web.Request) -> web.StreamResponse:
        parsed = await self._composite_body(request)
        if isinstance(parsed, web.Response):
            return parsed
        all_or_none, records = parsed
        return self._composite(request, all_or_none, records, "create")

    async def update(self, request: web.Request) -> web.StreamResponse:
        parsed = await self._composite_body(request)
        if isinstance(parsed, web.Response):
            return parsed
        all_or_none, records = parsed
        return self._composite(request, all_or_none, records, "update")

    async def delete(self, request: web.Request) -> web.StreamResponse:
        ids = [i for i in request.query.get("ids", "").split(",") if i]
        if not ids:
            return rest_error(400, "MISSING_ARGUMENT", "ids parameter is required")
        if len(ids) > MAX_COMPOSITE_RECORDS:
            return _too_many()
        all_or_none = request.query.get("allOrNone", "false").lower() == "true"
        return self._composite(request, all_or_none, ids, "delete")

    async def read(self, request: web.Request) -> web.StreamResponse:
        obj = self.runtime.spec.object(request.match_info["name"])
        if obj is None:
            return not_found()
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
        transaction = self.store.transaction(change_origin(request, self.runtime.api_version))
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
            results[index] = publish_platform_event(self.runtime, name, item)
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
