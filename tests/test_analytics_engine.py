"""The analytics engine over a real spool, one pass at a time: what it does with queries
that fail, readings without a time, and a window that changed under the same name."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from edge_agent.analytics import engine
from edge_agent.analytics.engine import Query, SharedQueue
from edge_agent.config.loading import parse_config
from edge_agent.records import Record
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
