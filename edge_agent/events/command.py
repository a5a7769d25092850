"""The event commands: ``edge-agent event CAMERA`` (a manual event, through a request to
the running agent) and ``edge-agent events`` (the events the spool holds, read-only)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from edge_agent.config.cameras import CameraConfig
from edge_agent.config.loading import Config
from edge_agent.config.units import parse_duration, parse_time
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
    clip = commands.add_parser(
        "clip",
        parents=[common],
        help="write a camera's recording from one time to another as a playable file",
        description="Export CAMERA's local recording from --from to --to as a .mkv or "
        ".mp4 (packets copied as recorded, no re-encoding; the ends fall on keyframes). "
        "--upload also sends it to an S3 sink, through the running agent.",
    )
    clip.add_argument("camera", help="a [cameras.NAME] of the config")
    clip.add_argument("--from", dest="start", required=True, help=TIME_HELP)
    clip.add_argument("--to", dest="end", default=None, help="end, as --from (default: now)")
    clip.add_argument("-o", "--output", required=True, help="the file to write (.mkv or .mp4)")
    clip.add_argument(
        "--upload",
        nargs="?",
        const="",
        default=None,
        metavar="SINK",
        help="also upload it: to this s3 sink (default: the camera's snapshot_sink)",
    )


TIME_HELP = 'a duration before now ("10m"), an ISO time, or epoch ms'


def clip_command(config: Config, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from edge_agent.events.clips import export

    camera = _camera(config, args.camera)
    sink = None
    if args.upload is not None:
        sink = args.upload or camera.snapshot_sink
        settings = config.sinks.get(sink or "")
        if settings is None or settings.type != "s3":
            raise EdgeAgentError(
                f"--upload: {sink or 'the camera has no snapshot_sink'}: name an s3 sink"
            )
    now_ms = int(time.time() * 1000)
    start = parse_time(args.start, now_ms)
    end = now_ms if args.end is None else parse_time(args.end, now_ms)
    output = Path(args.output).resolve()
    conn = connect_read_only(config.spool.path)
    try:
        clip = export(conn, camera.name, start, end, output)
    finally:
        conn.close()
    seconds = (clip.to_ms - clip.from_ms) / 1000
    print(
        f"{output}: {clip.fragments} fragments, {seconds:.1f}s from {_time(clip.from_ms)}", file=out
    )
    if clip.cut_short:
        print(f"the clip ends early: {clip.cut_short}", file=out)
    if sink is not None:
        size = output.stat().st_size
        limit = config.sinks[sink].max_record_bytes
        if size > limit:
            raise EdgeAgentError(
                f"the clip is {size} bytes; sink {sink} takes at most {limit} "
                "(its max_record_bytes): raise it, or export a shorter range"
            )
        request_id = requests.submit(
            config.spool.path,
            "clip",
            {"camera": camera.name, "sink": sink, "path": str(output),
             "from_ms": clip.from_ms, "to_ms": clip.to_ms},
        )  # fmt: skip
        print(f"upload to sink {sink} requested (request {request_id})", file=out)
    return 0


def _camera(config: Config, name: str) -> CameraConfig:
    camera = config.cameras.get(name)
    if camera is None:
        names = ", ".join(config.cameras) or "none"
        raise EdgeAgentError(f"no [cameras.{name}] in {config.source_file} (cameras: {names})")
    return camera


def event_command(config: Config, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    _camera(config, args.camera)
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


COMMANDS = {"event": event_command, "events": events_command, "clip": clip_command}
