"""OAuth 2.0 as Salesforce's token endpoint speaks it.

`POST /services/oauth2/token` takes a form-encoded body with `grant_type` `refresh_token`,
`password`, `client_credentials` or `urn:ietf:params:oauth:grant-type:jwt-bearer`. The client
secret may be in the body or in HTTP Basic auth. A jwt-bearer request carries only its
`assertion`: a JWT signed RS256 with the key of the connected app's certificate
(`OAuthSettings.jwt_certificate`), checked as Salesforce checks it (see
`TokenService._check_assertion`); PyJWT and cryptography (the `jwt` extra) are imported by the
first such request.

Success is the JSON Salesforce returns (no `expires_in`: an access token lives as long as the
org's session timeout, here a setting). Failures are HTTP 400 with
`{"error", "error_description"}` using Salesforce's codes and texts.

An access token is its session: it lives `access_token_ttl_s` after issue, and each
`/meta/connect` made with it restarts that time (see `TokenService.keep_alive`). A token
that no client connects with expires; a revoked one stays revoked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sfstream_emulator.clock import Clock

SCOPE: Final = "refresh_token api id"
JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
STANDARD_AUDIENCES: Final = ("https://login.salesforce.com", "https://test.salesforce.com")
"""Audiences an assertion may name besides the emulator's own URL (its login URL)."""


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    """The connected app and user the emulator accepts."""

    client_id: str
    client_secret: str
    refresh_token: str
    username: str
    password: str
    access_token_ttl_s: float = 7200.0
    rotate_refresh_tokens: bool = False
    require_client_secret: bool = True
    jwt_certificate: str | None = None
    """PEM X.509 certificate of the connected app: jwt-bearer assertions must be signed with
    its key. None: the app has no certificate, and every assertion is refused."""


@dataclass(slots=True)
class AccessToken:
    value: str
    issued_at: float
    expires_at: float
    """When the session ends unless a CometD connect extends it."""
    client_id: str
    revoked: bool = False
    grant: str | None = None
    """The refresh-token grant it was issued from (None for the other grants)."""

    def valid(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at


class OAuthError(Exception):
    """A token request Salesforce refuses."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _unsupported() -> OAuthError:
    return OAuthError("unsupported_grant_type", "grant type not supported")


class TokenService:
    """Issues, checks and revokes tokens.

    Args:
        settings: the accepted client and user credentials.
        clock: emulated time (token expiry).
        org_id, user_id: who the tokens belong to.
        base_url: returns the emulator's public URL, for `instance_url` and `id`.
    """

    def __init__(
        self,
        settings: OAuthSettings,
        clock: Clock,
        org_id: str,
        user_id: str,
        base_url: Callable[[], str],
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.org_id = org_id
        self.user_id = user_id
        self._base_url = base_url
        self.refresh_tokens: dict[str, bool] = {settings.refresh_token: True}
        """Refresh token -> still valid."""
        self._grant_of: dict[str, str] = {settings.refresh_token: settings.refresh_token}
        """Refresh token -> the grant (first refresh token of a rotation chain) it belongs to."""
        self.access_tokens: dict[str, AccessToken] = {}
        self.grants_issued = 0

    # -- token endpoint ---------------------------------------------------------------------

    def grant(self, form: Mapping[str, str], authorization: str | None) -> dict[str, Any]:
        """Handle one token request; returns the success JSON.

        Raises:
            OAuthError: for every refusal, with Salesforce's error code and description.
        """
        grant_type = form.get("grant_type", "")
        if grant_type == JWT_BEARER:
            # The assertion names the app (`iss`); no client secret, and no refresh token.
            return self._issue(self._check_assertion(form.get("assertion", "")), None)
        if grant_type not in ("refresh_token", "password", "client_credentials"):
            raise _unsupported()
        client_id, client_secret = self._client_credentials(form, authorization)
        self._check_client(client_id, client_secret, grant_type)
        issue_refresh: str | None = None
        grant: str | None = None
        if grant_type == "refresh_token":
            token = form.get("refresh_token", "")
            if not self.refresh_tokens.get(token, False):
                raise OAuthError("invalid_grant", "expired access/refresh token")
            grant = self._grant_of.setdefault(token, token)
            if self.settings.rotate_refresh_tokens:
                self.refresh_tokens[token] = False
                issue_refresh = self.new_refresh_token()
                self._grant_of[issue_refresh] = grant
        elif grant_type == "password":
            if (
                form.get("username") != self.settings.username
                or form.get("password") != self.settings.password
            ):
                raise OAuthError("invalid_grant", "authentication failure")
            issue_refresh = None
        return self._issue(client_id, issue_refresh, grant)

    def _check_assertion(self, assertion: str) -> str:
        """The consumer key of a jwt-bearer assertion Salesforce would accept.

        In Salesforce's order and words: an unknown `iss` is `invalid_client_id`; a JWT that
        is malformed, not RS256 or not signed by the key of `jwt_certificate` is
        `invalid assertion`; an `aud` other than the login URL (or login/test.salesforce.com)
        `audience is invalid`; an `exp` missing or past (emulated time) `expired
        authorization code`; a `sub` other than the user `user hasn't approved this consumer`.
        """
        jwt, public_key = self._jwt_verifier()
        invalid = OAuthError("invalid_grant", "invalid assertion")
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise invalid from None
        if claims.get("iss") != self.settings.client_id:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        if header.get("alg") != "RS256" or public_key is None:
            raise invalid
        try:
            jwt.decode(
                assertion,
                public_key,
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_aud": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise invalid from None
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        accepted = (self._base_url().rstrip("/"), *STANDARD_AUDIENCES)
        if not any(isinstance(a, str) and a.rstrip("/") in accepted for a in audiences):
            raise OAuthError("invalid_grant", "audience is invalid")
        expiry = claims.get("exp")
        if not isinstance(expiry, int | float) or expiry <= self.clock.now():
            raise OAuthError("invalid_grant", "expired authorization code")
        if claims.get("sub") != self.settings.username:
            raise OAuthError("invalid_grant", "user hasn't approved this consumer")
        return self.settings.client_id

    def _jwt_verifier(self) -> tuple[Any, Any]:
        """PyJWT and the certificate's public key (None without a certificate)."""
        try:
            import jwt
            from cryptography.x509 import load_pem_x509_certificate
        except ImportError:
            raise OAuthError(
                "unsupported_grant_type",
                "the emulator needs PyJWT and cryptography for this grant: "
                "pip install 'sfstream[jwt]'",
            ) from None
        pem = self.settings.jwt_certificate
        if pem is None:
            return jwt, None
        return jwt, load_pem_x509_certificate(pem.encode()).public_key()

    def _client_credentials(
        self, form: Mapping[str, str], authorization: str | None
    ) -> tuple[str, str | None]:
        client_id = form.get("client_id")
        client_secret = form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise OAuthError("invalid_client", "invalid client credentials") from exc
            basic_id, _, basic_secret = decoded.partition(":")
            client_id = client_id or basic_id
            client_secret = client_secret or basic_secret
        if not client_id:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        return client_id, client_secret

    def _check_client(self, client_id: str, secret: str | None, grant_type: str) -> None:
        if client_id != self.settings.client_id:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        needs_secret = self.settings.require_client_secret or grant_type == "client_credentials"
        if secret is None and not needs_secret:
            return
        if secret is None or not hmac.compare_digest(secret, self.settings.client_secret):
            raise OAuthError("invalid_client", "invalid client credentials")

    def _issue(
        self, client_id: str, refresh_token: str | None, grant: str | None = None
    ) -> dict[str, Any]:
        now = self.clock.now()
        value = f"{self.org_id[:15]}!AQ{secrets.token_urlsafe(72)}"
        self.access_tokens[value] = AccessToken(
            value, now, now + self.settings.access_token_ttl_s, client_id, grant=grant
        )
        self.grants_issued += 1
        base = self._base_url()
        identity = f"{base}/id/{self.org_id}/{self.user_id}"
        issued_at = str(int(now * 1000))
        signature = base64.b64encode(
            hmac.new(
                self.settings.client_secret.encode(),
                (identity + issued_at).encode(),
                hashlib.sha256,
            ).digest()
        ).decode()
        body: dict[str, Any] = {
            "access_token": value,
            "signature": signature,
            "scope": SCOPE,
            "instance_url": base,
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        return body

    # -- checks and revocation --------------------------------------------------------------

    def new_refresh_token(self) -> str:
        token = f"5Aep{secrets.token_urlsafe(64)}"
        self.refresh_tokens[token] = True
        return token

    def check(self, authorization: str | None) -> AccessToken | None:
        """The live access token named by an `Authorization` header, or None.

        Accepts `Bearer <token>`, `OAuth <token>` and a bare token, as Salesforce does.
        """
        token = bearer_token(authorization)
        if token is None:
            return None
        found = self.access_tokens.get(token)
        if found is None or not found.valid(self.clock.now()):
            return None
        return found

    def revoke(self, token: str) -> bool:
        """Revoke one access or refresh token (`/services/oauth2/revoke`)."""
        if token in self.access_tokens:
            self.access_tokens[token].revoked = True
            return True
        if token in self.refresh_tokens:
            # Revoking a refresh token ends its grant: every refresh token of the rotation
            # chain and every access token issued from them. Other sessions stay valid.
            grant = self._grant_of.get(token, token)
            for other, other_grant in self._grant_of.items():
                if other_grant == grant:
                    self.refresh_tokens[other] = False
            self.refresh_tokens[token] = False
            for access in self.access_tokens.values():
                if access.grant == grant:
                    access.revoked = True
            return True
        return False

    def revoke_access_tokens(self) -> int:
        """Revoke every access token; refresh tokens stay valid. Returns how many."""
        count = 0
        for access in self.access_tokens.values():
            if not access.revoked:
                access.revoked = True
                count += 1
        return count

    def revoke_refresh_tokens(self) -> int:
        """Revoke every refresh token (and so every session). Returns how many."""
        count = sum(1 for valid in self.refresh_tokens.values() if valid)
        for token in self.refresh_tokens:
            self.refresh_tokens[token] = False
        self.revoke_access_tokens()
        return count

    def restore_refresh_token(self) -> None:
        """Make the configured refresh token valid again."""
        self.refresh_tokens[self.settings.refresh_token] = True

    def keep_alive(self, token: AccessToken) -> bool:
        """A CometD client is connected with `token`: its session lasts a full lifetime more.

        Salesforce never expires the session of a CometD client that stays connected: it
        keeps extending the timeout while the client is connected (Streaming API Developer
        Guide, "Handling Streaming API Errors"). A session nobody connects with still ends
        `access_token_ttl_s` after its last use, for REST calls and new handshakes alike.

        Returns:
            False for a revoked token: revocation ends a session however busy it is.
        """
        if token.revoked:
            return False
        renewed = self.clock.now() + self.settings.access_token_ttl_s
        token.expires_at = max(token.expires_at, renewed)
        return True


def bearer_token(authorization: str | None) -> str | None:
    """The token in an `Authorization` header (`Bearer x`, `OAuth x` or a bare `x`)."""
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if rest and scheme.lower() in ("bearer", "oauth"):
        return rest.strip() or None
    return authorization.strip() if not rest else None
