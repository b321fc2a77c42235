"""sfstream: Salesforce Streaming API (CometD) connector.

The public surface, for programs that use sfstream as a library:

- the streaming client: `StreamingClient`, `ClientSettings`, `OAuthCredentials`, and what
  iterating it yields (`Event`, `Gap`, `SubscriptionLost`) with `ReplayPolicy`;
- the configuration: `load_config` and `Config`;
- the ports a backend implements: `Sink` and `StateStore` (with `Checkpoint`); their
  conformance suites are in `sfstream.testing`;
- the errors: `SfStreamError` and its branches; every class says whether to retry
  (`sfstream.errors` has the whole tree).

Everything else is internal and may change. The Salesforce emulator is a separate package,
`sfstream_emulator`.
"""

from sfstream.auth import OAuthCredentials
from sfstream.bayeux import Event, Gap, ReplayPolicy, SubscriptionLost
from sfstream.client import ClientSettings, StreamingClient
from sfstream.engine.config import Config, load_config
from sfstream.errors import (
    AuthenticationError,
    ConfigError,
    InvalidReplayIdError,
    RetryableError,
    SfStreamError,
    StorageError,
    StorageUnavailableError,
    SubscriptionError,
    TerminalError,
    TransportError,
)
from sfstream.sinks.base import Sink
from sfstream.state.base import Checkpoint, StateStore

__version__ = "0.1.0"
"""The one place the version is written (pyproject.toml reads it from here)."""

__all__ = [
    "AuthenticationError",
    "Checkpoint",
    "ClientSettings",
    "Config",
    "ConfigError",
    "Event",
    "Gap",
    "InvalidReplayIdError",
    "OAuthCredentials",
    "ReplayPolicy",
    "RetryableError",
    "SfStreamError",
    "Sink",
    "StateStore",
    "StorageError",
    "StorageUnavailableError",
    "StreamingClient",
    "SubscriptionError",
    "SubscriptionLost",
    "TerminalError",
    "TransportError",
    "__version__",
    "load_config",
]
