"""Emulator settings: timings, limits and the credentials it accepts.

Defaults are Salesforce's own numbers (110 s long poll, 40 s reconnect window, 72 h / 24 h
retention, 32,768-byte requests). Tests shrink the timings; nothing else needs changing.
Credentials can be set with flags or `SFSTREAM_EMULATOR_*` environment variables; the
defaults are public, documented, and only good against the emulator.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_CLIENT_ID: Final = "sfstream-emulator-client-id"
DEFAULT_CLIENT_SECRET: Final = "sfstream-emulator-client-secret"  # noqa: S105 - documented
DEFAULT_REFRESH_TOKEN: Final = "sfstream-emulator-refresh-token"  # noqa: S105 - documented
DEFAULT_USERNAME: Final = "integration@sfstream.example"
DEFAULT_PASSWORD: Final = "sfstream-emulator-password"  # noqa: S105 - documented
API_VERSIONS: Final = tuple(f"{v}.0" for v in range(20, 66))
"""REST versions served, `20.0` to `65.0` (Winter '11 to Winter '26)."""


class EmulatorSettings(BaseModel):
    """Everything that shapes one emulator instance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "localhost"
    port: int = Field(default=0, ge=0, le=65535)
    """0 picks a free port."""
    public_url: str | None = None
    """The URL clients reach the emulator by, when it differs from `http://host:port`."""

    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    refresh_token: str = DEFAULT_REFRESH_TOKEN
    username: str = DEFAULT_USERNAME
    password: str = DEFAULT_PASSWORD
    access_token_ttl_s: float = Field(default=7200.0, gt=0)
    rotate_refresh_tokens: bool = False
    require_client_secret: bool = True
    jwt_certificate: str | None = None
    """The connected app's X.509 certificate (PEM text): the jwt-bearer grant is accepted for
    assertions signed with its key. None: every assertion is refused (`invalid assertion`)."""

    poll_timeout_s: float = Field(default=110.0, gt=0)
    """How long `/meta/connect` is held when no event is waiting."""
    reconnect_gap_s: float = Field(default=40.0, gt=0)
    """A client silent for longer after a response is forgotten (`403::Unknown client`)."""
    max_request_bytes: int = Field(default=32768, gt=0)
    max_batch_events: int = Field(default=2000, ge=1)
    """Most events in one `/meta/connect` response."""
    max_batch_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Most event bytes in one `/meta/connect` response (at least one event is sent)."""
    min_cometd_version: float = 37.0

    retention_cdc_hours: float = Field(default=72.0, gt=0)
    retention_platform_event_hours: float = Field(default=72.0, gt=0)
    retention_push_topic_hours: float = Field(default=24.0, gt=0)
    retention_generic_hours: float = Field(default=24.0, gt=0)

    daily_delivery_allocation: int | None = Field(default=None, ge=0)
    """Change and platform events delivered per 24 h across CometD clients; None: no limit."""
    daily_streaming_allocation: int | None = Field(default=None, ge=0)
    """PushTopic and generic events delivered per 24 h; None: no limit."""
    concurrent_clients: int = Field(default=2000, ge=1)
    overflow_threshold: int = Field(default=100_000, ge=1)
    """Changes one transaction may make before the rest become one `GAP_OVERFLOW` change
    event per entity (Salesforce: 100,000; a create, delete or undelete counts one, an update
    one per changed field)."""

    seed: int | None = None
    """Makes replay-id sequences reproducible."""
    api_version: str = "62.0"

    @field_validator("jwt_certificate")
    @classmethod
    def _a_certificate(cls, value: str | None) -> str | None:
        return None if value is None else check_certificate(value)


def check_certificate(pem: str) -> str:
    """`pem` if it is a PEM X.509 certificate.

    Raises:
        ValueError: it is not (the message never quotes it), or cryptography is missing.
    """
    try:
        from cryptography.x509 import load_pem_x509_certificate
    except ImportError:
        raise ValueError(
            "a JWT certificate needs cryptography: pip install 'sfstream[jwt]'"
        ) from None
    try:
        load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise ValueError(
            "jwt_certificate is not a PEM certificate ('-----BEGIN CERTIFICATE-----' ...)"
        ) from None
    return pem
