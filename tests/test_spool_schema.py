"""The spool's schema: migrations from older files, and SQLite's errors as the agent's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.errors import SpoolBusy, SpoolCorrupt, SpoolError, SpoolFull
from edge_agent.records import Record
from edge_agent.spool.recovery import count_legacy_leases, translate_sqlite_error
from edge_agent.spool.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from edge_agent.spool.store import Spool


def write_version_1_spool(path: Path, rows: list[tuple[str, bytes, int]]) -> None:
    """A spool file as agents of schema version 1 left it: ``rows`` are (queue, payload,
    leased), with the queues' pending counters stale (zero), as after a crash."""
    name, statements = MIGRATIONS[0]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        conn.execute(
            "CREATE TABLE _migrations"
            " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_ms INTEGER NOT NULL)"
        )
        for statement in statements:
            conn.execute(statement)
        conn.execute("INSERT INTO _migrations VALUES (1, ?, 0)", (name,))
        for queue, payload, leased in rows:
            conn.execute("INSERT OR IGNORE INTO queues (name) VALUES (?)", (queue,))
            conn.execute(
                "INSERT INTO records (queue_id, partition_key, captured_at_ms, size, leased,"
                " payload) SELECT id, 'k', 0, ?, ?, ? FROM queues WHERE name = ?",
                (len(payload), leased, payload, queue),
            )
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")
    finally:
        conn.close()


def indexes(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {row[0] for row in rows}


def test_a_new_spool_has_no_lease_index() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(conn) == SCHEMA_VERSION == 6
    assert "records_leased" not in indexes(conn)  # the column stays, never read or written
    assert "records_by_queue" in indexes(conn)
    assert count_legacy_leases(conn) == 0
    assert migrate(conn) == 0  # nothing left to do


def test_a_version_1_spool_is_migrated_at_open_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    write_version_1_spool(path, [("q", b"a", 1), ("q", b"bb", 0), ("r", b"ccc", 1)])
    with Spool.open(path) as spool:
        assert spool.stats().schema_version == SCHEMA_VERSION
        # The counters were recounted from the rows, and every record is pending.
        assert spool.pending("q") == (2, 3)
        assert spool.pending("r") == (1, 3)
        assert [r.payload for r in spool.lease("q", max_records=9, max_bytes=99)] == [
            b"a",
            b"bb",
        ]
        (event,) = [e for e in spool.stats().events if e["kind"] == "leases_returned"]
        assert event["message"].startswith("2 records in flight when the agent stopped")
        spool.ack(spool.lease("r", max_records=9, max_bytes=99))
        spool.append([])
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "records_leased" not in indexes(conn)
        marked = conn.execute("SELECT count(*) FROM records WHERE leased = 1").fetchone()[0]
        assert marked == 0  # cleared: never counted again
        applied = conn.execute("SELECT version, name FROM _migrations ORDER BY version")
        assert applied.fetchall() == [
            (1, "0001_core_tables"),
            (2, "0002_leases_in_memory"),
            (3, "0003_sent_marks"),
            (4, "0004_analytics"),
            (5, "0005_records_high_water"),
            (6, "0006_event_video"),
        ]
        # The highest id the version 1 spool had given stands.
        assert conn.execute("SELECT id FROM records_high_water").fetchone()[0] == 3
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    with Spool.open(path) as spool:  # migrated once: no second event
        kinds = [e["kind"] for e in spool.stats().events]
        assert kinds.count("leases_returned") == 1
        assert spool.pending("r") == (0, 0)


def test_a_version_1_spool_without_leases_is_migrated_quietly(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    write_version_1_spool(path, [("q", b"a", 0)])
    with Spool.open(path) as spool:
        assert spool.stats().schema_version == SCHEMA_VERSION
        assert not [e for e in spool.stats().events if e["kind"] == "leases_returned"]
        assert spool.pending("q") == (1, 1)


def test_a_read_only_view_of_a_version_1_spool_does_not_migrate_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    write_version_1_spool(path, [("q", b"a", 1)])
    with Spool.open_read_only(path) as reader:
        assert reader.stats().schema_version == 1


def sqlite_error(code: int) -> sqlite3.Error:
    err = sqlite3.OperationalError("boom")
    err.sqlite_errorcode = code
    return err


@pytest.mark.parametrize(
    ("code", "kind", "retryable"),
    [
        (sqlite3.SQLITE_FULL, SpoolFull, True),
        (sqlite3.SQLITE_BUSY, SpoolBusy, True),
        (sqlite3.SQLITE_LOCKED, SpoolBusy, True),
        (sqlite3.SQLITE_CORRUPT, SpoolCorrupt, False),
        (sqlite3.SQLITE_NOTADB, SpoolCorrupt, False),
        (sqlite3.SQLITE_IOERR, SpoolError, True),
        (sqlite3.SQLITE_IOERR | (1 << 8), SpoolError, True),  # an extended code
        (sqlite3.SQLITE_ERROR, SpoolError, False),
        (0, SpoolError, False),
    ],
)
def test_sqlite_errors_become_the_agents(code: int, kind: type, retryable: bool) -> None:
    error = translate_sqlite_error(sqlite_error(code), "append")
    assert type(error) is kind
    assert error.retryable is retryable
    assert str(error) == "spool append failed: boom"
    assert not SpoolError("other").retryable  # the instance flag stays on the instance


def test_a_record_id_is_never_given_twice(tmp_path: Path) -> None:
    """Once the newest records are delivered and deleted, SQLite alone would give their
    ids again (what remembers a position by id, an analytics query, would pass over the
    new records); not across a restart either, nor for a dead letter put back."""
    path = tmp_path / "s.db"
    with Spool.open(path) as spool:
        spool.append([Record("q", "k", 1, b"a"), Record("q", "k", 2, b"b")])
        delivered = spool.lease("q", max_records=9, max_bytes=99)
        assert [r.id for r in delivered] == [1, 2]
        spool.ack(delivered)
        spool.append([Record("q", "k", 3, b"c"), Record("q", "k", 4, b"d")])
        again = spool.lease("q", max_records=9, max_bytes=99)
        assert [r.id for r in again] == [3, 4]
        spool.dead_letter(again, "bad")
    with Spool.open(path) as spool:
        assert spool.requeue_dead_letters(queue="q") == 2
        back = spool.lease("q", max_records=9, max_bytes=99)
        assert [r.id for r in back] == [5, 6]
        spool.ack(back)
        spool.append([Record("q", "k", 5, b"e")])
        assert [r.id for r in spool.lease("q", max_records=9, max_bytes=99)] == [7]
