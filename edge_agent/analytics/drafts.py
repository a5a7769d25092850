"""Drafts: a time window evaluated during its grace, so that its rows go out at the
close instead of a run's time after it (a minute of busy readings takes seconds).

A draft is the query over the window's readings up to the queue's newest id at the
time. At the close it stands if no reading of the window came after that id and none
was taken by a cap or ``max_age`` (the queue's dropped and expired counters did not
move): then its rows are exactly the whole window's, and are emitted as they are;
otherwise the window is run again. Both checks are cheap (an id range, one row).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from edge_agent.analytics.id_bounds import IdBounds
from edge_agent.analytics.query import QueryResult, QueryRunner
from edge_agent.analytics.windows import Window
from edge_agent.spool import analytics as stored

#: A window is drafted no sooner than this after its end: the readings captured before
#: it are committed by then.
SETTLE_MS = 250


def draft_at(
    end_ms: int, grace_ms: int, longest_run_s: float, pass_s: float, *, by_event_time: bool
) -> int:
    """When the window ending at ``end_ms`` is drafted. By capture time no reading of it
    comes after its end: SETTLE_MS after it. By event time a reading may come during
    the grace and cost a second run: as late as lets the draft end before the close by
    the query's longest run so far, and no sooner than SETTLE_MS after its end."""
    if not by_event_time:
        return end_ms + SETTLE_MS
    lead_ms = int((1.5 * longest_run_s + pass_s) * 1000)
    return max(end_ms + SETTLE_MS, end_ms + grace_ms - lead_ms)


@dataclass(frozen=True)
class Draft:
    """``result``: the window over the readings up to ``newest_id``; ``removed``: the
    queue's dropped and expired count then."""

    window: Window
    newest_id: int
    removed: int
    result: QueryResult

    @property
    def has_readings(self) -> bool:
        return bool(self.result.input_rows)


class Drafter:
    """The drafts of one query over its queue (one at a time)."""

    def __init__(
        self, runner: QueryRunner, reader: sqlite3.Connection, queue: int, bounds: IdBounds
    ) -> None:
        self._runner = runner
        self._reader = reader
        self._queue = queue
        self._bounds = bounds
        self.draft: Draft | None = None

    def make(self, window: Window) -> QueryResult:
        """Draft ``window`` now (QueryFailed as ``QueryRunner.run``)."""
        removed = stored.removed(self._reader, self._queue)
        newest = stored.newest_id(self._reader, self._queue)
        result = self._runner.run(
            window.start_ms,
            window.end_ms,
            after_id=self._bounds.below(window.start_ms),
            until_id=newest,
            if_any=True,
        )
        self.draft = Draft(window, newest, removed, result)
        return result

    def take(self, window: Window) -> tuple[QueryResult | None, str]:
        """The draft's result if it is ``window``'s and stands, and else why not."""
        draft, self.draft = self.draft, None
        if draft is None or draft.window != window:
            return None, "no draft"
        if stored.removed(self._reader, self._queue) != draft.removed:
            return None, "readings were taken since the draft"
        if self._runner.has_rows(window.start_ms, window.end_ms, after_id=draft.newest_id):
            return None, "readings came since the draft"
        return draft.result, "the draft stood"
