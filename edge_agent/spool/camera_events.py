"""Events: what made a camera's video matter (motion, an MQTT message, an operator),
kept in the spool's ``camera_events`` table (docs/EVENTS.md).

An event covers ``started_ms - pre_roll_ms`` to ``ended_ms + post_roll_ms``; while it
is open ``ended_ms`` is NULL. Its life, each step one transaction:

    created (by its trigger)  announced = 0, covered = 0
    announced                 its start went out as a telemetry record (``announced`` 1)
    ended                     ``ended_ms`` set; its end announced (``announced`` 2)
    covered                   its camera stored a fragment that starts after its range:
                              every fragment of the range was queued (or tagged)

``fragments`` counts the fragments queued for upload because of it.
"""

from __future__ import annotations

import json
import sqlite3
from typing import NamedTuple

MIGRATION = [
    "CREATE TABLE camera_events (id INTEGER PRIMARY KEY, camera TEXT NOT NULL,"
    " trigger TEXT NOT NULL, started_ms INTEGER NOT NULL, ended_ms INTEGER,"
    " pre_roll_ms INTEGER NOT NULL, post_roll_ms INTEGER NOT NULL,"
    " fields TEXT NOT NULL DEFAULT '{}', announced INTEGER NOT NULL DEFAULT 0,"
    " covered INTEGER NOT NULL DEFAULT 0, fragments INTEGER NOT NULL DEFAULT 0,"
    " snapshot INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL)",
    "CREATE INDEX camera_events_uncovered ON camera_events (camera) WHERE covered = 0",
    "CREATE INDEX camera_events_unannounced ON camera_events (id) WHERE announced < 2",
    # Command-line requests done (events/requests.py): a request is done once.
    "CREATE TABLE requests_done (id TEXT PRIMARY KEY, kind TEXT NOT NULL,"
    " done_ms INTEGER NOT NULL)",
]

#: Not yet announced / start announced / end announced.
NEW, STARTED, ENDED = 0, 1, 2

_COLUMNS = (
    "id, camera, trigger, started_ms, ended_ms, pre_roll_ms, post_roll_ms, fields,"
    " announced, covered, fragments, snapshot, created_ms"
)


class Event(NamedTuple):
    id: int
    camera: str
    trigger: str
    started_ms: int
    ended_ms: int | None
    pre_roll_ms: int
    post_roll_ms: int
    fields: str  # a JSON object
    announced: int
    covered: int
    fragments: int
    snapshot: int
    created_ms: int

    @property
    def from_ms(self) -> int:
        """Where its video starts: its start less the pre-roll."""
        return self.started_ms - self.pre_roll_ms

    @property
    def to_ms(self) -> int | None:
        """Where its video ends (None while it is open)."""
        return None if self.ended_ms is None else self.ended_ms + self.post_roll_ms

    def field_values(self) -> dict[str, object]:
        try:
            fields = json.loads(self.fields)
        except ValueError:
            return {}
        return fields if isinstance(fields, dict) else {}


class NewEvent(NamedTuple):
    camera: str
    trigger: str
    started_ms: int
    ended_ms: int | None
    pre_roll_ms: int
    post_roll_ms: int
    fields: dict[str, object]


def create(conn: sqlite3.Connection, event: NewEvent, now_ms: int) -> int:
    cursor = conn.execute(
        "INSERT INTO camera_events (camera, trigger, started_ms, ended_ms, pre_roll_ms,"
        " post_roll_ms, fields, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.camera,
            event.trigger,
            event.started_ms,
            event.ended_ms,
            event.pre_roll_ms,
            event.post_roll_ms,
            json.dumps(event.fields, separators=(",", ":"), default=str),
            now_ms,
        ),
    )
    return int(cursor.lastrowid or 0)


def end(conn: sqlite3.Connection, event_id: int, ended_ms: int) -> None:
    """End an open event (no earlier than it started)."""
    conn.execute(
        "UPDATE camera_events SET ended_ms = max(started_ms, ?) WHERE id = ? AND ended_ms IS NULL",
        (ended_ms, event_id),
    )


def open_of(conn: sqlite3.Connection, camera: str, trigger: str) -> Event | None:
    """The newest open event of this camera and trigger, if any."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM camera_events WHERE camera = ? AND trigger = ? AND covered = 0"
        " AND ended_ms IS NULL ORDER BY id DESC LIMIT 1",
        (camera, trigger),
    ).fetchone()
    return None if row is None else Event(*row)


def uncovered(conn: sqlite3.Connection, camera: str) -> list[Event]:
    return [
        Event(*row)
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM camera_events WHERE camera = ? AND covered = 0 ORDER BY id",
            (camera,),
        )
    ]


def cover(conn: sqlite3.Connection, event_id: int, queued: int, *, done: bool) -> None:
    conn.execute(
        "UPDATE camera_events SET fragments = fragments + ?, covered = ? WHERE id = ?",
        (queued, int(done), event_id),
    )


def unannounced(conn: sqlite3.Connection, limit: int = 100) -> list[Event]:
    """Events whose start, or end once they have ended, has not gone out yet."""
    return [
        Event(*row)
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM camera_events WHERE announced < 2"
            " AND (announced = 0 OR ended_ms IS NOT NULL) ORDER BY id LIMIT ?",
            (limit,),
        )
    ]


def mark_announced(conn: sqlite3.Connection, event_id: int, announced: int) -> None:
    conn.execute("UPDATE camera_events SET announced = ? WHERE id = ?", (announced, event_id))


def mark_snapshot(conn: sqlite3.Connection, event_id: int) -> None:
    conn.execute("UPDATE camera_events SET snapshot = 1 WHERE id = ?", (event_id,))


def listing(conn: sqlite3.Connection, *, camera: str | None = None, limit: int = 50) -> list[Event]:
    """The newest events first."""
    where, params = ("WHERE camera = ?", (camera,)) if camera else ("", ())
    return [
        Event(*row)
        for row in conn.execute(
            f"SELECT {_COLUMNS} FROM camera_events {where} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
    ]


def get(conn: sqlite3.Connection, event_id: int) -> Event | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM camera_events WHERE id = ?", (event_id,)).fetchone()
    return None if row is None else Event(*row)


def request_done(conn: sqlite3.Connection, request_id: str) -> bool:
    """Whether a command-line request was done already (events/requests.py)."""
    row = conn.execute("SELECT 1 FROM requests_done WHERE id = ?", (request_id,)).fetchone()
    return row is not None


def mark_request_done(conn: sqlite3.Connection, request_id: str, kind: str, now_ms: int) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO requests_done (id, kind, done_ms) VALUES (?, ?, ?)",
        (request_id, kind, now_ms),
    )


def wanting_snapshot(conn: sqlite3.Connection, camera: str) -> list[int]:
    """The camera's events not yet covered that have no snapshot yet."""
    return [
        int(row[0])
        for row in conn.execute(
            "SELECT id FROM camera_events WHERE camera = ? AND covered = 0 AND snapshot = 0",
            (camera,),
        )
    ]
