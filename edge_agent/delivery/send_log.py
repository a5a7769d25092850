"""What an uploader sent lately: the rates status shows, and a per-second limit's count.

Appended to by the uploader's thread, read by the status writer's: a lock keeps the
reader from meeting the deque mid-change.
"""

from __future__ import annotations

import collections
import threading

#: Rates in status are averaged over this many seconds.
RATE_WINDOW_S = 10.0


class SendLog:
    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._sends: collections.deque[tuple[float, int, int]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, at: float, records: int, size: int) -> None:
        """``records`` records of ``size`` bytes went out at ``at`` (monotonic seconds)."""
        with self._lock:
            self._sends.append((at, records, size))
            self._forget(at)

    def rates(self, now: float) -> tuple[float, float]:
        """Records and bytes per second over the window."""
        with self._lock:
            self._forget(now)
            records = sum(send[1] for send in self._sends)
            size = sum(send[2] for send in self._sends)
        return round(records / self.window_s, 1), round(size / self.window_s, 1)

    def times_after(self, since: float) -> list[float]:
        """When each send after ``since`` went out, oldest first."""
        with self._lock:
            return [send[0] for send in self._sends if send[0] > since]

    def _forget(self, now: float) -> None:
        horizon = now - self.window_s
        sends = self._sends
        while sends and sends[0][0] < horizon:
            sends.popleft()
