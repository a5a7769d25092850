"""One contract, every sink: spool -> forwarder -> sink -> a fault-injecting endpoint.

Each test runs against the Kinesis and the Firehose sink alike. The endpoint
(tests/faulty_kinesis.py) is our own because no emulator fails single records or
throttles; it stores only what it accepted, so "exactly once" is checked on its side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge_agent.records import Record
from tests.faulty_kinesis import FaultyKinesis
from tests.forwarding import Harness
from tests.support import wait_until

KINDS = ("kinesis", "firehose")


@pytest.fixture(params=KINDS)
def harness(
    request: pytest.FixtureRequest,
    endpoint: FaultyKinesis,
    tmp_path: Path,
    harnesses: list[Harness],
) -> Harness:
    made = Harness(endpoint, request.param, tmp_path)
    harnesses.append(made)
    return made


def test_delivers_everything_exactly_once(harness: Harness) -> None:
    seqs = harness.append(1200)
    harness.start()
    harness.wait_drained()
    assert sorted(seq for _, seq in harness.delivered()) == seqs
    status = harness.status
    assert status["records_sent"] == 1200
    assert status["requests"] == 3  # 500 + 500 + 200
    assert status["retries"] == status["request_errors"] == status["dead_lettered"] == 0


def test_the_next_request_goes_out_before_the_answer_to_the_last(harness: Harness) -> None:
    """Two requests on the wire at once: the service never waits for the agent to
    settle one answer, lease and pack before it sends again."""
    harness.endpoint.answer_delay = 0.05
    harness.reconfigure(max_request_records=100)
    seqs = harness.append(1500)
    harness.start()
    harness.wait_drained()
    assert sorted(seq for _, seq in harness.delivered()) == seqs
    assert harness.endpoint.peak_requests_in_flight == 2
    assert harness.status["requests"] == 15


def test_partial_failures_retry_only_the_failed_records(harness: Harness) -> None:
    harness.endpoint.fail_share = 0.3
    seqs = harness.append(2000)
    harness.start()
    harness.wait_drained()
    assert sorted(seq for _, seq in harness.delivered()) == seqs  # none lost, none twice
    endpoint = harness.endpoint
    # Every attempt beyond the first of a record was caused by that record failing.
    assert endpoint.records_attempted - len(seqs) == endpoint.records_failed
    assert harness.status["retries"] == endpoint.records_failed > 0


@pytest.mark.parametrize(
    "error",
    [
        (500, "InternalFailure"),
        (503, "ServiceUnavailable"),
        (400, "ProvisionedThroughputExceededException"),
        (400, "ThrottlingException"),
    ],
)
def test_transient_request_errors_back_off_and_retry(
    harness: Harness, error: tuple[int, str]
) -> None:
    harness.endpoint.queue_request_errors(*[error] * 4)
    seqs = harness.append(300)
    harness.start()
    harness.wait_drained()
    assert sorted(seq for _, seq in harness.delivered()) == seqs
    status = harness.status
    assert status["request_errors"] == 4
    assert error[1] in status["last_error"]
    assert status["state"] in ("idle", "sending")


@pytest.mark.parametrize(
    "error",
    ["AccessDeniedException", "ResourceNotFoundException", "KMSDisabledException"],
)
def test_refusals_pause_the_sink_keep_the_data_and_probe_slowly(
    harness: Harness, error: str
) -> None:
    endpoint = harness.endpoint
    endpoint.persistent_request_error = (400, error)
    seqs = harness.append(100)
    harness.start()
    wait_until(lambda: harness.status["state"] == "paused", 10, 0.01, "paused")
    assert error in harness.status["reason"]
    paused_at = time.monotonic()
    wait_until(lambda: endpoint.requests >= 3, 10, 0.01, "two probes")
    # pause_probe is 1s: the probes came no faster than that.
    assert time.monotonic() - paused_at >= 1.5
    assert harness.spool.pending("out")[0] == 100  # nothing dropped meanwhile
    assert harness.status["state"] == "paused"
    endpoint.persistent_request_error = None
    harness.wait_drained(10)
    assert sorted(seq for _, seq in harness.delivered()) == seqs
    wait_until(lambda: harness.status["state"] == "idle", 5, 0.01, "idle")


def test_an_invalid_record_is_found_and_dead_lettered_alone(harness: Harness) -> None:
    seqs = harness.append(400)
    poison = harness.spool
    poison.append([Record("out", "k1", 1, b'{"seq": -1, "x": "POISON"}')])
    seqs_after = harness.append(99)
    harness.endpoint.reject_data_containing = b"POISON"
    harness.start()
    harness.wait_drained()
    assert sorted(seq for _, seq in harness.delivered()) == seqs + seqs_after
    (dead,) = harness.spool.dead_letters()
    assert b"POISON" in dead.payload and "InvalidArgumentException" in dead.reason
    # Bisection: a handful of requests, not one per record.
    assert harness.endpoint.requests <= 2 * 10 + 2


def test_oversize_records_never_reach_the_service(harness: Harness) -> None:
    limit = 2048
    harness.reconfigure(max_record_bytes=limit)
    seqs = harness.append(50, size=100)
    harness.spool.append([Record("out", "k0", 1, b"x" * (limit + 1))])
    harness.start()
    harness.wait_drained()
    assert sorted(seq for _, seq in harness.delivered()) == seqs
    assert harness.endpoint.records_attempted == 50
    (dead,) = harness.spool.dead_letters()
    assert f"at most {limit}" in dead.reason


def test_stop_releases_what_was_not_delivered(harness: Harness) -> None:
    harness.endpoint.persistent_request_error = (503, "ServiceUnavailable")
    harness.append(100)
    forwarder = harness.start()
    wait_until(lambda: harness.status["request_errors"] >= 1, 10, 0.01, "a failure")
    harness.stop.set()
    harness.spool.wake_waiters()
    forwarder.join(10)
    assert harness.spool.stats().queues[0]["leased_count"] == 0
    assert harness.spool.pending("out")[0] == 100


def test_linger_gathers_a_trickle_into_few_requests(harness: Harness) -> None:
    harness.reconfigure(linger="300ms")
    harness.start()
    started = time.monotonic()
    for _ in range(50):  # a sensor publishing at 50 readings/s for a second
        harness.append(1)
        time.sleep(0.02)
    harness.wait_drained(5)
    elapsed = time.monotonic() - started
    assert sorted(seq for _, seq in harness.delivered()) == list(range(50))
    # One request per ~300 ms instead of one per reading; none waited much past linger.
    assert harness.status["requests"] <= 2 + elapsed / 0.3
    assert elapsed < 1.0 + 0.3 + 0.5


def test_a_refusal_of_every_record_pauses_instead_of_dead_lettering(harness: Harness) -> None:
    """InvalidArgument for every request is not about the records (a misconfigured
    destination, say): nothing may be dead-lettered, the sink pauses and keeps them."""
    harness.endpoint.persistent_request_error = (400, "InvalidArgumentException")
    seqs = harness.append(200)
    harness.start()
    wait_until(lambda: harness.status["state"] == "paused", 10, 0.01, "paused")
    assert "every record was refused" in harness.status["reason"]
    assert harness.spool.dead_letters() == []
    assert harness.spool.pending("out")[0] == 200
    harness.endpoint.persistent_request_error = None
    harness.wait_drained(10)
    assert sorted(seq for _, seq in harness.delivered()) == seqs


def test_a_refused_line_is_found_with_the_others_read_back_from_the_spool(
    endpoint: FaultyKinesis, tmp_path: Path, harnesses: list[Harness]
) -> None:
    """Firehose with ``newline``: each entry is a record with its delimiter, so the
    records of a request on the wire are held without their payloads, and the body
    takes the entries' data. The request refused for one line is split up with its
    entries made again from payloads read back from the spool: every other line
    arrives once, byte for byte, and the refused one is dead-lettered alone."""
    harness = Harness(endpoint, "firehose", tmp_path, newline=True)
    harnesses.append(harness)
    seqs = harness.append(400)
    harness.spool.append([Record("out", "k1", 1, b'{"seq": -1, "x": "POISON"}')])
    seqs += harness.append(99)
    read_again: list[int] = []
    payloads = harness.spool.payloads

    def counted(queue: str, ids: Sequence[int]) -> dict[int, bytes]:
        found = payloads(queue, ids)
        read_again.append(len(found))
        return found

    harness.spool.payloads = counted  # type: ignore[method-assign]
    harness.endpoint.reject_data_containing = b"POISON"
    harness.start()
    harness.wait_drained()
    lines = harness.endpoint.firehose_records(harness.target)
    assert sorted(json.loads(line)["seq"] for line in lines) == seqs
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    (dead,) = harness.spool.dead_letters()
    assert dead.payload == b'{"seq": -1, "x": "POISON"}'
    assert sum(read_again) > 0  # the split request's lines were read back
    assert harness.forwarder is not None and harness.forwarder._window.elided == {}
