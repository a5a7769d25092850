"""The command line and the service contract: status, check-config, spool, sd_notify, signals."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from edge_agent.records import Record
from edge_agent.spool.caps import QueuePolicy
from edge_agent.spool.store import Spool
from tests.support import (
    REPO,
    AgentProcess,
    Mosquitto,
    cli,
    free_port,
    run_publisher,
    spool_path,
    spooled_seqs,
    start_agent,
    wait_until,
    write_config,
)


def test_check_config_ok_and_errors(tmp_path: Path) -> None:
    assert cli("check-config", "-c", str(REPO / "configs" / "edge-agent.toml")).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[spool]\nmax_bytes = "huge"\n[agnt]\n')
    result = cli("check-config", "-c", str(bad), check=False)
    assert result.returncode == 2
    assert f"{bad}: spool.max_bytes: expected a size" in result.stderr
    assert f"{bad}: agnt: unknown key" in result.stderr


def test_status_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """``edge-agent status | head``: the reader is gone before the output is written."""
    config = write_config(tmp_path, free_port())
    with Spool.open(spool_path(tmp_path)) as spool:
        spool.append([Record("telemetry", "k", 1, b"x")])
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edge_agent", "status", "-c", str(config)],
            check=False,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (3, "")  # 3: no agent runs here


def test_status_while_running_and_after_stop(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path, broker.port)
    agent = start_agent(config, agents)
    run_publisher(broker.port, 40)
    wait_until(lambda: len(spooled_seqs(spool_path(tmp_path))) == 40, what="40 messages")

    def mqtt_received_40() -> bool:
        data = json.loads(cli("status", "-c", str(config), "--json").stdout)
        return bool(data["agent"]["sources"]["mqtt"]["committed"] == 40)

    wait_until(mqtt_received_40, 10, 0.1, "status to report 40 committed")
    data = json.loads(cli("status", "-c", str(config), "--json").stdout)
    assert data["agent"]["running"] is True
    (queue,) = data["spool"]["queues"]
    assert (queue["name"], queue["pending_count"]) == ("telemetry", 40)
    assert queue["oldest_age_s"] is not None
    text = cli("status", "-c", str(config)).stdout
    assert "running (pid" in text and "telemetry" in text and "mqtt: connected" in text
    assert agent.terminate() == 0
    stopped = cli("status", "-c", str(config), check=False)
    assert stopped.returncode == 3  # LSB's "not running"; the spool is shown all the same
    assert "not running" in stopped.stdout
    assert "telemetry  40" in stopped.stdout


def test_sd_notify_ready_watchdog_stopping_and_clean_exit(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(10)
    try:
        config = write_config(tmp_path, broker.port)
        agent = AgentProcess(
            config, env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
        ).start()
        agents.append(agent)
        messages: list[str] = []
        while "READY=1" not in "\n".join(messages):
            messages.append(sock.recv(4096).decode())
        assert spool_path(tmp_path).exists(), "READY=1 only after the spool is open"
        pings = 0
        while pings < 3:
            pings += sock.recv(4096).decode() == "WATCHDOG=1"
        assert agent.process is not None
        agent.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        while (message := sock.recv(4096).decode()) != "STOPPING=1":
            assert message == "WATCHDOG=1"
        assert agent.process.wait(10) == 0
        assert time.monotonic() - started < 10
    finally:
        sock.close()


def test_sighup_rereads_config_and_keeps_running_on_errors(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path, broker.port)
    agent = start_agent(config, agents)
    assert agent.process is not None
    original = config.read_text()
    config.write_text(original.replace("[spool]\n", '[spool]\nmax_bytes = "2GiB"\n'))
    agent.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "spool caps" in agent.log_text(), 10, what="reload")
    config.write_text(original + "\nbogus = 1\n")
    agent.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "the running configuration stays" in agent.log_text(), 10, what="bad reload")
    assert agent.process.poll() is None
    assert agent.terminate() == 0


def test_sighup_changes_a_sinks_priority_cap_and_schedule_live(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    sink = (
        '[sinks.telemetry]\ntype = "kinesis"\nstream = "s"\nregion = "us-east-1"\n'
        f'endpoint_url = "http://127.0.0.1:{free_port()}"\n'
    )
    config = write_config(tmp_path, broker.port, sinks=sink)
    agent = start_agent(config, agents)
    assert agent.process is not None
    wait_until(lambda: agent.sink_status("telemetry").get("upload"), 10, what="status")
    assert agent.sink_status("telemetry")["upload"]["priority"] == 0
    window = '[[sinks.telemetry.schedule]]\nfrom = "00:00"\nto = "24:00"\naction = "pause"\n'
    config.write_text(
        config.read_text().replace(sink, sink + 'priority = 3\nmax_rate = "64kbit/s"\n' + window)
    )
    agent.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "schedule updated" in agent.log_text(), 10, what="reload")
    wait_until(
        lambda: agent.sink_status("telemetry")["upload"]["priority"] == 3, 10, what="applied"
    )
    assert agent.sink_status("telemetry")["upload"]["max_rate"] == 8000
    assert "sink telemetry restarted" not in agent.log_text()
    assert agent.terminate() == 0


def test_corrupt_spool_is_quarantined_and_intake_continues(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path, broker.port)
    path = spool_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage\xff" * 5000)
    agent = start_agent(config, agents)
    run_publisher(broker.port, 10)
    wait_until(lambda: set(spooled_seqs(path)) == set(range(10)), what="intake after quarantine")
    status = json.loads(cli("status", "-c", str(config), "--json").stdout)
    assert status["spool"]["events"][-1]["kind"] == "spool_quarantined"
    assert "moved aside" in cli("status", "-c", str(config)).stdout
    assert list(path.parent.glob("spool.db.corrupt-*"))
    assert agent.terminate() == 0


def test_spool_dead_letter_commands(tmp_path: Path) -> None:
    config = write_config(tmp_path, 1883, sinks='[sinks.telemetry]\ntype = "hold"\n')
    with Spool.open(
        spool_path(tmp_path), policies={"telemetry": QueuePolicy(max_record_bytes=4)}
    ) as spool:
        spool.append(
            [
                Record("telemetry", "k", 1, b"too long", '{"topic": "t"}'),
                Record("telemetry", "k", 2, b"\xff\xfe\x00binary"),
                Record("telemetry", "k", 3, b"ok"),
            ]
        )
    listing = cli("spool", "dead-letters", "-c", str(config)).stdout
    assert listing.count("exceeds the sink's limit of 4 bytes") == 2
    exported = [
        json.loads(line) for line in cli("spool", "export", "-c", str(config)).stdout.splitlines()
    ]
    assert exported[0]["payload"] == "too long" and exported[0]["meta"] == {"topic": "t"}
    assert "payload_base64" in exported[1]
    refused = cli("spool", "purge", "-c", str(config), check=False)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    first_id = str(exported[0]["id"])
    assert "requeued 1" in cli("spool", "requeue", "-c", str(config), "--id", first_id).stdout
    assert "purged 1" in cli("spool", "purge", "-c", str(config), "--yes").stdout
    with Spool.open(spool_path(tmp_path)) as spool:
        assert spool.pending("telemetry") == (2, 10)
        assert spool.dead_letters() == []


def test_every_command_and_option_says_what_it_is_for() -> None:
    """`edge-agent COMMAND --help` describes the command and each of its options."""
    from edge_agent.cli import _parser

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    assert sub.description, f"{path} {name}: no description"
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
                assert action.help, f"{path}: {action.option_strings or action.dest} has no help"

    walk(_parser(), "edge-agent")
    run_help = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "--help"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    assert "$EDGE_AGENT_CONFIG" in run_help
