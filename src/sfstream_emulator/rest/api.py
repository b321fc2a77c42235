"""`RestApi`: the REST resources of `/services/data`, wired for the aiohttp app."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from sfstream_emulator.records import RecordStore
from sfstream_emulator.rest.common import RestContext
from sfstream_emulator.rest.composite import CompositeApi
from sfstream_emulator.rest.describe import DescribeApi
from sfstream_emulator.rest.push import PushApi
from sfstream_emulator.rest.query import QueryApi
from sfstream_emulator.rest.records import RecordsApi
from sfstream_emulator.rest.streaming_sobjects import StreamingSObjects
from sfstream_emulator.runtime import OrgRuntime


class RestApi:
    """Handlers for `/services/data`; `routes()` lists them for the app.

    Args:
        runtime: the org, its channels and allocations.
        store: the org's records.
        subscriber_count: how many CometD clients subscribe to a channel.
        client_count: how many CometD clients are connected.
    """

    def __init__(
        self,
        runtime: OrgRuntime,
        store: RecordStore,
        subscriber_count: Callable[[str], int],
        client_count: Callable[[], int],
    ) -> None:
        self.context = RestContext(runtime, store, subscriber_count, client_count)
        self.describe = DescribeApi(self.context)
        self.query = QueryApi(self.context)
        self.records = RecordsApi(self.context, StreamingSObjects(self.context))
        self.push = PushApi(self.context)
        self.composite = CompositeApi(self.context)

    @property
    def requests(self) -> int:
        """REST requests served since the start (`DailyApiRequests` of `/limits`)."""
        return self.context.requests

    def count_request(self) -> None:
        self.context.requests += 1

    def routes(self) -> list[web.RouteDef]:
        # Order matters: aiohttp tries routes in turn, so `sobjects/{name}/describe` must
        # come before `sobjects/{name}/{id}`.
        v = "/services/data/v{version:[0-9]+\\.[0-9]}"
        s = "{slash:/?}"
        describe, query, records = self.describe, self.query, self.records
        push, composite = self.push, self.composite
        return [
            web.get("/services/data" + s, describe.versions),
            web.get(v + s, describe.resources),
            web.get(v + "/sobjects" + s, describe.sobjects),
            web.get(v + "/sobjects/{name}" + s, describe.sobject_info),
            web.post(v + "/sobjects/{name}" + s, records.create),
            web.get(v + "/sobjects/{name}/describe" + s, describe.describe),
            web.get(v + "/sobjects/{name}/eventSchema" + s, describe.event_schema),
            web.post(v + "/sobjects/StreamingChannel/{id}/push" + s, push.push),
            web.get(v + "/sobjects/StreamingChannel/{id}/push" + s, push.push_status),
            web.get(v + "/sobjects/{name}/{id}" + s, records.read),
            web.patch(v + "/sobjects/{name}/{id}" + s, records.update),
            web.delete(v + "/sobjects/{name}/{id}" + s, records.delete),
            web.get(v + "/event/eventSchema/{sid}" + s, describe.event_schema_by_id),
            web.get(v + "/query" + s, query.query),
            web.get(v + "/queryAll" + s, query.query_all),
            web.get(v + "/tooling/query" + s, query.tooling_query),
            web.get(v + "/limits" + s, describe.limits),
            web.post(v + "/composite/sobjects" + s, composite.create),
            web.patch(v + "/composite/sobjects" + s, composite.update),
            web.delete(v + "/composite/sobjects" + s, composite.delete),
            web.get(v + "/composite/sobjects/{name}" + s, composite.read),
        ]
