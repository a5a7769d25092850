"""A link slower than the request timeout, end to end: a forwarder sends through our
fault proxy as a delay line (tests/fault_proxy.py, 1.25 s each way: answers take 2.5 s)
to the fault-injecting endpoint, with ``request_timeout = "1s"``. Before the timeout
adapted, the sink sent the same 1,000 records every second and delivered nothing else
(37 copies of each in 40 s). Now the timeout grows until answers come (1 s -> 2 s ->
4 s), the requests sent after a timeout are single-entry probes, and every duplicate
is a record of a timed-out request, counted."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import cast

import pytest

from edge_agent.delivery.adaptive_timeout import PROBE_ENTRIES
from edge_agent.sinks.firehose.sink import FirehoseSink
from edge_agent.sinks.kinesis.sink import KinesisSink
from tests.fault_proxy import FaultProxy
from tests.faulty_kinesis import FaultyKinesis
from tests.forwarding import Harness
from tests.support import wait_until

RECORDS = 4000
LATENCY_S = 1.25  # each way
#: Requests on the wire at once (assembly.REQUESTS_IN_FLIGHT, plain records).
IN_FLIGHT = 2


@pytest.mark.parametrize(
    ("kind", "full_requests_timed_out"),
    [
        # ListShards is the first request: its timeout starts the probing
        ("kinesis", 0),
        # no call before the first puts: the two on the wire time out whole, and the
        # one packed meanwhile may go before the news (at 2 s)
        ("firehose", IN_FLIGHT + 1),
    ],
)
def test_a_link_slower_than_the_timeout_delivers_everything_with_few_duplicates(
    kind: str,
    full_requests_timed_out: int,
    endpoint: FaultyKinesis,
    tmp_path: Path,
    harnesses: list[Harness],
) -> None:
    with FaultProxy(int(endpoint.endpoint.rpartition(":")[2])) as link:
        link.latency = LATENCY_S
        harness = Harness(
            endpoint, kind, tmp_path, endpoint_url=link.url, request_timeout="1s", shards=1
        )
        harnesses.append(harness)
        seqs = harness.append(RECORDS)
        started = time.monotonic()
        forwarder = harness.start()
        harness.wait_drained(60)
        took = time.monotonic() - started
        harness.close()  # nothing more goes out
        # the timed-out requests still on the delay line reach the endpoint, and it
        # stores what they carry
        wait_until(lambda: link.upstream_in_transit() == 0, 10, 0.02, "the line to empty")
        wait_until(
            lambda: endpoint.records_attempted == len(harness.delivered()),
            10,
            0.02,
            "the endpoint to store what arrived",
        )

    copies = Counter(seq for _, seq in harness.delivered())
    duplicates = sum(copies.values()) - len(copies)
    sink = cast(KinesisSink | FirehoseSink, forwarder.sink)
    timeout = sink.clients.timeout
    assert set(copies) == set(seqs), "every record arrived"
    assert max(copies.values()) <= 3, "a record goes at most once per step that timed out"
    # 1 s and 2 s timed out (each: the requests on the wire), 4 s carries the answers
    assert timeout.current == timeout.peak == 4.0
    assert 2 <= timeout.timeouts <= 2 * (IN_FLIGHT + 1) + 1  # (+1: ListShards)
    # every duplicate is a record of a timed-out request, and each of those is counted
    assert duplicates == timeout.timed_out_items
    probes = 2 * IN_FLIGHT * PROBE_ENTRIES
    assert duplicates <= full_requests_timed_out * 500 + probes
    status = harness.status
    assert status["request_errors"] == timeout.timeouts - (kind == "kinesis")
    assert status["records_sent"] == RECORDS
    shown = status["request_timeout"]  # what `edge-agent status` shows
    assert (shown["current_s"], shown["timeouts"]) == (4.0, timeout.timeouts)
    assert shown["timed_out_items"] == duplicates
    # 4,000 records in requests of 500, two on the wire, 2.5 s each: 10 s, plus about
    # 7 s to find the timeout (1 s, backoff, 2 s, backoff, one 4 s probe)
    assert took < 30, f"took {took:.1f}s"
