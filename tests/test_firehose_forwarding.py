"""MQTT -> agent -> Firehose (moto server) -> S3, read back from the bucket."""

from __future__ import annotations

import json
from pathlib import Path

from tests.moto_server import MotoServer, delivered_objects, make_firehose_to_s3
from tests.support import (
    AgentProcess,
    Mosquitto,
    cli,
    run_publisher,
    spool_path,
    spooled_count,
    start_agent,
    wait_until,
    write_config,
)


def firehose_sink(moto: MotoServer, stream: str, extra: str = "") -> str:
    return (
        f'[sinks.archive]\ntype = "firehose"\ndelivery_stream = "{stream}"\n'
        f'region = "us-east-1"\nendpoint_url = "{moto.endpoint}"\n{extra}\n'
    )


SUBSCRIPTION = '[[mqtt.subscriptions]]\ntopic = "sensors/#"\nqos = 1\nsinks = ["archive"]\n'


def test_telemetry_lands_in_s3_as_newline_delimited_json(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, agents: list[AgentProcess]
) -> None:
    bucket = make_firehose_to_s3(moto, "edge-archive")
    config = write_config(
        tmp_path,
        broker.port,
        sinks=firehose_sink(moto, "edge-archive", "newline = true"),
        subscriptions=SUBSCRIPTION,
    )
    agent = start_agent(config, agents)
    run_publisher(broker.port, 1200)
    wait_until(lambda: agent.sink_status("archive").get("records_sent", 0) >= 1200, 30, 0.05)
    objects = delivered_objects(moto, bucket)
    lines = b"".join(objects).split(b"\n")
    assert lines[-1] == b""  # every record, the last one too, ends with the delimiter
    seqs = [json.loads(line)["seq"] for line in lines[:-1]]
    assert sorted(seqs) == list(range(1200))
    # One object per PutRecordBatch: at most 500 records each.
    assert all(obj.count(b"\n") <= 500 for obj in objects)
    assert spooled_count(spool_path(tmp_path)) == 0
    status = agent.sink_status("archive")
    assert status["type"] == "firehose" and status["target"] == "edge-archive"
    assert status["dead_lettered"] == status["retries"] == 0
    assert agent.terminate() == 0


def test_a_missing_delivery_stream_pauses_until_it_exists(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, agents: list[AgentProcess]
) -> None:
    config = write_config(
        tmp_path,
        broker.port,
        sinks=firehose_sink(moto, "not-yet", 'pause_probe = "1s"'),
        subscriptions=SUBSCRIPTION,
    )
    agent = start_agent(config, agents)
    run_publisher(broker.port, 50)
    wait_until(lambda: agent.sink_status("archive").get("state") == "paused", 20, 0.05)
    assert "ResourceNotFoundException" in agent.sink_status("archive")["reason"]
    text = cli("status", "-c", str(config)).stdout
    assert "sink archive -> firehose not-yet: paused (ResourceNotFoundException" in text
    assert spooled_count(spool_path(tmp_path)) == 50
    bucket = make_firehose_to_s3(moto, "not-yet")
    wait_until(lambda: spooled_count(spool_path(tmp_path)) == 0, 20, 0.05, "delivery")
    delivered = b"".join(delivered_objects(moto, bucket))
    assert delivered.count(b'"seq"') == 50
    assert "paused" in agent.log_text()
    assert agent.terminate() == 0
