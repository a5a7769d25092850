"""The upload budget: the shared budget by priority, per-sink caps, schedules."""

from __future__ import annotations

import threading
import time
from typing import cast

import pytest

from edge_agent.agent import sink_with_upload
from edge_agent.config.budget import ScheduleWindow, ShareConfig
from edge_agent.delivery.budget import BacklogHeld, BudgetShare, UploadBudget, active_window
from edge_agent.runtime_status import ForwarderSnapshot
from tests.support import wait_until


def at(hour: int, minute: int, weekday: int = 0) -> time.struct_time:
    """A local time on a Monday (weekday 0) unless told otherwise."""
    return time.struct_time((2026, 11, 23 + weekday, hour, minute, 0, weekday, 327, 0))


NIGHT = ScheduleWindow("00:00", "06:00", "allow")
DAY_PAUSE = ScheduleWindow("06:00", "00:00", "pause")  # runs up to midnight


def test_windows_match_local_time_including_past_midnight_and_by_day() -> None:
    late = ScheduleWindow("22:00", "02:00", "cap", 1000.0, frozenset({4}))  # Friday nights
    assert active_window((late,), at(23, 0, weekday=4)) is late
    assert active_window((late,), at(1, 59, weekday=5)) is late  # Saturday, from Friday
    assert active_window((late,), at(2, 0, weekday=5)) is None
    assert active_window((late,), at(23, 0, weekday=3)) is None
    schedule = (NIGHT, DAY_PAUSE)
    assert active_window(schedule, at(5, 59)) is NIGHT
    assert active_window(schedule, at(6, 0)) is DAY_PAUSE
    assert active_window(schedule, at(23, 59)) is DAY_PAUSE
    assert active_window((), at(12, 0)) is None


def test_a_scheduled_pause_holds_a_sink_until_its_window_ends() -> None:
    now = [at(12, 0)]
    budget = UploadBudget(None, 1024, local_time=lambda: now[0])
    share = budget.share("video", ShareConfig(priority=10, schedule=(NIGHT, DAY_PAUSE)))
    stop = threading.Event()
    done = threading.Event()

    def send() -> None:
        if share.acquire(100, stop):
            done.set()

    threading.Thread(target=send, daemon=True).start()
    assert not done.wait(0.3)
    snapshot = share.snapshot()
    assert snapshot["scheduled"] == "paused by the schedule until 00:00"
    assert snapshot["paused"] is True
    now[0] = at(0, 30)  # the night window: uploads allowed
    assert done.wait(3)
    assert share.admitted_bytes == 100


def test_a_higher_priority_goes_first_when_the_budget_is_short() -> None:
    budget = UploadBudget(10_000, 1024)  # 10 kB/s, a 1 KiB allowance
    telemetry = budget.share("telemetry", ShareConfig(priority=0))
    video = budget.share("video", ShareConfig(priority=10))
    stop = threading.Event()
    assert video.acquire(5000, stop)  # the bucket now owes 4 KB: about 0.4 s
    order: list[str] = []

    def send(share: BudgetShare, name: str) -> None:
        if share.acquire(1000, stop):
            order.append(name)

    threads = [
        threading.Thread(target=send, args=(video, "video")),
        threading.Thread(target=send, args=(telemetry, "t")),
    ]
    threads[0].start()
    wait_until(lambda: budget._waiting[10] == 1, 5, 0.005, "video waiting")
    threads[1].start()
    for thread in threads:
        thread.join(10)
    assert order == ["t", "video"]


def test_a_sinks_cap_and_a_capping_window_limit_it_below_the_budget() -> None:
    now = [at(12, 0)]
    budget = UploadBudget(None, 1024, local_time=lambda: now[0])
    capped = ScheduleWindow("08:00", "18:00", "cap", 20_000.0)
    share = budget.share("video", ShareConfig(max_rate=50_000.0, schedule=(capped,)))
    stop = threading.Event()

    def seconds_for(total: int) -> float:
        started = time.monotonic()
        for _ in range(total // 1000):
            assert share.acquire(1000, stop)
        return time.monotonic() - started

    assert share.acquire(5_000, stop)  # the share's allowance: a quarter second of its cap
    assert 0.9 <= seconds_for(20_000) <= 1.2  # the window's 20 kB/s
    now[0] = at(19, 0)  # after the window: the sink's own 50 kB/s
    assert 0.35 <= seconds_for(20_000) <= 0.55


def test_a_reload_changes_a_lane_in_place() -> None:
    budget = UploadBudget(None, 1024)
    share = budget.share("video", ShareConfig(priority=10))
    again = budget.share("video", ShareConfig(priority=3, max_rate=1e6))
    assert again is share and share.share.priority == 3
    assert budget.share_snapshot("video") == {
        "priority": 3, "max_rate": 1e6, "scheduled": "", "paused": False, "admitted_bytes": 0,
    }  # fmt: skip


def test_a_backlog_window_holds_only_a_live_first_sinks_backlog() -> None:
    """Video backlog only at night, live video always: the backlog's budget refuses in
    the day (the sink ends its backlog session), the live budget admits at once."""
    backlog_by_day = ScheduleWindow("06:00", "00:00", "pause", traffic="backlog")
    now = [at(12, 0)]
    budget = UploadBudget(None, 1024, local_time=lambda: now[0])
    share = budget.share("video", ShareConfig(priority=10, schedule=(backlog_by_day,)))
    stop = threading.Event()
    assert share.acquire(100, stop)  # live
    assert share.backlog_held() == "paused by the schedule until 00:00"
    with pytest.raises(BacklogHeld, match="until 00:00"):
        share.backlog().acquire(100, stop)
    snapshot = share.snapshot()
    assert snapshot["scheduled"] == "backlog paused by the schedule until 00:00"
    assert snapshot["paused"] is False
    now[0] = at(0, 30)
    assert share.backlog_held() == "" and share.backlog().acquire(100, stop)
    assert share.admitted_bytes == 200 and share.snapshot()["scheduled"] == ""


def test_a_sink_paused_by_its_schedule_says_so_in_status() -> None:
    now = [at(12, 0)]
    budget = UploadBudget(None, 1024, local_time=lambda: now[0])
    budget.share("video", ShareConfig(priority=10, schedule=(NIGHT, DAY_PAUSE)))
    sending = cast(ForwarderSnapshot, {"state": "sending", "reason": ""})  # the keys it reads
    shown = sink_with_upload(sending, budget.share_snapshot("video"))
    assert (shown["state"], shown["reason"]) == (
        "paused by the schedule",
        "paused by the schedule until 00:00",
    )
    now[0] = at(1, 0)
    assert sink_with_upload(sending, budget.share_snapshot("video"))["state"] == "sending"
