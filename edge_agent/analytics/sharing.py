"""Queries over the same topic filters read one queue of readings: each reading is
written once for all of them, and deleted once none of them needs it (spool/analytics.py
deletes what the combined ``Keep`` lets go, in a window's transaction)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable

from edge_agent.analytics.windows import EARLIEST, Keep
from edge_agent.spool import analytics as stored
from edge_agent.spool.store import Spool

#: Ids per transaction when the readings no window needs are deleted.
DELETE_IDS = 20_000

#: A Keep under which no reading goes.
NOTHING = Keep(EARLIEST, 0)


class SharedQueue:
    """The queries that read one queue (the same topic filters): a reading is deleted
    only once none of them needs it. Each query settles its own ``Keep`` after each
    commit; a query that has not yet told keeps everything."""

    def __init__(self, names: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._keeps: dict[str, Keep | None] = dict.fromkeys(names)
        #: What the deletions so far freed: the same again frees nothing, and is not
        #: asked; a new deletion looks only at the difference (a filter's frequent
        #: windows would otherwise scan the whole queue each time).
        self.freed: Keep | None = None

    def combined(self, name: str, keep: Keep) -> Keep:
        """What may go if ``name`` needs only ``keep``: what none of them needs."""
        with self._lock:
            others = [other for query, other in self._keeps.items() if query != name]
        if any(other is None for other in others):
            return NOTHING
        known = [keep, *(other for other in others if other is not None)]
        return Keep(min(k.before_ms for k in known), min(k.through_id for k in known))

    def settle(self, name: str, keep: Keep) -> None:
        with self._lock:
            self._keeps[name] = keep


def delete_in_ranges(
    spool: Spool, reader: sqlite3.Connection, queue: int, consume: stored.Consume
) -> None:
    """Delete what ``consume`` frees, after the window's commit and a range of ids per
    transaction (DELETE_IDS): a minute of busy readings deleted at once would hold the
    spool's write lock for seconds, with intake and the filters waiting behind it. Safe
    at any point: a crash leaves readings no window needs, which the next deletion
    takes. SpoolError as ``Spool.append``."""
    oldest = stored.oldest_id(reader, queue)
    if not oldest:
        return  # the queue is empty
    low = oldest - 1
    if consume.freed is not None and consume.before_ms <= consume.freed[0]:
        low = max(low, consume.freed[1])  # only new ids: the older ones went before
    high = min(consume.through_id, stored.newest_id(reader, queue))
    for start in range(low, high, DELETE_IDS):
        span = (start, min(start + DELETE_IDS, high))
        spool.append([], also=stored.deletion(consume._replace(ids=span)))
