"""Settling leased records: ack (delete), retry (due again later, one more attempt),
release (handed back untouched) or dead-letter (moved with a reason).

``write`` changes the rows inside the caller's transaction and returns the counter
changes; ``forget`` updates the leases once that committed. A release writes nothing:
``hand_back`` alone. Records are handled a queue at a time and ``ID_CHUNK`` ids per
statement, never a statement per record. Settling needs a record's id and queue only
(the leases know each held record's size): never its payload.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Literal

from edge_agent.records import RECORD_ID, RECORD_QUEUE, LeasedRecord
from edge_agent.spool import sent_marks
from edge_agent.spool.dead_letters import move_from_records
from edge_agent.spool.id_lists import id_list
from edge_agent.spool.leases import ID_CHUNK
from edge_agent.spool.queues import Delta, Queues

How = Literal["ack", "release", "retry", "dead_letter"]


def by_queue(records: list[LeasedRecord]) -> dict[str, list[int]]:
    """Record ids per queue, in order (an uploader's batch is nearly always of one queue)."""
    queues = set(map(RECORD_QUEUE, records))
    if len(queues) == 1:
        return {queues.pop(): list(map(RECORD_ID, records))}
    grouped: dict[str, list[int]] = defaultdict(list)
    for record in records:
        grouped[record.queue].append(record.id)
    return grouped


def small_parts(grouped: Mapping[str, list[int]], size: int) -> list[dict[str, list[int]]]:
    """The ids in parts of at most ``size``, a queue at a time."""
    return [
        {name: ids[start : start + size]}
        for name, ids in grouped.items()
        for start in range(0, len(ids), size)
    ]


def hand_back(queues: Queues, grouped: Mapping[str, list[int]], due_ms: int) -> int:
    """Held no longer, due again at ``due_ms``; returns how many were held."""
    done = 0
    for name, ids in grouped.items():
        state = queues.get(name)
        if state is not None:
            done += state.leases.hand_back(ids, due_ms)
    return done


def write(
    conn: sqlite3.Connection,
    queues: Queues,
    grouped: Mapping[str, list[int]],
    how: Literal["ack", "retry", "dead_letter"],
    *,
    now: int,
    at_ms: int = 0,
    reason: str = "",
) -> tuple[int, Callable[[], None]]:
    """Change the rows of settled records, their queues' counters and (acked or dead,
    no longer on the network) their sent marks. Returns how many were still in the
    spool and the in-memory update to run once committed."""
    done = 0
    deltas: dict[str, Delta] = defaultdict(Delta)
    for name, queued in grouped.items():
        delta = deltas[name]
        state = queues.get(name)
        held = state.leases.held if state is not None else None
        for start in range(0, len(queued), ID_CHUNK):
            ids = queued[start : start + ID_CHUNK]
            marks, params = id_list(ids)
            if how == "retry":
                retried = conn.execute(
                    "UPDATE records SET attempts = attempts + 1, next_attempt_ms = ?"
                    f" WHERE id IN ({marks})",
                    (at_ms, *params),
                ).rowcount
                delta.retried_count += retried
                done += retried
                continue
            if how == "dead_letter":
                conn.execute(move_from_records(len(params)), (reason, now, *params))
            if held is not None and all(map(held.__contains__, ids)):
                # Held records are all still there: expiry never deletes them, and an
                # eviction takes them out of ``held`` under the lock of its commit.
                conn.execute(f"DELETE FROM records WHERE id IN ({marks})", params)
                count, size = len(ids), sum(map(held.__getitem__, ids))
            else:  # only the rows still there count
                sizes = conn.execute(
                    f"DELETE FROM records WHERE id IN ({marks}) RETURNING size", params
                ).fetchall()
                count, size = len(sizes), sum(size for (size,) in sizes)
            delta.pending_count -= count
            delta.pending_bytes -= size
            if how == "ack":
                delta.acked_count += count
                delta.acked_bytes += size
            else:
                delta.dead_count += count
            done += count
        if how != "retry" and state is not None:
            sent_marks.clear_settled(conn, state.id, queued)
    apply = queues.commit(conn, deltas, {name: queues[name] for name in deltas})
    return done, apply


def forget(queues: Queues, grouped: Mapping[str, list[int]], how: How, *, at_ms: int) -> None:
    """Once committed: settled in any way, the records are no longer held; retried
    ones are due again at ``at_ms``."""
    for name, ids in grouped.items():
        state = queues.get(name)
        if state is None:
            continue
        if how == "retry":
            state.leases.hand_back(ids, at_ms)
        else:
            state.leases.forget(ids)
