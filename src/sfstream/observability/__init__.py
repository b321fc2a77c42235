"""Logs, metrics and traces, and the live status of a run on a terminal.

The live status (`sfstream.observability.status`) is imported on first use: only a run on a
terminal shows it.
"""

import typing

from sfstream import _lazy
from sfstream.observability.logging import RedactSecrets, configure_logging

if typing.TYPE_CHECKING:
    from sfstream.observability.status import StatusDisplay, live_status, status_wanted
else:
    __getattr__, __dir__ = _lazy.exports(
        __name__,
        dict.fromkeys(
            ("StatusDisplay", "live_status", "status_wanted"), "sfstream.observability.status"
        ),
    )

__all__ = ["RedactSecrets", "StatusDisplay", "configure_logging", "live_status", "status_wanted"]
