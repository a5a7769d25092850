"""QueueLeases on its own: the held set, the floor and the handed-back ids."""

from __future__ import annotations

import sqlite3
import tracemalloc
from pathlib import Path

import pytest

from edge_agent.records import LeasedRecord, Record
from edge_agent.spool.leases import QueueLeases
from edge_agent.spool.schema import migrate
from edge_agent.spool.store import Spool


def row(record_id: int, payload: bytes = b"xx", captured: int = 0) -> tuple[object, ...]:
    return (record_id, "q", "k", captured, payload, 0, None)


@pytest.fixture
def conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    conn.execute("INSERT INTO queues (id, name) VALUES (1, 'q'), (2, 'other')")
    return conn


def insert(conn: sqlite3.Connection, queue_id: int, *captured: int) -> list[int]:
    ids = []
    for at in captured:
        cursor = conn.execute(
            "INSERT INTO records (queue_id, partition_key, captured_at_ms, size, payload)"
            " VALUES (?, 'k', ?, 1, x'00')",
            (queue_id, at),
        )
        assert cursor.lastrowid is not None
        ids.append(cursor.lastrowid)
    return ids


def test_take_holds_rows_within_the_byte_limit_and_raises_the_floor() -> None:
    leases = QueueLeases(1, "q")
    taken = leases.take([row(1), row(2), row(3)], [], max_bytes=4)
    assert all(isinstance(record, LeasedRecord) for record in taken)
    assert [record.id for record in taken] == [1, 2]
    assert (leases.held, leases.held_bytes, leases.floor) == ({1: 2, 2: 2}, 4, 2)
    # At least one, whatever its size.
    assert [r.id for r in leases.take([row(3, b"x" * 100)], [], max_bytes=1)] == [3]
    assert leases.take([], [], max_bytes=10) == []


def test_hand_back_and_forget_release_what_is_held_only() -> None:
    leases = QueueLeases(1, "q")
    leases.take([row(1), row(2), row(3)], [], max_bytes=100)
    assert leases.hand_back([1, 2], due_ms=50) == 2
    assert leases.returned == {1: 50, 2: 50}
    assert leases.hand_back([1], due_ms=60) == 0  # not held any more
    assert leases.returned == {1: 50, 2: 50}
    assert leases.forget([3]) == 1
    assert (leases.held, leases.held_bytes) == ({}, 0)
    # Taking a handed-back id again removes it from the handed-back ones.
    leases.take([row(2)], [1], max_bytes=100)
    assert leases.returned == {} and leases.held == {2: 2}


def test_lower_floor_drops_handed_back_ids_above_the_top() -> None:
    leases = QueueLeases(1, "q")
    leases.hand_back([r.id for r in leases.take([row(5), row(9)], [], max_bytes=100)], due_ms=0)
    leases.lower_floor(7)
    assert (leases.floor, leases.returned) == (7, {5: 0})
    leases.lower_floor(100)  # never raised
    assert leases.floor == 7


def test_lease_reads_due_handed_back_records_first_then_new_ones(
    conn: sqlite3.Connection,
) -> None:
    ids = insert(conn, 1, 10, 20, 30, 40)
    insert(conn, 2, 15)  # another queue's
    leases = QueueLeases(1, "q")
    first = leases.lease(conn, max_records=2, max_bytes=100, now=0)
    assert [r.id for r in first] == ids[:2]
    leases.hand_back([r.id for r in first[1:]], due_ms=1000)
    assert [r.id for r in leases.lease(conn, max_records=5, max_bytes=100, now=999)] == ids[2:]
    again = leases.lease(conn, max_records=5, max_bytes=100, now=1000)
    assert [r.id for r in again] == [ids[1]]
    assert leases.lease(conn, max_records=5, max_bytes=100, now=2000) == []


def test_a_handed_back_record_that_is_gone_is_forgotten(conn: sqlite3.Connection) -> None:
    ids = insert(conn, 1, 10, 20)
    leases = QueueLeases(1, "q")
    leases.hand_back([r.id for r in leases.lease(conn, max_records=2, max_bytes=100, now=0)], 0)
    conn.execute("DELETE FROM records WHERE id = ?", (ids[0],))  # evicted meanwhile
    assert [r.id for r in leases.lease(conn, max_records=5, max_bytes=100, now=0)] == [ids[1]]
    assert leases.returned == {}


def test_captured_before_stops_at_the_first_newer_record(conn: sqlite3.Connection) -> None:
    ids = insert(conn, 1, 10, 20, 30)
    leases = QueueLeases(1, "q")
    got = leases.lease(conn, max_records=5, max_bytes=100, now=0, captured_before_ms=25)
    assert [r.id for r in got] == ids[:2]
    assert leases.floor == ids[1]


def test_lease_newest_skips_the_backlog_and_hands_it_back_due_now(
    conn: sqlite3.Connection,
) -> None:
    ids = insert(conn, 1, 10, 20, 30)
    leases = QueueLeases(1, "q")
    newest = leases.lease_newest(conn)
    assert newest is not None and newest.id == ids[2]
    assert leases.returned == {ids[0]: 0, ids[1]: 0}
    assert leases.newest_is_after(conn, 29) and not leases.newest_is_after(conn, 30)
    assert leases.lease_newest(conn, captured_after_ms=30) is None
    # Nothing new: the newest handed back, if new enough.
    again = leases.lease_newest(conn, captured_after_ms=5)
    assert again is not None and again.id == ids[1]
    assert set(leases.held) == {ids[1], ids[2]}


def test_leased_records_share_their_queue_name_and_partition_keys(tmp_path: Path) -> None:
    """A forwarder's window holds thousands of small records of a few keys: each holds
    its id, capture time and payload, and shares the rest. (A str of the queue and one
    of the key per record were 124 of the 633 bytes a 233-byte reading cost.)"""
    readings = 5000
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append(
            [
                Record("telemetry-kinesis", f"sensor-{i % 8:02d}", 1_700_000_000 + i, b"r" * 233)
                for i in range(readings)
            ]
        )
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            leased = spool.lease("telemetry-kinesis", max_records=readings, max_bytes=2**30)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert len(leased) == readings
    assert {record.queue for record in leased} == {"telemetry-kinesis"}
    assert [record.partition_key for record in leased[:9]] == [
        f"sensor-{i % 8:02d}" for i in range(9)
    ]
    assert len({id(record.queue) for record in leased}) == 1
    assert len({id(record.partition_key) for record in leased}) == 8
    beyond_payload = held / readings - (bytes.__basicsize__ + 233)
    assert beyond_payload < 300, f"{beyond_payload:.0f} bytes a record beside its payload"
