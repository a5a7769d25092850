"""A component that does its work in one daemon thread of its own."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.runtime_status import LinkFields

log = logging.getLogger(__name__)


class ThreadWorker:
    _thread: threading.Thread | None = None
    #: The thread ended with an exception (reported; the worker is not healthy).
    failed = False

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException:
                self.failed = True
                log.exception("%s failed", name)
                raise

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        # Only once started: ``thread_ok`` checked by the main loop in between would see
        # a thread that is not alive (yet) and withhold the watchdog ping.
        self._thread = thread

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def thread_ok(self) -> bool:
        """Not failed, and alive once started."""
        return not self.failed and (self._thread is None or self._thread.is_alive())


@dataclass
class WorkerState:
    """What a worker is doing, why, and since when (for status)."""

    state: str = "starting"
    reason: str = ""
    since: float = field(default_factory=time.time)

    def set(self, state: str, reason: str = "", *, at: float | None = None) -> None:
        """Change state (``since`` moves only when state or reason change); ``at``: when,
        from the worker's own clock (default: now)."""
        if (state, reason) != (self.state, self.reason):
            self.state, self.reason = state, reason
            self.since = time.time() if at is None else at


@dataclass
class LinkState:
    """Whether a sink's endpoint can be reached, and since when (for status): down when
    a request fails for want of a connection or an answer (refused, DNS, timeout, TLS,
    5xx, throttling), up again with the next answer. A refusal (access denied, no such
    stream) is an answer: the link is up, the sink is paused."""

    online: bool | None = None  # None: nothing tried yet
    since: float | None = None

    def up(self) -> None:
        if self.online is not True:
            self.online, self.since = True, time.time()

    def down(self) -> None:
        if self.online is not False:
            self.online, self.since = False, time.time()

    def snapshot(self) -> LinkFields:
        return {"online": self.online, "link_since": self.since}
