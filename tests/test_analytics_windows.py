"""Window arithmetic: membership, what is due when, exactly once across any spacing of
calls and restarts, grace, late readings, sessions, count windows and retention."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.analytics.windows import (
    EARLIEST,
    LATEST,
    MAX_DUE_WINDOWS,
    Keep,
    Window,
    WindowSpec,
    WindowState,
    advance,
    due_windows,
    is_late,
    keep_from,
    late_windows,
    open_from_ms,
    skip_empty,
    window_id,
    windows_of,
)

#: Around 2023-11, to keep the arithmetic honest with epoch-sized numbers.
T0 = 1_700_000_000_000


@st.composite
def fixed_specs(draw: st.DrawFn) -> WindowSpec:
    """Tumbling, hopping and sliding windows, sizes not multiples of one another."""
    kind = draw(st.sampled_from(["tumbling", "hopping", "sliding"]))
    size = draw(st.integers(1, 60))
    grace = draw(st.integers(0, 30))
    if kind == "hopping":
        return WindowSpec(
            "hopping", size_ms=size, hop_ms=draw(st.integers(1, size)), grace_ms=grace
        )
    if kind == "sliding":
        return WindowSpec(
            "sliding", size_ms=size, period_ms=draw(st.integers(1, 80)), grace_ms=grace
        )
    return WindowSpec("tumbling", size_ms=size, grace_ms=grace)


def reference_windows(spec: WindowSpec, lo: int, hi: int) -> list[Window]:
    """Every window whose start lies in [lo, hi), by the definitions of each kind."""
    if spec.kind == "sliding":  # [t - size, t) for t a multiple of the period
        ends = range(lo + spec.size_ms, hi + spec.size_ms)
        return [Window(e - spec.size_ms, e) for e in ends if e % spec.period_ms == 0]
    step = spec.size_ms if spec.kind == "tumbling" else spec.hop_ms
    return [Window(s, s + spec.size_ms) for s in range(lo, hi) if s % step == 0]


@given(fixed_specs(), st.integers(-1000, 1000))
def test_a_reading_is_in_exactly_the_windows_windows_of_names(spec: WindowSpec, t: int) -> None:
    time_ms = T0 + t
    nearby = reference_windows(spec, time_ms - 200, time_ms + 200)
    assert windows_of(spec, time_ms) == [w for w in nearby if time_ms in w]


def test_a_reading_at_a_windows_end_belongs_to_the_next_tumbling_window() -> None:
    spec = WindowSpec("tumbling", size_ms=1000)
    assert windows_of(spec, 2000) == [Window(2000, 3000)]
    assert windows_of(spec, 1999) == [Window(1000, 2000)]
    assert windows_of(spec, -1) == [Window(-1000, 0)]


def test_hopping_windows_start_at_multiples_of_the_hop_even_when_size_is_not_one() -> None:
    spec = WindowSpec("hopping", size_ms=25, hop_ms=10)
    assert windows_of(spec, 30) == [Window(10, 35), Window(20, 45), Window(30, 55)]


def test_sliding_windows_end_on_the_period_and_a_gap_between_them_holds_nothing() -> None:
    spec = WindowSpec("sliding", size_ms=5, period_ms=10)
    assert windows_of(spec, 17) == [Window(15, 20)]
    assert windows_of(spec, 12) == []


def test_windows_that_depend_on_the_readings_are_not_fixed_in_time() -> None:
    for spec in (
        WindowSpec("session", gap_ms=10),
        WindowSpec("count", count=3),
        WindowSpec("none"),
        WindowSpec("sliding", size_ms=10),
    ):
        with pytest.raises(ValueError, match="not fixed in time"):
            windows_of(spec, 5)


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "tumbling"},
        {"kind": "hopping", "size_ms": 10, "hop_ms": 11},
        {"kind": "hopping", "size_ms": 10},
        {"kind": "session"},
        {"kind": "count"},
        {"kind": "tumbling", "size_ms": 10, "grace_ms": -1},
        {"kind": "hopping", "size_ms": 100_000, "hop_ms": 1},
        {"kind": "weekly", "size_ms": 10},
    ],
)
def test_a_spec_a_window_cannot_have_is_refused(spec: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        WindowSpec(**spec)  # type: ignore[arg-type]


def test_windows_order_by_end_then_start() -> None:
    assert sorted([Window(5, 20), Window(0, 20), Window(10, 15)]) == [
        Window(10, 15),
        Window(0, 20),
        Window(5, 20),
    ]
    assert Window(0, 10) <= Window(0, 10) < Window(0, 11)


def test_window_ids_are_unique_per_query_and_name_the_window() -> None:
    hopping = WindowSpec("hopping", size_ms=30, hop_ms=10)
    windows = [w for t in range(0, 100) for w in windows_of(hopping, t)]
    ids = {window_id("q", hopping, w) for w in windows}
    assert len(ids) == len(set(windows))
    assert window_id("q", hopping, Window(10, 40)) == "q@10-40"
    assert window_id("q", WindowSpec("tumbling", size_ms=10), Window(10, 20)) == "q@10"
    assert window_id("q", WindowSpec("count", count=2), Window(3, 9, 4, 6)) == "q#6"


# -- due, emitted once, in order -------------------------------------------------------


class Engine:
    """What the engine does with this module, as little as it can: raw rows as
    (id, time, arrival), a persisted state and nothing else, retention after each pass."""

    def __init__(self, spec: WindowSpec, limit: int = MAX_DUE_WINDOWS) -> None:
        self.spec = spec
        self.limit = limit
        self.state = WindowState()
        self.rows: dict[int, int] = {}  # id -> time
        self.emitted: list[tuple[Window, list[int]]] = []  # with the ids of its rows

    def restart(self) -> None:
        """Only the persisted state survives."""
        self.state = WindowState(**asdict(self.state))

    def arrive(self, row_id: int, time_ms: int) -> None:
        self.rows[row_id] = time_ms

    def run(self, now_ms: int) -> list[Window]:
        """One pass: everything due, in calls of at most ``limit`` windows."""
        passed: list[Window] = []
        while True:
            spec, state = self.spec, self.state
            start = open_from_ms(spec, state)
            waiting = sorted((i, t) for i, t in self.rows.items() if start is None or t >= start)
            oldest = min((t for _, t in waiting), default=None)
            state = self.state = skip_empty(spec, state, now_ms, oldest_time_ms=oldest)
            pending = [(i, t) for i, t in waiting if i > state.last_id or spec.kind == "session"]
            due = due_windows(
                spec, state, now_ms, oldest_time_ms=oldest, pending=pending, limit=self.limit
            )
            assert len(due) <= self.limit
            for window in due:
                ids = self._evaluate(window)
                if ids:  # an empty window emits nothing
                    self.emitted.append((window, ids))
                self.state = advance(spec, self.state, window)
            passed += due
            self._retain()
            if len(due) < self.limit:
                return passed

    def _evaluate(self, window: Window) -> list[int]:
        if window.until_id is not None:
            after = window.after_id
            assert after is not None
            return sorted(i for i in self.rows if after < i <= window.until_id)
        return sorted(i for i, t in self.rows.items() if t in window)

    def _retain(self) -> None:
        keep = keep_from(self.spec, self.state)
        for i, t in list(self.rows.items()):
            if t < keep.before_ms and i <= keep.through_id:
                del self.rows[i]


@st.composite
def arrivals(draw: st.DrawFn, spec: WindowSpec) -> list[tuple[int, int]]:
    """(time, arrival) of readings, each arriving before its first window closes (so
    none is late, whatever the spacing of the passes), in arrival order."""
    times = draw(st.lists(st.integers(0, 400), max_size=40))
    readings = []
    for t in (T0 + t for t in times):
        first_end = min((w.end_ms for w in windows_of(spec, t)), default=t)
        delay = draw(st.integers(0, max(0, first_end + spec.grace_ms - 1 - t)))
        readings.append((t, t + delay))
    return sorted(readings, key=lambda reading: reading[1])


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_each_window_with_readings_is_emitted_once_in_order_however_the_passes_are_spaced(
    data: st.DataObject,
) -> None:
    spec = data.draw(fixed_specs())
    readings = data.draw(arrivals(spec))
    passes = sorted(data.draw(st.lists(st.integers(0, 600), max_size=30)))
    restarts = data.draw(st.sets(st.integers(0, 30)))
    engine = Engine(spec, limit=data.draw(st.sampled_from([1, 3, MAX_DUE_WINDOWS])))
    queue = list(enumerate(readings, start=1))
    for n, now in enumerate([*(T0 + p for p in passes), T0 + 10_000]):
        while queue and queue[0][1][1] <= now:
            row_id, (time_ms, _) = queue.pop(0)
            engine.arrive(row_id, time_ms)
        if n in restarts:
            engine.restart()
        for window in engine.run(now):
            assert now >= window.end_ms + spec.grace_ms
    windows = [w for w, _ in engine.emitted]
    assert windows == sorted(set(windows))
    expected = sorted({w for t, _ in readings for w in windows_of(spec, t)})
    assert windows == expected
    # Retention kept every row each window needed: each holds all of its readings.
    ids_by_time = {row_id: t for row_id, (t, _) in enumerate(readings, start=1)}
    for window, ids in engine.emitted:
        assert ids == [i for i, t in sorted(ids_by_time.items()) if t in window]


def test_a_window_is_not_due_before_its_end_plus_grace() -> None:
    spec = WindowSpec("tumbling", size_ms=1000, grace_ms=300)
    state = WindowState()
    assert due_windows(spec, state, 1299, oldest_time_ms=500) == []
    assert due_windows(spec, state, 1300, oldest_time_ms=500) == [Window(0, 1000)]


def test_no_readings_no_windows_and_a_gap_without_readings_costs_nothing() -> None:
    spec = WindowSpec("tumbling", size_ms=1000)
    state = WindowState(closed_through_ms=1000)
    assert due_windows(spec, state, 10_000_000) == []
    due = due_windows(spec, state, 9_002_999, oldest_time_ms=9_000_500)
    assert due == [Window(9_000_000, 9_001_000), Window(9_001_000, 9_002_000)]


def test_a_day_down_is_emitted_a_bounded_number_of_windows_a_call() -> None:
    spec = WindowSpec("tumbling", size_ms=1000)
    state = WindowState(closed_through_ms=T0)
    now = T0 + 86_400_000
    calls = 0
    emitted = 0
    while due := due_windows(spec, state, now, oldest_time_ms=T0):
        assert len(due) <= MAX_DUE_WINDOWS
        state = advance(spec, state, due[-1])
        calls += 1
        emitted += len(due)
    assert (calls, emitted) == (87, 86_400)


def test_an_idle_query_closes_its_empty_windows_and_a_reading_for_one_is_late() -> None:
    spec = WindowSpec("tumbling", size_ms=1000, grace_ms=200)
    state = skip_empty(spec, WindowState(), T0 + 5_100, oldest_time_ms=None)
    assert state.closed_through_ms == T0 + 4_000
    assert is_late(spec, state, T0 + 3_999)
    assert not is_late(spec, state, T0 + 4_000)
    # A reading waiting keeps its window open, however long ago it was.
    held = skip_empty(spec, WindowState(), T0 + 5_100, oldest_time_ms=T0 + 2_500)
    assert held.closed_through_ms == T0 + 2_000


def test_late_readings_name_the_closed_windows_that_may_still_be_revised() -> None:
    spec = WindowSpec("hopping", size_ms=30, hop_ms=10)
    state = WindowState(closed_through_ms=100)
    assert is_late(spec, state, 75)  # [50, 80) is closed; [80, 110) is still open
    assert is_late(spec, state, 99)  # [70, 100)
    assert not is_late(spec, state, 100)
    assert late_windows(spec, state, [75, 99, 100], revise_ms=1000) == [
        Window(50, 80),
        Window(60, 90),
        Window(70, 100),
    ]
    # Only for revise_ms after their close; older ones are counted, not revised.
    assert late_windows(spec, state, [75], revise_ms=15) == [Window(60, 90), Window(70, 100)]
    assert late_windows(spec, state, [75], revise_ms=0) == []
    # Their raw rows are kept that long.
    assert keep_from(spec, state, revise_ms=15) == Keep(60, LATEST)
    assert keep_from(spec, state) == Keep(80, LATEST)


@given(fixed_specs(), st.integers(0, 500), st.integers(0, 500), st.lists(st.integers(0, 600)))
def test_rows_kept_cover_every_window_that_may_still_be_revised(
    spec: WindowSpec, closed: int, revise: int, times: list[int]
) -> None:
    state = WindowState(closed_through_ms=closed)
    keep = keep_from(spec, state, revise_ms=revise)
    for window in late_windows(spec, state, times, revise_ms=revise):
        assert keep.before_ms <= window.start_ms
        assert closed - revise < window.end_ms <= closed
    for t in times:
        if not is_late(spec, state, t):
            assert all(w.end_ms > closed for w in windows_of(spec, t))


# -- sessions ---------------------------------------------------------------------------


def sessions_by_definition(times: list[int], gap: int, max_size: int) -> list[Window]:
    sessions: list[Window] = []
    start = last = None
    for t in sorted(times):
        if start is not None and last is not None:
            if t - last < gap and not (max_size and t - start >= max_size):
                last = t
                continue
            sessions.append(Window(start, last + 1))
        start = last = t
    return sessions if start is None or last is None else [*sessions, Window(start, last + 1)]


session_specs = st.builds(
    WindowSpec,
    st.just("session"),
    gap_ms=st.integers(1, 40),
    size_ms=st.sampled_from([0, 25, 60]),  # the maximum; 0: none
    grace_ms=st.integers(0, 20),
)


@given(
    session_specs,
    st.lists(st.integers(0, 500), max_size=40),
    st.lists(st.integers(0, 700), max_size=30),
    st.sampled_from([1, 2, MAX_DUE_WINDOWS]),
)
@settings(max_examples=300, deadline=None)
def test_sessions_split_at_gaps_and_close_only_after_gap_and_grace_of_silence(
    spec: WindowSpec, times: list[int], passes: list[int], limit: int
) -> None:
    gap, max_size, grace = spec.gap_ms, spec.size_ms, spec.grace_ms
    engine = Engine(spec, limit=limit)
    queue = list(enumerate(sorted(T0 + t for t in times), start=1))  # arriving in time order
    for now in [*(T0 + p for p in sorted(passes)), T0 + 10_000]:
        while queue and queue[0][1] <= now:
            engine.arrive(*queue.pop(0))
        for window in engine.run(now):
            close = window.end_ms - 1 + gap
            if max_size:
                close = min(close, window.start_ms + max_size)
            assert now >= close + grace
            # No reading came within the gap after the session's last one.
            assert all(not window.end_ms <= t < close for t in engine.rows.values())
    assert [w for w, _ in engine.emitted] == sessions_by_definition(
        [T0 + t for t in times], gap, max_size
    )
    assert sum(len(ids) for _, ids in engine.emitted) == len(times)


def test_a_reading_before_the_last_closed_session_is_late() -> None:
    spec = WindowSpec("session", gap_ms=100)
    state = advance(spec, WindowState(), Window(1000, 1051))
    assert state.closed_through_ms == 1150
    assert is_late(spec, state, 1149)
    assert not is_late(spec, state, 1150)
    assert open_from_ms(spec, state) == 1150
    assert keep_from(spec, state) == Keep(1150, LATEST)
    assert late_windows(spec, state, [1100], revise_ms=10_000) == []


# -- windows of readings by id ------------------------------------------------------------


@given(
    st.lists(st.integers(0, 1000), max_size=60),
    st.integers(1, 7),
    st.lists(st.integers(0, 60), max_size=20),
    st.sampled_from([1, 2, MAX_DUE_WINDOWS]),
)
@settings(deadline=None)
def test_count_windows_hold_exactly_n_readings_each_and_the_rest_waits(
    times: list[int], n: int, cuts: list[int], limit: int
) -> None:
    spec = WindowSpec("count", count=n)
    engine = Engine(spec, limit=limit)
    readings = list(enumerate(times, start=1))  # out of time order, in id order
    arrived = 0
    for cut in [*sorted(cuts), len(readings)]:
        for row_id, t in readings[arrived:cut]:
            engine.arrive(row_id, t)
        arrived = max(arrived, cut)
        engine.run(T0)
        engine.restart()
    groups = [ids for _, ids in engine.emitted]
    full = len(times) // n
    assert groups == [list(range(k * n + 1, (k + 1) * n + 1)) for k in range(full)]
    for window, ids in engine.emitted:
        assert window.start_ms == min(times[i - 1] for i in ids)
        assert window.end_ms == max(times[i - 1] for i in ids) + 1
    assert engine.state.last_id == full * n
    # Retention let go of exactly what was emitted.
    assert sorted(engine.rows) == list(range(full * n + 1, len(times) + 1))


def test_a_continuous_filter_covers_every_new_reading_once() -> None:
    spec = WindowSpec("none")
    state = WindowState()
    assert due_windows(spec, state, T0) == []
    (first,) = due_windows(spec, state, T0, pending=[(1, 50), (2, 40), (3, 70)])
    assert first == Window(40, 71, 0, 3)
    state = advance(spec, state, first)
    assert keep_from(spec, state) == Keep(LATEST, 3)
    assert due_windows(spec, state, T0, pending=[(3, 70)]) == []
    assert due_windows(spec, state, T0, pending=[(3, 70), (4, 10)]) == [Window(10, 11, 3, 4)]
    assert window_id("q", spec, first) == "q#3"


def test_sliding_on_change_emits_the_size_up_to_the_newest_reading_when_readings_came() -> None:
    spec = WindowSpec("sliding", size_ms=100)
    state = WindowState()
    assert keep_from(spec, state) == Keep(EARLIEST, LATEST)
    (first,) = due_windows(spec, state, T0, pending=[(1, 500), (2, 650)])
    assert first == Window(551, 651, 0, 2)
    state = advance(spec, state, first)
    assert due_windows(spec, state, T0, pending=[]) == []
    # A reading out of time order is a change too; the window never moves back.
    (second,) = due_windows(spec, state, T0, pending=[(3, 600)])
    assert second == Window(551, 651, 2, 3)
    assert window_id("q", spec, second) != window_id("q", spec, first)
    state = advance(spec, state, second)
    assert keep_from(spec, state) == Keep(551, 3)
    (third,) = due_windows(spec, state, T0, pending=[(4, 700)], newest_time_ms=900)
    assert third == Window(801, 901, 3, 4)
