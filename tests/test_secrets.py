"""Secrets never appear. The AWS access key, secret key and session token, the MQTT
password (taken from the environment with ``${VAR}``) and the passwords in cameras' URLs
(PyAV's RTSP client and the built-in one, an IPv4 and an IPv6 host each) are put where
the agent uses them, the agent runs into errors with them (a camera that refuses the
credentials, a camera that is not there, a stream that does not exist), and then no log
line, ``edge-agent status`` (text and --json), status file or ``edge-agent
check-config`` output holds any of them.

Real parts: Mosquitto with a password file, kinesalite, gst-rtsp-server asking for
Digest credentials, the agent as a process."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.publish as single_shot
import pytest

from tests import gst_rtsp_server
from tests.gst_rtsp_server import RtspServer
from tests.kinesis_streams import make_stream
from tests.support import (
    AgentProcess,
    Kinesalite,
    Mosquitto,
    cli,
    free_port,
    password_file,
    spool_path,
    start_agent,
    wait_until,
    write_config,
)
from tests.test_camera import h264_file

MQTT_USER = "edge-agent"
#: The environment the agent runs with: every value a secret.
SECRET_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "AKIAQSECRETKEYID7XW2",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-access-key-4f9c2b7e1d",
    "AWS_SESSION_TOKEN": "aws-session-token-8e3a6c0f5b",
    "EDGE_TEST_MQTT_PASSWORD": "mqtt-password-2d7b9e4a",
}
#: Camera name -> (rtsp_client, the host's kind, the password in its URL).
CAMERAS = {
    "pyav_v4": ("pyav", "refusing", "cam-password-pyav-v4"),
    "builtin_v4": ("builtin", "refusing", "cam-password-builtin-v4"),
    "pyav_v6": ("pyav", "absent", "cam-password-pyav-v6"),
    "builtin_v6": ("builtin", "absent", "cam-password-builtin-v6"),
}
SECRETS = [*SECRET_ENVIRONMENT.values(), *(password for _, _, password in CAMERAS.values())]


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    return h264_file(tmp_path / "served.mp4", seconds=1)


def camera_tables(refusing_port: int, absent_port: int) -> str:
    """Every camera of CAMERAS: the refusing ones at gst-rtsp-server (which takes other
    credentials), the absent ones at an IPv6 loopback port nothing listens on."""
    tables = []
    for name, (client, host_kind, password) in CAMERAS.items():
        host = f"127.0.0.1:{refusing_port}" if host_kind == "refusing" else f"[::1]:{absent_port}"
        tables.append(
            f'[cameras.{name}]\nurl = "rtsp://viewer:{password}@{host}/live"\n'
            f'sink = "video"\nrtsp_client = "{client}"\nconnect_timeout = "2s"\n'
            'reconnect_min = "100ms"\nreconnect_max = "500ms"\n'
        )
    return "".join(tables)


def sink_tables(endpoint: str, stream: str) -> str:
    """A Kinesis sink whose stream exists, one whose stream does not, a sink for video."""
    return (
        f'[sinks.telemetry]\ntype = "kinesis"\nstream = "{stream}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{endpoint}"\n'
        f'[sinks.ghost]\ntype = "kinesis"\nstream = "no-such-stream"\nregion = "us-east-1"\n'
        f'endpoint_url = "{endpoint}"\n'
        '[sinks.video]\ntype = "hold"\nmax_record_bytes = "8MiB"\n'
    )


def camera_error(agent: AgentProcess, name: str) -> str:
    return str(agent.status().get("cameras", {}).get(name, {}).get("last_error", ""))


def test_no_secret_reaches_a_log_the_status_or_check_config(
    tmp_path: Path,
    kinesalite: Kinesalite,
    recording: Path,
    agents: list[AgentProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = gst_rtsp_server.available()
    if missing:
        pytest.fail(missing)
    for name, value in SECRET_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)  # the agent's and the commands' environment
    mqtt_password = SECRET_ENVIRONMENT["EDGE_TEST_MQTT_PASSWORD"]
    passwords = password_file(tmp_path / "broker", MQTT_USER, mqtt_password)
    broker = Mosquitto(
        tmp_path / "broker", extra=f"password_file {passwords}\n", allow_anonymous=False
    ).start()
    camera_auth = ("digest", "viewer", "the-password-the-camera-wants")
    client = kinesalite.client()
    try:
        with RtspServer(free_port(), {"/live": (recording, "h264")}, auth=camera_auth) as camera:
            absent_port = free_port()
            config = write_config(
                tmp_path,
                broker.port,
                sinks=sink_tables(kinesalite.endpoint, make_stream(client, 1))
                + camera_tables(camera.port, absent_port),
                subscriptions='[[mqtt.subscriptions]]\ntopic = "sensors/#"\nqos = 1\n'
                'sinks = ["telemetry", "ghost"]\n',
                mqtt_extra=f'username = "{MQTT_USER}"\npassword = "${{EDGE_TEST_MQTT_PASSWORD}}"\n',
                # At DEBUG too: the libraries that would log signed requests stay quiet.
                agent_extra='log_level = "debug"\n',
            )
            agent = start_agent(config, agents)  # connected: the password was taken
            single_shot.multiple(
                [{"topic": f"sensors/{n}/t", "payload": b'{"v": 1}', "qos": 1} for n in range(5)],
                hostname="127.0.0.1",
                port=broker.port,
                auth={"username": MQTT_USER, "password": mqtt_password},
            )
            wait_until(
                lambda: agent.sink_status("telemetry").get("records_sent", 0) >= 5,
                30,
                what="records signed with the secret keys, sent",
            )
            wait_until(
                lambda: agent.sink_status("ghost").get("last_error"), 30, what="the ghost's error"
            )
            wait_until(
                lambda: all(camera_error(agent, name) for name in CAMERAS),
                30,
                what="every camera's error",
            )
            errors = {name: camera_error(agent, name) for name in CAMERAS}
            assert "401" in errors["builtin_v4"] and "credentials" in errors["builtin_v4"]
            assert "credentials" in errors["pyav_v4"]
            assert "refused" in errors["builtin_v6"].lower()
            assert "refused" in errors["pyav_v6"].lower()

            status_text = cli("status", "-c", str(config)).stdout
            assert f"rtsp://viewer:***@[::1]:{absent_port}/live" in status_text
            outputs = {
                "status": status_text,
                "status --json": cli("status", "-c", str(config), "--json").stdout,
                "the status file": Path(f"{spool_path(tmp_path)}.status.json").read_text(),
                "check-config": check_config(config),
                "check-config of a broken config": check_config(broken_copy(config, broker.port)),
            }
            assert (
                "${EDGE_TEST_MQTT_PASSWORD} (not shown)"
                in outputs["check-config of a broken config"]
            )
            assert agent.terminate() == 0
            outputs["the log"] = agent.log_text()
            assert "refused the credentials" in outputs["the log"]
    finally:
        client.close()
        broker.stop()
    leaks = [
        f"{secret!r} in {where}"
        for where, text in outputs.items()
        for secret in SECRETS
        if secret in text
    ]
    assert leaks == []


def check_config(config: Path) -> str:
    done = cli("check-config", "-c", str(config), check=False)
    return done.stdout + done.stderr


def broken_copy(config: Path, port: int) -> Path:
    """The config with the MQTT port taken from the password's variable: a problem."""
    broken = config.with_name("broken.toml")
    text = config.read_text()
    assert f"port = {port}\n" in text
    broken.write_text(text.replace(f"port = {port}\n", 'port = "${EDGE_TEST_MQTT_PASSWORD}"\n'))
    return broken
