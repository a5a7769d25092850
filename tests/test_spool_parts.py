"""The spool's other parts on their own: the queue registry and its counters, the
writer, settling, dead letters and recovery."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from edge_agent.errors import SpoolCorrupt, SpoolError
from edge_agent.records import Record
from edge_agent.spool import dead_letters, settle
from edge_agent.spool.caps import Caps, QueuePolicy
from edge_agent.spool.queues import COUNTER_COLUMNS, Delta, Queues, recount
from edge_agent.spool.recovery import (
    acquire_writer_lock,
    check_integrity,
    mark_suspect,
    quarantine,
    suspect_marker,
)
from edge_agent.spool.schema import migrate
from edge_agent.spool.store import Spool
from edge_agent.spool.writer import Writer


@pytest.fixture
def conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    return conn


def rec(queue: str, payload: bytes) -> Record:
    return Record(queue=queue, partition_key="k", captured_at_ms=0, payload=payload)


def counters(conn: sqlite3.Connection, name: str) -> tuple[int, ...]:
    return tuple(
        conn.execute(
            "SELECT pending_count, pending_bytes, acked_count, dead_count FROM queues"
            " WHERE name = ?",
            (name,),
        ).fetchone()
    )


# ---------------------------------------------------------------------- queues


def test_a_new_queue_is_registered_only_once_its_counters_committed(
    conn: sqlite3.Connection,
) -> None:
    queues = Queues()
    state = queues.state_for(conn, "q")
    assert queues.get("q") is None
    apply = queues.commit(conn, {"q": Delta(pending_count=2, pending_bytes=7)}, {"q": state})
    assert queues.get("q") is None and counters(conn, "q") == (2, 7, 0, 0)
    apply()
    assert queues.get("q") is state and (state.pending_count, state.pending_bytes) == (2, 7)
    assert queues.name_of(conn, state.id) == "q" and queues.pending_bytes == 7


def test_load_and_recount_take_the_pending_counters_from_the_rows(
    conn: sqlite3.Connection,
) -> None:
    conn.execute(
        "INSERT INTO queues (id, name, pending_count, pending_bytes) VALUES (1, 'q', 9, 9)"
    )
    conn.execute(
        "INSERT INTO records (queue_id, partition_key, captured_at_ms, size, payload)"
        " VALUES (1, 'k', 0, 3, x'000000')"
    )
    recount(conn)
    queues = Queues()
    queues.load(conn)
    state = queues["q"]
    assert (state.id, state.pending_count, state.pending_bytes) == (1, 1, 3)


# ---------------------------------------------------------------------- writer


def test_the_writer_applies_limits_and_counts_only_after_the_caller_commits(
    conn: sqlite3.Connection,
) -> None:
    queues = Queues()
    caps = Caps(
        {
            "q": QueuePolicy(max_record_bytes=3),
            "r": QueuePolicy(max_bytes=2, overflow="reject_new"),
        }
    )
    writer = Writer(queues, caps)
    appended = writer.insert(conn, [rec("q", b"ab"), rec("q", b"abcd"), rec("r", b"xyz")], now=5)
    assert (appended.result.stored, appended.result.dead_lettered) == (1, 1)
    assert appended.result.rejected == 1
    assert queues.get("q") is None
    appended.apply()
    assert queues["q"].pending_bytes == 2 and appended.added == {"q": 2, "r": 0}
    (letter,) = dead_letters.list_dead_letters(conn, queue="q", after_id=0, limit=10)
    assert (letter.payload, letter.dead_at_ms) == (b"abcd", 5)


def test_the_writer_wakes_waiters() -> None:
    writer = Writer(Queues(), Caps({}))
    seen = writer.generation
    assert not writer.wait(seen, 0.01)
    writer.notify()
    assert writer.wait(seen, 0.01)


# ---------------------------------------------------------------------- settle


def appended(conn: sqlite3.Connection, queues: Queues, *payloads: bytes) -> None:
    batch = Writer(queues, Caps({})).insert(conn, [rec("q", p) for p in payloads], now=0)
    batch.apply()


def counters_of(conn: sqlite3.Connection, queue: str = "q") -> Delta:
    """A queue's counter columns as written in the file."""
    row = conn.execute(
        f"SELECT {', '.join(COUNTER_COLUMNS)} FROM queues WHERE name = ?", (queue,)
    ).fetchone()
    return Delta(*row)


def test_ack_deletes_counts_and_releases_the_leases(conn: sqlite3.Connection) -> None:
    queues = Queues()
    appended(conn, queues, b"a", b"bb", b"ccc")
    leases = queues["q"].leases
    held = leases.lease(conn, max_records=3, max_bytes=100, now=0)
    grouped = settle.by_queue(held[:2])
    before = counters_of(conn)
    done, apply = settle.write(conn, queues, grouped, "ack", now=0)
    apply()
    assert done == 2
    after = counters_of(conn)
    assert (after.pending_count, after.pending_bytes) == (before.pending_count - 2, 3)
    assert (after.acked_count, after.acked_bytes) == (2, 3)
    settle.forget(queues, grouped, "ack", at_ms=0)
    assert (leases.held, leases.held_bytes) == ({held[2].id: 3}, 3)


def test_settling_reads_no_payload(conn: sqlite3.Connection) -> None:
    """The leases keep each held record's size: a record whose payload its uploader let
    go of settles and counts as the one leased."""
    queues = Queues()
    appended(conn, queues, b"a", b"bb", b"ccc")
    leases = queues["q"].leases
    held = [r._replace(payload=b"") for r in leases.lease(conn, max_records=3, max_bytes=99, now=0)]
    done, apply = settle.write(conn, queues, settle.by_queue(held), "ack", now=0)
    apply()
    settle.forget(queues, settle.by_queue(held), "ack", at_ms=0)
    assert done == 3 and counters_of(conn).acked_bytes == 6
    assert (leases.held, leases.held_bytes) == ({}, 0)


def test_retry_and_dead_letter_rows(conn: sqlite3.Connection) -> None:
    queues = Queues()
    appended(conn, queues, b"a", b"b")
    leases = queues["q"].leases
    first, second = leases.lease(conn, max_records=2, max_bytes=100, now=0)
    grouped = settle.by_queue([first])
    done, _ = settle.write(conn, queues, grouped, "retry", now=0, at_ms=99)
    assert done == 1 and counters_of(conn).retried_count == 1
    settle.forget(queues, grouped, "retry", at_ms=99)
    assert leases.returned == {first.id: 99} and leases.held == {second.id: 1}
    done, _ = settle.write(
        conn, queues, settle.by_queue([second]), "dead_letter", now=7, reason="bad"
    )
    assert done == 1 and counters_of(conn).dead_count == 1
    (letter,) = dead_letters.list_dead_letters(conn, queue=None, after_id=0, limit=10)
    assert (letter.payload, letter.reason, letter.attempts) == (b"b", "bad", 1)
    assert letter.dead_at_ms == 7


def test_settling_records_that_are_gone_counts_only_the_rows_still_there(
    conn: sqlite3.Connection,
) -> None:
    queues = Queues()
    appended(conn, queues, b"a", b"b")
    held = queues["q"].leases.lease(conn, max_records=2, max_bytes=100, now=0)
    queues["q"].leases.forget([held[0].id])  # as if it had been settled elsewhere
    conn.execute("DELETE FROM records WHERE id = ?", (held[0].id,))
    done, _ = settle.write(conn, queues, settle.by_queue(held), "ack", now=0)
    assert done == 1 and counters_of(conn).acked_bytes == 1


def test_by_queue_keeps_the_order_within_each_queue(conn: sqlite3.Connection) -> None:
    queues = Queues()
    appended(conn, queues, b"a")
    (record,) = queues["q"].leases.lease(conn, max_records=1, max_bytes=9, now=0)
    other = record._replace(queue="r", id=50)
    grouped = settle.by_queue([record, other, record])
    assert grouped == {"q": [record.id, record.id], "r": [50]}


# ---------------------------------------------------------------------- dead letters


def test_requeue_and_purge_dead_letters(conn: sqlite3.Connection) -> None:
    queues = Queues()
    writer = Writer(queues, Caps({"q": QueuePolicy(max_record_bytes=1)}))
    writer.insert(conn, [rec("q", b"xx"), rec("q", b"yyy")], now=0).apply()
    letters = dead_letters.list_dead_letters(conn, queue="q", after_id=0, limit=10)
    moved, deltas = dead_letters.requeue(conn, queues, queue=None, ids=[letters[0].id])
    assert moved == 1 and deltas["q"] == Delta(pending_count=1, pending_bytes=2)
    assert dead_letters.purge(conn, queue="other", ids=()) == 0
    assert dead_letters.purge(conn, queue="q", ids=()) == 1
    assert dead_letters.list_dead_letters(conn, queue=None, after_id=0, limit=10) == []


# ---------------------------------------------------------------------- recovery


def test_quarantine_moves_the_file_with_its_wal_and_shm(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").write_bytes(b"junk")
    first = quarantine(path)
    path.write_bytes(b"more junk")
    second = quarantine(path)
    assert first != second and first.name.startswith("s.db.corrupt-")
    assert Path(f"{first}-wal").exists() and Path(f"{first}-shm").exists()
    assert not path.exists()


def test_the_suspect_marker_and_the_integrity_check(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    path = tmp_path / "s.db"
    mark_suspect(path)
    assert suspect_marker(path).exists()
    mark_suspect(tmp_path / "missing" / "s.db")  # no directory: ignored
    check_integrity(conn, "full")
    check_integrity(conn, "off")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 500)
    with pytest.raises((SpoolCorrupt, sqlite3.DatabaseError)):
        check_integrity(sqlite3.connect(garbage), "quick")


def test_the_writer_lock_names_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    held = acquire_writer_lock(path)
    try:
        with pytest.raises(SpoolError, match="in use by pid"):
            acquire_writer_lock(path)
    finally:
        held.close()
    acquire_writer_lock(path).close()


def test_the_spool_files_and_a_directory_it_creates_are_the_agents_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "spool.db"
    with Spool.open(path) as spool:
        spool.append([Record("q", "k", 1, b"x")])
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert modes == {
        "spool.db": 0o600,
        "spool.db-wal": 0o600,
        "spool.db-shm": 0o600,
        "spool.db.lock": 0o600,
    }
