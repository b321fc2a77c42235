"""Exponential backoff with full jitter, bounded, reset after success.

Delay before attempt n (n = 1, 2, ...) is uniform in [0, min(cap, base * 2**(n-1))]: the
"full jitter" schedule, which spreads reconnecting clients best.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays for consecutive failures.

    Args:
        base_s: the ceiling of the first delay.
        cap_s: the largest ceiling.
        rng: the jitter source (seed it for reproducible tests).
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        """Count a failure and return how long to wait before the next attempt."""
        self.failures += 1
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.failures - 1, 32))
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.failures = 0
