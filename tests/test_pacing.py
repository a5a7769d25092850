"""Token buckets, the upload budget, per-shard pacing and full-jitter backoff,
driven by a fake clock (no real time passes)."""

from __future__ import annotations

import random
import threading

import pytest

from edge_agent.delivery.backoff import Backoff, full_jitter
from edge_agent.delivery.budget import UploadBudget
from edge_agent.delivery.token_bucket import TokenBucket
from edge_agent.sinks.kinesis.pacing import PaceBudget, ShardPacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, 50, clock=clock)
    assert bucket.available == 50
    bucket.take(50)
    assert bucket.wait_time(20) == pytest.approx(0.2)
    clock.now += 0.1
    assert bucket.available == pytest.approx(10)
    clock.now += 100
    assert bucket.available == 50  # capped
    bucket.take(80)  # a debt
    assert bucket.wait_time(50) == pytest.approx(0.8)


def test_the_budget_admits_at_most_rate_times_time_plus_burst() -> None:
    clock = FakeClock()
    budget = UploadBudget(10_000, 2_000, clock=clock)
    stop = threading.Event()
    admitted = 0
    for _ in range(1000):  # 10 ms steps over 10 s of fake time
        while budget._bucket is not None and budget._bucket.wait_time(500) == 0:
            assert budget.acquire(500, stop)
            admitted += 500
        clock.now += 0.01
    assert 10 * 10_000 <= admitted <= 10 * 10_000 + 2_000 + 500
    assert budget.admitted_bytes == admitted


def test_the_budget_without_a_budget_never_waits_and_can_change_live() -> None:
    clock = FakeClock()
    budget = UploadBudget(None, 1024, clock=clock)
    stop = threading.Event()
    assert budget.acquire(10**9, stop)
    budget.configure(1000, 1024)
    assert budget.max_rate == 1000
    assert budget.acquire(1024, stop)
    stop.set()
    assert not budget.acquire(1024, stop)  # would wait: gives up because of stop
    budget.configure(None, 1024)
    assert budget.acquire(1024, stop)


def test_shard_pacer_never_exceeds_the_limit_in_any_second() -> None:
    clock = FakeClock()
    pacer = ShardPacer(1000, 1024 * 1024, clock)
    sent: list[float] = []
    for _ in range(3000):  # 1 ms steps over 3 s
        budget = PaceBudget(pacer)  # what packing one request does
        while budget.allows(1, 100):
            budget.use(1, 100)
            sent.append(clock.now)
        budget.commit()
        clock.now += 0.001
    for start in sent:
        in_window = sum(1 for at in sent if start <= at < start + 1.0)
        assert in_window <= 1000
    assert len(sent) >= 2 * 900  # and uses nearly all of it


def test_shard_pacer_slows_down_when_throttled_and_recovers() -> None:
    clock = FakeClock()
    pacer = ShardPacer(1000, 1024 * 1024, clock)
    pacer.on_throttled()
    pacer.on_throttled()  # the same burst of failures: one cut
    assert pacer.factor == pytest.approx(0.7)
    clock.now += 0.5
    pacer.on_throttled()
    assert pacer.factor == pytest.approx(0.49)
    for _ in range(20):
        pacer.on_throttled()
        clock.now += 0.3
    assert pacer.factor == pytest.approx(0.1)  # the floor
    assert pacer.records.rate == pytest.approx(100 * 0.9)
    clock.now += 30
    pacer.recover()
    assert pacer.factor == 1.0
    assert pacer.throttled == 23


def test_full_jitter_stays_within_the_doubling_cap() -> None:
    rng = random.Random(3)
    for attempt in range(12):
        ceiling = min(5.0, 0.1 * 2**attempt)
        delays = [full_jitter(attempt, 0.1, 5.0, rng) for _ in range(200)]
        assert all(0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole window
    assert full_jitter(10_000, 0.1, 5.0, rng) <= 5.0  # no overflow


def test_backoff_counts_failures_and_resets() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    assert backoff.failures == 10 and max(delays) <= 1.0
    backoff.reset()
    assert backoff.failures == 0 and backoff.next_delay() <= 0.1
