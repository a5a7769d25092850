"""An analytics query's SQL over a window of its spooled readings (analytics/query.py):
the table ``input``, the window bounds, the aggregates SQLite lacks, what the SQL may not
do, and the work budget — against a real spool that intake keeps appending to."""

from __future__ import annotations

import base64
import json
import random
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy
import pytest

from edge_agent.analytics import aggregates
from edge_agent.analytics.aggregates import rewrite
from edge_agent.analytics.query import (
    NOT_A_SELECT,
    NOT_INPUT,
    ONE_STATEMENT,
    QueryRunner,
    check_query,
)
from edge_agent.config.analytics import DEFAULT_MAX_STEPS
from edge_agent.errors import QueryFailed, QueryOverBudget
from edge_agent.records import Record
from edge_agent.spool.store import Spool
from tests.support import sqlite_memory_used, wait_until

QUEUE = "analytics:q"
#: A query that would count for minutes: only its budget stops it.
RUNAWAY = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000)"
    " SELECT count(*) FROM c"
)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    opened = Spool.open(tmp_path / "spool.db")
    try:
        yield opened
    finally:
        opened.close()


MakeRunner = Callable[..., QueryRunner]


@pytest.fixture
def runner(spool: Spool) -> Iterator[MakeRunner]:
    """Makes runners over the spool's ``analytics:q`` queue; each is closed afterwards."""
    made: list[QueryRunner] = []

    def make(sql: str, **options: Any) -> QueryRunner:
        made.append(QueryRunner(spool.path, options.pop("queue", QUEUE), sql, **options))
        return made[-1]

    yield make
    for each in made:
        each.close()


def reading(
    captured_at_ms: int,
    payload: dict[str, Any] | bytes,
    *,
    key: str = "k",
    topic: str = "sensors/a/t",
    queue: str = QUEUE,
) -> Record:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Record(queue, key, captured_at_ms, data, meta=json.dumps({"topic": topic}))


def ids(spool: Spool, queue: str = QUEUE) -> list[int]:
    conn = sqlite3.connect(f"file:{spool.path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT r.id FROM records r JOIN queues q ON q.id = r.queue_id WHERE q.name = ?"
            " ORDER BY r.id",
            (queue,),
        )
        return [row[0] for row in rows]
    finally:
        conn.close()


SENSOR_READINGS = [
    ("a", 1), ("b", 10), ("c", 100), ("a", 3), ("b", 20), ("c", 300),
    ("a", 5), ("b", 30), ("c", 500), ("a", 7), ("b", 40), ("c", 700),
]  # fmt: skip


def sensors(spool: Spool) -> None:
    """Three sensors, four readings each, one a second from t = 1000 ms."""
    spool.append(
        [
            reading(1000 + 1000 * i, {"sensor": sensor, "value": value}, key=sensor)
            for i, (sensor, value) in enumerate(SENSOR_READINGS)
        ]
    )


# ---------------------------------------------------------------------- SQL over input


def test_group_by_over_json_payloads(spool: Spool, runner: MakeRunner) -> None:
    sensors(spool)
    query = runner(
        "SELECT json_extract(payload, '$.sensor') AS sensor,"
        " avg(json_extract(payload, '$.value')) AS mean, count(*) AS n"
        " FROM input GROUP BY sensor ORDER BY sensor"
    )
    result = query.run(None, None)
    assert result.columns == ("sensor", "mean", "n")
    assert result.rows == [("a", 4.0, 4), ("b", 25.0, 4), ("c", 400.0, 4)]
    assert result.seconds > 0 and result.input_rows is None


def test_order_by_limit_and_count_distinct(spool: Spool, runner: MakeRunner) -> None:
    sensors(spool)
    top = runner(
        "SELECT key, json_extract(payload, '$.value') AS v FROM input ORDER BY v DESC LIMIT 2"
    )
    assert top.run(None, None).rows == [("c", 700), ("c", 500)]
    distinct = runner("SELECT count(DISTINCT key), count(*) FROM input")
    counted = distinct.run(None, None, count_input=True)
    assert counted.columns == ("count(DISTINCT key)", "count(*)")
    assert (counted.rows, counted.input_rows) == ([(3, 12)], 12)


def test_input_has_the_readings_time_capture_time_topic_key_and_payload(
    spool: Spool, runner: MakeRunner
) -> None:
    spool.append([reading(1234, {"v": 1}, key="dev-7", topic="sensors/b/h")])
    query = runner("SELECT * FROM input")
    result = query.run(None, None)
    assert result.columns == ("time_ms", "captured_at_ms", "topic", "key", "payload")
    assert result.rows == [(1234, 1234, "sensors/b/h", "dev-7", '{"v": 1}')]


def test_window_start_is_inclusive_and_end_exclusive(spool: Spool, runner: MakeRunner) -> None:
    sensors(spool)  # readings at 1000, 2000, ... 12000
    query = runner("SELECT min(time_ms), max(time_ms), count(*) FROM input")
    assert query.run(3000, 6000).rows == [(3000, 5000, 3)]
    assert query.run(2999, 3001).rows == [(3000, 3000, 1)]
    assert query.run(None, 3000).rows == [(1000, 2000, 2)]
    assert query.run(11000, None).rows == [(11000, 12000, 2)]


def test_id_bounds_take_rows_after_one_id_up_to_another(spool: Spool, runner: MakeRunner) -> None:
    sensors(spool)
    spool.append([reading(500, {"value": 0}, queue="analytics:other")])  # another query's
    first, *_, last = ids(spool)
    query = runner("SELECT count(*), min(time_ms), max(time_ms) FROM input")
    assert query.run(None, None, after_id=first, until_id=first + 2).rows == [(2, 2000, 3000)]
    assert query.run(None, None, after_id=last - 1).rows == [(1, 12000, 12000)]
    assert query.run(None, None, until_id=first).rows == [(1, 1000, 1000)]
    assert query.run(2000, 4000, after_id=first + 1).rows == [(1, 3000, 3000)]


@pytest.mark.parametrize(
    ("unit", "stamps", "times"),
    [  # rounded to the nearest millisecond
        ("ms", [5_000, 5_999.6, 6_000, 4_999], [4_999, 5_000, 6_000, 6_000]),
        ("s", [5, 5.999, 6.0, 4.9994], [4_999, 5_000, 5_999, 6_000]),
    ],
)
def test_event_time_from_the_payload_places_readings_in_their_window(
    spool: Spool, runner: MakeRunner, unit: str, stamps: list[float], times: list[int]
) -> None:
    # Captured long after they happened: a broker held them through an outage.
    spool.append([reading(99_000 + i, {"ts": ts}) for i, ts in enumerate(stamps)])
    spool.append([reading(99_100, {"no": "time"}), reading(99_101, b"not json")])
    spool.append([reading(99_102, {"ts": "5000"})])  # a string is not a time
    query = runner(
        "SELECT time_ms, captured_at_ms FROM input ORDER BY time_ms",
        event_time="$.ts",
        event_time_unit=unit,
    )
    window = query.run(5_000, 6_000).rows
    assert [row[0] for row in window] == [t for t in times if 5_000 <= t < 6_000]
    everything = query.run(None, None).rows  # the readings without a time: in no window
    assert [row[0] for row in everything] == times
    assert all(isinstance(captured, int) and captured >= 99_000 for _, captured in everything)


def test_a_query_whose_queue_does_not_exist_yet_sees_no_rows_until_it_does(
    spool: Spool, runner: MakeRunner
) -> None:
    spool.append([reading(1000, {"v": 1}, queue="analytics:other")])
    query = runner("SELECT count(*), sum(json_extract(payload, '$.v')) FROM input")
    grouped = runner("SELECT key, count(*) FROM input GROUP BY key")
    assert query.run(None, None).rows == [(0, None)]
    assert grouped.run(None, None).rows == []
    spool.append([reading(2000, {"v": 2})])
    assert query.run(None, None).rows == [(1, 2)]


def test_an_empty_window_gives_nulls_and_no_groups(spool: Spool, runner: MakeRunner) -> None:
    sensors(spool)
    query = runner(
        "SELECT count(*), percentile(json_extract(payload, '$.value'), 50),"
        " median(json_extract(payload, '$.value')), stddev(json_extract(payload, '$.value')),"
        " var_pop(json_extract(payload, '$.value')) FROM input"
    )
    assert query.run(50_000, 60_000).rows == [(0, None, None, None, None)]
    assert runner("SELECT key FROM input GROUP BY key").run(50_000, 60_000).rows == []


def test_blobs_come_back_as_base64_and_bad_utf8_is_replaced(
    spool: Spool, runner: MakeRunner
) -> None:
    spool.append([reading(1000, b"\xff\xfeok")])
    query = runner("SELECT CAST(x'00ff10' AS BLOB), payload, 1.5, NULL FROM input")
    assert query.run(None, None).rows == [
        (base64.b64encode(b"\x00\xff\x10").decode(), "\ufffd\ufffdok", 1.5, None)
    ]


# ---------------------------------------------------------------------- aggregates


def test_aggregates_match_numpy_and_statistics(spool: Spool, runner: MakeRunner) -> None:
    rng = random.Random(7)
    values = [rng.gauss(1e6, 25.0) for _ in range(501)] + [3, 4.5]
    spool.append([reading(1000 + i, {"v": v}) for i, v in enumerate(values)])
    spool.append([reading(5000, {"other": 1}), reading(5001, {"v": None})])  # NULLs
    spool.append([reading(5002, {"v": "not a number"}), reading(5003, {"v": "12.5"})])
    values.append(12.5)  # a number in text is a number
    ps = [0, 1, 5, 25, 50, 62.5, 75, 95, 99, 100]
    query = runner(
        "SELECT "
        + ", ".join(f"percentile(json_extract(payload, '$.v'), {p})" for p in ps)
        + ", median(json_extract(payload, '$.v')), stddev(json_extract(payload, '$.v')),"
        " stddev_samp(json_extract(payload, '$.v')), stddev_pop(json_extract(payload, '$.v')),"
        " variance(json_extract(payload, '$.v')), var_samp(json_extract(payload, '$.v')),"
        " var_pop(json_extract(payload, '$.v')) FROM input"
    )
    (row,) = query.run(None, None).rows
    array = numpy.array(values)
    expected = [float(numpy.percentile(array, p)) for p in ps] + [
        statistics.median(values),
        statistics.stdev(values),
        statistics.stdev(values),
        statistics.pstdev(values),
        statistics.variance(values),
        statistics.variance(values),
        statistics.pvariance(values),
    ]
    assert list(row) == pytest.approx(expected, rel=1e-12)
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    assert [row[ps.index(25)], row[ps.index(75)]] == pytest.approx(
        [quartiles[0], quartiles[2]], rel=1e-12
    )


def test_aggregates_per_group_and_with_one_value(spool: Spool, runner: MakeRunner) -> None:
    sensors(spool)
    spool.append([reading(20_000, {"sensor": "d", "value": 9}, key="d")])
    query = runner(
        "SELECT key, median(json_extract(payload, '$.value')),"
        " percentile(json_extract(payload, '$.value'), 25),"
        " stddev(json_extract(payload, '$.value')),"
        " stddev_pop(json_extract(payload, '$.value')) FROM input GROUP BY key ORDER BY key"
    )
    rows = query.run(None, None).rows
    assert rows[0] == pytest.approx(("a", 4.0, 2.5, statistics.stdev([1, 3, 5, 7]), 5**0.5))
    assert rows[3] == ("d", 9.0, 9.0, None, 0.0)  # a sample of one has no deviation


@pytest.mark.parametrize("p", ["101", "-1", "NULL", "'high'"])
def test_a_percentile_out_of_range_fails_the_query_with_the_reason(
    spool: Spool, runner: MakeRunner, p: str
) -> None:
    sensors(spool)
    query = runner(f"SELECT percentile(json_extract(payload, '$.value'), {p}) FROM input")
    with pytest.raises(QueryFailed, match="p must be a number from 0 to 100") as failed:
        query.run(None, None)
    assert not failed.value.retryable


def test_percentile_needs_the_same_p_in_every_row(spool: Spool, runner: MakeRunner) -> None:
    sensors(spool)
    query = runner("SELECT percentile(json_extract(payload, '$.value'), time_ms % 7) FROM input")
    with pytest.raises(QueryFailed, match="the same in every row"):
        query.run(None, None)


@pytest.mark.parametrize(
    ("sql", "rewritten"),
    [
        (
            "SELECT percentile(x, 95) FROM input",
            "SELECT edge_agent_percentile(json_group_array(x), min(95), max(95)) FROM input",
        ),
        (
            "SELECT Median ( DISTINCT x ) FILTER (WHERE x > 1) OVER (PARTITION BY k) FROM input",
            "SELECT edge_agent_median(json_group_array(DISTINCT x) FILTER (WHERE x > 1)"
            " OVER (PARTITION BY k)) FROM input",
        ),
        (
            "SELECT stddev((SELECT median(v) FROM input)) OVER w FROM input",
            "SELECT edge_agent_stddev(json_group_array((SELECT edge_agent_median("
            "json_group_array(v)) FROM input)) OVER w) FROM input",
        ),
        # Strings, comments, names that are not calls: as they were.
        (
            "SELECT 'median(x)', \"median\" AS m, t.median(x) -- median(x)\n FROM input",
            "SELECT 'median(x)', \"median\" AS m, t.median(x) -- median(x)\n FROM input",
        ),
        ("SELECT variance() FROM input", "SELECT edge_agent_variance() FROM input"),
    ],
)
def test_aggregate_calls_become_sqlites_collection_and_a_call_per_group(
    sql: str, rewritten: str
) -> None:
    assert rewrite(sql) == rewritten


def test_an_aggregate_is_called_once_per_group_not_per_row(
    spool: Spool, runner: MakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Python call per row: each would take the GIL from intake."""
    calls: list[int] = []
    median_of, extra = aggregates.FUNCTIONS["median"]

    def counted(collected: str | None) -> float | None:
        calls.append(1)
        return median_of(collected)

    monkeypatch.setitem(aggregates.FUNCTIONS, "median", (counted, extra))
    sensors(spool)
    query = runner("SELECT key, median(json_extract(payload, '$.value')) FROM input GROUP BY key")
    assert len(query.run(None, None).rows) == 3
    assert len(calls) == 3


def test_aggregates_take_filter_and_over_clauses(spool: Spool, runner: MakeRunner) -> None:
    sensors(spool)
    by_key: dict[str, list[float]] = {}
    for sensor, value in SENSOR_READINGS:
        by_key.setdefault(sensor, []).append(value)
    filtered = runner(
        "SELECT key, median(json_extract(payload, '$.value'))"
        " FILTER (WHERE json_extract(payload, '$.value') > 2) FROM input GROUP BY key"
    )
    assert filtered.run(None, None).rows == [
        (
            key,
            statistics.median([v for v in values if v > 2]) if any(v > 2 for v in values) else None,
        )
        for key, values in sorted(by_key.items())
    ]
    running = runner(
        "SELECT time_ms, percentile(json_extract(payload, '$.value'), 50)"
        " OVER (ORDER BY time_ms ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM input"
    )
    values = [value for _, value in SENSOR_READINGS]
    assert running.run(None, None).rows == [
        (1000 + 1000 * i, statistics.median(values[max(0, i - 1) : i + 1]))
        for i in range(len(values))
    ]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT percentile(payload) FROM input", "function percentile()"),
        ("SELECT median(payload, 2) FROM input", "function median()"),
        ("SELECT stddev_pop() FROM input", "function stddev_pop()"),
    ],
)
def test_a_wrong_aggregate_call_is_named_as_written(sql: str, message: str) -> None:
    problem = check_query(sql)
    assert problem is not None and message in problem and "edge_agent" not in problem


# ---------------------------------------------------------------------- refusals

REFUSED = [
    ("INSERT INTO input VALUES (1, 2, 'x', 'k', '{}')", "writes are not allowed"),
    ("UPDATE records SET payload = x'00'", "writes are not allowed"),
    ("DELETE FROM records", "writes are not allowed"),
    ("WITH doomed AS (SELECT 1) DELETE FROM queues", "writes are not allowed"),
    ("CREATE TABLE stolen AS SELECT * FROM input", "writes are not allowed"),
    ("CREATE TEMP VIEW v AS SELECT 1", "writes are not allowed"),
    ("DROP VIEW input", "writes are not allowed"),
    ("ATTACH DATABASE '/tmp/elsewhere.db' AS elsewhere", "ATTACH is not allowed"),
    ("VACUUM INTO '/tmp/copy.db'", NOT_A_SELECT),  # its ATTACH is at run time
    ("PRAGMA user_version", "PRAGMA is not allowed"),
    ("SELECT * FROM pragma_table_info('records')", NOT_INPUT),
    ("BEGIN", "transactions are not allowed"),
    ("SAVEPOINT s", "transactions are not allowed"),
    ("SELECT * FROM records", NOT_INPUT),
    ("SELECT count(*) FROM records", NOT_INPUT),
    ("SELECT * FROM main.queues", NOT_INPUT),
    ("SELECT name FROM queues", NOT_INPUT),
    ("SELECT * FROM sqlite_master", NOT_INPUT),
    ("SELECT * FROM temp.input_bounds", NOT_INPUT),
    ("SELECT (SELECT count(*) FROM dead_letters) FROM input", NOT_INPUT),
    # A read inside a CTE carries the CTE's name where SQLite names the view it is in.
    ("WITH input AS (SELECT * FROM records) SELECT * FROM input", NOT_INPUT),
    ("SELECT 1; SELECT 2", ONE_STATEMENT),
    ("SELECT * FROM input; DELETE FROM records", ONE_STATEMENT),
    ("REINDEX", "writes are not allowed"),
    ("", NOT_A_SELECT),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED)
def test_refused_at_check_and_at_run_time(
    spool: Spool, runner: MakeRunner, sql: str, reason: str
) -> None:
    sensors(spool)
    assert check_query(sql) == reason
    with pytest.raises(QueryFailed) as failed:
        runner(sql).run(None, None)
    assert str(failed.value) == reason and not failed.value.retryable
    assert len(ids(spool)) == 12  # nothing changed
    assert {path.name for path in spool.path.parent.iterdir()} <= {
        "spool.db",
        "spool.db-wal",
        "spool.db-shm",
        "spool.db.lock",
        "spool.db.ballast",
    }


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT json_extract(payload, '$.sensor') AS sensor,"
        " avg(json_extract(payload, '$.value')) AS mean,"
        " percentile(json_extract(payload, '$.value'), 95) AS p95 FROM input GROUP BY sensor",
        "  -- the top three\n/* by value */ SELECT * FROM input ORDER BY time_ms DESC LIMIT 3;",
        "WITH recent AS (SELECT * FROM input WHERE time_ms > 0) SELECT count(*) FROM recent",
        "SELECT count(*) FROM (SELECT key FROM input)",
        "SELECT j.value FROM input, json_each(input.payload, '$.list') AS j",
        "VALUES (1)",
        RUNAWAY,  # prepared, not run
    ],
)
def test_queries_that_only_read_input_pass_the_check(sql: str) -> None:
    assert check_query(sql) is None
    assert check_query(sql, event_time="$.ts") is None


def test_the_check_gives_sqlites_message_for_a_bad_query() -> None:
    assert check_query("SELECT nope FROM input") == "no such column: nope"
    assert check_query("SELECT frobnicate(payload) FROM input") == ("no such function: frobnicate")
    assert check_query("SELEC 1") == 'near "SELEC": syntax error'
    assert check_query("SELECT 1", event_time="ts") == (
        "event_time 'ts': JSON path error near 'ts'"
    )


def test_json_each_reads_arrays_in_payloads(spool: Spool, runner: MakeRunner) -> None:
    spool.append([reading(1000, {"list": [3, 4]}), reading(2000, {"list": [5]})])
    query = runner("SELECT sum(j.value) FROM input, json_each(input.payload, '$.list') AS j")
    assert query.run(None, None).rows == [(12,)]


def test_a_value_past_the_length_limit_fails_the_query(runner: MakeRunner) -> None:
    with pytest.raises(QueryFailed, match="too big"):
        runner("SELECT length(randomblob(1000000000))").run(None, None)


# ---------------------------------------------------------------------- budget and writer


def test_a_runaway_query_is_stopped_at_its_budget(spool: Spool, runner: MakeRunner) -> None:
    query = runner(RUNAWAY)
    began = time.monotonic()
    with pytest.raises(QueryOverBudget, match=f"work budget of {DEFAULT_MAX_STEPS} steps"):
        query.run(None, None)
    assert time.monotonic() - began < 10  # about a second here; bounded on a slow machine
    assert DEFAULT_MAX_STEPS < query.steps <= DEFAULT_MAX_STEPS + 10_000
    small = runner(RUNAWAY, max_steps=100_000)
    with pytest.raises(QueryOverBudget, match="work budget of 100000 steps"):
        small.run(None, None)
    assert runner("SELECT count(*) FROM input").run(None, None).rows == [(0,)]  # runs on


def test_the_writer_is_not_blocked_while_a_runaway_query_runs(
    spool: Spool, runner: MakeRunner
) -> None:
    query = runner(RUNAWAY, max_steps=100 * DEFAULT_MAX_STEPS)  # longer than the test
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            query.run(None, None)
        except QueryFailed as err:
            outcome.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(lambda: query.steps > 0, timeout=10, what="the query to run")
        for i in range(20):
            began = time.monotonic()
            assert spool.append([reading(i, {"v": i})]).stored == 1
            assert time.monotonic() - began < 2
        assert thread.is_alive()  # all twenty went in while the query ran
    finally:
        query.close()  # interrupts it
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert [str(err) for err in outcome] == ["stopped: the query runner was closed"]
    assert len(ids(spool)) == 20


def test_reading_while_another_connection_appends(spool: Spool, runner: MakeRunner) -> None:
    stop = threading.Event()
    appended: list[int] = []
    errors: list[BaseException] = []

    def append() -> None:
        try:
            while not stop.is_set():
                batch = [reading(len(appended) + i, {"v": 1}) for i in range(50)]
                spool.append(batch)
                appended.append(len(batch))
        except BaseException as err:  # reported by the test
            errors.append(err)

    writer = threading.Thread(target=append)
    writer.start()
    query = runner("SELECT count(*), sum(json_extract(payload, '$.v')) FROM input")
    counts: list[int] = []
    try:
        wait_until(lambda: len(appended) >= 2, timeout=10, what="appends")
        while len(counts) < 50 or len(appended) < 20:
            ((count, total),) = query.run(None, None).rows
            assert isinstance(count, int) and total == (count or None)
            counts.append(count)
    finally:
        stop.set()
        writer.join(timeout=10)
    assert errors == []
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_a_query_over_a_large_window_keeps_a_small_page_cache(tmp_path: Path) -> None:
    """The runner's read-only connection reads a window once: its pages do not stay in
    its cache (SQLite's own count grows by well under the default 2 MiB cache)."""
    path = tmp_path / "s.db"
    pad = b"x" * 180
    with Spool.open(path) as spool:
        for start in range(0, 60_000, 10_000):
            spool.append([
                Record("analytics:big", f"bench/s{n % 50}", 1_000 + n,
                       b'{"seq": %d, "pad": "%s"}' % (n, pad))
                for n in range(start, start + 10_000)
            ])  # fmt: skip
    before = sqlite_memory_used()
    runner = QueryRunner(
        path, "analytics:big", "SELECT topic, count(*) AS n FROM input GROUP BY topic"
    )
    try:
        result = runner.run(None, None)
        grown = sqlite_memory_used() - before
    finally:
        runner.close()
    assert sum(int(row[1] or 0) for row in result.rows) == 60_000  # the whole window was read
    assert grown < 1024 * 1024, f"SQLite's memory grew by {grown:,} bytes"
