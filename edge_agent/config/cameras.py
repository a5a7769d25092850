"""The ``[cameras.NAME]`` tables: where each camera's frames come from, how they are cut."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Literal

from edge_agent.config.budget import RATE
from edge_agent.config.events import MotionConfig, read_motion
from edge_agent.config.options import (
    BOOLEAN,
    DURATION,
    MILLISECONDS,
    SIZE,
    STRING,
    Kind,
    Table,
    choice,
    integer,
    matches,
    off,
    option,
    read_option,
    read_section,
    section,
)
from edge_agent.config.sinks import SinkConfig, named_tables
from edge_agent.media.fragment_tags import MAX_USER_TAGS, tag_problem

CameraSource = Literal["rtsp", "v4l2", "file", "lavfi"]
Upload = Literal["continuous", "events", "off"]
RtspClient = Literal["auto", "builtin", "pyav"]
Preset = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
]
PRESETS: tuple[Preset, ...] = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
#: Fragments are held whole in one spool record: a sink fed by a camera must take them.
MIN_VIDEO_RECORD_BYTES = 4 * 1024 * 1024

#: A rate, kept in bits per second.
BITRATE: Kind[int | None] = RATE.map(
    'rate or "off"',
    lambda rate: None if rate is None else round(rate * 8),
    lambda bits: RATE.show(None if bits is None else bits / 8),
)


@section
class CameraConfig:
    """One camera (``[cameras.NAME]``); each runs in its own thread. H.264 and H.265 from
    the camera are passed through untouched; anything else is encoded with libx264. More FFmpeg
    options for the input go in ``[cameras.NAME.options]``, passed as they are;
    ``[cameras.NAME.tags]`` are fragment tags (Kinesis Video metadata, at most 9, names
    not starting with AWS) on every fragment, and ``[cameras.NAME.motion]`` turns on
    motion detection (below)."""

    name: str
    url: str = option(
        kind=STRING,
        doc="The stream's URL, device, file or filter graph; credentials in it are never "
        "logged or shown in status.",
    )
    sink: str | None = option(
        kind=STRING,
        default=None,
        default_doc='required unless upload = "off"',
        doc="The sink its fragments go to (records of at least 4MiB); a kvs sink takes one camera.",
    )
    source: CameraSource = option(
        kind=choice("rtsp", "v4l2", "file", "lavfi"),
        default="rtsp",
        doc="rtsp (IP cameras), v4l2 (/dev/videoN), file (replays a recording) or lavfi "
        '(an FFmpeg filter graph such as "testsrc2=size=1280x720").',
    )
    fragment_ms: int = option(
        kind=MILLISECONDS,
        key="fragment",
        default=2000,
        doc="Fragments start at a keyframe and last about this long.",
    )
    max_fragment_ms: int = option(
        kind=MILLISECONDS,
        key="max_fragment",
        default=10_000,
        doc="A camera whose keyframes are further apart is cut here (at most 30s).",
    )
    realtime: bool = option(
        kind=BOOLEAN,
        default=True,
        doc="Files only: true replays at the recording's own pace; false reads as fast as "
        "it can, stamped so that the recording ends by now (never in the future), and "
        "paces a replay that would run ahead of the clock.",
    )
    audio: bool = option(
        kind=BOOLEAN,
        default=False,
        doc="Also take the camera's audio, AAC or G.711 as it comes, as the stream's second "
        "track (other audio codecs are reported and left out). Off by default: many places "
        "regulate recording sound more strictly than video.",
    )
    video_size: str | None = option(
        kind=STRING,
        default=None,
        check=matches(r"\d{2,5}x\d{2,5}", "expected WIDTHxHEIGHT, such as '1280x720'"),
        doc="V4L2 only: the size the device is asked for.",
    )
    framerate: int | None = option(
        kind=integer(1, 240), default=None, doc="V4L2 only: the frame rate."
    )
    input_format: str | None = option(
        kind=STRING, default=None, doc='V4L2 only: the input format ("mjpeg", "yuyv422", "h264").'
    )
    preset: Preset = option(
        kind=choice(*PRESETS),
        default="veryfast",
        doc="Encoding only: the libx264 preset.",
    )
    bitrate: int | None = option(
        kind=BITRATE,
        default=None,
        default_doc="libx264's constant quality",
        doc="Encoding only: the bitrate.",
    )
    connect_timeout: float = option(kind=DURATION, default=10.0, doc="Opening the stream.")
    stall_timeout: float = option(
        kind=DURATION, default=10.0, doc="No frames for this long: the camera is lost."
    )
    reconnect_min: float = option(
        kind=DURATION,
        default=1.0,
        doc="A lost camera is opened again with backoff from reconnect_min doubling to "
        "reconnect_max.",
    )
    reconnect_max: float = option(kind=DURATION, default=30.0, doc="The longest backoff.")
    #: ``[cameras.NAME.options]``: more FFmpeg options for the input.
    extra_options: Mapping[str, str] = field(default_factory=dict)
    rtsp_client: RtspClient = option(
        kind=choice("auto", "builtin", "pyav"),
        default="auto",
        doc='RTSP only: "builtin" (H.264, H.265, AAC, G.711 over TCP, least CPU), "pyav" '
        '(FFmpeg\'s: UDP, listen mode, any codec, FFmpeg options) or "auto" (builtin '
        "unless [options] are given).",
    )

    upload: Upload = option(
        kind=choice("continuous", "events", "off"),
        default="continuous",
        doc='"continuous": every fragment goes to the sink; "events": only the fragments '
        'from pre_roll before an event to post_roll after it; "off": none (the local '
        "ring only).",
    )
    record: bool = option(
        kind=BOOLEAN,
        default=False,
        default_doc='true with upload = "events" or "off", else false',
        doc="Keep every fragment in a local ring on the device, capped by record_max_bytes "
        "and record_max_age, apart from the upload queues and their caps.",
    )
    record_max_bytes: int = option(
        kind=SIZE,
        default=1024**3,
        doc="The ring's size: past it the oldest fragments go (never one an event still "
        "waits to queue).",
    )
    record_max_age: float = option(
        kind=DURATION, default=86_400.0, doc="Fragments older than this leave the ring."
    )
    pre_roll_ms: int = option(
        kind=MILLISECONDS,
        key="pre_roll",
        default=5_000,
        doc="An event's video starts this long before it (from the ring).",
    )
    post_roll_ms: int = option(
        kind=MILLISECONDS,
        key="post_roll",
        default=10_000,
        doc="An event's video ends this long after it.",
    )
    max_event_ms: int = option(
        kind=MILLISECONDS,
        key="max_event",
        default=600_000,
        doc="An event still open after this long is ended (a trigger that never says end).",
    )
    events_sink: str | None = option(
        kind=STRING,
        default=None,
        doc="A record sink (kinesis, firehose, hold) that gets each event's start and end "
        "as a JSON record, before its video arrives.",
    )
    snapshot_sink: str | None = option(
        kind=STRING,
        default=None,
        doc='An "s3" sink for JPEG snapshots: one when an event starts, and every snapshot_every.',
    )
    snapshot_every: float | None = option(
        kind=off(DURATION),
        default=None,
        doc="Also a snapshot this often (with snapshot_sink).",
    )
    #: ``[cameras.NAME.tags]``: fragment tags on every fragment (Kinesis Video metadata).
    tags: Mapping[str, str] = field(default_factory=dict)
    #: ``[cameras.NAME.motion]``: motion detection, if the table is there.
    motion: MotionConfig | None = None

    @property
    def builtin_rtsp(self) -> bool:
        """Whether the camera is read by the built-in RTSP client (``rtsp_client``):
        "auto" takes it for RTSP cameras without FFmpeg ``options`` (those are PyAV's)."""
        if self.source != "rtsp":
            return False
        if self.rtsp_client == "auto":
            return not self.extra_options
        return self.rtsp_client == "builtin"


def read_cameras(table: Table | None, sinks: Mapping[str, SinkConfig]) -> dict[str, CameraConfig]:
    cameras: dict[str, CameraConfig] = {}
    for name, sub in named_tables(table, "camera"):
        cameras[name] = _read_camera(name, sub, sinks, cameras)
        sub.finish()
    return cameras


def _read_camera(
    name: str, table: Table, sinks: Mapping[str, SinkConfig], cameras: Mapping[str, CameraConfig]
) -> CameraConfig:
    options = table.subtable("options")
    extra: dict[str, str] = {}
    if options is not None:
        extra = {key: str(value) for key, value in options.raw.items()}
        options.raw.clear()
    upload = read_option(CameraConfig, "upload", table)
    camera = read_section(
        CameraConfig,
        table,
        given={
            "name": name,
            "upload": upload,
            "extra_options": extra,
            "tags": read_tags(table.subtable("tags")),
            "motion": read_motion(table.subtable("motion")),
        },
        defaults={"record": upload != "continuous"},
    )
    _check_events(table, camera, sinks)
    if not 0 < camera.fragment_ms <= camera.max_fragment_ms <= 30_000:
        table.problem("fragment", "need 0 < fragment <= max_fragment <= 30s")
    if camera.rtsp_client == "builtin" and camera.extra_options:
        table.problem(
            "rtsp_client",
            "the built-in RTSP client takes no FFmpeg [options]: remove them, or set "
            'rtsp_client = "pyav"',
        )
    if camera.rtsp_client != "auto" and camera.source != "rtsp":
        table.problem("rtsp_client", f"only RTSP cameras have one (source is {camera.source!r})")
    if camera.reconnect_min > camera.reconnect_max:
        table.problem("reconnect_min", "must not exceed reconnect_max")
    if camera.sink is None:
        if camera.upload != "off" and table.ok("sink"):
            table.problem("sink", 'is required (unless upload = "off")')
        return camera
    if not table.ok("sink"):
        return camera
    sink = sinks.get(camera.sink)
    if sink is None:
        table.problem("sink", f"no sink named {camera.sink!r} in [sinks]")
    elif sink.max_record_bytes < MIN_VIDEO_RECORD_BYTES:
        table.problem(
            "sink",
            f"sink {camera.sink!r} takes records of at most {sink.max_record_bytes} bytes; "
            f"a fragment of video needs more: set its max_record_bytes to at least 4MiB",
        )
    elif sink.type == "kvs" and any(c.sink == camera.sink for c in cameras.values()):
        table.problem(
            "sink",
            f"sink {camera.sink!r} already takes another camera; a Kinesis Video stream "
            "takes one camera (one track, one timeline): give each camera its own sink",
        )
    return camera


def read_tags(table: Table | None) -> dict[str, str]:
    """``[cameras.NAME.tags]``: names and values within Kinesis Video's rules for
    fragment metadata (media/fragment_tags.py)."""
    if table is None:
        return {}
    tags: dict[str, str] = {}
    for name, value in list(table.raw.items()):
        if not isinstance(value, str):
            table.problem(name, "expected a string")
        elif problem := tag_problem(name, value):
            table.problem(name, problem)
        else:
            tags[name] = value
    table.raw.clear()
    if len(tags) > MAX_USER_TAGS:
        table.problem("", f"{len(tags)} tags; a fragment carries at most {MAX_USER_TAGS}")
    return tags


def _check_events(table: Table, camera: CameraConfig, sinks: Mapping[str, SinkConfig]) -> None:
    if camera.upload != "continuous" and not camera.record:
        table.problem(
            "record",
            f'upload = "{camera.upload}" takes its video from the local ring: '
            "leave record out or set it to true",
        )
    if camera.events_sink is not None:
        events = sinks.get(camera.events_sink)
        if events is None:
            table.problem("events_sink", f"no sink named {camera.events_sink!r} in [sinks]")
        elif events.type in ("kvs", "s3"):
            table.problem(
                "events_sink",
                f"sink {camera.events_sink!r} is {events.type}: "
                "events are records for kinesis, firehose or hold",
            )
    if camera.snapshot_sink is not None:
        snapshots = sinks.get(camera.snapshot_sink)
        if snapshots is None:
            table.problem("snapshot_sink", f"no sink named {camera.snapshot_sink!r} in [sinks]")
        elif snapshots.type != "s3":
            table.problem(
                "snapshot_sink",
                f'sink {camera.snapshot_sink!r} is {snapshots.type}: snapshots go to an "s3" sink',
            )
    elif camera.snapshot_every is not None:
        table.problem("snapshot_every", "needs a snapshot_sink")
