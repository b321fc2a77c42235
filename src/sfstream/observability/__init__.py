"""Logs, metrics and traces."""

from sfstream.observability.logging import RedactSecrets, configure_logging

__all__ = ["RedactSecrets", "configure_logging"]
