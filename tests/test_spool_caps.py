"""Caps on their own: overflow decisions, eviction, expiry and pressure warnings."""

from __future__ import annotations

import sqlite3
from collections import defaultdict

import pytest

from edge_agent.spool.caps import Caps, QueuePolicy, TakenBack
from edge_agent.spool.queues import Delta, QueueState
from edge_agent.spool.schema import migrate


@pytest.fixture
def conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    conn.execute("INSERT INTO queues (id, name) VALUES (1, 'v'), (2, 't')")
    return conn


def insert(conn: sqlite3.Connection, queue_id: int, sizes: list[int], at: int = 0) -> None:
    for size in sizes:
        conn.execute(
            "INSERT INTO records (queue_id, partition_key, captured_at_ms, size, payload)"
            " VALUES (?, 'k', ?, ?, zeroblob(?))",
            (queue_id, at, size, size),
        )


def remaining(conn: sqlite3.Connection, queue_id: int) -> list[int]:
    rows = conn.execute("SELECT id FROM records WHERE queue_id = ? ORDER BY id", (queue_id,))
    return [row[0] for row in rows]


def test_policies_default_to_no_caps_and_the_spool_age() -> None:
    caps = Caps({"t": QueuePolicy(max_age_s=5)}, max_age_s=60)
    assert caps.policy("other") == QueuePolicy()
    assert (caps.max_age("t"), caps.max_age("other")) == (5, 60)


def test_would_overflow_counts_the_queue_cap_and_what_cannot_be_evicted() -> None:
    caps = Caps({}, max_bytes=1000)
    capped = QueuePolicy(max_bytes=300, overflow="reject_new")
    assert not caps.would_overflow(capped, 200, 200, 0, 100)
    assert caps.would_overflow(capped, 250, 250, 0, 100)
    # The spool is full, but 600 evictable bytes make room...
    assert not caps.would_overflow(QueuePolicy(), 0, 1000, 600, 100)
    # ...unless there are none.
    assert caps.would_overflow(QueuePolicy(), 0, 1000, 0, 100)


def test_evictable_bytes_are_all_bytes_of_drop_oldest_queues_held_or_not() -> None:
    caps = Caps({"t": QueuePolicy(overflow="reject_new")})
    video, telemetry = QueueState(1, "v", 3, 300), QueueState(2, "t", 1, 100)
    video.leases.held_bytes = 100
    assert caps.evictable_bytes([video, telemetry]) == 300


def test_enforce_evicts_in_capture_order_taking_back_held_records(
    conn: sqlite3.Connection,
) -> None:
    caps = Caps({"v": QueuePolicy(max_bytes=250)})
    insert(conn, 1, [100, 100, 100, 100])
    video = QueueState(1, "v", 4, 400)
    video.leases.held[1] = 100  # an uploader holds the oldest (its request keeps failing)
    video.leases.held_bytes = 100
    deltas: dict[str, Delta] = defaultdict(Delta)
    taken_back: list[TakenBack] = []
    evicted = caps.enforce(
        conn,
        [video],
        {"v": video},
        deltas,
        projected={"v": 400},
        projected_total=400,
        taken_back=taken_back,
    )
    assert evicted == 2 and remaining(conn, 1) == [3, 4]
    assert deltas["v"] == Delta(
        pending_count=-2, pending_bytes=-200, dropped_count=2, dropped_bytes=200
    )
    assert taken_back == [TakenBack(video, 1, 100)]
    video.leases.take_back(1, 100)
    assert video.leases.held == {} and video.leases.held_bytes == 0
    assert video.leases.taken_back == {1}


def test_enforce_keeps_reject_new_queues_under_the_overall_cap(
    conn: sqlite3.Connection,
) -> None:
    caps = Caps({"t": QueuePolicy(overflow="reject_new")}, max_bytes=300)
    insert(conn, 1, [100, 100])
    insert(conn, 2, [200])
    video, telemetry = QueueState(1, "v", 2, 200), QueueState(2, "t", 1, 200)
    states = {"t": telemetry}
    deltas: dict[str, Delta] = defaultdict(Delta)
    evicted = caps.enforce(
        conn,
        [video, telemetry],
        states,
        deltas,
        projected={"t": 200},
        projected_total=400,
        taken_back=[],
    )
    assert evicted == 1 and remaining(conn, 1) == [2] and remaining(conn, 2) == [3]
    assert states["v"] is video  # the caller commits the deltas of every queue evicted from
    assert set(deltas) == {"v"}


def test_expire_deletes_the_old_records_and_counts_them(conn: sqlite3.Connection) -> None:
    caps = Caps({}, max_age_s=1)
    insert(conn, 1, [10], at=100)
    insert(conn, 1, [20], at=900)
    insert(conn, 1, [30], at=100)
    insert(conn, 2, [40], at=100)  # another queue's
    state = QueueState(1, "v", 3, 60)
    delta = caps.expire(conn, state, cutoff_ms=500)
    assert remaining(conn, 1) == [2] and remaining(conn, 2) == [4]
    assert (delta.pending_count, delta.pending_bytes, delta.expired_count) == (-2, -40, 2)


def test_expire_leaves_held_records(conn: sqlite3.Connection) -> None:
    insert(conn, 1, [10, 10], at=100)
    state = QueueState(1, "v", 2, 20)
    state.leases.held[1] = 10
    assert Caps({}).expire(conn, state, cutoff_ms=500).expired_count == 1
    assert remaining(conn, 1) == [1]


def test_pressure_warns_once_and_again_after_falling_below_the_clear_level() -> None:
    caps = Caps({"v": QueuePolicy(max_bytes=1000)}, max_bytes=10_000)
    assert caps.pressure({"v": 700}, 700, {"v": 100}) == []
    (warning,) = caps.pressure({"v": 800}, 800, {"v": 100})
    assert warning.startswith("v is at 80% of its cap (800 of 1000 bytes) (drop_oldest)")
    assert caps.pressure({"v": 900}, 900, {"v": 100}) == []
    assert caps.pressure({"v": 700}, 700, {"v": 100}) == []  # was at 60 %: cleared
    assert len(caps.pressure({"v": 800}, 800, {"v": 100})) == 1
    (whole,) = caps.pressure({}, 9000, {})
    assert whole.startswith("the spool is at 90% of its cap")
