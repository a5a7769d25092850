"""Large payloads (video fragments, clips, pictures) go between Python's bytes and the
spool's pages by SQLite's incremental blob I/O, with no copy of their own in between.

A payload bound to an INSERT is copied twice inside SQLite (the bound value, then the
row being built), and one selected from a row is first assembled in a buffer of its
own, which Python then copies. Each such copy of a large payload is a mapping of its own
(the agent's mmap threshold is 256 KiB, ``malloc_tuning.py``), so every fragment stored
or leased raised the process's resident memory by two or three times its size, and
when several cameras stored and replayed at once those peaks met.

So a row with a payload of ``BLOB_IO_BYTES`` or more is inserted with a zero-filled blob
of its size (SQLite writes the zeros as it fills the pages, without a buffer), and the
payload is then written into it; a lease selects such a payload as NULL (``PAYLOAD``:
the column is NOT NULL, so NULL means "read it by blob") and reads it into one bytes
object. Smaller payloads are bound and selected as before: an extra statement and an
open blob cost more than copying them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from edge_agent.records import RECORD_ID, RECORD_PAYLOAD

#: Payloads from this size on are written and read by blob I/O (the mmap threshold).
BLOB_IO_BYTES = 256 * 1024

#: The payload column as a lease selects it: NULL where it is read by blob.
PAYLOAD = f"CASE WHEN size < {BLOB_IO_BYTES} THEN payload END"

#: One large row, its payload zero-filled until ``write_payload``; id NULL: SQLite's.
INSERT_LARGE = (
    "INSERT INTO records (id, queue_id, partition_key, captured_at_ms, size, meta, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, zeroblob(?))"
)

Row = tuple[object, ...]


def write_payload(conn: sqlite3.Connection, record_id: int, payload: bytes) -> None:
    """Fill the zero-filled payload of a row just inserted with ``INSERT_LARGE``."""
    with conn.blobopen("records", "payload", record_id) as blob:
        blob.write(payload)


def read_payloads(conn: sqlite3.Connection, rows: Sequence[Row]) -> tuple[list[Row], list[int]]:
    """``rows`` with each payload selected as NULL read by blob; and the ids of rows
    deleted since they were selected (by another process: the spool's own connection
    is used under its lock), which are left out."""
    if None not in map(RECORD_PAYLOAD, rows):
        return list(rows), []
    filled: list[Row] = []
    gone: list[int] = []
    for row in rows:
        if RECORD_PAYLOAD(row) is not None:
            filled.append(row)
            continue
        record_id = int(RECORD_ID(row))
        try:
            with conn.blobopen("records", "payload", record_id, readonly=True) as blob:
                payload = blob.read()
        except sqlite3.OperationalError:
            if conn.execute("SELECT 1 FROM records WHERE id = ?", (record_id,)).fetchone():
                raise
            gone.append(record_id)
            continue
        filled.append((*row[:4], payload, *row[5:]))
    return filled, gone
