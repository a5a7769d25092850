"""Ids as SQL parameters (edge_agent/spool/id_lists.py): a list of any length gets one
of a few statement texts, and settling requests of every size keeps the spool
connection's prepared statements few (SQLite's own memory count, read from the library
the sqlite3 module uses). Appending batches of every size does too (spool/writer.py
inserts chunks of a power of two rows)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge_agent.records import Record
from edge_agent.spool.id_lists import id_list
from edge_agent.spool.store import Spool
from tests.support import sqlite_memory_used


def test_a_list_is_rounded_up_to_a_power_of_two_with_its_last_id() -> None:
    texts = set()
    for count in range(1, 513):
        ids = list(range(100, 100 + count))
        marks, params = id_list(ids)
        size = marks.count("?")
        assert size >= count and size & (size - 1) == 0 and size < 2 * count
        assert params[:count] == tuple(ids) and set(params[count:]) <= {ids[-1]}
        assert len(params) == size
        texts.add(marks)
    assert len(texts) == 10  # 1, 2, 4, ... 512
    assert id_list([]) == ("NULL", ())


def test_in_ignores_the_repeated_ids() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(10)])
    marks, params = id_list([2, 3, 5])
    assert conn.execute(f"SELECT id FROM t WHERE id IN ({marks})", params).fetchall() == [
        (2,),
        (3,),
        (5,),
    ]
    assert conn.execute(f"DELETE FROM t WHERE id IN ({marks})", params).rowcount == 3


def test_settling_requests_of_every_size_keeps_sqlites_memory_flat(tmp_path: Path) -> None:
    sizes = range(300, 400)  # one text per size would be 100 statements of ~50 KiB
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([Record("q", "k", 1_000, b"x") for _ in range(sum(sizes) + 500)])
        leased = spool.lease("q", max_records=sum(sizes) + 500, max_bytes=10**9)
        spool.ack(leased[:500])  # every text the lease and the settling use, once
        before = sqlite_memory_used()
        start = 500
        for size in sizes:
            assert spool.ack_ids("q", [r.id for r in leased[start : start + size]]) == size
            start += size
        grown = sqlite_memory_used() - before
        assert spool.pending("q") == (0, 0)
    assert grown < 1024 * 1024, f"SQLite's memory grew by {grown:,} bytes"


def test_appending_batches_of_every_size_keeps_sqlites_memory_flat(tmp_path: Path) -> None:
    """An intake catching up commits batches of every size; a multi-row INSERT of each
    size was a statement of its own in the connection's cache (17 MiB for sizes 1-299)."""
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([Record("q", "k", 1_000, b"x" * 200) for _ in range(511)])  # each text
        before = sqlite_memory_used()
        for size in range(1, 300):
            assert spool.append([Record("q", "k", 1_000, b"x" * 200)] * size).stored == size
        grown = sqlite_memory_used() - before
        count, _ = spool.pending("q")
        records = spool.lease("q", max_records=count, max_bytes=10**9)
    assert count == 511 + sum(range(1, 300))
    assert [record.id for record in records] == list(range(1, count + 1))
    assert grown < 4 * 1024 * 1024, f"SQLite's memory grew by {grown:,} bytes"
