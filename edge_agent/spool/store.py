"""``Spool``: the spool's one entry point. It opens and closes the file, holds the lock
and the connection (``_read``/``_write``: closed check, SQLite's errors as the agent's)
and hands each call to the part that owns it; the package docstring lists them.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal, TypeVar

from edge_agent.errors import SpoolError, SpoolFileLost, SpoolFull
from edge_agent.records import AppendResult, LeasedRecord, Record
from edge_agent.spool import analytics, dead_letters, file_watch, sent_marks, settle
from edge_agent.spool.analytics import AlsoWrite
from edge_agent.spool.caps import Caps, QueuePolicy
from edge_agent.spool.dead_letters import DeadLetter
from edge_agent.spool.leases import NO_TIME_LIMIT
from edge_agent.spool.queues import Queues
from edge_agent.spool.recovery import (
    connect_read_only,
    open_file,
    translate_sqlite_error,
)
from edge_agent.spool.stats import SpoolStats, insert_event, read_stats
from edge_agent.spool.storage import Storage, make_room_at_open
from edge_agent.spool.writer import Writer

log = logging.getLogger(__name__)

_PAYLOAD = operator.attrgetter("payload")
T = TypeVar("T")
#: Records settled per transaction when the filesystem is full.
SMALL_SETTLE = 64


def _now_ms() -> int:
    return int(time.time() * 1000)


class Spool:
    """Durable queues in one SQLite file. Thread-safe; one writing process at a time."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        clock_ms: Callable[[], int],
        read_only: bool,
        lock_file: IO[bytes] | None,
    ) -> None:
        """Caps, reserve and durability come with ``configure``."""
        self._conn = conn
        self.path = path
        self._clock_ms = clock_ms
        self.read_only = read_only
        self._lock = threading.RLock()
        self._closed = False
        self._full_sync = not read_only and conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        self._caps = Caps({})
        self._queues = Queues()
        self._queues.load(conn)
        self._writer = Writer(self._queues, self._caps)
        self._storage = Storage(path, 0)
        self.file = file_watch.FileWatch(path, lock_file)
        #: Why the spool can no longer be written (its file could not be rebuilt).
        self.broken: str | None = None
        #: Called now and then during long work under the lock (the agent: a watchdog ping).
        self.keepalive: Callable[[], None] | None = None

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
        reserve: int = 0,
    ) -> Spool:
        """Open (or create) the spool for writing; quarantines a corrupt file.
        ``reserve``: free space on the spool's filesystem that intake leaves alone
        (spool/storage.py; 0: none)."""
        path = Path(path)
        if reserve:
            make_room_at_open(path)
        opened = open_file(path, durability, integrity_check)
        try:
            spool = cls(
                opened.conn, path, clock_ms=clock_ms, read_only=False, lock_file=opened.lock_file
            )
            spool.configure(
                durability=durability,
                policies=policies or {},
                max_bytes=max_bytes,
                max_age_s=max_age_s,
                reserve=reserve,
            )
            # WAL findings, a quarantine (with what was salvaged), returned leases.
            for level, kind, message in opened.events():
                spool.record_event(level, kind, message)
            spool.count_resent()  # what the last run sent and did not see confirmed
            with spool._lock:
                spool._storage.keep_ballast(spool._conn)
            return spool
        except BaseException:
            opened.lock_file.close()
            raise

    @classmethod
    def open_read_only(cls, path: str | os.PathLike[str]) -> Spool:
        """Open for status and inspection while the agent runs (no writes, no lock)."""
        path, conn = Path(path), connect_read_only(Path(path))
        try:
            return cls(conn, path, clock_ms=_now_ms, read_only=True, lock_file=None)
        except (sqlite3.Error, OSError) as err:  # its queues table could not be read
            conn.close()
            raise SpoolError(f"cannot read the spool {path}: {err}") from err

    def close(self) -> None:
        with self._lock:
            if self.broken is None:  # else its connection went with the lost file
                with contextlib.suppress(sqlite3.Error):
                    if not self.read_only:
                        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._conn.close()
            self._closed = True
            self.file.release_lock()

    def configure(
        self,
        *,
        durability: Literal["full", "normal"],
        policies: Mapping[str, QueuePolicy],
        max_bytes: int | None,
        max_age_s: float | None,
        reserve: int,
    ) -> None:
        """Take caps, reserve and durability (at open, and on a reload while running)."""
        with self._read("configure") as conn:
            self._caps.configure(policies, max_bytes, max_age_s)
            self._storage.set_reserve(reserve)
            self._storage.bound_checkpoints(conn)
            conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
            self._full_sync = durability == "full"

    def count_resent(self, queue: str | None = None) -> None:
        """Sent, not seen confirmed, sent again: counted at open, and for a reload's queue."""
        if queue is not None and self._queues.get(queue) is None:
            return
        with self._write("count resent") as conn:
            apply = sent_marks.count_after_restart(conn, self._queues, self._clock_ms(), queue)
        apply()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _read(self, doing: str) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, for reads and the in-memory lease state;
        SQLite's errors as the agent's."""
        with self._lock:
            if self._closed:
                raise SpoolError(self.broken or f"spool is closed ({doing})")
            try:
                yield self._conn
            except sqlite3.Error as err:
                raise translate_sqlite_error(err, doing) from err

    @contextlib.contextmanager
    def _write(self, doing: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction. ``durable=False`` skips the fsync at commit (WAL with
        synchronous=NORMAL) for changes whose loss in a power cut costs nothing but a
        re-send: deletes of delivered records, retry times. New records are always
        committed with the configured durability."""
        if self.read_only:
            raise SpoolError("spool is open read-only")
        with self._lock:
            if self._closed:
                raise SpoolError(self.broken or f"spool is closed ({doing})")
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

    # ------------------------------------------------------------------ sources

    def append(
        self, records: Sequence[Record], *, also: AlsoWrite | None = None, also_bytes: int = 0
    ) -> AppendResult:
        """Store a batch in one transaction, applying size limits and caps.

        Records larger than their queue's ``max_record_bytes`` go to the dead-letter table;
        records refused by a ``reject_new`` cap are counted and not stored. When this
        returns, everything stored is committed at the configured durability; ``also`` (a
        window's mark, a recorded fragment: ``also_bytes`` more) in the same transaction.
        """
        if not records and also is None:
            return AppendResult()
        now = self._clock_ms()
        with self._lock:
            self._check_file()  # never commit into a file that is no longer the spool
            if self._storage.reserve and (records or also_bytes):  # deletions free room
                self._admit(sum(map(len, map(_PAYLOAD, records))) + also_bytes, len(records))
            try:
                with self._write("append") as conn:
                    appended = self._writer.insert(conn, records, now)
                    also_done = also(conn, self._queues) if also is not None else None
            except SpoolFull as err:
                self._storage.refused_by_sqlite += 1
                if not self._storage.reserve:
                    raise
                raise self._storage.pause(f"SQLite found no room for a batch ({err})") from err
            appended.apply()
            if also_done is not None:
                also_done()
            # Before the caller acknowledges the batch: is it in the spool on disk?
            self._check_file()
        if appended.result.dead_lettered:
            self._writer.log_dead_letters(appended.result.dead_lettered)
        for message in self._caps.pressure(
            appended.queue_bytes, appended.total_bytes, appended.added
        ):
            log.warning("spool pressure: %s", message)
            with contextlib.suppress(SpoolError):
                self.record_event("warning", "spool_pressure", message)
        if appended.result.stored:
            self._writer.notify()
        return appended.result

    def without_repeats(self, records: list[Record], queues: Callable[[str], bool]) -> list[Record]:
        """Redelivered ``records`` of ``queues`` the spool holds already, left out."""
        return analytics.without_repeats(self._read, self._queues, records, queues)

    def _admit(self, incoming: int, records: int) -> None:
        """IntakePaused unless the filesystem has room for it and the reserve (storage.py)."""
        with self._read("admission") as conn:
            try:
                self._storage.admit(conn, incoming, records)
            except OSError as err:
                raise SpoolError(f"cannot measure the spool's free space: {err}") from err

    def expire(self) -> int:
        """Drop records older than their queue's (or the spool's) max age; returns the count."""
        now = self._clock_ms()
        expired = 0
        for name in self._queues.names():
            max_age = self._caps.max_age(name)
            if max_age is None:
                continue
            with self._write("expire") as conn:
                state = self._queues[name]
                delta = self._caps.expire(conn, state, now - int(max_age * 1000))
                apply = self._queues.commit(conn, {name: delta}, {name: state})
            apply()
            if count := delta.expired_count:
                log.warning("queue %s: expired %d records older than %.0fs", name, count, max_age)
            expired += count
        return expired

    # ------------------------------------------------------------------ uploaders

    @property
    def append_generation(self) -> int:
        """Grows with every append that stored records; see ``wait_for_append``."""
        return self._writer.generation

    def wait_for_append(self, seen_generation: int, timeout: float) -> bool:
        """Block until records were appended after ``seen_generation`` was read (or the
        timeout passes); lets an idle uploader sleep instead of polling the database."""
        return self._writer.wait(seen_generation, timeout)

    def wake_waiters(self) -> None:
        """Wake every uploader blocked in ``wait_for_append`` (used at shutdown)."""
        self._writer.notify()

    def lease(
        self,
        queue: str,
        *,
        max_records: int,
        max_bytes: int,
        now_ms: int | None = None,
        with_meta: bool = False,
        captured_before_ms: int | None = None,
        read_large: bool = True,
    ) -> list[LeasedRecord]:
        """Lease the oldest due records of a queue, within count and bytes (at least one
        when any is due, whatever its size): handed-back records whose retry time has come
        first, then records not leased since open (after a restart all are due). Options:
        ``with_meta`` (a fragment's track), ``captured_before_ms`` (a video backlog behind
        live fragments), ``read_large`` False (blob-sized payloads left: ``read_piece``)."""
        state = self._queues.get(queue)
        if state is None or max_records <= 0:
            return []
        now = self._clock_ms() if now_ms is None else now_ms
        before = NO_TIME_LIMIT if captured_before_ms is None else captured_before_ms
        with self._read("lease") as conn:
            return state.leases.lease(
                conn, max_records=max_records, max_bytes=max_bytes, now=now,
                with_meta=with_meta, captured_before_ms=before, read_large=read_large,
            )  # fmt: skip

    def lease_newest(
        self, queue: str, *, captured_after_ms: int = -1, with_meta: bool = False,
        read_large: bool = True,
    ) -> LeasedRecord | None:  # fmt: skip
        """Lease the newest record of a queue that no uploader holds, if captured after
        ``captured_after_ms``, whatever its retry time (a live video session sends it); the
        records between the last lease and it stay pending, due now. Options: ``lease``."""
        state = self._queues.get(queue)
        if state is None:
            return None
        with self._read("lease") as conn:
            return state.leases.lease_newest(
                conn, captured_after_ms=captured_after_ms, with_meta=with_meta,
                read_large=read_large,
            )  # fmt: skip

    def newest_is_after(self, queue: str, captured_ms: int) -> bool:
        """Whether the queue's newest record (held or not) was captured after then."""
        state = self._queues.get(queue)
        with self._read("newest_is_after") as conn:
            return state.leases.newest_is_after(conn, captured_ms) if state else False

    def payloads(self, queue: str, ids: Sequence[int]) -> dict[int, bytes]:
        """The payloads of held records, read again (an uploader let go of them while
        they were on the wire); one that eviction took back is not among them."""
        state = self._queues.get(queue)
        with self._read("reading payloads again") as conn:
            return state.leases.payloads(conn, ids) if state else {}

    def unheld(self, queue: str) -> int:
        """How many of a queue's pending records no uploader holds."""
        state = self._queues.get(queue)
        if state is None:
            return 0
        with self._lock:
            return state.pending_count - len(state.leases.held)

    def mark_sent(self, records: Sequence[LeasedRecord]) -> bool:
        """These records are about to be handed to the network: remember it in the file
        (spool/sent_marks.py), so that a restart counts what it sends again. Best
        effort: a mark that cannot be written (a full disk) costs only that count, and
        sending goes on; returns whether it was written."""
        if not records:
            return True
        grouped = settle.by_queue(list(records))
        try:
            with self._write("mark sent", durable=False) as conn:
                for name, ids in grouped.items():
                    state = self._queues.get(name)
                    if state is not None:
                        sent_marks.mark(conn, state.id, ids)
        except SpoolError as err:
            log.debug("marking %d records as sent failed: %s", len(records), err)
            return False
        return True

    def ack(self, records: Iterable[LeasedRecord]) -> int:
        """Confirmed by the service: delete. Returns how many were still in the spool."""
        return self._settle(settle.by_queue(list(records)), "ack")

    def ack_ids(self, queue: str, ids: list[int]) -> int:
        """``ack`` by id: what a deleter keeps of a batch (not the payloads)."""
        return self._settle({queue: ids}, "ack")

    def release(self, records: Iterable[LeasedRecord]) -> int:
        """Give leased records back untouched (no attempt counted), e.g. at shutdown."""
        return self._settle(settle.by_queue(list(records)), "release")

    def retry(self, records: Iterable[LeasedRecord], *, at_ms: int) -> int:
        """Not accepted this time: pending again from ``at_ms``, one more attempt counted."""
        return self._settle(settle.by_queue(list(records)), "retry", at_ms=at_ms)

    def dead_letter(self, records: Iterable[LeasedRecord], reason: str) -> int:
        """Never acceptable: move to the dead-letter table with the reason."""
        return self._settle(settle.by_queue(list(records)), "dead_letter", reason=reason)

    def _settle(
        self, grouped: dict[str, list[int]], how: settle.How, *, at_ms: int = 0, reason: str = ""
    ) -> int:
        if not any(grouped.values()):
            return 0
        now = self._clock_ms()
        if how == "release":  # nothing in the file to change
            with self._lock:
                return settle.hand_back(self._queues, grouped, now)

        def write() -> int:
            with self._write(how, durable=how == "dead_letter") as conn:
                done, apply = settle.write(
                    conn, self._queues, grouped, how, now=now, at_ms=at_ms, reason=reason
                )
            apply()
            return done

        with self._lock:
            try:
                # The ballast is for what frees space: deletes, not retry times.
                done = self._storage.with_room(write) if how != "retry" else write()
            except SpoolFull:
                if how == "retry":  # not written: due again from memory all the same
                    return settle.hand_back(self._queues, grouped, at_ms)
                parts = settle.small_parts(grouped, SMALL_SETTLE)
                if len(parts) == 1:
                    raise
                # A full filesystem: small transactions, whose WAL frames the
                # checkpoints between them let the next ones write over again.
                return sum(self._settle(part, how, at_ms=at_ms, reason=reason) for part in parts)
            settle.forget(self._queues, grouped, how, at_ms=at_ms)
        if how == "dead_letter" and done:
            log.warning("dead-lettered %d records: %s", done, reason)
        return done

    # ------------------------------------------------------------------ the file on disk

    def _check_file(self) -> None:
        """Raise SpoolFileLost unless the path still names the open spool, rebuilding it
        first if it does not (under the lock)."""
        if self.broken is not None:
            raise SpoolFileLost(self.broken)
        what = self.file.changed()
        if what is None:
            return
        try:
            self._conn = self.file.recover(
                self._conn, what, "full" if self._full_sync else "normal", self.keepalive
            )
            self._storage.bound_checkpoints(self._conn)
        except SpoolFileLost as err:
            if not err.retryable:  # the old connection is gone and no new one opened
                self.broken = str(err)
                self._closed = True
            raise
        with contextlib.suppress(SpoolError):
            self.record_event("error", "spool_file_rebuilt", self.file.last_rebuild)

    def maintain(self) -> Storage:
        """The agent's periodic pass: rebuild the file if it was lost, allocate the
        ballast again when there is room, and measure the room (for status). Raises
        SpoolFileLost if the spool can no longer be written."""
        with self._lock:
            if self._closed and self.broken is None:
                raise SpoolError("spool is closed (maintenance)")
            self._check_file()
            try:
                self._storage.keep_ballast(self._conn)
                self._storage.measure(self._conn)
            except (sqlite3.Error, OSError) as err:
                log.debug("measuring the spool's room failed: %s", err)
            return self._storage

    # ------------------------------------------------------------------ inspection

    @property
    def pending_bytes(self) -> int:
        return self._queues.pending_bytes

    def newest_captured_at(self, queue: str) -> int | None:
        """The capture time of the newest record a queue still holds: what a camera
        continues after at a restart, so that its times keep increasing."""
        state = self._queues.get(queue)
        with self._read("newest capture") as conn:
            return state.leases.newest_captured_at(conn) if state else None

    def pending(self, queue: str) -> tuple[int, int]:
        """(count, bytes) pending in a queue, leased included."""
        state = self._queues.get(queue)
        return (state.pending_count, state.pending_bytes) if state else (0, 0)

    def read(self, doing: str, reader: Callable[[sqlite3.Connection], T]) -> T:
        """``reader`` on the connection, under the lock (a part's own tables)."""
        with self._read(doing) as conn:
            return reader(conn)

    def record_event(self, level: str, kind: str, message: str) -> None:
        """Keep a short history of notable events for ``edge-agent status``."""
        with self._write("event") as conn:
            insert_event(conn, self._clock_ms(), level, kind, message)

    def stats(self, *, events: int = 10) -> SpoolStats:
        with self._read("status") as conn:
            leased = {state.id: len(state.leases.held) for state in self._queues}
            return read_stats(conn, self.path, leased, events)

    def dead_letters(
        self, *, queue: str | None = None, after_id: int = 0, limit: int = 1000
    ) -> list[DeadLetter]:
        """Dead letters oldest first, optionally of one queue, paged by id."""
        with self._read("dead-letter listing") as conn:
            return dead_letters.list_dead_letters(conn, queue=queue, after_id=after_id, limit=limit)

    def purge_dead_letters(self, *, queue: str | None = None, ids: Sequence[int] = ()) -> int:
        """Delete dead letters (all, of one queue, or by id); returns how many."""
        with self._write("purge") as conn:
            return dead_letters.purge(conn, queue=queue, ids=ids)

    def requeue_dead_letters(self, *, queue: str | None = None, ids: Sequence[int] = ()) -> int:
        """Move dead letters back to the end of their queues (e.g. after fixing a sink)."""
        with self._write("requeue") as conn:
            moved, deltas = dead_letters.requeue(conn, self._queues, queue=queue, ids=ids)
            states = {name: self._queues[name] for name in deltas}
            apply = self._queues.commit(conn, deltas, states)
        apply()
        return moved
