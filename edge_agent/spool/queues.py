"""The ``queues`` table and its counters, and the spool's in-memory view of its queues.

Every change to a queue's rows comes with a ``Delta`` of its counters, written by
``Queues.commit`` in the same transaction; the in-memory pending counts follow only once
that transaction committed (the callable ``commit`` returns). At open, ``recount`` sets
the pending counters from the rows, whatever an earlier process left.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from edge_agent.spool.leases import QueueLeases


@dataclass(slots=True)
class Delta:
    """Counter changes of one queue inside one transaction."""

    pending_count: int = 0
    pending_bytes: int = 0
    acked_count: int = 0
    acked_bytes: int = 0
    retried_count: int = 0
    dropped_count: int = 0
    dropped_bytes: int = 0
    expired_count: int = 0
    rejected_count: int = 0
    rejected_bytes: int = 0
    dead_count: int = 0
    redelivered_count: int = 0
    resent_after_restart_count: int = 0
    # Not a counter column: counts what append() did, for its result.
    stored: int = field(default=0, compare=False)


#: The counter columns of ``queues``, in Delta's order.
COUNTER_COLUMNS = tuple(name for name in Delta.__dataclass_fields__ if name != "stored")
_UPDATE_COUNTERS = "UPDATE queues SET {} WHERE id = ?".format(
    ", ".join(f"{name} = {name} + ?" for name in COUNTER_COLUMNS)
)


class QueueState:
    """One queue as the spool sees it: committed pending counts and its leases."""

    __slots__ = ("id", "leases", "name", "pending_bytes", "pending_count")

    def __init__(self, queue_id: int, name: str, pending_count: int = 0, size: int = 0) -> None:
        self.id = queue_id
        self.name = name
        self.pending_count = pending_count
        self.pending_bytes = size
        self.leases = QueueLeases(queue_id, name)


class Queues:
    """The queues of one spool by name (and id), as of the last commit. Not thread-safe:
    the spool calls it under its lock."""

    def __init__(self) -> None:
        self._by_name: dict[str, QueueState] = {}
        self._names: dict[int, str] = {}
        #: The highest record id ever given (``records_high_water``, read at the first
        #: insert and kept here so that an append does not read it; a rolled-back
        #: append leaves it too high, which only skips ids).
        self._given: int | None = None

    def load(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute("SELECT id, name, pending_count, pending_bytes FROM queues")
        for queue_id, name, count, size in rows:
            self._register(QueueState(queue_id, name, count, size))

    def _register(self, state: QueueState) -> None:
        self._by_name[state.name] = state
        self._names[state.id] = state.name

    def get(self, name: str) -> QueueState | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> QueueState:
        return self._by_name[name]

    def __iter__(self) -> Iterator[QueueState]:
        return iter(self._by_name.values())

    def names(self) -> list[str]:
        return list(self._by_name)

    @property
    def pending_bytes(self) -> int:
        return sum(state.pending_bytes for state in self._by_name.values())

    def state_for(self, conn: sqlite3.Connection, name: str) -> QueueState:
        """The queue's state; a new queue gets its row now (inside the caller's
        transaction) and is registered only once that committed (see ``commit``)."""
        state = self._by_name.get(name)
        if state is None:
            cursor = conn.execute("INSERT INTO queues (name) VALUES (?)", (name,))
            assert cursor.lastrowid is not None
            state = QueueState(cursor.lastrowid, name)
        return state

    def name_of(self, conn: sqlite3.Connection, queue_id: int) -> str:
        name = self._names.get(queue_id)
        if name is None:
            row = conn.execute("SELECT name FROM queues WHERE id = ?", (queue_id,)).fetchone()
            name = str(row[0])
        return name

    def keep_new_ids_above_floors(self, conn: sqlite3.Connection) -> int | None:
        """Before inserting records (inside the inserting transaction, so that no lease
        runs in between): the id the first new row must take, or None when SQLite's own
        choice will do. SQLite gives a new row the highest id in the table plus one;
        once the rows at the top are gone that id was given before, so the first row
        takes one above the highest ever given (``records_high_water``) and the next
        ones follow it: ids are never given twice. Every queue's lease floor comes down
        to the highest id there is (see ``QueueLeases.lower_floor``). After the inserts,
        ``remember_ids``."""
        (top,) = conn.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()
        for state in self._by_name.values():
            state.leases.lower_floor(top)
        if self._given is None:
            (given,) = conn.execute(
                "SELECT coalesce(max(id), 0) FROM records_high_water"
            ).fetchone()
            self._given = int(given)
        return None if self._given <= top else self._given + 1

    def remember_ids(self, conn: sqlite3.Connection, last_id: int | None) -> None:
        """After inserting records, ``last_id`` the last one's: the highest id given,
        for ``keep_new_ids_above_floors``."""
        if last_id is not None and last_id > (self._given or 0):
            conn.execute("UPDATE records_high_water SET id = ?", (last_id,))
            self._given = last_id

    def commit(
        self,
        conn: sqlite3.Connection,
        deltas: Mapping[str, Delta],
        states: Mapping[str, QueueState],
    ) -> Callable[[], None]:
        """Write counter deltas; returns the in-memory update to run once committed."""
        for name, delta in deltas.items():
            conn.execute(
                _UPDATE_COUNTERS,
                (*(getattr(delta, column) for column in COUNTER_COLUMNS), states[name].id),
            )

        def apply() -> None:
            for name, delta in deltas.items():
                state = states[name]
                self._register(state)
                state.pending_count += delta.pending_count
                state.pending_bytes += delta.pending_bytes

        return apply


def recount(conn: sqlite3.Connection) -> None:
    """Set every queue's pending counters from its rows (at open)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            """UPDATE queues SET
                 pending_count = (SELECT count(*) FROM records r WHERE r.queue_id = queues.id),
                 pending_bytes = (SELECT coalesce(sum(size), 0) FROM records r
                                  WHERE r.queue_id = queues.id)"""
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
