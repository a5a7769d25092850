"""A forwarder's window: the records it holds leased from the spool, in spool order.

A few of them have more to say: on the wire (not candidates; in ordered mode they block
their keys), or, in ordered mode, waiting for a retry with how often they failed here.
The window is bounded in records and bytes; it is refilled a request's share at a time.
"""

from __future__ import annotations

import itertools

from edge_agent.records import RECORD_ID, RECORD_PAYLOAD, LeasedRecord
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

    def drop(self, records: list[LeasedRecord]) -> None:
        """Settled: out of the window."""
        ids = list(map(RECORD_ID, records))
        removed = filter(None, map(self.records.pop, ids, itertools.repeat(None)))
        self.size -= sum(map(len, map(RECORD_PAYLOAD, removed)))
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
            return list(map(records.__getitem__, ready)), None
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
        return candidates, next_due
