"""The upload budget: one byte budget for everything the device sends upstream
(``[uplink]``), shared by the sinks by priority, with per-sink caps and time-of-day
schedules. One word for one idea: the device's *budget* (``UploadBudget``), a sink's
*share* of it (``BudgetShare``, configured by ``ShareConfig``), and what a sink holds
and asks (``Budget``; ``SinkBudget`` with a live-first sink's backlog part).

Every uploader asks before it writes to the network, with the size on the wire
(request body plus headers; a PutMedia stream in slices as it is written). It asks its
own share (``UploadBudget.share``):

    share:  schedule (local time)  ->  pause: wait for the window to end (a live-first
                                              video sink's backlog: BacklogHeld)
                                       cap:   the window's rate applies
            own cap (max_rate)     ->  a token bucket of the sink's own
    shared: the device budget      ->  one token bucket (max_rate, burst); a caller
                                       waits while a caller of a higher priority (a
                                       smaller number) waits for it

With no budget the shared step admits at once. A request larger than the burst is
admitted when the bucket is full and leaves a debt that later requests wait out, so the
long-run rate still holds. Budgets, priorities, caps and schedules can all change while
running (a configuration reload).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from edge_agent.config.budget import ScheduleWindow, ShareConfig
from edge_agent.delivery.token_bucket import TokenBucket
from edge_agent.errors import EdgeAgentError
from edge_agent.runtime_status import ShareSnapshot

#: The longest a waiting caller sleeps before it looks at its stop event again.
MAX_SLEEP_S = 0.2
#: What status says a sink's schedule does right now, by window action.
SCHEDULE_STATUS = {"pause": "paused", "cap": "capped", "allow": ""}
#: A share's own bucket: how much may go out at once above its cap.
SHARE_BURST_S = 0.25


class Budget(Protocol):
    """What a sink holds: ask before writing ``size`` bytes; False if stopping."""

    def acquire(self, size: int, stop: threading.Event) -> bool: ...

    def rate_limit(self) -> float | None:
        """The tightest rate (bytes/s) that applies to these uploads now; None if none
        does. A streaming writer sizes its metered slices by it."""
        ...


class SinkBudget(Budget, Protocol):
    """What a live-first video sink holds: the budget for live fragments (``acquire``)
    and for its backlog sessions, which a schedule may govern on their own."""

    def backlog(self) -> Budget: ...

    def backlog_held(self) -> str:
        """Why the backlog may not go now ("" if it may)."""
        ...


class BacklogHeld(EdgeAgentError):
    """A schedule window pauses the backlog: the sink ends its backlog session and goes
    back to live video; the backlog goes when the window ends (not a failure: see the
    tree in ``errors``)."""

    retryable = True


class UploadBudget:
    def __init__(
        self,
        max_rate: float | None,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        local_time: Callable[[], time.struct_time] = time.localtime,
    ) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._clock = clock
        self._local_time = local_time
        self._bucket: TokenBucket | None = None
        self._waiting: Counter[int] = Counter()  # priority -> callers waiting for the budget
        self._shares: dict[str, BudgetShare] = {}
        self.admitted_bytes = 0
        self.configure(max_rate, burst)

    def configure(self, max_rate: float | None, burst: int) -> None:
        """Change the budget while running (e.g. on a configuration reload)."""
        with self._cond:
            if max_rate is None:
                self._bucket = None
            elif self._bucket is None:
                self._bucket = TokenBucket(max_rate, burst, clock=self._clock)
            else:
                self._bucket.set_rate(max_rate, burst)
            self._cond.notify_all()

    @property
    def max_rate(self) -> float | None:
        bucket = self._bucket
        return bucket.rate if bucket else None

    def rate_limit(self) -> float | None:
        return self.max_rate

    def share(self, name: str, config: ShareConfig) -> BudgetShare:
        """The budget as sink ``name`` sees it (the same share again for the same name,
        reconfigured)."""
        share = self._shares.get(name)
        if share is None:
            share = self._shares[name] = BudgetShare(self, name, config)
        else:
            share.configure(config)
        return share

    def share_snapshot(self, name: str) -> ShareSnapshot | None:
        share = self._shares.get(name)
        return share.snapshot() if share is not None else None

    def acquire(self, size: int, stop: threading.Event) -> bool:
        """Wait for the shared budget only, at the highest priority (tests, tools)."""
        return self._take_shared(size, stop, priority=0)

    def backlog(self) -> Budget:
        return self

    def backlog_held(self) -> str:
        return ""

    def _take_shared(self, size: int, stop: threading.Event, *, priority: int) -> bool:
        with self._cond:
            self._waiting[priority] += 1
            try:
                while True:
                    ahead = any(n for p, n in self._waiting.items() if p < priority)
                    bucket = self._bucket
                    wait = MAX_SLEEP_S if ahead else 0.0
                    if not ahead and bucket is not None:
                        wait = bucket.wait_time(size)
                    if wait <= 0:
                        if bucket is not None:
                            bucket.take(size)
                        self.admitted_bytes += size
                        return True
                    if stop.is_set():
                        return False  # it would have to wait: give up, the agent stops
                    self._cond.wait(min(wait, MAX_SLEEP_S))
            finally:
                self._waiting[priority] -= 1
                self._cond.notify_all()


class BudgetShare:
    """One sink's view of the budget: its priority, cap and schedule, then the shared
    bucket. Status reads ``snapshot``."""

    def __init__(self, budget: UploadBudget, name: str, share: ShareConfig) -> None:
        self.name = name
        self._budget = budget
        self._lock = threading.Lock()
        self._bucket: TokenBucket | None = None
        self.share = share
        self.admitted_bytes = 0
        self.configure(share)

    def configure(self, share: ShareConfig) -> None:
        with self._lock:
            self.share = share

    def acquire(self, size: int, stop: threading.Event, *, backlog: bool = False) -> bool:
        """Wait for the schedule, this sink's cap and the shared budget. ``backlog``: the
        bytes are a live-first sink's backlog (BacklogHeld when a window pauses it)."""
        if not self._own_turn(size, stop, backlog):
            return False
        if not self._budget._take_shared(size, stop, priority=self.share.priority):
            return False
        self.admitted_bytes += size
        return True

    def backlog(self) -> Budget:
        return _BacklogBudget(self)

    def rate_limit(self, *, backlog: bool = False) -> float | None:
        limits = (self._cap(self._window(backlog=backlog)), self._budget.max_rate)
        return min((limit for limit in limits if limit), default=None)

    def _cap(self, window: ScheduleWindow | None) -> float | None:
        """This sink's own limit: the tighter of its max_rate and a capping window's."""
        capped = window.max_rate if window is not None and window.action == "cap" else None
        return min((c for c in (self.share.max_rate, capped) if c), default=None)

    def backlog_held(self) -> str:
        window = self._window(backlog=True)
        return _doing(window) if window is not None and window.action == "pause" else ""

    def _window(self, *, backlog: bool) -> ScheduleWindow | None:
        """The schedule window in force now for live (all) or backlog traffic."""
        schedule = self.share.schedule
        if not schedule:
            return None  # no schedule: the local time is not even read
        if not backlog:
            schedule = tuple(w for w in schedule if w.traffic == "all")
        return active_window(schedule, self._budget._local_time())

    def _own_turn(self, size: int, stop: threading.Event, backlog: bool) -> bool:
        """Wait out a scheduled pause, then this sink's cap (the tighter of its own
        max_rate and a capping window's)."""
        while True:
            window = self._window(backlog=backlog)
            if window is not None and window.action == "pause":
                if backlog:
                    raise BacklogHeld(_doing(window))
                if stop.wait(1.0):
                    return False
                continue
            cap = self._cap(window)
            if cap is None:
                return True
            with self._lock:
                bucket = self._bucket
                if bucket is None:
                    bucket = self._bucket = TokenBucket(
                        cap, max(cap * SHARE_BURST_S, 1024), clock=self._budget._clock
                    )
                elif bucket.rate != cap:
                    bucket.set_rate(cap, max(cap * SHARE_BURST_S, 1024))
                wait = bucket.wait_time(size)
                if wait <= 0:
                    bucket.take(size)
                    return True
            if stop.wait(min(wait, MAX_SLEEP_S)):
                return False

    def snapshot(self) -> ShareSnapshot:
        """What status shows: priority, cap, and what the schedule does right now (to
        all of the sink's uploads, and to a live-first sink's backlog if that differs)."""
        live = self._window(backlog=False)
        backlog = self._window(backlog=True)
        scheduled = _doing(live)
        if backlog is not live and _doing(backlog):
            scheduled = ", ".join(filter(None, (scheduled, "backlog " + _doing(backlog))))
        return {
            "priority": self.share.priority,
            "max_rate": self.share.max_rate,
            "scheduled": scheduled,
            "paused": live is not None and live.action == "pause",
            "admitted_bytes": self.admitted_bytes,
        }


class _BacklogBudget:
    """A share as a live-first sink's backlog sessions use it."""

    def __init__(self, share: BudgetShare) -> None:
        self._share = share

    def acquire(self, size: int, stop: threading.Event) -> bool:
        return self._share.acquire(size, stop, backlog=True)

    def rate_limit(self) -> float | None:
        return self._share.rate_limit(backlog=True)


def _doing(window: ScheduleWindow | None) -> str:
    """What a window does, for status and logs ("" for none, or one that allows)."""
    if window is None or not SCHEDULE_STATUS[window.action]:
        return ""
    return f"{SCHEDULE_STATUS[window.action]} by the schedule until {window.end}"


def active_window(
    schedule: tuple[ScheduleWindow, ...], now: time.struct_time
) -> ScheduleWindow | None:
    """The first window of ``schedule`` that ``now`` (local time) falls in, if any. A
    window that ends before it starts runs past midnight; its days are the days it
    starts on."""
    minute = now.tm_hour * 60 + now.tm_min
    today, yesterday = now.tm_wday, (now.tm_wday - 1) % 7
    for window in schedule:
        start, end = window.start_minute, window.end_minute
        if start < end:
            inside = start <= minute < end and today in window.days
        else:
            inside = (minute >= start and today in window.days) or (
                minute < end and yesterday in window.days
            )
        if inside:
            return window
    return None
