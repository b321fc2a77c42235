"""PushTopic and StreamingChannel as sObjects: create, read, update and delete them over REST.

They are not records of the store: a PushTopic is a channel definition (`/topic/<Name>`)
and a StreamingChannel a generic channel (`/u/<Name>`), so writing one rebuilds the org's
channels. Their query rows are built here too, for `query?q=SELECT … FROM PushTopic`.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from sfstream_emulator.describe import streaming_sobject_fields
from sfstream_emulator.ids import is_valid_id, to18
from sfstream_emulator.org import PushTopicDef, StreamingChannelDef
from sfstream_emulator.rest.common import (
    RestContext,
    json_body,
    json_response,
    not_found,
    rest_error,
)
from sfstream_emulator.runtime import OrgRuntime
from sfstream_emulator.soql import SoqlError, parse
from sfstream_emulator.values import FieldValueError, coerce

STREAMING_SOBJECT_NAMES: Final = ("pushtopic", "streamingchannel")
"""Lower-case names of the streaming sObjects, as request paths are matched."""

_TOPIC_ATTRIBUTES: Final = {
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
"""Updateable PushTopic fields and the `PushTopicDef` attribute each one sets."""


def push_topic_row(topic: PushTopicDef, version: str) -> dict[str, Any]:
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


def streaming_channel_row(channel: StreamingChannelDef, version: str) -> dict[str, Any]:
    return {
        "attributes": {
            "type": "StreamingChannel",
            "url": f"/services/data/v{version}/sobjects/StreamingChannel/{channel.id}",
        },
        "Id": channel.id,
        "Name": channel.name,
        "Description": channel.description,
    }


def not_updateable(name: str) -> web.Response:
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
            return not_updateable(field.name)
        try:
            values[field.name] = coerce(field, value)
        except FieldValueError as exc:
            return rest_error(400, exc.error_code, str(exc), [field.name])
    return values


class StreamingSObjects:
    """Writes and reads of PushTopic and StreamingChannel records."""

    def __init__(self, context: RestContext) -> None:
        self.runtime: OrgRuntime = context.runtime

    def create(self, name: str, body: dict[str, Any], status: int) -> web.Response:
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

    def read(self, request: web.Request) -> web.Response:
        version = request.match_info["version"]
        record_id = request.match_info["id"]
        for topic in self.runtime.spec.push_topics:
            if topic.id is not None and to18(record_id) == topic.id:
                return json_response(push_topic_row(topic, version))
        for channel in self.runtime.spec.streaming_channels:
            if channel.id is not None and to18(record_id) == channel.id:
                return json_response(streaming_channel_row(channel, version))
        return not_found()

    async def update_push_topic(self, request: web.Request) -> web.StreamResponse:
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
            return not_found()
        body = await json_body(request)
        if not isinstance(body, dict):
            return rest_error(400, "JSON_PARSER_ERROR", "the body must be a JSON object")
        checked = _streaming_values("PushTopic", body, creating=False)
        if isinstance(checked, web.Response):
            return checked
        for key, value in checked.items():
            if key not in _TOPIC_ATTRIBUTES:
                return not_updateable(key)
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
            setattr(topic, _TOPIC_ATTRIBUTES[key], value)
        if renamed:
            # The name is the channel: `/topic/<new name>` from now on.
            self.runtime.rebuild_channels()
        return web.Response(status=204)

    def delete_push_topic(self, request: web.Request) -> web.StreamResponse:
        record_id = request.match_info["id"]
        topics = self.runtime.spec.push_topics
        for index, topic in enumerate(topics):
            if is_valid_id(record_id) and topic.id == to18(record_id):
                del topics[index]
                return web.Response(status=204)
        return not_found()
