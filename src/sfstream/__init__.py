"""sfstream: Salesforce Streaming API (CometD) connector with a bundled Salesforce emulator."""

__version__ = "0.1.0"
"""The one place the version is written (pyproject.toml reads it from here)."""

__all__ = ["__version__"]
