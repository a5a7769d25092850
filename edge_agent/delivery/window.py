"""A forwarder's window: the records it holds leased from the spool, in spool order.

A few of them have more to say: on the wire (not candidates; in ordered mode they block
their keys), or, in ordered mode, waiting for a retry with how often they failed here.
The window is bounded in records and bytes; it is refilled a request's share at a time.

A record whose request carries its bytes in another form (inside an aggregate, or with
a delimiter appended) is held without its payload (``elide``) until it settles: the
window's bytes still count it. Should it be packed again (its request failed as a whole,
or is split up to find a record to blame), its payload is read from the spool again
(``restore``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from edge_agent.records import RECORD_ID, RECORD_PAYLOAD, LeasedRecord, as_leased_record
from edge_agent.spool.store import Spool


class LeaseWindow:
    def __init__(
        self,
        spool: Spool,
        queue: str,
        *,
        max_records: int,
        max_bytes: int,
        with_meta: bool = False,
    ) -> None:
        self._spool = spool
        self._queue = queue
        self._with_meta = with_meta  # the records' meta too (an object's content type)
        self.max_records = max_records
        self.max_bytes = max_bytes
        #: Leased records by id, in spool order.
        self.records: dict[int, LeasedRecord] = {}
        #: Payload bytes of ``records``.
        self.size = 0
        #: Ids of records on the wire.
        self.in_flight: set[int] = set()
        #: Ordered mode: ids waiting for a retry, and when each is due (clock seconds)...
        self.due: dict[int, float] = {}
        #: ...and how often each failed while held here.
        self.failures: dict[int, int] = {}
        #: Ids of records held without their payload, with the payload's size.
        self.elided: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def full(self) -> bool:
        return len(self.records) >= self.max_records or self.size >= self.max_bytes

    def refill(self, shares: int, *, any_room: bool = False) -> bool:
        """Lease more records when one of ``shares`` parts of the window is free (or,
        with ``any_room``, when any of it is); True if something was leased."""
        room_records = self.max_records - len(self.records)
        room_bytes = self.max_bytes - self.size
        if any_room:
            if room_records <= 0 or room_bytes <= 0:
                return False
        elif room_records < self.max_records // shares or room_bytes < self.max_bytes // shares:
            return False
        count, size = self._spool.pending(self._queue)
        if count and size:  # fetch about what fits the bytes, not rows to throw away
            average = size / count
            room_records = min(room_records, int(room_bytes / average * 1.1) + 16)
        leased = self._spool.lease(
            self._queue, max_records=room_records, max_bytes=room_bytes, with_meta=self._with_meta
        )
        self.records.update(zip(map(RECORD_ID, leased), leased, strict=True))
        self.size += sum(map(len, map(RECORD_PAYLOAD, leased)))
        return bool(leased)

    def drop(self, records: Sequence[LeasedRecord]) -> None:
        """Settled: out of the window."""
        ids = list(map(RECORD_ID, records))
        removed = filter(None, map(self.records.pop, ids, itertools.repeat(None)))
        self.size -= sum(map(len, map(RECORD_PAYLOAD, removed)))
        if self.elided:
            self.size -= sum(map(self.elided.pop, ids, itertools.repeat(0)))
        if self.due:
            for record_id in ids:
                self.due.pop(record_id, None)
                self.failures.pop(record_id, None)

    def clear(self) -> None:
        self.records.clear()
        self.size = 0
        self.in_flight.clear()
        self.due.clear()
        self.failures.clear()
        self.elided.clear()

    def size_of(self, records: Sequence[LeasedRecord]) -> int:
        """Payload bytes of these records of the window, elided ones included."""
        size = sum(map(len, map(RECORD_PAYLOAD, records)))
        if self.elided:
            size += sum(map(self.elided.get, map(RECORD_ID, records), itertools.repeat(0)))
        return size

    def elide(self, records: Sequence[LeasedRecord]) -> list[LeasedRecord]:
        """These records of the window without their payloads, held so from now on."""
        if not records:
            return []
        ids, queues, keys, captured, payloads, attempts, metas = zip(*records, strict=True)
        bare = list(
            map(
                as_leased_record,
                zip(
                    ids, queues, keys, captured, itertools.repeat(b""), attempts, metas,
                    strict=False,
                ),
            )
        )  # fmt: skip
        self.elided.update(zip(ids, map(len, payloads), strict=True))
        self.records.update(zip(ids, bare, strict=True))
        return bare

    def restore(self, records: list[LeasedRecord]) -> list[LeasedRecord]:
        """``records`` of the window with their payloads: an elided one's is read from
        the spool again. One the spool no longer holds (eviction took it while it was on
        the wire) leaves the window and is handed back, which forgets it."""
        elided = self.elided
        if not elided or elided.keys().isdisjoint(map(RECORD_ID, records)):
            return records
        found = self._spool.payloads(self._queue, [r.id for r in records if r.id in elided])
        restored: list[LeasedRecord] = []
        gone: list[LeasedRecord] = []
        for record in records:
            if record.id not in elided:
                restored.append(record)
                continue
            payload = found.get(record.id)
            if payload is None:
                gone.append(record)
                continue
            del elided[record.id]
            whole = self.records[record.id] = record._replace(payload=payload)
            restored.append(whole)
        if gone:
            self.drop(gone)
            self._spool.release(gone)
        return restored

    def hold_for_retry(self, records: list[LeasedRecord], due: float) -> None:
        """Ordered mode: failed records stay, blocking their keys until ``due``."""
        for record in records:
            self.due[record.id] = due
            self.failures[record.id] = self.failures.get(record.id, 0) + 1

    def candidates(self, now: float, *, ordered: bool) -> tuple[list[LeasedRecord], float | None]:
        """Due records in spool order (per-key prefixes in ordered mode), and when the
        next record falls due."""
        in_flight, due = self.in_flight, self.due
        if not due and not (ordered and in_flight):  # the common case
            records = self.records
            ready = itertools.filterfalse(in_flight.__contains__, records)
            return self.restore(list(map(records.__getitem__, ready))), None
        blocked: set[str] = set()
        candidates: list[LeasedRecord] = []
        next_due: float | None = None
        for record_id, record in self.records.items():
            if record_id in in_flight:
                if ordered:
                    blocked.add(record.partition_key)
                continue
            at = due.get(record_id)
            if at is not None and at > now:
                next_due = at if next_due is None else min(next_due, at)
                if ordered:
                    blocked.add(record.partition_key)
                continue
            if ordered and record.partition_key in blocked:
                continue
            candidates.append(record)
        return self.restore(candidates), next_due
