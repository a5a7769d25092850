"""Where a queue's readings stand in time, by id: so that a time window's SQL reads only
the ids that can hold its readings, not every reading its queue keeps.

The spool indexes a queue's rows by id, not by time, and queries over the same topics
share one queue: a 1-minute window's run over a queue that a 5-minute window keeps
would otherwise scan five minutes of readings to find its one. Ids grow with every
append, whatever the readings' times. So the engine learns, pass by pass, the latest
time among the readings up to each id it has seen (one ranged read of the new ids a
pass); ``below(start_ms)`` is then an id at or under which no reading is at or after
``start_ms``, which a window starting there may skip. It is exact whatever order the
times come in (event times, a clock set back): a reading out of order only makes the
bound lower. Nothing is stored: after a restart the first pass reads the whole queue
once.
"""

from __future__ import annotations

import bisect
import sqlite3

#: Steps kept (one per pass that saw new readings); the oldest go first, which only
#: makes ``below`` return lower ids.
MAX_STEPS = 4_096


class IdBounds:
    """One queue's ids and the latest reading time up to each (see the module)."""

    def __init__(self, queue: int, time_sql: str) -> None:
        self._queue = queue
        self._time_sql = time_sql
        #: (through_id, latest time of any reading with an id at or under it), both
        #: increasing.
        self._ids: list[int] = []
        self._latest: list[int] = []

    def learn(self, conn: sqlite3.Connection, newest_id: int) -> None:
        """Take in the readings up to ``newest_id`` (the queue's newest)."""
        seen = self._ids[-1] if self._ids else 0
        if newest_id <= seen:
            return
        (latest,) = conn.execute(
            f"SELECT max({self._time_sql}) FROM records WHERE queue_id = ? AND id > ? AND id <= ?",
            (self._queue, seen, newest_id),
        ).fetchone()
        before = self._latest[-1] if self._latest else None
        if latest is None or (before is not None and before >= latest):
            latest = before
        if latest is None:  # no reading with a time yet
            return
        self._ids.append(newest_id)
        self._latest.append(int(latest))
        if len(self._ids) > MAX_STEPS:
            del self._ids[: MAX_STEPS // 2], self._latest[: MAX_STEPS // 2]

    def below(self, start_ms: int) -> int:
        """An id at or under which no reading has a time at or after ``start_ms`` (0:
        none known)."""
        at = bisect.bisect_left(self._latest, start_ms)
        return self._ids[at - 1] if at else 0
