"""KPL aggregation: checked with the independent aws-kinesis-agg de-aggregator."""

from __future__ import annotations

import base64
from typing import Any

from aws_kinesis_agg.deaggregator import iter_deaggregate_records
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.sinks.kinesis.kpl import MAGIC, AggregateBuilder

user_records = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=20),
        st.binary(max_size=300),
        st.none() | st.integers(0, 2**128 - 1).map(str),
    ),
    min_size=1,
    max_size=60,
)


def deaggregate(partition_key: str, data: bytes) -> list[dict[str, Any]]:
    """As a Lambda event record, the shape the de-aggregator reads most completely."""
    raw = {
        "eventSource": "aws:kinesis",
        "eventID": "shardId-000000000000:1",
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": "1",
            "approximateArrivalTimestamp": 0.0,
            "data": base64.b64encode(data).decode(),
        },
    }
    return [record["kinesis"] for record in iter_deaggregate_records([raw])]


@given(user_records)
@settings(max_examples=200, deadline=None)
def test_aggregates_deaggregate_to_the_same_user_records(
    records: list[tuple[str, bytes, str | None]],
) -> None:
    builder = AggregateBuilder(max_bytes=10**6)
    for key, data, hash_key in records:
        assert builder.add(key, data, hash_key)
    aggregate = builder.build()
    assert aggregate.user_records == len(records)
    got = deaggregate(aggregate.partition_key, aggregate.data)
    assert [(r["partitionKey"], base64.b64decode(r["data"])) for r in got] == [
        (key, data) for key, data, _ in records
    ]
    if aggregate.user_records == 1:
        return  # a plain record: its hash key goes in the PutRecords entry, not the data
    for record, (_, _, hash_key) in zip(got, records, strict=True):
        if hash_key is not None:
            assert record["explicitHashKey"] == hash_key


@given(user_records, st.integers(200, 5000))
@settings(max_examples=200, deadline=None)
def test_predicted_size_is_exact_and_the_limit_holds(
    records: list[tuple[str, bytes, str | None]], limit: int
) -> None:
    builder = AggregateBuilder(max_bytes=limit)
    for key, data, hash_key in records:
        predicted = builder.size_with(key, data, hash_key)
        if not builder.add(key, data, hash_key):
            assert predicted > limit
            break
        if len(builder) > 1:
            aggregate = builder.build()
            assert len(aggregate.data) + len(aggregate.partition_key.encode()) == predicted
            assert predicted <= limit


def test_a_single_user_record_is_sent_plain() -> None:
    builder = AggregateBuilder()
    builder.add("k", b"payload")
    aggregate = builder.build()
    assert (aggregate.partition_key, aggregate.data, aggregate.user_records) == ("k", b"payload", 1)
    assert not aggregate.data.startswith(MAGIC)
