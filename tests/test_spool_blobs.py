"""Large payloads go in and out of the spool by SQLite's incremental blob I/O
(edge_agent/spool/blobs.py): no copy inside SQLite (its own memory count, read from the
library the sqlite3 module uses), the same rows and bytes as before (read back without
the Spool class), and a filesystem that fills up in the middle of one leaves no row
behind (a real tmpfs: root only, as CI runs)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.errors import SpoolFull
from edge_agent.records import Payload, PayloadPieces, Record
from edge_agent.spool import recordings
from edge_agent.spool.blobs import BLOB_IO_BYTES, read_payloads
from edge_agent.spool.queues import Queues
from edge_agent.spool.schema import migrate
from edge_agent.spool.store import Spool
from edge_agent.spool.writer import _insert_records
from tests.support import sqlite_memory_used, traced_peak

MIB = 1024**2


def fragment(seed: int, size: int = 4 * MIB) -> bytes:
    """Bytes that differ from fragment to fragment and are never all zero."""
    return (bytes((seed + i) % 251 + 1 for i in range(256)) * (size // 256 + 1))[:size]


def sqlite_memory_peak(reset: bool) -> int:
    """SQLite's high-water mark of its memory count (optionally reset to what it holds)."""
    import _sqlite3

    highwater = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_highwater
    highwater.restype = ctypes.c_int64
    highwater.argtypes = [ctypes.c_int]
    return int(highwater(int(reset)))


def stored(path: Path) -> list[tuple[int, str, bytes]]:
    """(id, queue, payload) of every record, read without the Spool class."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT r.id, q.name, r.payload FROM records r JOIN queues q ON q.id = r.queue_id"
            " ORDER BY r.id"
        ).fetchall()
    finally:
        conn.close()


def test_a_large_payload_is_stored_and_leased_without_a_copy_inside_sqlite(
    tmp_path: Path,
) -> None:
    """Binding a 4 MiB fragment raised SQLite's peak by 4 MiB, and selecting it by
    4 MiB more: each a mapping of its own in the agent."""
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([Record("video", "k", 1, fragment(1)), Record("t", "k", 1, b"x")])
        spool.lease("video", max_records=1, max_bytes=10**9)  # the page cache is warm
        before = sqlite_memory_used()
        sqlite_memory_peak(reset=True)
        spool.append([Record("video", "k", 2, fragment(2))])
        appending = sqlite_memory_peak(reset=True) - before
        before = sqlite_memory_used()
        (leased,) = spool.lease("video", max_records=1, max_bytes=10**9)
        leasing = sqlite_memory_peak(reset=True) - before
    assert leased.payload == fragment(2)
    assert appending < MIB, f"appending a 4 MiB fragment took {appending:,} bytes in SQLite"
    assert leasing < MIB, f"leasing a 4 MiB fragment took {leasing:,} bytes in SQLite"


def test_large_and_small_records_keep_their_order_ids_and_bytes(tmp_path: Path) -> None:
    large = BLOB_IO_BYTES
    sizes = [large, 10, 20, large + 1, large * 3, 30, large - 1, large]
    batch = [
        Record("video" if size >= large else "t", f"k{n}", n, fragment(n, size))
        for n, size in enumerate(sizes)
    ]  # fmt: skip
    path = tmp_path / "s.db"
    with Spool.open(path) as spool:
        assert spool.append(batch).stored == len(batch)
        assert spool.append(batch[:2]).stored == 2
        leased = spool.lease("video", max_records=10, max_bytes=10**9)
        leased += spool.lease("t", max_records=10, max_bytes=10**9)
        assert [record.payload for record in leased] == [
            record.payload for record in [*batch, *batch[:2]] if record.queue == "video"
        ] + [record.payload for record in [*batch, *batch[:2]] if record.queue == "t"]
    rows = stored(path)
    assert [row[0] for row in rows] == list(range(1, len(batch) + 3))
    assert [(queue, payload) for _, queue, payload in rows] == [
        (record.queue, record.payload) for record in [*batch, *batch[:2]]
    ]


@pytest.mark.parametrize("first", ["large", "small"])
def test_a_batch_given_its_first_id_starts_there_whichever_kind_comes_first(first: str) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    big, small = fragment(7, BLOB_IO_BYTES), b"small"
    payloads = [big, small, big] if first == "large" else [small, big, small]
    rows: list[tuple[int, str, int, int, str | None, Payload]] = [
        (1, "k", n, len(payload), None, payload) for n, payload in enumerate(payloads)
    ]
    large = [n for n, payload in enumerate(payloads) if len(payload) >= BLOB_IO_BYTES]
    assert _insert_records(conn, rows, large, first_id=40) == 42
    assert conn.execute("SELECT id, payload FROM records ORDER BY id").fetchall() == [
        (40 + n, payload) for n, payload in enumerate(payloads)
    ]


def test_a_large_record_deleted_before_its_payload_is_read_is_left_out(tmp_path: Path) -> None:
    """Another process (the command line) may delete a row between the lease's select
    and its blob read: the row is gone, not an error."""
    path = tmp_path / "s.db"
    with Spool.open(path) as spool:
        spool.append([Record("video", "k", n, fragment(n, BLOB_IO_BYTES)) for n in range(2)])
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        rows: list[tuple[object, ...]] = [
            (1, 0, "k", 0, None, 0, None),
            (2, 0, "k", 1, None, 0, None),
            (3, 0, "k", 2, b"x", 0, None),
        ]
        conn.execute("DELETE FROM records WHERE id = 1")
        filled, gone = read_payloads(conn, rows)
    finally:
        conn.close()
    assert gone == [1]
    assert [row[4] for row in filled] == [fragment(1, BLOB_IO_BYTES), b"x"]


@contextlib.contextmanager
def small_tmpfs(directory: Path, size_mib: int) -> Iterator[Path]:
    directory.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(directory)],
        check=True,
    )
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_disk_that_fills_while_a_large_payload_is_written_leaves_no_row(
    tmp_path: Path,
) -> None:
    """The row is inserted zero-filled and its payload written after: a filesystem that
    fills between the two must not leave a row of zeros. The append fails as a whole,
    and once there is room the same fragment goes in and reads back whole."""
    with small_tmpfs(tmp_path / "fs", 24) as directory:
        path = directory / "s.db"
        with Spool.open(path) as spool:
            spool.append([Record("video", "k", 1, fragment(1, BLOB_IO_BYTES))])
            filler = directory / "filler"
            with open(filler, "wb") as out:  # leave about 1 MiB: less than a fragment
                out.truncate(0)
                free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
                out.write(b"\xa5" * max(0, free - MIB))
            with pytest.raises(SpoolFull):
                spool.append([Record("video", "k", 2, fragment(2))])
            assert spool.pending("video") == (1, BLOB_IO_BYTES)
            filler.unlink()
            assert spool.append([Record("video", "k", 3, fragment(3))]).stored == 1
            leased = spool.lease("video", max_records=10, max_bytes=10**9)
        expected = [fragment(1, BLOB_IO_BYTES), fragment(3)]
        assert [record.payload for record in leased] == expected
        assert [payload for _, _, payload in stored(path)] == expected


def test_the_ring_stores_and_reads_large_fragments_without_a_copy_inside_sqlite(
    tmp_path: Path,
) -> None:
    conn = sqlite3.connect(tmp_path / "ring.db", isolation_level=None)
    migrate(conn)
    payloads = [fragment(1, BLOB_IO_BYTES), b"small", fragment(2)]
    recordings.insert(conn, "yard", 0, 1_000, meta="{}", payload=fragment(3), queued=False)
    recordings.insert(conn, "door", 0, 1_000, meta="{}", payload=payloads[0], queued=False)
    before = sqlite_memory_used()
    sqlite_memory_peak(reset=True)
    for n, payload in enumerate(payloads[1:], start=1):
        recordings.insert(
            conn, "door", n * 2_000, n * 2_000 + 1_000, meta="{}", payload=payload, queued=False
        )
    storing = sqlite_memory_peak(reset=True) - before
    before = sqlite_memory_used()
    unqueued = recordings.unqueued(conn, "door", 0, 10_000)
    ranged = list(recordings.in_range(conn, "door", 0, 10_000))
    reading = sqlite_memory_peak(reset=True) - before
    assert [r.payload for r in unqueued] == payloads
    assert [r.payload for r in ranged] == payloads
    assert [r.id for r in ranged] == [2, 3, 4]
    assert storing < MIB, f"storing a 4 MiB fragment took {storing:,} bytes in SQLite"
    assert reading < MIB, f"reading 4.3 MiB of fragments took {reading:,} bytes in SQLite"


@pytest.mark.parametrize("size", [BLOB_IO_BYTES - 1, 4 * MIB])
def test_a_payload_given_as_pieces_is_stored_whole_and_never_joined(
    tmp_path: Path, size: int
) -> None:
    """A camera hands its fragment over as the Cluster's pieces (its frames' own bytes):
    a large one is written into its rows (queue and ring) a piece at a time, without the
    joined copy that storing it as one bytes object took; a small one is joined and bound."""
    data = fragment(3, size)
    parts = [data[start : start + 40_000] for start in range(0, size, 40_000)]
    pieces = PayloadPieces(parts)
    assert len(pieces) == size
    with Spool.open(tmp_path / "s.db") as spool:

        def also(conn: sqlite3.Connection, _queues: Queues) -> None:
            recordings.insert(conn, "door", 1, 2, meta="{}", payload=pieces, queued=False)

        spool.append([Record("video", "k", 1, fragment(4, 10))])  # the statements warm
        storing = traced_peak(
            lambda: spool.append([Record("video", "k", 2, pieces)], also=also, also_bytes=size)
        )
        leased = spool.lease("video", max_records=2, max_bytes=10 * MIB)
        (ring,) = spool.read("ring", lambda conn: list(recordings.in_range(conn, "door", 0, 10)))
    assert leased[1].payload == data
    assert ring.payload == data
    if size >= BLOB_IO_BYTES:
        assert storing < MIB, f"storing a 4 MiB fragment's pieces took {storing:,} bytes"
