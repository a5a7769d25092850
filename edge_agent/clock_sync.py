"""Whether the system clock has been synchronized since boot.

A device without a real-time clock boots with the time of its last shutdown (or 1970)
until NTP sets it. Records and fragments captured meanwhile carry a wrong absolute time.
The agent cannot ask the kernel itself: ``adjtimex`` is outside the unit's system call
filter (``@system-service``), and calling it gets the process killed. It asks what is
allowed instead, in this order:

1. ``/run/systemd/timesync/synchronized``: systemd-timesyncd creates it once it has set
   the clock (the file ``systemd-time-wait-sync`` waits for);
2. ``timedatectl show --property=NTPSynchronized`` (timedated over D-Bus, which reads
   the kernel's state for us whatever NTP daemon runs: chrony, ntpd, timesyncd), at most
   every ``TIMEDATECTL_INTERVAL_S`` while the answer is "no";
3. neither available: "unknown", and the clock is trusted.

Once synchronized, it is not asked again: the problem is the time before the first sync.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
#: How often a camera waiting for the clock looks again, seconds.
CLOCK_POLL_S = 0.5
#: Seconds between asks of timedated while the clock is not synchronized.
TIMEDATECTL_INTERVAL_S = 5.0
TIMEDATECTL_TIMEOUT_S = 3.0

#: Added to a record's meta object (``{"topic": ...}`` becomes ``{"topic": ..., "clock":
#: "unsynchronized"}``): its capture time came from a clock not yet synchronized.
UNSYNCHRONIZED_MARK = ', "clock": "unsynchronized"}'

ClockState = Literal["synchronized", "unsynchronized", "unknown"]


def ask_timedated() -> bool | None:
    """timedated's NTPSynchronized, or None if it cannot be asked."""
    command = shutil.which("timedatectl")
    if command is None:
        return None
    try:
        result = subprocess.run(
            [command, "show", "--property=NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=TIMEDATECTL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    answer = result.stdout.strip()
    if result.returncode != 0 or answer not in ("yes", "no"):
        return None
    return answer == "yes"


class ClockSync:
    """The clock's state as last checked; ``check()`` is cheap once synchronized."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        flag: Path = TIMESYNCD_FLAG,
        timedated: Callable[[], bool | None] = ask_timedated,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._flag = flag
        self._timedated = timedated
        self._clock = clock
        self._next_ask = 0.0
        self.enabled = enabled
        self.state: ClockState = "unknown"
        #: Epoch seconds of the last change of state.
        self.since = time.time()
        #: Records and fragments marked as captured on an unsynchronized clock.
        self.marked = 0
        self.check()

    @property
    def synchronized(self) -> bool:
        """False only while the clock is known not to be synchronized yet."""
        return self.state != "unsynchronized"

    def check(self) -> ClockState:
        if self.state == "synchronized" or not self.enabled:
            return self.state
        if self._flag.exists():
            return self._set("synchronized")
        now = self._clock()
        if now < self._next_ask:
            return self.state
        self._next_ask = now + TIMEDATECTL_INTERVAL_S
        answer = self._timedated()
        if answer is None:
            # No timedated: only timesyncd's flag tells, and only where timesyncd runs.
            timesyncd = self._flag.parent.is_dir()
            return self._set("unsynchronized" if timesyncd else "unknown")
        return self._set("synchronized" if answer else "unsynchronized")

    def set_enabled(self, enabled: bool) -> None:
        """Switch the check on or off (a reload): off trusts the clock from now on."""
        self.enabled = enabled
        if not enabled:
            self._set("unknown")

    def mark(self, meta: str, count: int = 1) -> str:
        """``meta`` (a record's JSON object) marked while the clock is unsynchronized."""
        if self.state != "unsynchronized":
            return meta
        self.marked += count
        return meta[:-1] + UNSYNCHRONIZED_MARK

    def _set(self, state: ClockState) -> ClockState:
        if state != self.state:
            previous, self.state, self.since = self.state, state, time.time()
            if state == "unsynchronized":
                log.warning(
                    "the system clock is not synchronized yet: records are marked "
                    '"clock": "unsynchronized" and cameras wait for it (agent.clock_wait)'
                )
            elif state == "synchronized" and previous == "unsynchronized":
                log.info("the system clock is synchronized now")
        return state


class ClockGate:
    """What a camera asks of the clock: to wait for it at start (up to ``wait_s``; the
    agent's main loop checks it), and to mark the fragments captured before it."""

    def __init__(self, sync: ClockSync, wait_s: float) -> None:
        self.sync = sync
        self.wait_s = wait_s

    def hold(self, camera: str, stop: threading.Event, waiting: Callable[[str, str], None]) -> None:
        """Return once the clock is synchronized, ``wait_s`` passed, or ``stop`` is set;
        ``waiting(state, reason)`` is told while it waits."""
        sync = self.sync
        if sync.synchronized or self.wait_s <= 0:
            return
        waiting("waiting for the clock", "the system clock is not synchronized yet")
        deadline = time.monotonic() + self.wait_s
        while not sync.synchronized and time.monotonic() < deadline:
            if stop.wait(CLOCK_POLL_S):
                return
        if not sync.synchronized:
            log.warning(
                "camera %s: the clock is still not synchronized after %.0fs: capturing, its "
                "fragments marked as captured on an unsynchronized clock",
                camera,
                self.wait_s,
            )

    def mark(self, meta: str) -> str:
        return self.sync.mark(meta)


#: A camera outside an agent: no wait, no marks.
UNCHECKED = ClockGate(ClockSync(enabled=False), 0.0)
