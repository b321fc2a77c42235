"""The REST calls discovery and schema tracking need, with Salesforce's errors classified.

A 401 refreshes the token once and retries; 5xx and network failures are retryable errors;
other refusals are terminal and carry Salesforce's `errorCode` and message.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from sfstream.auth import TokenProvider
from sfstream.errors import (
    AuthenticationError,
    ProtocolError,
    SfStreamError,
    TerminalError,
    TransportError,
)
from sfstream.netfail import network_error


class NotFoundError(TerminalError):
    """The resource does not exist (HTTP 404)."""


class RestClient:
    """GET requests against `/services/data/vXX.X/`.

    Args:
        http: the aiohttp session.
        tokens: the token provider (shared with the streaming client).
        api_version: e.g. `62.0`.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        tokens: TokenProvider,
        api_version: str = "62.0",
        timeout_s: float = 30.0,
    ) -> None:
        self._http = http
        self._tokens = tokens
        self.api_version = api_version
        self._timeout_s = timeout_s

    async def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        """GET `path` (relative to `/services/data/vXX.X/`, or absolute from `/services`)."""
        token = await self._tokens.token()
        for attempt in range(2):
            base = token.instance_url
            if path.startswith("/services/"):
                url = base + path
            else:
                url = f"{base}/services/data/v{self.api_version}/{path.lstrip('/')}"
            if params:
                url = f"{url}?{urlencode(params)}"
            try:
                async with asyncio.timeout(self._timeout_s):
                    async with self._http.get(
                        url,
                        headers={
                            "Authorization": token.authorization(),
                            "Accept": "application/json",
                        },
                    ) as response:
                        status = response.status
                        raw = await response.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise network_error(
                    exc, doing=f"GET {path}", url=url, timeout_s=self._timeout_s
                ) from exc
            if status == 401 and attempt == 0:
                token = await self._tokens.refresh(token)
                continue
            return _result(path, status, raw)
        raise AuthenticationError(f"GET {path}: the session is refused even after a refresh")

    async def describe_global(self) -> list[dict[str, Any]]:
        body = await self.get("sobjects/")
        sobjects = body.get("sobjects") if isinstance(body, dict) else None
        if not isinstance(sobjects, list):
            raise ProtocolError("describe global lacks `sobjects`")
        return [s for s in sobjects if isinstance(s, dict)]

    async def describe(self, name: str) -> dict[str, Any]:
        body = await self.get(f"sobjects/{name}/describe")
        if not isinstance(body, dict):
            raise ProtocolError(f"describe of {name} is not an object")
        return body

    async def event_schema(self, name: str, payload_format: str = "EXPANDED") -> dict[str, Any]:
        body = await self.get(f"sobjects/{name}/eventSchema", {"payloadFormat": payload_format})
        if not isinstance(body, dict):
            raise ProtocolError(f"eventSchema of {name} is not an object")
        return body

    async def event_schema_by_id(
        self, schema_id: str, payload_format: str = "EXPANDED"
    ) -> dict[str, Any]:
        body = await self.get(f"event/eventSchema/{schema_id}", {"payloadFormat": payload_format})
        if not isinstance(body, dict):
            raise ProtocolError(f"eventSchema {schema_id} is not an object")
        return body

    async def limits(self) -> dict[str, Any]:
        """The org's limits (`limits/`): name -> `{"Max": n, "Remaining": n}`, as Salesforce
        sends them (`sfstream.salesforce.limits` reads the event allocations among them)."""
        body = await self.get("limits/")
        if not isinstance(body, dict):
            raise ProtocolError("the limits resource is not an object")
        return body

    async def query(self, soql: str, *, tooling: bool = False) -> list[dict[str, Any]]:
        """Every record of a SOQL query, following `nextRecordsUrl`."""
        records: list[dict[str, Any]] = []
        body = await self.get("tooling/query/" if tooling else "query/", {"q": soql})
        while True:
            if not isinstance(body, dict) or not isinstance(body.get("records"), list):
                raise ProtocolError("a query result lacks `records`")
            records.extend(r for r in body["records"] if isinstance(r, dict))
            next_url = body.get("nextRecordsUrl")
            if body.get("done", True) or not isinstance(next_url, str):
                return records
            body = await self.get(next_url)


def _result(path: str, status: int, raw: bytes) -> Any:
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        if status >= 500:
            raise TransportError(f"GET {path}: HTTP {status}") from exc
        raise ProtocolError(f"GET {path}: HTTP {status} with a body that is not JSON") from exc
    if status < 300:
        return body
    code, message = _error(body)
    text = f"GET {path}: HTTP {status} {code}: {message}"
    error: SfStreamError
    if status >= 500 or status == 429:
        error = TransportError(text)
    elif status == 404:
        error = NotFoundError(text, server_text=message)
    elif status == 401:
        error = AuthenticationError(text, server_text=message)
    else:
        error = TerminalError(text, server_text=message)
    raise error


def _error(body: Any) -> tuple[str, str]:
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return str(body[0].get("errorCode", "")), str(body[0].get("message", ""))
    if isinstance(body, dict):
        return str(body.get("errorCode", body.get("error", ""))), str(
            body.get("message", body.get("error_description", ""))
        )
    return "", ""
