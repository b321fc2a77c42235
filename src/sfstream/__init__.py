"""sfstream: Salesforce Streaming API (CometD) connector with a bundled Salesforce emulator."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sfstream")
except PackageNotFoundError:  # pragma: no cover - only when run from a bare source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
