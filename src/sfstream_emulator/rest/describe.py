"""Describe and metadata resources: versions, resources, sobjects, describe, eventSchema, limits.

`GET /services/data/` lists the versions with their release labels; under `vXX.X/`:
the resource list, describe global (`sobjects/`), `sobjects/{name}` and its `describe`
(objects, change events, platform events, PushTopic, StreamingChannel), an event's schema
by name or by schema id in EXPANDED or COMPACT form, and `limits/`.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from sfstream_emulator.describe import (
    STREAMING_SOBJECTS,
    describe_change_event,
    describe_event,
    describe_global,
    describe_object,
    describe_streaming_sobject,
    sobject_basic_info,
)
from sfstream_emulator.rest.common import RestContext, json_response, not_found, rest_error
from sfstream_emulator.settings import API_VERSIONS

_SEASONS: Final = ("Winter", "Spring", "Summer")
_UNLIMITED: Final = 2_147_483_647


def release_label(version: str) -> str:
    """`62.0` -> `Winter '25`: three releases a year since Winter '11 (v20.0)."""
    index = int(float(version)) - 20
    return f"{_SEASONS[index % 3]} '{11 + index // 3:02d}"


class DescribeApi:
    """Discovery, describe, event schemas and limits."""

    def __init__(self, context: RestContext) -> None:
        self.context = context
        self.runtime = context.runtime

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
            return not_found()
        return json_response(body)

    async def sobject_info(self, request: web.Request) -> web.StreamResponse:
        body = self._describe_any(request.match_info["name"], request.match_info["version"])
        if body is None:
            return not_found()
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
            return not_found()
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
            return not_found()
        body = snapshot.expanded if fmt == "EXPANDED" else snapshot.compact
        return json_response({**body, "uuid": sid})

    async def limits(self, request: web.Request) -> web.StreamResponse:
        now = self.runtime.clock.now()
        allocations = self.runtime.allocations

        def entry(maximum: int | None, used: int) -> dict[str, int]:
            top = maximum if maximum is not None else _UNLIMITED
            return {"Max": top, "Remaining": max(top - used, 0)}

        events = allocations.event_deliveries
        events.roll(now)
        streaming = allocations.streaming_deliveries
        streaming.roll(now)
        clients = allocations.concurrent_clients
        live = self.context.client_count()
        published = self.runtime.published_platform_events
        published.roll(now)
        return json_response(
            {
                "DailyApiRequests": entry(15000, self.context.requests),
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
