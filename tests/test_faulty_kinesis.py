"""Self-test of the fault-injecting Kinesis/Firehose server, through real boto3 clients."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from edge_agent.sinks.kinesis.shards import ShardMap, hash_key_of
from tests.faulty_kinesis import FaultyKinesis

PTE = "ProvisionedThroughputExceededException"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FaultyKinesis]:
    with FaultyKinesis(seed=7, clock=clock) as server:
        server.create_stream("telemetry", 4)
        server.create_delivery_stream("archive")
        yield server


@pytest.fixture
def kinesis(fake: FaultyKinesis) -> Iterator[Any]:
    client = fake.client()
    yield client
    client.close()


@pytest.fixture
def firehose(fake: FaultyKinesis) -> Iterator[Any]:
    client = fake.client("firehose")
    yield client
    client.close()


def put(client: Any, records: list[dict[str, Any]], stream: str = "telemetry") -> Any:
    return client.put_records(StreamName=stream, Records=records)


def batch(count: int, key: str = "", size: int = 10) -> list[dict[str, Any]]:
    return [
        {"Data": f"{i:0{size}d}".encode(), "PartitionKey": key or f"device-{i}"}
        for i in range(count)
    ]


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response: Any = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_records_land_on_the_shard_md5_predicts(fake: FaultyKinesis, kinesis: Any) -> None:
    shards = kinesis.list_shards(StreamName="telemetry")["Shards"]
    assert [s["ShardId"] for s in shards] == [f"shardId-00000000000{i}" for i in range(4)]
    assert shards[0]["HashKeyRange"]["StartingHashKey"] == "0"
    assert shards[-1]["HashKeyRange"]["EndingHashKey"] == str(2**128 - 1)
    shard_map = ShardMap.from_list_shards(shards)
    records = batch(300)
    response = put(kinesis, records)
    assert response["FailedRecordCount"] == 0
    assert len(response["Records"]) == 300
    for record, result in zip(records, response["Records"], strict=True):
        assert result["ShardId"] == shard_map.shard_for(record["PartitionKey"])
        ranges = next(s["HashKeyRange"] for s in shards if s["ShardId"] == result["ShardId"])
        key = hash_key_of(record["PartitionKey"])
        assert int(ranges["StartingHashKey"]) <= key <= int(ranges["EndingHashKey"])
    stored = fake.records("telemetry")
    assert [r.data for r in stored] == [r["Data"] for r in records]
    assert [r.sequence_number for r in stored] == [r["SequenceNumber"] for r in response["Records"]]
    assert len({r.shard_id for r in stored}) == 4
    put(kinesis, batch(300))
    for shard in shards:
        numbers = [r.sequence_number for r in fake.shard_records("telemetry", shard["ShardId"])]
        as_ints = [int(n) for n in numbers]
        assert as_ints == sorted(as_ints) and len(set(as_ints)) == len(as_ints)
        assert numbers == sorted(numbers)  # equal widths: strings order like the integers


def test_explicit_hash_key_is_honoured(fake: FaultyKinesis, kinesis: Any) -> None:
    records = [
        {"Data": b"last", "PartitionKey": "same", "ExplicitHashKey": str(2**128 - 1)},
        {"Data": b"first", "PartitionKey": "same", "ExplicitHashKey": "0"},
        {"Data": b"third", "PartitionKey": "same", "ExplicitHashKey": str(2**127 + 1)},
    ]
    results = put(kinesis, records)["Records"]
    assert [r["ShardId"][-1] for r in results] == ["3", "0", "2"]
    assert fake.records("telemetry")[1].explicit_hash_key == "0"
    with pytest.raises(ClientError) as excinfo:
        put(kinesis, [{"Data": b"x", "PartitionKey": "k", "ExplicitHashKey": str(2**128)}])
    assert error_of(excinfo) == ("InvalidArgumentException", 400)


def test_fail_share_fails_single_records_with_both_codes(fake: FaultyKinesis, kinesis: Any) -> None:
    fake.fail_share = 0.3
    sent: list[bytes] = []
    failed: list[bytes] = []
    codes: Counter[str] = Counter()
    for round_ in range(4):
        records: list[dict[str, Any]] = [
            {"Data": f"{round_}-{i}".encode(), "PartitionKey": f"k{i}"} for i in range(500)
        ]
        response = put(kinesis, records)
        results = response["Records"]
        assert len(results) == 500
        assert response["FailedRecordCount"] == sum("ErrorCode" in r for r in results)
        for record, result in zip(records, results, strict=True):
            sent.append(record["Data"])
            if "ErrorCode" in result:
                failed.append(record["Data"])
                codes[result["ErrorCode"]] += 1
                assert "SequenceNumber" not in result and result["ErrorMessage"]
    assert 0.25 < len(failed) / len(sent) < 0.35
    assert set(codes) == {PTE, "InternalFailure"}
    stored = [r.data for r in fake.records("telemetry")]
    assert stored == [data for data in sent if data not in set(failed)]
    assert fake.records_failed == len(failed)
    assert fake.records_attempted == 2000 and fake.requests == 4


@pytest.mark.parametrize(
    "error",
    [
        (500, "InternalFailure"),
        (400, PTE),
        (400, "AccessDeniedException"),
        (400, "ResourceNotFoundException"),
        (400, "KMSDisabledException"),
        (503, "ServiceUnavailable"),
        (400, "InvalidArgumentException"),
    ],
)
def test_queued_request_errors_reach_boto3(
    fake: FaultyKinesis, kinesis: Any, firehose: Any, error: tuple[int, str]
) -> None:
    fake.queue_request_errors(error, error)
    with pytest.raises(ClientError) as excinfo:
        put(kinesis, batch(3))
    assert error_of(excinfo) == (error[1], error[0])
    with pytest.raises(ClientError) as excinfo:
        firehose.put_record_batch(DeliveryStreamName="archive", Records=[{"Data": b"x"}])
    assert error_of(excinfo) == (error[1], error[0])
    assert put(kinesis, batch(3))["FailedRecordCount"] == 0
    assert fake.request_errors_sent == 2 and fake.requests == 3
    assert len(fake.records("telemetry")) == 3 and fake.firehose_records("archive") == []


def test_queued_errors_are_fifo_then_persistent_error(fake: FaultyKinesis, kinesis: Any) -> None:
    fake.queue_request_errors((500, "InternalFailure"), (400, PTE))
    codes = []
    for _ in range(2):
        with pytest.raises(ClientError) as excinfo:
            put(kinesis, batch(1))
        codes.append(error_of(excinfo)[0])
    assert codes == ["InternalFailure", PTE]
    fake.persistent_request_error = (400, "AccessDeniedException")
    for _ in range(3):
        with pytest.raises(ClientError) as excinfo:
            put(kinesis, batch(1))
        assert error_of(excinfo) == ("AccessDeniedException", 400)
    assert fake.records("telemetry") == []
    fake.persistent_request_error = None
    assert put(kinesis, batch(1))["FailedRecordCount"] == 0
    assert fake.request_errors_sent == 5 and len(fake.request_times) == 6


def test_shard_record_limit(fake: FaultyKinesis, kinesis: Any, clock: FakeClock) -> None:
    fake.enforce_shard_limits = True
    results = []
    for _ in range(3):  # 1,500 records to one key within the same second
        results += put(kinesis, batch(500, key="hot"))["Records"]
    errors = [r for r in results if "ErrorCode" in r]
    assert len(errors) == 500
    assert all(
        r["ErrorCode"] == PTE and "Rate exceeded for shard" in r["ErrorMessage"] for r in errors
    )
    assert fake.throttled_records == 500 and fake.peak_shard_records_per_second == 1000
    assert len(fake.records("telemetry")) == 1000
    clock.now += 0.5  # window still full
    assert put(kinesis, batch(1, key="hot"))["FailedRecordCount"] == 1
    assert put(kinesis, batch(1, key="cold"))["FailedRecordCount"] == 0  # another shard
    clock.now += 0.6  # the first 1,000 have left the window
    assert put(kinesis, batch(500, key="hot"))["FailedRecordCount"] == 0
    assert fake.peak_shard_records_per_second == 1000


def test_shard_byte_limit(fake: FaultyKinesis, kinesis: Any) -> None:
    fake.enforce_shard_limits = True
    response = put(kinesis, batch(12, key="k", size=100_000))  # 100,001 bytes each
    assert response["FailedRecordCount"] == 2
    assert [("ErrorCode" in r) for r in response["Records"]] == [False] * 10 + [True] * 2
    assert fake.peak_shard_bytes_per_second == 10 * 100_001 <= 1048576


def test_limits_are_tracked_but_not_enforced_by_default(fake: FaultyKinesis, kinesis: Any) -> None:
    for _ in range(3):
        assert put(kinesis, batch(500, key="hot"))["FailedRecordCount"] == 0
    assert fake.peak_shard_records_per_second == 1500 and fake.throttled_records == 0


@pytest.mark.parametrize(
    "records",
    [
        pytest.param(batch(501), id="501 records"),
        pytest.param([{"Data": b"x" * (1 << 20), "PartitionKey": "k"}], id="record over 1 MiB"),
        pytest.param(batch(6, size=1_000_000), id="request over 5 MiB"),
        pytest.param([{"Data": b"x", "PartitionKey": "k" * 257}], id="partition key of 257"),
    ],
)
def test_invalid_requests(fake: FaultyKinesis, kinesis: Any, records: list[dict[str, Any]]) -> None:
    with pytest.raises(ClientError) as excinfo:
        put(kinesis, records)
    assert error_of(excinfo) == ("InvalidArgumentException", 400)
    assert fake.records("telemetry") == [] and fake.request_errors_sent == 1


def test_largest_valid_record_is_accepted(fake: FaultyKinesis, kinesis: Any) -> None:
    records = [{"Data": b"x" * ((1 << 20) - 1), "PartitionKey": "k"}]
    assert put(kinesis, records)["FailedRecordCount"] == 0


def test_unknown_stream(kinesis: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        put(kinesis, batch(1), stream="nope")
    assert error_of(excinfo) == ("ResourceNotFoundException", 400)
    with pytest.raises(kinesis.exceptions.ResourceNotFoundException):
        kinesis.list_shards(StreamName="nope")


def test_reject_data_containing(fake: FaultyKinesis, kinesis: Any, firehose: Any) -> None:
    fake.reject_data_containing = b"POISON"
    records = [*batch(5), {"Data": b"a POISON pill", "PartitionKey": "k"}]
    with pytest.raises(ClientError) as excinfo:
        put(kinesis, records)
    assert error_of(excinfo) == ("InvalidArgumentException", 400)
    with pytest.raises(ClientError) as excinfo:
        firehose.put_record_batch(DeliveryStreamName="archive", Records=[{"Data": b"POISON"}])
    assert error_of(excinfo) == ("InvalidArgumentException", 400)
    assert put(kinesis, records[:5])["FailedRecordCount"] == 0
    assert len(fake.records("telemetry")) == 5 and fake.firehose_records("archive") == []


def test_firehose_put_record_batch(fake: FaultyKinesis, firehose: Any) -> None:
    described = firehose.describe_delivery_stream(DeliveryStreamName="archive")
    assert described["DeliveryStreamDescription"]["DeliveryStreamStatus"] == "ACTIVE"
    datas = [f"line {i}\n".encode() for i in range(200)]
    response = firehose.put_record_batch(
        DeliveryStreamName="archive", Records=[{"Data": d} for d in datas]
    )
    assert response["FailedPutCount"] == 0 and response["Encrypted"] is False
    assert all("RecordId" in r for r in response["RequestResponses"])
    assert fake.firehose_records("archive") == datas
    fake.fail_share = 0.5
    response = firehose.put_record_batch(
        DeliveryStreamName="archive", Records=[{"Data": d} for d in datas]
    )
    results = response["RequestResponses"]
    failed = [d for d, r in zip(datas, results, strict=True) if "ErrorCode" in r]
    assert response["FailedPutCount"] == len(failed) and 50 < len(failed) < 150
    assert {r["ErrorCode"] for r in results if "ErrorCode" in r} == {"ServiceUnavailableException"}
    assert fake.firehose_records("archive") == datas + [d for d in datas if d not in failed]
    fake.fail_share = 0.0
    for records in ([{"Data": b"x" * (1000 * 1024 + 1)}], [{"Data": b"x"}] * 501):
        with pytest.raises(ClientError) as excinfo:
            firehose.put_record_batch(DeliveryStreamName="archive", Records=records)
        assert error_of(excinfo) == ("InvalidArgumentException", 400)


def test_split_shard_and_list_shards(fake: FaultyKinesis, kinesis: Any) -> None:
    fake.create_stream("small", 1)
    put(kinesis, batch(10), stream="small")
    children = fake.split_shard("small", "shardId-000000000000")
    assert children == ("shardId-000000000001", "shardId-000000000002")
    shards = kinesis.list_shards(StreamName="small")["Shards"]
    parent, left, right = shards
    assert "EndingSequenceNumber" in parent["SequenceNumberRange"]
    assert "ParentShardId" not in parent
    assert left["ParentShardId"] == right["ParentShardId"] == parent["ShardId"]
    assert "EndingSequenceNumber" not in left["SequenceNumberRange"]
    assert left["HashKeyRange"]["StartingHashKey"] == "0"
    assert int(left["HashKeyRange"]["EndingHashKey"]) + 1 == 2**127
    assert right["HashKeyRange"]["StartingHashKey"] == str(2**127)
    assert right["HashKeyRange"]["EndingHashKey"] == str(2**128 - 1)
    last_before = max(int(r.sequence_number) for r in fake.records("small"))
    assert int(parent["SequenceNumberRange"]["EndingSequenceNumber"]) >= last_before
    shard_map = ShardMap.from_list_shards(shards)
    records = batch(50)
    results = put(kinesis, records, stream="small")["Records"]
    assert {r["ShardId"] for r in results} == set(children)
    for record, result in zip(records, results, strict=True):
        assert result["ShardId"] == shard_map.shard_for(record["PartitionKey"])
    summary = kinesis.describe_stream_summary(StreamName="small")["StreamDescriptionSummary"]
    assert summary["StreamStatus"] == "ACTIVE" and summary["OpenShardCount"] == 2
    first = kinesis.list_shards(StreamName="small", MaxResults=2)
    assert len(first["Shards"]) == 2
    rest = kinesis.list_shards(NextToken=first["NextToken"])
    assert "NextToken" not in rest
    assert first["Shards"] + rest["Shards"] == shards


def test_stop_closes_keep_alive_connections() -> None:
    fake = FaultyKinesis().start()
    fake.create_stream("s", 1)
    client = fake.client()
    assert put(client, batch(2), stream="s")["FailedRecordCount"] == 0
    fake.stop()  # a connection is still open on the client side
    with pytest.raises(RuntimeError):
        _ = fake.endpoint
    client.close()


def test_client_total_attempts_counts_the_first_attempt(fake: FaultyKinesis) -> None:
    """botocore's retries={"max_attempts": 1} means one retry; client() uses total attempts."""
    client = fake.client(total_attempts=2)
    try:
        fake.queue_request_errors((500, "InternalFailure"))
        assert put(client, batch(1))["FailedRecordCount"] == 0
        assert fake.requests == 2 and fake.request_errors_sent == 1
    finally:
        client.close()
