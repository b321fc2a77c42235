"""Exponential backoff with full jitter, bounded, reset after success: the one retry policy.

Delay before attempt n (n = 1, 2, ...) is uniform in [0, min(cap, base * 2**(n-1))]: the
"full jitter" schedule, which spreads reconnecting clients best. Every retry the streaming
client makes once it runs draws its delay here (reconnects, re-handshakes, re-authentications
and the token refreshes they need, resent subscribes), so none of them can run at a fixed pace.

Some refusals ask for a longer wait than the schedule's first steps (Salesforce's concurrent
client limit frees up only when another client leaves): `floor_s` then raises the lower
bound and the ceiling with it, so the delays stay jittered instead of all equal to the floor.
No delay ever exceeds the cap.
"""

from __future__ import annotations

import random

import msgspec


def ceiling_s(base_s: float, cap_s: float, attempt: int, floor_s: float = 0.0) -> float:
    """The largest delay of the `attempt`-th consecutive failure (1 is the first)."""
    ceiling: float = min(cap_s, base_s * 2.0 ** min(max(attempt, 1) - 1, 32))
    if floor_s > 0:
        ceiling = min(cap_s, max(ceiling, 2 * floor_s))
    return ceiling


def jittered_s(
    rng: random.Random, base_s: float, cap_s: float, attempt: int, floor_s: float = 0.0
) -> float:
    """A delay for the `attempt`-th consecutive failure: uniform up to its ceiling."""
    ceiling = ceiling_s(base_s, cap_s, attempt, floor_s)
    low = 0.0
    if floor_s > 0:
        # Above the cap the floor gives way: the cap is the one promise that always holds.
        low = floor_s if floor_s <= ceiling else ceiling / 2
    return rng.uniform(low, ceiling)


class Backoff(msgspec.Struct):
    """Delays for consecutive failures.

    Args:
        base_s: the ceiling of the first delay.
        cap_s: the largest ceiling.
        rng: the jitter source (seed it for reproducible tests).
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    rng: random.Random = msgspec.field(default_factory=random.Random)
    failures: int = 0

    def __post_init__(self) -> None:
        if not self.base_s > 0 or not self.cap_s >= self.base_s:
            raise ValueError(
                f"backoff needs 0 < base <= cap, got base {self.base_s} s, cap {self.cap_s} s"
            )

    def next_delay(self, *, floor_s: float = 0.0) -> float:
        """Count a failure and return how long to wait before the next attempt."""
        self.failures += 1
        return jittered_s(self.rng, self.base_s, self.cap_s, self.failures, floor_s)

    def delay_for(self, attempt: int) -> float:
        """A delay for the `attempt`-th retry of something counted elsewhere (no state)."""
        return jittered_s(self.rng, self.base_s, self.cap_s, attempt)

    def reset(self, failures: int = 0) -> None:
        """Forget the failures (a success), or all but `failures` of them."""
        self.failures = failures
