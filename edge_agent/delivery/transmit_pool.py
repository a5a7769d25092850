"""The transmit pool: threads that put requests on the wire while the forwarder packs the next.

    forwarder thread:  lease, pack k+1 ............ land k (settle) -> launch k+1
    pool thread:       transmit k (wait for the service) ............ transmit k+1

With two threads, request k+1 is on the wire (serialized, signed, queued at the
service) before the answer to k is back, so the service never waits for the agent.
Only ``transmit`` (the client call; boto3 clients are thread-safe) runs here; everything
that changes state happens when the forwarder lands the answer. Daemon threads, so a
request hanging on a dead network never keeps the process from exiting.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from edge_agent.sinks.base import Request


class TransmitPool:
    def __init__(self, transmit: Callable[[Request], Any], name: str, *, threads: int) -> None:
        self._transmit = transmit
        self._requests: queue.Queue[tuple[Request, Future[Any]] | None] = queue.Queue(threads)
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def alive(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def launch(self, request: Request) -> Future[Any]:
        """Start transmitting; the future holds the answer or the SinkError."""
        future: Future[Any] = Future()
        self._requests.put((request, future))
        return future

    def close(self, timeout: float) -> None:
        for _ in self._threads:
            self._requests.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _run(self) -> None:
        while (item := self._requests.get()) is not None:
            _transmit(self._transmit, *item)
            del item  # not held while waiting for the next


def _transmit(transmit: Callable[[Request], Any], request: Request, future: Future[Any]) -> None:
    """Transmit ``request``; its answer, or the SinkError, goes to ``future``."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(transmit(request))
    except BaseException as err:  # handed to the forwarder, which decides
        future.set_exception(err)
        # The traceback holds this frame: holding the future too, the two would keep
        # each other (and the request) alive until Python's cycle collector came by.
        del future
