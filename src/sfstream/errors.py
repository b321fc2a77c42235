"""One exception tree; every class says whether to retry and how to recover.

```
SfStreamError                     retryable?  recovery
├── ConfigError                   no          NONE            caller mistake: bad config,
│   └── SecretError               no          NONE            missing or unreadable secret
├── RetryableError                yes
│   ├── TransportError            yes         RECONNECT       network failure, timeout
│   │   ├── ConnectStalledError   yes         RECONNECT       no connect round trip in time
│   │   ├── ServerError           yes         RECONNECT       HTTP 5xx
│   │   │   └── ServerBusyError   yes         RECONNECT       503 / "Server is too busy"
│   │   └── ThrottledError        yes         RECONNECT       HTTP 429
│   ├── UnknownClientError        yes         REHANDSHAKE     403::Unknown client
│   ├── ClientLimitError          yes         REHANDSHAKE     concurrent client limit
│   ├── AuthExpiredError          yes         REAUTHENTICATE  401::Authentication invalid
│   ├── MalformedEventError       yes         REHANDSHAKE     an event's envelope breaks the
│   │                                                         protocol (bad replayId)
│   ├── StreamSilentError         yes         REHANDSHAKE     a busy stream got nothing for
│   │                                                         its `max_silence_s`
│   └── StorageUnavailableError   yes         RECONNECT       state store or sink unreachable
└── TerminalError                 no
    ├── AuthenticationError       no          NONE            invalid_grant, bad client
    ├── SubscriptionError         no          NONE            a subscription was refused
    │   ├── InvalidReplayIdError  no          NONE            400 replayId invalid
    │   ├── ChannelNotFoundError  no          NONE            channel does not exist
    │   └── PermissionDeniedError no          NONE            403 restricted / no access
    ├── AllocationExceededError   no          NONE            daily event limit spent
    ├── AllSubscriptionsLostError no          NONE            every subscription refused or lost
    ├── ProtocolError             no          NONE            a reply we cannot understand
    ├── StorageError              no          NONE            state store or sink refused
    ├── EncodingError             no          NONE            an event the sink cannot encode
    └── StartupTimeoutError       no          NONE            start-up retried past its limit
```

`classify()` maps a Bayeux error string (`"403::Unknown client"`) to its class through one
table; an unknown code gets a safe default (4xx terminal, anything else retryable). Errors
carry the channel and replayId they concern, when known, and the server's text.
"""

from __future__ import annotations

import re
from enum import IntEnum, StrEnum
from typing import ClassVar, Final


class Recovery(StrEnum):
    """What the client does about an error."""

    NONE = "none"
    RECONNECT = "reconnect"
    REHANDSHAKE = "rehandshake"
    REAUTHENTICATE = "reauthenticate"


class SfStreamError(Exception):
    """Root of every sfstream error.

    Attributes:
        retryable: whether trying again can succeed without anyone changing anything.
        recovery: what the client does to recover.
        channel: the channel concerned, if any.
        replay_id: the replayId concerned, if any.
        server_text: the server's error string, verbatim, if it came from the server.
    """

    retryable: ClassVar[bool] = False
    recovery: ClassVar[Recovery] = Recovery.NONE

    def __init__(
        self,
        message: str,
        *,
        channel: str | None = None,
        replay_id: int | None = None,
        server_text: str | None = None,
    ) -> None:
        super().__init__(message)
        self.channel = channel
        self.replay_id = replay_id
        self.server_text = server_text

    def __str__(self) -> str:
        context = []
        if self.channel is not None:
            context.append(f"channel={self.channel}")
        if self.replay_id is not None:
            context.append(f"replay_id={self.replay_id}")
        base = super().__str__()
        return f"{base} ({', '.join(context)})" if context else base


class ConfigError(SfStreamError):
    """A mistake in configuration or arguments: fix the input and run again."""


class SecretError(ConfigError):
    """A secret is missing, unreadable, or stored unsafely."""


class RetryableError(SfStreamError):
    """Transient: the client recovers by itself."""

    retryable = True
    recovery = Recovery.RECONNECT


class TransportError(RetryableError):
    """The request failed on the network, timed out, or got a 5xx/429."""


class ConnectStalledError(TransportError):
    """No reply to `/meta/connect` within the advised timeout plus the network margin (a
    half-open connection behind a NAT, a wedged proxy): the session is abandoned and
    started over."""


class ServerError(TransportError):
    """The server answered with an HTTP 5xx status."""


class ServerBusyError(ServerError):
    """Salesforce asked us to come back later (503 "Server is too busy")."""


class ThrottledError(TransportError):
    """The server answered HTTP 429 (too many requests)."""


class UnknownClientError(RetryableError):
    """The server forgot our clientId (`403::Unknown client`): handshake again."""

    recovery = Recovery.REHANDSHAKE


class ClientLimitError(RetryableError):
    """Too many concurrent streaming clients in the org; retry the handshake later."""

    recovery = Recovery.REHANDSHAKE


class AuthExpiredError(RetryableError):
    """The access token is no longer valid (`401::Authentication invalid`): refresh it."""

    recovery = Recovery.REAUTHENTICATE


class MalformedEventError(RetryableError):
    """An event whose envelope breaks the protocol: its `data.event.replayId` is missing on a
    channel with replay, not an integer, or outside 0..2**63-1.

    Nothing of it reaches the consumer; the client handshakes again and resubscribes from the
    last good replayId. The same failure again and again, with no progress in between, ends
    the subscription with a `ProtocolError`.

    Attributes:
        value_type: the JSON type of the offending value (`"str"`, `"float"`, `"missing"`, ...),
            never the value or the payload.
    """

    recovery = Recovery.REHANDSHAKE

    def __init__(
        self,
        message: str,
        *,
        channel: str | None = None,
        replay_id: int | None = None,
        value_type: str | None = None,
    ) -> None:
        super().__init__(message, channel=channel, replay_id=replay_id)
        self.value_type = value_type


class StreamSilentError(RetryableError):
    """A stream configured as busy (`max_silence_s`) received nothing for that long: the
    session starts over and resubscribes it."""

    recovery = Recovery.REHANDSHAKE


class StorageUnavailableError(RetryableError):
    """A state store or sink cannot be reached right now (connection refused, timeout)."""


class TerminalError(SfStreamError):
    """Retrying will not help; someone has to change something."""


class AuthenticationError(TerminalError):
    """The credentials are refused (for example `invalid_grant`): re-authorize the app."""


class SubscriptionError(TerminalError):
    """The server refused a subscription."""


class InvalidReplayIdError(SubscriptionError):
    """The replayId is unknown or outside the retention window."""


class ChannelNotFoundError(SubscriptionError):
    """The channel does not exist in this org."""


class PermissionDeniedError(SubscriptionError):
    """The integration user may not subscribe to this channel."""


class AllocationExceededError(TerminalError):
    """The org's daily event delivery allocation is spent.

    The streaming client normally waits for the allocation's reset, probing hourly
    (`ClientSettings.allocation_probe_s`), and resumes; this is raised, ending the stream,
    only when probing is off."""


class AllSubscriptionsLostError(TerminalError):
    """Every subscription of the client was refused or lost: nothing is left to stream.

    The client has sent `/meta/disconnect` (freeing one of the org's concurrent-client slots)
    and ends; each loss was reported first (`SubscriptionLost`).
    """


class ProtocolError(TerminalError):
    """The server sent something that is not valid Bayeux."""


class StorageError(TerminalError):
    """A state store or sink refused an operation (permissions, corruption, full disk)."""


class LeaseLostError(StorageError):
    """A write carried a fencing token that is no longer its stream's: another worker has
    owned the stream since (see `sfstream.state.base.LeaseStore`). Nothing was written.

    Terminal for those streams in this worker: it stops consuming them and does not retry;
    the new owner resumes from the stream's checkpoint.

    Attributes:
        streams: the streams whose token was stale.
    """

    def __init__(self, message: str, *, streams: list[str]) -> None:
        super().__init__(message)
        self.streams = streams


_CODE: Final = r"^\s*(\d{3})\s*:"
"""Compiled on first use (by `re`, which keeps it): only failures need it."""
# Exact or leading texts of Salesforce's Streaming API errors, most specific first.
_TABLE: Final[tuple[tuple[str, type[SfStreamError]], ...]] = (
    ("401::Authentication invalid", AuthExpiredError),
    ("401::Request requires authentication", AuthExpiredError),
    ("403::Unknown client", UnknownClientError),
    ("402::Unknown client", UnknownClientError),
    ("403::Organization concurrent user limit exceeded", ClientLimitError),
    ("403::Organization total events daily limit exceeded", AllocationExceededError),
    ("400::The replayId", InvalidReplayIdError),
    ("400::The channel you requested to subscribe to does not exist", ChannelNotFoundError),
    ("404::Unknown channel", ChannelNotFoundError),
    ("400::Channel name not specified", ChannelNotFoundError),
    ("400::Channel subscriptions must start with a leading '/'", ChannelNotFoundError),
    ("400::Query fields", ChannelNotFoundError),
    ("403::Restricted channel", PermissionDeniedError),
    ("403::User not", PermissionDeniedError),
    ("403::Subscriber does not have access", PermissionDeniedError),
    ("403::No access on channel", PermissionDeniedError),
    ("403::Cannot create channel", PermissionDeniedError),
    ("403:denied_by_security_policy", PermissionDeniedError),
    ("403::Subscription limit exceeded for this topic", PermissionDeniedError),
    ("503::", ServerBusyError),
)


def error_code(text: str) -> int | None:
    """The numeric code of a Bayeux error string (`"403::Unknown client"` -> 403)."""
    match = re.match(_CODE, text)
    return int(match.group(1)) if match else None


def classify(
    text: str, *, channel: str | None = None, replay_id: int | None = None
) -> SfStreamError:
    """The error a Bayeux error string stands for.

    Unknown texts get a safe default: a 4xx code is terminal (retrying the same request
    gives the same answer), anything else is retryable.
    """
    for prefix, error_class in _TABLE:
        if text.startswith(prefix):
            return error_class(text, channel=channel, replay_id=replay_id, server_text=text)
    code = error_code(text)
    if code is not None and 400 <= code < 500:
        return TerminalError(text, channel=channel, replay_id=replay_id, server_text=text)
    return TransportError(text, channel=channel, replay_id=replay_id, server_text=text)


class EncodingError(TerminalError):
    """An event cannot be written in the output format (for example, nested too deeply)."""


class StartupTimeoutError(TerminalError):
    """Start-up kept failing with retryable errors past `runtime.startup_timeout_s`."""


class ExitCode(IntEnum):
    """How every `sfstream` command and runner ends: the one table of exit codes."""

    OK = 0
    """Success, or stopped cleanly (SIGTERM/SIGINT, `--max-messages`)."""
    FAILURE = 1
    """A runtime failure: a terminal error, `check` found problems, a forced stop."""
    USAGE = 2
    """A usage or configuration error: fix the command line or the configuration."""
