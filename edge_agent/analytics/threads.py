"""The analytics threads: one per query (a large window never holds up a continuous
filter), started, watched and stopped together by the agent. Each runs its query's
passes (engine.py): for windows chosen by readings (filters, count and session windows,
sliding on each change) when readings came, at most every BATCH_S; for time windows
when a window is to be drafted or closes, and at least every PASS_S.

The threads run at a lower CPU priority than the rest of the agent (NICENESS): when
the device's cores are busy, intake (which the broker's redelivery depends on) goes
first, and a window's rows come a little later. The queries' windows run one at a time
(a lock the queries share; a continuous filter's batches do not wait for it): windows
that close together, as a 1-minute and a 5-minute one do every five minutes, do not
halve each other's speed on a device with few cores, and the analytics take at most
one core from the rest."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping

from edge_agent.analytics.engine import PASS_S, Query
from edge_agent.analytics.sharing import SharedQueue
from edge_agent.config.analytics import AnalyticsConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.runtime_status import AnalyticsSnapshot
from edge_agent.spool.store import Spool
from edge_agent.worker import ThreadWorker

log = logging.getLogger(__name__)

#: Readings are gathered this long between passes of a query whose windows they choose
#: (a continuous filter): one pass and one commit per batch, not per intake commit.
BATCH_S = 0.25
#: How much nicer than the agent the query threads run (Linux: per thread).
NICENESS = 5


class QueryWorker(ThreadWorker):
    """The thread of one query: a slow query (a large window) never holds up another
    (a continuous filter)."""

    def __init__(
        self,
        config: AnalyticsConfig,
        spool: Spool,
        stop: threading.Event,
        shared: SharedQueue,
        turns: threading.Lock,
    ) -> None:
        self.config = config
        self.spool = spool
        self._stop = stop
        self._shared = shared
        self._turns = turns
        self.query: Query | None = None
        self._logged: set[str] = set()

    def start(self) -> None:
        self._start_thread(self.run, f"analytics-{self.config.name}")

    def run(self) -> None:
        # Windows chosen by readings go as readings come; time windows, by the clock.
        by_readings = self.config.window in ("none", "count", "session") or (
            self.config.window == "sliding" and not self.config.period_ms
        )
        lower_priority()
        try:
            while not self._stop.is_set():
                seen = self.spool.append_generation
                started = time.monotonic()
                self._pass()
                if by_readings:
                    self.spool.wait_for_append(seen, PASS_S)
                    self._stop.wait(max(0.0, started + BATCH_S - time.monotonic()))
                elif self.query is not None:
                    self._stop.wait(self.query.due_in_s(int(time.time() * 1000)))
                else:
                    self._stop.wait(PASS_S)
        finally:
            if self.query is not None:
                self.query.close()

    def _pass(self) -> None:
        query = self.query
        try:
            if query is None:
                query = self.query = Query(self.config, self.spool, self._shared, self._turns)
            query.step(int(time.time() * 1000))
        except (EdgeAgentError, OSError, sqlite3.Error) as err:  # the spool, a runner
            if query is not None:
                query.failed(str(err))
            elif str(err) not in self._logged:
                self._logged.add(str(err))
                log.error("analytics %s cannot start: %s", self.config.name, err)


def lower_priority() -> None:
    """This thread NICENESS nicer (Linux sets a thread's own priority by its id);
    where that is not allowed, it stays as it is."""
    with contextlib.suppress(OSError, AttributeError):
        thread = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + NICENESS))


class AnalyticsWorker:
    """Every query's thread, started, watched and stopped together."""

    def __init__(
        self, queries: Mapping[str, AnalyticsConfig], spool: Spool, stop: threading.Event
    ) -> None:
        by_queue: dict[str, list[str]] = {}
        for name, config in queries.items():
            by_queue.setdefault(config.queue, []).append(name)
        shared = {queue: SharedQueue(names) for queue, names in by_queue.items()}
        turns = threading.Lock()
        self.workers = {
            name: QueryWorker(config, spool, stop, shared[config.queue], turns)
            for name, config in queries.items()
        }

    def start(self) -> None:
        for worker in self.workers.values():
            worker.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            worker.join(max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        return any(worker.running for worker in self.workers.values())

    @property
    def healthy(self) -> bool:
        return all(worker.thread_ok for worker in self.workers.values())

    def snapshot(self) -> dict[str, AnalyticsSnapshot]:
        return {
            name: worker.query.snapshot()
            for name, worker in self.workers.items()
            if worker.query is not None
        }
