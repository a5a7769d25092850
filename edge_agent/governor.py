"""The upload governor: one byte budget for everything the device sends upstream.

Every forwarding sink asks the governor before it writes a request to the network, with
the request's size on the wire (body plus headers). With no budget set the governor
admits everything at once. With a budget it is a token bucket of ``max_rate`` bytes per
second and ``burst`` bytes of allowance; a caller waits until its bytes fit. A request
larger than the burst is admitted when the bucket is full and leaves a debt that later
requests wait out, so the long-run rate still holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from edge_agent.token_bucket import TokenBucket


class UploadGovernor:
    def __init__(
        self,
        max_rate: float | None,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._bucket: TokenBucket | None = None
        self.admitted_bytes = 0
        self.configure(max_rate, burst)

    def configure(self, max_rate: float | None, burst: int) -> None:
        """Change the budget while running (e.g. on a configuration reload)."""
        with self._lock:
            if max_rate is None:
                self._bucket = None
            elif self._bucket is None:
                self._bucket = TokenBucket(max_rate, burst, clock=self._clock)
            else:
                self._bucket.set_rate(max_rate, burst)

    @property
    def max_rate(self) -> float | None:
        bucket = self._bucket
        return bucket.rate if bucket else None

    def acquire(self, size: int, stop: threading.Event) -> bool:
        """Wait until ``size`` bytes may go out; False if ``stop`` was set meanwhile."""
        while True:
            with self._lock:
                bucket = self._bucket
                wait = 0.0 if bucket is None else bucket.wait_time(size)
                if wait <= 0:
                    if bucket is not None:
                        bucket.take(size)
                    self.admitted_bytes += size
                    return True
            if stop.wait(min(wait, 0.5)):
                return False
