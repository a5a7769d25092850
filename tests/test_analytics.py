"""Edge analytics end to end: real Mosquitto, the agent as a process, results in the spool
and in kinesalite, compared with an offline computation over the same readings."""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.records import Record
from edge_agent.spool.store import Spool
from tests.kinesis_streams import make_stream, read_stream
from tests.support import (
    AgentProcess,
    Kinesalite,
    Mosquitto,
    cli,
    spool_path,
    spooled_count,
    start_agent,
    wait_until,
    write_config,
)

Reading = tuple[str, float, int]  # sensor, value, event time (ms)


class Publisher:
    """Publishes readings with QoS 1 and waits for the broker's acks."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{random.random()}")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, readings: Iterable[Reading], topic: str = "sensors/{sensor}/t") -> None:
        infos = [
            self.client.publish(
                topic.format(sensor=sensor),
                json.dumps({"sensor": sensor, "value": value, "ts": ts}),
                qos=1,
            )
            for sensor, value, ts in readings
        ]
        for info in infos:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def analytics(agent: AgentProcess, name: str) -> dict[str, Any]:
    """One query's part of the status the agent writes ({} until it is there)."""
    return dict(agent.status().get("analytics", {}).get(name, {}))


def query(name: str, extra: str, sql: str, sink: str = "results") -> str:
    return (
        f'\n[analytics.{name}]\ntopics = ["sensors/#"]\n{extra}\n'
        f'event_time = "$.ts"\nsql = """{sql}"""\nsinks = ["{sink}"]\n'
    )


def results(path: Path, queue: str = "results") -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT r.payload FROM records r JOIN queues q ON q.id = r.queue_id"
            " WHERE q.name = ? ORDER BY r.id",
            (queue,),
        ).fetchall()
    return [json.loads(payload) for (payload,) in rows]


def by_window(rows: list[dict[str, Any]], name: str) -> dict[tuple[int, int], dict[str, int]]:
    """{(window_start, window_end): {sensor: n}} of one query's result rows."""
    out: dict[tuple[int, int], dict[str, int]] = defaultdict(dict)
    for row in rows:
        if row["query"] == name:
            out[(row["window_start"], row["window_end"])][row["sensor"]] = row["n"]
    return dict(out)


def counts(readings: list[Reading], windows: Iterable[tuple[int, int]]) -> dict[Any, Any]:
    """Offline: per window [start, end), readings per sensor (empty windows left out)."""
    out = {}
    for start, end in windows:
        inside = Counter(sensor for sensor, _, ts in readings if start <= ts < end)
        if inside:
            out[(start, end)] = dict(inside)
    return out


COUNT_SQL = (
    "SELECT json_extract(payload, '$.sensor') AS sensor, count(*) AS n FROM input GROUP BY sensor"
)


def test_each_window_kind_gives_the_rows_of_an_offline_computation(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    """Event times two minutes in the past: every window is complete at once, and the
    windows depend only on the readings. A reading exactly at a window's end belongs to
    the next one; a stretch without readings gives no rows."""
    base = (int(time.time() * 1000) // 10_000) * 10_000 - 120_000
    rng = random.Random(7)
    offsets = sorted(rng.sample(range(0, 30_000), 40) + rng.sample(range(50_000, 60_000), 12))
    offsets += [10_000, 59_999]  # on a boundary, and at the last millisecond
    readings = [
        (f"s{i % 3}", round(rng.uniform(10, 40), 2), base + o) for i, o in enumerate(offsets)
    ]
    sinks = '[sinks.telemetry]\ntype = "hold"\n[sinks.results]\ntype = "hold"\n'
    sinks += query("tumbling", 'window = "tumbling"\nsize = "10s"', COUNT_SQL)
    sinks += query("hopping", 'window = "hopping"\nsize = "10s"\nhop = "5s"', COUNT_SQL)
    sinks += query("sliding", 'window = "sliding"\nsize = "10s"\nperiod = "5s"', COUNT_SQL)
    sinks += query("session", 'window = "session"\ngap = "4s"', COUNT_SQL)
    sinks += query("count", 'window = "count"\ncount = 5', COUNT_SQL)
    sinks += query(
        "filter",
        'window = "none"',
        "SELECT json_extract(payload, '$.sensor') AS sensor, 1 AS n, time_ms FROM input"
        " WHERE json_extract(payload, '$.value') > 30",
    )
    config = write_config(tmp_path, broker.port, sinks=sinks)
    agent = start_agent(config, agents)
    publisher = Publisher(broker.port)
    try:
        publisher.send(readings)
    finally:
        publisher.close()
    path = spool_path(tmp_path)
    ten_s = range(base - 10_000, base + 70_000, 10_000)
    hops = range(base - 10_000, base + 70_000, 5_000)
    # Sessions: split where readings are 4 s or more apart.
    times = sorted(ts for _, _, ts in readings)
    sessions, first = [], times[0]
    for before, after in itertools.pairwise(times):
        if after - before >= 4_000:
            sessions.append((first, before + 1))
            first = after
    sessions.append((first, times[-1] + 1))
    expected = {
        "tumbling": counts(readings, [(s, s + 10_000) for s in ten_s]),
        "hopping": counts(readings, [(s, s + 10_000) for s in hops]),
        "sliding": counts(readings, [(s, s + 10_000) for s in hops]),  # the same shape here
        # The last to close: sessions, after gap + grace of silence (event time: at once).
        "session": counts(readings, sessions),
    }
    for name, windows in expected.items():
        wait_until(lambda: by_window(results(path), name) == windows, 30, 0.1, name)  # noqa: B023
    rows = results(path)
    assert (base + 10_000, base + 20_000) in by_window(rows, "tumbling")
    assert not any(
        base + 30_000 <= start < base + 40_000 for start, _ in by_window(rows, "tumbling")
    )
    # Count windows: five readings each, in arrival order; the rest waits.
    count_windows = len(readings) // 5
    count_rows = by_window(rows, "count")
    assert sorted(sum(window.values()) for window in count_rows.values()) == [5] * count_windows
    # The continuous filter: every reading above 30, once.
    hot = sorted((sensor, ts) for sensor, value, ts in readings if value > 30)
    assert (
        sorted((row["sensor"], row["time_ms"]) for row in rows if row["query"] == "filter") == hot
    )
    ids = [row["window_id"] for row in rows if row["query"] != "filter"]
    assert len(ids) == len(
        {(row["window_id"], row["sensor"]) for row in rows if row["query"] != "filter"}
    )
    assert agent.terminate() == 0


def test_late_readings_within_and_beyond_the_grace(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    size, grace = 4_000, 3_000
    sinks = '[sinks.telemetry]\ntype = "hold"\n[sinks.results]\ntype = "hold"\n'
    shape = f'window = "tumbling"\nsize = "{size}ms"\ngrace = "{grace}ms"'
    sinks += query("counted", shape, COUNT_SQL)
    sinks += query("revised", shape + '\nlate = "revise"', COUNT_SQL)
    config = write_config(tmp_path, broker.port, sinks=sinks)
    agent = start_agent(config, agents)
    start = (int(time.time() * 1000) // size) * size
    publisher = Publisher(broker.port)
    try:
        publisher.send([("s0", 20.0, start + 100)])
        publisher.send([("s0", 20.0, start + 200)])  # late, but within the grace
        wait_until(
            lambda: analytics(agent, "revised").get("emitted", 0) >= 1,
            20,
            0.05,
            "the window",
        )
        publisher.send([("s0", 20.0, start + 300)])  # after the window was emitted
        wait_until(
            lambda: analytics(agent, "revised").get("revisions", 0) >= 1, 20, 0.05, "revision"
        )
        wait_until(lambda: analytics(agent, "counted").get("late", 0) >= 1, 20, 0.05, "late")
    finally:
        publisher.close()
    rows = results(spool_path(tmp_path))
    counted = [(row["revision"], row["n"]) for row in rows if row["query"] == "counted"]
    revised = [(row["revision"], row["n"]) for row in rows if row["query"] == "revised"]
    assert counted == [(0, 2)], "the grace admitted the second reading; the third is counted"
    assert revised == [(0, 2), (1, 3)], "the window again, with all three, as revision 1"
    text = cli("status", "-c", str(config), check=False).stdout
    assert "analytics counted (tumbling): 1 window emitted" in text and "1 late reading" in text
    assert agent.terminate() == 0


def test_sigkill_across_window_closes_emits_each_window_exactly_once(
    tmp_path: Path, broker: Mosquitto, kinesalite: Kinesalite, agents: list[AgentProcess]
) -> None:
    """Readings stamped as they are sent, one-second windows, the agent killed with
    SIGKILL every few seconds and started again: every window with readings is marked
    in the spool once, reaches the stream at least once, and its counts equal an
    offline computation over what was published."""
    client = kinesalite.client()
    stream = make_stream(client, 1)
    sinks = (
        '[sinks.telemetry]\ntype = "hold"\n'
        f'[sinks.results]\ntype = "kinesis"\nstream = "{stream}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{kinesalite.endpoint}"\nretry_max = "1s"\nlinger = "0s"\n'
    )
    sinks += query("per_second", 'window = "tumbling"\nsize = "1s"\ngrace = "10s"', COUNT_SQL)
    config = write_config(tmp_path, broker.port, sinks=sinks)
    agent = start_agent(config, agents)
    published: list[Reading] = []
    stop = threading.Event()

    def publish() -> None:
        publisher = Publisher(broker.port)
        rng = random.Random(3)
        try:
            while not stop.is_set():
                reading = (f"s{rng.randrange(3)}", 20.0, int(time.time() * 1000))
                publisher.send([reading])
                published.append(reading)
                stop.wait(0.01)
        finally:
            publisher.close()

    thread = threading.Thread(target=publish)
    thread.start()
    rng = random.Random(11)
    kills = 0
    try:
        deadline = time.monotonic() + 24
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(1.5, 3.5))  # a random point in the stream of windows
            agent.kill()
            kills += 1
            agent = start_agent(config, agents)
    finally:
        stop.set()
        thread.join(30)
    last = max(ts for _, _, ts in published)
    expected = counts(
        published, [(s, s + 1000) for s in range(published[0][2] // 1000 * 1000, last + 1000, 1000)]
    )
    assert len(expected) >= 20 and kills >= 5
    path = spool_path(tmp_path)

    def marks() -> list[tuple[str, int]]:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return conn.execute(
                "SELECT window_id, revision FROM analytics_windows WHERE query = 'per_second'"
            ).fetchall()

    wait_until(lambda: len(marks()) >= len(expected), 60, 0.2, "every window marked")
    assert analytics(agent, "per_second").get("late") == 0
    ids = [window_id for window_id, _ in marks()]
    assert len(ids) == len(set(ids)), "no window emitted twice"
    assert sorted(ids) == sorted(f"per_second@{start}" for start, _ in expected)

    def delivered() -> dict[Any, Any]:
        rows = [json.loads(record.data) for record in read_stream(client, stream)]
        return by_window(rows, "per_second")

    try:
        wait_until(lambda: delivered() == expected, 60, 0.5, "every window's rows in the stream")
    except AssertionError:
        got = delivered()
        assert {w: got.get(w) for w in expected if got.get(w) != expected[w]} == {}
        raise
    assert agent.terminate() == 0


def test_queries_that_write_attach_or_pragma_are_refused_by_check_config(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        1883,
        sinks='[sinks.telemetry]\ntype = "hold"\n'
        + query("writes", 'window = "none"', "DELETE FROM input")
        + query("attach", 'window = "none"', "ATTACH DATABASE '/tmp/x.db' AS x")
        + query("pragma", 'window = "none"', "PRAGMA journal_mode")
        + query("other", 'window = "none"', "SELECT * FROM records", sink="telemetry"),
    )
    config.write_text(config.read_text().replace('sinks = ["results"]', 'sinks = ["telemetry"]'))
    result = cli("check-config", "-c", str(config), check=False)
    assert result.returncode == 2
    for name in ("writes", "attach", "pragma", "other"):
        assert f"{config}: analytics.{name}.sql:" in result.stderr


def test_a_failing_and_a_runaway_query_are_reported_and_intake_keeps_its_rate(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    sinks = '[sinks.telemetry]\ntype = "hold"\n[sinks.results]\ntype = "hold"\n'
    sinks += query("writes", 'window = "none"', "DELETE FROM records")
    sinks += query(
        "runaway",
        'window = "none"\nmax_steps = 100000',
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
    )
    config = write_config(tmp_path, broker.port, sinks=sinks)
    agent = start_agent(config, agents)
    started = time.monotonic()
    publisher = Publisher(broker.port)
    try:
        publisher.send(("s0", 20.0, int(time.time() * 1000)) for _ in range(2000))
    finally:
        publisher.close()
    wait_until(
        lambda: spooled_count(spool_path(tmp_path), "telemetry") >= 2000, 30, 0.1, "2000 readings"
    )
    assert time.monotonic() - started < 30

    def failing(name: str) -> str:
        return str(analytics(agent, name).get("last_error", ""))

    wait_until(lambda: "not allowed" in failing("writes"), 20, 0.1, "the refusal in status")
    wait_until(lambda: "work budget" in failing("runaway"), 20, 0.1, "the budget in status")
    assert agent.log_text().count("analytics runaway:") == 1, "logged once"
    text = cli("status", "-c", str(config), check=False).stdout
    assert "FAILING" in text
    assert agent.process is not None and agent.process.poll() is None
    assert agent.terminate() == 0


def test_analytics_run_evaluates_a_query_over_the_spooled_readings(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        1883,
        sinks='[sinks.telemetry]\ntype = "hold"\n[sinks.results]\ntype = "hold"\n'
        + query("stats", 'window = "tumbling"\nsize = "1m"', COUNT_SQL),
    )
    now = int(time.time() * 1000)
    path = spool_path(tmp_path)
    path.parent.mkdir(parents=True)
    with Spool.open(path) as spool:
        spool.append(
            [
                Record(
                    "analytics:sensors/#",
                    "sensors/x/t",
                    now,
                    json.dumps({"sensor": f"s{i % 2}", "value": 1, "ts": now - i * 1000}).encode(),
                    '{"topic": "sensors/x/t"}',
                )
                for i in range(10)
            ]
        )
    result = cli("analytics", "run", "stats", "-c", str(config), "--from", "5500ms", "--to", "0s")
    rows = sorted(json.loads(line)["n"] for line in result.stdout.splitlines())
    assert rows == [3, 3], "the six readings of the last 5.5 s, per sensor"
    assert "2 rows from 6 readings" in result.stderr
    missing = cli("analytics", "run", "nope", "-c", str(config), check=False)
    assert missing.returncode == 1 and "no [analytics.nope]" in missing.stderr
