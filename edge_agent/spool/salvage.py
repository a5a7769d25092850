"""Salvage: what can still be read of a damaged spool file, copied into a spool.

When the open moves a corrupt file aside (``recovery.open_file``), the records it can
still read are copied into the fresh spool before anything else uses it;
``edge-agent spool salvage FILE`` does the same by hand for an older ``*.corrupt-*``
file (``recovery.salvage_file``).

Reading (``read_rows``) tolerates damaged pages. A table is read in id order with one
statement for as long as the file reads cleanly. Where a read fails:

- if the failing row's id can still be read (its leaf page is sound, its payload's
  overflow page is not), that row alone is lost;
- otherwise a page of rows cannot be read: the read gallops forward in id space (the
  failing position +1, +3, +7, ...) until a seek succeeds, then bisects back to the
  first position where it does. That costs at most about 126 seeks per damaged span
  whatever the ids are (sparse, or a max id near 2**63), never a walk over the ids.
  The ids the records index (``records_by_queue``, other pages) still names inside the
  skipped span are then read one by one, so that a sound page between two damaged ones
  is not skipped with them (the dead letters have no index: with very sparse ids, such
  a page of theirs can be).

Garbage that still parses as a page yields rows too: a row is kept only if its columns
have the types they are written with and its payload the length ``size`` says (checked
in SQL, without reading overflow pages), and a row that is not kept does not move the
reading on. Writing keeps the file's order: rows are inserted in source id order and
get new ids, in transactions of about ``COMMIT_BYTES`` (a spool on nearly full storage
never holds the whole salvage in its WAL), and the queues' pending counters are
recounted at the end. A salvaged record is pending again with no attempts counted: one
that had been sent may be sent again (restart is replay). Records whose queue's name
cannot be read go to the dead letters of a queue ``unknown-queue-<id>``, with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_agent.spool.queues import recount

log = logging.getLogger(__name__)

#: The lowest and highest ids SQLite can give a row.
MIN_ID = -(2**63)
MAX_ID = 2**63 - 1
#: Payload bytes written per transaction while copying salvaged rows.
COMMIT_BYTES = 4 * 1024 * 1024
#: How long a read of the damaged file waits for a lock (nothing else should hold one).
_BUSY_TIMEOUT_MS = 1000

#: The columns read from each table (the id first).
RECORD_COLUMNS = ("id", "queue_id", "partition_key", "captured_at_ms", "size", "meta", "payload")
DEAD_LETTER_COLUMNS = (
    "id",
    "queue_id",
    "partition_key",
    "captured_at_ms",
    "size",
    "meta",
    "payload",
    "attempts",
    "reason",
    "dead_at_ms",
)

Row = tuple[object, ...]


class _Damaged:
    """A seek that failed (the page it needs cannot be read)."""


_DAMAGED = _Damaged()


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
        if self.stopped is not None:
            text += f"; stopped early: {self.stopped}"
        return text


# ---------------------------------------------------------------------- reading


def connect_damaged(path: Path) -> sqlite3.Connection:
    """A read-only connection to a damaged spool file, with its -wal if it has one
    (without one, ``immutable``: nothing is created beside it)."""
    mode = "mode=ro" if Path(f"{path}-wal").exists() else "mode=ro&immutable=1"
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?{mode}", uri=True, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return conn


def read_rows(
    conn: sqlite3.Connection,
    table: str,
    columns: Iterable[str],
    *,
    sound: str = "1",
    known_ids: Callable[[int, int], Iterable[int]] | None = None,
) -> Iterator[Row]:
    """Every sound row of ``table`` that can be read, in id order; ``columns`` start
    with ``id``. ``sound``: an SQL condition a row must meet (garbage that happens to
    parse as a page yields rows too: they must not count, nor move the reading on).
    ``known_ids(lo, hi)``: ids another structure (an index) names in ``lo <= id < hi``,
    tried one by one where a damaged span is skipped."""
    names = ", ".join(columns)
    scan = f"SELECT {names} FROM {table} WHERE id >= ? AND ({sound}) ORDER BY id"
    single = f"SELECT {names} FROM {table} WHERE id = ? AND ({sound})"
    probe = f"SELECT id FROM {table} WHERE id >= ? AND ({sound}) ORDER BY id LIMIT 1"
    position: int | None = MIN_ID
    while position is not None:
        try:
            for row in conn.execute(scan, (position,)):
                row_id = row[0]
                if not isinstance(row_id, int) or row_id < position:
                    continue  # a damaged page can lead back: read each id once
                yield row
                if row_id == MAX_ID:
                    return
                position = row_id + 1
            return
        except sqlite3.DatabaseError:
            pass
        first = _first_id(conn, probe, position)
        if first is None:
            return
        if isinstance(first, int):
            # The row's leaf reads, its content does not (an overflow page): that row only.
            row = _read_one(conn, single, first)
            if row is not None:
                yield row
            position = first + 1 if first < MAX_ID else None
            continue
        resume = _past_damage(conn, probe, position)
        if known_ids is not None:
            for known in sorted(set(known_ids(position, MAX_ID if resume is None else resume))):
                row = _read_one(conn, single, known)
                if row is not None:
                    yield row
        position = resume


def _first_id(conn: sqlite3.Connection, probe: str, position: int) -> int | _Damaged | None:
    """The first id at or after ``position``, None if there is none, or _DAMAGED."""
    try:
        row = conn.execute(probe, (position,)).fetchone()
    except sqlite3.DatabaseError:
        return _DAMAGED
    return None if row is None else int(row[0])


def _read_one(conn: sqlite3.Connection, single: str, row_id: int) -> Row | None:
    try:
        row: Row | None = conn.execute(single, (row_id,)).fetchone()
    except sqlite3.DatabaseError:
        return None
    return row


def _past_damage(conn: sqlite3.Connection, probe: str, position: int) -> int | None:
    """The first position after ``position`` (where a seek fails) at which a seek works
    again, or None if none does up to MAX_ID: gallop, then bisect (a damaged span is
    taken to be contiguous in id space; the caller retries the ids an index knows)."""
    damaged = position
    step = 1
    while True:
        candidate = min(damaged + step, MAX_ID)
        if not isinstance(_first_id(conn, probe, candidate), _Damaged):
            break
        if candidate == MAX_ID:
            return None
        damaged = candidate
        step *= 2
    sound = candidate
    while sound - damaged > 1:
        middle = (damaged + sound) // 2
        if isinstance(_first_id(conn, probe, middle), _Damaged):
            damaged = middle
        else:
            sound = middle
    return sound


def _table_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    try:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})").fetchall()}
    except sqlite3.DatabaseError:
        return set()


def _has_index(conn: sqlite3.Connection, name: str) -> bool:
    try:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
        ).fetchone()
    except sqlite3.DatabaseError:
        return False
    return row is not None


def read_queues(conn: sqlite3.Connection) -> tuple[dict[int, str], int | None]:
    """The damaged file's queue names by id, and the records its counters promise (the
    sum of ``pending_count``; None unless every queue row could be read). Names the
    ``queues`` table has lost are looked for in its index ``queues_by_name``."""
    if not {"id", "name", "pending_count"} <= _table_columns(conn, "queues"):
        return {}, None
    names: dict[int, str] = {}
    promised: int | None = 0
    rows = list(read_rows(conn, "queues", ("id", "name", "pending_count"), sound=_SOUND_QUEUE))
    for queue_id, name, pending in rows:
        assert isinstance(queue_id, int) and isinstance(name, str) and isinstance(pending, int)
        names[queue_id] = name
        if promised is not None:
            promised += pending
    try:
        total = conn.execute("SELECT count(*) FROM queues").fetchone()[0]
    except sqlite3.DatabaseError:
        total = None
    if total != len(rows):
        promised = None
    if promised is None and _has_index(conn, "queues_by_name"):
        with contextlib.suppress(sqlite3.DatabaseError):
            for name, queue_id in conn.execute(
                "SELECT name, id FROM queues INDEXED BY queues_by_name ORDER BY name"
            ):
                if isinstance(name, str) and isinstance(queue_id, int):
                    names.setdefault(queue_id, name)
    return names, promised


def indexed_record_ids(
    conn: sqlite3.Connection, queue_ids: set[int]
) -> Callable[[int, int], list[int]]:
    """Ids that ``records_by_queue`` names in a span, per queue (what it can read)."""
    indexed = _has_index(conn, "records_by_queue")

    def known(low: int, high: int) -> list[int]:
        found: list[int] = []
        if not indexed:
            return found
        for queue_id in sorted(queue_ids):
            with contextlib.suppress(sqlite3.DatabaseError):
                for (row_id,) in conn.execute(
                    "SELECT id FROM records INDEXED BY records_by_queue"
                    " WHERE queue_id = ? AND id >= ? AND id < ? ORDER BY id",
                    (queue_id, low, high),
                ):
                    found.append(int(row_id))
        return found

    return known


#: What a row read from a damaged file must have to be kept: the types its columns are
#: written with, and a payload as long as its ``size`` says (a row on a garbage page that
#: still parses as one fails this). ``typeof`` and ``length`` of a blob read no
#: overflow page.
_SOUND_QUEUE = "typeof(name) = 'text' AND typeof(pending_count) = 'integer'"
_SOUND_RECORD = (
    "typeof(queue_id) = 'integer' AND typeof(partition_key) = 'text'"
    " AND typeof(captured_at_ms) = 'integer' AND typeof(payload) = 'blob'"
    " AND length(payload) = size AND (meta IS NULL OR typeof(meta) = 'text')"
)
_SOUND_DEAD_LETTER = (
    f"{_SOUND_RECORD} AND typeof(attempts) = 'integer' AND typeof(reason) = 'text'"
    " AND typeof(dead_at_ms) = 'integer'"
)


# ---------------------------------------------------------------------- writing


@dataclass
class _Counts:
    records: int = 0
    dead_letters: int = 0
    orphans: int = 0


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

    def commit(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")
        done, now = self.committed, self._uncommitted
        self.committed = _Counts(
            done.records + now.records,
            done.dead_letters + now.dead_letters,
            done.orphans + now.orphans,
        )
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
        source.name, done.records, unreadable, done.dead_letters, done.orphans, stopped
    )
    log.log(logging.INFO if salvaged.complete else logging.WARNING, "%s", salvaged.describe())
    return salvaged


def _copy(damaged: sqlite3.Connection, target: _Target, names: dict[int, str]) -> None:
    """Records, then dead letters, from ``damaged`` into ``target`` (the target's errors
    propagate; the damaged file's are skipped over by read_rows)."""
    now_ms = int(time.time() * 1000)
    if set(RECORD_COLUMNS) <= _table_columns(damaged, "records"):
        queue_ids = set(names)  # and those the rows name: the index is read per queue
        known = indexed_record_ids(damaged, queue_ids)
        for row in read_rows(
            damaged, "records", RECORD_COLUMNS, sound=_SOUND_RECORD, known_ids=known
        ):
            queue_id = row[1]
            assert isinstance(queue_id, int)
            queue_ids.add(queue_id)
            name = names.get(queue_id)
            if name is None:
                target.orphan(queue_id, row, now_ms)
            else:
                target.record(name, row)
    if set(DEAD_LETTER_COLUMNS) <= _table_columns(damaged, "dead_letters"):
        for row in read_rows(
            damaged, "dead_letters", DEAD_LETTER_COLUMNS, sound=_SOUND_DEAD_LETTER
        ):
            queue_id = row[1]
            assert isinstance(queue_id, int)
            target.dead_letter(names.get(queue_id) or unknown_queue(queue_id), row)
