"""The spool's own answers to storage faults, at the Spool level: its file deleted,
replaced or stripped of its WAL under it; the room on its filesystem; what a restart
sends again. The same faults against the whole agent, on real filesystems that fill
up, are in test_storage_faults.py."""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import IntakePaused, SpoolFileLost, SpoolFull
from edge_agent.records import Record
from edge_agent.spool import file_watch, settle
from edge_agent.spool import storage as storage_module
from edge_agent.spool.storage import Storage
from edge_agent.spool.store import SMALL_SETTLE, Spool


def rec(seq: int, queue: str = "q", size: int = 10) -> Record:
    return Record(queue, str(seq), seq, seq.to_bytes(4, "big") * (size // 4 or 1))


def rows(path: Path) -> list[str]:
    """The partition keys in the file at ``path``, read without the Spool class."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [key for (key,) in conn.execute("SELECT partition_key FROM records ORDER BY id")]
    finally:
        conn.close()


def spool_files(path: Path) -> list[Path]:
    return [Path(f"{path}{extra}") for extra in ("", "-wal", "-shm")]


@pytest.mark.parametrize("deleted", ["everything", "database", "wal"])
def test_a_spool_deleted_under_the_agent_is_rebuilt_before_the_next_ack(
    tmp_path: Path, deleted: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.db"
    with Spool.open(path) as spool:
        spool.append([rec(n) for n in range(100)])
        held = spool.lease("q", max_records=10, max_bytes=10**6)
        doomed = {
            "everything": spool_files(path),
            "database": [path],
            "wal": [Path(f"{path}-wal")],
        }[deleted]
        for file in doomed:
            file.unlink()
        with caplog.at_level(logging.ERROR):
            # The append commits to the open (unlinked) inode; before it returns, the
            # spool notices and rebuilds the file from that inode.
            assert spool.append([rec(n) for n in range(100, 150)]).stored == 50
        assert "rebuilding it from the open spool" in caplog.text
        assert spool.file.rebuilds == 1
        assert rows(path) == [str(n) for n in range(150)]
        # Leases kept their meaning: the held records are acked in the new file.
        assert spool.ack(held) == 10
        spool.append([rec(150)])
        spool.maintain()
        assert spool.file.rebuilds == 1  # nothing more to do
    with Spool.open(path) as spool:
        assert spool.pending("q") == (141, 141 * 8)
        events = [event["kind"] for event in spool.stats(events=20).events]
        assert "spool_file_rebuilt" in events
    assert not list(tmp_path.glob("*.replaced-*")), "only files not the spool's go aside"
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_watching_the_files_on_every_append_interns_no_strings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every append checks that the spool's file and WAL are still the ones it opened. A
    Path made from a string interns its parts: the WAL's name, made for each check, was
    interned and freed a thousand times a second in a busy intake, and the interpreter
    rebuilt its table of interned strings (1.8 MiB, one allocation beside the old one)
    every half minute."""
    interned: list[str] = []
    real_intern = sys.intern

    def counted(text: str) -> str:
        interned.append(text)
        return real_intern(text)

    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([rec(0)])
        with monkeypatch.context() as patch:
            patch.setattr(sys, "intern", counted)
            for n in range(1, 201):
                assert spool.append([rec(n)]).stored == 1
        assert spool.file.changed() is None  # still watching
    assert interned == []


def test_a_file_put_in_the_spools_place_is_moved_aside_never_deleted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool.open(path) as spool:
        spool.append([rec(n) for n in range(20)])
        for file in spool_files(path):
            file.unlink()
        path.write_bytes(b"someone else's file")
        spool.maintain()  # the agent's periodic pass finds it without intake
        assert spool.file.rebuilds == 1 and spool.file.lost is None
        assert rows(path) == [str(n) for n in range(20)]
    (aside,) = tmp_path.glob("s.db.replaced-*")
    assert aside.read_bytes() == b"someone else's file"


def test_the_lock_file_comes_back_with_the_spool(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool.open(path) as spool:
        spool.append([rec(1)])
        for file in [*spool_files(path), Path(f"{path}.lock")]:
            file.unlink()
        spool.maintain()
        with pytest.raises(Exception, match="in use by pid"):
            Spool.open(path)  # a second writer is still refused


def test_sent_and_unconfirmed_records_are_counted_as_resent_after_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    with Spool.open(path) as spool:
        spool.append([rec(n) for n in range(50)] + [rec(n, "other") for n in range(5)])
        first = spool.lease("q", max_records=20, max_bytes=10**6)
        spool.mark_sent(first)
        spool.ack(first[:10])  # confirmed: not counted
        second = spool.lease("q", max_records=5, max_bytes=10**6)
        spool.mark_sent(second)
        spool.retry(second, at_ms=0)  # a failed request: still possibly delivered
        spool.lease("q", max_records=5, max_bytes=10**6)  # leased, never sent
        other = spool.lease("other", max_records=5, max_bytes=10**6)
        spool.mark_sent(other)
        # The process dies here (close() writes nothing about leases).
    with Spool.open(path) as spool:
        counts = {q["name"]: q["resent_after_restart_count"] for q in spool.stats().queues}
        assert counts == {"q": 15, "other": 5}
        assert "sent again" in spool.stats().events[0]["message"]
        everything = spool.lease("q", max_records=100, max_bytes=10**6)
        spool.mark_sent(everything)
        spool.ack(everything)
    with Spool.open(path) as spool:  # all confirmed: nothing more counted
        counts = {q["name"]: q["resent_after_restart_count"] for q in spool.stats().queues}
        assert counts == {"q": 15, "other": 5}
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM sent_marks").fetchone() == (0,)
    conn.close()


def test_marks_of_acked_batches_do_not_pile_up(tmp_path: Path) -> None:
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([rec(n) for n in range(1000)])
        stuck = spool.lease("q", max_records=1, max_bytes=10**6)  # the oldest, in retry
        spool.mark_sent(stuck)
        for _ in range(99):
            batch = spool.lease("q", max_records=10, max_bytes=10**6)
            spool.mark_sent(batch)
            spool.ack(batch)
        conn = sqlite3.connect(tmp_path / "s.db")
        assert conn.execute("SELECT count(*) FROM sent_marks").fetchone() == (1,)
        conn.close()


class FakeFilesystem:
    """statvfs of a filesystem with ``free`` bytes for the agent's user."""

    def __init__(self, free: int, size: int = 1024**3) -> None:
        self.free = free
        self.size = size

    def __call__(self, path: object) -> os.statvfs_result:
        block = 1  # exact byte counts
        free = self.free // block
        return os.statvfs_result(
            (block, block, self.size // block, free + 100, free, 0, 0, 0, 0, 255)
        )


def test_intake_pauses_below_the_reserve_once_and_resumes_above_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """statvfs is faked here to step the free space exactly; real filesystems that
    fill are in test_storage_faults.py. Every append measures (no trusted window)."""
    filesystem = FakeFilesystem(free=100 * 1024**2)
    monkeypatch.setattr(os, "statvfs", filesystem)
    monkeypatch.setattr(storage_module, "ROOM_TRUSTED_S", 0.0)
    reserve = 8 * 1024**2
    batch = [rec(n, size=4096) for n in range(64)]  # 256 KiB, more than the WAL holds
    with Spool.open(tmp_path / "s.db", reserve=reserve) as spool:
        ballast = Path(f"{tmp_path / 's.db'}.ballast")
        assert ballast.stat().st_size == reserve // 4
        assert spool.append(batch).stored == 64
        filesystem.free = reserve + 100 * 1024  # the batch needs more than that
        with caplog.at_level(logging.INFO):
            for _ in range(3):
                with pytest.raises(IntakePaused):
                    spool.append(batch)
            storage = spool.maintain()
            assert storage.paused and storage.pauses == 1
            filesystem.free = reserve + 600 * 1024  # it would fit, but not with the margin
            with pytest.raises(IntakePaused):
                spool.append(batch)
            filesystem.free = reserve + 2 * 1024**2
            assert spool.append(batch).stored == 64
            assert spool.maintain().paused is None
            # Delivered records leave free pages: a batch that fits in them (and in the
            # WAL) is admitted on a full filesystem, for it takes nothing from it.
            spool.ack(spool.lease("q", max_records=128, max_bytes=10**9))
            filesystem.free = 0
            assert spool.append(batch[:16]).stored == 16
        assert caplog.text.count("intake paused") == 1
        assert caplog.text.count("intake resumed") == 1
        assert spool.pending("q")[0] == 16


class CountingFilesystem(FakeFilesystem):
    def __init__(self, free: int) -> None:
        super().__init__(free)
        self.calls = 0

    def __call__(self, path: object) -> os.statvfs_result:
        self.calls += 1
        return super().__call__(path)


def test_a_busy_intake_measures_once_per_window_and_takes_at_most_the_margin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One measurement admits the batches after it (no statvfs per commit); when another
    process fills the filesystem meanwhile, the spool takes at most an eighth of the
    reserve out of it before it measures again and pauses."""
    filesystem = CountingFilesystem(free=100 * 1024**2)
    monkeypatch.setattr(os, "statvfs", filesystem)
    monkeypatch.setattr(storage_module, "ROOM_TRUSTED_S", 3600.0)  # bytes bound it here
    reserve = 8 * 1024**2
    batch = [rec(n, size=200) for n in range(40)]
    with Spool.open(tmp_path / "s.db", reserve=reserve) as spool:
        filesystem.calls = 0
        for _ in range(100):
            spool.append(batch)
        # A measurement admits up to 1 MiB (an eighth of the reserve), a batch is
        # charged twice its 10.6 kB: about 50 batches a measurement.
        assert filesystem.calls <= 3
        filesystem.free = reserve  # another process took everything above the reserve
        taken = 0
        for _ in range(10_000):  # bounded: the margin is 1 MiB, a batch 8 KiB
            try:
                spool.append(batch)
            except IntakePaused:
                break
            taken += sum(len(r.payload) for r in batch)
        else:
            pytest.fail("intake never paused")
        assert taken <= reserve // 8


def test_a_reserve_larger_than_a_quarter_of_the_filesystem_is_cut_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "statvfs", FakeFilesystem(free=20 * 1024**2, size=32 * 1024**2))
    storage = Storage(tmp_path / "s.db", 64 * 1024**2)
    assert storage.reserve == 8 * 1024**2 and storage.ballast_size == 2 * 1024**2


def test_a_rebuild_without_room_is_retried_and_commits_nothing_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the lost file cannot be copied (no room), nothing is committed into it and
    nothing is acknowledged: the caller's batch is stored once, after the rebuild."""
    path = tmp_path / "s.db"
    real_rebuild = file_watch.rebuild
    failures = [OSError(28, "No space left on device")] * 2

    def short_of_room(conn: sqlite3.Connection, watch: file_watch.FileWatch) -> Path | None:
        if failures:
            raise failures.pop()
        return real_rebuild(conn, watch)

    monkeypatch.setattr(file_watch, "rebuild", short_of_room)
    with Spool.open(path) as spool:
        spool.append([rec(n) for n in range(10)])
        for file in spool_files(path):
            file.unlink()
        batch = [rec(n) for n in range(10, 20)]
        for _ in range(2):  # the MQTT committer tries the same batch again
            with pytest.raises(SpoolFileLost, match="rebuilding it failed"):
                spool.append(batch)
        assert spool.append(batch).stored == 10
        assert rows(path) == [str(n) for n in range(20)]  # each record once


def test_a_file_that_cannot_be_reopened_makes_the_spool_broken_for_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    with Spool.open(path) as spool:
        spool.append([rec(1)])
        path.unlink()

        def refused(watch: file_watch.FileWatch) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(file_watch, "swap_in", refused)
        with pytest.raises(SpoolFileLost):
            spool.maintain()
        assert spool.broken and "cannot be opened" in spool.broken
        with pytest.raises(SpoolFileLost):
            spool.append([rec(2)])
    # The copy waits beside the path; the next open puts it in place.
    assert Path(f"{path}.rebuild").exists()
    with Spool.open(path) as spool:
        assert spool.pending("q")[0] == 1


def test_a_rebuild_beside_a_spool_is_kept_aside_not_deleted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Spool.open(path) as spool:
        spool.append([rec(1)])
    Path(f"{path}.rebuild").write_bytes(b"a copy cut short")
    with Spool.open(path) as spool:
        assert spool.pending("q")[0] == 1
    (aside,) = tmp_path.glob("s.db.rebuild.unused-*")
    assert aside.read_bytes() == b"a copy cut short"


def test_deletes_on_a_full_disk_go_in_small_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite refusing a large delete for want of room: it goes again in transactions
    of SMALL_SETTLE records, each of which fits in the WAL the last one left."""
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([rec(n) for n in range(200)])
        held = spool.lease("q", max_records=200, max_bytes=10**9)
        write = settle.write
        sizes: list[int] = []

        def room_for_small(
            conn: sqlite3.Connection, queues: Any, grouped: Any, *args: Any, **kw: Any
        ) -> Any:
            size = sum(map(len, grouped.values()))
            sizes.append(size)
            if size > SMALL_SETTLE:
                raise SpoolFull("spool ack failed: database or disk is full")
            return write(conn, queues, grouped, *args, **kw)

        monkeypatch.setattr(settle, "write", room_for_small)
        assert spool.ack(held) == 200
        assert sizes == [200, 64, 64, 64, 8]
        assert spool.pending("q") == (0, 0)
        # A retry that finds no room is held in memory: due again all the same.
        spool.append([rec(n) for n in range(100)])
        again = spool.lease("q", max_records=100, max_bytes=10**9)
        assert spool.retry(again, at_ms=0) == 100
        assert len(spool.lease("q", max_records=100, max_bytes=10**9)) == 100


def test_an_agent_on_a_full_disk_gives_its_ballast_back_to_open_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    filesystem = FakeFilesystem(free=100 * 1024**2)
    monkeypatch.setattr(os, "statvfs", filesystem)
    with Spool.open(path, reserve=8 * 1024**2) as spool:
        spool.append([rec(1)])
    ballast = Path(f"{path}.ballast")
    assert ballast.exists()
    filesystem.free = 4096  # something else filled it while the agent was stopped
    with Spool.open(path, reserve=8 * 1024**2) as spool:
        assert not ballast.exists()
        assert spool.pending("q")[0] == 1
