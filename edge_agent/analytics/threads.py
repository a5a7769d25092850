"""The analytics threads: one per query (a large window never holds up a continuous
filter), started, watched and stopped together by the agent. Each runs its query's
passes (engine.py): as readings come for windows chosen by readings (filters, count and
session windows, sliding on each change), twice a second for time windows."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Mapping

from edge_agent.analytics.engine import PASS_S, Query, SharedQueue
from edge_agent.config.analytics import AnalyticsConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.runtime_status import AnalyticsSnapshot
from edge_agent.spool.store import Spool
from edge_agent.worker import ThreadWorker

log = logging.getLogger(__name__)


class QueryWorker(ThreadWorker):
    """The thread of one query: a slow query (a large window) never holds up another
    (a continuous filter)."""

    def __init__(
        self, config: AnalyticsConfig, spool: Spool, stop: threading.Event, shared: SharedQueue
    ) -> None:
        self.config = config
        self.spool = spool
        self._stop = stop
        self._shared = shared
        self.query: Query | None = None
        self._logged: set[str] = set()

    def start(self) -> None:
        self._start_thread(self.run, f"analytics-{self.config.name}")

    def run(self) -> None:
        # Windows chosen by readings go as readings come; time windows, by the clock.
        by_readings = self.config.window in ("none", "count", "session") or (
            self.config.window == "sliding" and not self.config.period_ms
        )
        try:
            while not self._stop.is_set():
                seen = self.spool.append_generation
                self._pass()
                if by_readings:
                    self.spool.wait_for_append(seen, PASS_S)
                    self._stop.wait(0.05)  # gather a batch: a filter's rows go out together
                else:
                    self._stop.wait(PASS_S)
        finally:
            if self.query is not None:
                self.query.close()

    def _pass(self) -> None:
        query = self.query
        try:
            if query is None:
                query = self.query = Query(self.config, self.spool, self._shared)
            query.step(int(time.time() * 1000))
        except (EdgeAgentError, OSError, sqlite3.Error) as err:  # the spool, a runner
            if query is not None:
                query.failed(str(err))
            elif str(err) not in self._logged:
                self._logged.add(str(err))
                log.error("analytics %s cannot start: %s", self.config.name, err)


class AnalyticsWorker:
    """Every query's thread, started, watched and stopped together."""

    def __init__(
        self, queries: Mapping[str, AnalyticsConfig], spool: Spool, stop: threading.Event
    ) -> None:
        by_queue: dict[str, list[str]] = {}
        for name, config in queries.items():
            by_queue.setdefault(config.queue, []).append(name)
        shared = {queue: SharedQueue(names) for queue, names in by_queue.items()}
        self.workers = {
            name: QueryWorker(config, spool, stop, shared[config.queue])
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
