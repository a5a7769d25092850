"""Where a camera's fragments go: its upload queue, its local ring, or both, tagged
with the events they belong to (docs/EVENTS.md). Runs in the camera's thread.

Per fragment, one transaction (``Spool.append`` with the ring's writes as ``also``):

    upload = "continuous"  the fragment, tagged, into the sink's queue
    upload = "events"      what events want: the fragments of their pre-roll not yet
                           queued (copied from the ring), and this one if it falls in
                           an event's range
    upload = "off"         nothing
    record                 the fragment into the ring; the ring trimmed by bytes and age
                           (and, when the disk is short, by what the fragment needs)
    events                 an event open longer than max_event is ended; one whose
                           range this fragment reaches past is marked covered

A copy never goes behind a fragment queued already (a PutMedia session takes times in
order), and the ring never drops a fragment an uncovered event may still want, nor one
queued for an event that may still wait for its upload.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge_agent.config.cameras import CameraConfig
from edge_agent.errors import IntakePaused
from edge_agent.media.fragment_meta import with_tags
from edge_agent.media.fragment_tags import fit
from edge_agent.records import Payload, Record
from edge_agent.runtime_status import CameraEventsSnapshot
from edge_agent.spool import camera_events, recordings
from edge_agent.spool.camera_events import Event
from edge_agent.spool.queues import Queues
from edge_agent.spool.store import Spool


@dataclass
class RecorderStats:
    recorded: int = 0  # fragments into the ring
    ring_fragments: int = 0
    ring_bytes: int = 0
    trimmed: int = 0  # fragments the ring dropped (bytes or age)
    queued_for_events: int = 0  # fragments queued because of events
    not_uploaded: int = 0  # fragments outside every event (upload = "events")
    tags_left_out: int = 0  # event tags a fragment had no room for
    yielded: int = 0  # fragments the ring dropped early to give room on a full disk


@dataclass(frozen=True)
class StoredFragment:
    """A fragment as the camera hands it over: times on the wall clock."""

    start_ms: int
    end_ms: int
    meta: str
    payload: Payload  # a camera's: its Cluster's pieces, written into the spool as they are


def overlaps(event: Event, start_ms: int, end_ms: int) -> bool:
    """Whether a fragment from ``start_ms`` to ``end_ms`` has video of the event's range."""
    to_ms = event.to_ms
    return end_ms >= event.from_ms and (to_ms is None or start_ms <= to_ms)


class Recorder:
    def __init__(
        self, settings: CameraConfig, spool: Spool, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.spool = spool
        self._clock = clock
        self.stats = RecorderStats()
        name = settings.name
        size = spool.read("ring size", lambda conn: recordings.size_of(conn, name))
        self.stats.ring_fragments, self.stats.ring_bytes = size.fragments, size.bytes
        #: Where the ring ends: a restarted camera's times go on after it.
        self.newest_ms = size.newest_ms or 0
        #: The newest fragment queued for an event: no copy goes behind it.
        self._queued_through_ms = spool.read(
            "ring", lambda conn: recordings.newest_queued_ms(conn, name)
        )

    def store(self, fragment: StoredFragment) -> None:
        """Queue, record and cover, as the camera's settings say, in one transaction."""
        settings = self.settings
        now_ms = int(self._clock() * 1000)
        events, expired = self._events(now_ms)
        covering = [e for e in events if overlaps(e, fragment.start_ms, fragment.end_ms)]
        copies = self._pre_roll(events, fragment.start_ms) if settings.upload == "events" else []
        upload = settings.upload == "continuous" or (settings.upload == "events" and bool(covering))
        if settings.upload == "events" and not upload:
            self.stats.not_uploaded += 1
        meta = self._tagged(fragment.meta, covering)
        records = [self._copy(copy, events) for copy in copies]
        if upload:
            records.append(self._record(fragment.start_ms, meta, fragment.payload))
        for_events = settings.upload == "events"
        queued = {
            event.id: sum(overlaps(event, c.start_ms, c.end_ms) for c in copies)
            + int(for_events and upload and event in covering)
            for event in events
        }
        ring = settings.record
        ring_bytes = len(fragment.payload) if ring else 0

        def also(conn: sqlite3.Connection, queues: Queues) -> Callable[[], None]:
            for event in expired:
                assert event.ended_ms is not None
                camera_events.end(conn, event.id, event.ended_ms)
            if ring:
                recordings.insert(
                    conn,
                    settings.name,
                    fragment.start_ms,
                    fragment.end_ms,
                    meta=meta,
                    payload=fragment.payload,
                    queued=for_events and upload,
                )
            recordings.mark_queued(conn, [copy.id for copy in copies])
            for event in events:
                done = event.to_ms is not None and fragment.end_ms >= event.to_ms
                if done or queued[event.id]:
                    camera_events.cover(conn, event.id, queued[event.id], done=done)
            trimmed = recordings.Trimmed(0, 0)
            if ring:
                trimmed = recordings.trim(
                    conn,
                    settings.name,
                    over_bytes=self.stats.ring_bytes + ring_bytes - settings.record_max_bytes,
                    older_than_ms=now_ms - int(settings.record_max_age * 1000),
                    keep_from_ms=_wanted_from(events, fragment.end_ms),
                    waiting_from_ms=recordings.oldest_waiting_ms(conn, settings.sink or ""),
                )
            return lambda: self._stored(ring_bytes, trimmed, len(records) if for_events else 0)

        try:
            self.spool.append(records, also=also, also_bytes=ring_bytes)
        except IntakePaused:
            # The disk is short: the ring gives the room (its oldest, nothing an event
            # still needs), and the fragment is stored after all.
            wanted = ring_bytes + sum(len(record.payload) for record in records)
            if not ring or not self._give_room(2 * wanted, events, fragment.end_ms):
                raise
            self.spool.append(records, also=also, also_bytes=ring_bytes)
        self.newest_ms = max(self.newest_ms, fragment.end_ms)
        if for_events and records:
            self._queued_through_ms = max(self._queued_through_ms or 0, fragment.start_ms)

    def snapshot(self) -> CameraEventsSnapshot:
        stats = self.stats
        return {
            "upload": self.settings.upload,
            "ring_fragments": stats.ring_fragments,
            "ring_bytes": stats.ring_bytes,
            "ring_trimmed": stats.trimmed,
            "queued_for_events": stats.queued_for_events,
            "not_uploaded": stats.not_uploaded,
            "tags_left_out": stats.tags_left_out,
            "ring_yielded": stats.yielded,
        }

    # ------------------------------------------------------------------ parts

    def _events(self, now_ms: int) -> tuple[list[Event], list[Event]]:
        """The camera's uncovered events, those open past max_event ended (and listed
        again as the second list, to be written)."""
        name, longest = self.settings.name, self.settings.max_event_ms
        events = self.spool.read("events", lambda conn: camera_events.uncovered(conn, name))
        expired = [
            e._replace(ended_ms=e.started_ms + longest)
            for e in events
            if e.ended_ms is None and now_ms - e.started_ms > longest
        ]
        ended = {e.id: e for e in expired}
        return [ended.get(e.id, e) for e in events], expired

    def _pre_roll(self, events: Sequence[Event], before_ms: int) -> list[recordings.Recording]:
        """Ring fragments before this one that events want and that are not queued,
        none behind what is queued already."""
        after = self._queued_through_ms
        ranges = [
            (e.from_ms, before_ms - 1 if e.to_ms is None else min(e.to_ms, before_ms - 1))
            for e in events
            if e.from_ms < before_ms
        ]
        if not ranges:
            return []
        low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
        name = self.settings.name
        rows = self.spool.read("pre-roll", lambda conn: recordings.unqueued(conn, name, low, high))
        return [
            row
            for row in rows
            if (after is None or row.start_ms > after)
            and any(row.end_ms >= low_ and row.start_ms <= high_ for low_, high_ in ranges)
        ]

    def _tagged(self, meta: str, events: Sequence[Event]) -> str:
        """The meta text with the camera's tags and those of the events."""
        if not events and not self.settings.tags:
            return meta
        described = [{"id": e.id, "trigger": e.trigger, "fields": e.field_values()} for e in events]
        tags, left_out = fit(self.settings.tags, described)
        self.stats.tags_left_out += left_out
        return with_tags(meta, tags)

    def _copy(self, row: recordings.Recording, events: Sequence[Event]) -> Record:
        mine = [e for e in events if overlaps(e, row.start_ms, row.end_ms)]
        return self._record(row.start_ms, self._tagged(row.meta, mine), row.payload)

    def _record(self, start_ms: int, meta: str, payload: Payload) -> Record:
        settings = self.settings
        return Record(settings.sink or "", settings.name, start_ms, payload, meta)

    def _give_room(self, wanted: int, events: Sequence[Event], through_ms: int) -> bool:
        """Drop the ring's oldest fragments, at least ``wanted`` bytes of them if it can
        (not one an event still needs); whether it freed any."""
        settings = self.settings
        freed: list[recordings.Trimmed] = []

        def also(conn: sqlite3.Connection, _queues: Queues) -> Callable[[], None]:
            trimmed = recordings.trim(
                conn,
                settings.name,
                over_bytes=wanted,
                older_than_ms=0,
                keep_from_ms=_wanted_from(events, through_ms),
                waiting_from_ms=recordings.oldest_waiting_ms(conn, settings.sink or ""),
            )
            freed.append(trimmed)
            return lambda: self._stored(0, trimmed, 0)

        self.spool.append([], also=also)  # a deletion: no admission needed
        if freed and freed[0].fragments:
            self.stats.yielded += freed[0].fragments
            return True
        return False

    def _stored(self, ring_bytes: int, trimmed: recordings.Trimmed, for_events: int) -> None:
        stats = self.stats
        if ring_bytes:
            stats.recorded += 1
            stats.ring_fragments += 1
        stats.ring_bytes += ring_bytes - trimmed.bytes
        stats.ring_fragments -= trimmed.fragments
        stats.trimmed += trimmed.fragments
        stats.queued_for_events += for_events


def _wanted_from(events: Sequence[Event], through_ms: int) -> int | None:
    """The earliest time an event not yet covered past ``through_ms`` wants video from."""
    return min((e.from_ms for e in events if e.to_ms is None or through_ms < e.to_ms), default=None)
