"""The Firehose sink: PutRecordBatch, with an optional newline after each record.

Per request at most ``max_request_records`` records and ``max_request_bytes``; each
record at most ``max_record_bytes`` (1,000 KiB by default, the service limit, counting
the delimiter). Firehose concatenates records as they are, so line-oriented
destinations (S3 objects read by Athena, for instance) need ``newline = true``.
Failed records (FailedPutCount, usually ServiceUnavailableException when the delivery
stream is throttled) are retried alone.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from edge_agent.config.sinks import SinkConfig
from edge_agent.delivery.budget import Budget
from edge_agent.errors import SinkError, SinkUnavailable
from edge_agent.records import LeasedRecord
from edge_agent.runtime_status import SinkFields
from edge_agent.sinks import prebuilt_body
from edge_agent.sinks.aws import TimedClients, WireMeter
from edge_agent.sinks.base import Entry, Failed, Outcome, Packed, Request, RequestPacker, Sent
from edge_agent.sinks.prebuilt_body import PREBUILT_BODY, data_record, records_body


class FirehoseSink:
    kind = "firehose"
    ordered = False
    aggregating = False
    needs_meta = False

    def __init__(self, config: SinkConfig, budget: Budget, stop: threading.Event) -> None:
        assert config.firehose is not None and config.delivery is not None
        assert config.aws is not None
        self.name = config.name
        self.target = config.firehose.delivery_stream
        self.delivery = config.delivery
        self.max_record_bytes = config.max_record_bytes
        self._suffix = b"\n" if config.firehose.newline else b""
        self.wire = WireMeter()
        self.clients = TimedClients(
            "firehose",
            config.aws,
            budget,
            stop,
            self.wire,
            name=config.name,
            prepare=lambda client: prebuilt_body.install(client, "PutRecordBatch"),
        )

    def pack(self, candidates: Sequence[LeasedRecord], now: float) -> Packed:
        packer = RequestPacker(
            self.clients.timeout.max_entries(self.delivery.max_request_records),
            self.delivery.max_request_bytes,
            ordered=False,
        )
        packed = Packed(None)
        for record in candidates:
            entry = self._entry(record)
            data = entry.data
            if len(data) > self.max_record_bytes:
                packed.rejected.append(
                    (
                        record,
                        f"record is {len(data)} bytes; delivery stream {self.target} "
                        f"accepts at most {self.max_record_bytes}",
                    )
                )
                continue
            if not packer.has_room(len(data)):
                if packer.full:
                    break
                continue
            packer.add(entry)
        packed.request = packer.request()
        return packed

    def plain_entries(self, records: Sequence[LeasedRecord]) -> list[Entry]:
        return [self._entry(record) for record in records]

    def _entry(self, record: LeasedRecord) -> Entry:
        return Entry([record], record.payload + self._suffix)

    def rebuild(self, entry: Entry, records: Sequence[LeasedRecord]) -> Entry:
        (record,) = records
        return self._entry(record)

    def transmit(self, request: Request) -> Any:
        body = records_body(
            {"DeliveryStreamName": self.target},
            (data_record(entry.take_data()) for entry in request.entries),
        )
        return self.clients.call(
            "put_record_batch",
            {"DeliveryStreamName": self.target, PREBUILT_BODY: body},
            items=len(request.entries),
        )

    def outcomes(self, request: Request, answer: Any) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for result in answer.get("RequestResponses") or []:
            record_id = result.get("RecordId")
            if record_id is not None and not result.get("ErrorCode"):
                outcomes.append(Sent(None, str(record_id)))
            else:
                outcomes.append(
                    Failed(str(result.get("ErrorCode")), str(result.get("ErrorMessage", "")))
                )
        if len(outcomes) != len(request.entries):
            raise SinkUnavailable(
                "InvalidResponse", "PutRecordBatch answered for a different number of records"
            )
        return outcomes

    def snapshot(self) -> SinkFields:
        return {
            "delivery_stream": self.target,
            "wire_bytes": self.wire.bytes,
            "request_timeout": self.clients.timeout.snapshot(),
        }

    def ready(self) -> SinkError | None:
        return self.clients.ready()

    def close(self) -> None:
        self.clients.close()
