"""What ``edge-agent status`` shows of a spool: per-queue counters (read from the
``queues`` table, not counted from the rows) and the recent events.

The ``events`` table keeps the last MAX_EVENTS notable events (quarantines, returned
leases, pressure warnings); ``insert_event`` writes one and trims the rest.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from edge_agent.spool.queues import COUNTER_COLUMNS

#: How many events (quarantines, recoveries, errors) the spool keeps for status.
MAX_EVENTS = 200


class QueueStats(TypedDict):
    """One queue's counters. A TypedDict: ``edge-agent status --json`` prints it as it
    is, with a few keys of its own added (status.QueueView)."""

    name: str
    pending_count: int
    pending_bytes: int
    leased_count: int
    oldest_captured_at_ms: int | None
    acked_count: int
    acked_bytes: int
    retried_count: int
    dropped_count: int
    dropped_bytes: int
    expired_count: int
    rejected_count: int
    rejected_bytes: int
    dead_count: int
    dead_letters: int
    redelivered_count: int
    resent_after_restart_count: int


class SpoolEvent(TypedDict):
    at_ms: int
    level: str
    kind: str
    message: str


@dataclass(frozen=True)
class SpoolStats:
    path: str
    file_bytes: int
    schema_version: int
    queues: list[QueueStats]
    events: list[SpoolEvent]

    @property
    def pending_bytes(self) -> int:
        return sum(queue["pending_bytes"] for queue in self.queues)

    @property
    def pending_count(self) -> int:
        return sum(queue["pending_count"] for queue in self.queues)


def insert_event(conn: sqlite3.Connection, at_ms: int, level: str, kind: str, message: str) -> None:
    """Add an event inside the caller's transaction; only the last MAX_EVENTS stay."""
    conn.execute(
        "INSERT INTO events (at_ms, level, kind, message) VALUES (?, ?, ?, ?)",
        (at_ms, level, kind, message),
    )
    conn.execute("DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?", (MAX_EVENTS,))


def read_stats(
    conn: sqlite3.Connection, path: Path, leased: Mapping[int, int], events: int
) -> SpoolStats:
    """The spool's counters in one read transaction. ``leased``: held records per queue
    id (they live in the writing process's memory, not in the file)."""
    conn.execute("BEGIN")
    try:
        dead = dict(
            conn.execute("SELECT queue_id, count(*) FROM dead_letters GROUP BY queue_id").fetchall()
        )
        queues = []
        # A read-only view of an older spool lacks the newer counters: they read as 0.
        present = {row[1] for row in conn.execute("PRAGMA table_info(queues)").fetchall()}
        columns = ("id", "name", *COUNTER_COLUMNS)
        selected = ", ".join(name if name in present else f"0 AS {name}" for name in columns)
        for row in conn.execute(f"SELECT {selected} FROM queues ORDER BY name").fetchall():
            values = dict(zip(columns, row, strict=True))
            oldest = conn.execute(
                "SELECT captured_at_ms FROM records WHERE queue_id = ? ORDER BY id LIMIT 1",
                (values["id"],),
            ).fetchone()
            queues.append(
                QueueStats(
                    name=values["name"],
                    pending_count=values["pending_count"],
                    pending_bytes=values["pending_bytes"],
                    leased_count=leased.get(values["id"], 0),
                    oldest_captured_at_ms=oldest[0] if oldest else None,
                    acked_count=values["acked_count"],
                    acked_bytes=values["acked_bytes"],
                    retried_count=values["retried_count"],
                    dropped_count=values["dropped_count"],
                    dropped_bytes=values["dropped_bytes"],
                    expired_count=values["expired_count"],
                    rejected_count=values["rejected_count"],
                    rejected_bytes=values["rejected_bytes"],
                    dead_count=values["dead_count"],
                    dead_letters=dead.get(values["id"], 0),
                    redelivered_count=values["redelivered_count"],
                    resent_after_restart_count=values["resent_after_restart_count"],
                )
            )
        recent = [
            SpoolEvent(at_ms=at_ms, level=level, kind=kind, message=message)
            for at_ms, level, kind, message in conn.execute(
                "SELECT at_ms, level, kind, message FROM events ORDER BY id DESC LIMIT ?",
                (events,),
            ).fetchall()
        ]
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.execute("COMMIT")
    file_bytes = sum(
        os.path.getsize(candidate)
        for candidate in (path, Path(f"{path}-wal"))
        if candidate.exists()
    )
    return SpoolStats(
        path=str(path),
        file_bytes=file_bytes,
        schema_version=version,
        queues=queues,
        events=recent,
    )
