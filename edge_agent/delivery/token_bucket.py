"""A token bucket: a rate with a burst allowance, for pacing without a timer thread.

Tokens refill continuously at ``rate`` per second up to ``capacity``. Callers ask how
many are available, take what they use, and ask how long until a given amount is there.
The clock is a parameter so that tests and simulations can drive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self,
        rate: float,
        capacity: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        full: bool = True,
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity if full else 0.0
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._at:
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    @property
    def available(self) -> float:
        self._refill()
        return self._tokens

    def take(self, amount: float) -> None:
        """Use ``amount`` tokens; the level may go negative (a debt paid by waiting)."""
        self._refill()
        self._tokens -= amount

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` tokens (at most the capacity) are available."""
        self._refill()
        missing = min(amount, self.capacity) - self._tokens
        return max(0.0, missing / self.rate)

    def set_rate(self, rate: float, capacity: float | None = None) -> None:
        self._refill()
        self.rate = rate
        if capacity is not None:
            self.capacity = capacity
            self._tokens = min(self._tokens, capacity)
