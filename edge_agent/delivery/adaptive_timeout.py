"""Timeouts that adapt to a slow link: longer after a timeout, back down after answers.

A request that times out is usually not lost but slow: the service may well have taken
it, and its answer is still on the way. Sent again with the same timeout, it times out
again, and every copy is stored. Measured before this rule (a Kinesis sink, a 1 s
timeout, a delay line of 1.25 s each way): in 40 s the same 1,000 records went 37 times
and nothing else was delivered. Every sink follows one rule instead:

    a request times out       the timeout doubles (up to ``maximum``; requests that were
                              in flight together grow it once), and the sink probes:
                              its requests carry PROBE_ENTRIES entry each until one is
                              answered, so what a timeout sends again is small
    SHRINK_AFTER answers      the timeout comes down one step, if the slowest of them
                              took at most 1/HEADROOM of the lower step: a link that
                              stays slow keeps the timeout it needs

What a slow link costs stays bounded and counted: the requests on the wire when it
turned slow (and one packed before the news) time out whole, then only probes do; a
record goes at most once per step; ``timed_out_items`` counts what the timed-out
requests carried, each possibly stored: the duplicates, at most.

The timeout takes a few values only: ``base`` doubling up to ``maximum`` (the last step
is the maximum itself). A botocore client has one read timeout, so a record sink keeps
a client per step in use (sinks/aws.py); the steps keep those few.

Thread-safe: the transmit pool's threads report, the forwarder thread packs, the
status is read from the main thread.
"""

from __future__ import annotations

import threading

from edge_agent.runtime_status import TimeoutSnapshot

#: A timeout multiplies the timeout of the requests after it by this.
GROWTH = 2.0
#: Without a configured maximum: this many times the configured timeout...
DEFAULT_MAX_FACTOR = 8.0
#: ...but not more than this (a configured timeout that is longer stays as it is).
DEFAULT_MAX_S = 120.0
#: Answers in a row after which the timeout may come down one step.
SHRINK_AFTER = 20
#: The lower step must leave this much room over the slowest of those answers.
HEADROOM = 2.0
#: Entries in a request while probing (after a timeout, until an answer).
PROBE_ENTRIES = 1


def default_maximum(base: float) -> float:
    """The longest timeout when none is configured: 8 x ``base``, at most 2 minutes,
    never less than ``base``."""
    return max(base, min(base * DEFAULT_MAX_FACTOR, DEFAULT_MAX_S))


def steps(base: float, maximum: float) -> tuple[float, ...]:
    """The values a timeout takes: ``base`` doubling while below ``maximum``, then
    ``maximum``."""
    if not 0 < base <= maximum:
        raise ValueError(f"need 0 < base <= maximum, got {base} and {maximum}")
    values = [base]
    while values[-1] < maximum:
        values.append(min(values[-1] * GROWTH, maximum))
    return tuple(values)


class AdaptiveTimeout:
    """One sink's timeout: ``current`` for the next request; ``timed_out`` and
    ``answered`` after each."""

    def __init__(self, base: float, maximum: float | None = None) -> None:
        self.base = base
        self.maximum = default_maximum(base) if maximum is None else maximum
        self.steps = steps(base, self.maximum)
        self.timeouts = 0  # requests that timed out
        self.timed_out_items = 0  # what they carried (records, fragments)
        self.peak = base  # the longest timeout so far
        self._step = 0
        self._answers = 0  # answers since the last change
        self._slowest = 0.0  # the slowest of those, seconds
        self._probing = False
        self._lock = threading.Lock()

    @property
    def current(self) -> float:
        """The timeout of the next request, seconds."""
        return self.steps[self._step]

    @property
    def probing(self) -> bool:
        """A request timed out and none has been answered since."""
        return self._probing

    def max_entries(self, configured: int) -> int:
        """Entries the next request may carry: ``configured``, or PROBE_ENTRIES while
        probing."""
        return min(configured, PROBE_ENTRIES) if self._probing else configured

    def timed_out(self, used: float, items: int = 0) -> bool:
        """A request with timeout ``used`` carrying ``items`` got no answer in time.
        The timeout grows one step, unless it already did since that request went out
        (another request in flight with it timed out first). True if it grew."""
        with self._lock:
            self.timeouts += 1
            self.timed_out_items += items
            self._probing = True
            self._answers, self._slowest = 0, 0.0
            if used < self.steps[self._step] or self._step == len(self.steps) - 1:
                return False
            self._step += 1
            self.peak = max(self.peak, self.steps[self._step])
            return True

    def snapshot(self) -> TimeoutSnapshot:
        return {
            "current_s": self.current,
            "peak_s": self.peak,
            "timeouts": self.timeouts,
            "timed_out_items": self.timed_out_items,
        }

    def answered(self, elapsed: float) -> bool:
        """A request got an answer (of any kind) after ``elapsed`` seconds. True if
        the timeout came down a step."""
        with self._lock:
            self._probing = False
            self._answers += 1
            self._slowest = max(self._slowest, elapsed)
            if self._answers < SHRINK_AFTER:
                return False
            lower = self.steps[self._step - 1] if self._step else None
            self._answers, slowest, self._slowest = 0, self._slowest, 0.0
            if lower is None or slowest * HEADROOM > lower:
                return False
            self._step -= 1
            return True
