"""One analytics query: evaluating its due windows and emitting each window's result
rows into the spool exactly once (its thread is threads.py's).

A pass (threads.py: when a time window is to be drafted or closes and at least every
PASS_S, or when readings arrived for a continuous filter): find what is due (windows.py,
from the query's state and the rows waiting in its queue), run the SQL over each due
window (query.py, a read-only connection of the query's own), and append the result rows
to the sinks' queues in one transaction with the window's mark and the query's new state
(spool/analytics.py). A crash before that commit leaves nothing of the window; after it,
everything: the restart resumes from the stored state and evaluates the same window
again under the same id, or the next one. The raw rows no later window needs are deleted
after the commit, a range of ids per transaction (sharing.py).

Each result row becomes one record per sink: a JSON object of the row's columns, plus
``query``, ``window_id``, ``window_start`` and ``window_end`` (epoch ms) and
``revision`` (0; 1, 2, ... when late readings revised the window), so that consumers
can drop the duplicates at-least-once delivery may add downstream.

A time window's SQL over a minute of busy readings can take seconds; so that its rows
come right at the close, the window is drafted during its grace and its draft emitted
if it still stands (drafts.py); either way the rows are those of the whole window, and
the commit is the same. A time window reads only the ids that can hold its readings
(id_bounds.py), not all its queue keeps for longer windows.

Late readings (time windows): a reading that comes for a window already closed is
counted; with ``late = "revise"`` its window is evaluated again (within ``revise_for``)
and emitted with the next revision. A query that fails (SQLite's error, or past its
work budget) is logged once per distinct failure and shown in status; its window is
tried again after ``RETRY_FAILED_S``, and the other queries and the rest of the agent
go on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from edge_agent.analytics.drafts import Drafter, draft_at
from edge_agent.analytics.id_bounds import IdBounds
from edge_agent.analytics.query import QueryResult, QueryRunner, row_time_sql
from edge_agent.analytics.sharing import NOTHING, SharedQueue, delete_in_ranges
from edge_agent.analytics.windows import (
    Window,
    WindowSpec,
    WindowState,
    advance,
    due_windows,
    is_late,
    keep_from,
    late_windows,
    next_time_window,
    open_from_ms,
    skip_empty,
    window_id,
)
from edge_agent.config.analytics import AnalyticsConfig
from edge_agent.errors import QueryFailed, SpoolError
from edge_agent.records import Record
from edge_agent.runtime_status import AnalyticsSnapshot
from edge_agent.spool import analytics as stored
from edge_agent.spool.recovery import connect_read_only
from edge_agent.spool.store import Spool

log = logging.getLogger(__name__)

#: Seconds between passes when nothing wakes the thread sooner.
PASS_S = 0.5
#: A window whose query failed is tried again after this long.
RETRY_FAILED_S = 30.0
#: Readings read at most per pass for windows chosen by readings (session, count,
#: filter): the rest waits for the next pass.
MAX_READINGS = 200_000
#: A window whose query fails this many times in a row for a reason that will not pass
#: (SQLite's error on these rows, the work budget) is skipped: marked with no rows, so
#: that the query goes on with the next windows instead of holding its readings for
#: ever. Counted and shown in status.
MAX_WINDOW_FAILURES = 3
#: Keys every result record carries beside the row's columns.
RESERVED_COLUMNS = frozenset({"query", "window_id", "window_start", "window_end", "revision"})


def spec_of(config: AnalyticsConfig) -> WindowSpec:
    return WindowSpec(
        config.window,
        size_ms=config.size_ms,
        hop_ms=config.hop_ms,
        gap_ms=config.gap_ms,
        period_ms=config.period_ms,
        count=config.count,
        grace_ms=config.grace_ms,
    )


@dataclass
class QueryStats:
    emitted: int = 0
    rows_out: int = 0
    late: int = 0
    last_emit_ms: int | None = None
    run_seconds: float = 0.0
    max_run_seconds: float = 0.0
    failures: int = 0
    skipped: int = 0
    untimed: int = 0
    last_error: str = ""
    last_error_at: float | None = None
    revisions: int = 0
    logged_errors: set[str] = field(default_factory=set)


class Query:
    """One query: its window state, its runner, and emitting what is due."""

    def __init__(
        self,
        config: AnalyticsConfig,
        spool: Spool,
        shared: SharedQueue | None = None,
        turns: threading.Lock | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.shared = shared or SharedQueue([config.name])
        #: Held while a window (not a filter's batch) runs: the queries' windows run one
        #: at a time (threads.py).
        self._turns = turns if turns is not None and config.window != "none" else None
        self.spec = spec_of(config)
        self.time_sql = row_time_sql(config.event_time, config.event_time_unit)
        #: Time windows: the distance between window ends (0: windows chosen by readings).
        self._step_ms = {
            "tumbling": config.size_ms,
            "hopping": config.hop_ms,
            "sliding": config.period_ms,
        }.get(config.window, 0)
        self.stats = QueryStats()
        self._reader = connect_read_only(spool.path)
        self._runner = QueryRunner(
            spool.path,
            config.queue,
            config.sql,
            event_time=config.event_time,
            event_time_unit=config.event_time_unit,
            max_steps=config.max_steps,
        )
        self._queue_id: int | None = None
        self.state = WindowState()
        self._seen_id = 0  # readings above it were not looked at for lateness yet
        self._untimed_id = 0  # nor for a missing event time
        self._retry_at = 0.0
        self._failing: tuple[str, int] | None = None  # the window failing, and how often
        #: Time windows, once the queue exists: where its readings stand in time by id,
        #: and the drafts.
        self._bounds: IdBounds | None = None
        self._drafter: Drafter | None = None
        saved = stored.load_state(self._reader, config.name)
        if saved is not None:
            loaded = json.loads(saved.state)
            stats = self.stats
            stats.emitted, stats.rows_out = saved.emitted, saved.rows_out
            stats.late, stats.last_emit_ms = saved.late, saved.last_emit_ms
            stats.revisions, stats.skipped = loaded.get("revisions", 0), loaded.get("skipped", 0)
            if loaded.get("window") == self._shape():
                self.state = WindowState(loaded.get("closed_through_ms"), int(loaded["last_id"]))
                self._seen_id = self._untimed_id = int(loaded.get("seen_id", 0))
            else:  # another window under the same name: its windows start afresh
                log.info(
                    "analytics %s: the window changed; starting its windows afresh", config.name
                )
        # What it needs of the shared queue, as of its stored state.
        self.shared.settle(
            config.name, keep_from(self.spec, self.state, revise_ms=self._revise_ms())
        )

    def close(self) -> None:
        self._runner.close()
        self._reader.close()

    def _shape(self) -> str:
        """The window as stored with the state: a changed window does not resume from a
        state that meant another one."""
        spec = self.spec
        return (
            f"{spec.kind}/{spec.size_ms}/{spec.hop_ms}/{spec.period_ms}/{spec.gap_ms}/"
            f"{spec.count}/{self.config.event_time}/{self.config.event_time_unit}"
        )

    # ------------------------------------------------------------------ a pass

    def step(self, now_ms: int) -> int:
        """Emit what is due now; returns how many windows were evaluated (those without
        rows included)."""
        if time.monotonic() < self._retry_at:
            return 0
        if self._queue_id is None:
            self._queue_id = stored.queue_id(self._reader, self.config.queue)
            if self._queue_id is None:
                return 0  # no reading yet
        newest = stored.newest_id(self._reader, self._queue_id)  # once a pass, for all
        if self._step_ms and self._drafter is None:
            bounds = IdBounds(self._queue_id, self.time_sql)
            self._bounds = bounds
            self._drafter = Drafter(self._runner, self._reader, self._queue_id, bounds)
        if self._bounds is not None:
            self._bounds.learn(self._reader, newest)
        self._count_untimed(newest)
        emitted = self._revise_late(now_ms, newest)
        while True:
            windows = self._due(now_ms)
            if not windows:
                break
            for window in windows:
                if not self._emit(window, now_ms, revision=0):
                    return emitted
                emitted += 1
            if self.spec.kind == "none":
                break  # a filter's window took every new reading: the next pass, the rest
        self._draft_next(now_ms)
        return emitted

    def due_in_s(self, now_ms: int) -> float:
        """Seconds to the next moment a pass has work (a draft, a window's close), at
        most PASS_S (late readings are looked for on every pass)."""
        window = next_time_window(self.spec, self.state)
        if window is None:
            return PASS_S
        moments = (window.end_ms + self.spec.grace_ms, self._draft_at(window))
        return min([PASS_S, *((moment - now_ms) / 1000 for moment in moments if moment > now_ms)])

    # ------------------------------------------------------------------ drafts

    def _draft_at(self, window: Window) -> int:
        return draft_at(
            window.end_ms,
            self.spec.grace_ms,
            self.stats.max_run_seconds,
            PASS_S,
            by_event_time=self.config.event_time is not None,
        )

    def _draft_next(self, now_ms: int) -> None:
        """During the next time window's grace, draft it (drafts.py)."""
        window = next_time_window(self.spec, self.state)
        drafter = self._drafter
        if window is None or drafter is None:
            return
        if now_ms >= window.end_ms + self.spec.grace_ms or now_ms < self._draft_at(window):
            return
        if drafter.draft is not None and drafter.draft.window == window:
            return  # one draft a window
        try:
            with self._turn():
                result = drafter.make(window)
        except QueryFailed:
            return  # evaluated again when due, and reported then
        self._record_run(result)
        log.debug("analytics %s: %s drafted in %.3fs", self.config.name, window, result.seconds)

    def _drafted(self, window: Window) -> QueryResult | None:
        if self._drafter is None:
            return None
        result, why = self._drafter.take(window)
        log.debug("analytics %s: %s: %s", self.config.name, window, why)
        return result

    def _below(self, start_ms: int | None) -> int | None:
        """An id under which no reading is at or after ``start_ms`` (id_bounds.py)."""
        if self._bounds is None or start_ms is None:
            return None
        return self._bounds.below(start_ms) or None

    def _turn(self) -> AbstractContextManager[object]:
        return self._turns if self._turns is not None else contextlib.nullcontext()

    def _record_run(self, result: QueryResult) -> None:
        self.stats.run_seconds = result.seconds
        self.stats.max_run_seconds = max(self.stats.max_run_seconds, result.seconds)

    def _due(self, now_ms: int) -> list[Window]:
        spec, state, queue = self.spec, self.state, self._queue_id
        assert queue is not None
        since = open_from_ms(spec, state)
        if self._step_ms:
            closed = state.closed_through_ms
            # Windows end on a grid: none can be due before the next end plus grace (no
            # read of the queue's rows until then).
            if closed is not None and now_ms < closed + self._step_ms + spec.grace_ms:
                return []
            draft = self._drafter.draft if self._drafter else None
            if draft and draft.has_readings and draft.window == next_time_window(spec, state):
                return [draft.window]  # the first due: no read of the queue's times
            oldest = stored.oldest_time(
                self._reader, queue, self.time_sql, since, after_id=self._below(since)
            )
            self.state = skip_empty(spec, state, now_ms, oldest_time_ms=oldest)
            return due_windows(spec, self.state, now_ms, oldest_time_ms=oldest)
        if spec.kind == "session":
            pending = stored.readings(
                self._reader, queue, self.time_sql, from_ms=since, limit=MAX_READINGS
            )
        elif spec.kind == "none":
            # A filter's window is every new reading: their oldest and newest, not each
            # one of them into Python (a busy topic brings thousands a pass).
            pending = stored.span(self._reader, queue, self.time_sql, after_id=state.last_id)
        else:
            pending = stored.readings(
                self._reader, queue, self.time_sql, after_id=state.last_id, limit=MAX_READINGS
            )
        return due_windows(spec, state, now_ms, pending=pending)

    def _count_untimed(self, newest: int) -> None:
        """Readings without an event time (not JSON, no number at the path) fall in no
        window: counted, so that a wrong path shows in status."""
        if self.config.event_time is None:
            return
        assert self._queue_id is not None
        if newest > self._untimed_id:
            self.stats.untimed += stored.untimed(
                self._reader, self._queue_id, self.time_sql, after_id=self._untimed_id
            )
            self._untimed_id = newest

    def _revise_late(self, now_ms: int, newest: int) -> int:
        """Count the readings that came for windows already closed; with revisions,
        evaluate those windows again."""
        spec, queue = self.spec, self._queue_id
        assert queue is not None
        if spec.kind not in ("tumbling", "hopping", "sliding") or spec.on_change:
            return 0
        if self.state.closed_through_ms is None:
            return 0
        open_from = open_from_ms(spec, self.state)
        if newest <= self._seen_id or open_from is None:
            return 0
        late = stored.late_readings(
            self._reader, queue, self.time_sql, after_id=self._seen_id, before_ms=open_from
        )
        late = [reading for reading in late if is_late(spec, self.state, reading[1])]
        self._seen_id = newest
        if not late:
            return 0
        self.stats.late += len(late)
        if self.config.late != "revise":
            return 0
        windows = late_windows(
            spec, self.state, [t for _, t in late], revise_ms=self.config.revise_for_ms
        )
        emitted = 0
        for window in windows:
            wid = window_id(self.config.name, spec, window)
            revision = stored.emitted(self._reader, self.config.name, wid)
            if self._emit(window, now_ms, revision=revision):
                emitted += 1
        return emitted

    def _emit(self, window: Window, now_ms: int, *, revision: int) -> bool:
        """Evaluate ``window`` and commit its rows, mark and state at once."""
        config = self.config
        try:
            result = self._drafted(window) if revision == 0 and self._step_ms else None
            if result is None:
                by_time = window.until_id is None
                with self._turn():
                    result = self._runner.run(
                        window.start_ms if by_time else None,
                        window.end_ms if by_time else None,
                        after_id=self._below(window.start_ms) if by_time else window.after_id,
                        until_id=window.until_id,
                        if_any=True,
                    )
                self._record_run(result)
        except QueryFailed as err:
            return self._window_failed(window, now_ms, revision, err)
        wid = window_id(config.name, self.spec, window)
        reserved = RESERVED_COLUMNS.intersection(result.columns)
        if reserved:
            clash = QueryFailed(
                f"result columns {', '.join(sorted(reserved))} are the names every result "
                "record gives its window: name them otherwise (AS ...)"
            )
            return self._window_failed(window, now_ms, revision, clash)
        self._failing = None
        return self._commit(
            window, wid, revision, self._records(result, window, wid, revision, now_ms), now_ms
        )

    def _window_failed(self, window: Window, now_ms: int, revision: int, err: QueryFailed) -> bool:
        """Reported; a window that keeps failing for a reason that will not pass is
        skipped after MAX_WINDOW_FAILURES tries (marked with no rows)."""
        self.failed(str(err))
        if err.retryable:
            return False
        wid = window_id(self.config.name, self.spec, window)
        tries = self._failing[1] + 1 if self._failing and self._failing[0] == wid else 1
        self._failing = (wid, tries)
        if tries < MAX_WINDOW_FAILURES:
            return False
        log.error(
            "analytics %s: window %s skipped after %d failures: %s",
            self.config.name,
            wid,
            tries,
            err,
        )
        self.stats.skipped += 1
        self._failing = None
        self._retry_at = 0.0
        return self._commit(window, wid, revision, [], now_ms, skipped=True)

    def _commit(
        self,
        window: Window,
        wid: str,
        revision: int,
        records: list[Record],
        now_ms: int,
        *,
        skipped: bool = False,
    ) -> bool:
        """The window's rows, mark and state in one transaction; then the readings no
        window needs any more go (``_delete``)."""
        config = self.config
        rows = len(records) // len(config.sinks)
        state = advance(self.spec, self.state, window) if revision == 0 else self.state
        keep = keep_from(self.spec, state, revise_ms=self._revise_ms())
        free = self.shared.combined(config.name, keep)
        stats = self.stats
        saved = stored.QueryState(
            stored.state_json(
                {
                    "window": self._shape(),
                    "closed_through_ms": state.closed_through_ms,
                    "last_id": state.last_id,
                    "seen_id": self._seen_id,
                    "revisions": stats.revisions + (revision > 0),
                    "skipped": stats.skipped,
                }
            ),
            stats.emitted + (rows > 0),
            stats.rows_out + rows,
            stats.late,
            stored.committed_ms(),
        )
        # A skipped window's mark says so: -1 rows.
        # A window without rows needs no mark (nothing to tell apart downstream); a
        # skipped one's says so: -1 rows.
        marks = [
            stored.WindowMark(
                wid, revision, window.start_ms, window.end_ms, -1 if skipped else rows
            )
        ]
        if not rows and not skipped:
            marks = []
        consume = None
        freed = self.shared.freed
        if free not in (NOTHING, freed):
            consume = stored.Consume(
                config.queue, self.time_sql, free.before_ms, free.through_id, freed
            )
        try:
            self.spool.append(records, also=stored.emission(config.name, marks, saved))
        except SpoolError as err:
            self.failed(f"emitting window {wid}: {err}")
            return False
        self.state = state
        self.shared.settle(config.name, keep)
        if consume is not None and self._delete(consume):
            self.shared.freed = free
        stats.emitted, stats.rows_out = saved.emitted, saved.rows_out
        stats.last_emit_ms = saved.last_emit_ms
        stats.revisions += revision > 0
        return True

    def _delete(self, consume: stored.Consume) -> bool:
        """Delete what ``consume`` frees (sharing.delete_in_ranges); False if it failed."""
        assert self._queue_id is not None
        try:
            delete_in_ranges(self.spool, self._reader, self._queue_id, consume)
        except SpoolError as err:
            self.failed(f"deleting the readings no window needs: {err}")
            return False
        return True

    def _revise_ms(self) -> int:
        return self.config.revise_for_ms if self.config.late == "revise" else 0

    def _records(
        self, result: QueryResult, window: Window, wid: str, revision: int, now_ms: int
    ) -> list[Record]:
        config = self.config
        meta = json.dumps({"query": config.name, "window_id": wid, "revision": revision})
        records = []
        for row in result.rows:
            document: dict[str, Any] = dict(zip(result.columns, row, strict=True))
            document.update(
                query=config.name,
                window_id=wid,
                window_start=window.start_ms,
                window_end=window.end_ms,
                revision=revision,
            )
            payload = json.dumps(document, separators=(",", ":")).encode()
            key = config.partition_key.render(config.name, payload)
            records += [Record(sink, key, now_ms, payload, meta) for sink in config.sinks]
        return records

    def failed(self, message: str) -> None:
        """Reported in status, logged once per distinct failure; tried again later."""
        stats = self.stats
        stats.failures += 1
        stats.last_error, stats.last_error_at = message, time.time()
        if message not in stats.logged_errors:  # once per distinct failure
            stats.logged_errors.add(message)
            log.error(
                "analytics %s: %s; trying again in %.0fs", self.config.name, message, RETRY_FAILED_S
            )
        self._retry_at = time.monotonic() + RETRY_FAILED_S

    def snapshot(self) -> AnalyticsSnapshot:
        stats = self.stats
        return {
            "window": self.config.window,
            "emitted": stats.emitted,
            "rows_out": stats.rows_out,
            "late": stats.late,
            "revisions": stats.revisions,
            "last_emit_ms": stats.last_emit_ms,
            "run_seconds": stats.run_seconds,
            "max_run_seconds": stats.max_run_seconds,
            "failures": stats.failures,
            "skipped": stats.skipped,
            "untimed": stats.untimed,
            "last_error": stats.last_error,
            "last_error_at": stats.last_error_at,
        }
