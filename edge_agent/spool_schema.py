"""The spool's schema and its migrations (docs/SPOOL.md describes the tables).

Each migration runs once, in order, inside one transaction, and is recorded in the
``_migrations`` table with the time it ran; ``PRAGMA user_version`` mirrors the newest
one so that a quick look tells the schema version. A spool written by a newer agent
(higher version than this code knows) is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from edge_agent.errors import SpoolError

if TYPE_CHECKING:
    import sqlite_utils


def _create_core_tables(db: sqlite_utils.Database) -> None:
    db.create_table(
        "queues",
        {
            "id": int,
            "name": str,
            "pending_count": int,
            "pending_bytes": int,
            "acked_count": int,
            "acked_bytes": int,
            "retried_count": int,
            "dropped_count": int,
            "dropped_bytes": int,
            "expired_count": int,
            "rejected_count": int,
            "rejected_bytes": int,
            "dead_count": int,
            "redelivered_count": int,
        },
        pk="id",
        not_null=["name"],
        defaults={
            name: 0
            for name in (
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
        },
    )
    db.table("queues").create_index(["name"], unique=True)
    db.create_table(
        "records",
        {
            "id": int,
            "queue_id": int,
            "partition_key": str,
            "captured_at_ms": int,
            "size": int,
            "attempts": int,
            "next_attempt_ms": int,
            "leased": int,
            "meta": str,
            "payload": bytes,
        },
        pk="id",
        not_null=["queue_id", "partition_key", "captured_at_ms", "size", "payload"],
        defaults={"attempts": 0, "next_attempt_ms": 0, "leased": 0},
    )
    # Oldest-first per queue: every lease, eviction and "oldest age" walks this index.
    db.execute("CREATE INDEX records_by_queue ON records (queue_id, id)")
    # Small: only what is in flight. Lets status count leases without a scan.
    db.execute("CREATE INDEX records_leased ON records (queue_id) WHERE leased = 1")
    db.create_table(
        "dead_letters",
        {
            "id": int,
            "queue_id": int,
            "partition_key": str,
            "captured_at_ms": int,
            "size": int,
            "attempts": int,
            "reason": str,
            "dead_at_ms": int,
            "meta": str,
            "payload": bytes,
        },
        pk="id",
        not_null=["queue_id", "reason", "dead_at_ms", "payload"],
    )
    db.create_table(
        "events",
        {"id": int, "at_ms": int, "level": str, "kind": str, "message": str},
        pk="id",
        not_null=["at_ms", "level", "kind", "message"],
    )


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("0001_core_tables", _create_core_tables),
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION; returns how many migrations ran.

    sqlite-utils is imported only when a migration is due: it pulls in numpy, about
    12 MiB of resident memory that a long-running agent on a small device should not
    carry for code it runs once.
    """
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > SCHEMA_VERSION:
        raise SpoolError(
            f"spool schema version {current} is newer than this agent knows "
            f"({SCHEMA_VERSION}); upgrade edge-agent or move the spool aside"
        )
    if current == SCHEMA_VERSION:
        return 0
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    ran = 0
    for version, (name, apply) in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        with db.atomic():
            if "_migrations" not in db.table_names():
                db.create_table(
                    "_migrations", {"version": int, "name": str, "applied_at_ms": int}, pk="version"
                )
            apply(db)
            db.table("_migrations").insert(
                {"version": version, "name": name, "applied_at_ms": int(time.time() * 1000)}
            )
            db.execute(f"PRAGMA user_version = {version}")
        ran += 1
    return ran
