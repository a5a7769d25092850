"""Frame times for Kinesis Video: absolute (ms since the Unix epoch) and strictly
increasing, across frames, fragments, reconnects and restarts, whatever the clocks do.

A camera's own timestamps (pts) are steady but start anywhere and restart with every
connection; the wall clock is absolute but may step (NTP, a dead RTC battery). So a
stream is anchored to the wall clock once, when its first frame arrives, and its frames
then follow their pts. A new connection re-anchors. Whatever comes out is at least one
ms after the previous frame: a frame that would not be (the wall clock stepped back,
a camera repeated a pts) is moved forward and counted. A restart carries on from the
last time the spool holds (``resume_after``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction


class FrameClock:
    def __init__(
        self, *, resume_after_ms: int = 0, wall_ms: Callable[[], int] | None = None
    ) -> None:
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._last_ms = resume_after_ms
        self._anchor: tuple[int, float] | None = None  # (wall ms, pts in seconds)
        self.repaired = 0  # frames moved forward to keep time increasing

    @property
    def last_ms(self) -> int:
        return self._last_ms

    def reanchor(self) -> None:
        """A new connection: its pts start afresh; the next frame anchors again."""
        self._anchor = None

    def time_ms(self, pts: int | None, time_base: Fraction | None) -> int:
        """The frame's absolute time; a frame without pts takes the wall clock."""
        seconds = float(pts * time_base) if pts is not None and time_base is not None else None
        if seconds is None:
            at = self._wall_ms()
        else:
            if self._anchor is None:
                self._anchor = (self._wall_ms(), seconds)
            wall, first = self._anchor
            at = wall + round((seconds - first) * 1000)
        if at <= self._last_ms:
            self.repaired += 1
            at = self._last_ms + 1
        self._last_ms = at
        return at
