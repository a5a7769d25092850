"""The put bodies the sinks write themselves, against botocore's own serializer for the
same parameters (parsed as JSON: the same document, field for field)."""

from __future__ import annotations

import base64
import json
from typing import Any

import botocore.session
from botocore.serialize import create_serializer

from edge_agent.sinks.base import Entry
from edge_agent.sinks.prebuilt_body import data_record, records_body
from tests.support import traced_peak


def botocore_body(service: str, operation: str, params: dict[str, Any]) -> Any:
    model = botocore.session.get_session().get_service_model(service)
    serializer = create_serializer(model.metadata["protocol"], include_validation=True)
    request = serializer.serialize_to_request(params, model.operation_model(operation))
    return json.loads(request["body"])


def entries() -> list[Entry]:
    """Fresh each time: a sink takes an entry's data as it writes the body."""
    return [
        Entry([], b"\x00\xffbinary", "k1"),
        Entry([], b"", 'k\u00e9"quoted\\'),
        Entry([], bytes(range(256)) * 40, "sensor-7", "340282366920938463463374607431768211455"),
    ]


def test_kinesis_body_is_what_botocore_would_send() -> None:
    from edge_agent.sinks.kinesis.sink import KinesisSink

    sink = KinesisSink.__new__(KinesisSink)  # only the body encoding is under test
    sink._key_json = {}
    records: list[dict[str, Any]] = []
    for entry in entries():
        item: dict[str, Any] = {"Data": entry.data, "PartitionKey": entry.partition_key}
        if entry.explicit_hash_key is not None:
            item["ExplicitHashKey"] = entry.explicit_hash_key
        records.append(item)
    expected = botocore_body("kinesis", "PutRecords", {"StreamName": "s-1", "Records": records})
    sent = entries()
    ours = records_body({"StreamName": "s-1"}, (sink._record_json(e) for e in sent))
    assert json.loads(ours) == expected
    assert all(entry.taken and entry.data == b"" for entry in sent)  # the body holds them


def test_firehose_body_is_what_botocore_would_send() -> None:
    ours = records_body({"DeliveryStreamName": "d-1"}, (data_record(e.data) for e in entries()))
    expected = botocore_body(
        "firehose",
        "PutRecordBatch",
        {"DeliveryStreamName": "d-1", "Records": [{"Data": e.data} for e in entries()]},
    )
    assert json.loads(ours) == expected


def test_a_body_is_built_without_holding_every_piece_at_once() -> None:
    """Joining the pieces held them all and then the body: twice the body at the peak.
    Growing it in place holds the body and one record's pieces."""
    entries = [bytes([n]) * 50_000 for n in range(21)]  # an aggregated request of 1 MiB
    built: list[bytearray] = []
    peak = traced_peak(
        lambda: built.append(
            records_body({"StreamName": "s-1"}, (data_record(data) for data in entries))
        )
    )
    (body,) = built
    assert [base64.b64decode(r["Data"]) for r in json.loads(body)["Records"]] == entries
    assert peak < 1.25 * len(body), f"building a body of {len(body):,} bytes peaked at {peak:,}"
