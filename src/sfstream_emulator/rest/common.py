"""What every REST resource shares: the context it works on, bodies and Salesforce's errors.

Success bodies are JSON as the REST API documents them; errors are Salesforce's arrays
`[{"message", "errorCode", "fields"}]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from sfstream_emulator.records import RecordStore
from sfstream_emulator.runtime import OrgRuntime

NOT_FOUND_MESSAGE = "The requested resource does not exist"


@dataclass(slots=True)
class RestContext:
    """The org the REST resources serve, and the CometD figures `/limits` reports.

    Args:
        runtime: the org, its channels and allocations.
        store: the org's records.
        subscriber_count: how many CometD clients subscribe to a channel.
        client_count: how many CometD clients are connected.
    """

    runtime: OrgRuntime
    store: RecordStore
    subscriber_count: Callable[[str], int]
    client_count: Callable[[], int]
    requests: int = 0
    """REST requests served since the start (`DailyApiRequests`)."""


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        charset="UTF-8",
    )


def rest_error(
    status: int, error_code: str, message: str, fields: list[str] | None = None
) -> web.Response:
    entry: dict[str, Any] = {"message": message, "errorCode": error_code}
    if fields is not None:
        entry["fields"] = fields
    return json_response([entry], status)


def not_found() -> web.Response:
    return rest_error(404, "NOT_FOUND", NOT_FOUND_MESSAGE)


def invalid_type(name: str) -> web.Response:
    return rest_error(
        400,
        "INVALID_TYPE",
        f"sObject type '{name}' is not supported. If you are attempting to use a custom "
        "object, be sure to append the '__c' after the entity name. Please reference your "
        "WSDL or the describe call for the appropriate names.",
    )


def invalid_field(name: str, entity: str) -> web.Response:
    return rest_error(
        400,
        "INVALID_FIELD",
        f"No such column '{name}' on entity '{entity}'. If you are attempting to use a custom "
        "field, be sure to append the '__c' after the custom field name. Please reference "
        "your WSDL or the describe call for the appropriate names.",
    )


def change_origin(request: web.Request, api_version: str) -> str:
    """The `changeOrigin` of a write: the REST API version, and `;client=X` when named."""
    version = request.match_info.get("version", api_version)
    origin = f"com/salesforce/api/rest/{version}"
    options = request.headers.get("Sforce-Call-Options", "")
    for option in options.split(","):
        key, _, value = option.strip().partition("=")
        if key.strip().lower() == "client" and value.strip():
            return f"{origin};client={value.strip()}"
    return origin


async def json_body(request: web.Request) -> Any:
    """The parsed JSON body; a malformed one is refused with `JSON_PARSER_ERROR`."""
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # `text=`, not `body=`: aiohttp deprecates bodies on HTTP exceptions, and the
        # deprecation warning turned every malformed body into a 500.
        raise web.HTTPBadRequest(
            text=orjson.dumps(
                [
                    {
                        "message": f"Unexpected character in JSON body: {exc.msg}",
                        "errorCode": "JSON_PARSER_ERROR",
                    }
                ]
            ).decode(),
            content_type="application/json",
        ) from exc
