"""OAuth 2.0 for Salesforce: the token exchange as a pure flow, and a caching provider.

The grant rules (`sfstream.auth.grants`) are imported with the package; the token exchange
(`sfstream.auth.oauth`, which needs aiohttp) on first use, so that the configuration can
check a login without loading the HTTP client.
"""

import typing

from sfstream import _lazy
from sfstream.auth.grants import (
    GRANT_REQUIREMENTS,
    GRANT_TYPES,
    CredentialField,
    GrantType,
    grant_needs_message,
    missing_for_grant,
    required_for_grant,
)

if typing.TYPE_CHECKING:
    from sfstream.auth.oauth import (
        AccessToken,
        OAuthCredentials,
        RefreshTokenRotated,
        TokenProvider,
        TokenRequest,
        TokenResponse,
        token_flow,
    )
else:
    __getattr__, __dir__ = _lazy.exports(
        __name__,
        dict.fromkeys(
            (
                "AccessToken",
                "OAuthCredentials",
                "RefreshTokenRotated",
                "TokenProvider",
                "TokenRequest",
                "TokenResponse",
                "token_flow",
            ),
            "sfstream.auth.oauth",
        ),
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
