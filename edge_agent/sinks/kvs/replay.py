"""The order in which a Kinesis Video sink sends a backlog (``replay``).

    oldest-first   one session sends everything in capture order ("all"); live video
                   waits until the backlog is through
    live-first     a live session starts at the newest fragment and follows the
                   camera; each time it has caught up (all acknowledged, nothing new),
                   a backlog session sends the older fragments in capture order until
                   a new fragment is captured, then the next live session starts with
                   it. A schedule window with traffic = "backlog" holds only the
                   backlog sessions.

Live and backlog are told apart by capture time, not by spool id (SQLite may reuse the
id of a deleted newest row): what was captured after the newest fragment a live
session sent is live, the rest is backlog.
"""

from __future__ import annotations

from typing import Literal

from edge_agent.delivery.budget import SinkBudget
from edge_agent.records import LeasedRecord
from edge_agent.sinks.kvs.options import MAX_FRAGMENT_BYTES
from edge_agent.spool.store import Spool

#: What a session sends: everything in order (oldest-first), or, live-first, the
#: newest fragments as they come, or the backlog behind them.
SessionKind = Literal["all", "live", "backlog"]


class SessionOrder:
    def __init__(self, spool: Spool, queue: str, replay: str, budget: SinkBudget) -> None:
        self._spool = spool
        self._queue = queue
        self._live_first = replay == "live-first"
        self._budget = budget
        #: Live-first: when the newest fragment a live session sent was captured (what
        #: the spool holds from before is backlog); None until the first live session.
        self._live_last_ms: int | None = None

    def next_session(self) -> SessionKind:
        if not self._live_first:
            return "all"
        if self._live_last_ms is None or self.live_waiting():
            return "live"
        return "backlog" if self.backlog_may_go() else "live"

    def backlog_may_go(self) -> bool:
        """Live-first: a backlog is waiting and no schedule window holds it (asked when
        nothing newer is waiting and nothing is in flight: whatever the spool still
        holds for the sink is older)."""
        return self._spool.unheld(self._queue) > 0 and not self._budget.backlog_held()

    def live_waiting(self) -> bool:
        """Live-first: a fragment captured after the last live one is in the spool."""
        last = self._live_last_ms
        return last is not None and self._spool.newest_is_after(self._queue, last)

    def turn_over(self, kind: SessionKind) -> bool:
        """A live-first session has sent all it may and had it acknowledged: a live
        session hands over to a waiting backlog, a backlog session with nothing left
        to live video."""
        if kind == "live":
            return self.backlog_may_go()
        return kind == "backlog"

    def lease(self, kind: SessionKind) -> LeasedRecord | None:
        """The next fragment for a session of this kind, if there is one; a large one
        with its payload left in the spool (``spooled_payload``)."""
        if kind == "live":
            after = -1 if self._live_last_ms is None else self._live_last_ms
            return self._spool.lease_newest(
                self._queue, captured_after_ms=after, with_meta=True, read_large=False
            )
        before = None
        if kind == "backlog" and self._live_last_ms is not None:
            before = self._live_last_ms + 1  # a live fragment given back is backlog now
        leased = self._spool.lease(
            self._queue,
            max_records=1,
            max_bytes=MAX_FRAGMENT_BYTES,
            with_meta=True,
            captured_before_ms=before,
            read_large=False,
        )
        return leased[0] if leased else None

    def sent(self, record: LeasedRecord, kind: SessionKind) -> None:
        if kind == "live":
            self._live_last_ms = record.captured_at_ms  # what is older (unsent) is backlog
