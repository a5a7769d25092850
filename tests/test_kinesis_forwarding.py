"""MQTT -> agent -> Kinesis Data Streams (kinesalite), read back with GetRecords."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from edge_agent.delivery import deleter
from tests.kinesis_streams import (
    first_occurrence_order_kept,
    make_stream,
    read_stream,
    sequence_numbers_by_key,
    user_records,
)
from tests.support import (
    AgentProcess,
    Kinesalite,
    Mosquitto,
    cli,
    publish,
    run_publisher,
    spool_path,
    spooled_count,
    start_agent,
    wait_until,
    write_config,
)


def kinesis_sink(kinesalite: Kinesalite, stream: str, extra: str = "") -> str:
    return (
        f'[sinks.telemetry]\ntype = "kinesis"\nstream = "{stream}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{kinesalite.endpoint}"\nretry_max = "1s"\n{extra}\n'
    )


def subscription(key: str = "{topic[1]}") -> str:
    return (
        '[[mqtt.subscriptions]]\ntopic = "sensors/#"\nqos = 1\nsinks = ["telemetry"]\n'
        f'partition_key = "{key}"\n'
    )


def stream_seqs(client: Any, name: str) -> tuple[list[int], dict[str, list[int]]]:
    pairs = user_records(read_stream(client, name))
    by_key = sequence_numbers_by_key(pairs)
    return [seq for seqs in by_key.values() for seq in seqs], by_key


def test_telemetry_reaches_the_stream_exactly_once(
    tmp_path: Path, broker: Mosquitto, kinesalite: Kinesalite, agents: list[AgentProcess]
) -> None:
    client = kinesalite.client()
    stream = make_stream(client, 3)
    config = write_config(
        tmp_path, broker.port, sinks=kinesis_sink(kinesalite, stream), subscriptions=subscription()
    )
    agent = start_agent(config, agents)
    run_publisher(broker.port, 3000, extra=("--sensors", "7"))
    wait_until(
        lambda: agent.sink_status("telemetry").get("records_sent", 0) >= 3000, 60, 0.05, "sent"
    )
    seqs, by_key = stream_seqs(client, stream)
    assert sorted(seqs) == list(range(3000))  # unordered: two requests overlap
    assert set(by_key) == {f"s{i}" for i in range(7)}
    status = agent.sink_status("telemetry")
    assert status["state"] in ("idle", "sending")
    assert status["retries"] == 0 and status["dead_lettered"] == 0
    assert len(status["shards"]) == 3
    assert all(shard["last_sequence_number"] for shard in status["shards"].values())
    assert spooled_count(spool_path(tmp_path)) == 0
    text = cli("status", "-c", str(config)).stdout
    assert f"sink telemetry -> kinesis {stream}: " in text
    assert "sent 3000 records" in text and "shardId-000000000002: last sequence number" in text
    assert agent.terminate() == 0


def test_aggregated_records_open_with_aws_kinesis_agg(
    tmp_path: Path, broker: Mosquitto, kinesalite: Kinesalite, agents: list[AgentProcess]
) -> None:
    client = kinesalite.client()
    stream = make_stream(client, 4)
    # Published before the agent starts: a backlog, so that records really aggregate.
    config_hold = write_config(tmp_path, broker.port, subscriptions=subscription())
    holder = start_agent(config_hold, agents)
    run_publisher(broker.port, 5000, extra=("--sensors", "11"))
    wait_until(lambda: spooled_count(spool_path(tmp_path)) >= 5000, 30, 0.05, "intake")
    assert holder.terminate() == 0
    config = write_config(
        tmp_path,
        broker.port,
        sinks=kinesis_sink(kinesalite, stream, 'aggregate = true\naggregate_max_bytes = "8KiB"'),
        subscriptions=subscription(),
    )
    agent = start_agent(config, agents)
    wait_until(lambda: spooled_count(spool_path(tmp_path)) == 0, 60, 0.05, "the backlog sent")
    stored = read_stream(client, stream)
    assert len(stored) < 5000 / 10, "records were not aggregated"
    assert all(len(record.data) + len(record.partition_key) <= 8192 for record in stored)
    seqs, by_key = stream_seqs(client, stream)
    assert sorted(seqs) == list(range(5000))
    assert set(by_key) == {f"s{i}" for i in range(11)}
    # one aggregated request on the wire at a time, and no failures: order holds
    assert all(first_occurrence_order_kept(key_seqs) for key_seqs in by_key.values())
    wait_until(lambda: agent.sink_status("telemetry")["records_sent"] == 5000, 10, 0.05)
    assert agent.sink_status("telemetry")["entries_sent"] == len(stored)
    assert agent.terminate() == 0


@pytest.mark.slow
@pytest.mark.parametrize("aggregate", [False, True])
def test_sigkill_during_forwarding_loses_nothing(
    tmp_path: Path,
    broker: Mosquitto,
    kinesalite: Kinesalite,
    agents: list[AgentProcess],
    aggregate: bool,
) -> None:
    total, kills = 12_000, 4
    seed = random.randrange(1 << 32)
    chance = random.Random(seed)
    client = kinesalite.client()
    stream = make_stream(client, 2)
    extra = "ordered = true\n" + ("aggregate = true\n" if aggregate else "")
    config = write_config(
        tmp_path,
        broker.port,
        sinks=kinesis_sink(kinesalite, stream, extra),
        subscriptions=subscription(),
    )
    agent = start_agent(config, agents)
    publisher = publish(broker.port, total, extra=("--rate", "2500", "--sensors", "5"))
    try:
        for _ in range(kills):
            # Let the agent forward some more, then kill it at a random moment.
            target = len(user_records(read_stream(client, stream))) + chance.randrange(1, 2000)

            def forwarded(target: int = target) -> bool:
                delivered = len(user_records(read_stream(client, stream)))
                return delivered >= target or publisher.poll() is not None

            wait_until(forwarded, 60, 0.02, "more forwarding")
            agent.kill()
            agent = start_agent(config, agents, connected=False)
        _, err = publisher.communicate(timeout=120)
        assert publisher.returncode == 0, err.decode()
        wait_until(
            lambda: set(range(total)) <= set(stream_seqs(client, stream)[0]), 120, 0.2, "all"
        )
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait(10)
    seqs, by_key = stream_seqs(client, stream)
    duplicates = len(seqs) - total
    assert set(Counter(seqs)) == set(range(total)), f"seed {seed}: lost records"
    # At each kill at most the request in flight and the accepted batches waiting to be
    # deleted (deleter.BACKLOG) were sent but still in the spool.
    per_request = 500 if not aggregate else 6 * 1024 * 1024 // 100
    in_flight = (1 + deleter.BACKLOG) * per_request
    assert duplicates <= kills * in_flight, f"seed {seed}: {duplicates} duplicates"
    assert all(first_occurrence_order_kept(s) for s in by_key.values()), f"seed {seed}"
    assert agent.terminate() == 0
    print(f"seed {seed}: {total} records, {kills} kills, {duplicates} duplicates")
