"""Dead letters: records that can never be delivered, kept with the reason.

A record goes to ``dead_letters`` at append (larger than its sink accepts) or when a
uploader dead-letters it; ``edge-agent spool dead-letters|export|requeue|purge`` list,
purge and requeue them here. The SQL that moves rows in lives here too.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.spool.queues import Delta, Queues

#: Rows of records refused at append: (queue_id, partition_key, captured_at_ms, size,
#: reason, dead_at_ms, meta, payload).
INSERT_AT_APPEND = (
    "INSERT INTO dead_letters (queue_id, partition_key, captured_at_ms, size,"
    " reason, dead_at_ms, meta, payload, attempts)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)"
)


def move_from_records(ids: int) -> str:
    """Copy ``ids`` records (parameters: reason, dead_at_ms, then the ids) into
    ``dead_letters``, one more attempt counted; the caller deletes them."""
    return (
        "INSERT INTO dead_letters (queue_id, partition_key, captured_at_ms,"
        " size, attempts, reason, dead_at_ms, meta, payload)"
        " SELECT queue_id, partition_key, captured_at_ms, size, attempts + 1,"
        f" ?, ?, meta, payload FROM records WHERE id IN ({','.join('?' * ids)}) ORDER BY id"
    )


@dataclass(frozen=True)
class DeadLetter:
    id: int
    queue: str
    partition_key: str
    captured_at_ms: int
    size: int
    attempts: int
    reason: str
    dead_at_ms: int
    meta: str | None
    payload: bytes


def list_dead_letters(
    conn: sqlite3.Connection, *, queue: str | None, after_id: int, limit: int
) -> list[DeadLetter]:
    """Dead letters oldest first, optionally of one queue, paged by id."""
    query = (
        "SELECT d.id, q.name, d.partition_key, d.captured_at_ms, d.size, d.attempts,"
        " d.reason, d.dead_at_ms, d.meta, d.payload"
        " FROM dead_letters d JOIN queues q ON q.id = d.queue_id WHERE d.id > ?"
    )
    params: list[object] = [after_id]
    if queue is not None:
        query += " AND q.name = ?"
        params.append(queue)
    query += " ORDER BY d.id LIMIT ?"
    params.append(limit)
    rows = conn.execute(query, params).fetchall()
    return [
        DeadLetter(rid, name, key, captured, size, attempts, reason, dead_at, meta, bytes(data))
        for rid, name, key, captured, size, attempts, reason, dead_at, meta, data in rows
    ]


def purge(conn: sqlite3.Connection, *, queue: str | None, ids: Sequence[int]) -> int:
    """Delete dead letters (all, of one queue, or by id); returns how many."""
    where, params = _filter(queue, ids)
    return conn.execute(f"DELETE FROM dead_letters{where}", params).rowcount


def requeue(
    conn: sqlite3.Connection, queues: Queues, *, queue: str | None, ids: Sequence[int]
) -> tuple[int, dict[str, Delta]]:
    """Move dead letters back to the end of their queues; returns how many, and the
    counter changes for the caller to commit."""
    where, params = _filter(queue, ids)
    moved = conn.execute(
        "SELECT id, queue_id, size FROM dead_letters" + where + " ORDER BY id", params
    ).fetchall()
    deltas: dict[str, Delta] = defaultdict(Delta)
    if not moved:
        return 0, deltas
    first_id = queues.keep_new_ids_above_floors(conn)
    last_id = None
    for dead_id, queue_id, size in moved:
        last_id = conn.execute(
            "INSERT INTO records (id, queue_id, partition_key, captured_at_ms, size, meta,"
            " payload) SELECT ?, queue_id, partition_key, captured_at_ms, size, meta,"
            " payload FROM dead_letters WHERE id = ?",
            (first_id, dead_id),  # NULL: SQLite's choice
        ).lastrowid
        first_id = None
        conn.execute("DELETE FROM dead_letters WHERE id = ?", (dead_id,))
        delta = deltas[queues.name_of(conn, queue_id)]
        delta.pending_count += 1
        delta.pending_bytes += size
    queues.remember_ids(conn, last_id)
    return len(moved), deltas


def _filter(queue: str | None, ids: Sequence[int]) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []
    if queue is not None:
        clauses.append("queue_id = (SELECT id FROM queues WHERE name = ?)")
        params.append(queue)
    if ids:
        clauses.append(f"id IN ({','.join('?' * len(ids))})")
        params.extend(ids)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
