"""The spool: one SQLite file that holds everything between capture and confirmed delivery.

Sources append; senders lease, then ack, retry or dead-letter. Nothing else in the agent
runs SQL (the schema lives in spool_schema.py; docs/SPOOL.md documents the format).

Design, in brief:

* **WAL mode, group commit.** ``append`` takes a whole batch in one transaction. With
  ``durability = "full"`` (synchronous=FULL) a committed batch survives power loss; with
  ``"normal"`` it survives a crash of the process but maybe not of the machine.
* **Oldest first.** A record's id is its arrival order; a queue drains by id (a
  live-first video sink leases its newest record first, then the older ones by id).
* **Leases live in memory.** A leased record stays in ``records``; which records a
  sender holds, and which it handed back for a retry, is kept in this object, not
  written to the file: a lease costs one read and no write, and whatever a dead process
  had in flight is simply pending at the next open (restart is replay). Records a
  sender holds are never evicted or expired.
* **Counters live next to the data.** Per-queue pending/acked/dropped/... counts are
  updated in the same transaction as the rows they count, and recomputed from the rows
  at open, so ``edge-agent status`` reads them from another process without scanning.
* **Caps are enforced on append.** A queue over its byte cap either evicts its oldest
  records (``drop_oldest``) or refuses the new ones (``reject_new``); the overall cap
  evicts from ``drop_oldest`` queues, oldest first. Age caps expire old records on
  ``expire()``. Every drop is counted.
* **Bad files never crash-loop.** A file that is not a database or fails its integrity
  check is renamed ``<name>.corrupt-<UTC time>`` (with its -wal/-shm), a fresh spool is
  created, and the event is recorded in the new spool where status shows it.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import functools
import itertools
import json
import logging
import operator
import os
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from edge_agent.errors import SpoolBusy, SpoolCorrupt, SpoolError, SpoolFull
from edge_agent.records import AppendResult, LeasedRecord, Record
from edge_agent.spool.schema import migrate

log = logging.getLogger(__name__)

Overflow = Literal["drop_oldest", "reject_new"]

#: How many events (quarantines, recoveries, errors) the spool keeps for status.
MAX_EVENTS = 200
#: A queue (or the spool) past this share of its byte cap is warned about, once...
PRESSURE_WARN = 0.8
#: ...and again only after it fell below this share.
PRESSURE_CLEAR = 0.7
#: Ids per statement when a batch of ids is acked, retried or dead-lettered.
_ID_CHUNK = 500
#: Later than every capture time.
_NO_TIME_LIMIT = 2**63 - 1
#: A single record is leased whatever its size.
MAX_LEASE_BYTES = 2**62
#: Records fetched per round while evicting or expiring.
_EVICT_CHUNK = 512
#: How long a writer waits for another connection's write lock.
BUSY_TIMEOUT_MS = 5000

_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_IOERR = 10
_SQLITE_NOTADB = 26


@dataclass(frozen=True)
class QueuePolicy:
    """Caps of one queue. ``None`` means no cap of that kind."""

    max_bytes: int | None = None
    max_age_s: float | None = None
    overflow: Overflow = "drop_oldest"
    max_record_bytes: int | None = None


#: The policy of a queue the configuration says nothing about: no caps.
NO_CAPS = QueuePolicy()


@dataclass(frozen=True)
class QueueStats:
    name: str
    pending_count: int
    pending_bytes: int
    leased_count: int
    oldest_captured_at_ms: int | None
    acked_count: int
    acked_bytes: int
    retried_count: int
    dropped_count: int
    dropped_bytes: int
    expired_count: int
    rejected_count: int
    rejected_bytes: int
    dead_count: int
    dead_letters: int
    redelivered_count: int


@dataclass(frozen=True)
class SpoolEvent:
    at_ms: int
    level: str
    kind: str
    message: str


@dataclass(frozen=True)
class SpoolStats:
    path: str
    file_bytes: int
    schema_version: int
    queues: list[QueueStats]
    events: list[SpoolEvent]

    @property
    def pending_bytes(self) -> int:
        return sum(queue.pending_bytes for queue in self.queues)

    @property
    def pending_count(self) -> int:
        return sum(queue.pending_count for queue in self.queues)


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


@dataclass
class _QueueState:
    id: int
    name: str
    pending_count: int = 0
    pending_bytes: int = 0
    #: Bytes of this queue's records a sender holds: pending, but not evictable.
    leased_bytes: int = 0
    #: Every record with an id up to here was leased since the spool was opened: the
    #: next lease of new records starts above it.
    lease_floor: int = 0
    #: Ids a sender holds.
    leased: set[int] = field(default_factory=set)
    #: Ids at or below the floor handed back (retry, release) or skipped by
    #: ``lease_newest``, and when each is due (ms).
    returned: dict[int, int] = field(default_factory=dict)


@dataclass
class _Delta:
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
    # Not a counter column: counts what append() did, for its result.
    stored: int = field(default=0, compare=False)


_COUNTER_COLUMNS = tuple(name for name in _Delta.__dataclass_fields__ if name != "stored")
_UPDATE_COUNTERS = "UPDATE queues SET {} WHERE id = ?".format(
    ", ".join(f"{name} = {name} + ?" for name in _COUNTER_COLUMNS)
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def translate_sqlite_error(err: sqlite3.Error, doing: str) -> SpoolError:
    """Map a sqlite3 error onto the agent's error tree (retryable or not)."""
    code = (getattr(err, "sqlite_errorcode", 0) or 0) & 0xFF
    message = f"spool {doing} failed: {err}"
    if code == _SQLITE_FULL:
        return SpoolFull(message)
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return SpoolBusy(message)
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return SpoolCorrupt(message)
    if code == _SQLITE_IOERR:
        error = SpoolError(message)
        error.retryable = True
        return error
    return SpoolError(message)


class Spool:
    """Durable queues in one SQLite file. Thread-safe; one writing process at a time."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        policies: Mapping[str, QueuePolicy],
        max_bytes: int | None,
        max_age_s: float | None,
        clock_ms: Callable[[], int],
        read_only: bool,
        lock_file: IO[bytes] | None,
    ) -> None:
        self._conn = conn
        self.path = path
        self._policies = dict(policies)
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._clock_ms = clock_ms
        self.read_only = read_only
        self._lock_file = lock_file
        self._lock = threading.RLock()
        self._closed = False
        self._full_sync = not read_only and conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        self._appended = threading.Condition(threading.Lock())
        self._append_generation = 0
        self._pressure_warned: set[str] = set()  # queues (and "the spool") warned about
        self._queues: dict[str, _QueueState] = {}
        self._queue_names: dict[int, str] = {}
        self._load_queues()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: Literal["full", "normal"] = "full",
        policies: Mapping[str, QueuePolicy] | None = None,
        max_bytes: int | None = None,
        max_age_s: float | None = None,
        integrity_check: Literal["quick", "full", "off"] = "quick",
        clock_ms: Callable[[], int] = _now_ms,
    ) -> Spool:
        """Open (or create) the spool for writing; quarantines a corrupt file."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SpoolError(f"cannot create spool directory {path.parent}: {err}") from err
        lock_file = _acquire_writer_lock(path)
        marker = _suspect_marker(path)
        if marker.exists():
            # The last run hit corruption that quick_check may not see (an index that no
            # longer matches its table): check everything before trusting the file.
            integrity_check = "full"
        try:
            quarantine_reason = None
            returned = 0
            try:
                conn = _connect(path, durability)
                _check_integrity(conn, integrity_check)
                migrate(conn)
                returned = _reset_leases(conn)
            except (sqlite3.DatabaseError, SpoolCorrupt) as err:
                if isinstance(err, sqlite3.DatabaseError) and not isinstance(
                    translate_sqlite_error(err, "open"), SpoolCorrupt
                ):
                    raise translate_sqlite_error(err, "open") from err
                with contextlib.suppress(Exception):
                    conn.close()
                quarantine_reason = str(err)
                moved_to = _quarantine(path)
                log.error(
                    "spool %s is corrupt (%s); moved aside to %s, starting a fresh spool",
                    path,
                    err,
                    moved_to,
                )
                conn = _connect(path, durability)
                migrate(conn)
            marker.unlink(missing_ok=True)
            spool = cls(
                conn,
                path,
                policies=policies or {},
                max_bytes=max_bytes,
                max_age_s=max_age_s,
                clock_ms=clock_ms,
                read_only=False,
                lock_file=lock_file,
            )
            if quarantine_reason is not None:
                spool.record_event(
                    "error",
                    "spool_quarantined",
                    f"corrupt spool moved aside to {moved_to.name}: {quarantine_reason}",
                )
            if returned:
                spool.record_event(
                    "warning",
                    "leases_returned",
                    f"{returned} records in flight when the agent stopped are pending again "
                    "(they may be sent twice)",
                )
            return spool
        except BaseException:
            lock_file.close()
            raise

    @classmethod
    def open_read_only(cls, path: str | os.PathLike[str]) -> Spool:
        """Open for status and inspection while the agent runs (no writes, no lock)."""
        path = Path(path)
        if not path.exists():
            raise SpoolError(f"no spool at {path}")
        try:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as err:
            raise translate_sqlite_error(err, "open") from err
        if version == 0:
            raise SpoolError(f"{path} is not an initialised spool")
        return cls(
            conn,
            path,
            policies={},
            max_bytes=None,
            max_age_s=None,
            clock_ms=_now_ms,
            read_only=True,
            lock_file=None,
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                if not self.read_only:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._conn.close()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _load_queues(self) -> None:
        rows = self._conn.execute("SELECT id, name, pending_count, pending_bytes FROM queues")
        for queue_id, name, count, size in rows:
            self._queues[name] = _QueueState(queue_id, name, count, size)
            self._queue_names[queue_id] = name

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _read(self, doing: str) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, for reads and the in-memory lease state;
        SQLite's errors as the agent's."""
        with self._lock:
            if self._closed:
                raise SpoolError(f"spool is closed ({doing})")
            try:
                yield self._conn
            except sqlite3.Error as err:
                raise translate_sqlite_error(err, doing) from err

    @contextlib.contextmanager
    def _write(self, doing: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. ``durable=False`` skips the fsync at commit (WAL with
        synchronous=NORMAL) for changes whose loss in a power cut costs nothing but a
        re-send: leases (cleared at open anyway), deletes of delivered records, retry
        times. New records are always committed with the configured durability."""
        if self.read_only:
            raise SpoolError("spool is open read-only")
        with self._lock:
            if self._closed:
                raise SpoolError(f"spool is closed ({doing})")
            relax = not durable and self._full_sync
            try:
                if relax:
                    self._conn.execute("PRAGMA synchronous = NORMAL")
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.Error as err:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise translate_sqlite_error(err, doing) from err
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                if relax:  # back to FULL, whatever happened: appends stay durable
                    try:
                        self._conn.execute("PRAGMA synchronous = FULL")
                    except sqlite3.Error as err:
                        raise translate_sqlite_error(err, doing) from err

    def _queue(self, conn: sqlite3.Connection, name: str) -> _QueueState:
        state = self._queues.get(name)
        if state is None:
            cursor = conn.execute("INSERT INTO queues (name) VALUES (?)", (name,))
            assert cursor.lastrowid is not None
            state = _QueueState(cursor.lastrowid, name)
            # Registered only after commit succeeds; see _commit_deltas.
        return state

    def _commit_deltas(
        self,
        conn: sqlite3.Connection,
        deltas: Mapping[str, _Delta],
        states: Mapping[str, _QueueState],
    ) -> Callable[[], None]:
        """Write counter deltas; returns the in-memory update to run once committed."""
        for name, delta in deltas.items():
            conn.execute(
                _UPDATE_COUNTERS,
                (*(getattr(delta, column) for column in _COUNTER_COLUMNS), states[name].id),
            )

        def apply() -> None:
            for name, delta in deltas.items():
                state = states[name]
                self._queues[name] = state
                self._queue_names[state.id] = name
                state.pending_count += delta.pending_count
                state.pending_bytes += delta.pending_bytes

        return apply

    def policy(self, queue: str) -> QueuePolicy:
        return self._policies.get(queue, NO_CAPS)

    # ------------------------------------------------------------------ sources

    def append(self, records: Sequence[Record]) -> AppendResult:
        """Store a batch in one transaction, applying size limits and caps.

        Records larger than their queue's ``max_record_bytes`` go to the dead-letter table;
        records refused by a ``reject_new`` cap are counted and not stored. When this
        returns, everything stored is committed at the configured durability.
        """
        if not records:
            return AppendResult()
        now = self._clock_ms()
        with self._write("append") as conn:
            states: dict[str, _QueueState] = {}
            deltas: dict[str, _Delta] = defaultdict(_Delta)
            projected: dict[str, int] = {}
            projected_total = self.pending_bytes
            evictable_total = self._evictable_bytes()
            rows: list[tuple[int, str, int, int, str | None, bytes]] = []
            dead_rows: list[tuple[int, str, int, int, str, int, str | None, bytes]] = []
            policies: dict[str, QueuePolicy] = {}
            for record in records:
                state = states.get(record.queue)
                if state is None:
                    state = states[record.queue] = self._queue(conn, record.queue)
                    projected[record.queue] = state.pending_bytes
                    policies[record.queue] = self.policy(record.queue)
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
                            record.payload,
                        )
                    )
                    delta.dead_count += 1
                    continue
                if policy.overflow == "reject_new" and self._would_overflow(
                    policy, projected[record.queue], projected_total, evictable_total, size
                ):
                    delta.rejected_count += 1
                    delta.rejected_bytes += size
                    continue
                rows.append(
                    (
                        state.id,
                        record.partition_key,
                        record.captured_at_ms,
                        size,
                        record.meta,
                        record.payload,
                    )
                )
                projected[record.queue] += size
                projected_total += size
                if policy.overflow == "drop_oldest":
                    evictable_total += size
                delta.pending_count += 1
                delta.pending_bytes += size
                delta.stored += 1
            if rows:
                self._keep_new_ids_above_floors(conn)
                _insert_records(conn, rows)
            if dead_rows:
                conn.executemany(
                    "INSERT INTO dead_letters (queue_id, partition_key, captured_at_ms, size,"
                    " reason, dead_at_ms, meta, payload, attempts)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                    dead_rows,
                )
            evicted = self._enforce_byte_caps(conn, states, deltas, projected, projected_total)
            apply = self._commit_deltas(conn, deltas, states)
        apply()
        added = {name: delta.pending_bytes for name, delta in deltas.items()}
        self._watch_pressure(projected, projected_total, added)
        if rows:
            with self._appended:
                self._append_generation += 1
                self._appended.notify_all()
        return AppendResult(
            stored=sum(delta.stored for delta in deltas.values()),
            rejected=sum(delta.rejected_count for delta in deltas.values()),
            dead_lettered=sum(delta.dead_count for delta in deltas.values()),
            evicted=evicted,
        )

    def _watch_pressure(
        self, queue_bytes: dict[str, int], total_bytes: int, added: dict[str, int]
    ) -> None:
        """Warn once when a queue (or the whole spool) passes PRESSURE_WARN of its cap,
        before anything is dropped; warn again once it was below PRESSURE_CLEAR (as
        seen by an append: the level before it)."""
        levels = [
            (name, size, self.policy(name).max_bytes, added.get(name, 0))
            for name, size in queue_bytes.items()
        ]
        levels.append(("the spool", total_bytes, self._max_bytes, sum(added.values())))
        for name, size, cap, grew in levels:
            if not cap:
                continue
            if (size - grew) / cap < PRESSURE_CLEAR:
                self._pressure_warned.discard(name)
            ratio = size / cap
            if ratio >= PRESSURE_WARN and name not in self._pressure_warned:
                self._pressure_warned.add(name)
                policy = "" if name == "the spool" else f" ({self.policy(name).overflow})"
                message = (
                    f"{name} is at {ratio:.0%} of its cap ({size} of {cap} bytes){policy}: "
                    "the uplink is not keeping up; at the cap the oldest records are dropped"
                )
                log.warning("spool pressure: %s", message)
                with contextlib.suppress(SpoolError):
                    self.record_event("warning", "spool_pressure", message)

    def _would_overflow(
        self,
        policy: QueuePolicy,
        queue_bytes: int,
        total_bytes: int,
        evictable_bytes: int,
        size: int,
    ) -> bool:
        if policy.max_bytes is not None and queue_bytes + size > policy.max_bytes:
            return True
        return self._max_bytes is not None and (
            total_bytes - evictable_bytes + size > self._max_bytes
        )

    def _evictable_bytes(self) -> int:
        return sum(
            state.pending_bytes - state.leased_bytes
            for name, state in self._queues.items()
            if self.policy(name).overflow == "drop_oldest"
        )

    def _enforce_byte_caps(
        self,
        conn: sqlite3.Connection,
        states: dict[str, _QueueState],
        deltas: dict[str, _Delta],
        projected: dict[str, int],
        projected_total: int,
    ) -> int:
        evicted = 0
        for name, queue_bytes in projected.items():
            policy = self.policy(name)
            if (
                policy.overflow == "drop_oldest"
                and policy.max_bytes is not None
                and queue_bytes > policy.max_bytes
            ):
                count, freed = self._evict(
                    conn, [states[name].id], queue_bytes - policy.max_bytes, deltas
                )
                evicted += count
                projected_total -= freed
        if self._max_bytes is not None and projected_total > self._max_bytes:
            droppable = [
                state.id
                for name, state in {**self._queues, **states}.items()
                if self.policy(name).overflow == "drop_oldest"
            ]
            if droppable:
                for name, state in self._queues.items():
                    states.setdefault(name, state)
                count, _ = self._evict(conn, droppable, projected_total - self._max_bytes, deltas)
                evicted += count
        return evicted

    def _evict(
        self,
        conn: sqlite3.Connection,
        queue_ids: list[int],
        need_bytes: int,
        deltas: dict[str, _Delta],
    ) -> tuple[int, int]:
        """Delete the oldest unleased records of these queues until need_bytes are freed."""
        freed = 0
        count = 0
        marks = ",".join("?" * len(queue_ids))
        after = 0
        while freed < need_bytes:
            rows = conn.execute(
                f"SELECT id, queue_id, size FROM records WHERE queue_id IN ({marks})"
                " AND id > ? ORDER BY id LIMIT ?",
                (*queue_ids, after, _EVICT_CHUNK),
            ).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            victims = []
            for record_id, queue_id, size in rows:
                if freed >= need_bytes:
                    break
                name = self._name_of(queue_id)
                if self._held(name, record_id):
                    continue
                victims.append((record_id,))
                delta = deltas[name]
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

    def _keep_new_ids_above_floors(self, conn: sqlite3.Connection) -> None:
        """Before inserting records: SQLite gives a new row the highest id in the table
        plus one, which is at or below a lease floor once the rows at the top are gone.
        Lowering every floor to the highest id there is exposes no held or handed-back
        record (they are all in the table, so at or below it) and every new one; a
        handed-back id above it is gone (evicted) and may be reused, so it is dropped.
        Inside the inserting transaction, so that no lease runs in between."""
        (top,) = conn.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()
        for state in self._queues.values():
            state.lease_floor = min(state.lease_floor, top)
            for record_id in [i for i in state.returned if i > top]:
                del state.returned[record_id]

    def _held(self, name: str, record_id: int) -> bool:
        state = self._queues.get(name)
        return state is not None and record_id in state.leased

    def _name_of(self, queue_id: int) -> str:
        name = self._queue_names.get(queue_id)
        if name is None:
            row = self._conn.execute("SELECT name FROM queues WHERE id = ?", (queue_id,)).fetchone()
            name = str(row[0])
        return name

    def expire(self) -> int:
        """Drop records older than their queue's (or the spool's) max age; returns the count."""
        now = self._clock_ms()
        expired = 0
        for name in list(self._queues):
            max_age = self.policy(name).max_age_s or self._max_age_s
            if max_age is None:
                continue
            cutoff = now - int(max_age * 1000)
            with self._write("expire") as conn:
                state = self._queues[name]
                deltas: dict[str, _Delta] = defaultdict(_Delta)
                delta = deltas[name]
                after = 0
                while True:
                    rows = conn.execute(
                        "SELECT id, size, captured_at_ms FROM records"
                        " WHERE queue_id = ? AND id > ? ORDER BY id LIMIT ?",
                        (state.id, after, _EVICT_CHUNK),
                    ).fetchall()
                    if not rows:
                        break
                    after = rows[-1][0]
                    free = [row for row in rows if row[0] not in state.leased]
                    old = [(rid, size) for rid, size, captured in free if captured < cutoff]
                    if old:
                        conn.executemany("DELETE FROM records WHERE id = ?", [(r,) for r, _ in old])
                        delta.pending_count -= len(old)
                        delta.pending_bytes -= sum(size for _, size in old)
                        delta.expired_count += len(old)
                    if len(old) < len(free) or len(rows) < _EVICT_CHUNK:
                        break
                apply = self._commit_deltas(conn, deltas, {name: state})
            apply()
            if delta.expired_count:
                log.warning(
                    "queue %s: expired %d records older than %.0fs",
                    name,
                    delta.expired_count,
                    max_age,
                )
            expired += delta.expired_count
        return expired

    # ------------------------------------------------------------------ senders

    @property
    def append_generation(self) -> int:
        """Grows with every append that stored records; see ``wait_for_append``."""
        return self._append_generation

    def wait_for_append(self, seen_generation: int, timeout: float) -> bool:
        """Block until records were appended after ``seen_generation`` was read (or the
        timeout passes); lets an idle sender sleep instead of polling the database."""
        with self._appended:
            return self._appended.wait_for(
                lambda: self._append_generation != seen_generation, timeout
            )

    def wake_waiters(self) -> None:
        """Wake every sender blocked in ``wait_for_append`` (used at shutdown)."""
        with self._appended:
            self._append_generation += 1
            self._appended.notify_all()

    def lease(
        self,
        queue: str,
        *,
        max_records: int,
        max_bytes: int,
        now_ms: int | None = None,
        with_meta: bool = False,
        captured_before_ms: int | None = None,
    ) -> list[LeasedRecord]:
        """Lease the oldest due records of a queue, within count and bytes: handed-back
        records whose retry time has come first, then records not leased since open
        (whatever their retry time: after a restart everything is due).

        At least one record is returned when any is due, even if it alone exceeds
        max_bytes (a sender decides what to do with it). ``with_meta``: also the meta
        text (a video fragment's track); record senders do not need it.
        ``captured_before_ms``: only records captured before then (a video backlog
        behind live fragments).
        """
        state = self._queues.get(queue)
        if state is None or max_records <= 0:
            return []
        now = self._clock_ms() if now_ms is None else now_ms
        before = _NO_TIME_LIMIT if captured_before_ms is None else captured_before_ms
        with self._read("lease"):
            rows, gone = self._lease_rows(state, max_records, now, with_meta, before)
            return self._take(state, rows, gone, max_bytes)

    def lease_newest(
        self, queue: str, *, captured_after_ms: int = -1, with_meta: bool = False
    ) -> LeasedRecord | None:
        """Lease the newest record of a queue that no sender holds, if it was captured
        after ``captured_after_ms``, whatever its retry time: a live video session sends
        it. The records between the last lease and it stay pending, handed back and due
        now (the backlog behind it)."""
        state = self._queues.get(queue)
        if state is None:
            return None
        columns = _LEASE_COLUMNS_WITH_META if with_meta else _LEASE_COLUMNS
        with self._read("lease") as conn:
            row = conn.execute(
                f"SELECT {columns} FROM records WHERE queue_id = ? AND id > ?"
                " ORDER BY id DESC LIMIT 1",
                (state.name, state.id, state.lease_floor),
            ).fetchone()
            if row is not None and _CAPTURED(row) > captured_after_ms:
                skipped = conn.execute(  # the fresh records below it
                    "SELECT id FROM records WHERE queue_id = ? AND id > ? AND id < ?",
                    (state.id, state.lease_floor, _ID(row)),
                ).fetchall()
                state.returned.update((record_id, 0) for (record_id,) in skipped)
                rows, gone = [row], list[int]()
            elif row is not None:  # the newest of all is not new enough
                rows, gone = list[tuple[object, ...]](), list[int]()
            else:  # nothing new since the last lease: the newest handed back
                rows, gone = self._newest_returned(state, columns, captured_after_ms)
            leased = self._take(state, rows, gone, MAX_LEASE_BYTES)
            return leased[0] if leased else None

    def _newest_returned(
        self, state: _QueueState, columns: str, captured_after_ms: int
    ) -> tuple[list[tuple[object, ...]], list[int]]:
        gone: list[int] = []
        for record_id in sorted(state.returned, reverse=True):
            row = self._conn.execute(
                f"SELECT {columns} FROM records WHERE queue_id = ? AND id = ?",
                (state.name, state.id, record_id),
            ).fetchone()
            if row is None:
                gone.append(record_id)
                continue
            return ([row] if _CAPTURED(row) > captured_after_ms else []), gone
        return [], gone

    def newest_is_after(self, queue: str, captured_ms: int) -> bool:
        """Whether the queue's newest record (held or not) was captured after then."""
        state = self._queues.get(queue)
        if state is None:
            return False
        with self._read("newest_is_after") as conn:
            row = conn.execute(
                "SELECT captured_at_ms FROM records WHERE queue_id = ? ORDER BY id DESC LIMIT 1",
                (state.id,),
            ).fetchone()
        return row is not None and int(row[0]) > captured_ms

    def unheld(self, queue: str) -> int:
        """How many of a queue's pending records no sender holds."""
        state = self._queues.get(queue)
        if state is None:
            return 0
        with self._lock:
            return state.pending_count - len(state.leased)

    def _take(
        self,
        state: _QueueState,
        rows: list[tuple[object, ...]],
        gone: list[int],
        max_bytes: int,
    ) -> list[LeasedRecord]:
        """Hold ``rows`` (the first ones within ``max_bytes``, at least one) for a
        sender; forget handed-back ids that are ``gone``. Under the lock."""
        for record_id in gone:  # handed back, then evicted or expired
            state.returned.pop(record_id, None)
        if not rows:
            return []
        running = list(itertools.accumulate(map(len, map(_PAYLOAD, rows))))
        taken = max(1, bisect.bisect_right(running, max_bytes))
        leased = list(map(_as_leased_record, rows[:taken]))
        ids = list(map(_ID, leased))
        if state.returned:
            for record_id in ids:
                if record_id <= state.lease_floor:
                    state.returned.pop(record_id, None)
        state.lease_floor = max(state.lease_floor, ids[-1])
        state.leased.update(ids)
        state.leased_bytes += running[taken - 1]
        return leased

    def _lease_rows(
        self,
        state: _QueueState,
        max_records: int,
        now: int,
        with_meta: bool = False,
        captured_before_ms: int = _NO_TIME_LIMIT,
    ) -> tuple[list[tuple[object, ...]], list[int]]:
        """Rows to lease, oldest first: handed-back records that are due, then records
        never leased since open (up to the first captured from ``captured_before_ms``
        on: the fresh ones stay a run above the floor); and the handed-back ids that
        are no longer there."""
        conn = self._conn
        rows: list[tuple[object, ...]] = []
        gone: list[int] = []
        columns = _LEASE_COLUMNS_WITH_META if with_meta else _LEASE_COLUMNS
        if state.returned:
            due = sorted(i for i, at in state.returned.items() if at <= now)
            start = 0
            while start < len(due) and len(rows) < max_records:  # some may be gone
                chunk = due[start : start + min(_ID_CHUNK, max_records - len(rows))]
                start += len(chunk)
                found = conn.execute(
                    f"SELECT {columns} FROM records WHERE queue_id = ?"
                    f" AND id IN ({','.join('?' * len(chunk))}) ORDER BY id",
                    (state.name, state.id, *chunk),
                ).fetchall()
                if len(found) < len(chunk):
                    present = set(map(_ID, found))
                    gone += [i for i in chunk if i not in present]
                rows += [row for row in found if _CAPTURED(row) < captured_before_ms]
        if len(rows) < max_records:
            fresh = conn.execute(
                f"SELECT {columns} FROM records WHERE queue_id = ? AND id > ? ORDER BY id LIMIT ?",
                (state.name, state.id, state.lease_floor, max_records - len(rows)),
            ).fetchall()
            rows += itertools.takewhile(lambda row: _CAPTURED(row) < captured_before_ms, fresh)
        return rows, gone

    def ack(self, records: Iterable[LeasedRecord]) -> int:
        """Confirmed by the service: delete. Returns how many were still in the spool."""
        return self._settle(records, "ack")

    def release(self, records: Iterable[LeasedRecord]) -> int:
        """Give leased records back untouched (no attempt counted), e.g. at shutdown."""
        return self._settle(records, "release")

    def retry(self, records: Iterable[LeasedRecord], *, at_ms: int) -> int:
        """Not accepted this time: pending again from ``at_ms``, one more attempt counted."""
        return self._settle(records, "retry", at_ms=at_ms)

    def dead_letter(self, records: Iterable[LeasedRecord], reason: str) -> int:
        """Never acceptable: move to the dead-letter table with the reason."""
        return self._settle(records, "dead_letter", reason=reason)

    def _settle(
        self,
        records: Iterable[LeasedRecord],
        how: Literal["ack", "release", "retry", "dead_letter"],
        *,
        at_ms: int = 0,
        reason: str = "",
    ) -> int:
        batch = list(records)
        if not batch:
            return 0
        now = self._clock_ms()
        done = 0
        by_queue = _by_queue(batch)
        if how == "release":  # nothing in the file to change
            with self._lock:
                for name, queued in by_queue.items():
                    done += self._hand_back(name, queued, now)
            return done
        with self._write(how, durable=how == "dead_letter") as conn:
            deltas: dict[str, _Delta] = defaultdict(_Delta)
            released: dict[str, int] = {}
            for name, queued in by_queue.items():
                delta = deltas[name]
                state = self._queues.get(name)
                held = state.leased if state is not None else None
                released[name] = 0  # payload bytes of these records, no longer held
                for start in range(0, len(queued), _ID_CHUNK):
                    ids = list(map(_ID, queued[start : start + _ID_CHUNK]))
                    marks = ",".join("?" * len(ids))
                    if how == "retry":
                        retried = conn.execute(
                            "UPDATE records SET attempts = attempts + 1, next_attempt_ms = ?"
                            f" WHERE id IN ({marks})",
                            (at_ms, *ids),
                        ).rowcount
                        delta.retried_count += retried
                        done += retried
                        continue
                    if how == "dead_letter":
                        conn.execute(
                            "INSERT INTO dead_letters (queue_id, partition_key, captured_at_ms,"
                            " size, attempts, reason, dead_at_ms, meta, payload)"
                            " SELECT queue_id, partition_key, captured_at_ms, size, attempts + 1,"
                            f" ?, ?, meta, payload FROM records WHERE id IN ({marks}) ORDER BY id",
                            (reason, now, *ids),
                        )
                    if held is not None and held.issuperset(ids):
                        # Held records are never evicted or expired: all still there.
                        conn.execute(f"DELETE FROM records WHERE id IN ({marks})", ids)
                        count = len(ids)
                        size = sum(map(len, map(_PAYLOAD, queued[start : start + _ID_CHUNK])))
                        released[name] += size
                    else:  # only the rows still there count
                        sizes = conn.execute(
                            f"DELETE FROM records WHERE id IN ({marks}) RETURNING size", ids
                        ).fetchall()
                        count, size = len(sizes), sum(map(_FIRST, sizes))
                        chunk = queued[start : start + _ID_CHUNK]
                        released[name] += sum(map(len, map(_PAYLOAD, chunk)))
                    delta.pending_count -= count
                    delta.pending_bytes -= size
                    if how == "ack":
                        delta.acked_count += count
                        delta.acked_bytes += size
                    else:
                        delta.dead_count += count
                    done += count
            apply = self._commit_deltas(conn, deltas, {name: self._queues[name] for name in deltas})
        apply()
        with self._lock:
            for name, queued in by_queue.items():  # settled in any way: no longer held
                if how == "retry":
                    self._hand_back(name, queued, at_ms)
                else:
                    self._forget(name, queued, released.get(name))
        if how == "dead_letter" and done:
            log.warning("dead-lettered %d records: %s", done, reason)
        return done

    def _forget(
        self, name: str, records: list[LeasedRecord], payload_bytes: int | None = None
    ) -> int:
        """No longer held by a sender; returns how many were. Under the lock.
        ``payload_bytes``: the records' payload total, if the caller has it already."""
        state = self._queues.get(name)
        if state is None:
            return 0
        held = state.leased
        before = len(held)
        held.difference_update(map(_ID, records))
        if payload_bytes is None:
            payload_bytes = sum(map(len, map(_PAYLOAD, records)))
        state.leased_bytes = max(0, state.leased_bytes - payload_bytes)
        return before - len(held)

    def _hand_back(self, name: str, records: list[LeasedRecord], due_ms: int) -> int:
        """Held no longer, and due again at ``due_ms``. Under the lock."""
        state = self._queues.get(name)
        if state is None:
            return 0
        held = state.leased
        count = 0
        for record in records:
            if record.id in held:
                state.returned[record.id] = due_ms
                count += 1
        self._forget(name, records)
        return count

    # ------------------------------------------------------------------ inspection

    @property
    def pending_bytes(self) -> int:
        return sum(state.pending_bytes for state in self._queues.values())

    def newest_captured_at(self, queue: str) -> int | None:
        """The capture time of the newest record a queue still holds: what a camera
        continues after at a restart, so that its times keep increasing."""
        state = self._queues.get(queue)
        if state is None:
            return None
        with self._lock:
            row = self._conn.execute(
                "SELECT max(captured_at_ms) FROM records WHERE queue_id = ?", (state.id,)
            ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def pending(self, queue: str) -> tuple[int, int]:
        """(count, bytes) pending in a queue, leased included."""
        state = self._queues.get(queue)
        return (state.pending_count, state.pending_bytes) if state else (0, 0)

    def record_event(self, level: str, kind: str, message: str) -> None:
        """Keep a short history of notable events for ``edge-agent status``."""
        with self._write("event") as conn:
            conn.execute(
                "INSERT INTO events (at_ms, level, kind, message) VALUES (?, ?, ?, ?)",
                (self._clock_ms(), level, kind, message),
            )
            conn.execute(
                "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?", (MAX_EVENTS,)
            )

    def stats(self, *, events: int = 10) -> SpoolStats:
        with self._read("status"):
            return self._stats(events)

    def _stats(self, events: int) -> SpoolStats:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            leased = {state.id: len(state.leased) for state in self._queues.values()}
            dead = dict(
                conn.execute(
                    "SELECT queue_id, count(*) FROM dead_letters GROUP BY queue_id"
                ).fetchall()
            )
            queues = []
            columns = ", ".join(("id", "name", *_COUNTER_COLUMNS))
            for row in conn.execute(f"SELECT {columns} FROM queues ORDER BY name").fetchall():
                values = dict(zip(("id", "name", *_COUNTER_COLUMNS), row, strict=True))
                oldest = conn.execute(
                    "SELECT captured_at_ms FROM records WHERE queue_id = ? ORDER BY id LIMIT 1",
                    (values["id"],),
                ).fetchone()
                queues.append(
                    QueueStats(
                        name=values["name"],
                        pending_count=values["pending_count"],
                        pending_bytes=values["pending_bytes"],
                        leased_count=leased.get(values["id"], 0),
                        oldest_captured_at_ms=oldest[0] if oldest else None,
                        acked_count=values["acked_count"],
                        acked_bytes=values["acked_bytes"],
                        retried_count=values["retried_count"],
                        dropped_count=values["dropped_count"],
                        dropped_bytes=values["dropped_bytes"],
                        expired_count=values["expired_count"],
                        rejected_count=values["rejected_count"],
                        rejected_bytes=values["rejected_bytes"],
                        dead_count=values["dead_count"],
                        dead_letters=dead.get(values["id"], 0),
                        redelivered_count=values["redelivered_count"],
                    )
                )
            recent = [
                SpoolEvent(*row)
                for row in conn.execute(
                    "SELECT at_ms, level, kind, message FROM events ORDER BY id DESC LIMIT ?",
                    (events,),
                ).fetchall()
            ]
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.execute("COMMIT")
        file_bytes = sum(
            os.path.getsize(candidate)
            for candidate in (self.path, Path(f"{self.path}-wal"))
            if candidate.exists()
        )
        return SpoolStats(
            path=str(self.path),
            file_bytes=file_bytes,
            schema_version=version,
            queues=queues,
            events=recent,
        )

    def dead_letters(
        self, *, queue: str | None = None, after_id: int = 0, limit: int = 1000
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
        with self._read("dead-letter listing") as conn:
            rows = conn.execute(query, params).fetchall()
        return [
            DeadLetter(rid, name, key, captured, size, attempts, reason, dead_at, meta, bytes(data))
            for rid, name, key, captured, size, attempts, reason, dead_at, meta, data in rows
        ]

    def purge_dead_letters(self, *, queue: str | None = None, ids: Sequence[int] = ()) -> int:
        """Delete dead letters (all, of one queue, or by id); returns how many."""
        where, params = self._dead_letter_filter(queue, ids)
        with self._write("purge") as conn:
            return conn.execute(f"DELETE FROM dead_letters{where}", params).rowcount

    def requeue_dead_letters(self, *, queue: str | None = None, ids: Sequence[int] = ()) -> int:
        """Move dead letters back to the end of their queues (e.g. after fixing a sink)."""
        where, params = self._dead_letter_filter(queue, ids)
        with self._write("requeue") as conn:
            moved = conn.execute(
                "SELECT id, queue_id, size FROM dead_letters" + where + " ORDER BY id", params
            ).fetchall()
            if not moved:
                return 0
            deltas: dict[str, _Delta] = defaultdict(_Delta)
            if moved:
                self._keep_new_ids_above_floors(conn)
            for dead_id, queue_id, size in moved:
                conn.execute(
                    "INSERT INTO records (queue_id, partition_key, captured_at_ms, size, meta,"
                    " payload) SELECT queue_id, partition_key, captured_at_ms, size, meta,"
                    " payload FROM dead_letters WHERE id = ?",
                    (dead_id,),
                )
                conn.execute("DELETE FROM dead_letters WHERE id = ?", (dead_id,))
                delta = deltas[self._name_of(queue_id)]
                delta.pending_count += 1
                delta.pending_bytes += size
            apply = self._commit_deltas(conn, deltas, {name: self._queues[name] for name in deltas})
        apply()
        return len(moved)

    def _dead_letter_filter(
        self, queue: str | None, ids: Sequence[int]
    ) -> tuple[str, list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        if queue is not None:
            clauses.append("queue_id = (SELECT id FROM queues WHERE name = ?)")
            params.append(queue)
        if ids:
            clauses.append(f"id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


# ---------------------------------------------------------------------- file handling


#: Rows per INSERT statement (6 parameters each; SQLite allows 32,766 per statement).
_INSERT_ROWS = 256


_ID = operator.itemgetter(0)
_QUEUE = operator.itemgetter(1)
_FIRST = operator.itemgetter(0)
_CAPTURED = operator.itemgetter(3)  # of a LeasedRecord, and of the lease query's rows
_PAYLOAD = operator.itemgetter(4)


#: A leased row in LeasedRecord's field order (the queue name is the first parameter).
_LEASE_COLUMNS = "id, ?, partition_key, captured_at_ms, payload, attempts, NULL"
_LEASE_COLUMNS_WITH_META = "id, ?, partition_key, captured_at_ms, payload, attempts, meta"
#: Such a row as a LeasedRecord, without a Python call per row (``_make`` is one).
_as_leased_record = functools.partial(tuple.__new__, LeasedRecord)


def _by_queue(records: list[LeasedRecord]) -> dict[str, list[LeasedRecord]]:
    """Records per queue, in order (a sender's batch is nearly always of one queue)."""
    queues = set(map(_QUEUE, records))
    if len(queues) == 1:
        return {queues.pop(): records}
    grouped: dict[str, list[LeasedRecord]] = defaultdict(list)
    for record in records:
        grouped[record.queue].append(record)
    return grouped


@functools.lru_cache(maxsize=_INSERT_ROWS)
def _insert_statement(rows: int) -> str:
    return (
        "INSERT INTO records (queue_id, partition_key, captured_at_ms, size, meta, payload)"
        " VALUES " + ",".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    )


def _insert_records(
    conn: sqlite3.Connection, rows: list[tuple[int, str, int, int, str | None, bytes]]
) -> None:
    """Insert with multi-row statements: one statement per 256 rows rather than one step
    per row (executemany steps, and trades the GIL, once per row)."""
    step = min(_INSERT_ROWS, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 6)
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        conn.execute(_insert_statement(len(chunk)), [value for row in chunk for value in row])


def _connect(path: Path, durability: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise SpoolError(f"cannot switch {path} to WAL mode (got {mode})")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys = OFF")
    # Some builds (Debian's) zero every deleted record, which made deleting delivered
    # records 40 % dearer; FAST zeroes only what costs no extra I/O (SQLite's default).
    conn.execute("PRAGMA secure_delete = FAST")
    return conn


def _reset_leases(conn: sqlite3.Connection) -> int:
    """Return leases of a dead process to pending and recompute the pending counters
    from the rows; returns how many leases there were."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        returned = conn.execute("UPDATE records SET leased = 0 WHERE leased = 1").rowcount
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
    return int(returned)


def _suspect_marker(path: Path) -> Path:
    return Path(f"{path}.needs-check")


def mark_suspect(path: Path) -> None:
    """Ask the next open for a full integrity check (after SQLite reported corruption)."""
    with contextlib.suppress(OSError):
        _suspect_marker(path).touch()


def _check_integrity(conn: sqlite3.Connection, how: str) -> None:
    if how == "off":
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return
    pragma = "quick_check" if how == "quick" else "integrity_check"
    problems = [row[0] for row in conn.execute(f"PRAGMA {pragma}(5)").fetchall()]
    if problems != ["ok"]:
        raise SpoolCorrupt(f"integrity check failed: {'; '.join(map(str, problems))}")


def _quarantine(path: Path) -> Path:
    """Rename a bad spool (and its WAL/SHM) out of the way; returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    suffix = 1
    while target.exists():
        suffix += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{suffix}")
    for extra in ("", "-wal", "-shm"):
        source = Path(f"{path}{extra}")
        if source.exists():
            source.rename(Path(f"{target}{extra}"))
    return target


def _acquire_writer_lock(path: Path) -> IO[bytes]:
    lock_path = Path(f"{path}.lock")
    handle = open(lock_path, "a+b")  # noqa: SIM115 - held open for the spool's lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().decode(errors="replace").strip() or "another process"
        handle.close()
        raise SpoolError(f"spool {path} is in use by {owner}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}".encode())
    handle.flush()
    return handle


def meta_json(**fields: object) -> str:
    """Compact JSON for Record.meta."""
    return json.dumps(fields, separators=(",", ":"))
