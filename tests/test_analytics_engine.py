"""The analytics engine over a real spool, one pass at a time: what it does with queries
that fail, readings without a time, and a window that changed under the same name."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.analytics import engine, sharing
from edge_agent.analytics.drafts import SETTLE_MS, draft_at
from edge_agent.analytics.engine import Query
from edge_agent.analytics.id_bounds import IdBounds
from edge_agent.analytics.query import QueryResult
from edge_agent.analytics.sharing import SharedQueue
from edge_agent.analytics.threads import NICENESS, lower_priority
from edge_agent.config.loading import parse_config
from edge_agent.records import Record
from edge_agent.spool import analytics as stored
from edge_agent.spool.caps import QueuePolicy
from edge_agent.spool.store import Spool

BASE_MS = 1_700_000_000_000


def make_query(spool: Spool, sql: str, **options: object) -> Query:
    section = {
        "topics": ["sensors/#"],
        "window": "tumbling",
        "size": "10s",
        "event_time": "$.ts",
        "sql": sql,
        "sinks": ["out"],
        **options,
    }
    config = parse_config(
        {
            "sinks": {"out": {"type": "hold"}},
            "mqtt": {"subscriptions": [{"topic": "x", "sinks": ["out"]}]},
            "analytics": {"q": section},
        }
    )
    return Query(config.analytics["q"], spool)


def readings(spool: Spool, times: list[int], payload: str = '{{"v": 1, "ts": {ts}}}') -> None:
    spool.append(
        [
            Record(
                "analytics:sensors/#",
                "sensors/a",
                ts,
                payload.format(ts=ts).encode(),
                '{"topic": "a"}',
            )
            for ts in times
        ]
    )


def results(spool: Spool) -> list[int]:
    """The ``n`` of each result record, in order."""
    with sqlite3.connect(spool.path) as conn:
        rows = conn.execute(
            "SELECT r.payload FROM records r JOIN queues q ON q.id = r.queue_id"
            " WHERE q.name = 'out' ORDER BY r.id"
        ).fetchall()
    return [json.loads(payload)["n"] for (payload,) in rows]


def marks(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT window_id, rows FROM analytics_windows ORDER BY start_ms"
        ).fetchall()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool.open(tmp_path / "spool.db") as opened:
        yield opened


def test_a_window_that_keeps_failing_is_skipped_and_the_next_ones_go_on(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "RETRY_FAILED_S", 0.0)
    # p = 200 on the first window's readings only: the same rows fail the same way.
    sql = (
        "SELECT percentile(json_extract(payload, '$.v'),"
        " CASE WHEN time_ms < {} THEN 200 ELSE 50 END) AS p FROM input"
    )
    query = make_query(spool, sql.format(BASE_MS + 10_000))
    readings(spool, [BASE_MS + 1_000, BASE_MS + 11_000, BASE_MS + 21_000])
    now = BASE_MS + 60_000
    for _ in range(engine.MAX_WINDOW_FAILURES - 1):
        assert query.step(now) == 0
    assert query.stats.failures == engine.MAX_WINDOW_FAILURES - 1
    assert "p must be a number from 0 to 100" in query.stats.last_error
    query.step(now)  # the failing window skipped, the next two emitted
    assert (query.stats.skipped, query.stats.emitted) == (1, 2)
    assert marks(spool.path) == [
        (f"q@{BASE_MS}", -1),
        (f"q@{BASE_MS + 10_000}", 1),
        (f"q@{BASE_MS + 20_000}", 1),
    ]
    query.close()


def test_a_column_named_like_the_windows_fields_fails_with_its_name(spool: Spool) -> None:
    query = make_query(spool, "SELECT count(*) AS window_id FROM input")
    readings(spool, [BASE_MS + 1_000])
    assert query.step(BASE_MS + 60_000) == 0
    assert "result columns window_id are the names every result record gives" in (
        query.stats.last_error
    )
    query.close()


def test_readings_without_an_event_time_are_counted(spool: Spool) -> None:
    query = make_query(spool, "SELECT count(*) AS n FROM input")
    readings(spool, [BASE_MS + 1_000, BASE_MS + 2_000])
    readings(spool, [BASE_MS + 3_000], payload='{{"v": 1, "when": {ts}}}')
    readings(spool, [BASE_MS + 4_000], payload="not json {ts}")
    query.step(BASE_MS + 60_000)
    assert query.stats.emitted == 1
    assert query.stats.untimed == 2
    with sqlite3.connect(spool.path) as conn:
        (payload,) = conn.execute(
            "SELECT payload FROM records r JOIN queues q ON q.id = r.queue_id WHERE q.name = 'out'"
        ).fetchone()
    assert json.loads(payload)["n"] == 2
    query.close()


def test_a_query_whose_window_changed_starts_its_windows_afresh(spool: Spool) -> None:
    query = make_query(spool, "SELECT count(*) AS n FROM input")
    readings(spool, [BASE_MS + 1_000])
    query.step(BASE_MS + 60_000)
    assert query.stats.emitted == 1
    query.close()
    same = make_query(spool, "SELECT count(*) AS n FROM input")
    assert same.state.closed_through_ms is not None, "the same window resumes"
    same.close()
    changed = make_query(spool, "SELECT count(*) AS n FROM input", size="20s")
    assert changed.state.closed_through_ms is None and changed.stats.emitted == 1
    changed.close()


def test_queries_over_the_same_topics_share_their_readings_until_both_are_done(
    spool: Spool,
) -> None:
    sql = "SELECT count(*) AS n FROM input"
    alone = make_query(spool, sql)
    alone.close()
    shared = SharedQueue(["q", "q2"])
    first = Query(alone.config, spool, shared)
    second_config = replace(first.config, name="q2", size_ms=20_000)
    assert second_config.queue == first.config.queue == "analytics:sensors/#"
    readings(spool, [BASE_MS + 1_000, BASE_MS + 12_000])

    def left() -> int:
        return spool.pending(first.config.queue)[0]

    first.step(BASE_MS + 60_000)
    assert first.stats.emitted == 2 and left() == 2, "q2 has not said what it needs"
    second = Query(second_config, spool, shared)
    first.step(BASE_MS + 60_000)  # nothing due for q: q2's needs are known now
    assert left() == 2, "q2 still needs both readings"
    second.step(BASE_MS + 60_000)
    assert second.stats.emitted == 1 and left() == 0, "both done: the readings go"
    first.close()
    second.close()


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.one_of(st.none(), st.integers(0, 50)), max_size=40),
    keeps=st.lists(st.tuples(st.integers(-1, 60), st.integers(0, 45)), min_size=1, max_size=6),
)
def test_a_deletion_that_knows_what_was_freed_deletes_what_a_whole_one_would(
    times: list[int | None], keeps: list[tuple[int, int]]
) -> None:
    """Only the difference to what earlier deletions freed is looked at, and the rows
    left are always those a deletion over the whole queue would leave, whichever way
    either bound moves (rows without a time go by id alone)."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, queue_id INTEGER, t INTEGER)")
    conn.executemany("INSERT INTO records VALUES (?, 1, ?)", enumerate(times, start=1))
    expected = set(enumerate(times, start=1))
    freed: tuple[int, int] | None = None
    for before_ms, through_id in keeps:
        consume = stored.Consume("q", "t", before_ms, through_id, freed)
        where, params = stored.consumed_where(consume)
        conn.execute(f"DELETE FROM records WHERE queue_id = 1 AND {where}", params)
        expected = {
            (rid, t)
            for rid, t in expected
            if not (rid <= through_id and (t is None or t < before_ms))
        }
        assert set(conn.execute("SELECT id, t FROM records")) == expected
        freed = (before_ms, through_id)


def counting_runs(query: Query) -> list[int]:
    """The query's runs of its SQL, counted."""
    runs: list[int] = []
    run = query._runner.run

    def counted(*args: Any, **kwargs: Any) -> QueryResult:
        runs.append(1)
        return run(*args, **kwargs)

    query._runner.run = counted  # type: ignore[method-assign]
    return runs


@pytest.mark.parametrize("change", ["nothing", "a reading in grace", "readings taken by max_age"])
def test_a_window_drafted_in_its_grace_is_emitted_at_the_close_if_it_stands(
    spool: Spool, change: str
) -> None:
    """Drafted over what came so far, emitted without a second run if nothing changed;
    a reading that came since, or readings a cap or max_age took, make it run again."""
    query = make_query(spool, "SELECT count(*) AS n FROM input", grace="5s")
    readings(spool, [BASE_MS + 1_000, BASE_MS + 12_000])
    # Event time 13 s, captured now: max_age leaves it.
    recent = Record(
        query.config.queue, "a", int(time.time() * 1000), b'{"ts": %d}' % (BASE_MS + 13_000)
    )
    spool.append([recent])
    query.step(BASE_MS + 15_000)  # [0, 10 s) closes
    runs = counting_runs(query)
    query.step(BASE_MS + 24_600)  # [10 s, 20 s) drafted over two readings
    assert len(runs) == 1
    expected, runs_at_close = 2, 1
    if change == "a reading in grace":
        readings(spool, [BASE_MS + 19_000])
        expected, runs_at_close = 3, 2
    elif change == "readings taken by max_age":
        policy = QueuePolicy(max_age_s=60)  # the readings are from 2023
        spool.configure(
            durability="full",
            policies={query.config.queue: policy},
            max_bytes=None,
            max_age_s=None,
            reserve=0,
        )
        assert spool.expire() == 1  # the reading of 12 s
        expected, runs_at_close = 1, 2
    query.step(BASE_MS + 25_000)
    assert len(runs) == runs_at_close
    assert results(spool) == [1, expected]
    query.close()


def test_a_time_window_query_wakes_for_its_draft_and_its_close(spool: Spool) -> None:
    query = make_query(spool, "SELECT count(*) AS n FROM input", grace="5s")
    assert query.due_in_s(BASE_MS) == engine.PASS_S  # nothing known yet
    readings(spool, [BASE_MS + 1_000, BASE_MS + 12_000])
    query.step(BASE_MS + 15_000)  # [0, 10 s) closes; [10 s, 20 s) is next
    query.stats.max_run_seconds = 1.0
    # Drafted 1.5 runs and a pass (2 s) before its close, closed 5 s after its end.
    assert query.due_in_s(BASE_MS + 22_800) == pytest.approx(0.2)
    assert query.due_in_s(BASE_MS + 24_700) == pytest.approx(0.3)
    assert query.due_in_s(BASE_MS + 25_000) == engine.PASS_S  # both past: the next pass
    query.close()


def test_a_query_thread_runs_nicer_than_the_agent() -> None:
    """Intake comes first when the cores are busy (Linux sets a thread's own nice)."""
    seen: list[int] = []

    def thread() -> None:
        lower_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    runner = threading.Thread(target=thread)
    runner.start()
    runner.join(10)
    agent = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(19, agent + NICENESS)]


def test_a_filter_sees_readings_after_everything_before_was_delivered(spool: Spool) -> None:
    """Its position is the last reading's id; once every record the spool held was
    delivered, a new reading still gets a higher id than any given before."""
    query = make_query(spool, "SELECT json_extract(payload, '$.ts') AS n FROM input", window="none")
    readings(spool, [BASE_MS + 1, BASE_MS + 2])
    query.step(BASE_MS + 10_000)
    spool.ack(spool.lease("out", max_records=9, max_bytes=9_999))
    assert spool.pending("out") == (0, 0) and spool.pending(query.config.queue) == (0, 0)
    readings(spool, [BASE_MS + 3])
    query.step(BASE_MS + 20_000)
    assert results(spool) == [BASE_MS + 3]
    query.close()


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.one_of(st.none(), st.integers(0, 100)), min_size=1, max_size=60),
    cuts=st.lists(st.integers(1, 60), max_size=8),
    starts=st.lists(st.integers(-5, 105), min_size=1, max_size=10),
)
def test_id_bounds_never_cut_off_a_reading_of_a_window(
    times: list[int | None], cuts: list[int], starts: list[int]
) -> None:
    """Whatever order the times come in and however the passes fall: no reading at or
    below ``below(start)`` is at or after ``start``; with times in order, the bound is
    the last such id a pass saw."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, queue_id INTEGER, t INTEGER)")
    conn.executemany("INSERT INTO records VALUES (?, 1, ?)", enumerate(times, start=1))
    conn.execute("INSERT INTO records VALUES (1000, 2, 999)")  # another queue's
    bounds = IdBounds(1, "t")
    passes = sorted({min(cut, len(times)) for cut in cuts} | {len(times)})
    for newest in passes:
        bounds.learn(conn, newest)
    in_order = None not in times and times == sorted(times)  # type: ignore[type-var]
    for start in starts:
        below = bounds.below(start)
        assert all(t is None or t < start for t in times[:below])
        if in_order:
            seen = [n for n in passes if times[n - 1] < start]  # type: ignore[operator]
            assert below == (seen[-1] if seen else 0)


def test_a_window_by_capture_time_is_drafted_as_soon_as_its_readings_are_in() -> None:
    """No reading comes for it after its end; by event time one may, so the draft waits
    as long as the query's longest run allows."""
    assert draft_at(60_000, 5_000, 1.0, 0.5, by_event_time=False) == 60_000 + SETTLE_MS
    assert draft_at(60_000, 5_000, 1.0, 0.5, by_event_time=True) == 63_000
    assert draft_at(60_000, 5_000, 9.0, 0.5, by_event_time=True) == 60_000 + SETTLE_MS


def test_windows_take_turns_and_a_filter_does_not_wait_for_them(spool: Spool) -> None:
    turns, shared = threading.Lock(), SharedQueue(["q", "alerts"])
    window = make_query(spool, "SELECT count(*) AS n FROM input")
    window.close()
    windowed = Query(window.config, spool, shared, turns)
    alerts = make_query(spool, "SELECT 1 AS n FROM input", window="none")
    alerts.close()
    filtering = Query(replace(alerts.config, name="alerts"), spool, shared, turns)
    readings(spool, [BASE_MS + 1_000])
    with turns:  # another query's window is running
        assert filtering.step(BASE_MS + 60_000) == 1, "a filter's batch goes on"
        stepping = threading.Thread(target=windowed.step, args=(BASE_MS + 60_000,))
        stepping.start()
        stepping.join(0.5)
        assert stepping.is_alive() and windowed.stats.emitted == 0, "the window waits its turn"
    stepping.join(10)
    assert windowed.stats.emitted == 1
    windowed.close()
    filtering.close()


def test_readings_no_window_needs_are_deleted_a_range_at_a_time(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the window's commit, in transactions of DELETE_IDS ids: intake never waits
    for a whole minute of readings to be deleted."""
    monkeypatch.setattr(sharing, "DELETE_IDS", 3)
    query = make_query(spool, "SELECT count(*) AS n FROM input")
    readings(spool, [BASE_MS + t for t in range(100, 1_100, 100)])  # 10 in [0, 10 s)
    spans: list[tuple[int, int] | None] = []
    deletion = stored.deletion

    def counted(consume: stored.Consume) -> Any:
        spans.append(consume.ids)
        return deletion(consume)

    monkeypatch.setattr(stored, "deletion", counted)
    query.step(BASE_MS + 60_000)
    assert results(spool) == [10]
    assert spool.pending(query.config.queue) == (0, 0)
    assert spans == [(0, 3), (3, 6), (6, 9), (9, 10)], "a transaction per range of ids"
    query.close()
