"""Generic streaming over REST: `sobjects/StreamingChannel/{id}/push`.

`POST` publishes each `{"payload", "userIds"}` of `pushEvents` on the channel's `/u/` stream
and answers `[{"fanoutCount", "userOnlineStatus"}]`; `GET` lists the users online on it.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from sfstream_emulator.ids import is_valid_id, to18
from sfstream_emulator.org import StreamingChannelDef
from sfstream_emulator.rest.common import (
    RestContext,
    json_body,
    json_response,
    not_found,
    rest_error,
)

MAX_PAYLOAD_CHARS: Final = 3000


class PushApi:
    """Publish generic events and report who listens."""

    def __init__(self, context: RestContext) -> None:
        self.runtime = context.runtime
        self.subscriber_count = context.subscriber_count

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
            return not_found()
        body = await json_body(request)
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
            if len(payload) > MAX_PAYLOAD_CHARS:
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
            return not_found()
        online = [self.runtime.spec.user.id] if self.subscriber_count(channel.name) else []
        return json_response({"OnlineUserIds": online})
