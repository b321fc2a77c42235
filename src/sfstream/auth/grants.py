"""Which OAuth grant needs which credential: the rule, written once.

`OAuthCredentials`, the `salesforce` section of the configuration and `sfstream tail` all check
a login against `GRANT_REQUIREMENTS`, through `missing_for_grant` and `grant_needs_message`.
The names are the attribute names of `OAuthCredentials` and the field names of the
configuration's `salesforce` section.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, get_args

from pydantic import SecretStr

GrantType = Literal["refresh_token", "password", "client_credentials", "jwt_bearer"]
CredentialField = Literal["client_secret", "refresh_token", "username", "password", "private_key"]

GRANT_TYPES: Final[tuple[GrantType, ...]] = get_args(GrantType)
"""Every grant type sfstream can log in with."""

GRANT_REQUIREMENTS: Final[Mapping[GrantType, tuple[CredentialField, ...]]] = MappingProxyType(
    {
        "refresh_token": ("refresh_token",),
        "password": ("username", "password"),
        "client_credentials": ("client_secret",),
        "jwt_bearer": ("username", "private_key"),
    }
)
"""Grant type -> the credentials it cannot do without. The client id is always needed; the
client secret is needed by `client_credentials` and sent with the others when there is one
(the connected app decides whether it is required)."""


def required_for_grant(grant_type: str) -> tuple[CredentialField, ...]:
    """The credentials `grant_type` needs.

    Raises:
        ValueError: `grant_type` is not one of `GRANT_TYPES`.
    """
    try:
        return GRANT_REQUIREMENTS[grant_type]  # type: ignore[index]
    except KeyError:
        raise ValueError(
            f"unknown grant type {grant_type!r}: use one of {', '.join(GRANT_TYPES)}"
        ) from None


def _present(value: object) -> bool:
    if isinstance(value, SecretStr):
        return value.get_secret_value() != ""
    return value is not None and value != ""


def missing_for_grant(grant_type: str, values: Mapping[str, object]) -> tuple[CredentialField, ...]:
    """The credentials `grant_type` needs that `values` lacks (absent, None or empty).

    Args:
        grant_type: one of `GRANT_TYPES`.
        values: credential name -> value (`str`, `SecretStr` or None); only the names in
            `GRANT_REQUIREMENTS[grant_type]` are looked at, and no value is ever returned.

    Raises:
        ValueError: `grant_type` is not one of `GRANT_TYPES`.
    """
    return tuple(name for name in required_for_grant(grant_type) if not _present(values.get(name)))


def grant_needs_message(grant_type: str, missing: tuple[str, ...]) -> str:
    """`the password grant needs username and password`: the one wording of the rule."""
    return f"the {grant_type} grant needs {' and '.join(missing)}"
