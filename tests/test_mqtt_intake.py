"""MQTT intake against a real Mosquitto: nothing acked before commit, nothing lost."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import tracemalloc
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.loading import load_config
from edge_agent.errors import SpoolFull
from edge_agent.records import AppendResult, Record
from edge_agent.sources.mqtt import MqttSource
from edge_agent.spool.store import Spool
from tests.support import (
    AgentProcess,
    Mosquitto,
    cli,
    free_port,
    make_certificates,
    run_publisher,
    spool_path,
    spooled_count,
    spooled_seqs,
    start_agent,
    wait_until,
    write_config,
)


def wait_for_seqs(path: Path, expected: set[int], timeout: float = 60) -> None:
    wait_until(
        lambda: expected <= set(spooled_seqs(path)),
        timeout,
        0.05,
        what=f"{len(expected)} messages in the spool",
    )


def test_published_messages_land_in_the_spool_with_key_topic_and_time(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    subscriptions = (
        '[[mqtt.subscriptions]]\ntopic = "sensors/#"\nqos = 1\nsinks = ["telemetry"]\n'
        'partition_key = "{device}:{json:sensor_id}"\n'
    )
    config = write_config(tmp_path, broker.port, subscriptions=subscriptions)
    agent = start_agent(config, agents)
    run_publisher(broker.port, 300)
    path = spool_path(tmp_path)
    wait_for_seqs(path, set(range(300)))
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT partition_key, captured_at_ms, meta, payload FROM records"
    ).fetchall()
    conn.close()
    assert len(rows) == 300
    key, captured, meta, payload = rows[0]
    body = json.loads(payload)
    assert key == f"test-device:{body['sensor_id']}"
    assert json.loads(meta)["topic"] == f"sensors/{body['sensor_id']}/temperature"
    assert abs(captured / 1000 - body["ts"]) < 30
    assert agent.terminate() == 0


def test_broker_down_at_start_then_up(tmp_path: Path, agents: list[AgentProcess]) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    agent = start_agent(config, agents, connected=False)

    def reports_broker_down() -> bool:
        mqtt = agent.mqtt_status()
        return (
            bool(mqtt)
            and mqtt["state"] != "connected"
            and ("cannot reach broker" in (mqtt["last_error"] or ""))
        )

    wait_until(reports_broker_down, 20, what="status to report the broker unreachable")
    broker = Mosquitto(tmp_path / "broker", port=port).start()
    try:
        agent.wait_connected(30)
        run_publisher(port, 100)
        wait_for_seqs(spool_path(tmp_path), set(range(100)))
        assert "cannot reach broker" in agent.log_text()
    finally:
        agent.ensure_stopped()
        broker.stop()


def queue_backlog(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess], total: int
) -> tuple[Path, Path, int]:
    """Register the agent's persistent session, stop it, and let the broker queue
    ``total`` messages for it."""
    config = write_config(tmp_path, broker.port)
    first = start_agent(config, agents)
    assert first.terminate() == 0
    run_publisher(broker.port, total)
    return config, spool_path(tmp_path), total


def start_draining(config: Path, path: Path, agents: list[AgentProcess]) -> AgentProcess:
    """Start an agent on a queued backlog and return once it has stored some of it."""
    agent = start_agent(config, agents, connected=False)
    wait_until(lambda: spooled_count(path) > 0, 30, what="intake to begin")
    return agent


def test_backlog_survives_broker_restart_during_intake(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    config, path, total = queue_backlog(tmp_path, broker, agents, 6000)
    second = start_draining(config, path, agents)
    broker.restart()  # while the backlog is being delivered
    wait_for_seqs(path, set(range(total)), timeout=90)
    assert second.terminate() == 0


def test_graceful_restart_during_intake_loses_and_duplicates_nothing(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    config, path, total = queue_backlog(tmp_path, broker, agents, 6000)
    second = start_draining(config, path, agents)
    assert second.terminate(timeout=10) == 0  # SIGTERM: commit, ack, exit 0 within 10 s
    third = start_agent(config, agents, connected=False)
    wait_for_seqs(path, set(range(total)), timeout=90)
    assert third.terminate() == 0
    seqs = spooled_seqs(path)
    assert len(seqs) == total, f"{len(seqs) - total} duplicates after a clean stop"


def test_oversize_payload_goes_to_dead_letters_with_reason(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    sinks = '[sinks.telemetry]\ntype = "hold"\nmax_record_bytes = 300\n'
    config = write_config(tmp_path, broker.port, sinks=sinks)
    agent = start_agent(config, agents)
    run_publisher(broker.port, 5, extra=("--payload-size", "1000"))
    run_publisher(broker.port, 5, start_seq=5)
    path = spool_path(tmp_path)
    wait_for_seqs(path, set(range(5, 10)))
    assert agent.terminate() == 0
    result = subprocess.run(
        [*agent_cli(), "spool", "export", "-c", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    letters = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(letters) == 5
    assert all("exceeds the sink's limit of 300 bytes" in letter["reason"] for letter in letters)
    assert sorted(json.loads(letter["payload"])["seq"] for letter in letters) == [0, 1, 2, 3, 4]


def agent_cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "edge_agent"]


class RefusingSpool(Spool):
    """A real spool whose writes fail as on a full disk (SQLite's error cannot be provoked
    reliably on a shared machine, so the failure is injected here, above SQLite)."""

    refused = 0

    def append(self, records: Sequence[Record], **more: Any) -> AppendResult:
        RefusingSpool.refused += 1
        raise SpoolFull("spool append failed: database or disk is full")


def test_messages_not_committed_are_never_acked(tmp_path: Path, broker: Mosquitto) -> None:
    """While the spool refuses writes nothing is acked: the broker keeps every message,
    and a healthy agent with the same client id receives them all."""
    config_path = write_config(tmp_path, broker.port, client_id="ack-after-commit")
    config = load_config(config_path)
    assert config.mqtt is not None
    spool = RefusingSpool.open(tmp_path / "refusing.db")
    source = MqttSource(config.mqtt, spool, config.spool)
    source.start()
    try:
        wait_until(lambda: source.status.state == "connected", 20, what="connect")
        run_publisher(broker.port, 50)
        wait_until(lambda: RefusingSpool.refused >= 2, 20, what="refused commits")
        assert source.status.acked == 0
        assert "disk is full" in (source.status.last_error or "")
    finally:
        # Die without acking: cut the connection under paho, as a crash would.
        source._closing.set()
        source._client.loop_stop()
        sock = source._client.socket()
        if sock is not None:
            sock.close()
        spool.close()
    healthy = AgentProcess(config_path).start()
    try:
        wait_for_seqs(spool_path(tmp_path), set(range(50)))
        assert healthy.terminate() == 0
    finally:
        healthy.ensure_stopped()


class StalledSpool(Spool):
    """A spool whose first append waits until ``go`` is set."""

    go = threading.Event()
    stalled = threading.Event()

    def append(self, records: Sequence[Record], **more: Any) -> AppendResult:
        StalledSpool.stalled.set()
        StalledSpool.go.wait(60)
        return super().append(records, **more)


def test_a_message_waiting_for_its_commit_holds_little_memory(tmp_path: Path) -> None:
    """What waits in the inbox while the committer is busy is the message's topic,
    payload and ids, not paho's message object (which holds a lock and a condition of
    its own): a burst the committer has not caught up with costs well under a kilobyte a
    message besides its payload. Then every message is committed and acked. (The broker
    sends up to 2,000 messages ahead of their acks, as one set up for throughput does.)"""
    broker = Mosquitto(tmp_path / "broker", extra="max_inflight_messages 2000\n").start()
    config = load_config(write_config(tmp_path, broker.port, client_id="lean-inbox"))
    assert config.mqtt is not None
    spool = StalledSpool.open(tmp_path / "stalled.db")
    source = MqttSource(config.mqtt, spool, config.spool)
    source.start()
    burst = 1500
    try:
        wait_until(lambda: source.status.state == "connected", 20, what="connect")
        run_publisher(broker.port, 1)
        wait_until(StalledSpool.stalled.is_set, 20, what="the committer busy")
        tracemalloc.start()
        try:
            run_publisher(broker.port, burst, start_seq=1)
            wait_until(lambda: len(source._inbox) == burst, 30, 0.02, what="the burst received")
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        StalledSpool.go.set()
        wait_until(lambda: source.status.acked == burst + 1, 30, 0.05, what="all acked")
        assert source.status.committed == burst + 1
    finally:
        StalledSpool.go.set()
        source.stop()
        spool.close()
        broker.stop()
    assert sorted(spooled_seqs(tmp_path / "stalled.db")) == list(range(burst + 1))
    with closing(sqlite3.connect(tmp_path / "stalled.db")) as conn:
        payloads = conn.execute("SELECT sum(length(payload)) FROM records WHERE id > 1")
        (payload_bytes,) = payloads.fetchone()
    assert (held - payload_bytes) / burst < 700  # with paho's message held: about 1,800


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_tls_with_client_certificate(tmp_path: Path, protocol: str) -> None:
    certs = make_certificates(tmp_path / "certs")
    port = free_port()
    broker = Mosquitto(
        tmp_path / "broker",
        port=free_port(),
        extra=(
            f"listener {port} 127.0.0.1\n"
            f"cafile {certs['ca']}\ncertfile {certs['server']}\nkeyfile {certs['server_key']}\n"
            "require_certificate true\n"
        ),
    ).start()
    try:
        tls = (
            f'protocol = "{protocol}"\n[mqtt.tls]\nca_file = "{certs["ca"]}"\n'
            f'cert_file = "{certs["client"]}"\nkey_file = "{certs["client_key"]}"\n'
        )
        config = write_config(tmp_path, port, mqtt_extra=tls)
        agent = AgentProcess(config).start()
        try:
            agent.wait_connected()
            # Publish over the plain listener; the agent receives over TLS.
            run_publisher(broker.port, 20)
            wait_for_seqs(spool_path(tmp_path), set(range(20)))
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
    finally:
        broker.stop()


def test_username_and_password(tmp_path: Path) -> None:
    """A broker that refuses anonymous clients: the agent logs in with the configured
    credentials (the password taken from the environment), and a wrong password is
    reported in status, not crashed on."""
    directory = tmp_path / "broker"
    directory.mkdir()
    passwords = directory / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "agent", "s3cret"],
        check=True,
        capture_output=True,
    )
    passwords.chmod(0o600)
    broker = Mosquitto(
        directory, extra=f"password_file {passwords}\n", allow_anonymous=False
    ).start()
    try:
        login = 'username = "agent"\npassword = "${TEST_MQTT_PASSWORD}"\n'
        wrong = write_config(tmp_path, broker.port, mqtt_extra=login)
        agent = AgentProcess(wrong, env={"TEST_MQTT_PASSWORD": "wrong"}).start()
        try:

            def refused() -> bool:
                return "refused" in (agent.mqtt_status().get("last_error") or "")

            wait_until(refused, 20, what="the refused login to show in status")
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
        agent = AgentProcess(wrong, env={"TEST_MQTT_PASSWORD": "s3cret"}).start()
        try:
            agent.wait_connected()
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
    finally:
        broker.stop()


def test_hostile_payloads_do_not_stop_intake(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    """A lone-surrogate JSON escape and a payload nested too deep to parse, with a
    {json:...} partition key: both are stored (key escaped / topic as key) and intake
    goes on."""
    import paho.mqtt.publish as single_shot

    subscriptions = (
        '[[mqtt.subscriptions]]\ntopic = "sensors/#"\nqos = 1\nsinks = ["telemetry"]\n'
        'partition_key = "{json:sensor_id}"\n'
    )
    config = write_config(tmp_path, broker.port, subscriptions=subscriptions)
    agent = start_agent(config, agents)
    single_shot.multiple(
        [
            {"topic": "sensors/a/t", "payload": b'{"sensor_id": "\\ud800"}', "qos": 1},
            {"topic": "sensors/b/t", "payload": b"[" * 200_000, "qos": 1},
        ],
        hostname="127.0.0.1",
        port=broker.port,
    )
    run_publisher(broker.port, 20)
    path = spool_path(tmp_path)
    wait_until(lambda: spooled_count(path) == 22, 30, what="all 22 messages stored")
    conn = sqlite3.connect(path)
    keys = {row[0] for row in conn.execute("SELECT partition_key FROM records")}
    conn.close()
    assert "\\ud800" in keys and "sensors/b/t" in keys
    assert agent.mqtt_status()["state"] == "connected"
    assert agent.terminate() == 0


def lost_session_warnings(agent: AgentProcess) -> list[str]:
    return [
        line
        for line in agent.log_text().splitlines()
        if "WARNING" in line and "lost the session" in line
    ]


def reconnect_after_restart(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> AgentProcess:
    """An agent that connected, subscribed (a message arrived through its session), then
    saw the broker restart, and has connected again."""
    config = write_config(tmp_path, broker.port)
    agent = start_agent(config, agents)
    run_publisher(broker.port, 1)
    wait_until(lambda: spooled_count(spool_path(tmp_path)) == 1, 20, what="the first message")
    broker.restart()
    wait_until(lambda: agent.mqtt_status().get("connects", 0) >= 2, 30, what="the reconnect")
    return agent


def test_a_session_the_broker_lost_is_a_warning_and_counted(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=False).start()
    try:
        agent = reconnect_after_restart(tmp_path, broker, agents)
        assert agent.mqtt_status()["sessions_lost"] == 1
        [warning] = lost_session_warnings(agent)
        assert "messages it held for the agent may be gone" in warning
        status = cli("status", "-c", str(agent.config)).stdout
        assert "sessions lost 1" in status
        assert agent.terminate() == 0
    finally:
        broker.stop()


def test_a_session_the_broker_kept_across_a_restart_is_no_warning(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    agent = reconnect_after_restart(tmp_path, broker, agents)  # the broker persists sessions
    assert agent.mqtt_status()["sessions_lost"] == 0
    assert lost_session_warnings(agent) == []
    assert "(session present: True)" in agent.log_text()
    assert "sessions lost" not in cli("status", "-c", str(agent.config)).stdout
    assert agent.terminate() == 0
