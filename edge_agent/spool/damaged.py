"""Reading a damaged spool file: every sound row a table still gives, with bounded work
(spool/salvage.py writes what is read into a spool).

``read_rows`` reads a table in key order with one statement for as long as the file
reads cleanly. Where a read fails:

- if the failing row's key can still be read (its leaf page is sound, its payload's
  overflow page is not), that row alone is lost;
- otherwise a page of rows cannot be read: the read gallops forward in key space (the
  failing position +1, +3, +7, ...) until a seek succeeds, then bisects back to the
  first position where it does. That costs at most about 126 seeks per damaged span
  whatever the keys are (sparse, or a max key near 2**63), never a walk over the keys.
  The keys an index (``records_by_queue``, ``recordings_by_camera``: other pages) still
  names inside the skipped span are then read one by one, so that a sound page between
  two damaged ones is not skipped with them (the dead letters and the events have no
  index that does: with very sparse ids, such a page of theirs can be).

Garbage that still parses as a page yields rows too: a row is kept only if its columns
have the types they are written with and its payload the length ``size`` says (checked
in SQL, without reading overflow pages: the ``SOUND_*`` conditions), and a row that is
not kept does not move the reading on.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

#: The lowest and highest keys (rowids) SQLite can give a row.
MIN_ID = -(2**63)
MAX_ID = 2**63 - 1
#: How long a read of the damaged file waits for a lock (nothing else should hold one).
_BUSY_TIMEOUT_MS = 1000

Row = tuple[object, ...]

#: The columns read from each table (the key first).
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
RECORDING_COLUMNS = ("id", "camera", "start_ms", "end_ms", "size", "queued", "meta", "payload")
CAMERA_EVENT_COLUMNS = (
    "id",
    "camera",
    "trigger",
    "started_ms",
    "ended_ms",
    "pre_roll_ms",
    "post_roll_ms",
    "fields",
    "announced",
    "covered",
    "fragments",
    "snapshot",
    "created_ms",
)
#: ``requests_done`` is keyed by text: read in rowid order.
REQUEST_DONE_COLUMNS = ("rowid", "id", "kind", "done_ms")

#: What a row read from a damaged file must have to be kept: the types its columns are
#: written with, and a payload as long as its ``size`` says (a row on a garbage page that
#: still parses as one fails this). ``typeof`` and ``length`` of a blob read no
#: overflow page.
SOUND_QUEUE = "typeof(name) = 'text' AND typeof(pending_count) = 'integer'"
SOUND_RECORD = (
    "typeof(queue_id) = 'integer' AND typeof(partition_key) = 'text'"
    " AND typeof(captured_at_ms) = 'integer' AND typeof(payload) = 'blob'"
    " AND length(payload) = size AND (meta IS NULL OR typeof(meta) = 'text')"
)
SOUND_DEAD_LETTER = (
    f"{SOUND_RECORD} AND typeof(attempts) = 'integer' AND typeof(reason) = 'text'"
    " AND typeof(dead_at_ms) = 'integer'"
)
SOUND_RECORDING = (
    "typeof(camera) = 'text' AND typeof(start_ms) = 'integer' AND typeof(end_ms) = 'integer'"
    " AND typeof(queued) = 'integer' AND typeof(meta) = 'text' AND typeof(payload) = 'blob'"
    " AND length(payload) = size"
)
SOUND_CAMERA_EVENT = (
    "typeof(camera) = 'text' AND typeof(trigger) = 'text' AND typeof(started_ms) = 'integer'"
    " AND (ended_ms IS NULL OR typeof(ended_ms) = 'integer')"
    " AND typeof(pre_roll_ms) = 'integer' AND typeof(post_roll_ms) = 'integer'"
    " AND typeof(fields) = 'text' AND typeof(announced) = 'integer'"
    " AND typeof(covered) = 'integer' AND typeof(fragments) = 'integer'"
    " AND typeof(snapshot) = 'integer' AND typeof(created_ms) = 'integer'"
)
SOUND_REQUEST_DONE = "typeof(id) = 'text' AND typeof(kind) = 'text' AND typeof(done_ms) = 'integer'"


class _Damaged:
    """A seek that failed (the page it needs cannot be read)."""


_DAMAGED = _Damaged()


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
    """Every sound row of ``table`` that can be read, in key order; ``columns`` start
    with the key (``id``, or ``rowid``: an integer). ``sound``: an SQL condition a row
    must meet (garbage that happens to parse as a page yields rows too: they must not
    count, nor move the reading on). ``known_ids(lo, hi)``: keys another structure (an
    index) names in ``lo <= key < hi``, tried one by one where a damaged span is
    skipped."""
    columns = tuple(columns)
    key, names = columns[0], ", ".join(columns)
    scan = f"SELECT {names} FROM {table} WHERE {key} >= ? AND ({sound}) ORDER BY {key}"
    single = f"SELECT {names} FROM {table} WHERE {key} = ? AND ({sound})"
    probe = f"SELECT {key} FROM {table} WHERE {key} >= ? AND ({sound}) ORDER BY {key} LIMIT 1"
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


def readable(conn: sqlite3.Connection, table: str, columns: Iterable[str]) -> bool:
    """The damaged file's schema names ``table`` with all of ``columns`` (an older
    schema's file lacks the newer tables)."""
    try:
        found = {row[1] for row in conn.execute(f"PRAGMA table_info({table})").fetchall()}
    except sqlite3.DatabaseError:
        return False
    return bool(found) and set(columns) - {"rowid"} <= found


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
    if not readable(conn, "queues", ("id", "name", "pending_count")):
        return {}, None
    names: dict[int, str] = {}
    promised: int | None = 0
    rows = list(read_rows(conn, "queues", ("id", "name", "pending_count"), sound=SOUND_QUEUE))
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


def indexed_recording_ids(conn: sqlite3.Connection) -> Callable[[int, int], list[int]]:
    """Ids that ``recordings_by_camera`` names in a span (what it can read)."""
    indexed = _has_index(conn, "recordings_by_camera")

    def known(low: int, high: int) -> list[int]:
        found: list[int] = []
        if not indexed:
            return found
        with contextlib.suppress(sqlite3.DatabaseError):
            for (row_id,) in conn.execute(
                "SELECT id FROM recordings INDEXED BY recordings_by_camera"
                " WHERE id >= ? AND id < ?",
                (low, high),
            ):
                found.append(int(row_id))
        return found

    return known
