"""``edge-agent status``: its exit codes, a sink shown online only once the endpoint
answered, rates in the units of the config, counts with the right noun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.runtime_status import ForwarderSnapshot
from edge_agent.status import human_rate, render_link, render_sink
from tests.kinesis_streams import make_stream
from tests.support import (
    AgentProcess,
    Kinesalite,
    Mosquitto,
    cli,
    run_publisher,
    spool_path,
    start_agent,
    wait_until,
    write_config,
)
from tests.test_kinesis_forwarding import kinesis_sink, subscription


def test_a_sink_is_online_only_once_a_request_went_through(
    tmp_path: Path, broker: Mosquitto, kinesalite: Kinesalite, agents: list[AgentProcess]
) -> None:
    stream = make_stream(kinesalite.client(), 1)
    sink = kinesis_sink(kinesalite, stream, 'max_rate = "2Mbit/s"')
    config = write_config(tmp_path, broker.port, sinks=sink, subscriptions=subscription())
    agent = start_agent(config, agents)
    wait_until(lambda: agent.sink_status("telemetry").get("state") == "idle", 20, 0.05, "idle")

    before = cli("status", "-c", str(config))  # exit 0: the agent runs
    assert agent.sink_status("telemetry")["online"] is None
    assert f"sink telemetry -> kinesis {stream}: idle (not connected yet" in before.stdout
    assert "  no request answered yet; upload priority 0, cap 2 Mbit/s; no backlog" in (
        before.stdout
    )
    assert "online since" not in before.stdout

    run_publisher(broker.port, 1)
    wait_until(
        lambda: agent.sink_status("telemetry").get("records_sent") == 1, 20, 0.05, "delivered"
    )
    wait_until(lambda: agent.sink_status("telemetry").get("state") == "idle", 20, 0.05, "idle")
    after = cli("status", "-c", str(config)).stdout
    assert agent.sink_status("telemetry")["online"] is True
    assert f"sink telemetry -> kinesis {stream}: idle since" in after
    assert "  sent 1 record (" in after and " in 1 request, " in after
    assert "  online since " in after and "not connected yet" not in after
    assert agent.terminate() == 0


def test_a_sink_without_credentials_is_not_shown_online(
    tmp_path: Path, broker: Mosquitto, kinesalite: Kinesalite, agents: list[AgentProcess]
) -> None:
    """Missing credentials fail before any request goes out: they say nothing about the
    link to the stream."""
    stream = make_stream(kinesalite.client(), 1)
    sink = kinesis_sink(kinesalite, stream)
    config = write_config(tmp_path, broker.port, sinks=sink, subscriptions=subscription())
    agent = AgentProcess(config)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        agent.env.pop(name, None)
    agents.append(agent.start())
    agent.wait_connected()
    run_publisher(broker.port, 1)
    wait_until(
        lambda: "NoCredentials" in agent.sink_status("telemetry").get("reason", ""),
        20,
        0.05,
        "the sink to report its missing credentials",
    )
    assert agent.sink_status("telemetry")["online"] is not True
    text = cli("status", "-c", str(config)).stdout
    assert "NoCredentials" in text and "online since" not in text
    assert agent.terminate() == 0


def test_exit_codes_running_stopped_never_started_and_unreadable(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path, broker.port)
    never_started = cli("status", "-c", str(config), check=False)
    assert never_started.returncode == 3  # not running; no spool yet is no read failure
    assert "not running" in never_started.stdout

    agent = start_agent(config, agents)
    assert cli("status", "-c", str(config), check=False).returncode == 0
    agent.kill()  # a dead process: its last status file stays behind, fresh
    dead = cli("status", "-c", str(config), "--json", check=False)
    assert dead.returncode == 3
    assert json.loads(dead.stdout)["agent"]["running"] is False

    for suffix in ("-wal", "-shm"):
        Path(f"{spool_path(tmp_path)}{suffix}").unlink(missing_ok=True)
    spool_path(tmp_path).write_bytes(b"not a database" * 400)
    unreadable = cli("status", "-c", str(config), check=False)
    assert unreadable.returncode == 1
    assert "not running" in unreadable.stdout and "not a database" in unreadable.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nbogus = 1\n")
    assert cli("status", "-c", str(bad), check=False).returncode == 2


@pytest.mark.parametrize(
    ("bytes_per_s", "text"),
    [
        (0, "0 bit/s"),
        (100, "800 bit/s"),
        (250_000, "2 Mbit/s"),
        (30_517.578125, "244 kbit/s"),  # 2 Mbit/s written as "238.4KiB/s"
        (124_995, "1 Mbit/s"),  # 999.96 kbit/s, rounded to three digits
        (1_500_000_000 / 8, "1.5 Gbit/s"),
    ],
)
def test_rates_show_in_bits_per_second_as_the_config_gives_them(
    bytes_per_s: float, text: str
) -> None:
    assert human_rate(bytes_per_s) == text


def _forwarder(**changes: object) -> ForwarderSnapshot:
    snapshot: ForwarderSnapshot = {
        "type": "kinesis",
        "target": "s",
        "state": "idle",
        "reason": "",
        "since": 0.0,
        "requests": 1,
        "records_sent": 1,
        "entries_sent": 1,
        "bytes_sent": 10,
        "retries": 1,
        "request_errors": 0,
        "dead_lettered": 0,
        "last_error": "",
        "last_error_at": None,
        "records_per_s": 1.0,
        "bytes_per_s": 250_000.0,
        "in_window": 0,
        "online": True,
        "link_since": None,
        "upload": {
            "priority": 0,
            "max_rate": 125_000.0,
            "scheduled": "",
            "paused": False,
            "admitted_bytes": 0,
        },
    }
    snapshot.update(changes)  # type: ignore[typeddict-item]
    return snapshot


def test_one_of_a_thing_is_singular_and_rates_are_in_bits() -> None:
    lines = render_sink("t", _forwarder())
    assert (
        "  sent 1 record (10 B) in 1 request, now 1 records/s (2 Mbit/s); retries 1, " in (lines[1])
    )
    backlog = {
        "name": "t",
        "pending_count": 1,
        "pending_bytes": 125_000,
        "oldest_age_s": 3.0,
    }
    link = render_link(_forwarder(), backlog, 62_500.0)  # type: ignore[arg-type]
    assert link == (
        "  online; upload priority 0, cap 1 Mbit/s; backlog 1 record (122.1 KiB), "
        "oldest 3s; drains in ~2s at the 500 kbit/s budget"
    )
    waiting = render_link(_forwarder(online=None), backlog, None)  # type: ignore[arg-type]
    assert waiting.startswith("  no request answered yet; ")
    assert waiting.endswith("; drains once connected")
