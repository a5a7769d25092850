"""A forwarder's lease window and its send log, on a real spool."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.delivery.send_log import SendLog
from edge_agent.delivery.window import LeaseWindow
from edge_agent.records import Record
from edge_agent.spool.caps import QueuePolicy
from edge_agent.spool.store import Spool


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    spool = Spool.open(tmp_path / "spool.db")
    spool.append([Record("q", f"key-{n % 2}", n, b"x" * 100) for n in range(10)])
    return spool


def test_the_window_leases_within_its_bounds_and_refills_by_shares(spool: Spool) -> None:
    with spool:
        window = LeaseWindow(spool, "q", max_records=6, max_bytes=10_000)
        assert window.refill(shares=3)
        assert (len(window), window.size) == (6, 600)
        assert window.full
        window.drop([window.records[1], window.records[2]])
        # a third of the window is free: one share, enough to refill
        assert window.refill(shares=3)
        assert len(window) == 6
        assert sorted(window.records) == [3, 4, 5, 6, 7, 8]


def test_a_refill_waits_for_a_whole_share_unless_any_room_will_do(spool: Spool) -> None:
    with spool:
        window = LeaseWindow(spool, "q", max_records=6, max_bytes=10_000)
        window.refill(shares=2)
        window.drop([window.records[1]])
        assert not window.refill(shares=2)  # 1 free < 3 a share
        assert window.refill(shares=2, any_room=True)
        assert len(window) == 6


def test_records_on_the_wire_are_not_candidates(spool: Spool) -> None:
    with spool:
        window = LeaseWindow(spool, "q", max_records=10, max_bytes=10_000)
        window.refill(shares=1)
        window.in_flight.update({1, 2})
        candidates, next_due = window.candidates(0.0, ordered=False)
        assert [record.id for record in candidates] == [3, 4, 5, 6, 7, 8, 9, 10]
        assert next_due is None


def test_ordered_mode_blocks_the_keys_of_records_in_flight_or_waiting(spool: Spool) -> None:
    with spool:
        window = LeaseWindow(spool, "q", max_records=10, max_bytes=10_000)
        window.refill(shares=1)
        window.in_flight.add(1)  # key-1
        window.hold_for_retry([window.records[2]], due=5.0)  # key-0
        candidates, next_due = window.candidates(1.0, ordered=True)
        assert candidates == []
        assert next_due == 5.0
        assert window.failures == {2: 1}
        # once due, key-0 goes again from its failed record on; key-1 stays blocked
        candidates, _ = window.candidates(5.0, ordered=True)
        assert [record.id for record in candidates] == [2, 4, 6, 8, 10]
        window.drop([window.records[2]])
        assert window.due == {} and window.failures == {}


def test_records_on_the_wire_are_held_without_payloads_and_read_again_to_pack(
    spool: Spool,
) -> None:
    """An aggregate carries its records' bytes: the window holds them bare, still counts
    their bytes, and reads them from the spool again when they are candidates again (their
    request failed as a whole)."""
    with spool:
        window = LeaseWindow(spool, "q", max_records=10, max_bytes=10_000)
        window.refill(shares=1)
        originals = [window.records[n] for n in (1, 2, 3)]
        bare = window.elide(originals)
        assert [record.payload for record in bare] == [b""] * 3
        assert [record.id for record in bare] == [1, 2, 3]
        assert window.records[2] is bare[1]
        assert window.size == 1000 and window.size_of(bare) == 300
        window.in_flight.update({1, 2, 3})
        candidates, _ = window.candidates(0.0, ordered=False)
        assert [record.id for record in candidates] == [4, 5, 6, 7, 8, 9, 10]
        window.in_flight.clear()  # failed as a whole: candidates again, with their bytes
        candidates, _ = window.candidates(0.0, ordered=False)
        assert candidates[:3] == originals
        assert window.elided == {} and window.size == 1000
        window.elide(candidates[:2])
        window.drop([window.records[1], window.records[2]])  # settled bare
        assert (window.size, window.elided) == (800, {})


def test_a_bare_record_eviction_took_leaves_the_window_when_read_again(tmp_path: Path) -> None:
    """The spool took back a held record to make room while it was on the wire: it is
    not packed again (nothing to read), it leaves the window and the spool forgets it."""
    policies = {"video": QueuePolicy(overflow="drop_oldest")}
    with Spool.open(tmp_path / "s.db", policies=policies, max_bytes=1000) as spool:
        spool.append([Record("video", "k", n, bytes([n]) * 300) for n in range(2)])
        window = LeaseWindow(spool, "video", max_records=10, max_bytes=10_000)
        window.refill(shares=1)
        window.elide(list(window.records.values()))
        spool.append([Record("video", "k", 2, b"t" * 500)])  # evicts the oldest, held
        candidates, _ = window.candidates(0.0, ordered=False)
        assert [(record.id, record.payload) for record in candidates] == [(2, bytes([1]) * 300)]
        assert list(window.records) == [2] and window.size == 300
        assert spool.ack(candidates) == 1
        (video,) = [q for q in spool.stats().queues if q["name"] == "video"]
        assert (video["pending_count"], video["dropped_count"]) == (1, 1)


def test_the_send_log_averages_over_its_window_and_forgets_older_sends() -> None:
    log = SendLog(window_s=10.0)
    log.add(0.0, 100, 1_000)
    log.add(5.0, 300, 3_000)
    assert log.rates(9.0) == (40.0, 400.0)
    assert log.rates(12.0) == (30.0, 300.0)  # the send at 0 s is out of the window
    assert log.times_after(4.0) == [5.0]
