"""OAuth 2.0 against Salesforce's token endpoint.

The exchange is written once, as a generator (`token_flow`) that yields the request to send
and receives the response, like httpx's `Auth.auth_flow`: it is tested without a network and
driven over aiohttp by `TokenProvider`. The provider caches the access token and refreshes it
only when told the token is stale; concurrent callers share one refresh.

When refresh token rotation is on for the connected app, each refresh_token grant answers
with a new refresh token and invalidates the one sent: the provider switches to the new one
for every later refresh and hands it to `on_refresh_token_rotated`, which stores it where the
next start will read it (`sfstream.runners.wiring`).

The jwt_bearer grant has no refresh token: each token request carries a new assertion, a
JWT signed (RS256) with the private key whose certificate the connected app holds, valid for
`JWT_LIFETIME_S`. PyJWT and cryptography (the `jwt` extra) are imported by the first such
request only.

Secrets stay in `SecretStr` until the moment they go into the request body; no `repr`,
message or log line carries them, nor the signed assertion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, Final

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

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

log = structlog.get_logger("sfstream.auth")

RefreshTokenRotated = Callable[[SecretStr], Awaitable[None]]
"""Called with the new refresh token after Salesforce rotated it (the old one is dead)."""

JWT_BEARER_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
"""The `grant_type` form value of the jwt_bearer grant (RFC 7523)."""
JWT_LIFETIME_S: Final = 180
"""How long an assertion is valid: Salesforce wants `exp` at most 3 minutes ahead."""
_JWT_EXTRA: Final = "the jwt_bearer grant needs PyJWT and cryptography: pip install 'sfstream[jwt]'"


class OAuthCredentials(msgspec.Struct, frozen=True):
    """What the token endpoint needs for one grant type.

    Attributes:
        login_url: `https://login.salesforce.com`, `https://test.salesforce.com` or the org's
            My Domain URL (required for client_credentials); for jwt_bearer, also the
            assertion's audience (`aud`).
        private_key: jwt_bearer: the PEM RSA private key whose certificate the connected app
            holds (line breaks may be written as `\\n`).
    """

    login_url: str
    client_id: str
    client_secret: SecretStr | None = None
    grant_type: GrantType = "refresh_token"
    refresh_token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    private_key: SecretStr | None = None

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
                    "private_key": self.private_key,
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


def _jwt_refused(error: str, description: str) -> AuthenticationError:
    """The refusal of an assertion, with what to change (Salesforce's descriptions)."""
    said = description.lower()
    if error in ("invalid_client", "invalid_client_id"):
        advice = (
            "Salesforce does not know the connected app; check salesforce.client_id (the "
            "consumer key of the app that holds the certificate)"
        )
    elif "assertion" in said or "signature" in said:
        advice = "the certificate of the connected app does not match salesforce.private_key"
    elif "approved" in said:
        advice = (
            "salesforce.username is not pre-authorized for the connected app; set its policy "
            "to 'Admin approved users are pre-authorized' and give the user's profile or a "
            "permission set access to it"
        )
    elif "audience" in said:
        advice = (
            "the audience is salesforce.login_url; use https://login.salesforce.com, "
            "https://test.salesforce.com (a sandbox) or the org's My Domain or site URL"
        )
    elif "expired" in said:
        advice = (
            "the assertion had expired when Salesforce read it; check that this machine's clock "
            "is right (NTP)"
        )
    else:
        advice = "check salesforce.client_id, salesforce.username and salesforce.private_key"
    return AuthenticationError(f"the JWT was refused: {advice} ({error}: {description})")


def _refused(error: str, description: str, creds: OAuthCredentials) -> AuthenticationError:
    if creds.grant_type == "jwt_bearer":
        return _jwt_refused(error, description)
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


def _signing_key(private_key: SecretStr) -> RSAPrivateKey:
    """The RSA key in `private_key` (PEM, PKCS#8 or PKCS#1, unencrypted).

    Raises:
        ConfigError: cryptography is missing, or the key is not a usable RSA key; the
            message never shows the key.
    """
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError:
        raise ConfigError(_JWT_EXTRA) from None
    pem = private_key.get_secret_value().strip()
    if "\\n" in pem and "\n" not in pem:
        pem = pem.replace("\\n", "\n")  # a one-line value (`NAME=value` file, env variable)
    # `from None` throughout: cryptography's own error is of no use to the reader, and
    # nothing derived from the key may reach a traceback.
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise ConfigError(
            "salesforce.private_key is encrypted; store it without a passphrase (the secrets "
            "store protects it)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(
            "salesforce.private_key is not a PEM private key: expected the text from "
            "'-----BEGIN PRIVATE KEY-----' (or '-----BEGIN RSA PRIVATE KEY-----') to the "
            "matching END line"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ConfigError(
            "salesforce.private_key is not an RSA key; Salesforce checks an RS256 signature "
            "against the connected app's certificate"
        )
    return key


def jwt_assertion(creds: OAuthCredentials, now: float) -> str:
    """The signed JWT of the jwt_bearer grant, valid `JWT_LIFETIME_S` from `now`.

    Claims as Salesforce reads them: `iss` the consumer key, `sub` the username, `aud` the
    login URL, `exp` in seconds since the epoch.

    Raises:
        ConfigError: PyJWT or cryptography is missing, or the private key is unusable.
    """
    try:
        import jwt
    except ImportError:
        raise ConfigError(_JWT_EXTRA) from None
    if creds.private_key is None or not creds.username:  # checked by __post_init__
        raise ConfigError(grant_needs_message("jwt_bearer", ("username", "private_key")))
    key = _signing_key(creds.private_key)
    claims = {
        "iss": creds.client_id,
        "sub": creds.username,
        "aud": creds.login_url.rstrip("/"),
        "exp": int(now) + JWT_LIFETIME_S,
    }
    return jwt.encode(claims, key, algorithm="RS256")


def token_flow(
    creds: OAuthCredentials, *, clock: Callable[[], float] = time.time
) -> Generator[TokenRequest, TokenResponse, AccessToken]:
    """One token exchange: yields the request, receives the response, returns the token.

    Args:
        creds: the grant.
        clock: seconds since the epoch, read once for the jwt_bearer assertion's `exp`.

    Raises:
        ConfigError: jwt_bearer only: the `jwt` extra is missing or the key is unusable.
        AuthenticationError: the credentials are refused (terminal).
        TransportError: 5xx or 429 (retryable).
        ProtocolError: the endpoint answered something that is not a token response.
    """
    url = creds.login_url.rstrip("/") + "/services/oauth2/token"
    if creds.grant_type == "jwt_bearer":
        # Only the assertion: it names the connected app (`iss`); no client secret is sent.
        assertion = jwt_assertion(creds, clock())
        response = yield TokenRequest(url, {"grant_type": JWT_BEARER_GRANT, "assertion": assertion})
        return parse_token_response(response, creds)
    form: dict[str, str] = {"grant_type": creds.grant_type, "client_id": creds.client_id}
    if creds.client_secret is not None:
        form["client_secret"] = creds.client_secret.get_secret_value()
    if creds.grant_type == "refresh_token" and creds.refresh_token is not None:
        form["refresh_token"] = creds.refresh_token.get_secret_value()
    if creds.grant_type == "password" and creds.username and creds.password is not None:
        form["username"] = creds.username
        form["password"] = creds.password.get_secret_value()
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
        clock: seconds since the epoch (the jwt_bearer assertion's expiry).
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = credentials
        """The grant in use; its refresh token is replaced when Salesforce rotates it."""
        self._http = http
        self._timeout_s = timeout_s
        self._proxy = proxy
        self._on_rotated = on_refresh_token_rotated
        self._clock = clock
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
            # jwt_bearer: a new assertion each time (there is no refresh token).
            token = await self._run(token_flow(self.credentials, clock=self._clock))
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
