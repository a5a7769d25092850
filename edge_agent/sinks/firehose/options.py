"""The options of a "firehose" sink (Data Firehose, Direct PUT): declarations only."""

from __future__ import annotations

from edge_agent.config.options import BOOLEAN, STRING, Table, option, section
from edge_agent.config.sink_kinds import STREAM_NAME, DeliveryConfig, SinkKind

#: Firehose takes records of at most 1000 KiB (with the newline, when one is added).
MAX_FIREHOSE_RECORD_BYTES = 1000 * 1024


@section
class FirehoseOptions:
    """A Firehose delivery stream fed by PutRecordBatch."""

    delivery_stream: str = option(
        kind=STRING, check=STREAM_NAME, doc="The delivery stream's name (Direct PUT)."
    )
    newline: bool = option(
        kind=BOOLEAN,
        default=False,
        doc='Add "\\n" after each record, so the objects Firehose writes are newline-delimited.',
    )


def _check(
    table: Table, options: FirehoseOptions, max_record_bytes: int, delivery: DeliveryConfig | None
) -> None:
    if max_record_bytes > MAX_FIREHOSE_RECORD_BYTES:
        table.problem("max_record_bytes", "Firehose takes records of at most 1000KiB")


FIREHOSE = SinkKind(
    doc="Data Firehose (PutRecordBatch).",
    options=FirehoseOptions,
    max_record_bytes=MAX_FIREHOSE_RECORD_BYTES,
    max_request_bytes=4 * 1024 * 1024,
    request_bytes_limit=4 * 1024 * 1024,
    aws=True,
    check=_check,
)
