"""The event keeper: one thread that tells the cloud about events and takes requests
from the command line (docs/EVENTS.md).

Twice a second:

- **requests** (requests.py): a manual event becomes a camera event, an exported clip a
  record of an S3 sink, each in one transaction with the mark that the request is done
  (``requests_done``: a request done before a crash is not done twice);
- **announcements**: each event's start, and its end once it has one, goes to its
  camera's ``events_sink`` as a JSON record, in the transaction that marks it
  announced: exactly once into the spool, before its video (which waits for the event's
  post-roll) arrives. Cameras without an ``events_sink`` mark theirs announced at once.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.config.cameras import CameraConfig
from edge_agent.config.loading import Config
from edge_agent.errors import EdgeAgentError
from edge_agent.events import requests
from edge_agent.records import Record
from edge_agent.runtime_status import EventsSnapshot
from edge_agent.spool import camera_events
from edge_agent.spool.camera_events import ENDED, NEW, STARTED, Event, NewEvent
from edge_agent.spool.queues import Queues
from edge_agent.spool.store import Spool
from edge_agent.worker import ThreadWorker, WorkerState

log = logging.getLogger(__name__)

PASS_S = 0.5
MANUAL = "manual"


@dataclass
class KeeperStats(WorkerState):
    announced: int = 0  # records of event starts and ends
    requests: int = 0
    bad_requests: int = 0
    last_error: str = ""


class EventKeeper(ThreadWorker):
    def __init__(
        self,
        cameras: Mapping[str, CameraConfig],
        spool: Spool,
        spool_path: Path,
        stop: threading.Event,
        *,
        device: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cameras = cameras
        self.spool = spool
        self.spool_path = spool_path
        self._stop = stop
        self._device = device
        self._clock = clock
        self.stats = KeeperStats()

    def start(self) -> None:
        self._start_thread(self.run, "events")

    def run(self) -> None:
        self.stats.set("running")
        while not self._stop.is_set():
            try:
                self.step()
            except (EdgeAgentError, OSError, sqlite3.Error) as err:
                if str(err) != self.stats.last_error:
                    log.error("events: %s", err)
                self.stats.last_error = str(err)
            self._stop.wait(PASS_S)
        self.stats.set("stopped")

    def step(self) -> None:
        self.take_requests()
        self.announce()

    # ------------------------------------------------------------------ requests

    def take_requests(self) -> None:
        for request in requests.pending(self.spool_path):
            if isinstance(request, tuple):
                self._bad(*request)
                continue
            camera = str(request.body.get("camera", ""))
            settings = self.cameras.get(camera)
            if settings is None:
                self._bad(request.path, f"no camera named {camera!r}")
            elif request.kind not in ("event", "clip"):
                self._bad(request.path, f"unknown request kind {request.kind!r}")
            else:
                self._take(request, settings)

    def _take(self, request: requests.Request, settings: CameraConfig) -> None:
        """Do a request in one transaction with the mark that it is done; then delete it."""
        if self.spool.read("request", lambda conn: camera_events.request_done(conn, request.id)):
            request.done()  # done before a crash left the file
            return
        event = self._manual_event(request, settings) if request.kind == "event" else None
        records = self._clip(request) if request.kind == "clip" else []
        if request.kind == "clip" and not records:
            return
        now_ms = int(self._clock() * 1000)

        def also(conn: sqlite3.Connection, _queues: Queues) -> None:
            camera_events.mark_request_done(conn, request.id, request.kind, now_ms)
            if event is not None:
                camera_events.create(conn, event, now_ms)

        self.spool.append(records, also=also)
        request.done()
        self.stats.requests += 1
        log.info("events: %s request %s on camera %s done", request.kind, request.id, settings.name)

    def _manual_event(self, request: requests.Request, settings: CameraConfig) -> NewEvent:
        body = request.body
        at_ms = int(body.get("at_ms") or self._clock() * 1000)
        duration = body.get("duration_ms")
        fields = body.get("fields") if isinstance(body.get("fields"), dict) else {}
        return NewEvent(
            settings.name,
            MANUAL,
            at_ms,
            at_ms + int(duration) if isinstance(duration, int) else at_ms,
            settings.pre_roll_ms,
            settings.post_roll_ms,
            dict(fields or {}),
        )

    def _clip(self, request: requests.Request) -> list[Record]:
        """An exported clip for an S3 sink: the file as one record."""
        body = request.body
        path = Path(str(body.get("path", "")))
        sink = str(body.get("sink", ""))
        try:
            data = path.read_bytes()
        except OSError as err:
            self._bad(request.path, f"cannot read the clip {path}: {err.strerror}")
            return []
        extension = path.suffix.lower().lstrip(".") or "mkv"
        meta = {
            "kind": "clip",
            "camera": body.get("camera"),
            "event": body.get("event"),
            "content_type": "video/mp4" if extension == "mp4" else "video/x-matroska",
            "extension": extension,
            "from_ms": body.get("from_ms"),
            "to_ms": body.get("to_ms"),
        }
        at_ms = int(body.get("from_ms") or self._clock() * 1000)
        return [Record(sink, str(body.get("camera")), at_ms, data, json.dumps(meta))]

    def _bad(self, path: Path, why: str) -> None:
        log.warning("events: request %s set aside: %s", path.name, why)
        self.stats.bad_requests += 1
        requests.set_aside(path)

    # ------------------------------------------------------------------ announcements

    def announce(self) -> None:
        events = self.spool.read("events", camera_events.unannounced)
        if not events:
            return
        records: list[Record] = []
        marks: list[tuple[int, int]] = []
        for event in events:
            settings = self.cameras.get(event.camera)
            sink = settings.events_sink if settings is not None else None
            done = ENDED if event.ended_ms is not None else STARTED
            if sink is not None:
                if event.announced == NEW:
                    records.append(self._record(sink, event, "start"))
                if done == ENDED:
                    records.append(self._record(sink, event, "end"))
            marks.append((event.id, done))

        def also(conn: sqlite3.Connection, _queues: Queues) -> None:
            for event_id, announced in marks:
                camera_events.mark_announced(conn, event_id, announced)

        self.spool.append(records, also=also)
        self.stats.announced += len(records)

    def _record(self, sink: str, event: Event, state: str) -> Record:
        at_ms = event.started_ms if state == "start" else event.ended_ms or event.started_ms
        body = {
            "event_id": event.id,
            "camera": event.camera,
            "device": self._device,
            "state": state,
            "trigger": event.trigger,
            "started_at": _iso(event.started_ms),
            "ended_at": None if event.ended_ms is None else _iso(event.ended_ms),
            "started_ms": event.started_ms,
            "ended_ms": event.ended_ms,
            "video_from_ms": event.from_ms,
            "video_to_ms": event.to_ms,
            "fields": event.field_values(),
        }
        payload = json.dumps(body, separators=(",", ":"), default=str).encode()
        return Record(sink, event.camera, at_ms, payload, json.dumps({"event": event.id}))

    def snapshot(self) -> EventsSnapshot:
        stats = self.stats
        return {
            "state": stats.state,
            "announced": stats.announced,
            "requests": stats.requests,
            "bad_requests": stats.bad_requests,
            "last_error": stats.last_error,
        }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def start_event_keeper(
    config: Config, spool: Spool, stops: dict[str, threading.Event]
) -> EventKeeper | None:
    """The agent's keeper, started, if it has cameras (its stop event in ``stops``)."""
    if not config.cameras:
        return None
    stop = stops["events"] = threading.Event()
    keeper = EventKeeper(
        config.cameras, spool, config.spool.path, stop, device=config.agent.device_name
    )
    keeper.start()
    return keeper
