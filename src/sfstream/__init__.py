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

Every `import sfstream.x` runs this module first, so it imports only the errors: the rest of
the surface is imported on first use (`from sfstream import Config` imports the
configuration, not the streaming client).
"""

import typing

from sfstream import _lazy
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

if typing.TYPE_CHECKING:
    from sfstream.auth import OAuthCredentials
    from sfstream.bayeux import Event, Gap, ReplayPolicy, SubscriptionLost
    from sfstream.client import ClientSettings, StreamingClient
    from sfstream.engine.config import Config, load_config
    from sfstream.sinks.base import Sink
    from sfstream.state.base import Checkpoint, StateStore
else:
    __getattr__, __dir__ = _lazy.exports(
        __name__,
        {
            "OAuthCredentials": "sfstream.auth",
            "Event": "sfstream.bayeux",
            "Gap": "sfstream.bayeux",
            "ReplayPolicy": "sfstream.bayeux",
            "SubscriptionLost": "sfstream.bayeux",
            "ClientSettings": "sfstream.client",
            "StreamingClient": "sfstream.client",
            "Config": "sfstream.engine.config",
            "load_config": "sfstream.engine.config",
            "Sink": "sfstream.sinks.base",
            "Checkpoint": "sfstream.state.base",
            "StateStore": "sfstream.state.base",
        },
    )

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
