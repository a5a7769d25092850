"""Live reload (SIGHUP): only the parts that changed restart, nothing is lost, and what
would break a guarantee is refused."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.loading import Config, parse_config
from edge_agent.reload import plan_reload
from tests.faulty_kinesis import FaultyKinesis
from tests.support import (
    AgentProcess,
    Mosquitto,
    cli,
    free_port,
    port_open,
    publish,
    run_publisher,
    spool_path,
    spooled_seqs,
    start_agent,
    wait_until,
    write_config,
)

BASE: dict[str, Any] = {
    "spool": {"path": "/tmp/spool.db"},
    "sinks": {
        "a": {"type": "kinesis", "stream": "a", "region": "us-east-1"},
        "b": {"type": "kinesis", "stream": "b", "region": "us-east-1"},
    },
    "mqtt": {
        "host": "127.0.0.1",
        "client_id": "gw",
        "subscriptions": [{"topic": "sensors/#", "sinks": ["a", "b"]}],
    },
}


def config_with(**changes: Any) -> Config:
    """BASE with [spool] and [mqtt] keys changed, other sections replaced."""
    document = json.loads(json.dumps(BASE))
    for section, value in changes.items():
        if section in ("spool", "mqtt"):
            document[section] = {**document[section], **value}
        else:
            document[section] = value
    return parse_config(document)


def test_an_unchanged_config_changes_nothing() -> None:
    plan = plan_reload(config_with(), config_with())
    assert not plan.refused and not plan.sinks and not plan.cameras
    assert plan.mqtt == "none" and plan.summary() == "no changes"


def test_a_changed_sink_restarts_only_that_sink() -> None:
    sinks = {**BASE["sinks"], "a": {**BASE["sinks"]["a"], "max_request_records": 100}}
    plan = plan_reload(config_with(), config_with(sinks=sinks))
    assert plan.sinks.changed == ("a",) and not plan.sinks.added and not plan.sinks.removed
    assert plan.shares == () and plan.mqtt == "none"
    assert plan.summary() == "sink a restarted"


def test_a_sinks_upload_share_changes_in_place() -> None:
    sinks = {**BASE["sinks"], "b": {**BASE["sinks"]["b"], "priority": 3}}
    plan = plan_reload(config_with(), config_with(sinks=sinks))
    assert not plan.sinks and plan.shares == ("b",)


def test_added_and_removed_sinks_and_their_caps() -> None:
    sinks = {"a": BASE["sinks"]["a"], "c": {"type": "hold", "max_bytes": "1MiB"}}
    mqtt = {"subscriptions": [{"topic": "sensors/#", "sinks": ["a", "c"]}]}
    plan = plan_reload(config_with(), config_with(sinks=sinks, mqtt=mqtt))
    assert plan.sinks.added == ("c",) and plan.sinks.removed == ("b",)
    assert plan.spool_caps and plan.mqtt == "subscriptions"


def test_mqtt_options_other_than_subscriptions_reconnect() -> None:
    plan = plan_reload(config_with(), config_with(mqtt={"keepalive": "45s"}))
    assert plan.mqtt == "restart"
    plan = plan_reload(config_with(), config_with(spool={"commit_max_records": 10}))
    assert plan.mqtt == "restart", "the source reads its batch size at start"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"spool": {"path": "/tmp/other.db"}}, "spool.path changed"),
        ({"mqtt": {"host": "10.0.0.1"}}, "mqtt broker changed"),
        ({"mqtt": {"port": 1884}}, "mqtt broker changed"),
        ({"mqtt": {"client_id": "gw2"}}, "mqtt client_id changed"),
    ],
)
def test_what_would_break_a_guarantee_is_refused(changes: dict[str, Any], reason: str) -> None:
    sinks = {**BASE["sinks"], "a": {**BASE["sinks"]["a"], "max_request_records": 100}}
    plan = plan_reload(config_with(), config_with(sinks=sinks, **changes))
    assert len(plan.refused) == 1 and plan.refused[0].startswith(reason)
    assert not plan.sinks, "a refused reload applies nothing"


def test_taking_out_the_mqtt_section_is_refused() -> None:
    document = json.loads(json.dumps(BASE))
    del document["mqtt"]
    plan = plan_reload(config_with(), parse_config(document))
    assert len(plan.refused) == 1 and "[mqtt] section was removed" in plan.refused[0]


def test_a_changed_analytics_query_restarts_the_analytics_only() -> None:
    stats = {
        "stats": {
            "topics": ["sensors/#"],
            "window": "tumbling",
            "size": "1m",
            "sql": "SELECT count(*) AS n FROM input",
            "sinks": ["a"],
        }
    }
    before, after = (
        config_with(analytics=stats),
        config_with(analytics={"stats": {**stats["stats"], "size": "2m"}}),
    )
    plan = plan_reload(before, after)
    assert plan.analytics and not plan.sinks and plan.mqtt == "none"
    assert plan.summary() == "analytics"


def test_changed_credentials_restart_every_aws_sink() -> None:
    plan = plan_reload(config_with(), config_with(aws={"credentials": "default", "timeout": "20s"}))
    assert set(plan.sinks.changed) == {"a", "b"}


# ---------------------------------------------------------------------- the running agent


def kinesis_sink(name: str, endpoint: FaultyKinesis, extra: str = "") -> str:
    return (
        f'[sinks.{name}]\ntype = "kinesis"\nstream = "{name}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{endpoint.endpoint}"\nretry_min = "50ms"\nretry_max = "500ms"\n'
        f'linger = "0s"\nmax_request_records = 50\n{extra}'
    )


def seqs_in(endpoint: FaultyKinesis, stream: str) -> list[int]:
    return [json.loads(record.data)["seq"] for record in endpoint.records(stream)]


def reload(agent: AgentProcess, config: Path, text: str, outcome: str) -> dict[str, Any]:
    """Write the config, send SIGHUP, and wait for the reload's outcome in status."""
    before = agent.status().get("reload", {}).get("at")
    config.write_text(text)
    assert agent.process is not None
    agent.process.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        last = agent.status().get("reload")
        return bool(last and last["at"] != before)

    wait_until(reloaded, 15, 0.05, "the reload in status")
    last: dict[str, Any] = agent.status()["reload"]
    assert last["outcome"] == outcome, last
    return last


def test_a_sink_changed_mid_drain_restarts_alone_and_loses_nothing(
    tmp_path: Path, broker: Mosquitto, endpoint: FaultyKinesis, agents: list[AgentProcess]
) -> None:
    endpoint.create_stream("a", 1)
    endpoint.create_stream("b", 1)
    endpoint.answer_delay = 0.05  # a drain that lasts long enough to reload in the middle
    subscriptions = '[[mqtt.subscriptions]]\ntopic = "sensors/#"\nqos = 1\nsinks = ["a", "b"]\n'
    sinks = kinesis_sink("a", endpoint) + "\n" + kinesis_sink("b", endpoint)
    config = write_config(tmp_path, broker.port, sinks=sinks, subscriptions=subscriptions)
    count = 3000
    agent = start_agent(config, agents)
    agent.wait_connected()
    run_publisher(broker.port, count)
    wait_until(lambda: agent.sink_status("a").get("records_sent", 0) >= 300, 60, 0.02, "drain")
    before = agent.status()
    assert before["sinks"]["b"]["records_sent"] < count, "reloaded mid-drain"
    b_connections = set(endpoint.peers["b"])

    # Sink a comes first in the file: its retry_min changes, b's stays.
    changed = config.read_text().replace('retry_min = "50ms"', 'retry_min = "60ms"', 1)
    last = reload(agent, config, changed, "applied")
    assert last["message"] == "sink a restarted"

    def all_delivered() -> bool:
        return set(seqs_in(endpoint, "a")) == set(range(count)) and set(
            seqs_in(endpoint, "b")
        ) == set(range(count))

    wait_until(all_delivered, 120, 0.1, "every reading in both streams")
    after = agent.status()
    assert after["sinks"]["a"]["started_at"] > before["sinks"]["a"]["started_at"]
    assert after["sinks"]["b"]["started_at"] == before["sinks"]["b"]["started_at"]
    # b's connections were not touched: every request after the reload came on one of
    # the connections b had before it.
    assert endpoint.peers["b"] == b_connections
    assert after["sources"]["mqtt"]["connects"] == 1, "the broker connection was not touched"
    wait_until(lambda: cli_queue(config, "a")["pending_count"] == 0, 30, 0.1, "a's acks")
    duplicates = sum(n - 1 for n in Counter(seqs_in(endpoint, "a")).values())
    assert duplicates == cli_queue(config, "a")["resent_after_restart_count"]
    assert sum(n - 1 for n in Counter(seqs_in(endpoint, "b")).values()) == 0
    assert agent.terminate() == 0


def cli_queue(config: Path, name: str) -> dict[str, Any]:
    data = json.loads(cli("status", "-c", str(config), "--json", check=False).stdout)
    (queue,) = [queue for queue in data["spool"]["queues"] if queue["name"] == name]
    return dict(queue)


def test_a_sink_and_a_subscription_added_by_reload_take_records_at_once(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path, broker.port)
    agent = start_agent(config, agents)
    run_publisher(broker.port, 20)
    path = spool_path(tmp_path)
    wait_until(lambda: len(spooled_seqs(path)) == 20, 20, what="20 readings")
    text = config.read_text() + (
        '\n[sinks.alerts]\ntype = "hold"\nmax_bytes = "1MiB"\n'
        '[[mqtt.subscriptions]]\ntopic = "alerts/#"\nqos = 1\nsinks = ["alerts"]\n'
    )
    last = reload(agent, config, text, "applied")
    assert "sink alerts added" in last["message"] and "mqtt subscriptions" in last["message"]
    process = publish(broker.port, 5, extra=("--topic-prefix", "alerts"))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()
    wait_until(lambda: len(spooled_seqs(path, "alerts")) == 5, 20, what="5 alerts")
    run_publisher(broker.port, 10, start_seq=20)
    wait_until(lambda: len(spooled_seqs(path)) == 30, 20, what="the other readings go on")
    assert agent.mqtt_status()["connects"] == 1
    # Removed again: the broker is told, and alerts are no longer taken.
    last = reload(agent, config, config.read_text().split("\n[sinks.alerts]")[0], "applied")
    assert "sink alerts removed" in last["message"]
    process = publish(broker.port, 5, start_seq=5, extra=("--topic-prefix", "alerts"))
    process.communicate(timeout=60)
    run_publisher(broker.port, 1, start_seq=30)
    wait_until(lambda: len(spooled_seqs(path)) == 31, 20, what="a reading after the alerts")
    assert len(spooled_seqs(path, "alerts")) == 5, "the removed subscription took nothing"
    assert agent.terminate() == 0


def test_a_reload_that_would_drop_the_brokers_session_is_refused(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path, broker.port)
    agent = start_agent(config, agents)
    agent.wait_connected()
    original = config.read_text()
    last = reload(agent, config, original.replace('"edge-agent-test"', '"other-id"'), "refused")
    assert "client_id changed" in last["message"] and "restart" in last["message"]
    assert "reload refused" in agent.log_text()
    run_publisher(broker.port, 10)
    wait_until(lambda: len(spooled_seqs(spool_path(tmp_path))) == 10, 20, what="intake goes on")
    assert agent.mqtt_status()["client_id"] == "edge-agent-test"
    text = cli("status", "-c", str(config), check=False).stdout
    assert "reload" in text and "refused" in text
    last = reload(agent, config, original + "\nbogus = 1\n", "failed")
    assert "problems in" in last["message"]
    assert agent.terminate() == 0


def test_spool_caps_change_live(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path, broker.port)
    agent = start_agent(config, agents)
    agent.wait_connected()
    text = config.read_text().replace(
        '[sinks.telemetry]\ntype = "hold"\n',
        '[sinks.telemetry]\ntype = "hold"\nmax_bytes = "2KiB"\noverflow = "reject_new"\n',
    )
    last = reload(agent, config, text, "applied")
    assert last["message"] == "spool caps"
    run_publisher(broker.port, 100)
    wait_until(lambda: agent.mqtt_status().get("acked") == 100, 20, what="100 acked")
    stored = len(spooled_seqs(spool_path(tmp_path)))
    assert 0 < stored < 100, "the new cap of 2 KiB refused the rest"
    assert agent.terminate() == 0


def test_cameras_added_changed_and_removed_by_reload(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    sinks = (
        '[sinks.telemetry]\ntype = "hold"\n'
        '[sinks.video]\ntype = "hold"\nmax_record_bytes = "8MiB"\n'
        '[sinks.video2]\ntype = "hold"\nmax_record_bytes = "8MiB"\n'
    )
    config = write_config(tmp_path, broker.port, sinks=sinks)
    agent = start_agent(config, agents)
    agent.wait_connected()

    def camera(name: str, sink: str, size: str = "160x120") -> str:
        return (
            f'\n[cameras.{name}]\nsource = "lavfi"\nurl = "testsrc2=size={size}:rate=15"\n'
            f'sink = "{sink}"\nfragment = "1s"\n'
        )

    def fragments(name: str) -> int:
        return int(agent.status().get("cameras", {}).get(name, {}).get("fragments", 0))

    base = config.read_text()
    last = reload(agent, config, base + camera("one", "video") + camera("two", "video2"), "applied")
    assert last["message"] == "camera one added, camera two added"
    wait_until(lambda: fragments("one") >= 2 and fragments("two") >= 2, 30, 0.05, "fragments")
    two_started = agent.status()["cameras"]["two"]["started_at"]
    one_started = agent.status()["cameras"]["one"]["started_at"]
    last = reload(agent, config, base + camera("one", "video", "176x144"), "applied")
    assert last["message"] == "camera two removed, camera one restarted"
    cameras = agent.status()["cameras"]
    assert set(cameras) == {"one"} and cameras["one"]["started_at"] > one_started
    assert two_started
    wait_until(lambda: fragments("one") >= 2, 30, 0.05, "fragments after the restart")
    assert agent.mqtt_status()["connects"] == 1
    assert agent.terminate() == 0


def test_the_metrics_endpoint_moves_with_a_reload(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path, broker.port)
    agent = start_agent(config, agents)
    agent.wait_connected()
    port = free_port()
    base = config.read_text()
    last = reload(agent, config, base + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n', "applied")
    assert last["message"] == "metrics endpoint"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert b"edge_agent_build_info" in answer.read()
    reload(agent, config, base, "applied")
    assert not port_open(port), "the endpoint stopped with the section gone"
    assert agent.terminate() == 0
