"""Salvage: what can still be read of a damaged spool file, copied into a spool.

When the open moves a corrupt file aside (``recovery.open_file``), the records it can
still read are copied into the fresh spool before anything else uses it;
``edge-agent spool salvage FILE`` does the same by hand for an older ``*.corrupt-*``
file (``recovery.salvage_file``).

Reading tolerates damaged pages (spool/damaged.py). Writing keeps the file's order:
rows are inserted in source id order and get new ids, in transactions of about
``COMMIT_BYTES`` (a spool on nearly full storage never holds the whole salvage in its
WAL), and the queues' pending counters are recounted at the end. What is copied, in
this order (so that a spool that fills stops after what matters most):

1. records: pending again with no attempts counted, so one that had been sent may be
   sent again (restart is replay). Records whose queue's name cannot be read go to the
   dead letters of a queue ``unknown-queue-<id>``, with the reason;
2. dead letters, with their reasons;
3. the recording ring (``recordings``): each fragment with its ``queued`` mark. A
   fragment the spool already holds (same camera and start: a salvage run twice) is
   not copied again;
4. the events (``camera_events``), with their ids, announcement and coverage: an event
   is announced once, and its video queued once, across the salvage. An id the spool
   already gives another event is given a new one; the same event (camera, trigger,
   start, creation) is not copied twice;
5. the command-line requests done (``requests_done``), so none runs twice.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.spool.damaged import (
    CAMERA_EVENT_COLUMNS,
    DEAD_LETTER_COLUMNS,
    RECORD_COLUMNS,
    RECORDING_COLUMNS,
    REQUEST_DONE_COLUMNS,
    SOUND_CAMERA_EVENT,
    SOUND_DEAD_LETTER,
    SOUND_RECORD,
    SOUND_RECORDING,
    SOUND_REQUEST_DONE,
    Row,
    connect_damaged,
    indexed_record_ids,
    indexed_recording_ids,
    read_queues,
    read_rows,
    readable,
)
from edge_agent.spool.queues import recount

log = logging.getLogger(__name__)

#: Payload bytes written per transaction while copying salvaged rows.
COMMIT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Salvaged:
    """What a salvage copied out of a damaged file."""

    #: The damaged file's name.
    source: str
    #: Records copied into the spool (pending again).
    records: int
    #: Records the file's own queue counters promised and that could not be copied;
    #: None when those counters could not be read.
    unreadable: int | None
    #: Dead letters copied (with their reasons).
    dead_letters: int = 0
    #: Records whose queue's name could not be read: kept as dead letters of
    #: ``unknown-queue-<id>``.
    orphans: int = 0
    #: Fragments of the recording ring copied.
    ring_fragments: int = 0
    #: Events copied.
    events: int = 0
    #: Why copying stopped before the end (the spool's disk full, ...), if it did.
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        """Everything the file promised was copied as pending records."""
        return self.unreadable == 0 and not self.orphans and self.stopped is None

    def describe(self) -> str:
        if self.unreadable is None:
            text = (
                f"salvaged {self.records:,} records from {self.source} (how many could not "
                "be read is unknown: its queue counters are unreadable)"
            )
        else:
            promised = self.records + self.unreadable + self.orphans
            text = (
                f"salvaged {self.records:,} of {promised:,} records from {self.source} "
                f"({self.unreadable:,} unreadable)"
            )
        if self.orphans:
            text += (
                f", {self.orphans:,} records of queues whose names are unreadable kept as "
                "dead letters of unknown-queue-<id>"
            )
        if self.dead_letters:
            text += f", {self.dead_letters:,} dead letters"
        if self.ring_fragments:
            text += f", {self.ring_fragments:,} recorded fragments"
        if self.events:
            text += f", {self.events:,} events"
        if self.stopped is not None:
            text += f"; stopped early: {self.stopped}"
        return text


# ---------------------------------------------------------------------- writing


@dataclass
class _Counts:
    records: int = 0
    dead_letters: int = 0
    orphans: int = 0
    ring_fragments: int = 0
    events: int = 0

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(
            self.records + other.records,
            self.dead_letters + other.dead_letters,
            self.orphans + other.orphans,
            self.ring_fragments + other.ring_fragments,
            self.events + other.events,
        )


class _Target:
    """The spool being written: its queue ids by name, and a transaction of about
    COMMIT_BYTES at a time; counts what was committed."""

    def __init__(self, conn: sqlite3.Connection, source: str) -> None:
        self.conn = conn
        self.source = source
        self.committed = _Counts()
        self._uncommitted = _Counts()
        self._uncommitted_bytes = 0
        self._queue_ids: dict[str, int] = {}
        self._events_held: set[tuple[object, ...]] | None = None

    def record(self, name: str, row: Row) -> None:
        """A record row (RECORD_COLUMNS) as a pending record of queue ``name``."""
        _, _, key, captured, size, meta, payload = row
        self._insert(
            "INSERT INTO records (queue_id, partition_key, captured_at_ms, size, meta,"
            " payload) VALUES (?, ?, ?, ?, ?, ?)",
            (self._queue_id(name), key, captured, size, meta, payload),
        )
        self._uncommitted.records += 1
        self._written(size)

    def dead_letter(self, name: str, row: Row) -> None:
        """A dead-letter row (DEAD_LETTER_COLUMNS) as a dead letter of queue ``name``."""
        _, _, key, captured, size, meta, payload, attempts, reason, dead_at = row
        self._insert(
            "INSERT INTO dead_letters (queue_id, partition_key, captured_at_ms, size,"
            " attempts, reason, dead_at_ms, meta, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self._queue_id(name), key, captured, size, attempts, reason, dead_at, meta, payload),
        )
        self._uncommitted.dead_letters += 1
        self._written(size)

    def orphan(self, queue_id: int, row: Row, now_ms: int) -> None:
        """A record row whose queue's name is unreadable: a dead letter of
        ``unknown-queue-<id>`` that says so."""
        _, _, key, captured, size, meta, payload = row
        reason = f"salvaged from {self.source}, whose name for queue {queue_id} could not be read"
        self._insert(
            "INSERT INTO dead_letters (queue_id, partition_key, captured_at_ms, size,"
            " attempts, reason, dead_at_ms, meta, payload) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
            (
                self._queue_id(unknown_queue(queue_id)),
                key,
                captured,
                size,
                reason,
                now_ms,
                meta,
                payload,
            ),
        )
        self._uncommitted.orphans += 1
        self._written(size)

    def recording(self, row: Row) -> None:
        """A ring fragment (RECORDING_COLUMNS), unless the spool holds its camera's
        fragment of that start already."""
        _, camera, start, end, size, queued, meta, payload = row
        if self.conn.execute(
            "SELECT 1 FROM recordings WHERE camera = ? AND start_ms = ?", (camera, start)
        ).fetchone():
            return
        self._insert(
            "INSERT INTO recordings (camera, start_ms, end_ms, size, queued, meta, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (camera, start, end, size, queued, meta, payload),
        )
        self._uncommitted.ring_fragments += 1
        self._written(size)

    def camera_event(self, row: Row, *, new_id: bool = False) -> bool:
        """An event (CAMERA_EVENT_COLUMNS), unless the spool holds it (the same camera,
        trigger, start and creation): with its id, or a new one if ``new_id``. False,
        and nothing written, when its id is another event's (give it a new one after
        the others have theirs)."""
        if self._events_held is None:
            self._events_held = {
                tuple(held)
                for held in self.conn.execute(
                    "SELECT camera, trigger, started_ms, created_ms FROM camera_events"
                )
            }
        event_id, camera, trigger, started, *_, created = row
        identity = (camera, trigger, started, created)
        if identity in self._events_held:
            return True
        if (
            not new_id
            and self.conn.execute(
                "SELECT 1 FROM camera_events WHERE id = ?", (event_id,)
            ).fetchone()
        ):
            return False
        first = 1 if new_id else 0  # without the id column: SQLite gives one
        names = ", ".join(CAMERA_EVENT_COLUMNS[first:])
        values = row[first:]
        marks = ", ".join("?" * len(values))
        self._insert(f"INSERT INTO camera_events ({names}) VALUES ({marks})", values)
        self._events_held.add(identity)
        self._uncommitted.events += 1
        return True

    def request_done(self, row: Row) -> None:
        """A command-line request done (REQUEST_DONE_COLUMNS): never run again."""
        _, request_id, kind, done_ms = row
        self._insert(
            "INSERT OR IGNORE INTO requests_done (id, kind, done_ms) VALUES (?, ?, ?)",
            (request_id, kind, done_ms),
        )

    def commit(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")
        self.committed += self._uncommitted
        self._uncommitted = _Counts()
        self._uncommitted_bytes = 0

    def abandon(self) -> None:
        """Roll back what was not committed (after an error of the spool written)."""
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
        self._uncommitted = _Counts()
        self._uncommitted_bytes = 0
        self._queue_ids.clear()  # rows made in the rolled-back transaction are gone
        self._events_held = None

    def _queue_id(self, name: str) -> int:
        queue_id = self._queue_ids.get(name)
        if queue_id is None:
            self.conn.execute("INSERT OR IGNORE INTO queues (name) VALUES (?)", (name,))
            row = self.conn.execute("SELECT id FROM queues WHERE name = ?", (name,)).fetchone()
            queue_id = self._queue_ids[name] = int(row[0])
        return queue_id

    def _insert(self, sql: str, values: tuple[object, ...]) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(sql, values)

    def _written(self, size: object) -> None:
        self._uncommitted_bytes += size if isinstance(size, int) else 0
        if self._uncommitted_bytes >= COMMIT_BYTES:
            self.commit()


def unknown_queue(queue_id: int) -> str:
    """The queue that keeps records whose queue's name could not be read."""
    return f"unknown-queue-{queue_id}"


def salvage_into(conn: sqlite3.Connection, source: Path) -> Salvaged:
    """Copy what can be read of the damaged spool file ``source`` into the spool open
    on ``conn`` (schema current, no transaction open), in order, then recount its
    queues' pending counters. An error of the spool being written (disk full) stops
    the copy with what was committed kept; the damaged file is only read."""
    target = _Target(conn, source.name)
    promised: int | None = None
    try:
        damaged = connect_damaged(source)
    except sqlite3.Error as err:
        log.warning("cannot read %s for a salvage: %s", source, err)
        return Salvaged(source.name, 0, None, stopped=f"cannot open it: {err}")
    stopped = None
    try:
        names, promised = read_queues(damaged)
        try:
            _copy(damaged, target, names)
            target.commit()
        except sqlite3.Error as err:
            target.abandon()
            stopped = str(err)
            log.error("salvage of %s stopped: %s", source, err)
    finally:
        damaged.close()
    recount(conn)
    done = target.committed
    unreadable = None if promised is None else max(0, promised - done.records - done.orphans)
    salvaged = Salvaged(
        source.name,
        done.records,
        unreadable,
        done.dead_letters,
        done.orphans,
        done.ring_fragments,
        done.events,
        stopped,
    )
    log.log(logging.INFO if salvaged.complete else logging.WARNING, "%s", salvaged.describe())
    return salvaged


def _copy(damaged: sqlite3.Connection, target: _Target, names: dict[int, str]) -> None:
    """Records, dead letters, the ring, the events and the requests done, from
    ``damaged`` into ``target`` (the target's errors propagate; the damaged file's are
    skipped over by read_rows; a table an older schema lacks is skipped)."""
    now_ms = int(time.time() * 1000)
    if readable(damaged, "records", RECORD_COLUMNS):
        queue_ids = set(names)  # and those the rows name: the index is read per queue
        known = indexed_record_ids(damaged, queue_ids)
        for row in read_rows(
            damaged, "records", RECORD_COLUMNS, sound=SOUND_RECORD, known_ids=known
        ):
            queue_id = row[1]
            assert isinstance(queue_id, int)
            queue_ids.add(queue_id)
            name = names.get(queue_id)
            if name is None:
                target.orphan(queue_id, row, now_ms)
            else:
                target.record(name, row)
    if readable(damaged, "dead_letters", DEAD_LETTER_COLUMNS):
        for row in read_rows(damaged, "dead_letters", DEAD_LETTER_COLUMNS, sound=SOUND_DEAD_LETTER):
            queue_id = row[1]
            assert isinstance(queue_id, int)
            target.dead_letter(names.get(queue_id) or unknown_queue(queue_id), row)
    if readable(damaged, "recordings", RECORDING_COLUMNS):
        known = indexed_recording_ids(damaged)
        for row in read_rows(
            damaged, "recordings", RECORDING_COLUMNS, sound=SOUND_RECORDING, known_ids=known
        ):
            target.recording(row)
    if readable(damaged, "camera_events", CAMERA_EVENT_COLUMNS):
        renumbered = [
            row
            for row in read_rows(
                damaged, "camera_events", CAMERA_EVENT_COLUMNS, sound=SOUND_CAMERA_EVENT
            )
            if not target.camera_event(row)
        ]
        for row in renumbered:
            target.camera_event(row, new_id=True)
    if readable(damaged, "requests_done", REQUEST_DONE_COLUMNS):
        for row in read_rows(
            damaged, "requests_done", REQUEST_DONE_COLUMNS, sound=SOUND_REQUEST_DONE
        ):
            target.request_done(row)
