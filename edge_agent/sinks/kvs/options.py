"""The options of a "kvs" sink (a Kinesis Video stream fed by PutMedia): declarations only."""

from __future__ import annotations

from typing import Literal

from edge_agent.config.options import (
    DURATION,
    STRING,
    Table,
    choice,
    integer,
    option,
    section,
    within,
)
from edge_agent.config.sink_kinds import STREAM_NAME, DeliveryConfig, SinkKind

AckOn = Literal["auto", "persisted", "received"]
#: How a video sink sends a backlog: everything in capture order, or the newest
#: fragments live first with the backlog in separate sessions behind them.
ReplayOrder = Literal["oldest-first", "live-first"]
REPLAY_ORDERS: tuple[ReplayOrder, ...] = ("oldest-first", "live-first")
#: Kinesis Video takes fragments of at most 50 MB.
MAX_FRAGMENT_BYTES = 50 * 1000 * 1000


@section
class KvsOptions:
    """A Kinesis Video stream fed by PutMedia."""

    stream: str = option(kind=STRING, check=STREAM_NAME, doc="The video stream's name.")
    ack_on: AckOn = option(
        kind=choice("auto", "persisted", "received"),
        default="auto",
        doc='A fragment leaves the spool when the service has PERSISTED it ("persisted") '
        'or RECEIVED it ("received"). "auto": PERSISTED, unless DescribeStream says the '
        "stream keeps no data (DataRetentionInHours = 0: it never sends PERSISTED), then "
        'RECEIVED, with a warning. "persisted" on such a stream pauses the sink with the '
        "reason instead of waiting forever.",
    )
    replay: ReplayOrder = option(
        kind=choice(*REPLAY_ORDERS),
        default="oldest-first",
        doc='The order of a backlog: "oldest-first" (capture order; live video waits) or '
        '"live-first" (live video goes at once, the backlog in separate sessions behind).',
    )
    max_in_flight: int = option(
        kind=integer(1, 100),
        default=10,
        doc="Fragments on the wire without their acknowledgement (what a crash re-sends).",
    )
    fragments_per_second: float = option(
        kind=integer(1, 5).map("integer 1-5", float, lambda rate: f"{rate:g}"),
        default=5.0,
        doc="The service takes at most 5 fragments a second per stream.",
    )
    connection_max_age: float = option(
        kind=DURATION,
        default=40 * 60.0,
        check=within(60, 44 * 60, "must be between 1m and 44m (the service ends at 45m)"),
        doc="Connections are replaced before the service's 45-minute limit.",
    )
    ack_timeout: float = option(
        kind=DURATION,
        default=30.0,
        check=within(0.1, 3600, "must be between 100ms and 1h"),
        doc="No acknowledgement for this long while fragments are on the wire: reconnect. "
        "Each time that happens the wait doubles, up to 8 x ack_timeout (at most 2m, never "
        "less than ack_timeout), and comes back down after quick acknowledgements.",
    )
    retry_min: float = option(
        kind=DURATION,
        default=1.0,
        doc="After an error: full-jitter backoff from retry_min doubling to retry_max.",
    )
    retry_max: float = option(kind=DURATION, default=60.0, doc="The longest backoff.")
    pause_probe: float = option(
        kind=DURATION,
        default=60.0,
        doc="After a refusal that needs someone to act (no stream, access denied): try "
        "again this often.",
    )


def _check(
    table: Table, options: KvsOptions, max_record_bytes: int, delivery: DeliveryConfig | None
) -> None:
    if max_record_bytes > MAX_FRAGMENT_BYTES:
        table.problem("max_record_bytes", "Kinesis Video takes fragments of at most 50MB")
    if options.retry_min > options.retry_max:
        table.problem("retry_min", "must not exceed retry_max")


KVS = SinkKind(
    doc="Kinesis Video Streams (PutMedia): video fragments from a camera.",
    options=KvsOptions,
    max_record_bytes=16 * 1024 * 1024,
    aws=True,
    priority=10,
    check=_check,
    live=lambda options: options.replay == "live-first",
)
