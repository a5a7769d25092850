"""The spool's schema and its migrations (docs/SPOOL.md describes the tables).

Each migration is a list of SQL statements that runs once, in order, inside one
transaction, and is recorded in the ``_migrations`` table with the time it ran;
``PRAGMA user_version`` mirrors the newest one so that a quick look tells the schema
version. A spool written by a newer agent (higher version than this code knows) is
refused rather than guessed at.

A migration that rewrites the records table (a column dropped) needs free space of
about the file's size for the rewritten pages in the WAL; on a filesystem with less it
waits for a later open rather than fill the disk or keep the agent from starting (the
code works at either version: such a migration only reclaims space).

Plain SQL rather than sqlite-utils' table builders: importing sqlite-utils loads numpy
(about 12 MiB resident), a fifth of the agent's memory budget on a small device, for
code that runs once per spool.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from typing import NamedTuple

from edge_agent.errors import SpoolError

log = logging.getLogger(__name__)

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
_LEASES_IN_MEMORY = [
    "UPDATE records SET leased = 0 WHERE leased = 1",
    "DROP INDEX IF EXISTS records_leased",
]
#: ...and the column itself: SQLite rewrites every row of ``records`` for it.
_NO_LEASED_COLUMN = ["ALTER TABLE records DROP COLUMN leased"]


class Migration(NamedTuple):
    name: str
    statements: list[str]
    #: Rewrites the records table: waits for room on the filesystem (see above).
    rewrites_records: bool = False


MIGRATIONS: list[Migration] = [
    Migration("0001_core_tables", _CORE_TABLES),
    Migration("0002_leases_in_memory", _LEASES_IN_MEMORY),
    Migration("0003_drop_leased_column", _NO_LEASED_COLUMN, rewrites_records=True),
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
    for version, (name, statements, rewrites_records) in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        if rewrites_records and not _room_to_rewrite(conn, name):
            break
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


def _room_to_rewrite(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the filesystem holds a copy of the file (what a rewrite of ``records``
    may put in the WAL) with a tenth to spare; an in-memory database always does."""
    path = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not path:
        return True
    size = os.path.getsize(path)
    stat = os.statvfs(os.path.dirname(path) or ".")
    free = stat.f_bavail * stat.f_frsize
    if free >= size * 1.1:
        return True
    log.warning(
        "spool %s: migration %s postponed: it rewrites the %d MiB file and the filesystem "
        "has %d MiB free; the spool works without it, and it runs at a later start",
        path,
        name,
        size // 2**20,
        free // 2**20,
    )
    return False
