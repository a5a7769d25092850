"""Timeouts that adapt to a slow link (delivery/adaptive_timeout.py): the rule, the
record sinks' clients per timeout step (sinks/aws.py) against an endpoint that answers
late, the option, and PutMedia's writes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from botocore.credentials import ReadOnlyCredentials

from edge_agent.config.loading import parse_config
from edge_agent.delivery import adaptive_timeout
from edge_agent.delivery.adaptive_timeout import (
    HEADROOM,
    PROBE_ENTRIES,
    SHRINK_AFTER,
    AdaptiveTimeout,
    default_maximum,
    steps,
)
from edge_agent.delivery.budget import UploadBudget
from edge_agent.errors import ConfigError, SinkPaused, SinkUnavailable
from edge_agent.sinks import aws
from edge_agent.sinks.aws import TimedClients, WireMeter
from edge_agent.sinks.kvs.putmedia import PutMediaConnection
from tests.faulty_kinesis import FaultyKinesis
from tests.support import free_port

# ---------------------------------------------------------------------- the rule


def test_the_steps_double_from_the_configured_timeout_up_to_the_maximum() -> None:
    assert steps(1, 8) == (1, 2, 4, 8)
    assert steps(30, 120) == (30, 60, 120)
    assert steps(20, 120) == (20, 40, 80, 120)  # the last step is the maximum itself
    assert steps(5, 5) == (5,)  # a fixed timeout
    assert default_maximum(1) == 8 and default_maximum(30) == 120
    assert default_maximum(300) == 300  # never below the configured timeout
    with pytest.raises(ValueError):
        steps(2, 1)


def test_a_timeout_doubles_the_next_timeout_up_to_the_maximum() -> None:
    timeout = AdaptiveTimeout(1.0, 8.0)
    grown = []
    for _ in range(6):
        grown.append(timeout.timed_out(timeout.current, items=500))
    assert grown == [True, True, True, False, False, False]
    assert timeout.current == timeout.peak == 8.0
    assert (timeout.timeouts, timeout.timed_out_items) == (6, 3000)


def test_requests_in_flight_together_grow_the_timeout_once() -> None:
    timeout = AdaptiveTimeout(1.0)
    first, second = timeout.current, timeout.current  # both sent at 1 s
    assert timeout.timed_out(first)
    assert not timeout.timed_out(second)  # already grown since it went out
    assert timeout.current == 2.0 and timeout.timeouts == 2


def test_after_a_timeout_requests_are_probes_until_one_is_answered() -> None:
    timeout = AdaptiveTimeout(1.0)
    assert timeout.max_entries(500) == 500
    timeout.timed_out(1.0)
    assert (timeout.probing, timeout.max_entries(500)) == (True, PROBE_ENTRIES)
    timeout.timed_out(2.0)
    assert timeout.max_entries(500) == PROBE_ENTRIES
    timeout.answered(3.0)
    assert (timeout.probing, timeout.max_entries(500)) == (False, 500)


def test_quick_answers_bring_the_timeout_back_down_one_step_at_a_time() -> None:
    timeout = AdaptiveTimeout(1.0, 8.0)
    for _ in range(3):
        timeout.timed_out(timeout.current)
    assert timeout.current == 8.0
    seen = []
    for _ in range(4 * SHRINK_AFTER):
        timeout.answered(0.1)
        seen.append(timeout.current)
    # one step per SHRINK_AFTER answers, and never below the configured timeout
    assert seen[SHRINK_AFTER - 2 : SHRINK_AFTER] == [8.0, 4.0]
    assert seen[2 * SHRINK_AFTER - 1] == 2.0 and seen[3 * SHRINK_AFTER - 1] == 1.0
    assert seen[-1] == 1.0 and timeout.peak == 8.0


def test_a_link_that_stays_slow_keeps_the_timeout_it_needs() -> None:
    timeout = AdaptiveTimeout(1.0, 8.0)
    timeout.timed_out(1.0)
    timeout.timed_out(2.0)
    assert timeout.current == 4.0
    # answers in 2.5 s: the step below (2 s) would time out
    for _ in range(5 * SHRINK_AFTER):
        assert not timeout.answered(2.5)
    assert timeout.current == 4.0
    # one slow answer among quick ones holds the step for that round
    for n in range(SHRINK_AFTER):
        timeout.answered(2.0 / HEADROOM + 0.01 if n == 7 else 0.1)
    assert timeout.current == 4.0
    for _ in range(SHRINK_AFTER):
        timeout.answered(2.0 / HEADROOM)
    assert timeout.current == 2.0


def test_a_timeout_starts_the_count_of_answers_again() -> None:
    timeout = AdaptiveTimeout(1.0, 8.0)
    timeout.timed_out(1.0)
    for _ in range(SHRINK_AFTER - 1):
        timeout.answered(0.1)
    timeout.timed_out(1.0)  # sent before the step grew: no growth, but a new count
    timeout.answered(0.1)
    assert timeout.current == 2.0


def test_reports_from_many_threads_are_all_counted() -> None:
    timeout = AdaptiveTimeout(0.5, 64.0)
    threads = [
        threading.Thread(target=lambda: [timeout.timed_out(0.5, 1) for _ in range(1000)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (timeout.timeouts, timeout.timed_out_items) == (4000, 4000)
    assert timeout.current == 1.0  # every one of them was sent at 0.5 s: one step


# ---------------------------------------------------------------------- the option


def _aws(**keys: str) -> dict[str, object]:
    return {"sinks": {"out": {"type": "kinesis", "stream": "s", "region": "us-east-1", **keys}}}


def test_the_maximum_is_an_option_that_defaults_to_eight_times_the_timeout() -> None:
    endpoint = parse_config(_aws(request_timeout="1s")).sinks["out"].aws
    assert endpoint is not None and endpoint.request_timeout_max is None
    assert AdaptiveTimeout(endpoint.request_timeout, endpoint.request_timeout_max).steps == (
        1,
        2,
        4,
        8,
    )
    endpoint = parse_config(_aws(request_timeout_max="5m")).sinks["out"].aws
    assert endpoint is not None
    assert AdaptiveTimeout(30, endpoint.request_timeout_max).steps == (30, 60, 120, 240, 300)
    with pytest.raises(ConfigError) as raised:
        parse_config(_aws(request_timeout="10s", request_timeout_max="5s"))
    assert "sinks.out.request_timeout_max: must not be below request_timeout" in str(raised.value)


# ---------------------------------------------------------------------- a sink's clients


@pytest.fixture
def late_endpoint() -> Iterator[FaultyKinesis]:
    """Answers every put after 0.4 s."""
    server = FaultyKinesis().start()
    server.create_stream("s", 1)
    server.answer_delay = 0.4
    try:
        yield server
    finally:
        server.stop()


def _clients(
    endpoint: FaultyKinesis, budget: UploadBudget | None = None, **keys: str
) -> TimedClients:
    config = parse_config(_aws(endpoint_url=endpoint.endpoint, **keys)).sinks["out"]
    assert config.aws is not None
    return TimedClients(
        "kinesis",
        config.aws,
        budget or UploadBudget(None, 1024),
        threading.Event(),
        WireMeter(),
        name="out",
    )


def _put(clients: TimedClients, seq: int) -> object:
    record = {"Data": str(seq).encode(), "PartitionKey": "k"}
    return clients.call("put_records", {"StreamName": "s", "Records": [record]}, items=1)


def test_a_timeout_grows_the_read_timeout_until_answers_come(
    late_endpoint: FaultyKinesis,
) -> None:
    clients = _clients(late_endpoint, request_timeout="150ms")
    try:
        for expected in (0.15, 0.3):
            with pytest.raises(SinkUnavailable) as raised:
                _put(clients, 0)
            assert raised.value.code == "Timeout"
            assert clients.timeout.current == 2 * expected
        answer = _put(clients, 1)
        assert answer["FailedRecordCount"] == 0  # type: ignore[index]
        assert clients.timeout.current == 0.6 and clients.timeout.timeouts == 2
        assert clients.timeout.timed_out_items == 2
        # the endpoint stored the timed-out requests too: those are the duplicates
        assert [r.data for r in late_endpoint.records("s")] == [b"0", b"0", b"1"]
        # one client per step in use, at most MAX_CLIENTS kept (the oldest closed)
        assert clients.kept == [0.3, 0.6] and aws.MAX_CLIENTS == 2
    finally:
        clients.close()


def test_an_error_answer_counts_as_an_answer_and_a_refused_connection_as_nothing(
    late_endpoint: FaultyKinesis,
) -> None:
    clients = _clients(late_endpoint, request_timeout="150ms")
    try:
        with pytest.raises(SinkUnavailable):
            _put(clients, 0)
        probing = [clients.timeout.probing]
        record = {"Data": b"x", "PartitionKey": "k"}
        with pytest.raises(SinkPaused):  # ResourceNotFound: an answer
            clients.call("put_records", {"StreamName": "missing", "Records": [record]})
        probing.append(clients.timeout.probing)
        assert probing == [True, False]
        late_endpoint.stop()
        with pytest.raises(SinkUnavailable) as raised:
            _put(clients, 1)
        assert raised.value.code in ("ConnectionRefused", "ConnectionError")
        assert clients.timeout.timeouts == 1 and not clients.timeout.probing
    finally:
        clients.close()


def test_the_wait_for_the_budget_is_not_counted_as_the_links_time(
    late_endpoint: FaultyKinesis,
) -> None:
    late_endpoint.answer_delay = 0.0
    # Each request (about 1.4 kB with its headers) waits about 70 ms for a budget of
    # 20 kB/s, then is answered at once: measured from the wire, the answers are quick
    # enough for the lower step (100 ms / HEADROOM), measured from the call they are not.
    budget = UploadBudget(20_000, 1)
    clients = _clients(late_endpoint, budget, request_timeout="100ms", request_timeout_max="200ms")
    try:
        clients.timeout.timed_out(0.1)
        assert clients.timeout.current == 0.2
        for seq in range(SHRINK_AFTER):
            _put(clients, seq)
        assert budget.admitted_bytes > SHRINK_AFTER * 1000  # the budget metered them
        assert clients.timeout.current == 0.1
    finally:
        clients.close()


# ---------------------------------------------------------------------- PutMedia writes


@pytest.fixture
def deaf_port() -> Iterator[int]:
    """A port that accepts connections and never reads from them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(4)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()
        thread.join(5)
        for conn in accepted:
            conn.close()


def test_a_putmedia_write_that_times_out_makes_the_next_connection_wait_longer(
    deaf_port: int,
) -> None:
    timeout = AdaptiveTimeout(0.2, 0.8)
    stop = threading.Event()
    data = b"\0" * (64 << 20)  # far beyond the socket buffers
    for expected in (0.2, 0.4, 0.8, 0.8):
        connection = PutMediaConnection(
            f"http://127.0.0.1:{deaf_port}",
            "cam",
            ReadOnlyCredentials("k", "s", None),
            region="us-east-1",
            budget=UploadBudget(None, 1024),
            stop=stop,
            timeout=5.0,
            write_timeout=timeout,
        )
        connection.open()
        try:
            sock = connection._sock  # the write timeout in force
            assert sock is not None and sock.gettimeout() == pytest.approx(expected)
            with pytest.raises(TimeoutError):
                connection.send(data)
        finally:
            connection.close()
    assert timeout.timeouts == 4 and timeout.current == 0.8
    assert adaptive_timeout.GROWTH == 2.0
