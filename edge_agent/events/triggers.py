"""MQTT messages that start and end camera events (``[triggers.NAME]``).

The MQTT source routes a trigger's topics to the pseudo-queue ``trigger:NAME``;
``TriggerRouter.split`` takes those messages out of the batch and turns them into
writes to ``camera_events`` inside the batch's own transaction, so that a trigger is
acknowledged to the broker only once its event is in the spool, like any message.

    no state    every message is an event: started and ended at its capture time
    state       a value in ``start`` opens an event (unless one of this trigger is open
                on the camera), a value in ``end`` ends the open one; others are ignored

Fields and the state are read with SQLite's ``json_extract`` (the JSON paths of the
analytics). A payload that is not JSON makes an event without fields (no state) or is
ignored (with a state) and counted.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edge_agent.config.cameras import CameraConfig
from edge_agent.config.events import TRIGGER_PREFIX, TriggerConfig
from edge_agent.records import Record, payload_bytes
from edge_agent.spool import camera_events
from edge_agent.spool.camera_events import NewEvent
from edge_agent.spool.queues import Queues


@dataclass
class TriggerStats:
    messages: int = 0
    started: int = 0
    ended: int = 0
    ignored: int = 0  # no JSON, or a state value neither in start nor in end


class TriggerRouter:
    def __init__(
        self, triggers: Mapping[str, TriggerConfig], cameras: Mapping[str, CameraConfig]
    ) -> None:
        self.queues = {TRIGGER_PREFIX + name: trigger for name, trigger in triggers.items()}
        #: Each trigger's start and end values, lower-cased once (not per message).
        self._words = {
            name: ({v.lower() for v in t.start}, {v.lower() for v in t.end})
            for name, t in triggers.items()
        }
        self.cameras = cameras
        self.stats = {name: TriggerStats() for name in triggers}

    def split(
        self, records: list[Record]
    ) -> tuple[list[Record], Callable[[sqlite3.Connection, Queues], None] | None]:
        """The batch without the triggers' messages, and the writes they make."""
        queues = self.queues
        taken = [record for record in records if record.queue in queues]
        if not taken:
            return records, None
        kept = [record for record in records if record.queue not in queues]

        def also(conn: sqlite3.Connection, _queues: Queues) -> None:
            for record in taken:
                self._apply(conn, queues[record.queue], record)

        return kept, also

    def _apply(self, conn: sqlite3.Connection, trigger: TriggerConfig, record: Record) -> None:
        stats = self.stats[trigger.name]
        stats.messages += 1
        text = payload_bytes(record.payload).decode(errors="replace")
        valid = bool(conn.execute("SELECT json_valid(?)", (text,)).fetchone()[0])
        fields = _fields(conn, text, trigger.fields) if valid else {}
        fields["topic"] = _topic(record)
        at_ms = record.captured_at_ms
        if trigger.state is None:
            for camera in trigger.cameras:
                self._create(conn, camera, trigger, at_ms, at_ms, fields=fields)
            stats.started += 1
            return
        value = _extract(conn, text, trigger.state) if valid else None
        word = "" if value is None else str(value).lower()
        starts, ends = self._words[trigger.name]
        if word in starts:
            for camera in trigger.cameras:
                if camera_events.open_of(conn, camera, trigger.trigger_name()) is None:
                    self._create(conn, camera, trigger, at_ms, None, fields=fields)
            stats.started += 1
        elif word in ends:
            for camera in trigger.cameras:
                event = camera_events.open_of(conn, camera, trigger.trigger_name())
                if event is not None:
                    camera_events.end(conn, event.id, at_ms)
            stats.ended += 1
        else:
            stats.ignored += 1

    def _create(
        self,
        conn: sqlite3.Connection,
        camera: str,
        trigger: TriggerConfig,
        started_ms: int,
        ended_ms: int | None,
        *,
        fields: dict[str, object],
    ) -> None:
        settings = self.cameras[camera]
        event = NewEvent(
            camera,
            trigger.trigger_name(),
            started_ms,
            ended_ms,
            settings.pre_roll_ms,
            settings.post_roll_ms,
            fields,
        )
        camera_events.create(conn, event, started_ms)


def _extract(conn: sqlite3.Connection, text: str, path: str) -> object:
    try:
        return conn.execute("SELECT json_extract(?, ?)", (text, path)).fetchone()[0]
    except sqlite3.Error:  # a path SQLite cannot read: checked at load, so not expected
        return None


def _fields(conn: sqlite3.Connection, text: str, paths: Mapping[str, str]) -> dict[str, object]:
    found = {name: _extract(conn, text, path) for name, path in paths.items()}
    return {name: value for name, value in found.items() if value is not None}


def _topic(record: Record) -> str:
    """The message's topic, from the meta the MQTT source gives each record."""
    try:
        meta = json.loads(record.meta or "{}")
    except ValueError:
        return ""
    return str(meta.get("topic", "")) if isinstance(meta, dict) else ""
