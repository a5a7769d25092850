"""Kinesis-only behaviour: order under failures, per-shard pacing, resharding, aggregation
under failures. Against the fault-injecting endpoint (no emulator throttles)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from edge_agent.records import Record
from edge_agent.sinks.shards import ShardMap
from tests.faulty_kinesis import FaultyKinesis
from tests.forwarding import Harness
from tests.kinesis_streams import StreamRecord, user_records


def make(
    endpoint: FaultyKinesis, tmp: Path, harnesses: list[Harness], **options: object
) -> Harness:
    harness = Harness(endpoint, "kinesis", tmp, **options)
    harnesses.append(harness)
    return harness


def seqs_by_key(harness: Harness) -> dict[str, list[int]]:
    records = [
        StreamRecord(r.shard_id, r.sequence_number, r.partition_key, r.data)
        for r in harness.endpoint.records(harness.target)
    ]
    by_key: dict[str, list[int]] = defaultdict(list)
    for key, data in user_records(records):
        by_key[key].append(json.loads(data)["seq"])
    return dict(by_key)


def test_ordered_mode_keeps_key_order_through_failures_and_throttling(
    endpoint: FaultyKinesis, tmp_path: Path, harnesses: list[Harness]
) -> None:
    harness = make(
        endpoint,
        tmp_path,
        harnesses,
        ordered=True,
        shards=2,
        shard_records_per_second=5000,
    )
    endpoint.fail_share = 0.25
    endpoint.enforce_shard_limits = True
    endpoint.shard_records_per_second = 1500  # lower than the agent believes: throttling
    endpoint.queue_request_errors((500, "InternalFailure"), (400, "ThrottlingException"))
    # One record per key per request (that is what keeps order): 60 keys, 60 per request.
    seqs = harness.append(3000, keys=60)
    harness.start()
    harness.wait_drained(60)
    by_key = seqs_by_key(harness)
    assert sorted(s for key_seqs in by_key.values() for s in key_seqs) == seqs
    for key, key_seqs in by_key.items():
        assert key_seqs == sorted(key_seqs), f"key {key} out of order"
    assert endpoint.records_failed > 0 and endpoint.throttled_records > 0


def test_unordered_mode_can_reorder_under_failures(
    endpoint: FaultyKinesis, tmp_path: Path, harnesses: list[Harness]
) -> None:
    """Why ordered mode exists: the same faults reorder keys when it is off."""
    harness = make(endpoint, tmp_path, harnesses, shards=1)
    endpoint.fail_share = 0.25
    seqs = harness.append(2000, keys=4)
    harness.start()
    harness.wait_drained(60)
    by_key = seqs_by_key(harness)
    assert sorted(s for key_seqs in by_key.values() for s in key_seqs) == seqs
    assert any(key_seqs != sorted(key_seqs) for key_seqs in by_key.values())


def test_aggregated_ordered_mode_survives_failures(
    endpoint: FaultyKinesis, tmp_path: Path, harnesses: list[Harness]
) -> None:
    harness = make(
        endpoint,
        tmp_path,
        harnesses,
        ordered=True,
        aggregate=True,
        aggregate_max_bytes="4KiB",
        shards=3,
    )
    endpoint.fail_share = 0.3
    seqs = harness.append(6000, keys=20)
    harness.start()
    harness.wait_drained(60)
    by_key = seqs_by_key(harness)
    assert sorted(s for key_seqs in by_key.values() for s in key_seqs) == seqs
    for key, key_seqs in by_key.items():
        assert key_seqs == sorted(key_seqs), f"key {key} out of order"
    stored = endpoint.records(harness.target)
    assert len(stored) < 6000 / 5
    assert all(len(r.data) + len(r.partition_key) <= 4096 for r in stored)


def test_pacing_stays_under_the_shard_limits(
    endpoint: FaultyKinesis, tmp_path: Path, harnesses: list[Harness]
) -> None:
    harness = make(
        endpoint,
        tmp_path,
        harnesses,
        shards=1,
        shard_records_per_second=1000,
        shard_bytes_per_second="1MiB",
    )
    endpoint.enforce_shard_limits = True
    seqs = harness.append(2500, keys=3)
    harness.start()
    harness.wait_drained(30)
    assert len(endpoint.records(harness.target)) == len(seqs)
    assert endpoint.throttled_records == 0
    assert endpoint.peak_shard_records_per_second <= 1000


def test_a_throttled_shard_is_slowed_down_without_a_retry_storm(
    endpoint: FaultyKinesis, tmp_path: Path, harnesses: list[Harness]
) -> None:
    harness = make(endpoint, tmp_path, harnesses, shards=1, shard_records_per_second=1000)
    endpoint.enforce_shard_limits = True
    endpoint.shard_records_per_second = 300  # another writer takes the rest of the shard
    seqs = harness.append(1500, keys=3)
    harness.start()
    harness.wait_drained(60)
    assert len(endpoint.records(harness.target)) == len(seqs)
    # The agent learnt the shard's real pace: far fewer failures than records.
    assert endpoint.throttled_records < len(seqs) / 2
    assert endpoint.requests < 200
    shard = harness.status["shards"]["shardId-000000000000"]
    assert shard["pace"] < 1.0 and shard["throttled"] > 0


def test_resharding_refreshes_the_shard_map(
    endpoint: FaultyKinesis, tmp_path: Path, harnesses: list[Harness]
) -> None:
    harness = make(endpoint, tmp_path, harnesses, shards=1, aggregate=True)
    harness.append(200, keys=50)
    harness.start()
    harness.wait_drained()
    endpoint.split_shard(harness.target, "shardId-000000000000")
    seqs = harness.append(2000, keys=50)
    harness.wait_drained()
    assert harness.status["open_shards"] == 2
    assert harness.status["aggregates_resent_after_resharding"] >= 1
    # Every user record reached the shard its key hashes to at least once (a consumer
    # drops user records of an aggregate that sits on another shard).
    shards = ShardMap.from_list_shards(
        harness.endpoint.client().list_shards(StreamName=harness.target)["Shards"]
    )
    on_right_shard: set[int] = set()
    for record in endpoint.records(harness.target):
        for key, data in user_records([StreamRecord(*record[:4])]):
            if record.shard_id == shards.shard_for(key):
                on_right_shard.add(json.loads(data)["seq"])
    assert set(seqs) <= on_right_shard


def test_explicit_hash_key_routes_everything_to_one_shard(
    endpoint: FaultyKinesis, tmp_path: Path, harnesses: list[Harness]
) -> None:
    harness = make(endpoint, tmp_path, harnesses, shards=4, explicit_hash_key="0")
    harness.append(300, keys=30)
    harness.start()
    harness.wait_drained()
    stored = endpoint.records(harness.target)
    assert {r.shard_id for r in stored} == {"shardId-000000000000"}
    assert {r.explicit_hash_key for r in stored} == {"0"}


def test_partition_key_counts_toward_the_record_limit(
    endpoint: FaultyKinesis, tmp_path: Path, harnesses: list[Harness]
) -> None:
    harness = make(endpoint, tmp_path, harnesses, max_record_bytes="2KiB")
    harness.spool.append([Record("out", "k" * 100, 1, b"x" * (2048 - 100))])
    harness.spool.append([Record("out", "k" * 101, 1, b"x" * (2048 - 100))])
    harness.start()
    harness.wait_drained()
    assert len(endpoint.records(harness.target)) == 1
    (dead,) = harness.spool.dead_letters()
    assert dead.partition_key == "k" * 101 and "2049 bytes with its partition key" in dead.reason
