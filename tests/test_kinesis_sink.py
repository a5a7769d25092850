"""Kinesis-only behaviour: order under failures, per-shard pacing, resharding, aggregation
under failures. Against the fault-injecting endpoint (no emulator throttles)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge_agent.delivery.forwarder import Forwarder
from edge_agent.records import Record
from edge_agent.sinks.base import Request
from edge_agent.sinks.kinesis.shards import ShardMap
from tests.faulty_kinesis import FaultyKinesis
from tests.forwarding import Harness, MakeHarness
from tests.kinesis_streams import StreamRecord, user_records
from tests.support import wait_until


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


def all_seqs(by_key: dict[str, list[int]]) -> list[int]:
    return sorted(seq for key_seqs in by_key.values() for seq in key_seqs)


def assert_each_once_in_key_order(harness: Harness, seqs: list[int]) -> None:
    by_key = seqs_by_key(harness)
    assert all_seqs(by_key) == seqs
    for key, key_seqs in by_key.items():
        assert key_seqs == sorted(key_seqs), f"key {key} out of order"


def test_ordered_mode_keeps_key_order_through_failures_and_throttling(
    kinesis: MakeHarness, endpoint: FaultyKinesis
) -> None:
    harness = kinesis(
        ordered=True,
        shards=2,
        shard_records_per_second=5000,
    )
    endpoint.fail_share = 0.25
    endpoint.enforce_shard_limits = True
    endpoint.shard_records_per_second = 100  # far lower than the agent believes: throttling
    endpoint.queue_request_errors((500, "InternalFailure"), (400, "ThrottlingException"))
    # One record per key per request (that is what keeps order): 60 keys, 60 per request.
    seqs = harness.append(600, keys=60)
    harness.start()
    harness.wait_drained(60)
    assert_each_once_in_key_order(harness, seqs)
    assert endpoint.records_failed > 0 and endpoint.throttled_records > 0


def test_ordered_requests_on_the_wire_together_never_share_a_key(
    kinesis: MakeHarness, endpoint: FaultyKinesis
) -> None:
    """Two requests in flight, ordered: a key of the first may not be in the second,
    or the second could land while the first is retried."""
    harness = kinesis(ordered=True, shards=2, max_request_records=20)
    endpoint.fail_share = 0.25
    endpoint.answer_delay = 0.02
    seqs = harness.append(1200, keys=60)
    harness.start()
    harness.wait_drained(60)
    assert_each_once_in_key_order(harness, seqs)
    assert endpoint.peak_requests_in_flight == 2
    assert endpoint.shared_key_overlaps == 0


def test_unordered_mode_can_reorder_under_failures(
    kinesis: MakeHarness, endpoint: FaultyKinesis
) -> None:
    """Why ordered mode exists: the same faults reorder keys when it is off."""
    harness = kinesis(shards=1)
    endpoint.fail_share = 0.25
    seqs = harness.append(2000, keys=4)
    harness.start()
    harness.wait_drained(60)
    by_key = seqs_by_key(harness)
    assert all_seqs(by_key) == seqs
    assert any(key_seqs != sorted(key_seqs) for key_seqs in by_key.values())


def test_aggregated_ordered_mode_survives_failures(
    kinesis: MakeHarness, endpoint: FaultyKinesis
) -> None:
    harness = kinesis(
        ordered=True,
        aggregate=True,
        aggregate_max_bytes="4KiB",
        shards=3,
    )
    endpoint.fail_share = 0.3
    seqs = harness.append(6000, keys=20)
    harness.start()
    harness.wait_drained(60)
    assert_each_once_in_key_order(harness, seqs)
    stored = endpoint.records(harness.target)
    assert len(stored) < 6000 / 5
    assert all(len(r.data) + len(r.partition_key) <= 4096 for r in stored)


def test_pacing_stays_under_the_shard_limits(kinesis: MakeHarness, endpoint: FaultyKinesis) -> None:
    harness = kinesis(
        shards=1,
        shard_records_per_second=1000,
        shard_bytes_per_second="1MiB",
    )
    endpoint.enforce_shard_limits = True
    seqs = harness.append(2500, keys=3)
    harness.start()
    harness.wait_drained(30)
    assert len(endpoint.records(harness.target)) == len(seqs)
    # The buckets keep every one-second window of *sending* under the limit; a loaded
    # machine can delay one request's arrival into the next window, hence the 2%.
    assert endpoint.throttled_records <= 0.02 * len(seqs)
    assert endpoint.peak_shard_records_per_second <= 1000 * 1.02


def test_a_throttled_shard_is_slowed_down_without_a_retry_storm(
    kinesis: MakeHarness, endpoint: FaultyKinesis
) -> None:
    harness = kinesis(shards=1, shard_records_per_second=1000)
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


def test_resharding_refreshes_the_shard_map(kinesis: MakeHarness, endpoint: FaultyKinesis) -> None:
    harness = kinesis(shards=1, aggregate=True)
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
    kinesis: MakeHarness, endpoint: FaultyKinesis
) -> None:
    harness = kinesis(shards=4, explicit_hash_key="0")
    harness.append(300, keys=30)
    harness.start()
    harness.wait_drained()
    stored = endpoint.records(harness.target)
    assert {r.shard_id for r in stored} == {"shardId-000000000000"}
    assert {r.explicit_hash_key for r in stored} == {"0"}


def test_partition_key_counts_toward_the_record_limit(
    kinesis: MakeHarness, endpoint: FaultyKinesis
) -> None:
    harness = kinesis(max_record_bytes="2KiB")
    harness.spool.append([Record("out", "k" * 100, 1, b"x" * (2048 - 100))])
    harness.spool.append([Record("out", "k" * 101, 1, b"x" * (2048 - 100))])
    harness.start()
    harness.wait_drained()
    assert len(endpoint.records(harness.target)) == 1
    (dead,) = harness.spool.dead_letters()
    assert dead.partition_key == "k" * 101 and "2049 bytes with its partition key" in dead.reason


def test_aggregates_keep_spool_order_next_to_large_plain_records(
    kinesis: MakeHarness, endpoint: FaultyKinesis
) -> None:
    harness = kinesis(
        shards=1,
        ordered=True,
        aggregate=True,
        aggregate_max_bytes="4KiB",
    )
    harness.spool.append(
        [
            Record("out", "A", 1, json.dumps({"seq": seq}).ljust(size).encode())
            for seq, size in ((0, 20), (1, 6000), (2, 20), (3, 20), (4, 9000), (5, 20))
        ]
    )
    harness.start()
    harness.wait_drained()
    assert seqs_by_key(harness) == {"A": [0, 1, 2, 3, 4, 5]}


def test_a_refused_aggregate_is_resent_as_plain_records(
    kinesis: MakeHarness, endpoint: FaultyKinesis
) -> None:
    """The stream takes 1 MiB records, the config said 2 MiB: the 2 MiB aggregates are
    refused, but each record in them is fine alone and must not be dead-lettered."""
    harness = kinesis(
        shards=1,
        aggregate=True,
        max_record_bytes="2MiB",
        aggregate_max_bytes="2MiB",
    )
    seqs = harness.append(3000, keys=3, size=1000)
    harness.start()
    harness.wait_drained(30)
    assert harness.spool.dead_letters() == []
    delivered = all_seqs(seqs_by_key(harness))
    assert delivered == seqs


def test_an_aggregated_request_on_the_wire_holds_its_bytes_once_in_its_body(
    kinesis: MakeHarness, endpoint: FaultyKinesis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregates carry the bytes: the window does not hold them a second time. And
    once the body is written, the body carries them: the aggregates are let go of."""
    launched: list[Request] = []
    launch = Forwarder._launch

    def watched(forwarder: Forwarder, request: Request) -> None:
        launched.append(request)
        launch(forwarder, request)

    monkeypatch.setattr(Forwarder, "_launch", watched)
    harness = kinesis(aggregate=True, aggregate_max_bytes="4KiB")
    endpoint.answer_delay = 0.3
    seqs = harness.append(2000, keys=7)
    forwarder = harness.start()
    window = forwarder._window
    wait_until(lambda: len(window.elided) >= 1000, 10, 0.005, "a request on the wire")
    bare = [window.records[record_id] for record_id in list(window.elided)]
    assert {record.payload for record in bare} == {b""}
    assert window.size == 2000 * 100  # still counted

    (request,) = launched
    wait_until(lambda: endpoint.requests == 1, 10, 0.005, "the request at the endpoint")
    # From the moment it left (its answer is 0.3 s away), not only once answered:
    assert len(request.entries) > 1 and {entry.data for entry in request.entries} == {b""}
    harness.wait_drained(30)
    assert all_seqs(seqs_by_key(harness)) == seqs


def test_a_refused_record_inside_an_aggregate_is_found_and_dead_lettered_alone(
    kinesis: MakeHarness, endpoint: FaultyKinesis
) -> None:
    """The service refuses the whole request for one user record in one of its
    aggregates. The aggregates went into the body and were let go of: each half of
    the request is packed again from the spool, down to the record to blame. Every
    other record arrives once, byte for byte."""
    harness = kinesis(aggregate=True, aggregate_max_bytes="4KiB", max_request_bytes="64KiB")
    seqs = harness.append(400, keys=7)
    harness.spool.append([Record("out", "k1", 1, b'{"seq": -1, "x": "POISON"}')])
    seqs += harness.append(399, keys=7)
    endpoint.reject_data_containing = b"POISON"
    harness.start()
    harness.wait_drained(30)
    stored = [
        StreamRecord(r.shard_id, r.sequence_number, r.partition_key, r.data)
        for r in endpoint.records(harness.target)
    ]
    delivered = sorted(json.loads(data)["seq"] for _, data in user_records(stored))
    assert delivered == seqs
    (dead,) = harness.spool.dead_letters()
    assert b"POISON" in dead.payload and "InvalidArgumentException" in dead.reason
    assert harness.forwarder is not None and harness.forwarder._window.elided == {}


def test_aggregates_failed_as_a_whole_are_packed_again_from_the_spool(
    kinesis: MakeHarness, endpoint: FaultyKinesis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the wire, an aggregate's records are held without their payloads (the
    aggregate carries the bytes). A request that fails as a whole is packed again from
    payloads read back from the spool: every record arrives once, byte for byte."""
    harness = kinesis(
        aggregate=True,
        aggregate_max_bytes="4KiB",
        max_record_bytes="16KiB",
        max_request_bytes="64KiB",
    )
    read_again: list[int] = []
    payloads = harness.spool.payloads

    def counted(queue: str, ids: Sequence[int]) -> dict[int, bytes]:
        found = payloads(queue, ids)
        read_again.append(len(found))
        return found

    monkeypatch.setattr(harness.spool, "payloads", counted)
    endpoint.queue_request_errors(*[(500, "InternalFailure")] * 3, (503, "ServiceUnavailable"))
    seqs = harness.append(3000, keys=7)
    harness.start()
    harness.wait_drained(30)
    stored = [
        StreamRecord(r.shard_id, r.sequence_number, r.partition_key, r.data)
        for r in endpoint.records(harness.target)
    ]
    delivered = {json.loads(data)["seq"]: (key, data) for key, data in user_records(stored)}
    assert sorted(delivered) == seqs and len(user_records(stored)) == len(seqs)
    for seq, (key, data) in delivered.items():
        assert (key, data) == (f"k{seq % 7}", json.dumps({"seq": seq}).ljust(100).encode())
    assert harness.status["request_errors"] == 4
    assert sum(read_again) > 0  # the failed requests' records were read back
    assert harness.forwarder is not None and harness.forwarder._window.elided == {}


def test_an_empty_partition_key_is_dead_lettered_not_retried(
    kinesis: MakeHarness, endpoint: FaultyKinesis
) -> None:
    harness = kinesis()
    harness.spool.append([Record("out", "", 1, b'{"seq": -1}')])
    seqs = harness.append(10)
    harness.start()
    harness.wait_drained()
    (dead,) = harness.spool.dead_letters()
    assert "partition key has 0 characters" in dead.reason
    assert all_seqs(seqs_by_key(harness)) == seqs
