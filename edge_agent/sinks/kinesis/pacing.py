"""Per-shard pacing: stay under a shard's write limits instead of provoking throttling.

Each shard gets two token buckets (records/s and bytes/s) that together never allow more
than the limit in any one-second window, however it is measured: they refill at 90% of
the limit and hold at most 10% of it, so burst plus refill within a second stay under
the limit (a lone record larger than the burst waits for a full bucket and leaves a
debt). The limits are the shard limits by default. A shard is sent to once half its
burst is back, so a busy shard gets fewer, fuller requests instead of one per token.

When the service throttles a shard anyway (other writers share it, or the limits were
set too high), that shard's rate is cut by 30% (down to 10% of the limit) and grows
back by 10% of the limit per calm second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from edge_agent.delivery.token_bucket import TokenBucket

#: Share of the limit that may go out at once; the rest is the steady refill rate.
BURST_SHARE = 0.1
MIN_FACTOR = 0.1
CUT = 0.7
RECOVERY_PER_S = 0.1


class ShardPacer:
    def __init__(
        self,
        records_per_s: float,
        bytes_per_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = (records_per_s, bytes_per_s)
        self._clock = clock
        self.factor = 1.0
        self.throttled = 0
        self._last_change = clock()
        self._last_cut = float("-inf")
        self.records = TokenBucket(*_rate_and_burst(records_per_s), clock=clock)
        self.bytes = TokenBucket(*_rate_and_burst(bytes_per_s), clock=clock)

    def ready(self, records: float = math.inf, size: float = math.inf) -> bool:
        """Worth a request: half the burst is there, or all that is waiting for this
        shard (``records``, ``size``). Sending whenever a single token has come back
        would mean one tiny request per record on a busy shard."""
        return self.records.available >= min(
            self.records.capacity / 2, records
        ) and self.bytes.available >= min(self.bytes.capacity / 2, size)

    def wait_until_ready(self, records: float = math.inf, size: float = math.inf) -> float:
        return max(
            self.records.wait_time(min(self.records.capacity / 2, records)),
            self.bytes.wait_time(min(self.bytes.capacity / 2, size)),
        )

    def take(self, records: int, size: int) -> None:
        self.records.take(records)
        self.bytes.take(size)

    def wait_time(self, records: int, size: int) -> float:
        return max(self.records.wait_time(records), self.bytes.wait_time(size))

    def on_throttled(self) -> None:
        self.throttled += 1
        now = self._clock()
        if now - self._last_cut < 0.2:  # one cut per burst of failures
            return
        self._last_cut = now
        self._set_factor(max(MIN_FACTOR, self.factor * CUT), now)

    def recover(self) -> None:
        if self.factor >= 1.0:
            return
        now = self._clock()
        calm = now - self._last_change
        if calm >= 1.0:
            self._set_factor(min(1.0, self.factor + RECOVERY_PER_S * calm), now)

    def _set_factor(self, factor: float, now: float) -> None:
        self.factor = factor
        self._last_change = now
        records, size = self._limits
        self.records.set_rate(*_rate_and_burst(records * factor))
        self.bytes.set_rate(*_rate_and_burst(size * factor))


def _rate_and_burst(limit: float) -> tuple[float, float]:
    return limit * (1 - BURST_SHARE), max(1.0, limit * BURST_SHARE)


class PaceBudget:
    """What one shard's pace allows while one request is packed: read once, counted
    down locally per record, taken from the buckets once at the end (``commit``)."""

    __slots__ = (
        "bytes",
        "bytes_cap",
        "pacer",
        "records",
        "records_cap",
        "used_bytes",
        "used_records",
    )

    def __init__(self, pacer: ShardPacer) -> None:
        self.pacer = pacer
        self.records = pacer.records.available
        self.bytes = pacer.bytes.available
        self.records_cap = pacer.records.capacity
        self.bytes_cap = pacer.bytes.capacity
        self.used_records = 0
        self.used_bytes = 0

    def allows(self, records: int, size: int) -> bool:
        """Enough tokens for this much (a record larger than a full bucket needs a full
        bucket, and leaves a debt)."""
        return self.records >= min(records, self.records_cap) and self.bytes >= min(
            size, self.bytes_cap
        )

    def use(self, records: int, size: int) -> None:
        self.records -= records
        self.bytes -= size
        self.used_records += records
        self.used_bytes += size

    def commit(self) -> None:
        if self.used_records or self.used_bytes:
            self.pacer.take(self.used_records, self.used_bytes)
