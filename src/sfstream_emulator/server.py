"""`Emulator`: one emulated org served over HTTP, and its Python control surface.

    async with Emulator(EmulatorSettings(poll_timeout_s=2)) as emu:
        ...  # point a client at emu.login_url with emu.credentials

The server listens on `localhost` (IPv4 and IPv6 on the same port) so that cookie jars which
ignore cookies from IP addresses, like aiohttp's default one, still return `BAYEUX_BROWSER`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

import orjson
from aiohttp import web

from sfstream_emulator.bus import ChannelKind, EventBus
from sfstream_emulator.clock import Clock
from sfstream_emulator.cometd import CometdServer
from sfstream_emulator.control import ControlApi
from sfstream_emulator.faults import FaultInjector, FaultKind, FaultTarget
from sfstream_emulator.ids import IdFactory, to18
from sfstream_emulator.oauth import OAuthError, OAuthSettings, TokenService
from sfstream_emulator.org import FieldDef, ObjectDef, OrgError, OrgSpec, load_org
from sfstream_emulator.records import (
    RecordError,
    RecordStore,
    RecordWrite,
    Transaction,
    check_record_id,
)
from sfstream_emulator.records import not_found as not_found_error
from sfstream_emulator.rest.api import RestApi
from sfstream_emulator.rest.common import not_found, rest_error
from sfstream_emulator.runtime import Allocation, OrgRuntime
from sfstream_emulator.settings import API_VERSIONS, EmulatorSettings
from sfstream_emulator.soap import SoapApi

log = logging.getLogger("sfstream_emulator")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SWEEP_EVERY_S: Final = 5.0
_VERSIONS: Final = frozenset(API_VERSIONS)


class Emulator:
    """A Salesforce org for streaming clients: OAuth, REST, SOAP undelete and CometD.

    Args:
        settings: timings, limits and credentials; Salesforce's defaults when omitted.
        org: an `OrgSpec`, a path to an org YAML file, or None for the bundled default org.
        clock: emulated time; a fresh wall clock when omitted.
    """

    def __init__(
        self,
        settings: EmulatorSettings | None = None,
        org: OrgSpec | str | Path | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings or EmulatorSettings()
        spec = org if isinstance(org, OrgSpec) else load_org(org)
        self.clock = clock or Clock()
        self.bus = EventBus(
            self.clock,
            seed=self.settings.seed,
            retention_hours={
                ChannelKind.CHANGE_EVENTS: self.settings.retention_cdc_hours,
                ChannelKind.PLATFORM_EVENT: self.settings.retention_platform_event_hours,
                ChannelKind.PUSH_TOPIC: self.settings.retention_push_topic_hours,
                ChannelKind.GENERIC: self.settings.retention_generic_hours,
            },
        )
        self.runtime = OrgRuntime(
            spec,
            self.bus,
            self.clock,
            IdFactory(seed=self.settings.seed),
            api_version=self.settings.api_version,
            delivery_allocation=self.settings.daily_delivery_allocation,
            streaming_allocation=self.settings.daily_streaming_allocation,
            concurrent_clients=self.settings.concurrent_clients,
            overflow_threshold=self.settings.overflow_threshold,
        )
        self.store = RecordStore(self.runtime)
        s = self.settings
        self.tokens = TokenService(
            OAuthSettings(
                client_id=s.client_id,
                client_secret=s.client_secret,
                refresh_token=s.refresh_token,
                username=s.username,
                password=s.password,
                access_token_ttl_s=s.access_token_ttl_s,
                rotate_refresh_tokens=s.rotate_refresh_tokens,
                require_client_secret=s.require_client_secret,
                jwt_certificate=s.jwt_certificate,
            ),
            self.clock,
            spec.org_id,
            spec.user.id,
            lambda: self.url,
        )
        self.faults = FaultInjector()
        self.cometd = CometdServer(self.runtime, self.tokens, self.faults, self.settings)
        self.rest = RestApi(
            self.runtime,
            self.store,
            self.cometd.subscriber_count,
            lambda: len(self.cometd.sessions),
        )
        self.soap = SoapApi(self.store, self.tokens)
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._url: str | None = None
        self.port: int | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The aiohttp application (for embedding; `start` builds and serves it)."""
        app = web.Application(
            client_max_size=16 * 1024 * 1024,
            middlewares=[self._errors, self._rest_gate],
        )
        app.router.add_post("/services/oauth2/token", self._token)
        app.router.add_post("/services/oauth2/revoke", self._revoke)
        app.router.add_get("/services/oauth2/revoke", self._revoke)
        app.router.add_get("/id/{org}/{user}", self._identity)
        app.router.add_post("/cometd/{version}", self.cometd.handle)
        app.router.add_post("/cometd/{version}/", self.cometd.handle)
        app.router.add_post("/cometd", self.cometd.handle)
        app.router.add_post("/cometd/", self.cometd.handle)
        app.router.add_post("/services/Soap/u/{version}", self.soap.handle)
        app.add_routes(self.rest.routes())
        app.add_routes(ControlApi(self).routes())
        return app

    async def start(self, access_log: bool = False) -> None:
        """Bind and serve; `url` is valid afterwards."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        runner = web.AppRunner(
            self.build_app(),
            handler_cancellation=True,
            access_log=logging.getLogger("sfstream_emulator.access") if access_log else None,
        )
        await runner.setup()
        try:
            sockets = _bind(self.settings.host, self.settings.port)
        except OSError:
            await runner.cleanup()
            raise
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        self._runner = runner
        self.port = sockets[0].getsockname()[1]
        host = self.settings.host
        shown = "localhost" if host in ("localhost", "0.0.0.0", "::", "") else host  # noqa: S104
        if ":" in shown:
            shown = f"[{shown}]"
        self._url = self.settings.public_url or f"http://{shown}:{self.port}"
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="emulator-sweeper")

    async def stop(self) -> None:
        """Release held polls, close connections and the listening sockets."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self.cometd.expire_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_EVERY_S)
            self.cometd.sweep()

    # -- addresses and credentials ----------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL: the instance URL and the login URL alike."""
        if self._url is None:
            raise RuntimeError("the emulator is not running")
        return self._url

    @property
    def login_url(self) -> str:
        return self.url

    @property
    def token_url(self) -> str:
        return f"{self.url}/services/oauth2/token"

    def cometd_url(self, version: str | None = None) -> str:
        return f"{self.url}/cometd/{version or self.settings.api_version}"

    @property
    def credentials(self) -> dict[str, str]:
        """What a client needs to log in (these are emulator-only values)."""
        s = self.settings
        return {
            "login_url": self.url,
            "client_id": s.client_id,
            "client_secret": s.client_secret,
            "refresh_token": s.refresh_token,
            "username": s.username,
            "password": s.password,
        }

    def access_token(self) -> str:
        """Issue an access token directly (tests that skip the OAuth exchange)."""
        body = self.tokens.grant(
            {
                "grant_type": "refresh_token",
                "client_id": self.settings.client_id,
                "client_secret": self.settings.client_secret,
                "refresh_token": self.settings.refresh_token,
            },
            None,
        )
        return str(body["access_token"])

    # -- control surface --------------------------------------------------------------------

    def advance(self, seconds: float) -> float:
        """Move emulated time forward (retention, token expiry, client expiry)."""
        return self.clock.advance(seconds)

    def expire_clients(self) -> int:
        """Forget every CometD client: their next message gets `403::Unknown client`."""
        return self.cometd.expire_all()

    def drop_subscriptions(self, channel: str) -> int:
        """Forget every client's subscription to `channel` without a word: the clients stay
        connected and receive nothing more from it (what users of real orgs report as a
        subscription that "stops receiving events without an error"). How many were dropped.
        """
        return self.cometd.drop_subscriptions(channel)

    def journal(self, since: float = 0.0) -> list[dict[str, Any]]:
        """The subscription journal from `since` (epoch seconds): each client's subscribes,
        unsubscribes and end, and each delivery with its replayIds, oldest first."""
        return [
            {
                "at": entry.at,
                "client_id": entry.client_id,
                "action": entry.action,
                "channel": entry.channel,
                "replay_ids": list(entry.replay_ids),
            }
            for entry in self.cometd.journal
            if entry.at >= since
        ]

    def restart(self) -> int:
        """Behave like a restarted server: sessions are gone, events and tokens stay."""
        return self.cometd.expire_all()

    def revoke_access_tokens(self) -> int:
        return self.tokens.revoke_access_tokens()

    def revoke_refresh_tokens(self) -> int:
        return self.tokens.revoke_refresh_tokens()

    def restore_refresh_token(self) -> None:
        """Make the configured refresh token valid again."""
        self.tokens.restore_refresh_token()

    def set_allocation(
        self,
        kind: Literal["events", "streaming"],
        maximum: int | None = None,
        exhaust: bool = False,
    ) -> Allocation:
        """Set a daily delivery allocation (None: unlimited), or spend what is left of it."""
        allocations = self.runtime.allocations
        target = (
            allocations.event_deliveries if kind == "events" else allocations.streaming_deliveries
        )
        target.maximum = target.used if exhaust else maximum
        return target

    def create_record(self, sobject: str, values: dict[str, Any], origin: str | None = None) -> str:
        """Insert a record (raises `RecordError` as the REST API would refuse it)."""
        obj = self._object(sobject)
        return self._write(obj, origin, lambda t: t.create(obj, values)).record_id

    def update_record(
        self,
        sobject: str,
        record_id: str,
        values: dict[str, Any],
        origin: str | None = None,
    ) -> None:
        obj = self._object(sobject)
        self._write(obj, origin, lambda t: _updated(t, obj, record_id, values))

    def delete_record(self, sobject: str, record_id: str) -> None:
        obj = self._object(sobject)
        self._write(obj, None, lambda t: _deleted(t, obj, record_id))

    def write_record(
        self,
        change_type: Literal["CREATE", "UPDATE", "DELETE"],
        sobject: str,
        record_id: str | None = None,
        values: dict[str, Any] | None = None,
        origin: str | None = None,
    ) -> RecordWrite:
        """Create, update or delete one record exactly as the REST API's sObject calls do.

        Returns the record's id and the replay id of the change event the write raised
        (None when it raised none).

        Raises:
            RecordError: what the REST API answers for the same call: 404 `NOT_FOUND` for
                an unknown object or a malformed id, `INVALID_TYPE_FOR_OPERATION` for a
                change event or platform event, and every validation error of the values.
        """
        obj = self.runtime.spec.object(sobject)
        if obj is None:
            if change_type == "CREATE" and self.runtime.spec.event(sobject) is not None:
                raise RecordError(
                    400,
                    "INVALID_TYPE_FOR_OPERATION",
                    f"{sobject} is a platform event: publish it (Emulator.publish_event, or "
                    "POST /_emulator/v1/events/publish) instead of creating a record",
                )
            if change_type == "CREATE" and self.runtime.definition_for_event(sobject) is not None:
                raise RecordError(
                    400,
                    "INVALID_TYPE_FOR_OPERATION",
                    f"entity type {sobject} does not support insert",
                )
            raise not_found_error()
        found = obj
        given = values or {}
        if change_type == "CREATE":
            return self._write(found, origin, lambda t: t.create(found, given))
        if record_id is None:
            raise ValueError(f"{change_type} needs a record id")
        check_record_id(found, record_id)
        if change_type == "UPDATE":
            return self._write(found, origin, lambda t: _updated(t, found, record_id, given))
        return self._write(found, origin, lambda t: _deleted(t, found, record_id))

    def _object(self, sobject: str) -> ObjectDef:
        obj = self.runtime.spec.object(sobject)
        if obj is None:
            raise KeyError(f"no object called {sobject!r}")
        return obj

    def _write(
        self, obj: ObjectDef, origin: str | None, change: Callable[[Transaction], str]
    ) -> RecordWrite:
        """Run one write in its own transaction; commit it, or roll it back if refused."""
        transaction = self.store.transaction(origin or self._origin("rest"))
        try:
            record_id = change(transaction)
        except RecordError:
            transaction.rollback()
            raise
        transaction.commit()
        published = transaction.published
        return RecordWrite(record_id, published[0].replay_id if published else None)

    def _origin(self, api: str) -> str:
        return f"com/salesforce/api/{api}/{self.settings.api_version}"

    def undelete_record(self, record_id: str) -> None:
        transaction = self.store.transaction(self._origin("soap"))
        try:
            transaction.undelete(record_id)
        except RecordError as exc:
            transaction.rollback()
            raise KeyError(f"{record_id}: {exc.message}") from exc
        transaction.commit()

    def publish_event(self, name: str, values: dict[str, Any]) -> tuple[int, str]:
        """Publish a platform event; returns (replayId, EventUuid)."""
        event, event_uuid = self.runtime.publish_platform_event(name, values)
        return event.replay_id, event_uuid

    def platform_event_channel(self, name: str) -> str | None:
        """`/event/Order_Placed__e` for the platform event `name` (any case); None if none."""
        event = self.runtime.spec.event(name)
        return None if event is None else f"/event/{event.name}"

    def push(self, channel: str, payload: str) -> int:
        """Publish a generic streaming event on a `/u/` channel; returns its replayId."""
        return self.runtime.publish_generic(channel, payload).replay_id

    def generate(self, target: str, count: int, payload_bytes: int | None = None) -> list[int]:
        """Publish `count` synthetic events of `payload_bytes` each; returns their replay ids.

        Without `payload_bytes`, events are 1,024 bytes, or as large as their text fields
        allow when that is less (see `OrgRuntime.generate`).
        """
        return [e.replay_id for e in self.runtime.generate(target, count, payload_bytes)]

    def emit_gap(self, entity: str, change_type: str, record_ids: list[str]) -> int:
        return self.runtime.publish_gap(entity, change_type, record_ids).replay_id

    def alter_fields(
        self,
        entity: str,
        add: list[FieldDef] | None = None,
        remove: list[str] | None = None,
        retype: dict[str, str] | None = None,
    ) -> str:
        """Change a definition's fields; returns the new schema id."""
        return self.runtime.alter_fields(entity, add or [], remove or [], retype or {})

    def select_change_events(self, entity: str, selected: bool) -> list[str]:
        """Add or remove an entity from the standard change event channel; returns them all."""
        spec = self.runtime.spec
        obj = spec.object(entity)
        if obj is None or not obj.supports_cdc:
            raise ValueError(f"{entity!r} is not an object with change events")
        if selected and obj.name not in spec.change_events:
            spec.change_events.append(obj.name)
        elif not selected and obj.name in spec.change_events:
            spec.change_events.remove(obj.name)
        self.runtime.rebuild_channels()
        return list(spec.change_events)

    def published(self, channel: str, after: int = -2, limit: int = 10000) -> list[dict[str, Any]]:
        """Retained messages of `channel` as subscribers receive them (after replay `after`)."""
        found = self.bus.channels.get(channel)
        if found is None:
            raise KeyError(channel)
        self.bus.purge(found)
        events = found.retained()
        if after >= 0:
            events = [e for e in events if e.replay_id > after]
        return [orjson.loads(b'{"data":' + e.data + found.suffix) for e in events[:limit]]

    def channel_summary(self) -> list[dict[str, Any]]:
        summary = []
        for name, channel in sorted(self.bus.channels.items()):
            self.bus.purge(channel)
            retained = channel.retained()
            summary.append(
                {
                    "channel": name,
                    "kind": channel.kind.value,
                    "retained": len(retained),
                    "first_replay_id": retained[0].replay_id if retained else None,
                    "last_replay_id": retained[-1].replay_id if retained else None,
                    "subscribers": self.cometd.subscriber_count(name),
                }
            )
        return summary

    def status(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "org_id": self.runtime.spec.org_id,
            "api_version": self.settings.api_version,
            "clock": {"now": self.clock.now(), "offset_s": self.clock.offset_s},
            "clients": len(self.cometd.sessions),
            "stats": self.cometd.stats,
            "published": self.bus.published_total,
            "faults": {
                "queued": len(self.faults.queue),
                "chaos": self.faults.chaos is not None,
                "injected": self.faults.injected,
            },
        }

    # -- OAuth and identity -----------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.StreamResponse:
        content_type = request.content_type
        form: dict[str, str] = {}
        if content_type == "application/x-www-form-urlencoded":
            posted = await request.post()
            form = {k: v for k, v in posted.items() if isinstance(v, str)}
        form.update({k: v for k, v in request.query.items() if k not in form})
        try:
            body = self.tokens.grant(form, request.headers.get("Authorization"))
        except OAuthError as exc:
            return _oauth_json(exc.body(), exc.status)
        return _oauth_json(body, 200)

    async def _revoke(self, request: web.Request) -> web.StreamResponse:
        posted = await request.post()
        token = posted.get("token") or request.query.get("token")
        if not isinstance(token, str) or not self.tokens.revoke(token):
            return _oauth_json(
                {
                    "error": "unsupported_token_type",
                    "error_description": "this token type is not supported",
                },
                400,
            )
        return web.Response(status=200)

    async def _identity(self, request: web.Request) -> web.StreamResponse:
        if self.tokens.check(request.headers.get("Authorization")) is None:
            return web.Response(status=403, text="Bad_OAuth_Token")
        spec = self.runtime.spec
        if (request.match_info["org"], request.match_info["user"]) != (spec.org_id, spec.user.id):
            return web.Response(status=404, text="Bad_Id")
        version = self.settings.api_version
        return web.json_response(
            {
                "id": f"{self.url}/id/{spec.org_id}/{spec.user.id}",
                "asserted_user": True,
                "user_id": spec.user.id,
                "organization_id": spec.org_id,
                "username": spec.user.username,
                "display_name": spec.user.name,
                "email": spec.user.email,
                "active": True,
                "user_type": "STANDARD",
                "urls": {
                    "rest": f"{self.url}/services/data/v{{version}}/",
                    "sobjects": f"{self.url}/services/data/v{{version}}/sobjects/",
                    "query": f"{self.url}/services/data/v{{version}}/query/",
                    "partner": f"{self.url}/services/Soap/u/{{version}}/{spec.org_id[:15]}",
                },
                "api_version": version,
            }
        )

    # -- middlewares ------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Salesforce-shaped 404/405 under /services; nothing escapes as a crash."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            if request.path.startswith("/services/"):
                return not_found()
            raise
        except web.HTTPMethodNotAllowed as exc:
            if request.path.startswith("/services/"):
                allowed = ",".join(sorted(exc.allowed_methods))
                return rest_error(
                    405,
                    "METHOD_NOT_ALLOWED",
                    f"HTTP Method '{request.method}' not allowed. Allowed are {allowed}",
                )
            raise
        except (web.HTTPException, asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("emulator error on %s %s", request.method, request.path)
            return rest_error(500, "UNKNOWN_EXCEPTION", "An unexpected error occurred.")

    @web.middleware
    async def _rest_gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Faults for REST and OAuth, and the session check of `/services/data/vXX.X`."""
        path = request.path
        target: FaultTarget | None = (
            "oauth"
            if path.startswith("/services/oauth2/")
            else "rest"
            if path.startswith(("/services/data", "/services/Soap"))
            else None
        )
        if target is not None:
            fault = self.faults.take(target)
            if fault is not None:
                if fault.kind is FaultKind.HTTP_503:
                    return web.Response(status=503, text="Service Unavailable")
                if fault.kind is FaultKind.STALL:
                    await asyncio.sleep(fault.seconds)
                elif fault.kind in (FaultKind.DROP, FaultKind.CUT) and request.transport:
                    # The client sees the connection close; aiohttp ignores the write of
                    # this response to the closed transport.
                    request.transport.abort()
                    return web.Response(status=500)
        if path.startswith("/services/data/v"):
            self.rest.count_request()
            if self.tokens.check(request.headers.get("Authorization")) is None:
                return rest_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
            version = path.split("/")[3][1:]
            if version not in _VERSIONS:
                return not_found()
        return await handler(request)


def _updated(
    transaction: Transaction, obj: ObjectDef, record_id: str, values: dict[str, Any]
) -> str:
    transaction.update(obj, record_id, values)
    return to18(record_id)


def _deleted(transaction: Transaction, obj: ObjectDef, record_id: str) -> str:
    transaction.delete(obj, record_id)
    return to18(record_id)


def _oauth_json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        charset="UTF-8",
        headers={"Cache-Control": "no-cache,must-revalidate,max-age=0,no-store,private"},
    )


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets; `localhost` gets IPv4 and IPv6 on one port when both work."""
    if host not in ("localhost", ""):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return [_listen(family, host, port)]
    first = _listen(socket.AF_INET, "127.0.0.1", port)
    chosen = first.getsockname()[1]
    try:
        second = _listen(socket.AF_INET6, "::1", chosen)
    except OSError:
        log.debug("IPv6 loopback unavailable; serving localhost on IPv4 only")
        return [first]
    return [first, second]


def _listen(family: socket.AddressFamily, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(512)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


__all__ = ["Emulator", "OrgError"]
