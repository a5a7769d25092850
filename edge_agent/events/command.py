"""The event commands: ``edge-agent event CAMERA`` (a manual event, through a request to
the running agent) and ``edge-agent events`` (the events the spool holds, read-only)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from edge_agent.config.loading import Config
from edge_agent.config.units import parse_duration
from edge_agent.errors import EdgeAgentError
from edge_agent.events import requests
from edge_agent.spool import camera_events, recordings
from edge_agent.spool.camera_events import Event
from edge_agent.spool.recovery import connect_read_only


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    event = commands.add_parser(
        "event",
        parents=[common],
        help="mark an event on a camera now (its video is uploaded, tagged)",
        description="Start an event on CAMERA now, as a trigger would: the running agent "
        "takes it within a second (it waits while the agent is stopped). With "
        'upload = "events", the camera\'s fragments from pre_roll before it to '
        "post_roll after it go to its sink.",
    )
    event.add_argument("camera", help="a [cameras.NAME] of the config")
    event.add_argument(
        "--duration", default="0s", help="how long the event lasts (default 0s: a moment)"
    )
    event.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an event field (repeatable): sent with the event, and a fragment tag",
    )
    events = commands.add_parser(
        "events",
        parents=[common],
        help="list the events the spool holds",
        description="The newest events first, with their video range and upload state, "
        "and each camera's local recording.",
    )
    events.add_argument("--camera", default=None, help="only this camera's")
    events.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    events.add_argument("--json", action="store_true", help="one JSON object per line")


def event_command(config: Config, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if args.camera not in config.cameras:
        names = ", ".join(config.cameras) or "none"
        raise EdgeAgentError(
            f"no [cameras.{args.camera}] in {config.source_file} (cameras: {names})"
        )
    fields: dict[str, str] = {}
    for item in args.field:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise EdgeAgentError(f"--field {item!r}: expected NAME=VALUE")
        fields[name] = value
    try:
        duration_ms = int(parse_duration(args.duration) * 1000)
    except ValueError as err:
        raise EdgeAgentError(f"--duration: {err}") from None
    request_id = requests.submit(
        config.spool.path,
        "event",
        {
            "camera": args.camera,
            "at_ms": int(time.time() * 1000),
            "duration_ms": duration_ms,
            "fields": fields,
        },
    )
    print(f"event requested on camera {args.camera} (request {request_id})", file=out)
    return 0


def events_command(config: Config, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    conn = connect_read_only(config.spool.path)
    try:
        found = camera_events.listing(conn, camera=args.camera, limit=args.limit)
        rings = recordings.sizes(conn)
    finally:
        conn.close()
    if args.json:
        for event in found:
            print(json.dumps(_as_json(event)), file=out)
        return 0
    print(
        f"{'id':>6}  {'camera':<12} {'trigger':<18} {'start (UTC)':<23} {'length':>8}  upload",
        file=out,
    )
    for event in found:
        length = (
            "open"
            if event.ended_ms is None
            else f"{(event.ended_ms - event.started_ms) / 1000:.1f}s"
        )
        print(
            f"{event.id:>6}  {event.camera:<12} {event.trigger:<18} {_time(event.started_ms):<23}"
            f" {length:>8}  {_upload_state(event)}",
            file=out,
        )
    for camera, ring in sorted(rings.items()):
        span = (
            ""
            if ring.oldest_ms is None
            else f", {_time(ring.oldest_ms)} to {_time(ring.newest_ms or 0)}"
        )
        print(
            f"ring {camera}: {ring.fragments} fragments, {ring.bytes / 1e6:.1f} MB{span}", file=out
        )
    return 0


def _upload_state(event: Event) -> str:
    if not event.covered:
        return f"recording ({event.fragments} fragments queued so far)"
    return f"{event.fragments} fragments queued"


def _as_json(event: Event) -> dict[str, object]:
    return {
        "id": event.id,
        "camera": event.camera,
        "trigger": event.trigger,
        "started_ms": event.started_ms,
        "ended_ms": event.ended_ms,
        "video_from_ms": event.from_ms,
        "video_to_ms": event.to_ms,
        "fields": event.field_values(),
        "announced": event.announced,
        "covered": bool(event.covered),
        "fragments_queued": event.fragments,
        "snapshot": bool(event.snapshot),
    }


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
