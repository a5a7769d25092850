"""Leases: which records of a queue uploaders hold, kept in memory, never in the file.

Per queue (``QueueLeases``): the ids uploaders hold, each with its payload bytes (so that
settling a record needs its id and queue only: an uploader may let go of the payload of a
record on the wire, and re-read it from the spool if it has to send it again), a *floor*
such that every record with an id up to it was leased since the spool was opened, and
the ids at or below the floor that were handed back (retry, release) or skipped by
``lease_newest``, each with the time it is due again. Leasing new records is one index
range read above the floor and no write; a crash loses the leases, and at the next open
every record is pending again (restart is replay).

A lease row has ``LeasedRecord``'s field order, so the ``RECORD_*`` getters of
edge_agent.records read it as well: a whole batch without a Python call per record.
"""

from __future__ import annotations

import bisect
import itertools
import sqlite3
import sys
from collections.abc import Iterable, Sequence

from edge_agent.records import (
    RECORD_CAPTURED_AT,
    RECORD_ID,
    RECORD_PAYLOAD,
    LeasedRecord,
    as_leased_record,
)
from edge_agent.spool.blobs import PAYLOAD, read_payloads, unread_payloads
from edge_agent.spool.id_lists import id_list

#: A single record is leased whatever its size.
MAX_LEASE_BYTES = 2**62
#: Ids per statement when a batch of ids is read, acked, retried or dead-lettered.
ID_CHUNK = 500
#: Later than every capture time.
NO_TIME_LIMIT = 2**63 - 1

#: A leased row in LeasedRecord's field order. The queue's place holds 0 (a shared
#: object): ``take`` puts the queue's name there, one str for every record, not one each.
#: A large payload is selected as NULL and read by blob (``blobs.read_payloads``).
_LEASE_COLUMNS = f"id, 0, partition_key, captured_at_ms, {PAYLOAD}, attempts, NULL"
_LEASE_COLUMNS_WITH_META = f"id, 0, partition_key, captured_at_ms, {PAYLOAD}, attempts, meta"

Row = tuple[object, ...]


class QueueLeases:
    """The leases of one queue. Not thread-safe: the spool calls it under its lock, and
    the methods that read take the spool's connection."""

    __slots__ = ("floor", "held", "held_bytes", "name", "queue_id", "returned", "taken_back")

    def __init__(self, queue_id: int, name: str) -> None:
        self.queue_id = queue_id
        self.name = name
        #: Ids an uploader holds, each with its payload bytes, and their total (pending,
        #: not evictable).
        self.held: dict[int, int] = {}
        self.held_bytes = 0
        #: Every record with an id up to here was leased since the spool was opened:
        #: the next lease of new records starts above it.
        self.floor = 0
        #: Ids at or below the floor handed back (retry, release) or skipped by
        #: ``lease_newest``, and when each is due (ms).
        self.returned: dict[int, int] = {}
        #: Held ids that eviction deleted: their uploader's settle is a no-op for them.
        self.taken_back: set[int] = set()

    # ------------------------------------------------------------------ leasing

    def lease(
        self,
        conn: sqlite3.Connection,
        *,
        max_records: int,
        max_bytes: int,
        now: int,
        with_meta: bool = False,
        captured_before_ms: int = NO_TIME_LIMIT,
        read_large: bool = True,
    ) -> list[LeasedRecord]:
        """The oldest due records, within count and bytes (at least one): handed-back
        ones whose time has come first, then records not leased since open. Without
        ``read_large``, payloads read by blob are left in the spool (empty)."""
        rows, gone = self._lease_rows(conn, max_records, now, with_meta, captured_before_ms)
        return self._taken(conn, rows, gone, max_bytes, read_large)

    def lease_newest(
        self,
        conn: sqlite3.Connection,
        *,
        captured_after_ms: int = -1,
        with_meta: bool = False,
        read_large: bool = True,
    ) -> LeasedRecord | None:
        """The newest record no uploader holds, if captured after ``captured_after_ms``;
        the fresh records below it are handed back, due now."""
        columns = _LEASE_COLUMNS_WITH_META if with_meta else _LEASE_COLUMNS
        row = conn.execute(
            f"SELECT {columns} FROM records WHERE queue_id = ? AND id > ? ORDER BY id DESC LIMIT 1",
            (self.queue_id, self.floor),
        ).fetchone()
        if row is not None and RECORD_CAPTURED_AT(row) > captured_after_ms:
            skipped = conn.execute(  # the fresh records below it
                "SELECT id FROM records WHERE queue_id = ? AND id > ? AND id < ?",
                (self.queue_id, self.floor, RECORD_ID(row)),
            ).fetchall()
            self.returned.update((record_id, 0) for (record_id,) in skipped)
            rows, gone = [row], list[int]()
        elif row is not None:  # the newest of all is not new enough
            rows, gone = list[Row](), list[int]()
        else:  # nothing new since the last lease: the newest handed back
            rows, gone = self._newest_returned(conn, columns, captured_after_ms)
        leased = self._taken(conn, rows, gone, MAX_LEASE_BYTES, read_large)
        return leased[0] if leased else None

    def _taken(
        self,
        conn: sqlite3.Connection,
        rows: list[Row],
        gone: list[int],
        max_bytes: int,
        read_large: bool,
    ) -> list[LeasedRecord]:
        """``take`` the rows with their payloads read, or with large ones left unread."""
        if read_large:
            rows, deleted = read_payloads(conn, rows)
            return self.take(rows, [*gone, *deleted], max_bytes)
        rows, sizes, deleted = unread_payloads(conn, rows)
        return self.take(rows, [*gone, *deleted], max_bytes, sizes)

    def newest_is_after(self, conn: sqlite3.Connection, captured_ms: int) -> bool:
        """Whether the queue's newest record (held or not) was captured after then."""
        row = conn.execute(
            "SELECT captured_at_ms FROM records WHERE queue_id = ? ORDER BY id DESC LIMIT 1",
            (self.queue_id,),
        ).fetchone()
        return row is not None and int(row[0]) > captured_ms

    def _newest_returned(
        self, conn: sqlite3.Connection, columns: str, captured_after_ms: int
    ) -> tuple[list[Row], list[int]]:
        gone: list[int] = []
        for record_id in sorted(self.returned, reverse=True):
            row = conn.execute(
                f"SELECT {columns} FROM records WHERE queue_id = ? AND id = ?",
                (self.queue_id, record_id),
            ).fetchone()
            if row is None:
                gone.append(record_id)
                continue
            return ([row] if RECORD_CAPTURED_AT(row) > captured_after_ms else []), gone
        return [], gone

    def _lease_rows(
        self,
        conn: sqlite3.Connection,
        max_records: int,
        now: int,
        with_meta: bool,
        captured_before_ms: int,
    ) -> tuple[list[Row], list[int]]:
        """Rows to lease, oldest first: handed-back records that are due, then records
        never leased since open (up to the first captured from ``captured_before_ms``
        on: the fresh ones stay a run above the floor); and the handed-back ids that
        are no longer there."""
        rows: list[Row] = []
        gone: list[int] = []
        columns = _LEASE_COLUMNS_WITH_META if with_meta else _LEASE_COLUMNS
        if self.returned:
            due = sorted(i for i, at in self.returned.items() if at <= now)
            start = 0
            while start < len(due) and len(rows) < max_records:  # some may be gone
                chunk = due[start : start + min(ID_CHUNK, max_records - len(rows))]
                start += len(chunk)
                marks, params = id_list(chunk)
                found = conn.execute(
                    f"SELECT {columns} FROM records WHERE queue_id = ?"
                    f" AND id IN ({marks}) ORDER BY id",
                    (self.queue_id, *params),
                ).fetchall()
                if len(found) < len(chunk):
                    present = set(map(RECORD_ID, found))
                    gone += [i for i in chunk if i not in present]
                rows += [row for row in found if RECORD_CAPTURED_AT(row) < captured_before_ms]
        if len(rows) < max_records:
            fresh = conn.execute(
                f"SELECT {columns} FROM records WHERE queue_id = ? AND id > ? ORDER BY id LIMIT ?",
                (self.queue_id, self.floor, max_records - len(rows)),
            ).fetchall()
            rows += itertools.takewhile(
                lambda row: RECORD_CAPTURED_AT(row) < captured_before_ms, fresh
            )
        return rows, gone

    # ------------------------------------------------------------------ bookkeeping

    def take(
        self,
        rows: Sequence[Row],
        gone: Sequence[int],
        max_bytes: int,
        sizes: Sequence[int] | None = None,
    ) -> list[LeasedRecord]:
        """Hold ``rows`` (the first ones within ``max_bytes``, at least one) for a
        uploader; forget handed-back ids that are ``gone``. ``sizes``: the rows' payload
        sizes where their payloads are not all read."""
        for record_id in gone:  # handed back, then evicted or expired
            self.returned.pop(record_id, None)
        if not rows:
            return []
        if sizes is None:
            sizes = list(map(len, map(RECORD_PAYLOAD, rows)))
        running = list(itertools.accumulate(sizes))
        taken = max(1, bisect.bisect_right(running, max_bytes))
        leased = self._records(rows[:taken])
        ids = list(map(RECORD_ID, leased))
        if self.returned:
            for record_id in ids:
                if record_id <= self.floor:
                    self.returned.pop(record_id, None)
        self.floor = max(self.floor, ids[-1])
        self.held.update(zip(ids, sizes, strict=False))  # sizes: every row, ids: taken
        self.held_bytes += running[taken - 1]
        return leased

    def _records(self, rows: Sequence[Row]) -> list[LeasedRecord]:
        """``rows`` as records that share what they can: the queue's name, and one str
        per distinct partition key (a window holds thousands of records of a few keys;
        a str each was a quarter of a small record's memory)."""
        ids, _, keys, captured, payloads, attempts, metas = zip(*rows, strict=True)
        try:
            shared_keys: Iterable[object] = list(map(sys.intern, keys))
        except TypeError:  # not text: a spool written by something else; left as it is
            shared_keys = keys
        queues = itertools.repeat(self.name, len(ids))
        columns = zip(ids, queues, shared_keys, captured, payloads, attempts, metas, strict=True)
        return list(map(as_leased_record, columns))

    def payloads(self, conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, bytes]:
        """The payloads of these records that are still held (an uploader let go of them
        while they were on the wire, and packs them again); one eviction took back is
        not among them."""
        held = [record_id for record_id in ids if record_id in self.held]
        found: dict[int, bytes] = {}
        for start in range(0, len(held), ID_CHUNK):
            marks, params = id_list(held[start : start + ID_CHUNK])
            found.update(
                conn.execute(
                    f"SELECT id, payload FROM records WHERE queue_id = ? AND id IN ({marks})",
                    (self.queue_id, *params),
                ).fetchall()
            )
        return found

    def forget(self, ids: Sequence[int]) -> int:
        """No longer held by an uploader (settled); returns how many were."""
        held = self.held
        before = len(held)
        if self.taken_back:  # their bytes left held_bytes when they were taken back
            self.taken_back.difference_update(ids)
        self.held_bytes = max(0, self.held_bytes - sum(map(held.pop, ids, itertools.repeat(0))))
        return before - len(held)

    def newest_captured_at(self, conn: sqlite3.Connection) -> int | None:
        """The capture time of the newest record the queue holds, held or not."""
        row = conn.execute(
            "SELECT max(captured_at_ms) FROM records WHERE queue_id = ?", (self.queue_id,)
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def take_back(self, record_id: int, size: int) -> None:
        """Eviction deleted this held record (once that committed)."""
        if self.held.pop(record_id, None) is not None:
            self.held_bytes = max(0, self.held_bytes - size)
            self.taken_back.add(record_id)

    def hand_back(self, ids: Sequence[int], due_ms: int) -> int:
        """Held no longer, and due again at ``due_ms``; returns how many were held."""
        held = self.held
        count = 0
        for record_id in ids:
            if record_id in held:
                self.returned[record_id] = due_ms
                count += 1
        self.forget(ids)
        return count

    def lower_floor(self, top: int) -> None:
        """``top`` is the highest id in ``records``, and new rows get ids above it.
        Lowering the floor to it exposes no held or handed-back record (they are all in
        the table, so at or below it) and every new one; a handed-back id above it is
        gone (evicted) and may be reused, so it is dropped."""
        self.floor = min(self.floor, top)
        for record_id in [i for i in self.returned if i > top]:
            del self.returned[record_id]
