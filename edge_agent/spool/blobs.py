"""Large payloads (video fragments, clips, pictures) go between Python's bytes and the
spool's pages by SQLite's incremental blob I/O, with no copy of their own in between.

A payload bound to an INSERT is copied twice inside SQLite (the bound value, then the
row being built), and one selected from a row is first assembled in a buffer of its
own, which Python then copies. Each such copy of a large payload is a mapping of its own
(the agent's mmap threshold is 256 KiB, ``malloc_tuning.py``), so every fragment stored
(in its upload queue and in its camera's ring) or leased raised the process's resident
memory by two or three times its size, and when several cameras stored and replayed at
once those peaks met.

So a row with a payload of ``BLOB_IO_BYTES`` or more is inserted with a zero-filled blob
of its size (SQLite writes the zeros as it fills the pages, without a buffer), and the
payload is then written into it, in the same transaction; a read selects such a payload
as NULL (``PAYLOAD``: the column is NOT NULL, so NULL means "read it by blob") and reads
it into one bytes object. Smaller payloads are bound and selected as before: an extra
statement and an open blob cost more than copying them. The tables with payloads
(``records``, ``recordings``) have it as their last column, after ``size``.

A reader that writes a payload out as it goes (a video sink putting a fragment on the
wire) need not hold all of it: ``unread_payloads`` leaves such payloads in the spool,
and ``read_piece`` reads one a piece at a time.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence

from edge_agent.records import RECORD_ID, RECORD_PAYLOAD, Payload, payload_bytes

#: Payloads from this size on are written and read by blob I/O (the mmap threshold).
BLOB_IO_BYTES = 256 * 1024

#: The payload column as a read selects it: NULL where it is read by blob.
PAYLOAD = f"CASE WHEN size < {BLOB_IO_BYTES} THEN payload END"

Row = tuple[object, ...]


def insert_row(
    conn: sqlite3.Connection, table: str, columns: str, values: Sequence[object], payload: Payload
) -> int:
    """``INSERT INTO table (columns, payload)``; a large payload written by blob (given
    as pieces, a piece at a time). Returns the row's id (an ``id`` among the columns
    given as None: SQLite's choice)."""
    marks = ", ".join("?" * len(values))
    large = len(payload) >= BLOB_IO_BYTES
    sql = f"INSERT INTO {table} ({columns}, payload) VALUES ({marks}, "
    sql += "zeroblob(?))" if large else "?)"
    bound = len(payload) if large else payload_bytes(payload)
    row_id = conn.execute(sql, (*values, bound)).lastrowid
    assert row_id is not None
    if large:
        with conn.blobopen(table, "payload", row_id) as blob:
            for part in (payload,) if isinstance(payload, bytes) else payload.parts:
                blob.write(part)
    return row_id


def read_payloads(
    conn: sqlite3.Connection, rows: Sequence[Row], table: str = "records"
) -> tuple[list[Row], list[int]]:
    """``rows`` (id first, payload fifth) with each payload selected as NULL read by
    blob; and the ids of rows deleted since they were selected (by another process: the
    spool's own connection is used under its lock), which are left out."""
    if None not in map(RECORD_PAYLOAD, rows):
        return list(rows), []
    filled: list[Row] = []
    gone: list[int] = []
    for row in rows:
        if RECORD_PAYLOAD(row) is not None:
            filled.append(row)
            continue
        row_id = int(RECORD_ID(row))
        with _opened(conn, table, row_id) as blob:
            if blob is None:
                gone.append(row_id)
                continue
            payload = blob.read()
        filled.append((*row[:4], payload, *row[5:]))
    return filled, gone


def unread_payloads(
    conn: sqlite3.Connection, rows: Sequence[Row]
) -> tuple[list[Row], list[int], list[int]]:
    """``rows`` of ``records`` (id first, payload fifth) with each payload selected as
    NULL left in the spool: empty, to be read with ``read_piece``; the size of each
    row's payload; and the ids of rows deleted since they were selected, left out."""
    kept: list[Row] = []
    sizes: list[int] = []
    gone: list[int] = []
    for row in rows:
        payload = RECORD_PAYLOAD(row)
        if payload is not None:
            kept.append(row)
            sizes.append(len(payload))
            continue
        row_id = int(RECORD_ID(row))
        found = conn.execute("SELECT size FROM records WHERE id = ?", (row_id,)).fetchone()
        if found is None:
            gone.append(row_id)
            continue
        kept.append((*row[:4], b"", *row[5:]))
        sizes.append(int(found[0]))
    return kept, sizes, gone


def read_piece(conn: sqlite3.Connection, row_id: int, offset: int, size: int) -> bytes | None:
    """Up to ``size`` bytes of a record's payload from ``offset`` on (empty from its end
    on); None if the record is no longer in the spool."""
    with _opened(conn, "records", row_id) as blob:
        if blob is None:
            return None
        if offset >= len(blob):
            return b""
        blob.seek(offset)
        return blob.read(size)


@contextlib.contextmanager
def _opened(conn: sqlite3.Connection, table: str, row_id: int) -> Iterator[sqlite3.Blob | None]:
    """A row's payload opened for reading; None if the row is gone."""
    try:
        blob = conn.blobopen(table, "payload", row_id, readonly=True)
    except sqlite3.OperationalError:
        if conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (row_id,)).fetchone():
            raise
        yield None
        return
    with blob:
        yield blob
