"""The emulator's clock.

Everything that Salesforce measures in wall-clock time (event retention, access-token
lifetime, the 40-second reconnect window, allocation periods, commit timestamps) reads this
clock, so tests can move time forward by hours in an instant. Held long polls wait in real
time: the poll timeout is a setting, not a clock reading.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Clock:
    """Wall-clock time plus an offset that only moves forward.

    Args:
        source: where real time comes from (seconds since the epoch).
        frozen_at: when given, time stands still at this instant except when advanced.
    """

    def __init__(
        self, source: Callable[[], float] = time.time, frozen_at: float | None = None
    ) -> None:
        self._source = source
        self._frozen_at = frozen_at
        self._offset = 0.0

    def now(self) -> float:
        """Current emulated time in seconds since the epoch."""
        base = self._frozen_at if self._frozen_at is not None else self._source()
        return base + self._offset

    def now_ms(self) -> int:
        """Current emulated time in whole milliseconds since the epoch."""
        return int(self.now() * 1000)

    @property
    def offset_s(self) -> float:
        """How far the clock has been advanced beyond its source, in seconds."""
        return self._offset

    def advance(self, seconds: float) -> float:
        """Move time forward by `seconds` and return the new time."""
        if seconds < 0:
            raise ValueError("the emulator clock only moves forward")
        self._offset += seconds
        return self.now()
