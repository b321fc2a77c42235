"""OAuth 2.0 for Salesforce: the token exchange as a pure flow, and a caching provider."""

from sfstream.auth.grants import (
    GRANT_REQUIREMENTS,
    GRANT_TYPES,
    CredentialField,
    GrantType,
    grant_needs_message,
    missing_for_grant,
    required_for_grant,
)
from sfstream.auth.oauth import (
    AccessToken,
    OAuthCredentials,
    RefreshTokenRotated,
    TokenProvider,
    TokenRequest,
    TokenResponse,
    token_flow,
)

__all__ = [
    "GRANT_REQUIREMENTS",
    "GRANT_TYPES",
    "AccessToken",
    "CredentialField",
    "GrantType",
    "OAuthCredentials",
    "RefreshTokenRotated",
    "TokenProvider",
    "TokenRequest",
    "TokenResponse",
    "grant_needs_message",
    "missing_for_grant",
    "required_for_grant",
    "token_flow",
]
