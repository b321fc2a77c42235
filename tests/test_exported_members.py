"""The public surface of `sfstream` is exactly its `__all__`, kept sorted."""

from __future__ import annotations

import types

import sfstream


def test_all_is_sorted_and_complete() -> None:
    # `dir`, not `vars`: most of the surface is imported on first use (PEP 562), and `dir`
    # lists it before that.
    public = [
        name
        for name in dir(sfstream)
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(getattr(sfstream, name), types.ModuleType)
    ]
    # isort style, as ruff keeps it: constants, then classes, then the rest.
    kind = {True: 0, False: 1}
    assert sfstream.__all__ == sorted(
        public, key=lambda name: (kind[name.isupper()] + (not name[:1].isupper()), name)
    )


def test_the_surface_is_what_users_are_promised() -> None:
    assert set(sfstream.__all__) == {
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
        "Sink",
        "SfStreamError",
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
    }


def test_every_exported_error_says_whether_to_retry() -> None:
    for name in sfstream.__all__:
        value = getattr(sfstream, name)
        if isinstance(value, type) and issubclass(value, sfstream.SfStreamError):
            assert isinstance(value.retryable, bool), name


def test_the_connector_does_not_import_the_emulator() -> None:
    import subprocess
    import sys

    code = "import sys, sfstream, sfstream.cli; print('sfstream_emulator' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert done.stdout.strip() == b"False"
