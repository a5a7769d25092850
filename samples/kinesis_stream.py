"""Create a Kinesis stream on a local endpoint and read it back, as a consumer would.

    python samples/kinesis_stream.py --endpoint http://127.0.0.1:4567 create edge-telemetry
    python samples/kinesis_stream.py --endpoint http://127.0.0.1:4567 read edge-telemetry

``read`` walks every shard from the start (GetShardIterator TRIM_HORIZON, GetRecords),
opens KPL aggregates if aws-kinesis-agg is installed, prints the first records and a
summary of the sample publisher's sequence numbers: how many arrived, which are missing,
how many came twice. Result rows of edge analytics queries share the stream: they carry
``query`` and ``window_id`` instead of ``seq``, are counted apart (windows, rows, rows
seen twice under the same window_id and revision, which a consumer would drop) and a
few are printed. Works against AWS too (leave out --endpoint).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import time
from collections import Counter
from typing import Any

import boto3

AGGREGATE_MAGIC = b"\xf3\x89\x9a\xc2"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=None, help="e.g. http://127.0.0.1:4567")
    parser.add_argument("--region", default="us-east-1")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a stream and wait until it is active")
    create.add_argument("stream")
    create.add_argument("--shards", type=int, default=2)
    read = commands.add_parser("read", help="read every record of a stream")
    read.add_argument("stream")
    read.add_argument("--show", type=int, default=5, help="records to print")
    read.add_argument("--show-results", type=int, default=6, help="analytics result rows to print")
    args = parser.parse_args(argv)
    client = boto3.client("kinesis", endpoint_url=args.endpoint, region_name=args.region)
    if args.command == "create":
        return create_stream(client, args.stream, args.shards)
    return read_stream(client, args.stream, args.show, args.show_results)


def create_stream(client: Any, stream: str, shards: int) -> int:
    client.create_stream(StreamName=stream, ShardCount=shards)
    for _ in range(300):
        summary = client.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
        if summary["StreamStatus"] == "ACTIVE":
            print(f"stream {stream}: {shards} shards, active")
            return 0
        time.sleep(0.1)
    print(f"stream {stream} did not become active", file=sys.stderr)
    return 1


def user_records(item: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(partition key, data) of a stored record; an aggregate gives all it carries."""
    data: bytes = item["Data"]
    if not data.startswith(AGGREGATE_MAGIC):
        return [(item["PartitionKey"], data)]
    try:
        from aws_kinesis_agg.deaggregator import iter_deaggregate_records
    except ImportError:
        return [(item["PartitionKey"], data)]
    raw = {  # the shape of a Lambda event record, which the de-aggregator reads
        "eventSource": "aws:kinesis",
        "eventID": f"shard:{item['SequenceNumber']}",
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": item["PartitionKey"],
            "sequenceNumber": item["SequenceNumber"],
            "approximateArrivalTimestamp": 0.0,
            "data": base64.b64encode(data).decode(),
        },
    }
    return [
        (user["kinesis"]["partitionKey"], base64.b64decode(user["kinesis"]["data"]))
        for user in iter_deaggregate_records([raw])
    ]


def analytics_row(data: bytes) -> dict[str, Any] | None:
    """The record as an analytics result row (a JSON object with ``query`` and
    ``window_id``), or None: a raw reading or anything else."""
    try:
        document = json.loads(data)
    except ValueError:
        return None
    if isinstance(document, dict) and "query" in document and "window_id" in document:
        return document
    return None


def report_results(rows: list[dict[str, Any]], show: int) -> None:
    """How many result rows, of how many windows, and the first ``show`` in window order."""
    if not rows:
        print("analytics: no result rows")
        return
    # A row is the same row again when its window, revision and columns are the same:
    # what a consumer de-duplicating by window_id would drop.
    keys = Counter(json.dumps(row, sort_keys=True) for row in rows)
    windows = {(row["query"], row["window_id"]) for row in rows}
    queries = sorted({str(row["query"]) for row in rows})
    print(
        f"analytics ({', '.join(queries)}): {len(rows)} result rows of {len(windows)} "
        f"windows, {sum(c - 1 for c in keys.values())} duplicates"
    )
    ordered = sorted(rows, key=lambda row: (row.get("window_start", 0), json.dumps(row)))
    for row in ordered[:show]:
        print(f"  {json.dumps(row, separators=(',', ':'))}")


def read_stream(client: Any, stream: str, show: int, show_results: int = 6) -> int:
    seqs: list[int] = []
    results: list[dict[str, Any]] = []
    stored = 0
    shown = 0
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        in_shard = 0
        for _ in range(100_000):
            page = client.get_records(ShardIterator=iterator, Limit=10_000)
            for item in page["Records"]:
                stored += 1
                for key, data in user_records(item):
                    in_shard += 1
                    if shown < show:
                        print(f"  {shard['ShardId']} key={key} {data.decode(errors='replace')}")
                        shown += 1
                    row = analytics_row(data)
                    if row is not None:
                        results.append(row)
                        continue
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        seqs.append(int(json.loads(data)["seq"]))
            iterator = page.get("NextShardIterator")
            if not page["Records"] or not iterator:
                break
        print(f"{shard['ShardId']}: {in_shard} records")
    counts = Counter(seqs)
    missing = set(range(max(counts) + 1)) - set(counts) if counts else set()
    print(
        f"stream {stream}: {stored} stored records, {len(seqs)} readings "
        f"(seq {min(counts, default=0)}..{max(counts, default=-1)}), "
        f"{len(missing)} missing, {sum(c - 1 for c in counts.values())} duplicates"
    )
    report_results(results, show_results)
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
