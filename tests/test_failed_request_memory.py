"""What a failed request leaves behind: nothing, once the forwarder has settled it.

A request that fails as a whole (the uplink refuses, the service answers 500) comes
back as an exception whose traceback reaches the frames that built and sent it, and
through them its body and its records. Kept in a variable of a frame that traceback
also reaches, the exception and the frame hold each other: a reference cycle that only
Python's cycle collector frees, and it seldom looks at objects that have lived a while.
In an outage every retry left one behind (docs/BENCHMARKS.md). These tests run with the
collector off, so that whatever a cycle keeps stays visible.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.delivery.exception_frames import release_frames
from edge_agent.sinks.base import Request
from tests.faulty_kinesis import FaultyKinesis
from tests.forwarding import Harness
from tests.support import wait_until


@pytest.fixture
def collector_off(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # pytest keeps the log records of a test, and a warning's arguments hold the error
    caplog.set_level(logging.CRITICAL)
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _live_requests() -> int:
    return sum(isinstance(thing, Request) for thing in gc.get_objects())


def _failed(harness: Harness, failures: int) -> None:
    assert harness.forwarder is not None
    stats = harness.forwarder.stats
    wait_until(lambda: stats.request_errors >= failures, 15, 0.01, f"{failures} failed requests")


@pytest.mark.parametrize("kind", ["kinesis", "firehose"])
def test_a_request_answered_with_an_error_is_let_go_while_the_sink_backs_off(
    kind: str,
    endpoint: FaultyKinesis,
    tmp_path: Path,
    harnesses: list[Harness],
    collector_off: None,
) -> None:
    harness = Harness(endpoint, kind, tmp_path, retry_min="60s", retry_max="60s")
    harnesses.append(harness)
    endpoint.queue_request_errors((500, "InternalFailure"))
    harness.append(300, size=1000)
    harness.start()
    _failed(harness, 1)
    # Backing off for up to a minute, nothing on the wire: once the answer is settled,
    # nothing holds the request (before, a cycle did until the collector came by).
    wait_until(lambda: _live_requests() == 0, 10, 0.01, "the failed request let go")


def test_requests_refused_by_a_dead_uplink_are_let_go(
    endpoint: FaultyKinesis, tmp_path: Path, harnesses: list[Harness], collector_off: None
) -> None:
    harness = Harness(endpoint, "kinesis", tmp_path, retry_min="5ms", retry_max="5ms")
    harnesses.append(harness)
    harness.append(300, size=1000)
    endpoint.stop()  # refused from now on
    forwarder = harness.start()
    _failed(harness, 30)
    harness.stop.set()
    harness.spool.wake_waiters()
    forwarder.join(10)
    # The forwarder and its sending threads are done: nothing holds any of the thirty
    # requests (before, each failure left one in a cycle).
    assert _live_requests() == 0


class _Held:
    """Something a frame holds, seen through a weak reference."""


def _fails_holding(made: list[weakref.ref[_Held]]) -> None:
    held = _Held()
    made.append(weakref.ref(held))
    try:
        raise ValueError("refused")
    except ValueError as err:
        kept = err  # as libraries do: this frame holds the error, its traceback the frame
        raise kept from None


def test_release_frames_lets_go_of_what_finished_frames_hold(collector_off: None) -> None:
    made: list[weakref.ref[_Held]] = []
    running = _Held()
    try:
        _fails_holding(made)
    except ValueError as err:
        release_frames(err)
    assert made[0]() is None  # the cycle is broken, and what the frame held is gone
    assert isinstance(running, _Held)  # the frame still running is left as it is


def test_without_release_a_finished_frame_keeps_what_it_held(collector_off: None) -> None:
    made: list[weakref.ref[_Held]] = []
    with contextlib.suppress(ValueError):
        _fails_holding(made)
    assert made[0]() is not None  # the cycle the test above breaks
    gc.collect()
    assert made[0]() is None


def _suspended_after_a_failure(made: list[weakref.ref[_Held]]) -> Iterator[ValueError]:
    held = _Held()
    made.append(weakref.ref(held))
    try:
        _fails_holding([])
    except ValueError as err:
        yield err  # suspended here, the error handed out
    yield ValueError("more")


def test_release_frames_leaves_a_suspended_generator_as_it_is(collector_off: None) -> None:
    made: list[weakref.ref[_Held]] = []
    generator = _suspended_after_a_failure(made)
    err = next(generator)
    release_frames(err)
    assert made[0]() is not None  # the generator's variables are intact
    assert str(next(generator)) == "more"  # and it goes on
