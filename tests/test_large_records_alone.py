"""A record larger than a sink's requests (``max_request_bytes``) goes in a request of
its own: an aggregating Kinesis sink's requests are 512 KiB by default, and its records
may be up to 1 MiB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faulty_kinesis import FaultyKinesis
from tests.forwarding import Harness
from tests.kinesis_streams import StreamRecord, user_records


def _delivered(harness: Harness, endpoint: FaultyKinesis) -> list[int]:
    """The sequence numbers the endpoint holds, aggregates opened."""
    if harness.kind == "firehose":
        return [seq for _, seq in harness.delivered()]
    stored = [StreamRecord(*record[:4]) for record in endpoint.records(harness.target)]
    return [json.loads(data)["seq"] for _, data in user_records(stored)]


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("kinesis", {}),
        ("kinesis", {"aggregate": True, "aggregate_max_bytes": "2KiB"}),
        ("firehose", {}),
    ],
    ids=["kinesis", "kinesis-aggregated", "firehose"],
)
def test_a_record_larger_than_a_request_goes_in_a_request_of_its_own(
    kind: str,
    options: dict[str, object],
    endpoint: FaultyKinesis,
    tmp_path: Path,
    harnesses: list[Harness],
) -> None:
    harness = Harness(
        endpoint, kind, tmp_path, max_request_bytes="4KiB", max_record_bytes="64KiB", **options
    )
    harnesses.append(harness)
    seqs = harness.append(20, keys=1, size=300)
    seqs += harness.append(1, keys=1, size=20_000)  # five times a request's bytes
    seqs += harness.append(20, keys=1, size=300)
    harness.start()
    harness.wait_drained()
    assert sorted(_delivered(harness, endpoint)) == seqs  # two requests in flight may swap
    assert harness.spool.dead_letters() == []
    assert harness.forwarder is not None
    # the small records share requests of at most 4 KiB; the large one went alone
    assert harness.forwarder.stats.requests >= 1 + 2 * (20 * 300 // 4096)
