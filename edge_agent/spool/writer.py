"""Appending: a whole batch in one transaction, with the caps applied, and the signal
that wakes idle uploaders once it committed.

``Writer.insert`` runs inside the spool's write transaction; what it changed in memory
(``Appended.apply``) runs only after the commit, and ``notify`` after that. The loop
over a batch does the per-record work only: size, policy checks and one row tuple;
rows are inserted up to 256 to a statement, and a large payload (a video fragment) is
written into its row by blob (``blobs``).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import NamedTuple

from edge_agent.records import AppendResult, Payload, Record, payload_bytes
from edge_agent.spool.blobs import BLOB_IO_BYTES, insert_row
from edge_agent.spool.caps import Caps, QueuePolicy, TakenBack
from edge_agent.spool.dead_letters import INSERT_AT_APPEND
from edge_agent.spool.queues import Delta, Queues, QueueState

log = logging.getLogger(__name__)

#: Rows per INSERT statement (6 parameters each; SQLite allows 32,766 per statement).
_INSERT_ROWS = 256
#: At most one log line per this many seconds about records dead-lettered at intake.
DEAD_LOG_INTERVAL_S = 10.0

#: The columns of a row inserted alone, but its payload (``blobs.insert_row``).
_ALONE_COLUMNS = "id, queue_id, partition_key, captured_at_ms, size, meta"

_RecordRow = tuple[int, str, int, int, str | None, Payload]
_DeadRow = tuple[int, str, int, int, str, int, str | None, bytes]


class Appended(NamedTuple):
    """What ``Writer.insert`` did, for after the commit."""

    result: AppendResult
    #: The in-memory counter update (see ``Queues.commit``).
    apply: Callable[[], None]
    #: Bytes per queue appended to, and in the whole spool, once appended.
    queue_bytes: dict[str, int]
    total_bytes: int
    #: Bytes stored per queue.
    added: dict[str, int]


class Writer:
    """Appends batches; counts them, so that an idle uploader can wait for the next one
    instead of polling the database."""

    def __init__(self, queues: Queues, caps: Caps) -> None:
        self._queues = queues
        self._caps = caps
        self._appended = threading.Condition(threading.Lock())
        self.generation = 0
        self._dead_logged_at = -DEAD_LOG_INTERVAL_S
        self._dead_unlogged = 0

    def log_dead_letters(self, count: int) -> None:
        """Records too large for their sink were dead-lettered at append: one line per
        DEAD_LOG_INTERVAL_S at most, counting what it sums up."""
        self._dead_unlogged += count
        now = time.monotonic()
        if now - self._dead_logged_at < DEAD_LOG_INTERVAL_S:
            return
        log.warning(
            "dead-lettered %d records at intake (larger than their sink accepts); "
            "see `edge-agent spool dead-letters`",
            self._dead_unlogged,
        )
        self._dead_logged_at = now
        self._dead_unlogged = 0

    def insert(self, conn: sqlite3.Connection, records: Sequence[Record], now: int) -> Appended:
        """Store a batch inside the caller's transaction, applying size limits and caps:
        records larger than their queue's ``max_record_bytes`` go to the dead letters;
        records refused by a ``reject_new`` cap are counted and not stored."""
        caps = self._caps
        queues = self._queues
        states: dict[str, QueueState] = {}
        deltas: dict[str, Delta] = defaultdict(Delta)
        projected: dict[str, int] = {}
        projected_total = queues.pending_bytes
        evictable_total = caps.evictable_bytes(queues)
        rows: list[_RecordRow] = []
        large: list[int] = []  # where in rows the payloads to write by blob are
        dead_rows: list[_DeadRow] = []
        policies: dict[str, QueuePolicy] = {}
        for record in records:
            state = states.get(record.queue)
            if state is None:
                state = states[record.queue] = queues.state_for(conn, record.queue)
                projected[record.queue] = state.pending_bytes
                policies[record.queue] = caps.policy(record.queue)
            policy = policies[record.queue]
            delta = deltas[record.queue]
            size = len(record.payload)
            if record.redelivered:
                delta.redelivered_count += 1
            if policy.max_record_bytes is not None and size > policy.max_record_bytes:
                reason = (
                    f"payload of {size} bytes exceeds the sink's limit of "
                    f"{policy.max_record_bytes} bytes"
                )
                dead_rows.append(
                    (
                        state.id,
                        record.partition_key,
                        record.captured_at_ms,
                        size,
                        reason,
                        now,
                        record.meta,
                        payload_bytes(record.payload),
                    )
                )
                delta.dead_count += 1
                continue
            if policy.overflow == "reject_new" and caps.would_overflow(
                policy, projected[record.queue], projected_total, evictable_total, size
            ):
                delta.rejected_count += 1
                delta.rejected_bytes += size
                continue
            payload = record.payload
            if size >= BLOB_IO_BYTES:
                large.append(len(rows))
            elif not isinstance(payload, bytes):
                payload = payload.joined()  # bound to the INSERT with the small ones
            rows.append(
                (state.id, record.partition_key, record.captured_at_ms, size, record.meta, payload)
            )
            projected[record.queue] += size
            projected_total += size
            if policy.overflow == "drop_oldest":
                evictable_total += size
            delta.pending_count += 1
            delta.pending_bytes += size
            delta.stored += 1
        if rows:
            last_id = _insert_records(conn, rows, large, queues.keep_new_ids_above_floors(conn))
            queues.remember_ids(conn, last_id)
        if dead_rows:
            conn.executemany(INSERT_AT_APPEND, dead_rows)
        taken_back: list[TakenBack] = []
        evicted = caps.enforce(
            conn,
            queues,
            states,
            deltas,
            projected=projected,
            projected_total=projected_total,
            taken_back=taken_back,
        )
        apply = queues.commit(conn, deltas, states)
        if taken_back:
            apply = _then_take_back(apply, taken_back)
        result = AppendResult(
            stored=sum(delta.stored for delta in deltas.values()),
            rejected=sum(delta.rejected_count for delta in deltas.values()),
            dead_lettered=sum(delta.dead_count for delta in deltas.values()),
            evicted=evicted,
        )
        added = {name: delta.pending_bytes for name, delta in deltas.items()}
        return Appended(result, apply, projected, projected_total, added)

    # ------------------------------------------------------------------ waiting

    def notify(self) -> None:
        """Records were appended (or the spool shuts down): wake every waiting uploader."""
        with self._appended:
            self.generation += 1
            self._appended.notify_all()

    def wait(self, seen_generation: int, timeout: float) -> bool:
        """Block until ``generation`` moved on from ``seen_generation`` (or the timeout
        passes); returns whether it did."""
        with self._appended:
            return self._appended.wait_for(lambda: self.generation != seen_generation, timeout)


def _then_take_back(apply: Callable[[], None], taken_back: list[TakenBack]) -> Callable[[], None]:
    """The counter update, then the held records eviction deleted let go."""

    def both() -> None:
        apply()
        for state, record_id, size in taken_back:
            state.leases.take_back(record_id, size)

    return both


@functools.lru_cache(maxsize=_INSERT_ROWS)
def _insert_statement(rows: int) -> str:
    return (
        "INSERT INTO records (queue_id, partition_key, captured_at_ms, size, meta, payload)"
        " VALUES " + ",".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    )


def _insert_records(
    conn: sqlite3.Connection,
    rows: list[_RecordRow],
    large: Sequence[int] = (),
    first_id: int | None = None,
) -> int | None:
    """Insert in order: one by one the rows at the indexes ``large`` (their payloads
    written by blob, ``blobs``) and the first row if it takes ``first_id`` (the others
    follow it; else SQLite chooses), the runs of rows between them with multi-row
    statements. Returns the last row's id."""
    alone = large if first_id is None else sorted({0, *large})
    last_id = None
    start = 0
    for index in [*alone, len(rows)]:
        if start < index:
            last_id = _insert_runs(conn, rows[start:index])
        if index < len(rows):
            *fields, payload = rows[index]
            row_id = first_id if index == 0 else None
            last_id = insert_row(conn, "records", _ALONE_COLUMNS, (row_id, *fields), payload)
        start = index + 1
    return last_id


def _insert_runs(conn: sqlite3.Connection, rows: list[_RecordRow]) -> int | None:
    """Insert with multi-row statements of 256, 128, ... 1 rows rather than one step per
    row (executemany steps, and trades the GIL, once per row)."""
    last_id = None
    most = min(_INSERT_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 6)
    start = 0
    while start < len(rows):
        # Chunks of a power of two rows: a handful of statement texts, whatever the batch
        # sizes (the connection caches each text it prepares, and a statement of hundreds
        # of rows is a large program: batches of every size from 1 to 300 had grown
        # SQLite's memory by 17 MiB).
        size = min(most, 1 << ((len(rows) - start).bit_length() - 1))
        chunk = rows[start : start + size]
        cursor = conn.execute(_insert_statement(size), [value for row in chunk for value in row])
        last_id = cursor.lastrowid
        start += size
    return last_id
