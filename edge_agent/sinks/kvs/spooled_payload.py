"""A fragment put on the wire straight from the spool, a piece at a time.

A video sink leases its fragments without their large payloads (``read_large=False``:
from ``blobs.BLOB_IO_BYTES`` on, such a record's payload is empty) and writes each one
as it reads it: the 1080p camera's fragments are 1.4 MB, and read whole each was a
mapping of its own for as long as it took to send, in every video sink at once while
they replayed a backlog. A piece is read under the spool's lock, by blob, and written
before the next is read; the record cannot change meanwhile (a payload is never
rewritten), but it can be deleted (evicted for room, expired): then the fragment cannot
be finished, and the caller must drop the connection it was being written to.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from edge_agent.records import LeasedRecord
from edge_agent.spool.blobs import read_piece
from edge_agent.spool.store import Spool

#: Bytes read from the spool at once (below the mmap threshold, ``malloc_tuning.py``:
#: the pieces reuse the same heap memory).
PIECE_BYTES = 128 * 1024


def send_spooled(
    spool: Spool,
    record: LeasedRecord,
    send: Callable[[bytes], None],
    piece_bytes: int = PIECE_BYTES,
) -> int | None:
    """Write the payload ``record`` was leased without, ``piece_bytes`` at a time, with
    ``send``; the bytes written, or None if the record left the spool before all of it
    was read (what was written is only part of it)."""
    written = 0
    while True:
        read = functools.partial(read_piece, row_id=record.id, offset=written, size=piece_bytes)
        piece = spool.read("reading a fragment", read)
        if piece is None:
            return None
        if piece:
            send(piece)
            written += len(piece)
        if len(piece) < piece_bytes:
            return written
