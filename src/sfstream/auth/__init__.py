"""OAuth 2.0 for Salesforce: the token exchange as a pure flow, and a caching provider."""

from sfstream.auth.oauth import (
    AccessToken,
    OAuthCredentials,
    TokenProvider,
    TokenRequest,
    TokenResponse,
    token_flow,
)

__all__ = [
    "AccessToken",
    "OAuthCredentials",
    "TokenProvider",
    "TokenRequest",
    "TokenResponse",
    "token_flow",
]
