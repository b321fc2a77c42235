"""The control API: drive the emulator from tests, benchmarks and scripts.

It lives under `/_emulator/v1/`, a path Salesforce never uses, and needs no token: the
emulator is a local development tool. Every endpoint takes and returns JSON; mistakes get
HTTP 400 with `{"error": "..."}`. Publishing an event and writing a record run the REST
API's own code, so a value Salesforce refuses gets the REST API's status and message, with
its `errorCode` and `fields` beside the `error`. The same operations exist on the
`Emulator` object, which `ControlApi` drives through the `Controlled` protocol: this module
never imports the server that serves it.
"""

from __future__ import annotations

from typing import Any, Final, Literal, Protocol, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sfstream_emulator.faults import ChaosSettings, Fault, FaultInjector
from sfstream_emulator.org import FieldDef
from sfstream_emulator.records import RecordError, RecordWrite
from sfstream_emulator.runtime import Allocation
from sfstream_emulator.values import FieldValueError

PREFIX: Final = "/_emulator/v1"
AllocationKind = Literal["events", "streaming"]
WriteKind = Literal["CREATE", "UPDATE", "DELETE"]


class Controlled(Protocol):
    """The operations the control API drives; `Emulator` has them all."""

    faults: FaultInjector

    def status(self) -> dict[str, Any]: ...

    def advance(self, seconds: float) -> float: ...

    def channel_summary(self) -> list[dict[str, Any]]: ...

    def published(
        self, channel: str, after: int = -2, limit: int = 10000
    ) -> list[dict[str, Any]]: ...

    def generate(self, target: str, count: int, payload_bytes: int | None = None) -> list[int]: ...

    def publish_event(self, name: str, values: dict[str, Any]) -> tuple[int, str]: ...

    def platform_event_channel(self, name: str) -> str | None: ...

    def write_record(
        self,
        change_type: WriteKind,
        sobject: str,
        record_id: str | None = None,
        values: dict[str, Any] | None = None,
        origin: str | None = None,
    ) -> RecordWrite: ...

    def emit_gap(self, entity: str, change_type: str, record_ids: list[str]) -> int: ...

    def revoke_access_tokens(self) -> int: ...

    def revoke_refresh_tokens(self) -> int: ...

    def restore_refresh_token(self) -> None: ...

    def expire_clients(self) -> int: ...

    def drop_subscriptions(self, channel: str) -> int: ...

    def journal(self, since: float = 0.0) -> list[dict[str, Any]]: ...

    def restart(self) -> int: ...

    def set_allocation(
        self, kind: AllocationKind, maximum: int | None = None, exhaust: bool = False
    ) -> Allocation: ...

    def alter_fields(
        self,
        entity: str,
        add: list[FieldDef] | None = None,
        remove: list[str] | None = None,
        retype: dict[str, str] | None = None,
    ) -> str: ...

    def select_change_events(self, entity: str, selected: bool) -> list[str]: ...

    def undelete_record(self, record_id: str) -> None: ...


class _Generate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str
    count: int = Field(ge=1, le=5_000_000)
    # None: 1,024 bytes, or less for events whose text fields cannot hold that much. The
    # upper limit (1,000,000) is checked by `generate` itself, whose error names it.
    payload_bytes: int | None = Field(default=None, ge=0)


class _Publish(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: str
    fields: dict[str, Any] = Field(default_factory=dict)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fields: dict[str, Any] = Field(default_factory=dict)


class _Gap(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entity: str
    change_type: str
    record_ids: list[str] = Field(default_factory=list)


class _Alter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    add: list[FieldDef] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)
    retype: dict[str, str] = Field(default_factory=dict)


class _Advance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(gt=0)


class _Revoke(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(default="access", pattern="^(access|refresh)$")


class _Drop(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: str = Field(pattern="^/")


class _Allocation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(default="events", pattern="^(events|streaming)$")
    maximum: int | None = Field(default=None, ge=0)
    exhaust: bool = False


class _Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entity: str
    selected: bool


def _ok(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _bad(message: str, status: int = 400) -> web.Response:
    return _ok({"error": message}, status)


def _refused(status: int, message: str, error_code: str, fields: list[str]) -> web.Response:
    """A write Salesforce refuses: its message, and its `errorCode` and `fields` as well."""
    return _ok({"error": message, "errorCode": error_code, "fields": fields}, status)


def _reason(exc: Exception) -> str:
    """The message an exception was raised with.

    `str()` of a `KeyError` is the repr of its message, quotes added; stripping quotes off
    it would also strip a quote of the message itself (`'Nope' is ...`).
    """
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])
    return str(exc)


_M = TypeVar("_M", bound=BaseModel)


async def _model(request: web.Request, model: type[_M]) -> _M | web.Response:
    raw = await request.read()
    try:
        # Strict: in a JSON body, "yes" is not a boolean and "7" is not a number.
        return model.model_validate_json(raw or b"{}", strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
        return _bad(problems)


class ControlApi:
    """Routes under `/_emulator/v1`."""

    def __init__(self, emulator: Controlled) -> None:
        self.emulator = emulator

    def routes(self) -> list[web.RouteDef]:
        p = PREFIX
        return [
            web.get(f"{p}/status", self.status),
            web.post(f"{p}/clock/advance", self.advance),
            web.get(f"{p}/channels", self.channels),
            web.get(f"{p}/events", self.events),
            web.post(f"{p}/events/generate", self.generate),
            web.post(f"{p}/events/publish", self.publish),
            web.post(f"{p}/events/gap", self.gap),
            web.get(f"{p}/faults", self.list_faults),
            web.post(f"{p}/faults", self.add_fault),
            web.delete(f"{p}/faults", self.clear_faults),
            web.post(f"{p}/chaos", self.start_chaos),
            web.delete(f"{p}/chaos", self.stop_chaos),
            web.post(f"{p}/tokens/revoke", self.revoke),
            web.post(f"{p}/tokens/restore", self.restore),
            web.post(f"{p}/clients/expire", self.expire),
            web.post(f"{p}/subscriptions/drop", self.drop_subscriptions),
            web.get(f"{p}/subscriptions/journal", self.journal),
            web.post(f"{p}/restart", self.restart),
            web.post(f"{p}/allocation", self.allocation),
            web.post(f"{p}/schema/{{entity}}", self.alter),
            web.post(f"{p}/cdc", self.select),
            web.post(f"{p}/records/{{id}}/undelete", self.undelete),
            web.post(f"{p}/records/{{entity}}", self.create_record),
            web.patch(f"{p}/records/{{entity}}/{{id}}", self.update_record),
            web.delete(f"{p}/records/{{entity}}/{{id}}", self.delete_record),
        ]

    async def status(self, request: web.Request) -> web.StreamResponse:
        return _ok(self.emulator.status())

    async def advance(self, request: web.Request) -> web.StreamResponse:
        body = await _model(request, _Advance)
        if isinstance(body, web.Response):
            return body
        return _ok({"now": self.emulator.advance(body.seconds)})

    async def channels(self, request: web.Request) -> web.StreamResponse:
        return _ok(self.emulator.channel_summary())

    async def events(self, request: web.Request) -> web.StreamResponse:
        channel = request.query.get("channel", "")
        try:
            after = int(request.query.get("after", "-2"))
            limit = int(request.query.get("limit", "10000"))
        except ValueError:
            return _bad("after and limit must be integers")
        try:
            messages = self.emulator.published(channel, after=after, limit=limit)
        except KeyError:
            return _bad(f"unknown channel {channel!r}", 404)
        return _ok(messages)

    async def journal(self, request: web.Request) -> web.StreamResponse:
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            return _bad("since must be a number (epoch seconds)")
        return _ok(self.emulator.journal(since))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await _model(request, _Generate)
        if isinstance(body, web.Response):
            return body
        try:
            replay_ids = self.emulator.generate(body.target, body.count, body.payload_bytes)
        except (KeyError, ValueError) as exc:
            return _bad(_reason(exc))
        return _ok(
            {
                "count": len(replay_ids),
                "first_replay_id": replay_ids[0],
                "last_replay_id": replay_ids[-1],
            }
        )

    async def gap(self, request: web.Request) -> web.StreamResponse:
        body = await _model(request, _Gap)
        if isinstance(body, web.Response):
            return body
        try:
            replay_id = self.emulator.emit_gap(body.entity, body.change_type, body.record_ids)
        except ValueError as exc:
            return _bad(str(exc))
        return _ok({"replay_id": replay_id})

    async def list_faults(self, request: web.Request) -> web.StreamResponse:
        faults = self.emulator.faults
        return _ok(
            {
                "queued": [f.model_dump(mode="json") for f in faults.queue],
                "chaos": faults.chaos.model_dump() if faults.chaos else None,
                "injected": faults.injected,
            }
        )

    async def add_fault(self, request: web.Request) -> web.StreamResponse:
        body = await _model(request, Fault)
        if isinstance(body, web.Response):
            return body
        self.emulator.faults.add(body)
        return _ok({"queued": len(self.emulator.faults.queue)}, 201)

    async def clear_faults(self, request: web.Request) -> web.StreamResponse:
        self.emulator.faults.clear()
        return _ok({"queued": 0})

    async def start_chaos(self, request: web.Request) -> web.StreamResponse:
        body = await _model(request, ChaosSettings)
        if isinstance(body, web.Response):
            return body
        self.emulator.faults.start_chaos(body)
        return _ok({"chaos": body.model_dump()})

    async def stop_chaos(self, request: web.Request) -> web.StreamResponse:
        self.emulator.faults.chaos = None
        return _ok({"chaos": None})

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        body = await _model(request, _Revoke)
        if isinstance(body, web.Response):
            return body
        if body.kind == "refresh":
            return _ok({"revoked": self.emulator.revoke_refresh_tokens()})
        return _ok({"revoked": self.emulator.revoke_access_tokens()})

    async def restore(self, request: web.Request) -> web.StreamResponse:
        self.emulator.restore_refresh_token()
        return _ok({"restored": True})

    async def expire(self, request: web.Request) -> web.StreamResponse:
        return _ok({"expired": self.emulator.expire_clients()})

    async def drop_subscriptions(self, request: web.Request) -> web.StreamResponse:
        body = await _model(request, _Drop)
        if isinstance(body, web.Response):
            return body
        return _ok({"dropped": self.emulator.drop_subscriptions(body.channel)})

    async def restart(self, request: web.Request) -> web.StreamResponse:
        return _ok({"expired": self.emulator.restart()})

    async def allocation(self, request: web.Request) -> web.StreamResponse:
        body = await _model(request, _Allocation)
        if isinstance(body, web.Response):
            return body
        kind: AllocationKind = "streaming" if body.kind == "streaming" else "events"
        target = self.emulator.set_allocation(kind, body.maximum, body.exhaust)
        return _ok({"kind": body.kind, "maximum": target.maximum, "used": target.used})

    async def alter(self, request: web.Request) -> web.StreamResponse:
        body = await _model(request, _Alter)
        if isinstance(body, web.Response):
            return body
        try:
            schema_id = self.emulator.alter_fields(
                request.match_info["entity"], body.add, body.remove, body.retype
            )
        except (KeyError, ValueError) as exc:
            return _bad(_reason(exc))
        return _ok({"schema_id": schema_id})

    async def select(self, request: web.Request) -> web.StreamResponse:
        body = await _model(request, _Selection)
        if isinstance(body, web.Response):
            return body
        try:
            selected = self.emulator.select_change_events(body.entity, body.selected)
        except ValueError as exc:
            return _bad(str(exc))
        return _ok({"change_events": selected})

    async def undelete(self, request: web.Request) -> web.StreamResponse:
        try:
            self.emulator.undelete_record(request.match_info["id"])
        except KeyError as exc:
            return _bad(_reason(exc), 404)
        return _ok({"undeleted": request.match_info["id"]})

    async def publish(self, request: web.Request) -> web.StreamResponse:
        """Publish one platform event, validated as `POST sobjects/{Event__e}` validates it."""
        body = await _model(request, _Publish)
        if isinstance(body, web.Response):
            return body
        channel = self.emulator.platform_event_channel(body.event)
        if channel is None:
            # The words the REST API uses for an sObject type named in a body.
            return _refused(
                400,
                f"sObject type '{body.event}' is not supported: it is not a platform event "
                "of this org",
                "INVALID_TYPE",
                [],
            )
        try:
            replay_id, event_uuid = self.emulator.publish_event(body.event, body.fields)
        except FieldValueError as exc:
            return _refused(400, str(exc), exc.error_code, exc.field.split(","))
        return _ok({"channel": channel, "replay_id": replay_id, "event_uuid": event_uuid}, 201)

    async def create_record(self, request: web.Request) -> web.StreamResponse:
        """Create a record as `POST sobjects/{Object}` does, raising its change event."""
        return await self._write(request, "CREATE")

    async def update_record(self, request: web.Request) -> web.StreamResponse:
        """Update a record as `PATCH sobjects/{Object}/{id}` does (UPDATE change event)."""
        return await self._write(request, "UPDATE")

    async def delete_record(self, request: web.Request) -> web.StreamResponse:
        """Delete a record as `DELETE sobjects/{Object}/{id}` does (DELETE change event)."""
        return await self._write(request, "DELETE")

    async def _write(self, request: web.Request, change_type: WriteKind) -> web.StreamResponse:
        fields: dict[str, Any] = {}
        if change_type != "DELETE":
            body = await _model(request, _Record)
            if isinstance(body, web.Response):
                return body
            fields = body.fields
        try:
            written = self.emulator.write_record(
                change_type,
                request.match_info["entity"],
                request.match_info.get("id"),
                fields,
            )
        except RecordError as exc:
            return _refused(exc.status, exc.message, exc.error_code, exc.fields)
        result = {"id": written.record_id, "replay_id": written.replay_id}
        return _ok(result, 201 if change_type == "CREATE" else 200)
