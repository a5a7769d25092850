"""Deleting what the service accepted, in a thread of its own.

The delete overlaps the next request: the forwarder hands over a batch and goes on. At
most ``BACKLOG`` batches wait, as record ids (not the records: their payloads are freed
at once); what waits when the process dies is sent again at the next start (restart is
replay), never lost.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from edge_agent.config.units import plural
from edge_agent.errors import SpoolError
from edge_agent.records import RECORD_ID, LeasedRecord
from edge_agent.spool.store import Spool

log = logging.getLogger(__name__)

#: Batches of accepted records that may wait for deletion while the next request goes.
BACKLOG = 2
#: A failing spool (full disk, busy) is tried again after this long.
RETRY_S = 1.0


class Deleter:
    def __init__(self, spool: Spool, name: str, on_error: Callable[[SpoolError], None]) -> None:
        self._spool = spool
        self._name = name
        self._on_error = on_error
        self._batches: queue.Queue[tuple[str, list[int]] | None] = queue.Queue(BACKLOG)
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        thread = threading.Thread(target=self._run, name=f"ack-{self._name}", daemon=True)
        thread.start()
        self._thread = thread  # only once started: ``alive`` never sees it unstarted

    @property
    def alive(self) -> bool:
        """Not started yet, or its thread is alive."""
        return self._thread is None or self._thread.is_alive()

    def put(self, batch: list[LeasedRecord]) -> None:
        """Delete these records of one queue (waits while ``BACKLOG`` batches are waiting)."""
        if batch:
            self._batches.put((batch[0].queue, list(map(RECORD_ID, batch))))

    def close(self, timeout: float) -> None:
        """Delete what waits (a failing spool is tried until ``timeout``), then end."""
        if self._thread is None:
            return
        self._batches.put(None)
        self._thread.join(timeout)
        self._closed.set()

    def _run(self) -> None:
        """A failing spool is retried until it works or the deleter is closed (then the
        leases clear at the next open: re-sent)."""
        failures = 0  # in a row: the first is reported, the end of the episode logged
        while (batch := self._batches.get()) is not None:
            queue_name, ids = batch
            while True:
                try:
                    self._spool.ack_ids(queue_name, ids)
                    if failures:
                        log.info(
                            "sink %s: deleting delivered records works again (%s failed)",
                            self._name,
                            plural(failures, "attempt"),
                        )
                        failures = 0
                    break
                except SpoolError as err:
                    if not failures:
                        self._on_error(err)
                    failures += 1
                    if self._closed.wait(RETRY_S):
                        break
                except Exception:
                    log.exception("sink %s: deleting delivered records failed", self._name)
                    break
