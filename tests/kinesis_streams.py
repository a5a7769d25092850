"""Reading a Kinesis stream back in a test: every record of every shard, de-aggregated.

Aggregated records are opened with aws-kinesis-agg (the independent de-aggregator the
KCL's behaviour is modelled on), never with the project's own encoder.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any, NamedTuple

from aws_kinesis_agg.deaggregator import iter_deaggregate_records

from tests.support import wait_until


class StreamRecord(NamedTuple):
    shard_id: str
    sequence_number: str
    partition_key: str
    data: bytes


def make_stream(client: Any, shards: int) -> str:
    name = f"s-{uuid.uuid4().hex[:8]}"
    client.create_stream(StreamName=name, ShardCount=shards)
    wait_until(
        lambda: (
            client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
                "StreamStatus"
            ]
            == "ACTIVE"
        ),
        10,
        0.05,
        "stream to become active",
    )
    return name


def read_stream(client: Any, name: str) -> list[StreamRecord]:
    """Every record as stored (aggregates still packed), shard by shard, in order."""
    out: list[StreamRecord] = []
    for shard in client.list_shards(StreamName=name)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for _ in range(10_000):  # bounded: 10,000 pages per shard
            page = client.get_records(ShardIterator=iterator, Limit=10_000)
            out += [
                StreamRecord(
                    shard["ShardId"], item["SequenceNumber"], item["PartitionKey"], item["Data"]
                )
                for item in page["Records"]
            ]
            iterator = page.get("NextShardIterator")
            if not page["Records"] or not iterator:
                break
    return out


def user_records(records: list[StreamRecord]) -> list[tuple[str, bytes]]:
    """(partition key, data) of every user record, aggregates opened by aws-kinesis-agg."""
    out: list[tuple[str, bytes]] = []
    for record in records:
        raw = {
            "eventSource": "aws:kinesis",
            "eventID": f"{record.shard_id}:{record.sequence_number}",
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": record.partition_key,
                "sequenceNumber": record.sequence_number,
                "approximateArrivalTimestamp": 0.0,
                "data": base64.b64encode(record.data).decode(),
            },
        }
        for user in iter_deaggregate_records([raw]):
            out.append((user["kinesis"]["partitionKey"], base64.b64decode(user["kinesis"]["data"])))
    return out


def sequence_numbers_by_key(pairs: list[tuple[str, bytes]]) -> dict[str, list[int]]:
    """The sample publisher's "seq" field of each record, grouped by partition key."""
    by_key: dict[str, list[int]] = {}
    for key, data in pairs:
        by_key.setdefault(key, []).append(int(json.loads(data)["seq"]))
    return by_key


def first_occurrence_order_kept(seqs: list[int]) -> bool:
    """True if, duplicates aside, the sequence numbers arrive in increasing order."""
    seen: set[int] = set()
    last = -1
    for seq in seqs:
        if seq in seen:
            continue
        if seq < last:
            return False
        seen.add(seq)
        last = seq
    return True
