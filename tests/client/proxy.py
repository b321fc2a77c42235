"""An HTTP proxy between the client and the emulator that can rewrite CometD responses.

The emulator only sends well-formed events; a proxy (or a broken middlebox) may not. This
one forwards every request unchanged (token, REST and CometD, cookies included), points the
token response's `instance_url` at itself so the CometD traffic goes through it, and hands
every CometD response array to a `rewrite` function before returning it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

Rewrite = Callable[[list[Any]], list[Any]]

_REQUEST_SKIP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}
)
_RESPONSE_SKIP = frozenset(
    {"content-length", "transfer-encoding", "connection", "content-encoding", "date", "server"}
)


class RewritingProxy:
    """A reverse proxy for `upstream` on a free localhost port.

    Args:
        upstream: the emulator's URL.
        rewrite: applied to each decoded CometD response array (200 only); the identity
            when None.
    """

    def __init__(self, upstream: str, rewrite: Rewrite | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.rewrite = rewrite
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"http://localhost:{self.port}"

    async def __aenter__(self) -> Self:
        # No cookie jar of its own: cookies travel in the forwarded headers.
        self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        # Bound on both stacks: `localhost` may resolve to either.
        for host in ("127.0.0.1", "::1"):
            try:
                await web.TCPSite(self._runner, host, self.port).start()
            except OSError:
                if host == "127.0.0.1":
                    raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _REQUEST_SKIP}
        try:
            async with self._http.request(
                request.method,
                self.upstream + request.path_qs,
                data=body,
                headers=headers,
                allow_redirects=False,
            ) as upstream:
                status = upstream.status
                raw = await upstream.read()
                out = CIMultiDict(
                    (k, v) for k, v in upstream.headers.items() if k.lower() not in _RESPONSE_SKIP
                )
        except aiohttp.ClientError:
            # The emulator cut the connection (a drop or cut fault): do the same.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=502)
        if status == 200 and request.path == "/services/oauth2/token":
            token = orjson.loads(raw)
            token["instance_url"] = self.url
            raw = orjson.dumps(token)
        elif status == 200 and request.path.startswith("/cometd/") and self.rewrite is not None:
            raw = orjson.dumps(self.rewrite(orjson.loads(raw)))
        return web.Response(body=raw, status=status, headers=out)
