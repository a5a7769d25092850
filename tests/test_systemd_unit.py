"""Checks for the deployment files: systemd/edge-agent.service and samples/mosquitto.conf.

The unit is checked with the real ``systemd-analyze verify``. On a test machine the
installed executable (/opt/edge-agent/bin/edge-agent) does not exist, and verify
reports a missing ExecStart binary as an error, so the unit is verified as a copy
whose ExecStart points at a stub executable; every other line is byte-for-byte the
shipped unit, and any diagnostic at all (including warnings such as unknown keys,
which do not change the exit status) fails the test. verify does not resolve
User=/Group=, so the missing edge-agent account needs no workaround.

The Mosquitto sample is checked by starting a real broker with it, included from
a main config shaped like Debian's /etc/mosquitto/mosquitto.conf.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.config.loading import load_config
from tests.support import terminate

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "edge-agent.service"
MOSQUITTO_SAMPLE = REPO / "samples" / "mosquitto.conf"
INSTALLED_EXECUTABLE = "/opt/edge-agent/bin/edge-agent"
SAMPLE_LISTENER = "listener 1883 127.0.0.1"
BROKER_START_DEADLINE_S = 15.0

UnitFile = dict[str, dict[str, list[str]]]


# --------------------------------------------------------------------------- helpers


def parse_unit(text: str) -> UnitFile:
    """Parse a systemd unit file into {section: {key: [values in order]}}.

    Follows systemd's syntax closely enough for our unit: '#'/';' comments, trailing
    backslash continuations, repeated keys accumulate, and an empty assignment
    resets the list (as it does for list-valued settings in systemd).
    """
    sections: UnitFile = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        values = current.setdefault(key.strip(), [])
        value = value.strip()
        if value:
            values.append(value)
        else:
            values.clear()
    return sections


def parse_mosquitto_conf(text: str) -> list[tuple[str, str]]:
    """Active (uncommented) options of a mosquitto.conf, in order, as (name, value)."""
    options: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        options.append((name, value.strip()))
    return options


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    return exe


def run_verify(analyze: str, unit: Path) -> subprocess.CompletedProcess[str]:
    # --recursive-errors=no: judge this unit only, not unrelated units on the host
    # that it pulls in (network-online.target, mosquitto.service, ...).
    return subprocess.run(
        [analyze, "--no-pager", "--recursive-errors=no", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "LC_ALL": "C"},
    )


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- unit


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    stub = tmp_path / "bin" / "edge-agent"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    assert not any(c.isspace() or c in "\"'\\" for c in str(stub)), stub

    text = UNIT.read_text()
    exec_prefix = f"ExecStart={INSTALLED_EXECUTABLE} "
    assert text.count(exec_prefix) == 1, "expected exactly one ExecStart of the venv binary"
    # Same file name, so verify sees the unit as edge-agent.service.
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(exec_prefix, f"ExecStart={stub} "))

    result = run_verify(analyze, copy)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"systemd-analyze verify failed:\n{output}"
    assert output == "", f"systemd-analyze verify reported diagnostics:\n{output}"


def test_shipped_unit_only_lacks_the_installed_executable() -> None:
    """The unmodified file: the only tolerated diagnostic is the absent venv binary."""
    analyze = systemd_analyze()
    result = run_verify(analyze, UNIT)
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    if Path(INSTALLED_EXECUTABLE).exists():
        assert result.returncode == 0, "\n".join(lines)
        assert lines == []
        return
    expected = f"Command {INSTALLED_EXECUTABLE} is not executable"
    unexpected = [ln for ln in lines if expected not in ln]
    assert unexpected == [], "unexpected diagnostics:\n" + "\n".join(unexpected)


def test_unit_settings() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]

    def one(key: str) -> str:
        values = service.get(key, [])
        assert len(values) == 1, f"{key}= should be set exactly once, got {values}"
        return values[0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("WatchdogSec")
    assert one("Restart") == "on-failure"
    assert one("RestartSec")
    assert one("ExecStart") == f"{INSTALLED_EXECUTABLE} run -c /etc/edge-agent/edge-agent.toml"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("StateDirectory") == "edge-agent"
    # The installed config puts the status file in the runtime directory, the one
    # place besides the state directory that ProtectSystem=strict leaves writable.
    assert one("RuntimeDirectory") == "edge-agent"
    assert load_config(REPO / "configs" / "edge-agent.toml").agent.status_dir == Path(
        "/run/edge-agent"
    )
    assert one("ConfigurationDirectory") == "edge-agent"
    assert one("User") == "edge-agent"
    assert one("Group") == "edge-agent"
    assert "DynamicUser" not in service
    assert one("SupplementaryGroups") == "video"
    assert one("NoNewPrivileges") == "yes"
    assert one("ProtectSystem") == "strict"
    assert one("ProtectHome") == "yes"
    assert one("PrivateTmp") == "yes"
    assert one("DevicePolicy") == "closed"
    assert one("DeviceAllow") == "char-video4linux rw"
    assert one("UMask") == "0077"
    # Empty assignments: no capabilities at all.
    assert service["CapabilityBoundingSet"] == []
    assert service["AmbientCapabilities"] == []
    # Unsafe for PyAV/FFmpeg and CPython (see the comment in the unit).
    assert "MemoryDenyWriteExecute" not in service

    # Shutdown takes up to 10 s: the stop timeout must leave room for it.
    stop = one("TimeoutStopSec")
    assert stop.endswith("s") and int(stop[:-1]) > 10

    # The device must never give up restarting for good.
    limit = unit["Unit"].get("StartLimitIntervalSec", [])
    burst = unit["Unit"].get("StartLimitBurst", [])
    assert limit == ["0"] or burst, "start rate limiting could leave the unit failed"

    # The broker is optional: ordered after it, but never required.
    assert "mosquitto.service" in unit["Unit"].get("Wants", [])
    assert "mosquitto.service" in unit["Unit"].get("After", [])
    assert "Requires" not in unit["Unit"] and "BindsTo" not in unit["Unit"]
    assert "network-online.target" in unit["Unit"].get("Wants", [])
    assert "network-online.target" in unit["Unit"].get("After", [])


# --------------------------------------------------------------------------- mosquitto


def test_mosquitto_sample_settings() -> None:
    options = parse_mosquitto_conf(MOSQUITTO_SAMPLE.read_text())
    names = [name for name, _ in options]
    values = dict(options)
    assert values["persistence"] == "true"
    assert int(values["autosave_interval"]) > 0
    assert int(values["max_queued_messages"]) >= 100_000
    assert int(values["max_queued_bytes"]) > 0
    assert int(values["max_inflight_messages"]) > 20
    assert "persistent_client_expiration" not in names
    # Debian's main mosquitto.conf already sets it; a duplicate is fatal.
    assert "persistence_location" not in names
    # Anonymous access only on loopback listeners, and per listener.
    assert values.get("per_listener_settings") == "true"
    listener: str | None = None
    for name, value in options:
        if name == "listener":
            listener = value
        elif name == "allow_anonymous" and value == "true":
            assert listener is not None, "allow_anonymous true outside a listener"
            assert listener.split()[1:] == ["127.0.0.1"], listener
    assert [v for n, v in options if n == "listener"] == [SAMPLE_LISTENER.split(" ", 1)[1]]


@dataclass
class Broker:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path

    def stop(self) -> None:
        terminate(self.process)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def sample_broker(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto running the sample as a conf.d snippet on a free loopback port."""
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if mosquitto is None:
        pytest.skip("mosquitto is not installed (Debian package: mosquitto)")

    port = free_loopback_port()
    conf_d = tmp_path / "conf.d"
    data_dir = tmp_path / "data"
    conf_d.mkdir()
    data_dir.mkdir()
    sample = MOSQUITTO_SAMPLE.read_text()
    assert sample.count(f"\n{SAMPLE_LISTENER}\n") == 1
    (conf_d / "edge-agent.conf").write_text(
        sample.replace(f"\n{SAMPLE_LISTENER}\n", f"\nlistener {port} 127.0.0.1\n")
    )
    # Shaped like Debian's /etc/mosquitto/mosquitto.conf, with temporary paths.
    # `user` = ourselves: when run as root, mosquitto would otherwise switch to the
    # mosquitto account, which cannot write to the temporary persistence dir.
    main = tmp_path / "mosquitto.conf"
    main.write_text(
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        "persistence true\n"
        f"persistence_location {data_dir}/\n"
        "log_dest stderr\n"
        f"include_dir {conf_d}\n"
    )

    log = tmp_path / "mosquitto.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [mosquitto, "-c", str(main)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    broker = Broker(process=process, port=port, data_dir=data_dir, log=log)
    try:
        yield broker
    finally:
        broker.stop()


def wait_until_listening(broker: Broker) -> None:
    deadline = time.monotonic() + BROKER_START_DEADLINE_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", broker.port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"mosquitto did not listen within the deadline:\n{broker.output()}")
        try:
            # Doubles as the pause between attempts and as exit detection.
            code = broker.process.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"mosquitto exited with {code}:\n{broker.output()}")


def mqtt_anonymous_connect(port: int) -> bytes:
    """Send an MQTT 3.1.1 CONNECT without credentials and return the CONNACK."""
    client_id = b"edge-agent-test"
    variable_header = b"\x00\x04MQTT\x04\x02\x00\x3c"  # protocol, level 4, clean, 60 s
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable_header + payload
    packet = bytes([0x10, len(body)]) + body
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(packet)
        connack = b""
        while len(connack) < 4:
            chunk = sock.recv(4 - len(connack))
            if not chunk:
                break
            connack += chunk
    return connack


def test_mosquitto_accepts_sample(sample_broker: Broker) -> None:
    wait_until_listening(sample_broker)
    assert sample_broker.process.poll() is None, sample_broker.output()

    # Anonymous access works on the loopback listener (per_listener_settings on).
    assert mqtt_anonymous_connect(sample_broker.port) == b"\x20\x02\x00\x00"
    assert sample_broker.process.poll() is None, sample_broker.output()

    output = sample_broker.output()
    assert "Error" not in output, output

    # A clean stop writes the persistence database.
    sample_broker.stop()
    assert sample_broker.process.returncode == 0, sample_broker.output()
    assert (sample_broker.data_dir / "mosquitto.db").is_file(), sample_broker.output()
