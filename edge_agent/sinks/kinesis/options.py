"""The options of a "kinesis" sink (Kinesis Data Streams): declarations only."""

from __future__ import annotations

import re

from edge_agent.config.options import (
    BOOLEAN,
    DURATION,
    SIZE,
    STRING,
    Check,
    Table,
    at_least,
    integer,
    option,
    section,
    within,
)
from edge_agent.config.sink_kinds import STREAM_NAME, DeliveryConfig, SinkKind

#: The stream settings that allow larger records and requests top out here.
MAX_KINESIS_BYTES = 10 * 1024 * 1024
#: PutRecords takes 5 MiB a request.
REQUEST_BYTES = 5 * 1024 * 1024
#: An aggregating sink's requests: every user record in one is held leased until the
#: request settles (a 512 KiB request of 200-byte records is 2,500 of them), with the
#: request's aggregates and its body, and on a slow uplink a smaller request is quicker
#: to send again. Measured in docs/BENCHMARKS.md: the drain rate of 1 MiB requests, and
#: the device profile's peak 4 MiB lower. A larger record goes in a request of its own.
AGGREGATED_REQUEST_BYTES = 512 * 1024
#: ...but room for a few of its largest aggregates.
AGGREGATES_PER_REQUEST = 4

_HASH_KEY = re.compile(r"^(0|[1-9]\d{0,38})$")
_HASH_KEY_TEXT = "must be a decimal integer below 2**128"


def _hash_key(key: str) -> str | None:
    return None if _HASH_KEY.match(key) and int(key) < 2**128 else _HASH_KEY_TEXT


@section
class KinesisOptions:
    """A Kinesis data stream fed by PutRecords."""

    stream: str = option(kind=STRING, check=STREAM_NAME, doc="The stream's name.")
    aggregate: bool = option(
        kind=BOOLEAN,
        default=False,
        doc="Pack small records bound for the same shard into KPL aggregated records: "
        "many more records per shard-second.",
    )
    aggregate_max_bytes: int = option(
        kind=SIZE,
        default=51_200,
        default_doc="50KiB, or max_record_bytes if smaller",
        doc="The largest aggregated record (1KiB up to max_record_bytes).",
    )
    ordered: bool = option(
        kind=BOOLEAN,
        default=False,
        doc="Per partition key, records reach the stream in the order they were received, "
        "also across failures and restarts (costs throughput unless aggregate is on).",
    )
    explicit_hash_key: str | None = option(
        kind=STRING,
        default=None,
        check=Check(_HASH_KEY_TEXT, _hash_key),
        doc="Send every record with this ExplicitHashKey (a decimal 128-bit number) "
        "instead of hashing its partition key: pins the sink to one shard.",
    )
    shard_records_per_second: int = option(
        kind=integer(1, 1_000_000), default=1000, doc="Per-shard pacing: records a second."
    )
    shard_bytes_per_second: int = option(
        kind=SIZE,
        default=1024 * 1024,
        check=at_least(1024, "must be at least 1KiB"),
        doc="Per-shard pacing: bytes a second.",
    )
    shard_refresh: float = option(
        kind=DURATION,
        default=300.0,
        check=within(1, 86400, "must be between 1s and 1d"),
        doc="How often the shard map (ListShards) is re-read.",
    )


def _check(
    table: Table, options: KinesisOptions, max_record_bytes: int, delivery: DeliveryConfig | None
) -> None:
    if options.aggregate and not 1024 <= options.aggregate_max_bytes <= max_record_bytes:
        table.problem("aggregate_max_bytes", "must be between 1KiB and max_record_bytes")
    if (
        options.aggregate
        and delivery is not None
        and options.aggregate_max_bytes > delivery.max_request_bytes - 1024
    ):
        table.problem("aggregate_max_bytes", "must leave at least 1KiB of max_request_bytes free")


def _request_bytes(options: KinesisOptions) -> int:
    if not options.aggregate:
        return REQUEST_BYTES
    wanted = max(AGGREGATED_REQUEST_BYTES, AGGREGATES_PER_REQUEST * options.aggregate_max_bytes)
    return min(REQUEST_BYTES, wanted)


KINESIS = SinkKind(
    doc="Kinesis Data Streams (PutRecords).",
    options=KinesisOptions,
    max_record_bytes=1024 * 1024,
    max_request_bytes=REQUEST_BYTES,
    request_bytes_limit=MAX_KINESIS_BYTES,
    request_bytes=_request_bytes,
    aws=True,
    defaults=lambda max_record_bytes: {"aggregate_max_bytes": min(51_200, max_record_bytes)},
    check=_check,
)
