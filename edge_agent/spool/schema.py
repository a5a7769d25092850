"""The spool's schema and its migrations (docs/SPOOL.md describes the tables).

Each migration is a list of SQL statements that runs once, in order, inside one
transaction, and is recorded in the ``_migrations`` table with the time it ran;
``PRAGMA user_version`` mirrors the newest one so that a quick look tells the schema
version. A spool written by a newer agent (higher version than this code knows) is
refused rather than guessed at.

Migrations run at open, before the agent reports itself started, on devices whose
spool may be large and whose storage is slow and nearly full: a migration here must
cost little whatever the spool holds. None rewrites the records table (dropping a
column would: SQLite writes every row again, about the file's size through the WAL).

Plain SQL rather than sqlite-utils' table builders: importing sqlite-utils loads numpy
(about 12 MiB resident), a fifth of the agent's memory budget on a small device, for
code that runs once per spool.
"""

from __future__ import annotations

import sqlite3
import time

from edge_agent.errors import SpoolError
from edge_agent.spool import analytics, camera_events, recordings

_COUNTERS = (
    "pending_count",
    "pending_bytes",
    "acked_count",
    "acked_bytes",
    "retried_count",
    "dropped_count",
    "dropped_bytes",
    "expired_count",
    "rejected_count",
    "rejected_bytes",
    "dead_count",
    "redelivered_count",
)

_CORE_TABLES = [
    "CREATE TABLE queues (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
    + ", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in _COUNTERS)
    + ")",
    "CREATE UNIQUE INDEX queues_by_name ON queues (name)",
    """CREATE TABLE records (
        id INTEGER PRIMARY KEY,
        queue_id INTEGER NOT NULL,
        partition_key TEXT NOT NULL,
        captured_at_ms INTEGER NOT NULL,
        size INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL DEFAULT 0,
        leased INTEGER NOT NULL DEFAULT 0,
        meta TEXT,
        payload BLOB NOT NULL
    )""",
    # Oldest-first per queue: every lease, eviction and "oldest age" walks this index.
    "CREATE INDEX records_by_queue ON records (queue_id, id)",
    # Small: only what is in flight (dropped by 0002: leases live in memory).
    "CREATE INDEX records_leased ON records (queue_id) WHERE leased = 1",
    """CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        queue_id INTEGER NOT NULL,
        partition_key TEXT NOT NULL,
        captured_at_ms INTEGER NOT NULL,
        size INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL,
        dead_at_ms INTEGER NOT NULL,
        meta TEXT,
        payload BLOB NOT NULL
    )""",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        level TEXT NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    )""",
]

#: Leases live in the agent's memory: the ``leased`` marks are cleared and their partial
#: index goes. (Agents that wrote their leases to the file left 1 there for what they
#: held; the open counts those before this runs, for the ``leases_returned`` event.)
#: The column itself stays, never read or written: dropping it would rewrite every
#: record (see above), and it costs a byte a row.
_LEASES_IN_MEMORY = [
    "UPDATE records SET leased = 0 WHERE leased = 1",
    "DROP INDEX IF EXISTS records_leased",
]

#: What was handed to the network and not yet confirmed (spool/sent_marks.py), and the
#: count of records a restart sent again. Adding a column with a default rewrites nothing.
_SENT_MARKS = [
    "CREATE TABLE sent_marks (queue_id INTEGER NOT NULL, first_id INTEGER NOT NULL,"
    " last_id INTEGER NOT NULL)",
    "CREATE INDEX sent_marks_by_queue ON sent_marks (queue_id, first_id)",
    "ALTER TABLE queues ADD COLUMN resent_after_restart_count INTEGER NOT NULL DEFAULT 0",
]

#: 0005: the highest record id ever given. SQLite gives a new row the highest id in the
#: table plus one, so once the newest rows are delivered and deleted their ids would be
#: given again; whatever remembers a position by id (an analytics query's last reading)
#: would then pass over the new rows. The inserts take ids above it (queues.py).
_RECORDS_HIGH_WATER = [
    "CREATE TABLE records_high_water (id INTEGER NOT NULL)",
    "INSERT INTO records_high_water SELECT coalesce(max(id), 0) FROM records",
]

MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0001_core_tables", _CORE_TABLES),
    ("0002_leases_in_memory", _LEASES_IN_MEMORY),
    ("0003_sent_marks", _SENT_MARKS),
    ("0004_analytics", analytics.MIGRATION),
    ("0005_records_high_water", _RECORDS_HIGH_WATER),
    ("0006_event_video", [*recordings.MIGRATION, *camera_events.MIGRATION]),
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION; returns how many migrations ran."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > SCHEMA_VERSION:
        raise SpoolError(
            f"spool schema version {current} is newer than this agent knows "
            f"({SCHEMA_VERSION}); upgrade edge-agent or move the spool aside"
        )
    ran = 0
    for version, (name, statements) in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS _migrations"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_ms INTEGER NOT NULL)"
            )
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO _migrations (version, name, applied_at_ms) VALUES (?, ?, ?)",
                (version, name, int(time.time() * 1000)),
            )
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        ran += 1
    return ran
