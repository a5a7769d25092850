"""What a test can rely on when it sends Firehose PutRecord(Batch) to a real moto server.

These pin down moto's behaviour (see ``tests/moto_server.py``), so that tests of the agent's
Firehose sink know what the delivered S3 objects tell them, and a moto upgrade that changes
it fails here first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ParamValidationError

from tests.moto_server import (
    MotoServer,
    delivered_keys,
    delivered_objects,
    listed_keys,
    make_firehose_to_s3,
)
from tests.support import port_open

# {Prefix}YYYY/MM/DD/HH/{stream}-{version}-YYYY-MM-DD-HH-MM-SS-{uuid4}
KEY = re.compile(
    r"^(?P<prefix>.*?)\d{4}/\d{2}/\d{2}/\d{2}/(?P<stream>.+)-1-"
    r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$"
)


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One real moto server for this module, stopped at the end."""
    with MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The module's moto server, emptied before each test."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def firehose(moto: MotoServer) -> Iterator[Any]:
    with closing(moto.client("firehose")) as client:
        yield client


def records(*data: bytes) -> list[dict[str, bytes]]:
    return [{"Data": item} for item in data]


def test_each_call_is_one_object_delivered_before_it_returns(
    moto: MotoServer, firehose: Any
) -> None:
    bucket = make_firehose_to_s3(moto, "telemetry")
    batches = [
        [b'{"seq": 1}\n', b'{"seq": 2}\n'],
        [b"\x00\xff binary, no newline", b"", b"\r\n"],
        [b'{"seq": 3}\n' * 3, b"x" * 100_000, b'{"seq": 4}'],
    ]
    for count, batch in enumerate(batches, start=1):
        response = firehose.put_record_batch(
            DeliveryStreamName="telemetry", Records=records(*batch)
        )
        assert response["FailedPutCount"] == 0
        assert len(response["RequestResponses"]) == len(batch)
        # No waiting: the object exists as soon as the call returned.
        assert len(listed_keys(moto, bucket)) == count

    objects = delivered_objects(moto, bucket)
    assert objects == [b"".join(batch) for batch in batches]
    assert b"".join(objects) == b"".join(item for batch in batches for item in batch)


def test_put_record_is_a_batch_of_one(moto: MotoServer, firehose: Any) -> None:
    bucket = make_firehose_to_s3(moto, "single")
    firehose.put_record(DeliveryStreamName="single", Record={"Data": b"one"})
    firehose.put_record_batch(DeliveryStreamName="single", Records=records(b"two", b"three"))
    firehose.put_record(DeliveryStreamName="single", Record={"Data": b"four"})
    assert delivered_objects(moto, bucket) == [b"one", b"twothree", b"four"]


def test_many_calls_in_one_second_keep_delivery_order(moto: MotoServer, firehose: Any) -> None:
    """Keys only have whole seconds and a random uuid: the helper orders by delivery."""
    bucket = make_firehose_to_s3(moto, "ordered")
    sent = [f"{seq:04d};".encode() for seq in range(40)]
    for item in sent:
        firehose.put_record(DeliveryStreamName="ordered", Record={"Data": item})
    assert delivered_objects(moto, bucket) == sent
    by_key = delivered_objects(moto, bucket, order="key")
    assert sorted(by_key) == sorted(sent)
    assert sorted(delivered_keys(moto, bucket)) == listed_keys(moto, bucket)


def test_object_keys_follow_firehose_naming(moto: MotoServer, firehose: Any) -> None:
    bucket = make_firehose_to_s3(moto, "named", prefix="edge/telemetry/")
    firehose.put_record(DeliveryStreamName="named", Record={"Data": b"x"})
    [key] = listed_keys(moto, bucket)
    match = KEY.match(key)
    assert match, key
    assert match["prefix"] == "edge/telemetry/"
    assert match["stream"] == "named"


def test_buffering_hints_are_ignored(moto: MotoServer, firehose: Any) -> None:
    bucket = make_firehose_to_s3(moto, "buffered", size_mb=128, interval_s=900)
    firehose.put_record_batch(DeliveryStreamName="buffered", Records=records(b"a", b"b"))
    assert delivered_objects(moto, bucket) == [b"ab"]


def test_smallest_buffering_hints_allowed(moto: MotoServer, firehose: Any) -> None:
    """1 MiB / 0 s is the floor (botocore refuses 0 MiB); moto stores what it was given."""
    make_firehose_to_s3(moto, "hints")
    description = firehose.describe_delivery_stream(DeliveryStreamName="hints")
    [destination] = description["DeliveryStreamDescription"]["Destinations"]
    hints = destination["ExtendedS3DestinationDescription"]["BufferingHints"]
    assert hints == {"SizeInMBs": 1, "IntervalInSeconds": 0}
    with pytest.raises(ParamValidationError):
        make_firehose_to_s3(moto, "zero", size_mb=0)


def test_limits_are_not_enforced(moto: MotoServer, firehose: Any) -> None:
    """Real Firehose: 500 records, 1,000 KiB a record, 4 MiB a call. moto accepts all."""
    bucket = make_firehose_to_s3(moto, "limits")
    too_many = [b"%d," % i for i in range(501)]
    too_big = b"b" * (1_024_000 + 1)
    too_much = [b"m" * 1_000_000] * 5
    for batch in (too_many, [too_big], too_much):
        response = firehose.put_record_batch(DeliveryStreamName="limits", Records=records(*batch))
        assert response["FailedPutCount"] == 0
        assert len(response["RequestResponses"]) == len(batch)
    assert delivered_objects(moto, bucket) == [b"".join(too_many), too_big, b"".join(too_much)]


def test_unknown_stream_is_resource_not_found(firehose: Any) -> None:
    with pytest.raises(ClientError) as raised:
        firehose.put_record_batch(DeliveryStreamName="missing", Records=records(b"x"))
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_missing_bucket_is_a_server_error(moto: MotoServer) -> None:
    make_firehose_to_s3(moto, "orphan", bucket="orphan-bucket")
    with closing(moto.client("s3")) as s3:
        s3.delete_bucket(Bucket="orphan-bucket")
    no_retries = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    with (
        closing(moto.client("firehose", config=no_retries)) as firehose,
        pytest.raises(ClientError) as raised,
    ):
        firehose.put_record(DeliveryStreamName="orphan", Record={"Data": b"x"})
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def test_server_starts_and_stops_cleanly(tmp_path: Path) -> None:
    server = MotoServer(tmp_path)
    with server:
        assert server.running()
        process = server.process
        assert port_open(server.port)
        assert server.rss_bytes() > 0
    assert process is not None
    assert process.returncode is not None
    assert not server.running()
    assert not port_open(server.port)
    assert "Running on http://127.0.0.1:" in server.log_text()
