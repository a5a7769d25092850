"""Salvage of event video: the recording ring, the events and the requests done in a
damaged spool are copied into the fresh one, as the records are.

The file is damaged as in tests/test_spool_salvage.py (garbage over the leaf page of a
ring fragment, checkpointed first), and what the salvage copied is compared with what an
independent scan of the moved file (one ``SELECT`` per id, errors caught) can read.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import NamedTuple

from edge_agent.spool import camera_events, recordings
from edge_agent.spool.camera_events import NewEvent
from edge_agent.spool.recovery import salvage_file
from edge_agent.spool.store import Spool
from tests.test_spool_salvage import PAGE, checkpoint, fill_spool, moved_aside, scribble

CAMERAS = ("door", "yard")
FRAGMENTS = 240
NOW_MS = 1_700_000_000_000


class Fragment(NamedTuple):
    camera: str
    start_ms: int
    end_ms: int
    queued: int
    meta: str
    payload: bytes


def fragment_marker(number: int) -> bytes:
    return b"<fragment %06d>" % number


def fill_ring(path: Path) -> None:
    """240 fragments of two cameras (1 to 6 KB, every fifth queued), five events in
    each state, and two requests done; then checkpointed."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for number in range(FRAGMENTS):
            start = NOW_MS + number // 2 * 2000
            recordings.insert(
                conn,
                CAMERAS[number % 2],
                start,
                start + 1966,
                meta=f'{{"frames": {number}}}',
                payload=fragment_marker(number) + bytes([number % 251]) * (1000 + number * 20),
                queued=number % 5 == 0,
            )
        for number in range(5):
            event_id = camera_events.create(
                conn,
                NewEvent(
                    CAMERAS[number % 2],
                    "motion" if number % 2 else "door-sensor",
                    NOW_MS + number * 30_000,
                    None,
                    5000,
                    10_000,
                    {"zone": f"z{number}"},
                ),
                NOW_MS + number * 30_000,
            )
            if number < 4:
                camera_events.end(conn, event_id, NOW_MS + number * 30_000 + 4000)
            camera_events.mark_announced(conn, event_id, min(number, 2))
            camera_events.cover(conn, event_id, number, done=number < 2)
        camera_events.mark_request_done(conn, "event-1", "event", NOW_MS)
        camera_events.mark_request_done(conn, "clip-1", "clip", NOW_MS + 1)
        conn.execute("COMMIT")
    finally:
        conn.close()
    checkpoint(path)


def readable_fragments(path: Path) -> list[Fragment]:
    """An independent scan of the moved file's ring: one SELECT per id, errors caught."""
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        rows = []
        for row_id in range(1, FRAGMENTS + 1):
            try:
                row = conn.execute(
                    "SELECT camera, start_ms, end_ms, queued, meta, payload FROM recordings"
                    " WHERE id = ?",
                    (row_id,),
                ).fetchone()
            except sqlite3.DatabaseError:
                continue
            if row is not None:
                rows.append(Fragment(*row))
        return rows
    finally:
        conn.close()


def ring_of(conn: sqlite3.Connection) -> list[Fragment]:
    return [
        Fragment(*row)
        for row in conn.execute(
            "SELECT camera, start_ms, end_ms, queued, meta, payload FROM recordings ORDER BY id"
        )
    ]


def events_of(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT id, camera, trigger, started_ms, ended_ms, pre_roll_ms, post_roll_ms, fields,"
        " announced, covered, fragments, snapshot, created_ms FROM camera_events ORDER BY id"
    ).fetchall()


def damaged_spool(path: Path) -> list[tuple[object, ...]]:
    """A spool of records, ring, events and requests; garbage over the leaf page that
    holds fragment 150; the events as they were before the damage."""
    fill_spool(path, 300)
    fill_ring(path)
    conn = sqlite3.connect(path)
    try:
        events = events_of(conn)
    finally:
        conn.close()
    page = path.read_bytes().index(fragment_marker(150)) // PAGE
    scribble(path, page * PAGE, PAGE)
    return events


def test_quarantine_salvages_the_ring_and_the_events_in_order(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    events = damaged_spool(path)
    with Spool.open(path) as spool:
        (report,) = [e for e in spool.stats().events if e["kind"] == "spool_quarantined"]
        expected = readable_fragments(moved_aside(tmp_path))
        assert 0 < FRAGMENTS - len(expected) < 20  # the page cost a few fragments, not all
        assert spool.read("checking the salvage", ring_of) == expected
        # Every event, with its id and its announcement and coverage: none is announced
        # again, none's video queued again.
        assert spool.read("checking the salvage", events_of) == events
        done = spool.read(
            "checking the salvage",
            lambda conn: [camera_events.request_done(conn, r) for r in ("event-1", "clip-1")],
        )
        assert done == [True, True]
    assert f"{len(expected):,} recorded fragments, 5 events" in report["message"]


def test_a_new_event_after_the_salvage_takes_a_new_id(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    damaged_spool(path)
    with Spool.open(path) as spool:
        new_id = spool.read(
            "creating an event",
            lambda conn: camera_events.create(
                conn, NewEvent("door", "manual", NOW_MS + 600_000, None, 0, 0, {}), NOW_MS
            ),
        )
    assert new_id == 6


def test_salvage_by_hand_copies_the_ring_and_events_once(tmp_path: Path) -> None:
    """Run twice, the salvage copies each fragment and event once; an event id the spool
    already gives another event is given a new one."""
    path = tmp_path / "spool.db"
    events = damaged_spool(path)
    damaged = tmp_path / "spool.db.corrupt-20240101T000000Z"
    path.rename(damaged)
    expected = readable_fragments(damaged)
    with Spool.open(path) as spool:
        spool.read(
            "creating an event",
            lambda conn: camera_events.create(
                conn, NewEvent("yard", "manual", NOW_MS - 1000, 0, 0, 0, {}), NOW_MS
            ),
        )
    first = salvage_file(path, damaged, "full", "quick")
    second = salvage_file(path, damaged, "full", "quick")
    assert (first.ring_fragments, first.events) == (len(expected), 5)
    assert (second.ring_fragments, second.events) == (0, 0)
    with Spool.open(path) as spool:
        assert spool.read("checking the salvage", ring_of) == expected
        held = spool.read("checking the salvage", events_of)
    # Events 2 to 5 keep their ids; event 1's id is the manual event's, so it is the
    # last copied, as event 6, and otherwise unchanged.
    assert held[0][2] == "manual"
    assert held[1:] == [*events[1:], (6, *events[0][1:])]
