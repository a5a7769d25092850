"""Sent marks: which records were handed to the network and not yet confirmed, kept in
the file so that a restart knows what it sends a second time.

Leases live in memory (invariant 5), so after a crash the next process cannot tell a
record that was never sent from one whose request was in flight when the process died;
both are simply pending. Before an uploader sends, the spool writes one ``sent_marks``
row per run of consecutive ids (one row for a batch in id order; more where requests
interleave, by key or shard), without an fsync: a crash of the process keeps it, a power
cut may lose the last ones. An ack or dead-letter removes the marks within its runs of
ids, and marks below the queue's oldest record go with them; a retry keeps them (its
request may have arrived), so a record that failed alone in an answered request counts
too: the count is what may have arrived twice, an upper bound but for a power cut. At
open, the pending records that a mark covers are counted
(``resent_after_restart_count``: possible duplicates at the destination) and the marks
are cleared.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence

from edge_agent.spool.queues import Delta, Queues
from edge_agent.spool.stats import insert_event

log = logging.getLogger(__name__)


def runs(ids: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(first, last) of each run of consecutive ids, in order."""
    ordered = sorted(ids)
    if not ordered:
        return
    first = last = ordered[0]
    for record_id in ordered[1:]:
        if record_id != last + 1:
            yield first, last
            first = record_id
        last = record_id
    yield first, last


_DELETE_COVERED = "DELETE FROM sent_marks WHERE queue_id = ? AND first_id >= ? AND last_id <= ?"


def mark(conn: sqlite3.Connection, queue_id: int, ids: Sequence[int]) -> None:
    """These records are about to be sent (inside the caller's transaction); the marks
    of their earlier attempts make way, so a retried batch keeps one set of rows."""
    rows = [(queue_id, first, last) for first, last in runs(ids)]
    conn.executemany(_DELETE_COVERED, rows)
    conn.executemany("INSERT INTO sent_marks (queue_id, first_id, last_id) VALUES (?, ?, ?)", rows)


def clear_settled(conn: sqlite3.Connection, queue_id: int, ids: Sequence[int]) -> None:
    """These records were acked or dead-lettered (inside that transaction): forget the
    marks within their runs of ids (not those of other requests between them), and
    every mark below the queue's oldest record."""
    conn.executemany(_DELETE_COVERED, [(queue_id, first, last) for first, last in runs(ids)])
    conn.execute(
        "DELETE FROM sent_marks WHERE queue_id = ? AND last_id <"
        " (SELECT coalesce(min(id), 9223372036854775807) FROM records WHERE queue_id = ?)",
        (queue_id, queue_id),
    )


def count_and_clear(conn: sqlite3.Connection, queue_id: int | None = None) -> dict[int, int]:
    """Inside a transaction: the pending records per queue id (of every queue, or of
    ``queue_id``) that were sent and not confirmed by the uploader that sent them; their
    marks are cleared."""
    where, params = ("", ()) if queue_id is None else (" WHERE m.queue_id = ?", (queue_id,))
    counts = dict(
        conn.execute(
            "SELECT m.queue_id, count(DISTINCT r.id) FROM sent_marks m"
            " JOIN records r ON r.queue_id = m.queue_id AND r.id BETWEEN m.first_id AND m.last_id"
            f"{where} GROUP BY m.queue_id",
            params,
        ).fetchall()
    )
    conn.execute(f"DELETE FROM sent_marks{where.replace('m.', '')}", params)
    return {int(queue_id): int(count) for queue_id, count in counts.items() if count}


def count_after_restart(
    conn: sqlite3.Connection, queues: Queues, now_ms: int, queue: str | None = None
) -> Callable[[], None]:
    """At open, inside a transaction: count the records the last run sent and did not
    see confirmed (they go out again: possible duplicates) into each queue's
    ``resent_after_restart_count``, with an event; returns the in-memory update.
    ``queue``: only that queue's, once its uploader stopped (a reload restarted it)."""
    counts = count_and_clear(conn, None if queue is None else queues[queue].id)
    by_id = {state.id: state for state in queues}
    deltas = {
        by_id[queue_id].name: Delta(resent_after_restart_count=count)
        for queue_id, count in counts.items()
        if queue_id in by_id
    }
    total = sum(counts.values())
    if total:
        sender = "the last run" if queue is None else f"sink {queue}'s stopped uploader"
        message = (
            f"{total} records {sender} sent without seeing them confirmed are sent "
            "again (possible duplicates at the destination)"
        )
        log.warning("%s", message)
        insert_event(conn, now_ms, "warning", "resent_after_restart", message)
    return queues.commit(conn, deltas, {name: queues[name] for name in deltas})
