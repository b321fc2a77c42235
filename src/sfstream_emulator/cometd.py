"""The CometD endpoint: `POST /cometd/{version}`, as Salesforce runs it.

Behaviour and error texts follow the Streaming API (see `docs/emulator.md` for the sources):

- versions below 37.0 and a missing version are refused with HTTP 400;
- only `long-polling` is offered; the handshake answers `ext {replay, payload.format}` and
  sets the `BAYEUX_BROWSER` cookie, which every later message must send back;
- the first `/meta/connect` returns at once with `advice {interval: 0, timeout, reconnect:
  retry}`; later ones are held until events arrive or the poll timeout passes, and events
  travel in the same response array as the connect reply;
- the replay map is read from `/meta/subscribe` (`-1`, `-2`, or an id to resume after);
- a client that stays silent longer than the reconnect window after a response is forgotten
  (`403::Unknown client`, advice `handshake`); a revoked token gives
  `401::Authentication invalid` (advice `none`) on connect and `403::Handshake denied` with
  `ext.sfdc.failureReason` on handshake;
- the session of a connected client never expires: each `/meta/connect` (and the end of a
  held one) extends its token's lifetime, so only a token left idle longer than its lifetime
  expires, and then gets the same errors as a revoked one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import string
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiohttp import web

from sfstream_emulator.bus import ChannelKind, Cursor
from sfstream_emulator.faults import Fault, FaultInjector, FaultKind
from sfstream_emulator.oauth import AccessToken, TokenService
from sfstream_emulator.runtime import OrgRuntime, SubscribeError
from sfstream_emulator.settings import EmulatorSettings

Message = dict[str, Any]

META_HANDSHAKE: Final = "/meta/handshake"
META_CONNECT: Final = "/meta/connect"
META_SUBSCRIBE: Final = "/meta/subscribe"
META_UNSUBSCRIBE: Final = "/meta/unsubscribe"
META_DISCONNECT: Final = "/meta/disconnect"
BROWSER_COOKIE: Final = "BAYEUX_BROWSER"
LONG_POLLING: Final = "long-polling"

VERSION_MISSING: Final = "400::API version in the URI is mandatory. URI format: '/cometd/{v}'"
VERSION_UNSUPPORTED: Final = (
    "400::Unsupported API version. Only API versions '{minimum}' and later are supported. "
    "URI format: '/cometd/{v}'"
)
UNKNOWN_CLIENT: Final = "403::Unknown client"
AUTH_INVALID: Final = "401::Authentication invalid"
AUTH_REQUIRED: Final = "401::Request requires authentication"
HANDSHAKE_DENIED: Final = "403::Handshake denied"
DAILY_LIMIT: Final = "403::Organization total events daily limit exceeded"
CONCURRENT_LIMIT: Final = "403::Organization concurrent user limit exceeded"
SERVER_BUSY: Final = "Server is too busy. Please try your request again later."
REPLAY_INVALID: Final = (
    "400::The replayId {{{replay}}} you provided was invalid.  Please provide a valid ID, "
    "-2 to replay all events, or -1 to replay only new events."
)
_ID_ALPHABET: Final = string.ascii_lowercase + string.digits
_VERSION_FORMAT: Final = re.compile(r"\d{1,3}(\.\d{1,2})?")


def _random_id(length: int) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


@dataclass(slots=True)
class ClientSession:
    """One Bayeux client (one clientId) and its subscriptions."""

    client_id: str
    browser_id: str
    token: str
    last_seen: float
    subscriptions: dict[str, Cursor] = field(default_factory=dict)
    connected: bool = False
    waiter: asyncio.Event | None = None
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while a `/meta/connect` of this client is held (see `CometdServer.wait_held`)."""
    connect_generation: int = 0
    removed: bool = False
    delivered: int = 0


@dataclass(frozen=True)
class JournalEntry:
    """One change of a client's subscriptions, or one delivery, as `CometdServer.journal`
    keeps them."""

    at: float
    """Wall-clock time (epoch seconds)."""
    client_id: str
    action: str
    """`subscribe`, `unsubscribe`, `gone` (disconnected, expired or dropped: every
    subscription ends) or `deliver`."""
    channel: str | None = None
    replay_ids: tuple[int, ...] = ()
    """The events delivered (`deliver`)."""


JOURNAL_LIMIT = 1_000_000
"""Entries the journal keeps (the oldest go first)."""


class _Outcome:
    """How a request ends: a normal JSON body, or an injected network fault."""

    __slots__ = ("browser_cookie", "fault", "parts", "status")

    def __init__(self) -> None:
        self.parts: list[bytes] = [b"["]
        self.status = 200
        self.fault: Fault | None = None
        self.browser_cookie: str | None = None
        """A new `BAYEUX_BROWSER` value to set on the response."""

    def add(self, message: Message) -> None:
        self.parts.append(orjson.dumps(message))
        self.parts.append(b",")

    def body(self) -> bytes:
        parts = self.parts
        if parts[-1] == b",":
            parts[-1] = b"]"
        else:
            parts.append(b"]")
        return b"".join(parts)


def _reply(message: Message, session_id: str | None = None) -> Message:
    reply: Message = {}
    client_id = session_id or message.get("clientId")
    if client_id is not None:
        reply["clientId"] = client_id
    reply["channel"] = message.get("channel")
    if "id" in message:
        reply["id"] = message["id"]
    return reply


def _error(
    message: Message, error: str, session_id: str | None = None, advice: Message | None = None
) -> Message:
    reply = _reply(message, session_id)
    if "subscription" in message:
        reply["subscription"] = message["subscription"]
    if advice is not None:
        reply["advice"] = advice
    reply["error"] = error
    reply["successful"] = False
    return reply


class CometdServer:
    """Bayeux sessions, subscriptions and long polls over the org's event bus."""

    def __init__(
        self,
        runtime: OrgRuntime,
        tokens: TokenService,
        faults: FaultInjector,
        settings: EmulatorSettings,
    ) -> None:
        self.runtime = runtime
        self.tokens = tokens
        self.faults = faults
        self.settings = settings
        self.sessions: dict[str, ClientSession] = {}
        self.stats: dict[str, int] = {
            "requests": 0,
            "handshakes": 0,
            "connects": 0,
            "events_delivered": 0,
            "unknown_client": 0,
            "expired_clients": 0,
        }
        self.journal: deque[JournalEntry] = deque(maxlen=JOURNAL_LIMIT)
        """Who subscribed to what, when, and what was delivered to whom: how tests audit
        that several consumers never received one channel at the same time."""

    def _note(
        self,
        client_id: str,
        action: str,
        channel: str | None = None,
        replay_ids: tuple[int, ...] = (),
    ) -> None:
        self.journal.append(JournalEntry(time.time(), client_id, action, channel, replay_ids))

    # -- session bookkeeping ----------------------------------------------------------------

    def _live_session(self, client_id: object) -> ClientSession | None:
        if not isinstance(client_id, str):
            return None
        session = self.sessions.get(client_id)
        if session is None:
            return None
        if session.waiter is None and (
            self.runtime.clock.now() - session.last_seen > self.settings.reconnect_gap_s
        ):
            self._remove(session)
            self.stats["expired_clients"] += 1
            return None
        return session

    def _remove(self, session: ClientSession) -> None:
        if not session.removed:
            self._note(session.client_id, "gone")
        session.removed = True
        self.sessions.pop(session.client_id, None)
        self._release_waiter(session)

    def _release_waiter(self, session: ClientSession) -> None:
        if session.waiter is not None:
            session.waiter.set()
            for cursor in session.subscriptions.values():
                cursor.channel.waiters.discard(session.waiter)

    def sweep(self) -> int:
        """Forget clients that stopped reconnecting; returns how many."""
        before = len(self.sessions)
        for client_id in list(self.sessions):
            self._live_session(client_id)
        return before - len(self.sessions)

    def expire_all(self) -> int:
        """Forget every client, as when Salesforce drops sessions; returns how many."""
        sessions = list(self.sessions.values())
        for session in sessions:
            self._remove(session)
        return len(sessions)

    async def wait_held(self, client_id: str) -> None:
        """Return once a `/meta/connect` of `client_id` is held waiting for events.

        For tests that must act while a long poll is pending, without sleeping.

        Raises:
            KeyError: no such client.
        """
        await self.sessions[client_id].holding.wait()

    def subscriber_count(self, channel: str) -> int:
        return sum(1 for s in self.sessions.values() if channel in s.subscriptions)

    def drop_subscriptions(self, channel: str) -> int:
        """Forget every client's subscription to `channel` without telling them; how many."""
        dropped = 0
        for session in self.sessions.values():
            if session.subscriptions.pop(channel, None) is not None:
                self._note(session.client_id, "unsubscribe", channel)
                dropped += 1
        return dropped

    # -- HTTP entry point -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        version = request.match_info.get("version", "")
        version_error = self._check_version(version)
        latest = self.runtime.api_version
        if version_error is not None:
            return _json_response(
                [
                    {
                        "successful": False,
                        "error": version_error.format(
                            v=latest, minimum=f"{self.settings.min_cometd_version:.1f}"
                        ),
                    }
                ],
                status=400,
            )
        if request.content_length is not None and (
            request.content_length > self.settings.max_request_bytes
        ):
            return web.Response(status=413, text="Maximum Request Size Exceeded")
        raw = await request.read()
        if len(raw) > self.settings.max_request_bytes:
            return web.Response(status=413, text="Maximum Request Size Exceeded")
        messages = _parse_messages(raw)
        if messages is None:
            return web.Response(
                status=400, text="Bad Request: the body is not a JSON array of Bayeux messages"
            )
        channels = frozenset(m["channel"] for m in messages if isinstance(m.get("channel"), str))
        action = self.faults.chaos_action()
        if action == "revoke_tokens":
            self.tokens.revoke_access_tokens()
        elif action == "expire_clients":
            self.expire_all()
        fault = self.faults.take("cometd", channels)
        if fault is not None and fault.kind is FaultKind.HTTP_503:
            return web.Response(status=503, text=SERVER_BUSY)
        if fault is not None and fault.kind is FaultKind.STALL:
            await asyncio.sleep(fault.seconds)
        authorization = request.headers.get("Authorization")
        if not authorization:
            body = [_error(m, AUTH_REQUIRED) for m in messages]
            return _json_response(body, status=401)
        outcome = await self._process(request, messages, authorization, fault)
        response = web.Response(
            body=outcome.body(),
            status=outcome.status,
            content_type="application/json",
            charset="UTF-8",
        )
        browser_id = outcome.browser_cookie
        if browser_id is not None:
            secure = request.secure
            response.set_cookie(BROWSER_COOKIE, browser_id, path="/", secure=secure, httponly=True)
            # Salesforce's load balancer pins a client to one app server with this cookie.
            response.set_cookie("sfdc-stream", f"!{_random_id(40)}", path="/", secure=secure)
        if outcome.fault is not None:
            return await _network_fault(request, response, outcome.fault)
        return response

    def _check_version(self, version: str) -> str | None:
        if not version:
            return VERSION_MISSING
        if _VERSION_FORMAT.fullmatch(version) is None:
            return VERSION_UNSUPPORTED
        if float(version) < self.settings.min_cometd_version:
            return VERSION_UNSUPPORTED
        return None

    async def _process(
        self,
        request: web.Request,
        messages: list[Message],
        authorization: str,
        fault: Fault | None,
    ) -> _Outcome:
        outcome = _Outcome()
        if fault is not None and fault.kind in (FaultKind.DROP, FaultKind.CUT):
            outcome.fault = fault
        token = self.tokens.check(authorization)
        browser = request.cookies.get(BROWSER_COOKIE)
        connect: Message | None = None
        for message in messages:
            channel = message.get("channel")
            if channel == META_CONNECT and connect is None:
                connect = message
                continue
            if channel == META_HANDSHAKE:
                outcome.add(
                    self._handshake(
                        message,
                        authenticated=token is not None,
                        browser=browser,
                        authorization=authorization,
                        fault=fault,
                        outcome=outcome,
                    )
                )
            elif not isinstance(channel, str):
                outcome.add(_error(message, "400::channel_missing"))
            elif token is None:
                outcome.add(self._auth_failure(message))
            elif channel == META_CONNECT:
                outcome.add(_error(message, "400::Only one /meta/connect is allowed per request"))
            elif channel in (META_SUBSCRIBE, META_UNSUBSCRIBE, META_DISCONNECT):
                outcome.add(self._session_message(message, browser, fault))
            elif channel.startswith("/meta/"):
                outcome.add(_error(message, f"400::Unknown meta channel {{{channel}}}"))
            else:
                outcome.add(_error(message, f"403::Publishing is not allowed on {{{channel}}}"))
        if connect is not None:
            if token is None:
                outcome.add(self._auth_failure(connect))
            else:
                await self._connect(
                    request, connect, browser=browser, fault=fault, outcome=outcome, token=token
                )
        return outcome

    def _auth_failure(self, message: Message) -> Message:
        session = self._live_session(message.get("clientId"))
        if session is not None:
            self._remove(session)
        return _error(message, AUTH_INVALID, advice={"reconnect": "none", "interval": 0})

    def _cookie_error(
        self, message: Message, session: ClientSession, browser: str | None
    ) -> Message | None:
        if browser != session.browser_id:
            return _error(
                message,
                f"400::Client {session.client_id} has established a session, but no "
                f"{BROWSER_COOKIE} cookie present",
                session.client_id,
            )
        return None

    # -- handshake --------------------------------------------------------------------------

    def _handshake(
        self,
        message: Message,
        *,
        authenticated: bool,
        browser: str | None,
        authorization: str,
        fault: Fault | None,
        outcome: _Outcome,
    ) -> Message:
        self.stats["handshakes"] += 1
        ext = {"replay": True, "payload.format": True}
        denied_reason: str | None = None
        if fault is not None and fault.kind is FaultKind.DENY_HANDSHAKE:
            denied_reason = fault.reason
        elif not authenticated:
            denied_reason = AUTH_INVALID
        elif len(self.sessions) >= self.runtime.allocations.concurrent_clients:
            self.sweep()
            if len(self.sessions) >= self.runtime.allocations.concurrent_clients:
                denied_reason = CONCURRENT_LIMIT
        if denied_reason is not None:
            reply: Message = {
                "ext": {"sfdc": {"failureReason": denied_reason}, **ext},
                "advice": {"reconnect": "none"},
                "channel": META_HANDSHAKE,
            }
            if "id" in message:
                reply["id"] = message["id"]
            reply["error"] = HANDSHAKE_DENIED
            reply["successful"] = False
            return reply
        types = message.get("supportedConnectionTypes")
        if isinstance(types, list) and types and LONG_POLLING not in types:
            offered = ", ".join(str(t) for t in types)
            return _error(message, f"400::Invalid connection type {{{offered}}}")
        token = self.tokens.check(authorization)
        assert token is not None
        browser_id = browser or _random_id(16)
        session = ClientSession(
            client_id=_random_id(27),
            browser_id=browser_id,
            token=token.value,
            last_seen=self.runtime.clock.now(),
        )
        self.sessions[session.client_id] = session
        if browser is None:
            outcome.browser_cookie = browser_id
        reply = {
            "ext": ext,
            "minimumVersion": "1.0",
            "clientId": session.client_id,
            "supportedConnectionTypes": [LONG_POLLING],
            "channel": META_HANDSHAKE,
        }
        if "id" in message:
            reply["id"] = message["id"]
        reply["version"] = "1.0"
        reply["successful"] = True
        return reply

    # -- subscribe, unsubscribe, disconnect -------------------------------------------------

    def _session_message(
        self, message: Message, browser: str | None, fault: Fault | None
    ) -> Message:
        channel = message["channel"]
        session = self._live_session(message.get("clientId"))
        if session is None:
            self.stats["unknown_client"] += 1
            return _error(message, UNKNOWN_CLIENT)
        cookie_error = self._cookie_error(message, session, browser)
        if cookie_error is not None:
            return cookie_error
        session.last_seen = self.runtime.clock.now()
        if channel == META_DISCONNECT:
            self._remove(session)
            reply = _reply(message, session.client_id)
            reply["successful"] = True
            return reply
        if fault is not None and fault.kind is FaultKind.UNKNOWN_CLIENT:
            self._remove(session)
            return _error(message, UNKNOWN_CLIENT)
        subscription = message.get("subscription")
        if channel == META_UNSUBSCRIBE:
            if isinstance(subscription, str):
                cursor = session.subscriptions.pop(subscription, None)
                if cursor is not None:
                    self._note(session.client_id, "unsubscribe", subscription)
                if cursor is not None and session.waiter is not None:
                    cursor.channel.waiters.discard(session.waiter)
            reply = _reply(message, session.client_id)
            reply["subscription"] = subscription
            reply["successful"] = True
            return reply
        return self._subscribe(message, session, subscription)

    def _subscribe(self, message: Message, session: ClientSession, subscription: object) -> Message:
        if not isinstance(subscription, str) or not subscription:
            return _error(message, "400::Channel name not specified", session.client_id)
        try:
            channel = self.runtime.resolve_channel(subscription)
        except SubscribeError as exc:
            return _error(message, exc.error, session.client_id)
        allocation = self.runtime.allocations.for_kind(channel.kind)
        if allocation.exhausted(self.runtime.clock.now()):
            return _error(message, DAILY_LIMIT, session.client_id)
        replay = _replay_value(message, subscription)
        if isinstance(replay, str):
            return _error(message, replay, session.client_id)
        if replay not in (-1, -2) and not self.runtime.bus.replay_is_valid(channel, replay):
            return _error(message, REPLAY_INVALID.format(replay=replay), session.client_id)
        cursor = self.runtime.bus.start_cursor(channel, replay)
        previous = session.subscriptions.get(subscription)
        if previous is not None and session.waiter is not None:
            previous.channel.waiters.discard(session.waiter)
        session.subscriptions[subscription] = cursor
        self._note(session.client_id, "subscribe", subscription)
        if session.waiter is not None:
            channel.waiters.add(session.waiter)
            if self.runtime.bus.pending([cursor]):
                session.waiter.set()
        reply = _reply(message, session.client_id)
        reply["subscription"] = subscription
        reply["successful"] = True
        return reply

    # -- connect ----------------------------------------------------------------------------

    async def _connect(
        self,
        request: web.Request,
        message: Message,
        *,
        browser: str | None,
        fault: Fault | None,
        outcome: _Outcome,
        token: AccessToken,
    ) -> None:
        self.stats["connects"] += 1
        # Connecting is activity: the session does not expire while its client connects.
        self.tokens.keep_alive(token)
        session = self._live_session(message.get("clientId"))
        if session is None or (fault is not None and fault.kind is FaultKind.UNKNOWN_CLIENT):
            if session is not None:
                self._remove(session)
            self.stats["unknown_client"] += 1
            reconnect = fault.reconnect if fault is not None else "handshake"
            outcome.add(
                _error(message, UNKNOWN_CLIENT, advice={"interval": 0, "reconnect": reconnect})
            )
            return
        cookie_error = self._cookie_error(message, session, browser)
        if cookie_error is not None:
            outcome.add(cookie_error)
            return
        if fault is not None and fault.kind is FaultKind.AUTH_INVALID:
            outcome.add(self._auth_failure(message))
            return
        connection_type = message.get("connectionType", LONG_POLLING)
        if connection_type != LONG_POLLING:
            outcome.add(
                _error(
                    message,
                    f"400::Invalid connection type {{{connection_type}}}",
                    session.client_id,
                )
            )
            return
        session.connect_generation += 1
        generation = session.connect_generation
        if session.waiter is not None:
            self._release_waiter(session)  # a newer connect replaces the held one
        first = not session.connected
        session.connected = True
        if self._allocation_exhausted(session):
            outcome.add(_error(message, DAILY_LIMIT, session.client_id))
            session.last_seen = self.runtime.clock.now()
            return
        hold_s = self._hold_seconds(message, first)
        cursors = list(session.subscriptions.values())
        if hold_s > 0 and not self.runtime.bus.pending(cursors):
            await self._hold(session, hold_s)
        if session.removed:
            outcome.add(
                _error(message, UNKNOWN_CLIENT, advice={"interval": 0, "reconnect": "handshake"})
            )
            return
        # The client stayed connected through the hold, so only a revocation ends its session.
        if not self.tokens.keep_alive(token):
            outcome.add(self._auth_failure(message))
            return
        transport = request.transport
        if transport is None or transport.is_closing():
            session.last_seen = self.runtime.clock.now()
            return
        # A superseded connect answers empty: its events belong to the newer connect.
        if session.connect_generation == generation:
            delivered = self._deliver(session, outcome)
            if delivered is False:
                outcome.add(_error(message, DAILY_LIMIT, session.client_id))
                session.last_seen = self.runtime.clock.now()
                return
        outcome.add(self._connect_reply(message, session, first))
        session.last_seen = self.runtime.clock.now()

    def _connect_reply(self, message: Message, session: ClientSession, first: bool) -> Message:
        """A successful connect reply; the first one of a client carries the advice."""
        reply: Message = {"clientId": session.client_id}
        if first:
            reply["advice"] = {
                "interval": 0,
                "timeout": int(self.settings.poll_timeout_s * 1000),
                "reconnect": "retry",
            }
        reply["channel"] = META_CONNECT
        if "id" in message:
            reply["id"] = message["id"]
        reply["successful"] = True
        return reply

    def _hold_seconds(self, message: Message, first: bool) -> float:
        if first:
            return 0.0
        hold = self.settings.poll_timeout_s
        advice = message.get("advice")
        if isinstance(advice, dict):
            asked = advice.get("timeout")
            if isinstance(asked, int | float) and not isinstance(asked, bool) and asked >= 0:
                hold = min(hold, asked / 1000)
        return hold

    async def _hold(self, session: ClientSession, hold_s: float) -> None:
        waiter = asyncio.Event()
        session.waiter = waiter
        for cursor in session.subscriptions.values():
            cursor.channel.waiters.add(waiter)
        session.holding.set()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hold_s):
                    await waiter.wait()
        finally:
            for cursor in session.subscriptions.values():
                cursor.channel.waiters.discard(waiter)
            if session.waiter is waiter:
                session.waiter = None
                session.holding.clear()

    def _limited_kinds(self, session: ClientSession) -> set[ChannelKind]:
        allocations = self.runtime.allocations
        return {
            cursor.channel.kind
            for cursor in session.subscriptions.values()
            if allocations.for_kind(cursor.channel.kind).maximum is not None
        }

    def _allocation_exhausted(self, session: ClientSession) -> bool:
        """Whether a daily allocation that one of the client's channels counts against is spent."""
        now = self.runtime.clock.now()
        allocations = self.runtime.allocations
        return any(
            allocations.for_kind(kind).exhausted(now) for kind in self._limited_kinds(session)
        )

    def _deliver(self, session: ClientSession, outcome: _Outcome) -> bool | None:
        """Move pending events into the response; False when the allocation is spent."""
        cursors = list(session.subscriptions.values())
        if not cursors:
            return None
        now = self.runtime.clock.now()
        allocations = self.runtime.allocations
        max_events = self.settings.max_batch_events
        for kind in self._limited_kinds(session):
            remaining = allocations.for_kind(kind).remaining(now) or 0
            if remaining <= 0:
                return False
            max_events = min(max_events, remaining)
        batch = self.runtime.bus.take(cursors, max_events, self.settings.max_batch_bytes)
        if not batch:
            return None
        batch.serialize_into(outcome.parts, session.client_id)
        delivered: dict[str, list[int]] = {}
        for channel, event in batch.items:
            allocations.for_kind(channel.kind).spend(1)
            delivered.setdefault(channel.name, []).append(event.replay_id)
        for name, replay_ids in delivered.items():
            self._note(session.client_id, "deliver", name, tuple(replay_ids))
        session.delivered += len(batch)
        self.stats["events_delivered"] += len(batch)
        return True


def _parse_messages(raw: bytes) -> list[Message] | None:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list) or not parsed:
        return None
    if not all(isinstance(m, dict) for m in parsed):
        return None
    return parsed


def _replay_value(message: Message, subscription: str) -> int | str:
    """The replay value to subscribe with, or the Bayeux error string."""
    ext = message.get("ext")
    replay_map = ext.get("replay") if isinstance(ext, dict) else None
    if not isinstance(replay_map, dict) or not replay_map:
        return -1  # no replay extension: new events only
    key = subscription.partition("?")[0]
    if key not in replay_map:
        shown = ", ".join(f"{k}={v}" for k, v in replay_map.items())
        return (
            f"400::The replayId for channel {{{key}}} wasn't found using the provided replay ID "
            f"map {{{{{shown}}}}}. Ensure that the channel name you provided in the replay map "
            "is valid and matches the channel name used for subscribing."
        )
    value = replay_map[key]
    if isinstance(value, bool):
        return REPLAY_INVALID.format(replay=str(value).lower())
    if isinstance(value, int):
        if value < -2:
            return REPLAY_INVALID.format(replay=value)
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value == "-2":
        return -2  # Salesforce accepts -2 as a string, but no other replay id
    return REPLAY_INVALID.format(replay=value)


def _json_response(messages: Iterable[Message], status: int) -> web.Response:
    return web.Response(
        body=orjson.dumps(list(messages)),
        status=status,
        content_type="application/json",
        charset="UTF-8",
    )


async def _network_fault(
    request: web.Request, response: web.Response, fault: Fault
) -> web.StreamResponse:
    """Lose a processed response the way a broken network would."""
    transport = request.transport
    if fault.kind is FaultKind.CUT and transport is not None:
        body = response.body
        assert isinstance(body, bytes)
        stream = web.StreamResponse(status=200)
        stream.content_type = "application/json"
        stream.content_length = len(body)
        await stream.prepare(request)
        await stream.write(body[: max(len(body) // 2, 1)])
        transport.abort()
        return stream
    if transport is not None:
        transport.abort()
    # aiohttp drops a response to a closed connection quietly; raising would log an error.
    return response
