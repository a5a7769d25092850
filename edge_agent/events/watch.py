"""What a camera's pictures are watched for: motion, which starts and ends events, and
snapshots, JPEG records for the camera's ``snapshot_sink`` (docs/EVENTS.md). Runs in
the camera's thread.

    passthrough camera   ``keyframe``: every keyframe is kept (bytes, no decoding);
                         with motion on, it is decoded and sampled
    encoded camera       ``picture``: ``sample_fps`` of the pictures it decodes anyway
    after each fragment  ``stored``: a snapshot for each event that has none yet (from
                         an MQTT trigger or the command line), and every
                         ``snapshot_every``

A motion event is created, with its snapshot, in one transaction; it ends ``cooldown``
after the last motion, at that motion's time. A camera that starts again ends the
motion event its last run left open, at the end of its recording.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent.config.cameras import CameraConfig
from edge_agent.events.pictures import JpegEncoder, KeyframeDecoder
from edge_agent.media.mkv import VideoTrack
from edge_agent.records import Record
from edge_agent.runtime_status import CameraEventsSnapshot
from edge_agent.spool import camera_events
from edge_agent.spool.camera_events import NewEvent
from edge_agent.spool.queues import Queues
from edge_agent.spool.store import Spool

if TYPE_CHECKING:
    from edge_agent.events.motion import MotionWatcher

log = logging.getLogger(__name__)

MOTION = "motion"


@dataclass
class WatchStats:
    motion_samples: int = 0
    motion_events: int = 0
    snapshots: int = 0
    undecodable_keyframes: int = 0
    last_snapshot_ms: float | None = None  # how long the last JPEG took (ms)


class CameraWatch:
    def __init__(
        self,
        settings: CameraConfig,
        spool: Spool,
        *,
        recorded_until_ms: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self._clock = clock
        self.motion: MotionWatcher | None = None
        if settings.motion is not None:  # numpy only where motion is on
            from edge_agent.events.motion import MotionWatcher

            self.motion = MotionWatcher(settings.motion)
        self.snapshots = settings.snapshot_sink is not None
        self.stats = WatchStats()
        self._decoder = KeyframeDecoder()
        self._jpeg = JpegEncoder()
        self._keyframe: tuple[bytes, VideoTrack, int] | None = None
        self._picture: tuple[Any, int] | None = None  # the newest decoded, and its time
        self._next_sample_ms = 0
        self._next_periodic_ms = 0
        self._event_id: int | None = None
        if self.motion is not None:
            self._end_left_open(recorded_until_ms)

    @property
    def active(self) -> bool:
        """Whether the camera needs to hand over its pictures at all."""
        return self.motion is not None or self.snapshots

    def snapshot(self) -> CameraEventsSnapshot:
        stats = self.stats
        fields: CameraEventsSnapshot = {
            "snapshots": stats.snapshots,
            "snapshot_ms": stats.last_snapshot_ms,
            "undecodable_keyframes": stats.undecodable_keyframes,
        }
        if self.motion is not None:
            fields["motion_samples"] = stats.motion_samples
            fields["motion_events"] = stats.motion_events
            fields["motion_area"] = round(self.motion.detector.last_area, 4)
        return fields

    # ------------------------------------------------------------------ pictures in

    def keyframe(self, data: bytes, track: VideoTrack, at_ms: int) -> None:
        """A passthrough camera's keyframe (length-prefixed NAL units), at wall time."""
        self._keyframe = (data, track, at_ms)
        self._picture = None
        if self.motion is not None:
            picture = self._decode()
            if picture is not None:
                self._sample(picture, at_ms)

    def picture(self, picture: Any, at_ms: int) -> None:
        """A decoded picture of an encoded camera, at wall time."""
        motion = self.motion
        if at_ms < self._next_sample_ms:
            return
        fps = motion.detector.config.sample_fps if motion is not None else 1.0
        self._next_sample_ms = at_ms + int(1000 / fps)
        self._picture = (picture, at_ms)
        if motion is not None:
            self._sample(picture, at_ms)

    def stored(self) -> None:
        """After each fragment: the snapshots that are due."""
        if not self.snapshots:
            return
        name = self.settings.name
        wanting = self.spool.read(
            "snapshots", lambda conn: camera_events.wanting_snapshot(conn, name)
        )
        now_ms = int(self._clock() * 1000)
        every = self.settings.snapshot_every
        periodic = every is not None and now_ms >= self._next_periodic_ms
        if not wanting and not periodic:
            return
        shot = self._snapshot()
        if shot is None:
            return
        records = [self._snapshot_record(shot, event_id) for event_id in wanting]
        if periodic:
            records.append(self._snapshot_record(shot, None))
            assert every is not None
            self._next_periodic_ms = now_ms + int(every * 1000)

        def also(conn: sqlite3.Connection, _queues: Queues) -> None:
            for event_id in wanting:
                camera_events.mark_snapshot(conn, event_id)

        self.spool.append(records, also=also)
        self.stats.snapshots += len(records)

    # ------------------------------------------------------------------ motion

    def _sample(self, picture: Any, at_ms: int) -> None:
        from edge_agent.events.motion import luma_of

        motion = self.motion
        assert motion is not None
        self.stats.motion_samples += 1
        moved = motion.detector.sample(luma_of(picture))
        change = motion.update(moved, at_ms)
        if change == "start":
            self._picture = (picture, at_ms)
            self._start_event(at_ms, motion.detector.last_area)
        elif change == "end" and self._event_id is not None:
            event_id, ended_ms = self._event_id, motion.last_motion_ms or at_ms
            self._event_id = None
            self.spool.append([], also=lambda conn, _q: camera_events.end(conn, event_id, ended_ms))

    def _start_event(self, at_ms: int, area: float) -> None:
        settings = self.settings
        motion = settings.motion
        assert motion is not None
        event = NewEvent(
            settings.name,
            MOTION,
            at_ms,
            None,
            settings.pre_roll_ms,
            settings.post_roll_ms,
            {"area": round(area, 4)},
        )
        shot = self._snapshot() if self.snapshots and motion.snapshot else None
        made: list[int] = []

        def also(conn: sqlite3.Connection, queues: Queues) -> None:
            event_id = camera_events.create(conn, event, int(self._clock() * 1000))
            made.append(event_id)

        # The snapshot names its event: the id is known only inside the transaction, so
        # the snapshot goes in the transaction right after (a crash between the two
        # leaves the event wanting one, and ``stored`` takes it then).
        self.spool.append([], also=also)
        self._event_id = made[0]
        self.stats.motion_events += 1
        log.info(
            "camera %s: motion (%.1f %% of the picture): event %d",
            settings.name,
            area * 100,
            made[0],
        )
        if shot is not None:
            event_id = made[0]
            self.spool.append(
                [self._snapshot_record(shot, event_id)],
                also=lambda conn, _q: camera_events.mark_snapshot(conn, event_id),
            )
            self.stats.snapshots += 1

    def _end_left_open(self, recorded_until_ms: int) -> None:
        name = self.settings.name

        def also(conn: sqlite3.Connection, _queues: Queues) -> None:
            event = camera_events.open_of(conn, name, MOTION)
            if event is not None:
                camera_events.end(conn, event.id, max(recorded_until_ms, event.started_ms))

        self.spool.append([], also=also)

    # ------------------------------------------------------------------ snapshots

    def _decode(self) -> Any | None:
        if self._keyframe is None:
            return None
        data, track, at_ms = self._keyframe
        picture = self._decoder.decode(data, track)
        if picture is None:
            self.stats.undecodable_keyframes += 1
            return None
        self._picture = (picture, at_ms)
        return picture

    def _snapshot(self) -> tuple[bytes, int, int, int] | None:
        """(JPEG, time, width, height) of the newest picture, decoding the newest
        keyframe if nothing newer was decoded."""
        if self._picture is None and self._decode() is None:
            return None
        assert self._picture is not None
        import av

        picture, at_ms = self._picture
        started = time.perf_counter()
        try:
            jpeg = self._jpeg.encode(picture)
        except (av.FFmpegError, ValueError) as err:  # a picture the encoder refuses
            log.warning("camera %s: no snapshot: %s", self.settings.name, err)
            return None
        self.stats.last_snapshot_ms = (time.perf_counter() - started) * 1000
        return jpeg, at_ms, picture.width, picture.height

    def _snapshot_record(self, shot: tuple[bytes, int, int, int], event_id: int | None) -> Record:
        jpeg, at_ms, width, height = shot
        settings = self.settings
        meta = {
            "kind": "snapshot",
            "camera": settings.name,
            "event": event_id,
            "content_type": "image/jpeg",
            "extension": "jpg",
            "width": width,
            "height": height,
        }
        assert settings.snapshot_sink is not None
        return Record(settings.snapshot_sink, settings.name, at_ms, jpeg, json.dumps(meta))
