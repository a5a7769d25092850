"""Salvage of a corrupt spool, and the WAL a crash left, checked at open.

Damage is made as it happens on a device: garbage over pages of a checkpointed file
(80 KiB in the middle, one leaf page, one overflow page, the schema page), a writer
killed with SIGKILL and its WAL then cut short, or its -shm left without the WAL. What
the salvage copied is compared with what an independent scan of the moved file (one
``SELECT`` per id, errors caught) can read.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from edge_agent.records import LeasedRecord, Record, payload_bytes
from edge_agent.spool.caps import QueuePolicy
from edge_agent.spool.damaged import RECORD_COLUMNS, indexed_record_ids, read_rows
from edge_agent.spool.recovery import open_file
from edge_agent.spool.store import Spool
from tests.support import REPO, cli, spool_path, write_config

PAGE = 4096
QUEUES = ("telemetry", "video")


class Row(NamedTuple):
    id: int
    queue: str
    partition_key: str
    captured_at_ms: int
    meta: str | None
    payload: bytes


def marker(number: int) -> bytes:
    """Starts record ``number``'s payload: where it is in the file shows its page."""
    return b"<record %08d>" % number


def fill_spool(path: Path, count: int = 3000, *, seed: int = 5) -> list[Record]:
    """``count`` records over two queues, a few bytes to 10 KB (some on overflow pages),
    appended in batches as intake does; then checkpointed, so the file holds them all."""
    rng = random.Random(seed)
    records = [
        Record(
            QUEUES[number % 3 == 0],
            f"key-{number % 17}",
            1_700_000_000_000 + number,
            marker(number) + rng.randbytes(rng.choice((10, 200, 1500, 10_000))),
            None if number % 5 else f'{{"topic": "sensors/{number}"}}',
        )
        for number in range(count)
    ]
    with Spool.open(path) as spool:
        for start in range(0, count, 100):
            spool.append(records[start : start + 100])
    checkpoint(path)
    return records


def checkpoint(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def scribble(path: Path, offset: int, length: int, *, seed: int = 1) -> None:
    """Garbage over ``length`` bytes of the file from ``offset``."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(random.Random(seed).randbytes(length))


def page_of(path: Path, number: int) -> int:
    """The page that holds the start of record ``number``'s payload."""
    offset = path.read_bytes().index(marker(number))
    return offset // PAGE


def readable_rows(path: Path, last_id: int) -> list[Row]:
    """An independent scan: one SELECT per id, errors caught, as the issue's scan did."""
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        names = dict(conn.execute("SELECT id, name FROM queues").fetchall())
        rows = []
        for row_id in range(1, last_id + 1):
            try:
                row = conn.execute(
                    "SELECT id, queue_id, partition_key, captured_at_ms, meta, payload"
                    " FROM records WHERE id = ?",
                    (row_id,),
                ).fetchone()
            except sqlite3.DatabaseError:
                continue
            if row is not None:
                rows.append(Row(row[0], names[row[1]], *row[2:]))
        return rows
    finally:
        conn.close()


def lease_all(spool: Spool, queue: str) -> list[LeasedRecord]:
    leased: list[LeasedRecord] = []
    while batch := spool.lease(queue, max_records=1000, max_bytes=10**9, with_meta=True):
        leased += batch
    return leased


def moved_aside(directory: Path) -> Path:
    (moved,) = (
        p for p in directory.glob("spool.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))
    )
    return moved


def assert_salvaged_in_order(spool: Spool, expected: list[Row]) -> None:
    """Each queue leases exactly the readable rows of the old file, in their order, with
    their keys, capture times, meta and payloads byte for byte."""
    for queue in QUEUES:
        got = [
            (r.partition_key, r.captured_at_ms, r.meta, r.payload) for r in lease_all(spool, queue)
        ]
        want = [
            (r.partition_key, r.captured_at_ms, r.meta, r.payload)
            for r in expected
            if r.queue == queue
        ]
        assert got == want, queue


def test_quarantine_salvages_every_readable_record_in_order(tmp_path: Path) -> None:
    """The issue: 80 KiB of garbage in the middle of a spool of 3,000 records. The file is
    moved aside and every record an independent scan can still read is pending again."""
    path = tmp_path / "spool.db"
    fill_spool(path)
    scribble(path, path.stat().st_size // 2, 80 * 1024)
    with Spool.open(path) as spool:
        (event,) = [e for e in spool.stats().events if e["kind"] == "spool_quarantined"]
        expected = readable_rows(moved_aside(tmp_path), 3000)
        assert 2000 < len(expected) < 3000  # the garbage cost some records, not all
        assert_salvaged_in_order(spool, expected)
        counts = [spool.pending(queue)[0] for queue in QUEUES]
        assert sum(counts) == len(expected)
    assert f"salvaged {len(expected):,} of 3,000 records" in event["message"]
    assert f"({3000 - len(expected):,} unreadable)" in event["message"]


def test_the_open_reports_what_it_salvaged_with_the_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    policy = {"telemetry": QueuePolicy(max_record_bytes=100)}
    with Spool.open(path, policies=policy) as spool:
        spool.append([Record("telemetry", "k", n, b"x" * 500, None) for n in range(7)])
        assert len(spool.dead_letters()) == 7
    fill_spool(path, 1500)
    scribble(path, page_of(path, 700) * PAGE, 3 * PAGE)
    opened = open_file(path, "full", "quick")
    try:
        assert opened.quarantined is not None and opened.salvaged is not None
        expected = readable_rows(moved_aside(tmp_path), 1500)
        assert len(expected) < 1500
        assert opened.salvaged.records == len(expected)
        assert opened.salvaged.unreadable == 1500 - len(expected)
        assert opened.salvaged.dead_letters == 7
        reasons = opened.conn.execute("SELECT reason FROM dead_letters").fetchall()
        assert [r[0] for r in reasons] == [
            "payload of 500 bytes exceeds the sink's limit of 100 bytes"
        ] * 7
        assert [kind for _, kind, _ in opened.events()] == ["spool_quarantined"]
    finally:
        opened.conn.close()
        opened.lock_file.close()


def test_a_damaged_overflow_page_costs_only_its_record(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    records = fill_spool(path, 600)
    big = next(n for n, r in enumerate(records) if len(r.payload) > 2 * PAGE and n > 300)
    # Bytes 3000.. of a 10 KB payload are on the first of its two overflow pages. (Garbage
    # on a record's last overflow page is read as its payload: SQLite has no checksums.)
    overflow = path.read_bytes().index(payload_bytes(records[big].payload)[3000:3200])
    scribble(path, overflow // PAGE * PAGE, PAGE)
    with Spool.open(path) as spool:
        expected = readable_rows(moved_aside(tmp_path), 600)
        assert len(expected) == 599
        assert records[big].payload not in {r.payload for r in expected}
        assert_salvaged_in_order(spool, expected)


def test_a_corrupt_schema_page_opens_a_fresh_spool_with_nothing_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    fill_spool(path, 300)
    scribble(path, 100, PAGE - 100)  # page 1 after the file header: sqlite_master
    with Spool.open(path) as spool:
        (event,) = [e for e in spool.stats().events if e["kind"] == "spool_quarantined"]
        assert spool.pending("telemetry") == (0, 0)
        spool.append([Record("telemetry", "k", 1, b"fresh")])
        assert spool.pending("telemetry") == (1, 5)
    assert "salvaged 0 records" in event["message"]
    assert "unknown" in event["message"]


def test_queue_names_come_from_their_index_when_the_queues_page_is_lost(tmp_path: Path) -> None:
    """The queues table's one page is garbage: names come from ``queues_by_name``, and
    how many records were lost is unknown (the counters were on that page)."""
    path = tmp_path / "spool.db"
    fill_spool(path, 900)
    conn = sqlite3.connect(path)
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'queues'").fetchone()
    conn.close()
    scribble(path, (root - 1) * PAGE, PAGE)
    opened = open_file(path, "full", "quick")
    try:
        assert opened.salvaged is not None
        assert (opened.salvaged.records, opened.salvaged.unreadable) == (900, None)
        names = {row[0] for row in opened.conn.execute("SELECT name FROM queues")}
        assert names == set(QUEUES)
    finally:
        opened.conn.close()
        opened.lock_file.close()


def test_records_of_a_queue_whose_name_is_lost_are_kept_as_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    fill_spool(path, 300)
    conn = sqlite3.connect(path)
    pages = dict(conn.execute("SELECT name, rootpage FROM sqlite_master").fetchall())
    conn.close()
    for name in ("queues", "queues_by_name"):
        scribble(path, (pages[name] - 1) * PAGE, PAGE)
    with Spool.open(path) as spool:
        letters = spool.dead_letters(limit=1000)
        assert len(letters) == 300
        assert {letter.queue for letter in letters} == {"unknown-queue-1", "unknown-queue-2"}
        assert "could not be read" in letters[0].reason
        (event,) = [e for e in spool.stats().events if e["kind"] == "spool_quarantined"]
    assert "300 records of queues whose names are unreadable" in event["message"]


def test_reading_past_damage_is_bounded_with_sparse_ids(tmp_path: Path) -> None:
    """Ids 1..400 and 2**62..2**62+400, garbage on the leaves on both sides of the gap,
    in the middle of the upper block and at its end: reading costs a few hundred
    statements, not a walk over the ids, and gets every row the index still names."""
    path = tmp_path / "spool.db"
    with Spool.open(path) as spool:
        spool.append([Record("q", "k", n, marker(n) + bytes(900)) for n in range(400)])
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executemany(
        "INSERT INTO records (id, queue_id, partition_key, captured_at_ms, size, payload)"
        " VALUES (?, 1, 'k', 0, ?, ?)",
        [(2**62 + n, 912, marker(1000 + n) + bytes(900)) for n in range(400)],
    )
    conn.close()
    checkpoint(path)
    for number in (398, 1001, 1200, 1399):
        scribble(path, page_of(path, number) * PAGE, 16)  # the page header
    all_ids = [*range(1, 401), *range(2**62, 2**62 + 400)]
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        readable = []
        for row_id in all_ids:
            with contextlib.suppress(sqlite3.DatabaseError):
                if conn.execute("SELECT 1 FROM records WHERE id = ?", (row_id,)).fetchone():
                    readable.append(row_id)
        assert 700 < len(readable) < 800
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        known = indexed_record_ids(conn, {1})
        got = [row[0] for row in read_rows(conn, "records", RECORD_COLUMNS, known_ids=known)]
        assert got == readable
        assert len(statements) < 1000
        # Without an index (the dead letters have none) it stays bounded as well, at the
        # cost of rows on sound pages between damaged ones when ids are this sparse.
        statements.clear()
        alone = [row[0] for row in read_rows(conn, "records", RECORD_COLUMNS)]
        assert alone[:390] == readable[:390] and set(alone) <= set(readable)
        assert len(statements) < 200
    finally:
        conn.close()


# ---------------------------------------------------------------------- the CLI


def old_corrupt_file(directory: Path, count: int) -> tuple[Path, list[Row]]:
    """A spool quarantined by an agent that did not salvage: ``spool.db.corrupt-*``."""
    old = directory / "old.db"
    fill_spool(old, count)
    scribble(old, old.stat().st_size // 2, 40 * 1024)
    target = directory / "spool.db.corrupt-20240101T000000Z"
    old.rename(target)
    return target, readable_rows(target, count)


def test_salvage_by_hand_appends_after_what_the_spool_holds(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1883, sinks='[sinks.telemetry]\ntype = "hold"\n')
    path = spool_path(tmp_path)
    path.parent.mkdir(parents=True)
    with Spool.open(path) as spool:
        spool.append([Record("telemetry", "now", 1, b"newer")])
    damaged, expected = old_corrupt_file(path.parent, 1200)
    assert 0 < len(expected) < 1200
    result = cli("spool", "salvage", "-c", str(config), str(damaged))
    assert f"salvaged {len(expected):,} of 1,200 records" in result.stdout
    assert f"({1200 - len(expected):,} unreadable)" in result.stdout
    with Spool.open(path) as spool:
        telemetry = lease_all(spool, "telemetry")
        assert telemetry[0].payload == b"newer"
        assert [r.payload for r in telemetry[1:]] == [
            r.payload for r in expected if r.queue == "telemetry"
        ]
        assert [r.payload for r in lease_all(spool, "video")] == [
            r.payload for r in expected if r.queue == "video"
        ]
        kinds = [e["kind"] for e in spool.stats().events]
    assert kinds[0] == "spool_salvaged"


def test_salvage_by_hand_is_refused_while_the_spool_is_open(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1883)
    path = spool_path(tmp_path)
    path.parent.mkdir(parents=True)
    damaged, _ = old_corrupt_file(path.parent, 100)
    with Spool.open(path):
        result = cli("spool", "salvage", "-c", str(config), str(damaged), check=False)
    assert result.returncode == 1
    assert f"in use by pid {os.getpid()}" in result.stderr
    assert "stop the agent" in result.stderr
    same = cli("spool", "salvage", "-c", str(config), str(path), check=False)
    assert same.returncode == 2 and "the configured spool itself" in same.stderr


# ---------------------------------------------------------------------- the WAL at open

WRITER = """
import sys
from edge_agent.records import Record
from edge_agent.spool.store import Spool

spool = Spool.open(sys.argv[1])
for batch in range(30):
    spool.append([Record("q", "k", batch * 10 + n, bytes([batch]) * 1000) for n in range(10)])
print("appended", flush=True)
sys.stdin.read()  # hold the spool open until killed
"""
APPENDED = 300


def wait_for_line(process: subprocess.Popen[bytes], timeout: float = 30.0) -> bytes:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the writer did not report in time"
    return process.stdout.readline()


@pytest.fixture(scope="module")
def killed_writer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spool whose writer was SIGKILLed while it held the file: db, -wal and -shm as
    the crash left them (the WAL's frames not yet checkpointed)."""
    path = tmp_path_factory.mktemp("killed") / "spool.db"
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    ) as process:
        try:
            assert wait_for_line(process) == b"appended\n"
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
    assert Path(f"{path}-wal").stat().st_size > 32 and Path(f"{path}-shm").exists()
    return path


@pytest.fixture
def crashed(killed_writer: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the killed writer's files for one test to damage."""
    path = tmp_path / "spool.db"
    for suffix in ("", "-wal", "-shm"):
        shutil.copyfile(f"{killed_writer}{suffix}", f"{path}{suffix}")
    yield path


def frame_bytes(path: Path) -> int:
    header = Path(f"{path}-wal").read_bytes()[:32]
    return 24 + int.from_bytes(header[8:12], "big")


def open_and_warnings(path: Path) -> tuple[int, list[str]]:
    with Spool.open(path) as spool:
        pending = spool.pending("q")[0]
        warnings = [e["message"] for e in spool.stats(events=50).events if e["kind"] == "wal_check"]
    return pending, warnings


def test_a_crash_alone_leaves_no_warning_and_loses_nothing(crashed: Path) -> None:
    assert open_and_warnings(crashed) == (APPENDED, [])


def test_a_wal_cut_by_whole_frames_is_named_and_loses_the_last_commits(crashed: Path) -> None:
    wal = Path(f"{crashed}-wal")
    os.truncate(wal, wal.stat().st_size - 3 * frame_bytes(crashed))
    pending, warnings = open_and_warnings(crashed)
    assert pending < APPENDED  # what SQLite loses silently
    (warning,) = warnings
    assert "spool.db-shm says" in warning and "the WAL was cut short" in warning
    assert "3 missing frame(s) are lost" in warning


def test_a_wal_cut_in_the_middle_of_a_frame_is_named(crashed: Path) -> None:
    wal = Path(f"{crashed}-wal")
    os.truncate(wal, wal.stat().st_size - 100)
    pending, warnings = open_and_warnings(crashed)
    assert pending < APPENDED
    assert len(warnings) == 2
    assert any("bytes into frame" in w and "a write was cut short" in w for w in warnings)
    assert any("1 missing frame(s) are lost" in w for w in warnings)


def test_a_partial_frame_after_the_last_commit_is_named_and_loses_nothing(crashed: Path) -> None:
    """What a crash in the middle of writing a transaction leaves: its first frame half
    written, after every committed one."""
    with open(f"{crashed}-wal", "ab") as wal:
        wal.write(bytes(100))
    pending, warnings = open_and_warnings(crashed)
    assert pending == APPENDED
    (warning,) = warnings
    assert "ends 100 bytes into frame" in warning


def test_committed_frames_overwritten_with_garbage_are_named(crashed: Path) -> None:
    wal = Path(f"{crashed}-wal")
    size = frame_bytes(crashed)
    scribble(wal, wal.stat().st_size - 2 * size, 2 * size)
    pending, warnings = open_and_warnings(crashed)
    assert pending < APPENDED
    (warning,) = warnings
    assert "does not belong to this WAL" in warning


def test_a_shm_without_its_wal_is_named(crashed: Path) -> None:
    Path(f"{crashed}-wal").unlink()
    pending, warnings = open_and_warnings(crashed)
    assert pending < APPENDED
    (warning,) = warnings
    assert "spool.db-shm without spool.db-wal" in warning
    assert "were not yet copied into the database: those transactions are lost" in warning


def test_a_clean_close_and_a_read_only_view_leave_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool.open(path) as spool:
        spool.append([Record("q", "k", 1, b"x" * 5000)])
    assert not Path(f"{path}-wal").exists()
    with Spool.open_read_only(path) as view:  # leaves an empty -wal and a -shm behind
        assert view.stats().queues[0]["pending_count"] == 1
    assert open_and_warnings(path) == (1, [])
