"""Logs, metrics and traces, and the live status of a run on a terminal."""

from sfstream.observability.logging import RedactSecrets, configure_logging
from sfstream.observability.status import StatusDisplay, live_status, status_wanted

__all__ = ["RedactSecrets", "StatusDisplay", "configure_logging", "live_status", "status_wanted"]
