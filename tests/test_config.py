"""Configuration: the examples load, and each kind of bad input names file, key, reason."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edge_agent.config.loading import load_config
from edge_agent.config.units import parse_duration, parse_rate, parse_size
from edge_agent.errors import ConfigError
from tests.support import REPO

MINIMAL = """
[agent]
state_dir = "{state}"
[sinks.telemetry]
type = "hold"
[mqtt]
[[mqtt.subscriptions]]
topic = "sensors/#"
sinks = ["telemetry"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text.replace("{state}", str(tmp_path / "state")))
    return path


def problems(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    for problem in caught.value.problems:
        assert problem.file == str(path)
        assert str(path) in str(problem)
    return [(problem.key, problem.reason) for problem in caught.value.problems]


@pytest.mark.parametrize(
    "name", ["edge-agent.toml", "local.toml", "minimal.toml", "analytics.toml", "events.toml"]
)
def test_shipped_example_configs_are_valid(name: str) -> None:
    config = load_config(REPO / "configs" / name)
    assert config.mqtt is not None and config.mqtt.subscriptions


def test_the_installed_config_sends_nothing_and_names_each_device_by_its_host() -> None:
    config = load_config(REPO / "configs" / "minimal.toml")
    assert not config.cameras
    assert {sink.type for sink in config.sinks.values()} == {"hold"}
    assert config.agent.device_name == socket.gethostname()
    assert config.mqtt is not None
    assert config.mqtt.client_id == f"edge-agent-{socket.gethostname()}"


def test_full_example_sets_every_section() -> None:
    config = load_config(REPO / "configs" / "edge-agent.toml")
    assert config.agent.device_name == socket.gethostname(), "each device its own name"
    assert config.mqtt is not None
    assert config.mqtt.client_id == f"edge-agent-{socket.gethostname()}"
    assert config.spool.max_bytes == 1024**3
    assert config.spool.max_age == 7 * 86400
    assert config.sinks["alarms"].overflow == "reject_new"
    assert config.sinks["telemetry"].max_bytes == 256 * 1024**2
    assert config.sinks["telemetry"].max_age is None
    assert config.mqtt is not None
    assert config.mqtt.subscriptions[1].sinks == ("alarms", "telemetry", "archive")
    telemetry = config.sinks["telemetry"]
    assert telemetry.kinesis is not None and telemetry.aws is not None
    assert (telemetry.kinesis.stream, telemetry.aws.region) == ("edge-telemetry", "eu-west-1")
    assert telemetry.kinesis.aggregate_max_bytes == 50 * 1024
    assert telemetry.delivery is not None and telemetry.delivery.max_request_bytes == 5 * 1024**2
    archive = config.sinks["archive"]
    assert archive.firehose is not None and archive.firehose.newline is True
    assert archive.max_record_bytes == 1000 * 1024
    assert config.uplink.max_rate is None


KINESIS = """
[agent]
state_dir = "{state}"
[sinks.out]
type = "kinesis"
stream = "s"
"""


def test_kinesis_and_firehose_defaults(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, KINESIS + '[sinks.fh]\ntype = "firehose"\ndelivery_stream = "d"\n')
    )
    out, fh = config.sinks["out"], config.sinks["fh"]
    assert out.kinesis is not None and out.delivery is not None
    assert out.kinesis.shard_records_per_second == 1000
    assert out.kinesis.shard_bytes_per_second == 1024 * 1024
    assert out.max_record_bytes == 1024 * 1024 and out.delivery.max_request_records == 500
    assert fh.delivery is not None and fh.delivery.max_request_bytes == 4 * 1024 * 1024
    assert fh.max_record_bytes == 1000 * 1024


@pytest.mark.parametrize(
    ("extra", "request_bytes"),
    [
        ("aggregate = true", 512 * 1024),
        ('aggregate = true\naggregate_max_bytes = "1MiB"', 4 * 1024 * 1024),
        ('aggregate = true\nmax_record_bytes = "2MiB"\naggregate_max_bytes = "2MiB"', 5 * 1024**2),
        ('aggregate = true\nmax_request_bytes = "5MiB"', 5 * 1024 * 1024),
        ('aggregate = true\nmax_record_bytes = "8MiB"', 512 * 1024),
        ("aggregate = false", 5 * 1024 * 1024),
    ],
)
def test_an_aggregating_sink_defaults_to_smaller_requests(
    tmp_path: Path, extra: str, request_bytes: int
) -> None:
    """Every user record of an aggregated request is held until it settles: 512 KiB by
    default, or four of its largest aggregates up to PutRecords' 5 MiB (a record larger
    than a request goes in a request of its own)."""
    config = load_config(write(tmp_path, KINESIS + extra + "\n"))
    delivery = config.sinks["out"].delivery
    assert delivery is not None and delivery.max_request_bytes == request_bytes


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ("max_request_records = 501", "sinks.out.max_request_records", "between 1 and 500"),
        ('max_request_bytes = "11MiB"', "sinks.out.max_request_bytes", "10485760 bytes"),
        ('max_record_bytes = "11MiB"', "sinks.out.max_record_bytes", "10485760 bytes"),
        ('explicit_hash_key = "12a"', "sinks.out.explicit_hash_key", "decimal integer"),
        (
            'aggregate = true\naggregate_max_bytes = "2MiB"',
            "sinks.out.aggregate_max_bytes",
            "max_record_bytes",
        ),
        ('retry_min = "1m"\nretry_max = "1s"', "sinks.out.retry_max", "retry_min <= retry_max"),
        ('endpoint_url = "localhost:4567"', "sinks.out.endpoint_url", "http://"),
        ('request_timeout = "0s"', "sinks.out.request_timeout", "between"),
        ("shard_bytes_per_second = 10", "sinks.out.shard_bytes_per_second", "at least"),
        ('ordered = "yes"', "sinks.out.ordered", "true or false"),
        ("newline = true", "sinks.out.newline", "unknown key"),
    ],
)
def test_bad_sink_settings_name_key_and_reason(
    tmp_path: Path, extra: str, key: str, reason: str
) -> None:
    document = (
        KINESIS.replace('stream = "s"', extra)
        if extra.startswith("stream =")
        else KINESIS + extra + "\n"
    )
    found = problems(tmp_path, document)
    assert any(k == key and reason in r for k, r in found), found


def test_region_is_required_unless_the_environment_sets_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    assert ("sinks.out.region", "is required (or set AWS_REGION in the environment)") in (
        problems(tmp_path, KINESIS)
    )
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert load_config(write(tmp_path, KINESIS)).sinks["out"].aws is not None


def test_firehose_records_are_at_most_1000_kib(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[agent]\nstate_dir = "{state}"\n[sinks.fh]\ntype = "firehose"\n'
        'delivery_stream = "d"\nmax_record_bytes = "2MiB"\n',
    )
    assert ("sinks.fh.max_record_bytes", "Firehose takes records of at most 1000KiB") in found


def test_stream_name_is_required_and_uplink_is_checked(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[agent]\nstate_dir = "{state}"\n[sinks.out]\ntype = "kinesis"\n'
        '[uplink]\nmax_rate = "100bit/s"\n',
    )
    assert ("sinks.out.stream", "is required") in found
    assert any(k == "uplink.max_rate" and "at least" in r for k, r in found), found


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.spool.path == tmp_path / "state" / "spool.db"
    assert config.spool.durability == "full"
    assert config.mqtt is not None
    assert config.mqtt.port == 1883
    assert config.mqtt.subscriptions[0].qos == 1
    assert config.mqtt.client_id.startswith("edge-agent-")


def test_unknown_key_is_an_error_naming_its_path(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL + "qoss = 1\n")
    assert found == [("mqtt.subscriptions[0].qoss", 'unknown key (did you mean "qos"?)')]
    found = problems(tmp_path, MINIMAL + "[spool]\nmax_byte = 5\n")
    assert ("spool.max_byte", 'unknown key (did you mean "max_bytes"?)') in found
    found = problems(tmp_path, MINIMAL + "[spool]\nturbo = true\n[agnt]\n")
    assert ("spool.turbo", "unknown key") in found  # nothing close: no guess
    assert ("agnt", 'unknown key (did you mean "agent"?)') in found


def test_a_mistyped_choice_suggests_the_closest_value(tmp_path: Path) -> None:
    found = dict(problems(tmp_path, MINIMAL + '[spool]\ndurability = "ful"\n'))
    assert found["spool.durability"] == (
        "must be one of full, normal; got 'ful' (did you mean \"full\"?)"
    )


def test_a_mistyped_sink_type_is_one_problem_not_one_per_key(tmp_path: Path) -> None:
    sink = (
        '[sinks.telemetry]\ntype = "kinesiss"\nstream = "s"\nregion = "us-east-1"\n'
        'aggregate = true\nmax_request_records = 100\nmax_bytes = "1MiB"\nstreem = "s"\n'
    )
    found = problems(tmp_path, MINIMAL.replace('[sinks.telemetry]\ntype = "hold"\n', sink))
    assert found == [
        (
            "sinks.telemetry.type",
            "must be one of hold, kinesis, firehose, kvs, s3; got 'kinesiss' "
            '(did you mean "kinesis"?)',
        ),
        # A key of no type at all is still unknown.
        ("sinks.telemetry.streem", 'unknown key (did you mean "stream"?)'),
    ]
    missing = MINIMAL.replace('type = "hold"', 'stream = "s"\nshard_refresh = "1m"')
    assert problems(tmp_path, missing) == [("sinks.telemetry.type", "is required")]


def test_bad_values_name_key_and_reason(tmp_path: Path) -> None:
    text = MINIMAL.replace('topic = "sensors/#"', 'topic = "sensors/#"\nqos = 2') + (
        '[spool]\nmax_bytes = "lots"\nmax_age = "forever"\ndurability = "maybe"\n'
    )
    found = dict(problems(tmp_path, text))
    assert "between 0 and 1" in found["mqtt.subscriptions[0].qos"]
    assert "size" in found["spool.max_bytes"] and "'lots'" in found["spool.max_bytes"]
    assert "duration" in found["spool.max_age"]
    assert "full, normal" in found["spool.durability"]


def test_wrong_types_are_reported(tmp_path: Path) -> None:
    text = MINIMAL.replace("[mqtt]", '[mqtt]\nport = "mqtt"\nkeepalive = true')
    found = dict(problems(tmp_path, text))
    assert "integer" in found["mqtt.port"]
    assert "duration" in found["mqtt.keepalive"]


def test_subscription_must_name_a_known_sink(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL.replace('["telemetry"]', '["telemetri"]'))
    assert found == [("mqtt.subscriptions[0].sinks", "no sink named 'telemetri' in [sinks]")]


def test_missing_required_keys(tmp_path: Path) -> None:
    found = dict(
        problems(tmp_path, MINIMAL.replace('type = "hold"', "").replace('topic = "sensors/#"', ""))
    )
    assert found["sinks.telemetry.type"] == "is required"
    assert found["mqtt.subscriptions[0].topic"] == "is required"


def test_bad_partition_key_template(tmp_path: Path) -> None:
    found = dict(problems(tmp_path, MINIMAL + 'partition_key = "{nope}"\n'))
    assert "unknown placeholder {nope}" in found["mqtt.subscriptions[0].partition_key"]


def test_env_expansion_and_missing_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "s3cret")
    monkeypatch.delenv("TEST_NOT_SET", raising=False)
    ok = MINIMAL.replace(
        "[mqtt]", '[mqtt]\npassword = "${TEST_MQTT_PASSWORD}"\nport = "${TEST_PORT_UNSET:-1884}"'
    )
    config = load_config(write(tmp_path, ok))
    assert config.mqtt is not None
    assert config.mqtt.password == "s3cret"
    assert config.mqtt.port == 1884
    bad = MINIMAL.replace("[mqtt]", '[mqtt]\nusername = "${TEST_NOT_SET}"')
    found = dict(problems(tmp_path, bad))
    assert found["mqtt.username"] == "environment variable TEST_NOT_SET is not set"


def test_a_value_from_the_environment_is_named_never_shown_in_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "the-password")
    monkeypatch.setenv("TEST_PORT", "0099999")  # parsed, it reads "99999": not as set
    monkeypatch.setenv("TEST_SINK", "telemetri")
    monkeypatch.setenv("TEST_PROTOCOL", "4")
    monkeypatch.setenv("TEST_SHORT", "5")  # too short to hide from the others' problems
    text = (
        MINIMAL.replace(
            "[mqtt]",
            '[mqtt]\nport = "${TEST_MQTT_PASSWORD}"\nkeepalive = "x${TEST_PORT}"\n'
            'protocol = "${TEST_PROTOCOL}"\nreconnect_min = "${TEST_SHORT}"',
        )
        .replace('["telemetry"]', '["${TEST_SINK}"]')
        .replace('topic = "sensors/#"', 'topic = "sensors/#"\nqos = "${TEST_PORT}"')
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = {problem.key: problem.reason for problem in caught.value.problems}
    assert found["mqtt.port"] == (
        "expected an integer, got the value of ${TEST_MQTT_PASSWORD} (not shown)"
    )
    assert found["mqtt.keepalive"].endswith("got the value of x${TEST_PORT} (not shown)")
    assert found["mqtt.protocol"] == (
        "must be one of 3.1.1, 5; got the value of ${TEST_PROTOCOL} (not shown)"
    )
    assert found["mqtt.subscriptions[0].qos"] == (
        "expected integer 0-1, got the value of ${TEST_PORT} (not shown)"
    )
    # A check of its own quotes the sink's name: the name came from the environment.
    assert "${TEST_SINK}" in found["mqtt.subscriptions[0].sinks"]
    message = str(caught.value)
    for secret in ("the-password", "99999", "telemetri'"):
        assert secret not in message
    assert str(path) in message


def test_a_password_written_without_quotes_is_not_repeated(tmp_path: Path) -> None:
    found = dict(problems(tmp_path, MINIMAL.replace("[mqtt]", "[mqtt]\npassword = 73105521")))
    assert found["mqtt.password"] == "expected a string, got an integer"


def test_tls_files_must_exist(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "[[mqtt.subscriptions]]",
        '[mqtt.tls]\nca_file = "/nonexistent/ca.pem"\n[[mqtt.subscriptions]]',
    )
    found = dict(problems(tmp_path, text))
    assert found["mqtt.tls.ca_file"] == "file not found: /nonexistent/ca.pem"


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    found = problems(tmp_path, "[agent\n")
    assert found[0][0] == "" and "not valid TOML" in found[0][1]
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = MINIMAL + "bogus = 1\n[spool]\nmax_bytes = -1\nintegrity_check = 3\n"
    assert len(problems(tmp_path, text)) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512MiB", 512 * 1024**2), ("2GB", 2 * 10**9), ("4096", 4096), (10, 10), ("1.5KiB", 1536)],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2Mbit/s", 250_000.0),
        ("256kbit/s", 32_000.0),
        ("1MiB/s", 1024**2),
        ("1MB/s", 10**6),
        ("8Mb/s", 10**6),
        (100, 100.0),
    ],
)
def test_parse_rate(text: object, expected: float) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30.0), ("250ms", 0.25), ("1h30m", 5400.0), ("7d", 604800.0), (5, 5.0)],
)
def test_parse_duration(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "abc", "10 parsecs", "-5s", True, [1]])
def test_bad_units_raise_value_error(bad: object) -> None:
    for parse in (parse_size, parse_duration, parse_rate):
        with pytest.raises(ValueError):
            parse(bad)


@pytest.mark.parametrize(
    ("edit", "key", "fragment"),
    [
        (("[mqtt]", '[mqtt]\nkeepalive = "1d"'), "mqtt.keepalive", "65535"),
        (("[mqtt]", '[mqtt]\nprotocol = "5"\nsession_expiry = 0'), "mqtt.session_expiry", "drops"),
        (
            ("[mqtt]", '[mqtt]\nprotocol = "5"\nsession_expiry = "50000d"'),
            "mqtt.session_expiry",
            "4294967295",
        ),
        (('topic = "sensors/#"', 'topic = "s/#/x"'), "mqtt.subscriptions[0].topic", "'#'"),
        (('topic = "sensors/#"', 'topic = "a+"'), "mqtt.subscriptions[0].topic", "'+'"),
        (("[agent]", "[agent]\nstatus_interval = 0"), "agent.status_interval", "100ms"),
    ],
)
def test_values_that_would_fail_at_runtime_are_config_errors(
    tmp_path: Path, edit: tuple[str, str], key: str, fragment: str
) -> None:
    found = dict(problems(tmp_path, MINIMAL.replace(*edit)))
    assert fragment in found[key]


def test_tls_files_that_do_not_load_are_config_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    text = MINIMAL.replace(
        "[[mqtt.subscriptions]]", f'[mqtt.tls]\nca_file = "{garbage}"\n[[mqtt.subscriptions]]'
    )
    found = dict(problems(tmp_path, text))
    assert "not a usable CA certificate file" in found["mqtt.tls.ca_file"]


CAMERA = """
[agent]
state_dir = "{state}"
[sinks.video]
type = "hold"
max_record_bytes = "8MiB"
[cameras.door]
url = "rtsp://user:pw@10.0.0.7/stream1"
sink = "video"
"""


def test_camera_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CAMERA))
    door = config.cameras["door"]
    assert (door.source, door.sink, door.fragment_ms, door.max_fragment_ms) == (
        "rtsp",
        "video",
        2000,
        10_000,
    )
    assert (door.preset, door.bitrate, door.stall_timeout) == ("veryfast", None, 10.0)
    assert door.rtsp_client == "auto"


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        ('sink = "video"', "cameras.door.sink", "no sink named 'nowhere'"),
        ('max_record_bytes = "8MiB"', "cameras.door.sink", "at least 4MiB"),
        ('source = "rtsp"', "cameras.door.source", "one of"),
        ('fragment = "2s"', "cameras.door.fragment", "fragment <= max_fragment"),
        ('video_size = "big"', "cameras.door.video_size", "WIDTHxHEIGHT"),
        ('preset = "quick"', "cameras.door.preset", "one of"),
        ("colour = true", "cameras.door.colour", "unknown key"),
        ('rtsp_client = "gst"', "cameras.door.rtsp_client", "one of auto, builtin, pyav"),
        (
            'rtsp_client = "builtin"\n[cameras.door.options]\nrtsp_transport = "udp"',
            "cameras.door.rtsp_client",
            "takes no FFmpeg [options]",
        ),
        (
            'rtsp_client = "pyav"\nsource = "lavfi"',
            "cameras.door.rtsp_client",
            "only RTSP cameras",
        ),
    ],
)
def test_bad_camera_settings_name_key_and_reason(
    tmp_path: Path, change: str, key: str, reason: str
) -> None:
    replacements = {
        'sink = "video"': 'sink = "nowhere"',
        'max_record_bytes = "8MiB"': 'max_record_bytes = "1MiB"',
        'source = "rtsp"': 'source = "webcam"',
        'fragment = "2s"': 'fragment = "12s"',
    }
    if change in replacements:
        document = (
            CAMERA.replace(change, replacements[change])
            if change in CAMERA
            else (CAMERA + replacements[change] + "\n")
        )
    else:
        document = CAMERA + change + "\n"
    found = problems(tmp_path, document)
    assert any(k == key and reason in r for k, r in found), found


def test_a_kinesis_video_sink_takes_one_camera(tmp_path: Path) -> None:
    two = (
        KVS_SINK + '[cameras.door]\nurl = "rtsp://10.0.0.7/1"\nsink = "video"\n'
        '[cameras.yard]\nurl = "rtsp://10.0.0.8/1"\nsink = "video"\n'
    )
    found = problems(tmp_path, two)
    assert [(k, "one camera" in r) for k, r in found] == [("cameras.yard.sink", True)]


def test_camera_options_and_bitrate(tmp_path: Path) -> None:
    text = CAMERA + 'bitrate = "2Mbit/s"\nsource = "v4l2"\nvideo_size = "1280x720"\n'
    text += "[cameras.door.options]\nthread_queue_size = 512\n"
    door = load_config(write(tmp_path, text)).cameras["door"]
    assert door.bitrate == 2_000_000
    assert door.extra_options == {"thread_queue_size": "512"}


def test_kvs_sink_defaults_and_limits(tmp_path: Path) -> None:
    text = KVS_SINK
    sink = load_config(write(tmp_path, text)).sinks["video"]
    assert sink.kvs is not None
    assert (sink.kvs.stream, sink.kvs.ack_on, sink.kvs.max_in_flight) == ("cam", "auto", 10)
    assert sink.kvs.replay == "oldest-first"
    assert sink.max_record_bytes == 16 * 1024 * 1024
    found = problems(
        tmp_path, text + 'connection_max_age = "50m"\nack_on = "stored"\nreplay = "newest"\n'
    )
    keys = {key for key, _ in found}
    assert {"sinks.video.connection_max_age", "sinks.video.ack_on", "sinks.video.replay"} <= keys


KVS_SINK = """
[agent]
state_dir = "{state}"
[sinks.video]
type = "kvs"
stream = "cam"
region = "us-east-1"
"""


def test_upload_priority_cap_and_schedule(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            MINIMAL + '[sinks.video]\ntype = "kvs"\nstream = "cam"\nregion = "eu-west-1"\n'
            'max_rate = "4Mbit/s"\n'
            '[[sinks.video.schedule]]\nfrom = "00:00"\nto = "06:00"\naction = "allow"\n'
            '[[sinks.video.schedule]]\nfrom = "18:00"\nto = "22:30"\naction = "cap"\n'
            'max_rate = "1Mbit/s"\ndays = ["mon", "fri"]\n',
        )
    )
    video, telemetry = config.sinks["video"].upload, config.sinks["telemetry"].upload
    assert (telemetry.priority, video.priority) == (0, 10)  # telemetry first by default
    assert video.max_rate == 500_000
    night, evening = video.schedule
    assert (night.start_minute, night.end_minute, night.action) == (0, 360, "allow")
    assert (evening.max_rate, evening.days) == (125_000, frozenset({0, 4}))


def test_bad_schedules_name_the_window_key_and_reason(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        MINIMAL.replace('type = "hold"', 'type = "hold"\npriority = 500')
        + '[[sinks.telemetry.schedule]]\nfrom = "25:00"\nto = "06:00"\naction = "cap"\n'
        'days = ["funday"]\n',
    )
    assert any(k == "sinks.telemetry.priority" for k, _ in found), found
    assert any(k == "sinks.telemetry.schedule[0].from" and "HH:MM" in r for k, r in found), found
    assert any(k == "sinks.telemetry.schedule[0].days" for k, _ in found), found
    assert any(k == "sinks.telemetry.schedule[0].max_rate" for k, _ in found), found


def test_backlog_windows_are_for_live_first_video_sinks(tmp_path: Path) -> None:
    backlog_window = (
        '[[sinks.video.schedule]]\nfrom = "06:00"\nto = "00:00"\naction = "pause"\n'
        'traffic = "backlog"\n'
    )
    config = load_config(write(tmp_path, KVS_SINK + 'replay = "live-first"\n' + backlog_window))
    video = config.sinks["video"]
    assert video.kvs is not None and video.kvs.replay == "live-first"
    (window,) = video.upload.schedule
    assert (window.action, window.traffic) == ("pause", "backlog")
    found = problems(tmp_path, KVS_SINK + backlog_window)  # oldest-first has no live part
    assert [(k, "live-first" in r) for k, r in found] == [("sinks.video.schedule", True)]
    found = problems(tmp_path, KVS_SINK + backlog_window.replace('"backlog"', '"live"'))
    assert [k for k, _ in found] == ["sinks.video.schedule[0].traffic"]
