"""`StreamingClient`: the Bayeux session driven over aiohttp long-polling.

This is the only code that does CometD I/O. It posts what the session asks for, feeds the
answers back, keeps the next `/meta/connect` going out as soon as the previous one returns,
and hands events to the consumer through a queue. The recovery rules live in the session
(`sfstream.bayeux.session`); this module adds the network: timeouts, the token, cookies,
proxies, TCP keepalive, and backpressure.

    async with StreamingClient(credentials) as client:
        await client.subscribe("/data/AccountChangeEvent", replay_from=-2)
        async for item in client:
            ...  # Event, Gap or SubscriptionLost
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import socket
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit

import aiohttp
import msgspec
import orjson
import structlog

from sfstream.auth import AccessToken, OAuthCredentials, TokenProvider
from sfstream.bayeux import (
    LATEST,
    Event,
    EventRejected,
    Gap,
    Handshaken,
    Reauthenticate,
    Recovering,
    ReplayPolicy,
    Request,
    RequestKind,
    Session,
    SessionFailed,
    Step,
    Subscribed,
    SubscriptionLost,
    decode,
)
from sfstream.bayeux.messages import MalformedEvent, Reply
from sfstream.errors import (
    AllocationExceededError,
    AuthenticationError,
    ConnectStalledError,
    ProtocolError,
    ServerBusyError,
    ServerError,
    SfStreamError,
    TerminalError,
    ThrottledError,
    TransportError,
)
from sfstream.netfail import network_error
from sfstream.observability.telemetry import Telemetry, reconnect_reason

log = structlog.get_logger("sfstream.client")

StreamItem = Event | Gap | SubscriptionLost
"""What iterating a client yields: events, and notices about subscriptions."""

_CLOSE_TIMEOUT_S: Final = 5.0


class ClientSettings(msgspec.Struct, frozen=True):
    """Network and flow-control settings.

    Attributes:
        api_version: the CometD version in the URL (`/cometd/62.0`).
        max_pending_events: events waiting for the consumer before the client stops polling
            (a consumer stalled past the 40 s reconnect window costs a re-handshake and a
            resubscribe from the last received replayId, never an event).
        network_margin_s: added to the advised poll timeout to get a connect's read timeout.
        request_timeout_s: read timeout of handshakes, subscribes and token requests.
        backoff_base_s: the ceiling of the first retry delay; each consecutive failure
            doubles it (every retry: reconnects, re-handshakes, token refreshes).
        backoff_cap_s: the largest retry delay.
        latest_clock_skew_s: when a stream subscribed at `-1` that has received nothing yet
            is resumed at `-2` after a re-handshake, replayed events up to this much older
            than its first subscribe are still delivered (Salesforce's clock may be behind
            ours, and an event's own time precedes its publication). Too small can lose
            events; too large only delivers a few from before the subscribe.
        protocol_error_limit: malformed events on one channel in a row, with no progress in
            between, before that subscription is lost with a `ProtocolError`.
        proxy: an HTTP(S) proxy URL; when None, `HTTPS_PROXY` and friends are honoured.
        tcp_keepalive_s: idle seconds before TCP keepalive probes (below NAT idle timeouts).
        ssl: TLS verification: True (system CAs), or an `ssl.SSLContext` for a private CA.
        allocation_probe_s: once the org's daily event delivery allocation is spent
            (`403::Organization total events daily limit exceeded`), how long the client
            waits before probing with a new handshake (plus up to a tenth more, jitter); it
            sends nothing meanwhile and resumes every stream from its last delivered
            replayId once a probe is accepted. None: the client ends with
            `AllocationExceededError` instead.
    """

    api_version: str = "62.0"
    max_pending_events: int = 10_000
    network_margin_s: float = 15.0
    request_timeout_s: float = 30.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    latest_clock_skew_s: float = 30.0
    protocol_error_limit: int = 5
    proxy: str | None = None
    tcp_keepalive_s: int = 60
    ssl: ssl.SSLContext | bool = True
    allocation_probe_s: float | None = 3600.0


class ClientStats(msgspec.Struct):
    """Counters for metrics and tests."""

    requests: int = 0
    transport_errors: int = 0
    watchdog_timeouts: int = 0
    backpressure_waits: int = 0
    events: int = 0
    duplicates: int = 0
    allocation_waits: int = 0
    """Times the client stopped to wait for a spent delivery allocation (refused probes too)."""
    handshakes: int = 0
    rehandshakes: int = 0
    reconnects: int = 0
    reauthentications: int = 0
    token_requests: int = 0
    token_refresh_failures: int = 0
    protocol_errors: int = 0
    """Events dropped because their envelope broke the protocol (bad or missing replayId)."""
    replay_skipped: int = 0
    """Events replayed to resume a `-1` stream that predate its first subscribe."""
    queue_depth: int = 0


class _End:
    """Queued after the last item: the stream ended (`client._error` says whether failed)."""

    __slots__ = ()


_END: Final = _End()


_Outcome = tuple[list[Reply], list[Event | MalformedEvent]] | SfStreamError


class _Waits:
    """The wake-up and drained events as awaitable tasks, re-armed after they fire."""

    def __init__(self, wake: asyncio.Event, drained: asyncio.Event) -> None:
        self._wake_event = wake
        self._drained_event = drained
        self._wake: asyncio.Task[bool] | None = None
        self._drained: asyncio.Task[bool] | None = None

    def wake(self) -> asyncio.Task[bool]:
        if self._wake is None:
            self._wake = asyncio.create_task(self._wake_event.wait())
        return self._wake

    def drained(self) -> asyncio.Task[bool]:
        if self._drained is None:
            self._drained_event.clear()
            self._drained = asyncio.create_task(self._drained_event.wait())
        return self._drained

    def consume(self, done: set[asyncio.Future[Any]]) -> None:
        if self._wake is not None and self._wake in done:
            self._wake_event.clear()
            self._wake = None
        if self._drained is not None and self._drained in done:
            self._drained = None

    def cancel(self) -> None:
        for task in (self._wake, self._drained):
            if task is not None:
                task.cancel()


def environment_proxy(url: str) -> str | None:
    """The proxy the environment (`HTTPS_PROXY`, `NO_PROXY`, ...) names for `url`, if any."""
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def _keepalive_socket_factory(idle_s: int) -> Callable[[Any], socket.socket]:
    def factory(addr_info: Any) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", idle_s),
            ("TCP_KEEPINTVL", max(idle_s // 4, 5)),
            ("TCP_KEEPCNT", 4),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
        return sock

    return factory


class StreamingClient:
    """A resilient Salesforce Streaming API client.

    Args:
        credentials: how to get an access token.
        settings: network and flow control.
        rng: backoff jitter source (seed it in tests).
        clock: monotonic seconds (injected in tests).
        wall_clock: seconds since the epoch, to compare with the time Salesforce puts in
            events (injected in tests).
        tokens: a token provider to share (with REST calls); one of its own otherwise.
        telemetry: where errors, reconnects, subscriptions and round trips are reported
            (shared with the connector's pipeline and exporters); one of its own otherwise.
    """

    def __init__(
        self,
        credentials: OAuthCredentials,
        settings: ClientSettings | None = None,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        tokens: TokenProvider | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.credentials = credentials
        self.telemetry = telemetry if telemetry is not None else Telemetry(clock)
        self.settings = settings or ClientSettings()
        s = self.settings
        self.session = Session(
            rng=rng,
            backoff_base_s=s.backoff_base_s,
            backoff_cap_s=s.backoff_cap_s,
            network_margin_s=s.network_margin_s,
            request_timeout_s=s.request_timeout_s,
            latest_clock_skew_s=s.latest_clock_skew_s,
            protocol_error_limit=s.protocol_error_limit,
            allocation_probe_s=s.allocation_probe_s,
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self.stats = ClientStats()
        # Items travel in chunks, one per response, so a large batch costs one queue
        # operation; `_buffer` holds the rest of the chunk being consumed.
        self._queue: asyncio.Queue[list[StreamItem] | _End] = asyncio.Queue()
        self._buffer: collections.deque[StreamItem] = collections.deque()
        self._queued = 0
        self._proxy: str | None = None
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._stopping = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._tokens: TokenProvider | None = tokens
        self._own_tokens = tokens is None
        self._driver: asyncio.Task[None] | None = None
        self._subscribe_waiters: dict[str, asyncio.Future[int]] = {}
        self._last_token: AccessToken | None = None
        self._error: SfStreamError | None = None
        self._closed: asyncio.Future[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Authenticate and start the session (the handshake runs in the background)."""
        s = self.settings
        connector = aiohttp.TCPConnector(
            ssl=s.ssl,
            socket_factory=_keepalive_socket_factory(s.tcp_keepalive_s),
            limit=8,
        )
        self._http = aiohttp.ClientSession(
            connector=connector,
            # Salesforce sets BAYEUX_BROWSER on the handshake and requires it back; `unsafe`
            # keeps cookies from servers addressed by IP (local emulators, proxies).
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            # Proxies are resolved once below: with trust_env, aiohttp would look the
            # environment and ~/.netrc up in a worker thread on every long poll.
            trust_env=False,
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )
        if self._own_tokens:
            self._tokens = TokenProvider(
                self.credentials,
                self._http,
                s.request_timeout_s,
                proxy=s.proxy or environment_proxy(self.credentials.login_url),
            )
        assert self._tokens is not None
        try:
            token = await self._tokens.token()
        except BaseException:
            await self._http.close()
            raise
        self._proxy = s.proxy or environment_proxy(token.instance_url)
        self.stats.token_requests = self._tokens.refreshes
        self.telemetry.session_started()
        self._driver = asyncio.create_task(self._drive(), name="sfstream-streaming-client")

    async def close(self) -> None:
        """Disconnect (best effort, bounded) and release the connection.

        Every caller returns once the client is closed: what it received is queued by then.
        Subscriptions still waiting for their confirmation fail with a retryable error.
        """
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        self._closed = asyncio.get_running_loop().create_future()
        try:
            self.session.close()
            self._stopping.set()
            self._wake.set()
            if self._driver is not None:
                try:
                    async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                        await asyncio.shield(self._driver)
                except (TimeoutError, asyncio.CancelledError):
                    self._driver.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await self._driver
            if self._driver is not None:
                self.telemetry.session_ended(self._error)
            if self._http is not None:
                await self._http.close()
        finally:
            for channel, waiter in self._subscribe_waiters.items():
                if not waiter.done():
                    waiter.set_exception(
                        TransportError(
                            "the client closed before the subscription was confirmed",
                            channel=channel,
                        )
                    )
            self._subscribe_waiters.clear()
            self._queue.put_nowait(_END)
            self._closed.set_result(None)

    # -- subscriptions ----------------------------------------------------------------------

    async def subscribe(
        self,
        channel: str,
        replay_from: int = LATEST,
        on_invalid_replay: ReplayPolicy = ReplayPolicy.FAIL,
        *,
        wait: bool = True,
    ) -> int:
        """Subscribe to `channel` from `replay_from` (-1 new, -2 all retained, or an id).

        Returns the replay value the server accepted (after any fallback). A refusal is
        raised here and the client forgets that subscription, so the caller can go on with
        others. With `wait=False` it returns at once and a refusal comes through the
        stream as a `SubscriptionLost` item instead.

        Raises:
            SubscriptionError: the server refused the subscription (channel, replayId and
                server text attached).
            ValueError: already subscribed, or a bad replay value.
        """
        if self._error is not None:
            raise self._error
        if self.session.failure is not None:
            raise self.session.failure
        self.session.subscribe(channel, replay_from, ReplayPolicy(on_invalid_replay), awaited=wait)
        self._wake.set()
        if not wait:
            return replay_from
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._subscribe_waiters[channel] = future
        return await future

    def start_over(self, error: SfStreamError) -> bool:
        """Abandon the session for a new one (a new handshake, every subscription resumed
        from its last delivered replayId), as after `error`; False when the session is not
        connected (already recovering, or closing)."""
        step = self.session.start_over(self._clock(), error)
        if not step.notices:
            return False
        self._handle_notices(step, [])
        self._wake.set()
        return True

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving `channel`. A `subscribe` of it still waiting for the server's
        answer returns at once (with -1): the subscription is withdrawn."""
        self.session.unsubscribe(channel)
        waiter = self._subscribe_waiters.pop(channel, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(LATEST)
        self._wake.set()

    # -- consuming --------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[StreamItem]:
        return self

    async def __anext__(self) -> StreamItem:
        if not self._buffer:
            chunk = await self._queue.get()
            if isinstance(chunk, _End):
                self._queue.put_nowait(chunk)  # every later read ends the same way
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._buffer.extend(chunk)
        item = self._buffer.popleft()
        self._consumed(1)
        return item

    def take_nowait(self, limit: int) -> list[StreamItem]:
        """Up to `limit` items already received, without waiting (possibly none).

        A failure or the end of the stream is left for the next `__anext__` to raise.
        """
        items: list[StreamItem] = []
        buffer = self._buffer
        queue = self._queue
        while len(items) < limit:
            if buffer:
                room = limit - len(items)
                if len(buffer) <= room:
                    items.extend(buffer)
                    buffer.clear()
                else:
                    items.extend(buffer.popleft() for _ in range(room))
                continue
            if queue.empty():
                break
            chunk = queue.get_nowait()
            if isinstance(chunk, _End):
                queue.put_nowait(chunk)  # left for the next __anext__ to raise
                break
            if len(chunk) <= limit - len(items):
                items.extend(chunk)
            else:
                buffer.extend(chunk)
        self._consumed(len(items))
        return items

    def _consumed(self, count: int) -> None:
        self._queued -= count
        self.stats.queue_depth = self._queued
        if self._queued < self.settings.max_pending_events // 2:
            self._drained.set()

    @property
    def token_refreshes(self) -> int:
        """Access tokens obtained so far by the token provider (the login and refreshes)."""
        return self._tokens.refreshes if self._tokens is not None else 0

    @property
    def queue_depth(self) -> int:
        """Items received and not yet taken by the consumer."""
        return self._queued

    # -- the driver -------------------------------------------------------------------------

    async def _drive(self) -> None:
        pending: dict[asyncio.Future[_Outcome], Request] = {}
        waits = _Waits(self._wake, self._drained)
        try:
            while not self.session.finished:
                connect_allowed = self._queued < self.settings.max_pending_events
                self._launch(pending, connect_allowed)
                if self.session.finished or (self.session.closing and not pending):
                    break
                done = await self._wait(pending, waits, connect_allowed)
                for future in done:
                    request = pending.pop(future, None)
                    if request is not None:
                        await self._handle(self._feed(request, future.result()))
        except asyncio.CancelledError:
            raise
        except SfStreamError as exc:
            self._fail(exc)
        except Exception as exc:
            self._fail(TerminalError(f"streaming client crashed: {exc!r}"))
            log.exception("client_crashed")
        else:
            failure = self.session.failure
            if failure is not None and self._error is None:
                self._fail(failure)
        finally:
            waits.cancel()
            for future in pending:
                future.cancel()
            for future in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await future

    def _launch(
        self, pending: dict[asyncio.Future[_Outcome], Request], connect_allowed: bool
    ) -> None:
        for request in self.session.poll(
            self._clock(), connect=connect_allowed, wall=self._wall_clock()
        ):
            self.stats.requests += 1
            pending[asyncio.ensure_future(self._send(request))] = request

    async def _wait(
        self, pending: dict[asyncio.Future[_Outcome], Request], waits: _Waits, connect_allowed: bool
    ) -> set[asyncio.Future[Any]]:
        """Until a request completes, a command arrives, the consumer drains, or a deadline."""
        now = self._clock()
        waiters: set[asyncio.Future[Any]] = set(pending)
        waiters.add(waits.wake())
        if not connect_allowed and self.session.wants_connect():
            # The connect is held back on purpose while the consumer catches up: the
            # session is not stalled.
            self.telemetry.round_trip()
            self._note_backpressure()
            waiters.add(waits.drained())
        deadline = self.session.next_deadline(now, connect=connect_allowed)
        timeout = None if deadline is None else max(0.0, deadline - now)
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waits.consume(done)
        return done

    def _feed(self, request: Request, outcome: _Outcome) -> Step:
        now = self._clock()
        if isinstance(outcome, SfStreamError):
            self.stats.transport_errors += 1
            return self.session.fail(request, now, outcome)
        replies, events = outcome
        if request.kind is RequestKind.CONNECT:
            self.telemetry.round_trip()
        step = self.session.receive(request, now, replies, events)
        self.telemetry.connect_timeout_s = self.session.connect_timeout_s()
        return step

    def _note_backpressure(self) -> None:
        self.stats.backpressure_waits += 1
        if self.stats.backpressure_waits == 1 or self.stats.backpressure_waits % 100 == 0:
            log.warning(
                "backpressure",
                queue_depth=self._queued,
                max_pending_events=self.settings.max_pending_events,
                waits=self.stats.backpressure_waits,
            )

    async def _handle(self, step: Step) -> None:
        """Queue the step's events and notices for the consumer, then act on the rest.

        Events go into the queue before a session failure ends it, so that everything
        received is still delivered.
        """
        chunk: list[StreamItem] = list(step.events)
        deferred = self._handle_notices(step, chunk)
        if chunk:
            self._queued += len(chunk)
            self._queue.put_nowait(chunk)
        for notice in deferred:
            if isinstance(notice, Reauthenticate):
                await self._reauthenticate(notice)
            else:
                self._fail(notice.error)

    def _handle_notices(
        self, step: Step, chunk: list[StreamItem]
    ) -> list[Reauthenticate | SessionFailed]:
        deferred: list[Reauthenticate | SessionFailed] = []
        counters = self.session.counters
        self.stats.events = counters.events
        self.stats.duplicates = counters.duplicates
        self.stats.protocol_errors = counters.protocol_errors
        self.stats.replay_skipped = counters.replay_skipped
        for notice in step.notices:
            if isinstance(notice, Subscribed):
                if self.telemetry.allocation_probe_at is not None:
                    self.telemetry.allocation_restored()
                    log.info("allocation_restored", channel=notice.channel)
                self.telemetry.channel_up(notice.channel)
                log.info("subscribed", channel=notice.channel, replay_id=notice.replay_from)
                waiter = self._subscribe_waiters.pop(notice.channel, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(notice.replay_from)
            elif isinstance(notice, Gap):
                log.warning(
                    "replay_gap",
                    channel=notice.channel,
                    replay_id=notice.replay_id,
                    fallback=notice.fallback,
                    error=notice.error.server_text,
                )
                chunk.append(notice)
            elif isinstance(notice, SubscriptionLost):
                self.telemetry.channel_down(notice.channel)
                self.telemetry.error(notice.error)
                log.error(
                    "subscription_lost",
                    channel=notice.channel,
                    replay_id=notice.error.replay_id,
                    error=notice.error.server_text or str(notice.error),
                )
                waiter = self._subscribe_waiters.pop(notice.channel, None)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(notice.error)
                else:
                    chunk.append(notice)
            elif isinstance(notice, EventRejected):
                self.telemetry.error(notice.error)
                # The channel and the offending value's type, never the payload.
                log.error(
                    "protocol_error",
                    channel=notice.channel,
                    problem=str(notice.error),
                    value_type=notice.error.value_type,
                    replay_id=notice.error.replay_id,
                    consecutive=notice.consecutive,
                )
            elif isinstance(notice, Recovering) and isinstance(
                notice.error, AllocationExceededError
            ):
                self._allocation_exhausted(notice)
            elif isinstance(notice, Recovering):
                self.stats.reconnects += 1
                reason = reconnect_reason(notice.error)
                self.telemetry.error(notice.error)
                self.telemetry.reconnect(reason, notice.error)
                log.warning(
                    "reconnecting",
                    reason=reason,
                    error=notice.error.server_text or str(notice.error),
                    recovery=notice.recovery.value,
                    delay_s=round(notice.delay_s, 3),
                )
            elif isinstance(notice, Handshaken):
                self.telemetry.handshake()
                self.stats.handshakes = counters.handshakes
                self.stats.rehandshakes = counters.rehandshakes
                log.info(
                    "handshake", client_id=notice.client_id, rehandshakes=counters.rehandshakes
                )
            elif isinstance(notice, Reauthenticate | SessionFailed):
                deferred.append(notice)
        return deferred

    def _allocation_exhausted(self, notice: Recovering) -> None:
        """The daily delivery allocation is spent: nothing goes out until the probe.

        `/healthz` stays alive meanwhile (the wait is on purpose, see `Telemetry.alive`);
        `/readyz` is not ready until every stream is subscribed again.
        """
        self.stats.allocation_waits += 1
        probe_at = self._clock() + notice.delay_s
        self.telemetry.error(notice.error)
        self.telemetry.reconnect(reconnect_reason(notice.error), notice.error)
        self.telemetry.allocation_exhausted(probe_at)
        for channel in list(self.telemetry.subscribed):
            self.telemetry.channel_down(channel)
        wall_probe = self._wall_clock() + notice.delay_s
        log.warning(
            "allocation_exhausted",
            error=notice.error.server_text or str(notice.error),
            probe_in_s=round(notice.delay_s, 3),
            probe_at=datetime.fromtimestamp(wall_probe, UTC).isoformat(timespec="seconds"),
        )

    async def _reauthenticate(self, notice: Reauthenticate) -> None:
        """Refresh the token, waiting first as the session's retry schedule says, and again
        (on the same schedule) after each transient failure of the token endpoint."""
        assert self._tokens is not None
        self.stats.reauthentications += 1
        self.telemetry.error(notice.error)
        self.telemetry.reconnect("auth", notice.error)
        log.warning(
            "reauthenticating",
            error=notice.error.server_text or str(notice.error),
            delay_s=round(notice.delay_s, 3),
        )
        delay = notice.delay_s
        while True:
            if not await self._pause(delay):
                return  # closing: the session disconnects without a new token
            try:
                await self._tokens.refresh(self._last_token)
                break
            except AuthenticationError:
                raise
            except TransportError as exc:
                self.stats.token_refresh_failures += 1
                delay = self.session.authentication_failed(self._clock(), exc).delay_s
                log.warning("token_refresh_failed", error=str(exc), retry_in_s=round(delay, 3))
        self.stats.token_requests = self._tokens.refreshes
        self.session.authenticated(self._clock())

    async def _pause(self, delay_s: float) -> bool:
        """Wait `delay_s` unless the client closes first; False if it is closing."""
        if delay_s > 0 and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._stopping.wait()
        return not self._stopping.is_set()

    def _fail(self, error: SfStreamError) -> None:
        if self._error is None:
            self._error = error
            self.telemetry.error(error)
            log.error("session_failed", error=str(error), retryable=error.retryable)
        for waiter in self._subscribe_waiters.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._subscribe_waiters.clear()
        self._queue.put_nowait(_END)

    async def _send(self, request: Request) -> _Outcome:
        """POST one request; a failure comes back as a value, never raised."""
        assert self._http is not None
        assert self._tokens is not None
        try:
            token = await self._tokens.token()
        except SfStreamError as error:
            return error
        self.stats.token_requests = self._tokens.refreshes
        url = f"{token.instance_url}/cometd/{self.settings.api_version}"
        headers = {"Authorization": token.authorization(), "Content-Type": "application/json"}
        try:
            async with asyncio.timeout(request.timeout_s):
                async with self._http.post(
                    url,
                    data=orjson.dumps(request.messages),
                    headers=headers,
                    proxy=self._proxy,
                ) as response:
                    status = response.status
                    raw = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if isinstance(exc, TimeoutError) and request.kind is RequestKind.CONNECT:
                self.stats.watchdog_timeouts += 1
                return ConnectStalledError(
                    f"/meta/connect got no reply within {request.timeout_s:g} s (the advised "
                    "timeout plus the network margin): the connection is presumed dead "
                    "(a half-open connection behind a NAT or a proxy); starting the session over"
                )
            return network_error(
                exc, doing=f"/meta/{request.kind.value}", url=url, timeout_s=request.timeout_s
            )
        self._last_token = token
        return _decode(status, raw)


def _decode(status: int, raw: bytes) -> _Outcome:
    if status == 503:
        return ServerBusyError("HTTP 503: Salesforce is too busy")
    if status == 429:
        return ThrottledError("HTTP 429 from the CometD endpoint: too many requests")
    if status >= 500:
        return ServerError(f"HTTP {status} from the CometD endpoint")
    try:
        return decode(raw)
    except (orjson.JSONDecodeError, ProtocolError) as exc:
        text = raw[:200].decode("utf-8", "replace")
        if status == 200:
            # A truncated or garbled body (a cut connection, a proxy page): retry.
            return TransportError(f"unreadable CometD response: {exc}")
        if 400 <= status < 500:
            return TerminalError(
                f"the CometD endpoint refused the request: HTTP {status}: {text}", server_text=text
            )
        return (ServerError if status >= 500 else TransportError)(
            f"HTTP {status} from the CometD endpoint: {text}"
        )
