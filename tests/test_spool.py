"""The spool: lease/ack/retry/dead-letter, caps, recovery and quarantine."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from edge_agent.errors import SpoolCorrupt, SpoolError, SpoolFull
from edge_agent.records import LeasedRecord, Record
from edge_agent.spool.caps import QueuePolicy
from edge_agent.spool.recovery import mark_suspect
from edge_agent.spool.store import Spool
from tests.test_spool_schema import write_version_1_spool


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now_ms


#: Telemetry refuses new records when full; video gives up its oldest.
KEEP_TELEMETRY = {
    "telemetry": QueuePolicy(overflow="reject_new"),
    "video": QueuePolicy(overflow="drop_oldest"),
}


def rec(queue: str, payload: bytes, key: str = "k", at: int = 0) -> Record:
    return Record(queue=queue, partition_key=key, captured_at_ms=at, payload=payload)


def test_append_lease_ack_oldest_first(tmp_path: Path) -> None:
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([rec("q", f"m{i}".encode()) for i in range(10)])
        first = spool.lease("q", max_records=4, max_bytes=10_000)
        assert [r.payload for r in first] == [b"m0", b"m1", b"m2", b"m3"]
        second = spool.lease("q", max_records=100, max_bytes=10_000)
        assert [r.payload for r in second] == [f"m{i}".encode() for i in range(4, 10)]
        assert spool.ack(first) == 4
        assert spool.pending("q") == (6, 12)
        stats = spool.stats().queues[0]
        assert (stats["acked_count"], stats["leased_count"], stats["pending_count"]) == (4, 6, 6)


def test_records_settle_by_id_without_their_payloads(tmp_path: Path) -> None:
    """What an uploader keeps of a record on the wire (``on_the_wire``) or a deleter of
    an accepted batch (its ids) settles it in full: deleted, counted with its bytes."""
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([rec("q", f"m{i}".encode()) for i in range(10)])
        leased = spool.lease("q", max_records=10, max_bytes=10_000)
        assert spool.ack([record.on_the_wire() for record in leased[:3]]) == 3
        assert spool.ack_ids("q", [record.id for record in leased[3:8]]) == 5
        assert spool.release([record.on_the_wire() for record in leased[8:]]) == 2
        assert spool.pending("q") == (2, 4)
        stats = spool.stats().queues[0]
        assert (stats["acked_count"], stats["acked_bytes"], stats["leased_count"]) == (8, 16, 0)
        again = spool.lease("q", max_records=10, max_bytes=10_000)
        assert [r.payload for r in again] == [b"m8", b"m9"]


def test_the_newest_record_can_be_leased_first_and_the_older_ones_after_it(
    tmp_path: Path,
) -> None:
    """What a live-first video sink does: the newest fragment first, then the backlog
    below it in order, while records newer than it are kept for the next live lease."""
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([rec("v", f"f{i}".encode(), at=i * 1000) for i in range(6)])
        newest = spool.lease_newest("v")
        assert newest is not None and newest.payload == b"f5"
        assert not spool.newest_is_after("v", newest.captured_at_ms)
        spool.append([rec("v", b"f6", at=6000)])
        assert spool.newest_is_after("v", newest.captured_at_ms)
        backlog = spool.lease("v", max_records=3, max_bytes=10**6, captured_before_ms=5000)
        assert [r.payload for r in backlog] == [b"f0", b"f1", b"f2"]
        live = spool.lease_newest("v", captured_after_ms=newest.captured_at_ms)
        assert live is not None and live.payload == b"f6"
        assert spool.lease_newest("v", captured_after_ms=live.captured_at_ms) is None
        spool.release(backlog[1:])
        rest = spool.lease("v", max_records=10, max_bytes=10**6, captured_before_ms=5000)
        assert [r.payload for r in rest] == [b"f1", b"f2", b"f3", b"f4"]
        spool.release([live])  # a live fragment given back is the newest again
        again = spool.lease_newest("v")
        assert again is not None and again.payload == b"f6"


def test_lease_respects_byte_budget_but_returns_at_least_one(tmp_path: Path) -> None:
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([rec("q", b"x" * 100) for _ in range(5)])
        assert len(spool.lease("q", max_records=10, max_bytes=250)) == 2
        assert len(spool.lease("q", max_records=10, max_bytes=10)) == 1


def test_retry_waits_until_its_time_and_counts_attempts(tmp_path: Path) -> None:
    clock = FakeClock()
    with Spool.open(tmp_path / "s.db", clock_ms=clock) as spool:
        spool.append([rec("q", b"a"), rec("q", b"b")])
        leased = spool.lease("q", max_records=1, max_bytes=100)
        spool.retry(leased, at_ms=clock.now_ms + 5000)
        assert [r.payload for r in spool.lease("q", max_records=10, max_bytes=100)] == [b"b"]
        clock.now_ms += 5000
        again = spool.lease("q", max_records=10, max_bytes=100)
        assert [(r.payload, r.attempts) for r in again] == [(b"a", 1)]
        assert spool.stats().queues[0]["retried_count"] == 1


def test_dead_letter_keeps_payload_and_reason(tmp_path: Path) -> None:
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([rec("q", b"bad", key="k1"), rec("q", b"good")])
        bad = spool.lease("q", max_records=1, max_bytes=100)
        assert spool.dead_letter(bad, "rejected as invalid") == 1
        letters = spool.dead_letters()
        assert [(d.payload, d.reason, d.partition_key, d.queue) for d in letters] == [
            (b"bad", "rejected as invalid", "k1", "q")
        ]
        assert spool.pending("q") == (1, 4)
        assert spool.requeue_dead_letters(queue="q") == 1
        assert [r.payload for r in spool.lease("q", max_records=9, max_bytes=99)] == [
            b"good",
            b"bad",
        ]
        assert spool.purge_dead_letters() == 0


def test_oversize_record_is_dead_lettered_at_append(tmp_path: Path) -> None:
    policies = {"q": QueuePolicy(max_record_bytes=10)}
    with Spool.open(tmp_path / "s.db", policies=policies) as spool:
        result = spool.append([rec("q", b"x" * 11), rec("q", b"ok")])
        assert (result.stored, result.dead_lettered) == (1, 1)
        (letter,) = spool.dead_letters()
        assert "11 bytes exceeds the sink's limit of 10 bytes" in letter.reason


def test_drop_oldest_cap_evicts_and_counts(tmp_path: Path) -> None:
    policies = {"video": QueuePolicy(max_bytes=1000, overflow="drop_oldest")}
    with Spool.open(tmp_path / "s.db", policies=policies) as spool:
        for i in range(15):
            spool.append([rec("video", bytes([i]) * 100)])
        assert spool.pending("video") == (10, 1000)
        leased = spool.lease("video", max_records=100, max_bytes=10**6)
        assert [r.payload[0] for r in leased] == list(range(5, 15))
        stats = spool.stats().queues[0]
        assert (stats["dropped_count"], stats["dropped_bytes"]) == (5, 500)


def test_a_queue_filling_up_is_warned_about_once_before_anything_is_dropped(
    tmp_path: Path,
) -> None:
    policies = {"video": QueuePolicy(max_bytes=1000, overflow="drop_oldest")}
    with Spool.open(tmp_path / "s.db", policies=policies) as spool:
        for i in range(7):
            spool.append([rec("video", bytes([i]) * 100)])
        assert not [e for e in spool.stats().events if e["kind"] == "spool_pressure"]
        for i in range(7, 10):  # 80 %, 90 %, 100 %: one warning, nothing dropped yet
            spool.append([rec("video", bytes([i]) * 100)])
        warnings = [e for e in spool.stats().events if e["kind"] == "spool_pressure"]
        assert len(warnings) == 1 and "video is at 80% of its cap" in warnings[0]["message"]
        assert spool.stats().queues[0]["dropped_count"] == 0
        spool.ack(spool.lease("video", max_records=5, max_bytes=10**6))  # drained to 50 %
        spool.append([rec("video", b"x" * 300)])  # 80 % again: warned again
        warnings = [e for e in spool.stats().events if e["kind"] == "spool_pressure"]
        assert len(warnings) == 2


def test_reject_new_cap_refuses_and_counts(tmp_path: Path) -> None:
    policies = {"alarms": QueuePolicy(max_bytes=300, overflow="reject_new")}
    with Spool.open(tmp_path / "s.db", policies=policies) as spool:
        result = spool.append([rec("alarms", bytes([i]) * 100) for i in range(5)])
        assert (result.stored, result.rejected) == (3, 2)
        assert [r.payload[0] for r in spool.lease("alarms", max_records=9, max_bytes=9999)] == [
            0,
            1,
            2,
        ]
        assert spool.stats().queues[0]["rejected_count"] == 2


def test_overall_cap_evicts_drop_oldest_queues_only(tmp_path: Path) -> None:
    with Spool.open(tmp_path / "s.db", policies=KEEP_TELEMETRY, max_bytes=1000) as spool:
        spool.append([rec("telemetry", b"t" * 100) for _ in range(4)])
        spool.append([rec("video", b"v" * 200) for _ in range(5)])
        assert spool.pending("telemetry") == (4, 400)
        assert spool.pending("video") == (3, 600)
        # Telemetry may still grow by evicting video, but never beyond the overall cap.
        result = spool.append([rec("telemetry", b"t" * 100) for _ in range(10)])
        assert result.stored == 6 and result.rejected == 4
        assert spool.pending("video") == (0, 0)
        assert spool.pending("telemetry")[1] == 1000


def test_age_cap_expires_old_records(tmp_path: Path) -> None:
    clock = FakeClock()
    with Spool.open(tmp_path / "s.db", max_age_s=60, clock_ms=clock) as spool:
        spool.append(
            [rec("q", b"old", at=clock.now_ms - 61_000), rec("q", b"new", at=clock.now_ms)]
        )
        assert spool.expire() == 1
        assert [r.payload for r in spool.lease("q", max_records=9, max_bytes=99)] == [b"new"]
        assert spool.stats().queues[0]["expired_count"] == 1


def test_leases_of_a_dead_process_return_to_pending(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool.open(path)
    spool.append([rec("q", b"a"), rec("q", b"b")])
    assert len(spool.lease("q", max_records=5, max_bytes=100)) == 2
    spool.close()  # as if the process died holding the leases
    with Spool.open(path) as reopened:
        again = reopened.lease("q", max_records=5, max_bytes=100)
        assert [r.payload for r in again] == [b"a", b"b"]


def test_leases_marked_by_an_older_agent_are_cleared_at_open(tmp_path: Path) -> None:
    """Agents before in-memory leases wrote ``leased = 1`` (schema version 1); such a
    spool replays too."""
    path = tmp_path / "s.db"
    write_version_1_spool(path, [("q", b"a", 1), ("q", b"b", 1)])
    with Spool.open(path) as reopened:
        assert [r.payload for r in reopened.lease("q", max_records=5, max_bytes=100)] == [
            b"a",
            b"b",
        ]
        kinds = [event["kind"] for event in reopened.stats().events]
        assert "leases_returned" in kinds


def test_ids_freed_at_the_top_are_leased_when_reused(tmp_path: Path) -> None:
    """SQLite hands the id after the highest row to a new one: once a drained queue's
    top rows are deleted, new records reuse ids at or below what was leased."""
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([rec("q", b"a"), rec("q", b"b")])
        spool.ack(spool.lease("q", max_records=5, max_bytes=100))
        spool.append([rec("q", b"c")])
        (again,) = spool.lease("q", max_records=5, max_bytes=100)
        assert again.payload == b"c"
        held = spool.lease("q", max_records=5, max_bytes=100)
        assert held == []


def test_a_retried_record_comes_back_when_due_and_never_twice(tmp_path: Path) -> None:
    clock = FakeClock()
    with Spool.open(tmp_path / "s.db", clock_ms=clock) as spool:
        spool.append([rec("q", bytes([i])) for i in range(4)])
        first = spool.lease("q", max_records=2, max_bytes=100)
        spool.retry(first[:1], at_ms=clock.now_ms + 1000)
        assert [r.payload for r in spool.lease("q", max_records=5, max_bytes=100)] == [
            b"\x02",
            b"\x03",
        ]
        assert spool.lease("q", max_records=5, max_bytes=100) == []
        clock.now_ms += 1000
        (back,) = spool.lease("q", max_records=5, max_bytes=100)
        assert (back.payload, back.attempts) == (b"\x00", 1)
        assert spool.stats().queues[0]["leased_count"] == 4


def test_garbage_file_is_quarantined_and_a_fresh_spool_opens(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a database" * 1000)
    with Spool.open(path) as spool:
        spool.append([rec("q", b"fresh")])
        stats = spool.stats()
        assert stats.events[0]["kind"] == "spool_quarantined"
    moved = list(tmp_path.glob("spool.db.corrupt-*"))
    assert len(moved) == 1
    assert moved[0].read_bytes().startswith(b"this is not a database")


def test_damaged_pages_are_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool.open(path) as spool:
        spool.append([rec("q", bytes(200) * 20) for _ in range(200)])
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(page * 3, min(len(data), page * 12)):
        data[offset] = 0xA5  # scribble over b-tree pages
    path.write_bytes(bytes(data))
    with Spool.open(path) as spool:
        assert spool.stats().events[0]["kind"] == "spool_quarantined"
        assert spool.pending("q") == (0, 0)
    assert len(list(tmp_path.glob("spool.db.corrupt-*"))) == 1


def test_second_writer_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with Spool.open(tmp_path / "s.db"), pytest.raises(SpoolError, match="in use by pid"):
        Spool.open(tmp_path / "s.db")


def test_read_only_view_sees_committed_data(tmp_path: Path) -> None:
    with Spool.open(tmp_path / "s.db") as writer:
        writer.append([rec("q", b"abc")])
        with Spool.open_read_only(tmp_path / "s.db") as reader:
            assert reader.stats().queues[0]["pending_count"] == 1
            with pytest.raises(SpoolError, match="read-only"):
                reader.append([rec("q", b"x")])


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Spool.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SpoolError, match="newer than this agent"):
        Spool.open(path)


# ---------------------------------------------------------------------- properties

QUEUES = ("a", "b")


class SpoolMachine(RuleBasedStateMachine):
    """Every record appended is, at every step, in exactly one place: pending (leased or
    not), acked, dead-lettered, or counted as dropped/rejected. Leases come oldest first."""

    leased = Bundle("leased")

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "s.db"
        self.clock = FakeClock()
        self.policies = {
            "a": QueuePolicy(max_bytes=2000, overflow="drop_oldest"),
            "b": QueuePolicy(max_bytes=1500, overflow="reject_new", max_record_bytes=400),
        }
        self.spool = self._open()
        self.next_seq = 0
        self.pending: dict[str, dict[int, int]] = {q: {} for q in QUEUES}  # seq -> size
        self.outstanding: set[int] = set()  # seqs currently leased
        self.acked: set[int] = set()
        self.dead: set[int] = set()
        self.gone: set[int] = set()  # dropped or rejected, as the spool reports

    def _open(self) -> Spool:
        return Spool.open(self.path, policies=self.policies, clock_ms=self.clock)

    @staticmethod
    def seq(record: LeasedRecord) -> int:
        return int(record.partition_key)

    def _sync_drops(self) -> None:
        """Records the spool evicted or rejected are no longer pending; eviction takes
        back leased ones too, and a drop_oldest queue ("a") loses its oldest first."""
        live: set[int] = set()
        for queue in QUEUES:
            for record in self._peek(queue):
                live.add(self.seq(record))
        for queue in QUEUES:
            dropped = [seq for seq in self.pending[queue] if seq not in live]
            for seq in dropped:
                del self.pending[queue][seq]
                self.outstanding.discard(seq)
                self.gone.add(seq)
            if queue == "a" and dropped and self.pending[queue]:
                assert max(dropped) < min(self.pending[queue]), "not the oldest dropped"

    def _peek(self, queue: str) -> list[LeasedRecord]:
        conn = sqlite3.connect(self.path)
        try:
            rows = conn.execute(
                "SELECT r.id, r.partition_key, r.captured_at_ms FROM records r JOIN queues q"
                " ON q.id = r.queue_id WHERE q.name = ? ORDER BY r.id",
                (queue,),
            ).fetchall()
        finally:
            conn.close()
        return [LeasedRecord(rid, queue, key, at, b"", 0) for rid, key, at in rows]

    @rule(queue=st.sampled_from(QUEUES), sizes=st.lists(st.integers(1, 500), max_size=8))
    def append(self, queue: str, sizes: list[int]) -> None:
        records = []
        for size in sizes:
            records.append(rec(queue, b"x" * size, key=str(self.next_seq), at=self.clock.now_ms))
            self.clock.now_ms += 1  # capture times increase, as a camera's do
            self.pending[queue][self.next_seq] = size
            self.next_seq += 1
        result = self.spool.append(records)
        assert result.stored + result.rejected + result.dead_lettered == len(records)
        if result.dead_lettered:
            dead_keys = {int(d.partition_key) for d in self.spool.dead_letters(limit=10**6)}
            for seq in dead_keys - self.dead:
                for q in QUEUES:
                    self.pending[q].pop(seq, None)
                self.dead.add(seq)
        self._sync_drops()

    @rule(target=leased, queue=st.sampled_from(QUEUES), count=st.integers(1, 6))
    def lease(self, queue: str, count: int) -> list[LeasedRecord]:
        got = self.spool.lease(queue, max_records=count, max_bytes=10**6)
        seqs = [self.seq(r) for r in got]
        assert seqs == sorted(seqs), "lease must return oldest first"
        eligible = sorted(s for s in self.pending[queue] if s not in self.outstanding)
        assert seqs == eligible[: len(seqs)]
        self.outstanding.update(seqs)
        return got

    @rule(target=leased, queue=st.sampled_from(QUEUES))
    def lease_newest(self, queue: str) -> list[LeasedRecord]:
        got = self.spool.lease_newest(queue)
        eligible = sorted(s for s in self.pending[queue] if s not in self.outstanding)
        if not eligible:
            assert got is None
            return []
        assert got is not None and self.seq(got) == eligible[-1], "the newest not held"
        self.outstanding.add(self.seq(got))
        return [got]

    @rule(
        target=leased,
        queue=st.sampled_from(QUEUES),
        count=st.integers(1, 6),
        cut=st.integers(0, 40),
    )
    def lease_older(self, queue: str, count: int, cut: int) -> list[LeasedRecord]:
        """Only records captured before one of the queue's (a backlog behind live video)."""
        rows = self._peek(queue)
        if not rows:
            return []
        before = rows[cut % len(rows)].captured_at_ms
        got = self.spool.lease(queue, max_records=count, max_bytes=10**6, captured_before_ms=before)
        seqs = [self.seq(r) for r in got]
        older = {self.seq(r) for r in rows if r.captured_at_ms < before}
        eligible = sorted(s for s in older if s not in self.outstanding)
        assert seqs == eligible[: len(seqs)] and len(seqs) == min(count, len(eligible))
        self.outstanding.update(seqs)
        return got

    @rule(batch=consumes(leased))
    def ack(self, batch: list[LeasedRecord]) -> None:
        live = [r for r in batch if self.seq(r) in self.outstanding]
        assert self.spool.ack(live) == len(live)
        for record in live:
            self.outstanding.discard(self.seq(record))
            self.pending[record.queue].pop(self.seq(record))
            self.acked.add(self.seq(record))

    @rule(batch=consumes(leased))
    def retry(self, batch: list[LeasedRecord]) -> None:
        live = [r for r in batch if self.seq(r) in self.outstanding]
        assert self.spool.retry(live, at_ms=self.clock.now_ms) == len(live)
        self.outstanding.difference_update(self.seq(r) for r in live)

    @rule(batch=consumes(leased))
    def dead_letter(self, batch: list[LeasedRecord]) -> None:
        live = [r for r in batch if self.seq(r) in self.outstanding]
        assert self.spool.dead_letter(live, "test") == len(live)
        for record in live:
            self.outstanding.discard(self.seq(record))
            self.pending[record.queue].pop(self.seq(record))
            self.dead.add(self.seq(record))

    @rule(batch=consumes(leased))
    def release(self, batch: list[LeasedRecord]) -> None:
        live = [r for r in batch if self.seq(r) in self.outstanding]
        assert self.spool.release(live) == len(live)
        self.outstanding.difference_update(self.seq(r) for r in live)

    @precondition(lambda self: True)
    @rule()
    def crash_and_reopen(self) -> None:
        self.spool.close()
        self.spool = self._open()
        self.outstanding.clear()  # every lease returns to pending

    @invariant()
    def every_record_is_accounted_for_exactly_once(self) -> None:
        places = [
            set().union(*(set(self.pending[q]) for q in QUEUES)),
            self.acked,
            self.dead,
            self.gone,
        ]
        assert sum(len(p) for p in places) == self.next_seq
        assert set().union(*places) == set(range(self.next_seq))

    @invariant()
    def counters_match_rows(self) -> None:
        stats = {q["name"]: q for q in self.spool.stats().queues}
        for queue in QUEUES:
            expected = self.pending[queue]
            got = stats.get(queue)
            assert (got["pending_count"] if got else 0) == len(expected)
            assert (got["pending_bytes"] if got else 0) == sum(expected.values())
        total_acked = sum(q["acked_count"] for q in stats.values())
        total_dead = sum(q["dead_count"] for q in stats.values())
        total_gone = sum(q["dropped_count"] + q["rejected_count"] for q in stats.values())
        assert (total_acked, total_dead, total_gone) == (
            len(self.acked),
            len(self.dead),
            len(self.gone),
        )

    @invariant()
    def caps_hold(self) -> None:
        assert self.spool.pending("a")[1] <= 2000 + sum(
            size for seq, size in self.pending["a"].items() if seq in self.outstanding
        )
        assert self.spool.pending("b")[1] <= 1500

    def teardown(self) -> None:
        self.spool.close()
        self.dir.cleanup()


TestSpoolProperties = SpoolMachine.TestCase
TestSpoolProperties.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_full_disk_refuses_the_batch_keeps_the_rest_and_recovers(tmp_path: Path) -> None:
    """SQLite's own 'database or disk is full' (SQLITE_FULL), provoked with max_page_count."""
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([rec("q", b"kept")])
        pages = spool._conn.execute("PRAGMA page_count").fetchone()[0]
        spool._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        with pytest.raises(SpoolFull) as caught:
            spool.append([rec("q", bytes(4096)) for _ in range(50)])
        assert caught.value.retryable
        assert spool.pending("q") == (1, 4)  # the failed batch left nothing behind
        spool._conn.execute("PRAGMA max_page_count = 1073741823")
        assert spool.append([rec("q", bytes(4096)) for _ in range(50)]).stored == 50
        assert spool.pending("q") == (51, 4 + 50 * 4096)


def test_corruption_seen_at_runtime_gets_a_full_check_at_the_next_open(tmp_path: Path) -> None:
    """An index that no longer matches its table passes quick_check; after SQLite reported
    corruption at runtime, the next open runs the full integrity check and quarantines."""
    path = tmp_path / "s.db"
    with Spool.open(path) as spool:
        spool.append([rec("q", b"x" * 10, at=i) for i in range(50)])
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute(
        "UPDATE sqlite_master SET sql = 'CREATE INDEX records_by_queue ON records"
        " (queue_id, captured_at_ms)' WHERE name = 'records_by_queue'"
    )
    conn.close()
    with Spool.open(path) as spool:  # quick_check passes: not detected yet
        assert not list(tmp_path.glob("s.db.corrupt-*"))
        with pytest.raises(SpoolCorrupt):
            spool.ack(spool.lease("q", max_records=5, max_bytes=10**6))
    mark_suspect(path)  # what the agent does before it exits for a restart
    with Spool.open(path) as spool:
        assert spool.stats().events[0]["kind"] == "spool_quarantined"
    assert len(list(tmp_path.glob("s.db.corrupt-*"))) == 1
    assert not Path(f"{path}.needs-check").exists()


def test_leased_records_are_taken_back_oldest_first_to_make_room(tmp_path: Path) -> None:
    """A request that holds the oldest video (and keeps failing) does not make younger
    records go first: eviction takes the held ones back, and their settle changes
    nothing more."""
    with Spool.open(tmp_path / "s.db", policies=KEEP_TELEMETRY, max_bytes=1000) as spool:
        spool.append([rec("video", bytes([n]) * 300) for n in range(2)])
        spool.append([rec("telemetry", b"t" * 400)])
        in_flight = spool.lease("video", max_records=2, max_bytes=10_000)
        result = spool.append([rec("telemetry", b"t" * 100)])
        assert (result.stored, result.evicted, result.rejected) == (1, 1, 0)
        assert spool.pending_bytes <= 1000
        assert spool.retry(in_flight, at_ms=0) == 1  # only the younger one is still there
        (left,) = spool.lease("video", max_records=5, max_bytes=10_000)
        assert left.payload == bytes([1]) * 300
        assert spool.ack([left, *in_flight]) == 1
        (video,) = [q for q in spool.stats().queues if q["name"] == "video"]
        assert (video["pending_count"], video["acked_count"], video["dropped_count"]) == (0, 1, 1)


def test_leased_payloads_are_the_bytes_appended(tmp_path: Path) -> None:
    """Binary payloads, NUL bytes, invalid UTF-8 and empty payloads come back unchanged,
    with their keys, in order, and a lease stops at its byte limit."""
    rng = random.Random(7)
    small = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))) for _ in range(3000)]
    small[5] = b""
    small[6] = b"\x00\xff\xfe\x80 \xc3"
    large = [bytes([n]) * (20_000 + n) for n in range(40)]
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([rec("small", p, key=f"k\u00e9{n % 13}") for n, p in enumerate(small)])
        spool.append([rec("large", p) for p in large])
        got: list[LeasedRecord] = []
        while batch := spool.lease("small", max_records=700, max_bytes=10**6):
            got += batch
        assert [r.payload for r in got] == small
        assert [r.partition_key for r in got] == [f"k\u00e9{n % 13}" for n in range(3000)]
        assert [r.id for r in got] == sorted(r.id for r in got)
        within = spool.lease("large", max_records=100, max_bytes=100_000)
        assert [r.payload for r in within] == large[:4]
