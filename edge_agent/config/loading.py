"""Configuration: a TOML file turned into frozen, validated dataclasses.

Every key has a default and a help line in configs/edge-agent.toml. Loading collects
every problem before failing, and each problem names the file, the key path
(``mqtt.subscriptions[2].qos``) and the reason. Unknown keys are errors, so a typo never
silently falls back to a default. String values may use ``${NAME}`` or
``${NAME:-default}`` to take secrets from the environment.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from edge_agent.config.units import parse_duration, parse_rate, parse_size
from edge_agent.errors import ConfigError, ConfigProblem
from edge_agent.sources.partition_keys import PartitionKeyTemplate

DEFAULT_CONFIG_PATH = "/etc/edge-agent/edge-agent.toml"
DEFAULT_STATE_DIR = "/var/lib/edge-agent"

Durability = Literal["full", "normal"]
Overflow = Literal["drop_oldest", "reject_new"]
IntegrityCheck = Literal["quick", "full", "off"]
SinkType = Literal["hold", "kinesis", "firehose", "kvs"]

#: Largest record each sink type accepts, in bytes, when the config does not say. For
#: Kinesis the partition key counts too.
DEFAULT_MAX_RECORD_BYTES: dict[str, int] = {
    "hold": 1024 * 1024,
    "kinesis": 1024 * 1024,
    "firehose": 1000 * 1024,
    "kvs": 16 * 1024 * 1024,
}
#: Largest request body (sum of records) per sink type.
DEFAULT_MAX_REQUEST_BYTES: dict[str, int] = {"kinesis": 5 * 1024 * 1024, "firehose": 4 * 1024**2}
#: Records per PutRecords / PutRecordBatch call, for both services.
MAX_REQUEST_RECORDS = 500
#: The stream settings that allow larger records and requests top out here.
MAX_KINESIS_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class AgentConfig:
    device_name: str
    state_dir: Path
    log_level: str = "info"
    status_interval: float = 2.0


@dataclass(frozen=True)
class SpoolConfig:
    path: Path
    durability: Durability = "full"
    max_bytes: int | None = 1024**3
    max_age: float | None = 7 * 86400
    commit_max_records: int = 1000
    commit_linger: float = 0.0
    integrity_check: IntegrityCheck = "quick"


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


@dataclass(frozen=True)
class Subscription:
    topic: str
    qos: int
    sinks: tuple[str, ...]
    partition_key: PartitionKeyTemplate


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "edge-agent"
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    session_expiry: float = 7 * 86400
    keepalive: float = 30.0
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    subscriptions: tuple[Subscription, ...] = ()


@dataclass(frozen=True)
class AwsEndpoint:
    """How to reach an AWS service: region, an optional endpoint override, credentials."""

    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 30.0


@dataclass(frozen=True)
class DeliveryConfig:
    """How a forwarding sink batches and retries."""

    max_request_records: int = MAX_REQUEST_RECORDS
    max_request_bytes: int = 5 * 1024 * 1024
    retry_min: float = 0.1
    retry_max: float = 30.0
    pause_probe: float = 60.0
    linger: float = 0.5


@dataclass(frozen=True)
class KinesisOptions:
    stream: str
    aggregate: bool = False
    aggregate_max_bytes: int = 51_200
    ordered: bool = False
    explicit_hash_key: str | None = None
    shard_records_per_second: int = 1000
    shard_bytes_per_second: int = 1024 * 1024
    shard_refresh: float = 300.0


@dataclass(frozen=True)
class FirehoseOptions:
    delivery_stream: str
    newline: bool = False


AckOn = Literal["persisted", "received"]
#: How a video sink sends a backlog: everything in capture order, or the newest
#: fragments live first with the backlog in separate sessions behind them.
ReplayOrder = Literal["oldest-first", "live-first"]
REPLAY_ORDERS: tuple[ReplayOrder, ...] = ("oldest-first", "live-first")


@dataclass(frozen=True)
class KvsOptions:
    """A Kinesis Video stream fed by PutMedia."""

    stream: str
    #: A fragment leaves the spool when the service says PERSISTED (durably stored), or
    #: RECEIVED for streams without retention (they never send PERSISTED).
    ack_on: AckOn = "persisted"
    replay: ReplayOrder = "oldest-first"
    #: Fragments on the wire without their acknowledgement, at most.
    max_in_flight: int = 10
    #: The service allows 5 fragments a second per stream.
    fragments_per_second: float = 5.0
    #: A connection is replaced before the service's 45-minute limit.
    connection_max_age: float = 40 * 60.0
    #: No acknowledgement for this long while fragments are in flight: reconnect.
    ack_timeout: float = 30.0
    retry_min: float = 1.0
    retry_max: float = 60.0
    pause_probe: float = 60.0


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class ScheduleWindow:
    """A time-of-day window (local time) in a sink's schedule: from ``start`` up to
    ``end`` ("HH:MM"; an end before the start runs past midnight) on ``days``."""

    start: str
    end: str
    action: Literal["allow", "pause", "cap"]
    max_rate: float | None = None  # bytes/s, for "cap"
    days: frozenset[int] = frozenset(range(7))  # 0 = Monday, the day the window starts
    #: What it governs: all of the sink's uploads, or only a live-first video sink's
    #: backlog sessions (live fragments then go at any time).
    traffic: Literal["all", "backlog"] = "all"

    @property
    def start_minute(self) -> int:
        return _minute_of_day(self.start)

    @property
    def end_minute(self) -> int:
        return _minute_of_day(self.end)


def _minute_of_day(clock: str) -> int:
    hours, _, minutes = clock.partition(":")
    return int(hours) * 60 + int(minutes)


@dataclass(frozen=True)
class ShareConfig:
    """A sink's part of the upload budget: its priority (a smaller number goes first),
    an optional cap of its own, and a schedule (the first matching window applies;
    outside every window uploads are allowed)."""

    priority: int = 0
    max_rate: float | None = None
    schedule: tuple[ScheduleWindow, ...] = ()


#: Telemetry goes before video unless a sink says otherwise.
DEFAULT_PRIORITY = {"kvs": 10}


@dataclass(frozen=True)
class SinkConfig:
    name: str
    type: SinkType
    max_bytes: int | None = None
    max_age: float | None = None
    overflow: Overflow = "drop_oldest"
    max_record_bytes: int = 1024 * 1024
    aws: AwsEndpoint | None = None
    delivery: DeliveryConfig | None = None
    kinesis: KinesisOptions | None = None
    firehose: FirehoseOptions | None = None
    kvs: KvsOptions | None = None
    upload: ShareConfig = ShareConfig()


CameraSource = Literal["rtsp", "v4l2", "file", "lavfi"]
RtspClient = Literal["auto", "builtin", "pyav"]
#: Fragments are held whole in one spool record: a sink fed by a camera must take them.
MIN_VIDEO_RECORD_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class CameraConfig:
    """One camera (``[cameras.NAME]``): where its frames come from, how they are cut."""

    name: str
    url: str
    sink: str
    #: "rtsp", "v4l2", "file" or "lavfi" (a filter graph such as "testsrc2=size=1280x720").
    source: CameraSource = "rtsp"
    fragment_ms: int = 2000
    max_fragment_ms: int = 10_000
    #: Files: deliver at the recording's own pace (True) or as fast as they read.
    realtime: bool = True
    #: V4L2: size ("1280x720"), frame rate, input format ("mjpeg", "yuyv422", "h264").
    video_size: str | None = None
    framerate: int | None = None
    input_format: str | None = None
    #: Encoding (any input that is not H.264).
    preset: str = "veryfast"
    bitrate: int | None = None  # bits/s; None: libx264's CRF default
    connect_timeout: float = 10.0
    stall_timeout: float = 10.0
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    extra_options: Mapping[str, str] = field(default_factory=dict)
    #: RTSP: "builtin" (edge-agent's own client: H.264 over TCP, least CPU), "pyav"
    #: (FFmpeg's: UDP, listen mode, any codec, FFmpeg options) or "auto" (builtin
    #: unless FFmpeg options are given).
    rtsp_client: RtspClient = "auto"


@dataclass(frozen=True)
class BudgetConfig:
    """The device's upload budget, shared by every forwarding sink."""

    max_rate: float | None = None
    burst: int = 256 * 1024


@dataclass(frozen=True)
class Config:
    source_file: str
    agent: AgentConfig
    spool: SpoolConfig
    mqtt: MqttConfig | None
    sinks: Mapping[str, SinkConfig] = field(default_factory=dict)
    uplink: BudgetConfig = BudgetConfig()
    cameras: Mapping[str, CameraConfig] = field(default_factory=dict)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SINK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
T = TypeVar("T")
_MISSING: Any = object()


class _Section:
    """One TOML table being read: typed getters that record problems instead of raising."""

    def __init__(self, file: str, path: str, table: object, problems: list[ConfigProblem]) -> None:
        self.file = file
        self.path = path
        self.problems = problems
        if not isinstance(table, dict):
            self.problem("", f"expected a table, got {type(table).__name__}")
            table = {}
        self.table: dict[str, Any] = dict(table)

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def problem(self, name: str, reason: str) -> None:
        self.problems.append(
            ConfigProblem(self.file, self.key(name) if name else self.path, reason)
        )

    def _take(self, name: str, default: T, convert: Callable[[Any], T]) -> T:
        if name not in self.table:
            if default is _MISSING:
                self.problem(name, "is required")
            return default
        raw = self.table.pop(name)
        if isinstance(raw, str):
            reported = len(self.problems)
            raw = self._expand_env(name, raw)
            if len(self.problems) > reported:
                return default
        try:
            return convert(raw)
        except (ValueError, TypeError) as err:
            self.problem(name, str(err))
            return default

    def _expand_env(self, name: str, raw: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            value = os.environ.get(match.group(1))
            if value is None:
                if match.group(2) is None:
                    self.problem(name, f"environment variable {match.group(1)} is not set")
                    return ""
                return match.group(2)
            return value

        return _ENV_REF.sub(substitute, raw)

    def string(self, name: str, default: Any = _MISSING, *, allow_empty: bool = False) -> Any:
        def convert(raw: Any) -> str:
            if not isinstance(raw, str):
                raise TypeError(f"expected a string, got {raw!r}")
            if not raw and not allow_empty:
                raise ValueError("must not be empty")
            return raw

        return self._take(name, default, convert)

    def integer(self, name: str, default: Any = _MISSING, *, low: int, high: int) -> Any:
        def convert(raw: Any) -> int:
            if isinstance(raw, str) and raw.strip().isdigit():
                raw = int(raw)  # e.g. port = "${MQTT_PORT:-1883}"
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise TypeError(f"expected an integer, got {raw!r}")
            if not low <= raw <= high:
                raise ValueError(f"must be between {low} and {high}, got {raw}")
            return raw

        return self._take(name, default, convert)

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        def convert(raw: Any) -> bool:
            if not isinstance(raw, bool):
                raise TypeError(f"expected true or false, got {raw!r}")
            return raw

        return self._take(name, default, convert)

    def choice(self, name: str, options: tuple[str, ...], default: Any = _MISSING) -> Any:
        def convert(raw: Any) -> str:
            if raw not in options:
                raise ValueError(f"must be one of {', '.join(options)}; got {raw!r}")
            return str(raw)

        return self._take(name, default, convert)

    def size(self, name: str, default: Any = _MISSING, *, optional: bool = False) -> Any:
        return self._take(name, default, _optional(parse_size) if optional else parse_size)

    def duration(self, name: str, default: Any = _MISSING, *, optional: bool = False) -> Any:
        return self._take(name, default, _optional(parse_duration) if optional else parse_duration)

    def rate(self, name: str, default: Any = _MISSING) -> Any:
        return self._take(name, default, _optional(parse_rate))

    def path_value(self, name: str, default: Any = _MISSING) -> Any:
        return self._take(name, default, lambda raw: Path(self._checked_str(raw)))

    def string_list(self, name: str, default: Any = _MISSING) -> Any:
        def convert(raw: Any) -> tuple[str, ...]:
            if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
                raise TypeError(f"expected a list of strings, got {raw!r}")
            return tuple(raw)

        return self._take(name, default, convert)

    def subtable(self, name: str) -> _Section | None:
        if name not in self.table:
            return None
        return _Section(self.file, self.key(name), self.table.pop(name), self.problems)

    def table_list(self, name: str) -> list[_Section]:
        raw = self.table.pop(name, [])
        if not isinstance(raw, list):
            self.problem(name, "expected an array of tables ([[...]])")
            return []
        return [
            _Section(self.file, f"{self.key(name)}[{index}]", item, self.problems)
            for index, item in enumerate(raw)
        ]

    def finish(self) -> None:
        """Report every key nobody asked for: unknown keys are errors."""
        for name in sorted(self.table):
            self.problem(name, "unknown key")

    @staticmethod
    def _checked_str(raw: Any) -> str:
        if not isinstance(raw, str) or not raw:
            raise TypeError(f"expected a non-empty path string, got {raw!r}")
        return raw


def _optional(convert: Callable[[Any], T]) -> Callable[[Any], T | None]:
    """Accept 0 / "0" / "off" / "none" to switch a cap off."""

    def wrapped(raw: Any) -> T | None:
        if raw in (0, "0", "off", "none", "unlimited"):
            return None
        return convert(raw)

    return wrapped


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raises ConfigError naming every problem."""
    file = str(path)
    try:
        with open(file, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(file, "", "file not found")]) from None
    except OSError as err:
        raise ConfigError([ConfigProblem(file, "", f"cannot read: {err.strerror}")]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([ConfigProblem(file, "", f"not valid TOML: {err}")]) from None
    return parse_config(document, file)


def parse_config(document: Mapping[str, Any], file: str = "<config>") -> Config:
    """Validate an already-parsed TOML document."""
    problems: list[ConfigProblem] = []
    root = _Section(file, "", dict(document), problems)
    agent = _read_agent(root.subtable("agent") or _Section(file, "agent", {}, problems))
    spool = _read_spool(root.subtable("spool") or _Section(file, "spool", {}, problems), agent)
    sinks = _read_sinks(root.subtable("sinks"))
    uplink = _read_uplink(root.subtable("uplink"))
    mqtt_section = root.subtable("mqtt")
    mqtt = _read_mqtt(mqtt_section, agent, sinks) if mqtt_section else None
    cameras = _read_cameras(root.subtable("cameras"), sinks)
    root.finish()
    if problems:
        raise ConfigError(problems)
    return Config(
        source_file=file,
        agent=agent,
        spool=spool,
        mqtt=mqtt,
        sinks=sinks,
        uplink=uplink,
        cameras=cameras,
    )


_PRESETS = (
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


def _read_cameras(
    section: _Section | None, sinks: Mapping[str, SinkConfig]
) -> dict[str, CameraConfig]:
    if section is None:
        return {}
    cameras: dict[str, CameraConfig] = {}
    for name in list(section.table):
        sub = section.subtable(name)
        assert sub is not None
        if not _SINK_NAME.match(name):
            sub.problem("", "camera names use letters, digits, '_', '.', '-' (at most 64)")
        bitrate = sub.rate("bitrate", None)
        options = sub.subtable("options")
        extra: dict[str, str] = {}
        if options is not None:
            extra = {key: str(value) for key, value in options.table.items()}
            options.table.clear()
        camera = CameraConfig(
            name=name,
            url=sub.string("url"),
            sink=sub.string("sink"),
            source=sub.choice("source", ("rtsp", "v4l2", "file", "lavfi"), "rtsp"),
            fragment_ms=round(sub.duration("fragment", 2.0) * 1000),
            max_fragment_ms=round(sub.duration("max_fragment", 10.0) * 1000),
            realtime=sub.boolean("realtime", True),
            video_size=sub.string("video_size", None),
            framerate=sub.integer("framerate", None, low=1, high=240),
            input_format=sub.string("input_format", None),
            preset=sub.choice("preset", _PRESETS, "veryfast"),
            bitrate=None if bitrate is None else round(bitrate * 8),
            connect_timeout=sub.duration("connect_timeout", 10.0),
            stall_timeout=sub.duration("stall_timeout", 10.0),
            reconnect_min=sub.duration("reconnect_min", 1.0),
            reconnect_max=sub.duration("reconnect_max", 30.0),
            extra_options=extra,
            rtsp_client=sub.choice("rtsp_client", ("auto", "builtin", "pyav"), "auto"),
        )
        if not 0 < camera.fragment_ms <= camera.max_fragment_ms <= 30_000:
            sub.problem("fragment", "need 0 < fragment <= max_fragment <= 30s")
        if camera.video_size is not None and not re.fullmatch(
            r"\d{2,5}x\d{2,5}", camera.video_size
        ):
            sub.problem("video_size", "expected WIDTHxHEIGHT, such as '1280x720'")
        if camera.rtsp_client == "builtin" and camera.extra_options:
            sub.problem(
                "rtsp_client",
                "the built-in RTSP client takes no FFmpeg [options]: remove them, or set "
                'rtsp_client = "pyav"',
            )
        if camera.rtsp_client != "auto" and camera.source != "rtsp":
            sub.problem("rtsp_client", f"only RTSP cameras have one (source is {camera.source!r})")
        if camera.reconnect_min > camera.reconnect_max:
            sub.problem("reconnect_min", "must not exceed reconnect_max")
        sink = sinks.get(camera.sink) if isinstance(camera.sink, str) else None
        if sink is None:
            sub.problem("sink", f"no sink named {camera.sink!r} in [sinks]")
        elif sink.max_record_bytes < MIN_VIDEO_RECORD_BYTES:
            sub.problem(
                "sink",
                f"sink {camera.sink!r} takes records of at most {sink.max_record_bytes} bytes; "
                f"a fragment of video needs more: set its max_record_bytes to at least 4MiB",
            )
        elif sink.type == "kvs" and any(c.sink == camera.sink for c in cameras.values()):
            sub.problem(
                "sink",
                f"sink {camera.sink!r} already takes another camera; a Kinesis Video stream "
                "takes one camera (one track, one timeline): give each camera its own sink",
            )
        cameras[name] = camera
        sub.finish()
    return cameras


def _read_agent(section: _Section) -> AgentConfig:
    agent = AgentConfig(
        device_name=section.string("device_name", socket.gethostname()),
        state_dir=section.path_value("state_dir", Path(DEFAULT_STATE_DIR)),
        log_level=section.choice("log_level", ("debug", "info", "warning", "error"), "info"),
        status_interval=section.duration("status_interval", 2.0),
    )
    if not 0.1 <= agent.status_interval <= 3600:
        section.problem("status_interval", "must be between 100ms and 1h")
    section.finish()
    return agent


def _read_spool(section: _Section, agent: AgentConfig) -> SpoolConfig:
    spool = SpoolConfig(
        path=section.path_value("path", agent.state_dir / "spool.db"),
        durability=section.choice("durability", ("full", "normal"), "full"),
        max_bytes=section.size("max_bytes", 1024**3, optional=True),
        max_age=section.duration("max_age", 7 * 86400.0, optional=True),
        commit_max_records=section.integer("commit_max_records", 1000, low=1, high=100_000),
        commit_linger=section.duration("commit_linger", 0.0),
        integrity_check=section.choice("integrity_check", ("quick", "full", "off"), "quick"),
    )
    if spool.commit_linger > 1.0:
        section.problem("commit_linger", "must be at most 1s: longer delays stall MQTT acks")
    section.finish()
    return spool


def _read_sinks(section: _Section | None) -> dict[str, SinkConfig]:
    if section is None:
        return {}
    sinks: dict[str, SinkConfig] = {}
    for name in list(section.table):
        sub = section.subtable(name)
        assert sub is not None
        if not _SINK_NAME.match(name):
            sub.problem("", "sink names use letters, digits, '_', '.', '-' (at most 64)")
        sink_type = sub.choice("type", tuple(DEFAULT_MAX_RECORD_BYTES), _MISSING)
        default_record_bytes = DEFAULT_MAX_RECORD_BYTES.get(str(sink_type), 1024 * 1024)
        sink = SinkConfig(
            name=name,
            type=sink_type,
            max_bytes=sub.size("max_bytes", None, optional=True),
            max_age=sub.duration("max_age", None, optional=True),
            overflow=sub.choice("overflow", ("drop_oldest", "reject_new"), "drop_oldest"),
            max_record_bytes=sub.size("max_record_bytes", default_record_bytes),
            upload=_read_upload_share(sub, DEFAULT_PRIORITY.get(str(sink_type), 0)),
        )
        if sink_type == "kinesis":
            sink = _read_kinesis(sub, sink)
        elif sink_type == "firehose":
            sink = _read_firehose(sub, sink)
        elif sink_type == "kvs":
            sink = _read_kvs(sub, sink)
        live_first = sink.kvs is not None and sink.kvs.replay == "live-first"
        if not live_first and any(w.traffic == "backlog" for w in sink.upload.schedule):
            sub.problem(
                "schedule",
                'traffic = "backlog" is for kvs sinks with replay = "live-first"'
                " (other sinks have no live traffic apart from their backlog)",
            )
        sinks[name] = sink
        sub.finish()
    return sinks


_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")


def _read_upload_share(section: _Section, default_priority: int) -> ShareConfig:
    share = ShareConfig(
        priority=section.integer("priority", default_priority, low=0, high=100),
        max_rate=section.rate("max_rate", None),
        schedule=tuple(_read_window(sub) for sub in section.table_list("schedule")),
    )
    if share.max_rate is not None and share.max_rate < 1000 / 8:
        section.problem("max_rate", "must be at least 1kbit/s (or off)")
    return share


def _read_window(section: _Section) -> ScheduleWindow:
    days = section.string_list("days", WEEKDAYS)
    window = ScheduleWindow(
        start=section.string("from"),
        end=section.string("to"),
        action=section.choice("action", ("allow", "pause", "cap"), _MISSING),
        max_rate=section.rate("max_rate", None),
        days=frozenset(WEEKDAYS.index(day) for day in days if day in WEEKDAYS),
        traffic=section.choice("traffic", ("all", "backlog"), "all"),
    )
    for key, clock in (("from", window.start), ("to", window.end)):
        if not isinstance(clock, str) or not _CLOCK.match(clock):
            section.problem(key, f"expected a local time 'HH:MM', got {clock!r}")
    if any(day not in WEEKDAYS for day in days):
        section.problem("days", f"days are {', '.join(WEEKDAYS)}")
    if window.action == "cap" and not window.max_rate:
        section.problem("max_rate", "a capping window needs max_rate")
    if window.action != "cap" and window.max_rate is not None:
        section.problem("max_rate", 'only a window with action = "cap" takes max_rate')
    section.finish()
    return window


def _read_aws(section: _Section) -> AwsEndpoint:
    aws = AwsEndpoint(
        region=section.string("region", None),
        endpoint_url=section.string("endpoint_url", None),
        profile=section.string("profile", None),
        connect_timeout=section.duration("connect_timeout", 5.0),
        request_timeout=section.duration("request_timeout", 30.0),
    )
    if aws.region is None and not (
        os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    ):
        section.problem("region", "is required (or set AWS_REGION in the environment)")
    if aws.endpoint_url is not None and not re.match(r"^https?://[^/]+", aws.endpoint_url):
        section.problem("endpoint_url", "must be an http:// or https:// URL")
    for name in ("connect_timeout", "request_timeout"):
        if not 0.1 <= getattr(aws, name) <= 600:
            section.problem(name, "must be between 100ms and 10m")
    return aws


def _read_delivery(section: _Section, sink: SinkConfig, limit: int) -> DeliveryConfig:
    default_request = DEFAULT_MAX_REQUEST_BYTES[sink.type]
    delivery = DeliveryConfig(
        max_request_records=section.integer(
            "max_request_records", MAX_REQUEST_RECORDS, low=1, high=MAX_REQUEST_RECORDS
        ),
        max_request_bytes=section.size("max_request_bytes", default_request),
        retry_min=section.duration("retry_min", 0.1),
        retry_max=section.duration("retry_max", 30.0),
        pause_probe=section.duration("pause_probe", 60.0),
        linger=section.duration("linger", 0.5),
    )
    if not 1 <= delivery.max_request_bytes <= limit:
        section.problem("max_request_bytes", f"must be between 1 byte and {limit} bytes")
    if not 1 <= sink.max_record_bytes <= min(limit, delivery.max_request_bytes):
        section.problem("max_record_bytes", "must be at least 1 byte and at most max_request_bytes")
    if not 0.001 <= delivery.retry_min <= delivery.retry_max <= 3600:
        section.problem("retry_max", "needs 1ms <= retry_min <= retry_max <= 1h")
    if not 1 <= delivery.pause_probe <= 86400:
        section.problem("pause_probe", "must be between 1s and 1d")
    if not 0 <= delivery.linger <= 60:
        section.problem("linger", "must be between 0s and 1m")
    return delivery


_HASH_KEY = re.compile(r"^(0|[1-9]\d{0,38})$")


def _read_kinesis(section: _Section, sink: SinkConfig) -> SinkConfig:
    options = KinesisOptions(
        stream=section.string("stream"),
        aggregate=section.boolean("aggregate", False),
        aggregate_max_bytes=section.size("aggregate_max_bytes", min(51_200, sink.max_record_bytes)),
        ordered=section.boolean("ordered", False),
        explicit_hash_key=section.string("explicit_hash_key", None),
        shard_records_per_second=section.integer(
            "shard_records_per_second", 1000, low=1, high=1_000_000
        ),
        shard_bytes_per_second=section.size("shard_bytes_per_second", 1024 * 1024),
        shard_refresh=section.duration("shard_refresh", 300.0),
    )
    hash_key = options.explicit_hash_key
    if hash_key is not None and (not _HASH_KEY.match(hash_key) or int(hash_key) >= 2**128):
        section.problem("explicit_hash_key", "must be a decimal integer below 2**128")
    if options.aggregate and not 1024 <= options.aggregate_max_bytes <= sink.max_record_bytes:
        section.problem("aggregate_max_bytes", "must be between 1KiB and max_record_bytes")
    _check_name(section, "stream", options.stream)
    if options.shard_bytes_per_second < 1024:
        section.problem("shard_bytes_per_second", "must be at least 1KiB")
    if not 1 <= options.shard_refresh <= 86400:
        section.problem("shard_refresh", "must be between 1s and 1d")
    delivery = _read_delivery(section, sink, MAX_KINESIS_BYTES)
    if options.aggregate and options.aggregate_max_bytes > delivery.max_request_bytes - 1024:
        section.problem("aggregate_max_bytes", "must leave at least 1KiB of max_request_bytes free")
    return replace(sink, aws=_read_aws(section), delivery=delivery, kinesis=options)


def _read_firehose(section: _Section, sink: SinkConfig) -> SinkConfig:
    options = FirehoseOptions(
        delivery_stream=section.string("delivery_stream"),
        newline=section.boolean("newline", False),
    )
    _check_name(section, "delivery_stream", options.delivery_stream)
    if sink.max_record_bytes > DEFAULT_MAX_RECORD_BYTES["firehose"]:
        section.problem("max_record_bytes", "Firehose takes records of at most 1000KiB")
    delivery = _read_delivery(section, sink, DEFAULT_MAX_REQUEST_BYTES["firehose"])
    return replace(sink, aws=_read_aws(section), delivery=delivery, firehose=options)


def _read_kvs(section: _Section, sink: SinkConfig) -> SinkConfig:
    options = KvsOptions(
        stream=section.string("stream"),
        ack_on=section.choice("ack_on", ("persisted", "received"), "persisted"),
        replay=section.choice("replay", REPLAY_ORDERS, "oldest-first"),
        max_in_flight=section.integer("max_in_flight", 10, low=1, high=100),
        fragments_per_second=float(section.integer("fragments_per_second", 5, low=1, high=5)),
        connection_max_age=section.duration("connection_max_age", 40 * 60.0),
        ack_timeout=section.duration("ack_timeout", 30.0),
        retry_min=section.duration("retry_min", 1.0),
        retry_max=section.duration("retry_max", 60.0),
        pause_probe=section.duration("pause_probe", 60.0),
    )
    _check_name(section, "stream", options.stream)
    if not 60 <= options.connection_max_age <= 44 * 60:
        section.problem(
            "connection_max_age", "must be between 1m and 44m (the service ends at 45m)"
        )
    if sink.max_record_bytes > 50 * 1000 * 1000:
        section.problem("max_record_bytes", "Kinesis Video takes fragments of at most 50MB")
    if options.retry_min > options.retry_max:
        section.problem("retry_min", "must not exceed retry_max")
    return replace(sink, aws=_read_aws(section), kvs=options)


_STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")


def _check_name(section: _Section, key: str, name: object) -> None:
    if isinstance(name, str) and not _STREAM_NAME.match(name):
        section.problem(
            key, f"{name!r} is not a stream name (1-128 of a-z A-Z 0-9 _ . -; not an ARN)"
        )


def _read_uplink(section: _Section | None) -> BudgetConfig:
    if section is None:
        return BudgetConfig()
    uplink = BudgetConfig(
        max_rate=section.rate("max_rate", None),
        burst=section.size("burst", 256 * 1024),
    )
    if uplink.max_rate is not None and uplink.max_rate < 1000 / 8:
        section.problem("max_rate", "must be at least 1kbit/s (or off)")
    if uplink.burst < 1024:
        section.problem("burst", "must be at least 1KiB")
    section.finish()
    return uplink


def _read_mqtt(
    section: _Section, agent: AgentConfig, sinks: Mapping[str, SinkConfig]
) -> MqttConfig:
    tls_section = section.subtable("tls")
    tls = None
    if tls_section is not None:
        tls = TlsConfig(
            ca_file=tls_section.path_value("ca_file", None),
            cert_file=tls_section.path_value("cert_file", None),
            key_file=tls_section.path_value("key_file", None),
            insecure=tls_section.boolean("insecure", False),
        )
        if (tls.cert_file is None) != (tls.key_file is None):
            tls_section.problem("key_file", "cert_file and key_file go together")
        _check_tls_files(tls_section, tls)
        tls_section.finish()
    subscriptions = tuple(
        _read_subscription(sub, agent, sinks) for sub in section.table_list("subscriptions")
    )
    mqtt = MqttConfig(
        host=section.string("host", "127.0.0.1"),
        port=section.integer("port", 8883 if tls else 1883, low=1, high=65535),
        client_id=section.string("client_id", f"edge-agent-{agent.device_name}"),
        protocol=section.choice("protocol", ("3.1.1", "5"), "3.1.1"),
        session_expiry=section.duration("session_expiry", 7 * 86400.0),
        keepalive=section.duration("keepalive", 30.0),
        username=section.string("username", None),
        password=section.string("password", None, allow_empty=True),
        tls=tls,
        reconnect_min=section.duration("reconnect_min", 1.0),
        reconnect_max=section.duration("reconnect_max", 60.0),
        subscriptions=subscriptions,
    )
    if not 5 <= mqtt.keepalive <= 65535:
        section.problem("keepalive", "must be between 5s and 65535s (MQTT's 16-bit field)")
    if mqtt.protocol == "5" and not 1 <= mqtt.session_expiry <= 0xFFFFFFFF:
        section.problem(
            "session_expiry",
            "must be between 1s and 4294967295s: with 0 the broker drops the session, and "
            "the messages queued for it, whenever the agent disconnects",
        )
    if mqtt.reconnect_min <= 0 or mqtt.reconnect_max < mqtt.reconnect_min:
        section.problem("reconnect_max", "needs 0 < reconnect_min <= reconnect_max")
    if not subscriptions:
        section.problem("subscriptions", "at least one [[mqtt.subscriptions]] is needed")
    section.finish()
    return mqtt


def _check_tls_files(section: _Section, tls: TlsConfig) -> None:
    """Load the files now, so that a bad certificate is a config error, not a crash loop."""
    missing = False
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(tls, name)
        if value is not None and not value.is_file():
            section.problem(name, f"file not found: {value}")
            missing = True
    if missing:
        return
    context = ssl.create_default_context()
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError) as err:
            section.problem("ca_file", f"not a usable CA certificate file: {err}")
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (ssl.SSLError, OSError) as err:
            section.problem("cert_file", f"certificate and key do not load together: {err}")


def _topic_filter_problem(topic: str) -> str | None:
    """Why an MQTT topic filter is invalid, or None."""
    if not topic or len(topic.encode()) > 65535 or "\0" in topic:
        return "must be 1 to 65535 bytes of UTF-8 without NUL"
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def _read_subscription(
    section: _Section, agent: AgentConfig, sinks: Mapping[str, SinkConfig]
) -> Subscription:
    topic = section.string("topic")
    if isinstance(topic, str) and (reason := _topic_filter_problem(topic)):
        section.problem("topic", f"invalid topic filter {topic!r}: {reason}")
    qos = section.integer("qos", 1, low=0, high=1)
    targets = section.string_list("sinks", ())
    template_text = section.string("partition_key", "{topic}")
    try:
        template = PartitionKeyTemplate.compile(template_text, agent.device_name)
    except ValueError as err:
        section.problem("partition_key", str(err))
        template = PartitionKeyTemplate.compile("{topic}", agent.device_name)
    if not targets:
        section.problem("sinks", "name at least one sink from [sinks]")
    for target in targets:
        if target not in sinks:
            section.problem("sinks", f"no sink named {target!r} in [sinks]")
    section.finish()
    return Subscription(topic=topic, qos=qos, sinks=targets, partition_key=template)
