"""A component that does its work in one daemon thread of its own."""

from __future__ import annotations

import threading
from collections.abc import Callable


class ThreadWorker:
    _thread: threading.Thread | None = None

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
