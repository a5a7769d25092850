"""Analytics' state in the spool, written in the transaction of a window's result rows.

A query's window is emitted by one ``Spool.append`` of its result records whose ``also``
(``emission``) writes, in the same transaction: the window's mark in
``analytics_windows`` (its primary key makes a second emission of the same window and
revision fail, whatever happens around it) and the query's window state and counters in
``analytics_state``. A crash before the commit leaves none of it; after it, all of it: a
restart resumes from the state, and no window is emitted twice or skipped. The raw rows
of the query's queue that no later window needs are deleted after it (``deletion``, a
range of ids per transaction; counted as acked): a crash in between leaves rows no
window needs, which the next deletion takes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import NamedTuple

from edge_agent.records import Record
from edge_agent.spool.queues import Delta, Queues

#: More to write in an append's transaction: given the connection and the queues, it
#: returns the in-memory update to run once committed (or None).
AlsoWrite = Callable[[sqlite3.Connection, Queues], Callable[[], None] | None]

MIGRATION = [
    "CREATE TABLE analytics_windows (query TEXT NOT NULL, window_id TEXT NOT NULL,"
    " revision INTEGER NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL,"
    " rows INTEGER NOT NULL, emitted_at_ms INTEGER NOT NULL,"
    " PRIMARY KEY (query, window_id, revision))",
    "CREATE TABLE analytics_state (query TEXT PRIMARY KEY, state TEXT NOT NULL,"
    " emitted INTEGER NOT NULL DEFAULT 0, rows_out INTEGER NOT NULL DEFAULT 0,"
    " late INTEGER NOT NULL DEFAULT 0, last_emit_ms INTEGER)",
]


class WindowMark(NamedTuple):
    """One evaluation of a window: which, the how-many-th time, and its row count."""

    window_id: str
    revision: int
    start_ms: int
    end_ms: int
    rows: int


class QueryState(NamedTuple):
    """What a query persists: its window state (JSON, windows.py's) and its counters."""

    state: str
    emitted: int = 0
    rows_out: int = 0
    late: int = 0
    last_emit_ms: int | None = None


class Consume(NamedTuple):
    """Raw rows of ``queue`` whose time is before ``before_ms`` and whose id is at most
    ``through_id`` are no longer needed (a row without a time too, once its id is
    through). ``time_sql``: the row's time (capture time, or the event time from its
    payload: analytics/query.py's ``row_time_sql``)."""

    queue: str
    time_sql: str
    before_ms: int
    through_id: int
    #: What an earlier consumption already deleted, as (before_ms, through_id), or None:
    #: only the difference is looked at (a query sharing the queue with a five-minute
    #: window would otherwise have every pass of a filter scan five minutes of rows).
    freed: tuple[int, int] | None = None
    #: Only the ids in ``(low, high]`` (one transaction's share), or all.
    ids: tuple[int, int] | None = None


def consumed_where(consume: Consume) -> tuple[str, tuple[int, ...]]:
    """The WHERE (after ``queue_id = ?``) and its parameters for the rows ``consume``
    lets go that its ``freed`` did not already: the new ids up to ``through_id`` whose
    time is before ``before_ms`` (or that have none), and the older ids whose time is
    between the old bound and the new one. Each part is a range of the queue's ids."""
    where, params = _freed_where(consume)
    if consume.ids is None:
        return where, params
    return f"id > ? AND id <= ? AND {where}", (*consume.ids, *params)


def _freed_where(consume: Consume) -> tuple[str, tuple[int, ...]]:
    time_sql, before, through = consume.time_sql, consume.before_ms, consume.through_id
    if consume.freed is None:
        return f"id <= ? AND coalesce(({time_sql}) < ?, 1)", (through, before)
    old_before, old_through = consume.freed
    where = f"(id > ? AND id <= ? AND coalesce(({time_sql}) < ?, 1))"
    params: tuple[int, ...] = (old_through, through, before)
    if before > old_before:
        where += f" OR (id <= ? AND ({time_sql}) >= ? AND ({time_sql}) < ?)"
        params += (min(old_through, through), old_before, before)
    return f"({where})", params


def committed_ms() -> int:
    """The time a window's transaction writes its mark: as late as can be in it (the
    emission's latency is measured from it)."""
    return int(time.time() * 1000)


def emission(query: str, marks: list[WindowMark], state: QueryState) -> AlsoWrite:
    """What an append of a query's result rows also writes (see the module's docstring)."""

    def write(conn: sqlite3.Connection, queues: Queues) -> Callable[[], None] | None:
        conn.executemany(
            "INSERT INTO analytics_windows (query, window_id, revision, start_ms, end_ms,"
            " rows, emitted_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(query, *mark, committed_ms()) for mark in marks],
        )
        conn.execute(
            "INSERT INTO analytics_state (query, state, emitted, rows_out, late, last_emit_ms)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (query) DO UPDATE SET state = excluded.state,"
            " emitted = excluded.emitted, rows_out = excluded.rows_out, late = excluded.late,"
            " last_emit_ms = excluded.last_emit_ms",
            (query, *state),
        )
        return None

    return write


def deletion(consume: Consume) -> AlsoWrite:
    """An append's extra write that deletes what ``consume`` frees (counted as acked)."""

    def write(conn: sqlite3.Connection, queues: Queues) -> Callable[[], None] | None:
        return _consume(conn, queues, consume)

    return write


def _consume(conn: sqlite3.Connection, queues: Queues, consume: Consume) -> Callable[[], None]:
    state = queues.get(consume.queue)
    if state is None:
        return lambda: None
    # Counted, then deleted, by one ranged statement each: a window of a busy query
    # frees hundreds of thousands of rows, which a list of ids would hold in memory.
    freed, freed_params = consumed_where(consume)
    where = f"queue_id = ? AND {freed}"
    params = (state.id, *freed_params)
    count, size = conn.execute(
        f"SELECT count(*), coalesce(sum(size), 0) FROM records WHERE {where}", params
    ).fetchone()
    if not count:
        return lambda: None
    conn.execute(f"DELETE FROM records WHERE {where}", params)
    delta = Delta(pending_count=-count, pending_bytes=-size, acked_count=count, acked_bytes=size)
    return queues.commit(conn, {consume.queue: delta}, {consume.queue: state})


def load_state(conn: sqlite3.Connection, query: str) -> QueryState | None:
    row = conn.execute(
        "SELECT state, emitted, rows_out, late, last_emit_ms FROM analytics_state WHERE query = ?",
        (query,),
    ).fetchone()
    return None if row is None else QueryState(*row)


def emitted(conn: sqlite3.Connection, query: str, window_id: str) -> int:
    """How many times (revisions) the window was emitted; 0: never."""
    row = conn.execute(
        "SELECT count(*) FROM analytics_windows WHERE query = ? AND window_id = ?",
        (query, window_id),
    ).fetchone()
    return int(row[0])


def state_json(state: object) -> str:
    return json.dumps(state, separators=(",", ":"), sort_keys=True)


def queue_id(conn: sqlite3.Connection, queue: str) -> int | None:
    row = conn.execute("SELECT id FROM queues WHERE name = ?", (queue,)).fetchone()
    return None if row is None else int(row[0])


def readings(
    conn: sqlite3.Connection,
    queue: int,
    time_sql: str,
    *,
    after_id: int = 0,
    from_ms: int | None = None,
    limit: int,
) -> list[tuple[int, int]]:
    """(id, time) of the queue's rows above ``after_id`` (and at or after ``from_ms``),
    in id order; rows without a time are left out."""
    since = "" if from_ms is None else f" AND ({time_sql}) >= {int(from_ms)}"
    return conn.execute(
        f"SELECT id, ({time_sql}) AS t FROM records WHERE queue_id = ? AND id > ?"
        f" AND t IS NOT NULL{since} ORDER BY id LIMIT ?",
        (queue, after_id, limit),
    ).fetchall()


def span(
    conn: sqlite3.Connection, queue: int, time_sql: str, *, after_id: int
) -> list[tuple[int, int]]:
    """The rows above ``after_id`` as two readings, (newest id, oldest time) and (newest
    id, newest time), or none: what a continuous filter's window needs of them."""
    row = conn.execute(
        f"SELECT max(id), min(t), max(t) FROM (SELECT id, ({time_sql}) AS t FROM records"
        " WHERE queue_id = ? AND id > ?) WHERE t IS NOT NULL",
        (queue, after_id),
    ).fetchone()
    if row is None or row[0] is None:
        return []
    return [(int(row[0]), int(row[1])), (int(row[0]), int(row[2]))]


def oldest_time(
    conn: sqlite3.Connection,
    queue: int,
    time_sql: str,
    from_ms: int | None,
    *,
    after_id: int | None = None,
) -> int | None:
    """The oldest time among the queue's rows at or after ``from_ms`` (those with ids
    above ``after_id``: the caller knows none at or below it is that late)."""
    since = "" if from_ms is None else f" AND ({time_sql}) >= {int(from_ms)}"
    row = conn.execute(
        f"SELECT min({time_sql}) FROM records WHERE queue_id = ? AND id > ?{since}",
        (queue, after_id or 0),
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def late_readings(
    conn: sqlite3.Connection, queue: int, time_sql: str, *, after_id: int, before_ms: int
) -> list[tuple[int, int]]:
    """(id, time) of rows that came after ``after_id`` with a time before ``before_ms``:
    readings for windows already closed."""
    return conn.execute(
        f"SELECT id, ({time_sql}) AS t FROM records WHERE queue_id = ? AND id > ?"
        " AND t < ? ORDER BY id",
        (queue, after_id, before_ms),
    ).fetchall()


def untimed(conn: sqlite3.Connection, queue: int, time_sql: str, *, after_id: int) -> int:
    """Rows above ``after_id`` without a time (an event time that is not there)."""
    row = conn.execute(
        f"SELECT count(*) FROM records WHERE queue_id = ? AND id > ? AND ({time_sql}) IS NULL",
        (queue, after_id),
    ).fetchone()
    return int(row[0])


def removed(conn: sqlite3.Connection, queue: int) -> int:
    """How many of the queue's rows a cap or ``max_age`` ever took before they were
    consumed (its dropped and expired counters): a change says a window may have lost
    readings."""
    row = conn.execute(
        "SELECT dropped_count + expired_count FROM queues WHERE id = ?", (queue,)
    ).fetchone()
    return int(row[0]) if row else 0


def oldest_id(conn: sqlite3.Connection, queue: int) -> int:
    row = conn.execute("SELECT min(id) FROM records WHERE queue_id = ?", (queue,)).fetchone()
    return int(row[0] or 0)


def newest_id(conn: sqlite3.Connection, queue: int) -> int:
    row = conn.execute("SELECT max(id) FROM records WHERE queue_id = ?", (queue,)).fetchone()
    return int(row[0] or 0)


#: How far back (rows of the queue) a redelivered reading is looked for: a crash leaves
#: at most a few commit batches unacknowledged.
REPEAT_LOOKBACK = 20_000


def without_repeats(
    read: Callable[[str], AbstractContextManager[sqlite3.Connection]],
    queues: Queues,
    records: list[Record],
    wanted: Callable[[str], bool],
) -> list[Record]:
    """The spool's ``without_repeats``: a redelivered record of a ``wanted`` queue goes
    only if no row of the last REPEAT_LOOKBACK of its queue has its key and payload."""
    repeats = [
        (index, record, state)
        for index, record in enumerate(records)
        if record.redelivered
        and wanted(record.queue)
        and (state := queues.get(record.queue)) is not None
    ]
    if not repeats:
        return records
    seen: set[int] = set()
    with read("redelivered readings") as conn:
        floors: dict[int, int] = {}  # per queue, once a batch: where the lookback starts
        for index, record, state in repeats:
            if state.id not in floors:
                floors[state.id] = newest_id(conn, state.id) - REPEAT_LOOKBACK
            found = conn.execute(
                "SELECT 1 FROM records WHERE queue_id = ? AND id > ? AND partition_key = ?"
                " AND payload = ? LIMIT 1",
                (state.id, floors[state.id], record.partition_key, record.payload),
            ).fetchone()
            if found:
                seen.add(index)
    return [record for index, record in enumerate(records) if index not in seen]
