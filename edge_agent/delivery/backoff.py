"""Retry delays: exponential backoff with full jitter.

``delay = uniform(0, min(cap, base * 2**attempt))`` spreads the retries of many devices
(and of many records) over the whole window instead of synchronising them into bursts,
which is what keeps a throttled stream from being hammered by a fleet coming back online.
"""

from __future__ import annotations

import random


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry)."""
    ceiling = min(cap, base * 2 ** min(attempt, 62))
    return (rng or random).uniform(0.0, ceiling)


class Backoff:
    """Consecutive failures of one thing (a sink's requests): the next delay to wait."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = full_jitter(self.failures, self.base, self.cap, self._rng)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
