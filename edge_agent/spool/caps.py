"""Caps: each queue's policy, the spool's overall byte and age caps, eviction, expiry and
the pressure warnings before anything is dropped.

A queue over its byte cap either evicts its oldest records (``drop_oldest``) or refuses
the new ones (``reject_new``); the overall cap evicts from ``drop_oldest`` queues, oldest
first. Eviction goes in capture order even through records an uploader holds (a request
that keeps failing must not make younger records go first): those are *taken back*, and
whatever their request ends in changes nothing more. Age caps expire old records, never
held ones. Every drop is counted in the caller's ``Delta``s, in the caller's transaction.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from edge_agent.records import Overflow
from edge_agent.spool.queues import Delta, QueueState

log = logging.getLogger(__name__)


#: A queue (or the spool) past this share of its byte cap is warned about, once...
PRESSURE_WARN = 0.8
#: ...and again only after it fell below this share.
PRESSURE_CLEAR = 0.7
#: Records fetched per round while evicting or expiring.
EVICT_CHUNK = 512
#: The name the overall cap goes by in warnings.
WHOLE_SPOOL = "the spool"


@dataclass(frozen=True)
class QueuePolicy:
    """Caps of one queue. ``None`` means no cap of that kind."""

    max_bytes: int | None = None
    max_age_s: float | None = None
    overflow: Overflow = "drop_oldest"
    max_record_bytes: int | None = None


class TakenBack(NamedTuple):
    """A held record that eviction deleted."""

    state: QueueState
    record_id: int
    size: int


#: The policy of a queue the configuration says nothing about: no caps.
NO_CAPS = QueuePolicy()


class Caps:
    """The caps of one spool, and which of them were warned about (not thread-safe: the
    spool calls it under its lock, or after a commit from the appending thread)."""

    def __init__(
        self,
        policies: Mapping[str, QueuePolicy],
        max_bytes: int | None = None,
        max_age_s: float | None = None,
    ) -> None:
        self._warned: set[str] = set()  # queues (and WHOLE_SPOOL) warned about
        self.configure(policies, max_bytes, max_age_s)

    def configure(
        self,
        policies: Mapping[str, QueuePolicy],
        max_bytes: int | None = None,
        max_age_s: float | None = None,
    ) -> None:
        """Take new caps (at start, and on a reload); each is warned about afresh."""
        self._policies = dict(policies)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._warned.clear()

    def policy(self, queue: str) -> QueuePolicy:
        return self._policies.get(queue, NO_CAPS)

    def max_age(self, queue: str) -> float | None:
        return self.policy(queue).max_age_s or self.max_age_s

    # ------------------------------------------------------------------ bytes

    def would_overflow(
        self,
        policy: QueuePolicy,
        queue_bytes: int,
        total_bytes: int,
        evictable_bytes: int,
        size: int,
    ) -> bool:
        """Whether ``size`` more bytes break a ``reject_new`` queue's cap, or the overall
        cap once everything evictable is gone."""
        if policy.max_bytes is not None and queue_bytes + size > policy.max_bytes:
            return True
        return self.max_bytes is not None and (
            total_bytes - evictable_bytes + size > self.max_bytes
        )

    def evictable_bytes(self, queues: Iterable[QueueState]) -> int:
        """Bytes the overall cap may evict: everything of ``drop_oldest`` queues."""
        return sum(
            state.pending_bytes
            for state in queues
            if self.policy(state.name).overflow == "drop_oldest"
        )

    def enforce(
        self,
        conn: sqlite3.Connection,
        registered: Iterable[QueueState],
        states: dict[str, QueueState],
        deltas: dict[str, Delta],
        *,
        projected: dict[str, int],
        projected_total: int,
        taken_back: list[TakenBack],
    ) -> int:
        """After an append: evict from ``drop_oldest`` queues over their cap, then from
        all of them while the spool is over its cap. ``states`` (the queues appended to)
        gains every queue evicted from; ``taken_back`` gains the held records evicted
        (for ``QueueLeases.take_back`` once committed). Returns how many records were
        evicted."""
        evicted = 0
        for name, queue_bytes in projected.items():
            policy = self.policy(name)
            if (
                policy.overflow == "drop_oldest"
                and policy.max_bytes is not None
                and queue_bytes > policy.max_bytes
            ):
                count, freed = _evict(
                    conn, [states[name]], queue_bytes - policy.max_bytes, deltas, taken_back
                )
                evicted += count
                projected_total -= freed
        if self.max_bytes is not None and projected_total > self.max_bytes:
            for state in registered:
                states.setdefault(state.name, state)
            droppable = [
                state
                for name, state in states.items()
                if self.policy(name).overflow == "drop_oldest"
            ]
            if droppable:
                count, _ = _evict(
                    conn, droppable, projected_total - self.max_bytes, deltas, taken_back
                )
                evicted += count
        return evicted

    # ------------------------------------------------------------------ age

    def expire(self, conn: sqlite3.Connection, state: QueueState, cutoff_ms: int) -> Delta:
        """Delete the queue's records captured before ``cutoff_ms`` that no uploader holds,
        oldest first, up to the first newer one."""
        delta = Delta()
        held = state.leases.held
        after = 0
        while True:
            rows = conn.execute(
                "SELECT id, size, captured_at_ms FROM records"
                " WHERE queue_id = ? AND id > ? ORDER BY id LIMIT ?",
                (state.id, after, EVICT_CHUNK),
            ).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            free = [row for row in rows if row[0] not in held]
            old = [(rid, size) for rid, size, captured in free if captured < cutoff_ms]
            if old:
                conn.executemany("DELETE FROM records WHERE id = ?", [(r,) for r, _ in old])
                delta.pending_count -= len(old)
                delta.pending_bytes -= sum(size for _, size in old)
                delta.expired_count += len(old)
            if len(old) < len(free) or len(rows) < EVICT_CHUNK:
                break
        return delta

    # ------------------------------------------------------------------ pressure

    def pressure(
        self, queue_bytes: Mapping[str, int], total_bytes: int, added: Mapping[str, int]
    ) -> list[str]:
        """After an append: a warning for each queue (or the whole spool) that passed
        PRESSURE_WARN of its cap, once, before anything is dropped; again only once it
        was below PRESSURE_CLEAR (as seen by an append: the level before it)."""
        levels = [
            (name, size, self.policy(name).max_bytes, added.get(name, 0))
            for name, size in queue_bytes.items()
        ]
        levels.append((WHOLE_SPOOL, total_bytes, self.max_bytes, sum(added.values())))
        warnings = []
        for name, size, cap, grew in levels:
            if not cap:
                continue
            if (size - grew) / cap < PRESSURE_CLEAR:
                self._warned.discard(name)
            ratio = size / cap
            if ratio >= PRESSURE_WARN and name not in self._warned:
                self._warned.add(name)
                policy = "" if name == WHOLE_SPOOL else f" ({self.policy(name).overflow})"
                warnings.append(
                    f"{name} is at {ratio:.0%} of its cap ({size} of {cap} bytes){policy}: "
                    "the uplink is not keeping up; at the cap the oldest records are dropped"
                )
        return warnings


def _evict(
    conn: sqlite3.Connection,
    queues: list[QueueState],
    need_bytes: int,
    deltas: dict[str, Delta],
    taken_back: list[TakenBack],
) -> tuple[int, int]:
    """Delete the oldest records of these queues, held or not, until ``need_bytes`` are
    freed; returns (count, bytes)."""
    by_id = {state.id: state for state in queues}
    marks = ",".join("?" * len(by_id))
    freed = 0
    count = 0
    after = 0
    while freed < need_bytes:
        rows = conn.execute(
            f"SELECT id, queue_id, size FROM records WHERE queue_id IN ({marks})"
            " AND id > ? ORDER BY id LIMIT ?",
            (*by_id, after, EVICT_CHUNK),
        ).fetchall()
        if not rows:
            break
        after = rows[-1][0]
        victims = []
        for record_id, queue_id, size in rows:
            if freed >= need_bytes:
                break
            state = by_id[queue_id]
            if record_id in state.leases.held:
                taken_back.append(TakenBack(state, record_id, size))
            victims.append((record_id,))
            delta = deltas[state.name]
            delta.pending_count -= 1
            delta.pending_bytes -= size
            delta.dropped_count += 1
            delta.dropped_bytes += size
            freed += size
            count += 1
        conn.executemany("DELETE FROM records WHERE id = ?", victims)
    if count:
        log.warning("spool cap reached: dropped %d oldest records (%d bytes)", count, freed)
    return count, freed
