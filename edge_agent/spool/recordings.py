"""The local recording ring: each camera's fragments kept on the device, by bytes and
age, apart from the upload queues and their caps (docs/EVENTS.md).

A row is one fragment as the camera cut it: its Matroska Cluster (``payload``) and its
FragmentMeta (``meta``), from ``start_ms`` to ``end_ms`` (the last frame's time).
``queued`` is 1 once the fragment was copied into its camera's upload queue for an
event. The ring never drops a fragment while it may still wait for its upload (the
queue holds one as old: ``trim``'s ``waiting_from_ms``), nor one not yet queued that an
event still to be covered will want (``keep_from_ms``); so it may hold more than its
cap while an outage keeps event video from going.

The camera's thread is the only writer of its camera's rows; it keeps the ring's byte
count in memory (``Ring``), read once at start.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import NamedTuple

from edge_agent.records import Payload
from edge_agent.spool.blobs import PAYLOAD, insert_row, read_payloads

MIGRATION = [
    "CREATE TABLE recordings (id INTEGER PRIMARY KEY, camera TEXT NOT NULL,"
    " start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, size INTEGER NOT NULL,"
    " queued INTEGER NOT NULL DEFAULT 0, meta TEXT NOT NULL, payload BLOB NOT NULL)",
    "CREATE INDEX recordings_by_camera ON recordings (camera, start_ms)",
]


#: The columns an insert gives, but the payload (``blobs.insert_row``).
_COLUMNS = "camera, start_ms, end_ms, size, queued, meta"
#: A Recording's columns; a large payload is read by blob (``blobs.read_payloads``).
_READ = f"id, start_ms, end_ms, meta, {PAYLOAD}"


class Recording(NamedTuple):
    id: int
    start_ms: int
    end_ms: int
    meta: str
    payload: bytes


class RingSize(NamedTuple):
    fragments: int
    bytes: int
    oldest_ms: int | None
    newest_ms: int | None


def size_of(conn: sqlite3.Connection, camera: str) -> RingSize:
    row = conn.execute(
        "SELECT count(*), coalesce(sum(size), 0), min(start_ms), max(end_ms)"
        " FROM recordings WHERE camera = ?",
        (camera,),
    ).fetchone()
    return RingSize(int(row[0]), int(row[1]), row[2], row[3])


def sizes(conn: sqlite3.Connection) -> dict[str, RingSize]:
    """Every camera's ring (status, ``edge-agent events``)."""
    return {
        camera: RingSize(int(count), int(total), oldest, newest)
        for camera, count, total, oldest, newest in conn.execute(
            "SELECT camera, count(*), sum(size), min(start_ms), max(end_ms)"
            " FROM recordings GROUP BY camera"
        )
    }


def insert(
    conn: sqlite3.Connection,
    camera: str,
    start_ms: int,
    end_ms: int,
    *,
    meta: str,
    payload: Payload,
    queued: bool,
) -> int:
    values = (camera, start_ms, end_ms, len(payload), int(queued), meta)
    return insert_row(conn, "recordings", _COLUMNS, values, payload)


def unqueued(conn: sqlite3.Connection, camera: str, from_ms: int, to_ms: int) -> list[Recording]:
    """The fragments overlapping ``[from_ms, to_ms]`` not yet copied to the upload
    queue, oldest first."""
    rows = conn.execute(
        f"SELECT {_READ} FROM recordings"
        " WHERE camera = ? AND start_ms <= ? AND end_ms >= ? AND queued = 0"
        " ORDER BY start_ms",
        (camera, to_ms, from_ms),
    ).fetchall()
    return list(map(Recording._make, read_payloads(conn, rows, "recordings")[0]))


def mark_queued(conn: sqlite3.Connection, ids: list[int]) -> None:
    conn.executemany("UPDATE recordings SET queued = 1 WHERE id = ?", [(i,) for i in ids])


def in_range(
    conn: sqlite3.Connection, camera: str, from_ms: int, to_ms: int
) -> Iterator[Recording]:
    """The fragments overlapping ``[from_ms, to_ms)``, oldest first (clip export)."""
    for row in conn.execute(
        f"SELECT {_READ} FROM recordings"
        " WHERE camera = ? AND start_ms < ? AND end_ms >= ? ORDER BY start_ms",
        (camera, to_ms, from_ms),
    ):
        yield from map(Recording._make, read_payloads(conn, [row], "recordings")[0])


class Trimmed(NamedTuple):
    fragments: int
    bytes: int


def trim(
    conn: sqlite3.Connection,
    camera: str,
    *,
    over_bytes: int,
    older_than_ms: int,
    keep_from_ms: int | None,
    waiting_from_ms: int | None = None,
) -> Trimmed:
    """Delete the camera's oldest fragments, oldest first: at least ``over_bytes`` of
    them, and every one that ended before ``older_than_ms``; stopping at the first one
    not yet queued that ends at or after ``keep_from_ms`` (an event still to be covered
    wants it), and at the first queued one that ends at or after ``waiting_from_ms``
    (its copy may still wait in the upload queue)."""
    deleted: list[tuple[int]] = []
    freed = 0
    for row_id, end_ms, size, queued in conn.execute(
        "SELECT id, end_ms, size, queued FROM recordings WHERE camera = ? ORDER BY start_ms, id",
        (camera,),
    ):
        if freed >= over_bytes and end_ms >= older_than_ms:
            break
        if not queued and keep_from_ms is not None and end_ms >= keep_from_ms:
            break
        if queued and waiting_from_ms is not None and end_ms >= waiting_from_ms:
            break
        deleted.append((row_id,))
        freed += size
    conn.executemany("DELETE FROM recordings WHERE id = ?", deleted)
    return Trimmed(len(deleted), freed)


def newest_queued_ms(conn: sqlite3.Connection, camera: str) -> int | None:
    """The start of the newest fragment of the camera copied to its upload queue."""
    row = conn.execute(
        "SELECT max(start_ms) FROM recordings WHERE camera = ? AND queued = 1", (camera,)
    ).fetchone()
    return None if row[0] is None else int(row[0])


def oldest_waiting_ms(conn: sqlite3.Connection, queue: str) -> int | None:
    """The capture time of the oldest record an upload queue holds (ids follow capture
    order in a camera's queue): queued fragments from then on may not be uploaded yet."""
    row = conn.execute(
        "SELECT r.captured_at_ms FROM records r WHERE r.queue_id ="
        " (SELECT id FROM queues WHERE name = ?) ORDER BY r.id LIMIT 1",
        (queue,),
    ).fetchone()
    return None if row is None else int(row[0])
