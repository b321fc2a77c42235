"""OAuth 2.0 against Salesforce's token endpoint.

The exchange is written once, as a generator (`token_flow`) that yields the request to send
and receives the response, like httpx's `Auth.auth_flow`: it is tested without a network and
driven over aiohttp by `TokenProvider`. The provider caches the access token and refreshes it
only when told the token is stale; concurrent callers share one refresh.

When refresh token rotation is on for the connected app, each refresh_token grant answers
with a new refresh token and invalidates the one sent: the provider switches to the new one
for every later refresh and hands it to `on_refresh_token_rotated`, which stores it where the
next start will read it (`sfstream.runners.wiring`).

Secrets stay in `SecretStr` until the moment they go into the request body; no `repr`,
message or log line carries them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import aiohttp
import msgspec
import orjson
import structlog
from pydantic import SecretStr

from sfstream.auth.grants import GrantType, grant_needs_message, missing_for_grant
from sfstream.errors import (
    AuthenticationError,
    ConfigError,
    ProtocolError,
    SfStreamError,
    TransportError,
)
from sfstream.netfail import network_error

log = structlog.get_logger("sfstream.auth")

RefreshTokenRotated = Callable[[SecretStr], Awaitable[None]]
"""Called with the new refresh token after Salesforce rotated it (the old one is dead)."""


class OAuthCredentials(msgspec.Struct, frozen=True):
    """What the token endpoint needs for one grant type.

    Attributes:
        login_url: `https://login.salesforce.com`, `https://test.salesforce.com` or the org's
            My Domain URL (required for client_credentials).
    """

    login_url: str
    client_id: str
    client_secret: SecretStr | None = None
    grant_type: GrantType = "refresh_token"
    refresh_token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None

    def __post_init__(self) -> None:
        if not self.login_url.startswith(("https://", "http://")):
            raise ConfigError(f"login URL {self.login_url!r} must start with https://")
        try:
            missing = missing_for_grant(
                self.grant_type,
                {
                    "client_secret": self.client_secret,
                    "refresh_token": self.refresh_token,
                    "username": self.username,
                    "password": self.password,
                },
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if missing:
            raise ConfigError(grant_needs_message(self.grant_type, missing))


class TokenRequest(msgspec.Struct, frozen=True):
    """A POST to the token endpoint; `repr` hides the form values."""

    url: str
    form: dict[str, str]

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(url={self.url!r})"


class TokenResponse(msgspec.Struct, frozen=True):
    """The token endpoint's answer; `repr` leaves out the body (it holds the token)."""

    status: int
    body: bytes

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(status={self.status!r})"


class AccessToken(msgspec.Struct, frozen=True):
    """A Salesforce session: the token and the instance it is valid for.

    `repr`, equality and the hash leave out `refresh_token`.
    """

    value: SecretStr
    instance_url: str
    token_type: str = "Bearer"  # noqa: S105 - a scheme name, not a secret
    issued_at_ms: int | None = None
    identity_url: str | None = None
    refresh_token: SecretStr | None = None
    """The refresh token the response carried, if any: with refresh token rotation on,
    Salesforce sends a new one with every refresh_token grant."""

    def _compared(self) -> tuple[object, ...]:
        return (
            self.value,
            self.instance_url,
            self.token_type,
            self.issued_at_ms,
            self.identity_url,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccessToken) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._compared() == other._compared()

    def __hash__(self) -> int:
        return hash(self._compared())

    def __repr__(self) -> str:
        return (
            f"{type(self).__qualname__}(value={self.value!r}, instance_url={self.instance_url!r}, "
            f"token_type={self.token_type!r}, issued_at_ms={self.issued_at_ms!r}, "
            f"identity_url={self.identity_url!r})"
        )

    def authorization(self) -> str:
        """The `Authorization` header value."""
        return f"{self.token_type or 'Bearer'} {self.value.get_secret_value()}"


_REAUTHORIZE = (
    "Re-authorize the connected app (or ask an admin to unblock it) and store the new "
    "refresh token in the secrets store."
)


def _refused(error: str, description: str, creds: OAuthCredentials) -> AuthenticationError:
    if error == "invalid_grant" and creds.grant_type == "refresh_token":
        return AuthenticationError(
            f"Salesforce refused the refresh token ({error}: {description}). {_REAUTHORIZE}"
        )
    if error == "invalid_grant":
        return AuthenticationError(
            f"Salesforce refused the {creds.grant_type} grant ({error}: {description}); check "
            "the username, password and the user's status."
        )
    if error in ("invalid_client", "invalid_client_id"):
        return AuthenticationError(
            f"Salesforce refused the connected app ({error}: {description}); check the "
            "consumer key and secret."
        )
    return AuthenticationError(f"Salesforce refused the token request ({error}: {description})")


def token_flow(creds: OAuthCredentials) -> Generator[TokenRequest, TokenResponse, AccessToken]:
    """One token exchange: yields the request, receives the response, returns the token.

    Raises:
        AuthenticationError: the credentials are refused (terminal).
        TransportError: 5xx or 429 (retryable).
        ProtocolError: the endpoint answered something that is not a token response.
    """
    form: dict[str, str] = {"grant_type": creds.grant_type, "client_id": creds.client_id}
    if creds.client_secret is not None:
        form["client_secret"] = creds.client_secret.get_secret_value()
    if creds.grant_type == "refresh_token" and creds.refresh_token is not None:
        form["refresh_token"] = creds.refresh_token.get_secret_value()
    if creds.grant_type == "password" and creds.username and creds.password is not None:
        form["username"] = creds.username
        form["password"] = creds.password.get_secret_value()
    url = creds.login_url.rstrip("/") + "/services/oauth2/token"
    response = yield TokenRequest(url, form)
    return parse_token_response(response, creds)


def parse_token_response(response: TokenResponse, creds: OAuthCredentials) -> AccessToken:
    """Turn a token endpoint response into an `AccessToken` or a classified error."""
    status = response.status
    if status >= 500 or status == 429:
        raise TransportError(f"the token endpoint answered HTTP {status}; will retry")
    try:
        body: Any = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ProtocolError(f"the token endpoint answered HTTP {status} without a JSON object")
    if status != 200:
        error = str(body.get("error", f"http_{status}"))
        description = str(body.get("error_description", ""))
        raise _refused(error, description, creds)
    token = body.get("access_token")
    instance_url = body.get("instance_url")
    if not isinstance(token, str) or not isinstance(instance_url, str):
        raise ProtocolError("the token response lacks access_token or instance_url")
    issued = body.get("issued_at")
    refresh = body.get("refresh_token")
    return AccessToken(
        value=SecretStr(token),
        instance_url=instance_url.rstrip("/"),
        token_type=str(body.get("token_type") or "Bearer"),
        issued_at_ms=int(issued) if isinstance(issued, str) and issued.isdigit() else None,
        identity_url=body.get("id") if isinstance(body.get("id"), str) else None,
        refresh_token=SecretStr(refresh) if isinstance(refresh, str) and refresh else None,
    )


class TokenProvider:
    """Caches the access token and refreshes it when a caller reports it stale.

    Args:
        credentials: the grant to use.
        http: the aiohttp session to send token requests with.
        timeout_s: per token request, and for `on_refresh_token_rotated`.
        on_refresh_token_rotated: awaited with the new refresh token each time Salesforce
            rotates it, before the refresh returns; it should store the token where the next
            start reads it. It failing (or taking longer than `timeout_s`) does not fail the
            refresh: the provider logs a warning, counts it in `rotation_callback_failures`
            and goes on with the new token in memory.
    """

    def __init__(
        self,
        credentials: OAuthCredentials,
        http: aiohttp.ClientSession,
        timeout_s: float = 30.0,
        proxy: str | None = None,
        *,
        on_refresh_token_rotated: RefreshTokenRotated | None = None,
    ) -> None:
        self.credentials = credentials
        """The grant in use; its refresh token is replaced when Salesforce rotates it."""
        self._http = http
        self._timeout_s = timeout_s
        self._proxy = proxy
        self._on_rotated = on_refresh_token_rotated
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()
        self.refreshes = 0
        """Token requests sent (the first one included)."""
        self.rotations = 0
        """New refresh tokens received (refresh token rotation)."""
        self.rotation_callback_failures = 0
        """Times `on_refresh_token_rotated` raised or timed out."""

    async def token(self) -> AccessToken:
        """The cached token, fetching one if there is none yet."""
        token = self._token
        if token is not None:
            return token
        return await self.refresh(None)

    async def refresh(self, stale: AccessToken | None) -> AccessToken:
        """A new token, unless the cached one already differs from `stale`.

        Concurrent callers that report the same stale token share one request. When the
        response carries a new refresh token, it is used from then on and reported to
        `on_refresh_token_rotated` (in the order Salesforce issued them).
        """
        async with self._lock:
            current = self._token
            if current is not None and current is not stale:
                return current
            token = await self._run(token_flow(self.credentials))
            self._token = token
            rotated = self._rotated(token)
            if rotated is not None:
                self.credentials = msgspec.structs.replace(self.credentials, refresh_token=rotated)
                self.rotations += 1
                log.info("refresh_token_rotated", rotations=self.rotations)
                await self._report_rotation(rotated)
            return token

    def _rotated(self, token: AccessToken) -> SecretStr | None:
        """The new refresh token `token` came with, if Salesforce rotated the one sent."""
        new = token.refresh_token
        used = self.credentials.refresh_token
        if self.credentials.grant_type != "refresh_token" or new is None or used is None:
            return None
        if new.get_secret_value() == used.get_secret_value():
            return None
        return new

    async def _report_rotation(self, new: SecretStr) -> None:
        if self._on_rotated is None:
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._on_rotated(new)
        except Exception as exc:  # noqa: BLE001 - the refresh itself succeeded
            self.rotation_callback_failures += 1
            # Only sfstream's own messages are known to carry no secret value.
            reason = str(exc) if isinstance(exc, SfStreamError) else type(exc).__name__
            log.warning(
                "refresh_token_rotation_not_saved",
                error=reason,
                failures=self.rotation_callback_failures,
                note="the new refresh token is in use in memory; a restart would use the old "
                "one, which Salesforce has invalidated",
            )

    async def _run(self, flow: Generator[TokenRequest, TokenResponse, AccessToken]) -> AccessToken:
        request = next(flow)
        self.refreshes += 1
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._http.post(
                    request.url, data=request.form, proxy=self._proxy
                ) as http_response:
                    response = TokenResponse(http_response.status, await http_response.read())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise network_error(
                exc,
                doing=f"token request to {request.url}",
                url=request.url,
                timeout_s=self._timeout_s,
            ) from exc
        try:
            flow.send(response)
        except StopIteration as done:
            token: AccessToken = done.value
            return token
        raise ProtocolError("the token flow asked for a second request")

    def __repr__(self) -> str:
        return (
            f"TokenProvider(login_url={self.credentials.login_url!r}, "
            f"grant_type={self.credentials.grant_type!r})"
        )
