"""Edge analytics benchmark: what three queries cost the agent at 10,000 readings/s.

    .venv/bin/python bench/analytics.py [--rate 10000] [--seconds 120] [--rounds 1]

Every run starts a fresh Mosquitto on a free loopback port and ``edge-agent run`` with
one QoS 1 subscription ``sensors/#`` into a ``hold`` sink; a raw-socket publisher (this
script, the way bench/intake.py publishes: it is never the bottleneck) sends JSON
readings of --sensors sensors, ``{"sensor_id": "s7", "seq": 12, "value": 21.37, "ts":
...}`` with values drawn from a normal distribution (mean 21, sd 2). With analytics,
the same config gains the issue's three queries:

* ``stats``: 1-minute tumbling windows, per sensor count, min, avg, max and the 95th
  percentile (each field extracted once, as docs/ANALYTICS.md advises; the baseline
  also times the form with a ``json_extract`` per aggregate);
* ``sensors``: 5-minute hopping windows, a new one every minute, the distinct count of
  ``sensor_id``;
* ``alerts``: a continuous filter (window "none"), the readings above --threshold (25:
  about 2.3 % of them).

Parts (each one agent run without the queries and one with, in alternating order):

* **paced**: the publisher paced at --rate for --warmup + --seconds; over the last
  --seconds the agent's CPU (user + system of every thread, /proc) as a share of one
  core, its RSS (VmRSS every second; VmHWM at the end) and its intake rate (the MQTT
  source's ``committed`` counter in the status file). With the queries, the publisher
  goes on until every window ending by the end of the measurement was emitted; each
  window's emission latency is ``emitted_at_ms - (end_ms + grace)`` from the spool's
  ``analytics_windows`` (for the filter, from the newest reading of each batch);
* **flat-out**: --flat-out messages as fast as the broker takes them; the intake rate
  from the first to the last reading's capture time in the spool.

Then, on the spool the paced run with the queries left, **baseline**: the last emitted
``stats`` window and ``sensors`` window are computed again, once by the engine's own
``QueryRunner`` (the same SQL over the same readings, from the raw ``hold`` queue
bounded to the window's ids) and once in plain Python (the payloads read from SQLite,
``json.loads``, ``statistics``); the median of --repeat runs of each.

Targets: the queries add < 10 % of a core; intake with them >= 0.95 x without;
emission latency < 1 s; the SQL not slower than the Python baseline.
Exit status: 0 when the benchmark ran (targets met or not, see PASS/MISS), 1 if it broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    DISCONNECT,
    REPO,
    AckCounter,
    BenchError,
    BrokerStalled,
    ProcTimes,
    add_work_arguments,
    drop_session,
    fmt,
    median,
    mqtt_connect,
    mqtt_string,
    paced,
    peak_rss_bytes,
    per,
    proc_times,
    publish_packet,
    read_status,
    rss_bytes,
    run_or_fail,
    stop_process,
    verdict,
    wait_for_agent_exit,
    wait_until,
    work_directory,
    write_json,
)
from intake import Broker, agent_command, environment

from edge_agent.analytics.query import QueryRunner
from edge_agent.config.analytics import DEFAULT_MAX_STEPS

MIB = 2**20
TOPIC_FILTER = "sensors/#"
WAIT_INTERVAL_S = 0.05
#: The readings' values: normal, this mean and standard deviation.
VALUE_MEAN, VALUE_SD = 21.0, 2.0
#: The time windows' grace: as configs/analytics.toml's (--grace-ms to change).
GRACE_MS = 5_000
#: The queries with time windows (the third is the filter, "alerts").
TIME_QUERIES = ("stats", "sensors")
FILTER_QUERY = "alerts"
#: How often the watcher looks for new window marks in the spool.
WATCH_INTERVAL_S = 0.1
MINUTE_MS = 60_000
#: The queries run under the option's highest budget: at 10,000 readings/s a 1-minute
#: window is 600,000 readings, which the default budget may not cover (the baseline
#: part reports the steps each took).
MAX_STEPS = 10_000_000_000
TARGET_CPU_PCT = 10.0
TARGET_RATE_RATIO = 0.95
TARGET_LATENCY_MS = 1_000.0

#: The per-sensor statistics as docs/ANALYTICS.md advises: each field extracted once (a
#: subquery SQLite does not merge, LIMIT -1), not once per aggregate.
STATS_SQL = (
    "SELECT sensor, count(*) AS readings, min(v) AS min, avg(v) AS mean, max(v) AS max,"
    " percentile(v, 95) AS p95 FROM (SELECT json_extract(payload, '$.sensor_id') AS sensor,"
    " json_extract(payload, '$.value') AS v FROM input LIMIT -1) GROUP BY sensor"
)
#: The same as first written: a json_extract per aggregate (the baseline times it too).
STATS_SQL_AS_WRITTEN = (
    "SELECT json_extract(payload, '$.sensor_id') AS sensor, count(*) AS readings,"
    " min(json_extract(payload, '$.value')) AS min,"
    " avg(json_extract(payload, '$.value')) AS mean,"
    " max(json_extract(payload, '$.value')) AS max,"
    " percentile(json_extract(payload, '$.value'), 95) AS p95"
    " FROM input GROUP BY sensor"
)
DISTINCT_SQL = "SELECT count(DISTINCT json_extract(payload, '$.sensor_id')) AS sensors FROM input"


def filter_sql(threshold: float) -> str:
    return (
        "SELECT topic, json_extract(payload, '$.sensor_id') AS sensor,"
        " json_extract(payload, '$.value') AS value, time_ms FROM input"
        f" WHERE json_extract(payload, '$.value') > {threshold!r}"
    )


# ---------------------------------------------------------------------- the publisher


def reading(seq: int, sensors: int, rng: random.Random) -> bytes:
    value = round(rng.gauss(VALUE_MEAN, VALUE_SD), 2)
    return (
        f'{{"sensor_id":"s{seq % sensors}","seq":{seq},"value":{value},"ts":{time.time():.3f}}}'
    ).encode()


def run_publisher(port: int, count: int, sensors: int, client_id: str, rate: float) -> int:
    """Child process: ``count`` QoS 1 readings, flat out or paced at ``rate`` a second."""
    sock = mqtt_connect(port, client_id)
    sock.settimeout(None)
    acks = AckCounter(sock)
    acks.start()
    topics = [mqtt_string(f"sensors/s{i}/temperature") for i in range(sensors)]
    rng = random.Random(1)
    try:
        for numbers in paced(count, rate, acks):
            sock.sendall(
                b"".join(
                    publish_packet(topics[n % sensors], n % 65535 + 1, reading(n, sensors, rng))
                    for n in numbers
                )
            )
    except BrokerStalled as err:
        print(err, file=sys.stderr)
        return 1
    complete = acks.wait_for(count, 60)
    with contextlib.suppress(OSError):
        sock.sendall(DISCONNECT)
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    return 0 if complete else 1


def start_publisher(
    port: int, count: int, args: argparse.Namespace, *, client_id: str, log: Path, rate: float
) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(Path(__file__).resolve()), "--publisher"]
    command += ["--port", str(port), "--messages", str(count), "--sensors", str(args.sensors)]
    command += ["--client-id", client_id, "--rate", str(rate)]
    with open(log, "ab") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)


# ---------------------------------------------------------------------- the agent


def write_config(directory: Path, port: int, client_id: str, args: argparse.Namespace) -> Path:
    state = directory / "state"
    config = directory / "edge-agent.toml"
    text = (
        f'[agent]\ndevice_name = "bench"\nstate_dir = "{state}"\n\n'
        f'[spool]\npath = "{state / "spool.db"}"\nmax_bytes = "off"\nmax_age = "off"\n\n'
        '[sinks.telemetry]\ntype = "hold"\nmax_bytes = "off"\nmax_age = "off"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nclient_id = "{client_id}"\n\n'
        f'[[mqtt.subscriptions]]\ntopic = "{TOPIC_FILTER}"\nqos = 1\nsinks = ["telemetry"]\n'
    )
    if args.analytics:
        text += (
            '\n[sinks.results]\ntype = "hold"\nmax_bytes = "off"\nmax_age = "off"\n\n'
            f'[analytics.stats]\ntopics = ["{TOPIC_FILTER}"]\nwindow = "tumbling"\n'
            f'size = "1m"\ngrace = "{args.grace_ms}ms"\nmax_steps = {MAX_STEPS}\n'
            f'sinks = ["results"]\nsql = "{STATS_SQL}"\n\n'
            f'[analytics.sensors]\ntopics = ["{TOPIC_FILTER}"]\nwindow = "hopping"\n'
            f'size = "5m"\nhop = "1m"\ngrace = "{args.grace_ms}ms"\nmax_steps = {MAX_STEPS}\n'
            f'sinks = ["results"]\nsql = "{DISTINCT_SQL}"\n\n'
            f'[analytics.alerts]\ntopics = ["{TOPIC_FILTER}"]\nwindow = "none"\n'
            f'max_steps = {MAX_STEPS}\nsinks = ["results"]\nsql = "{filter_sql(args.threshold)}"\n'
        )
    config.write_text(text)
    return config


@dataclass
class Run:
    """One agent run: what it cost and took in (paced), or how fast it took in (flat out)."""

    part: str
    analytics: bool
    round: int
    rate: float = 0.0
    cpu_pct: float = float("nan")
    rss_median_mib: float = float("nan")
    rss_peak_mib: float = float("nan")
    times: dict[str, float] = field(default_factory=dict)
    #: Per query: emission latency by ``emitted_at_ms``, and by when the mark was seen.
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    observed_ms: dict[str, list[float]] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    spool: str = ""

    @property
    def label(self) -> str:
        return f"{self.part} {'with queries' if self.analytics else 'intake alone'}"


class Agent:
    """``edge-agent run`` against its own broker, in ``directory``."""

    def __init__(self, directory: Path, args: argparse.Namespace, client_id: str) -> None:
        directory.mkdir(parents=True)
        self.directory = directory
        self.client_id = client_id
        self.broker = Broker(directory / "broker").start()
        self.config = write_config(directory, self.broker.port, client_id, args)
        self.spool = directory / "state" / "spool.db"
        self.status_file = Path(f"{self.spool}.status.json")
        self.log = directory / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None
        try:
            with open(self.log, "ab") as handle:
                self.process = subprocess.Popen(
                    agent_command(self.config), stdout=handle, stderr=subprocess.STDOUT, cwd=REPO
                )
            wait_until(self._connected, 30, "the agent to connect", interval=WAIT_INTERVAL_S)
        except BaseException:
            self.close()
            raise
        status = read_status(self.status_file)
        assert status is not None
        self.pid = int(status["pid"])

    def _alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise BenchError(f"the agent exited:\n{self.log.read_text()[-2000:]}")

    def _connected(self) -> bool:
        self._alive()
        status = read_status(self.status_file)
        return bool(status and status["sources"].get("mqtt", {}).get("state") == "connected")

    def status(self) -> dict[str, Any]:
        self._alive()
        return read_status(self.status_file) or {}

    def committed(self) -> int:
        return int(self.status().get("sources", {}).get("mqtt", {}).get("committed", 0))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            wait_for_agent_exit(self.process, 60, self.log)

    def close(self) -> None:
        stop_process(self.process)
        with contextlib.suppress(BenchError, OSError):
            drop_session(self.broker.port, self.client_id)
        self.broker.stop()


def read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def emitted_through(spool: Path, query: str) -> int:
    """The end of the newest window ``query`` emitted (0: none yet)."""
    if not spool.exists():
        return 0
    conn = read_only(spool)
    try:
        row = conn.execute(
            "SELECT max(end_ms) FROM analytics_windows WHERE query = ?", (query,)
        ).fetchone()
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
    return int(row[0] or 0)


def measure_paced(directory: Path, round_no: int, args: argparse.Namespace) -> Run:
    run = Run("paced", args.analytics, round_no)
    client_id = f"bench-analytics-{round_no}-{int(args.analytics)}"
    agent = Agent(directory, args, client_id)
    publisher: subprocess.Popen[bytes] | None = None
    watcher = EmissionWatcher(agent.spool, args.grace_ms)
    try:
        if args.analytics:
            watcher.start()
        total = int(args.rate * (args.warmup + args.seconds + 2 * MINUTE_MS / 1000))
        publisher = start_publisher(
            agent.broker.port,
            total,
            args,
            client_id=f"{client_id}-pub",
            log=directory / "publisher.log",
            rate=args.rate,
        )
        time.sleep(args.warmup)  # the load itself: the agent settles into it
        before: ProcTimes = proc_times(agent.pid)
        committed = agent.committed()
        began = time.monotonic()
        rss: list[float] = []
        for second in range(args.seconds):
            if publisher.poll() is not None:
                raise BenchError(f"the publisher exited with {publisher.returncode}")
            rss.append(rss_bytes(agent.pid) / MIB)
            time.sleep(max(0.0, began + second + 1 - time.monotonic()))
        elapsed = time.monotonic() - began
        used = proc_times(agent.pid) - before
        run.rate = (agent.committed() - committed) / elapsed
        run.cpu_pct = 100 * used.cpu / elapsed
        run.times = {"user_s": used.user, "system_s": used.system, "seconds": elapsed}
        run.rss_median_mib = median(rss)
        run.rss_peak_mib = peak_rss_bytes(agent.pid) / MIB
        if args.analytics:
            # Every window that ended by the end of the measurement, emitted under load.
            through = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS

            def closed() -> bool:
                agent.status()  # fails if the agent exited
                return all(emitted_through(agent.spool, q) >= through for q in TIME_QUERIES)

            wait_until(
                closed, MINUTE_MS / 1000 + 30, "the last windows to be emitted", interval=0.2
            )
        run.status = agent.status().get("analytics", {})
        if watcher.is_alive():
            watcher.stop()
            run.latencies_ms, run.observed_ms = watcher.latencies()
        stop_process(publisher)
        agent.stop()
    finally:
        if watcher.is_alive():
            watcher.stop()
        stop_process(publisher)
        agent.close()
    run.spool = str(agent.spool)
    return run


def measure_flat_out(directory: Path, round_no: int, args: argparse.Namespace) -> Run:
    run = Run("flat-out", args.analytics, round_no)
    client_id = f"bench-analytics-flat-{round_no}-{int(args.analytics)}"
    agent = Agent(directory, args, client_id)
    publisher: subprocess.Popen[bytes] | None = None
    count = args.flat_out
    try:
        publisher = start_publisher(
            agent.broker.port,
            count,
            args,
            client_id=f"{client_id}-pub",
            log=directory / "publisher.log",
            rate=0,
        )
        wait_until(
            lambda: agent.committed() >= count,
            max(60.0, count / 1000),
            f"the agent to commit {count} messages",
            interval=WAIT_INTERVAL_S,
        )
        agent.stop()
    finally:
        stop_process(publisher)
        agent.close()
    conn = read_only(agent.spool)
    try:
        first, last, stored = conn.execute(
            "SELECT min(captured_at_ms), max(captured_at_ms), count(*) FROM records r"
            " JOIN queues q ON q.id = r.queue_id WHERE q.name = 'telemetry'"
        ).fetchone()
    finally:
        conn.close()
    if stored < count:
        raise BenchError(f"the spool holds {stored} of {count} readings")
    run.rate = (stored - 1) / ((last - first) / 1000)
    return run


class EmissionWatcher(threading.Thread):
    """Polls the spool's ``analytics_windows`` every ``WATCH_INTERVAL_S`` and notes when
    each window's mark appeared: when its rows were committed (to within the interval).
    ``emitted_at_ms`` alone is the clock of the engine's pass, read before the query ran."""

    def __init__(self, spool: Path, grace_ms: int) -> None:
        super().__init__(name="emission-watcher", daemon=True)
        self._spool = spool
        self._grace_ms = grace_ms
        self._done = threading.Event()
        #: (query, end_ms, emitted_at_ms, seen_ms) of every first emission (revision 0).
        self.marks: list[tuple[str, int, int, int]] = []

    def run(self) -> None:
        conn = read_only(self._spool)
        last = 0
        try:
            while not self._done.wait(WATCH_INTERVAL_S):
                rows = conn.execute(
                    "SELECT rowid, query, end_ms, emitted_at_ms FROM analytics_windows"
                    " WHERE rowid > ? AND revision = 0 ORDER BY rowid",
                    (last,),
                ).fetchall()
                seen = int(time.time() * 1000)
                for rowid, query, end_ms, emitted_at_ms in rows:
                    last = rowid
                    self.marks.append((query, end_ms, emitted_at_ms, seen))
        finally:
            conn.close()

    def stop(self) -> None:
        self._done.set()
        self.join(10)

    def latencies(self) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Per query, each window's ``emitted_at_ms - (end_ms + grace)`` and the same
        from when its mark was seen; for the filter, from the newest reading of each batch
        (its window ends 1 ms after it)."""
        column: dict[str, list[float]] = {}
        seen: dict[str, list[float]] = {}
        for query, end_ms, emitted_at_ms, seen_ms in self.marks:
            due = end_ms - 1 if query == FILTER_QUERY else end_ms + self._grace_ms
            column.setdefault(query, []).append(float(emitted_at_ms - due))
            seen.setdefault(query, []).append(float(seen_ms - due))
        return column, seen


# ---------------------------------------------------------------------- the baseline


@dataclass
class Baseline:
    query: str
    readings: int
    sql_s: float
    python_s: float
    python_compute_s: float
    steps: int
    same: bool

    @property
    def ratio(self) -> float:
        """Python's time over the SQL's: above 1, the SQL is faster."""
        return per(self.python_s, self.sql_s)


def percentile_95(values: list[float]) -> float:
    """As the engine's ``percentile(x, 95)``: linear between the closest ranks."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[94]


def python_stats(payloads: list[str]) -> dict[str, tuple[int, float, float, float, float]]:
    values: dict[str, list[float]] = {}
    for payload in payloads:
        body = json.loads(payload)
        values.setdefault(body["sensor_id"], []).append(body["value"])
    return {
        sensor: (len(v), min(v), statistics.fmean(v), max(v), percentile_95(v))
        for sensor, v in values.items()
    }


def python_distinct(payloads: list[str]) -> int:
    return len({json.loads(payload)["sensor_id"] for payload in payloads})


def timed(function: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The median time of ``repeat`` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def baseline(spool: Path, query: str, sql: str, repeat: int, label: str = "") -> Baseline:
    """The last window ``query`` emitted, computed again by QueryRunner (with ``sql``)
    and in Python over the same readings (the raw queue, bounded to the window's ids)."""
    conn = read_only(spool)
    try:
        start_ms, end_ms = conn.execute(
            "SELECT start_ms, end_ms FROM analytics_windows WHERE query = ? AND revision = 0"
            " ORDER BY end_ms DESC LIMIT 1",
            (query,),
        ).fetchone()
        (queue,) = conn.execute("SELECT id FROM queues WHERE name = 'telemetry'").fetchone()
        low, high, readings = conn.execute(
            "SELECT min(id), max(id), count(*) FROM records WHERE queue_id = ?"
            " AND captured_at_ms >= ? AND captured_at_ms < ?",
            (queue, start_ms, end_ms),
        ).fetchone()

        def fetch() -> list[str]:
            return [
                payload.decode()
                for (payload,) in conn.execute(
                    "SELECT payload FROM records WHERE queue_id = ? AND id BETWEEN ? AND ?"
                    " AND captured_at_ms >= ? AND captured_at_ms < ?",
                    (queue, low, high, start_ms, end_ms),
                )
            ]

        compute: Callable[[list[str]], Any] = python_stats if query == "stats" else python_distinct
        python_s, answer = timed(lambda: compute(fetch()), repeat)
        payloads = fetch()
        compute_s, _ = timed(lambda: compute(payloads), repeat)
    finally:
        conn.close()
    runner = QueryRunner(spool, "telemetry", sql, max_steps=MAX_STEPS)
    try:
        runner.run(0, 1)  # the first run checks the SQL once
        sql_s, result = timed(
            lambda: runner.run(start_ms, end_ms, after_id=low - 1, until_id=high), repeat
        )
        steps = runner.steps
    finally:
        runner.close()
    if query == "stats":
        got = {row[0]: row[1:] for row in result.rows}
        same = got.keys() == answer.keys() and all(
            got[s][0] == answer[s][0]
            and all(abs(a - b) < 1e-6 for a, b in zip(got[s][1:], answer[s][1:], strict=True))
            for s in got
        )
    else:
        same = result.rows == [(answer,)]
    return Baseline(label or query, int(readings), sql_s, python_s, compute_s, steps, same)


# ---------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    env = environment()
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, **env, "load": f"{os.getloadavg()[0]:.2f}"}


def report(runs: Sequence[Run], baselines: Sequence[Baseline], args: argparse.Namespace) -> None:
    print()
    print(
        f"{'run':<24} {'round':>5} {'msg/s':>8} {'CPU %core':>9} {'RSS med MiB':>11} "
        f"{'RSS peak MiB':>12}"
    )
    for run in runs:
        print(
            f"{run.label:<24} {run.round + 1:>5} {fmt(run.rate):>8} {fmt(run.cpu_pct, 1):>9} "
            f"{fmt(run.rss_median_mib, 1):>11} {fmt(run.rss_peak_mib, 1):>12}"
        )

    def med(part: str, analytics: bool, value: Callable[[Run], float]) -> float:
        return median([value(r) for r in runs if r.part == part and r.analytics == analytics])

    print()
    cpu = med("paced", True, lambda r: r.cpu_pct) - med("paced", False, lambda r: r.cpu_pct)
    rss = med("paced", True, lambda r: r.rss_peak_mib) - med(
        "paced", False, lambda r: r.rss_peak_mib
    )
    if not math.isnan(cpu):
        print(
            f"queries add {cpu:+.1f} % of a core at {args.rate:,.0f} msg/s (medians), peak RSS "
            f"{rss:+.1f} MiB; target < {TARGET_CPU_PCT:g} %: {verdict(cpu < TARGET_CPU_PCT)}"
        )
    for part in ("paced", "flat-out"):
        on, off = med(part, True, lambda r: r.rate), med(part, False, lambda r: r.rate)
        if not (math.isnan(on) or math.isnan(off)):
            print(
                f"intake {part}: {on:,.0f} / {off:,.0f} msg/s = {on / off:.3f} with / without;"
                f" target >= {TARGET_RATE_RATIO}: {verdict(on / off >= TARGET_RATE_RATIO)}"
            )
    worst = 0.0
    for run in (r for r in runs if r.analytics and r.latencies_ms):
        for query, values in sorted(run.latencies_ms.items()):
            seen = run.observed_ms[query]
            worst = max([worst, *seen])
            print(
                f"emission latency {query} (round {run.round + 1}): {len(values)} windows;"
                f" by emitted_at_ms median {median(values):,.0f} ms, max {max(values):,.0f} ms;"
                f" committed (seen in the spool) median {median(seen):,.0f} ms,"
                f" max {max(seen):,.0f} ms"
            )
        for query, snapshot in sorted(run.status.items()):
            print(
                f"  engine {query}: emitted {snapshot.get('emitted')}, last run"
                f" {snapshot.get('run_seconds', 0):.3f} s, longest"
                f" {snapshot.get('max_run_seconds', 0):.3f} s, failures {snapshot.get('failures')}"
            )
    if any(r.latencies_ms for r in runs):
        print(
            f"emission latency (committed) max {worst:,.0f} ms;"
            f" target < {TARGET_LATENCY_MS:,.0f} ms: {verdict(worst < TARGET_LATENCY_MS)}"
        )
    for b in baselines:
        budget = "within" if b.steps <= DEFAULT_MAX_STEPS else "PAST"
        print(
            f"baseline {b.query}: {b.readings:,} readings; SQL {b.sql_s:.3f} s ({b.steps:,} steps,"
            f" {budget} the default budget of {DEFAULT_MAX_STEPS:,}), Python {b.python_s:.3f} s"
            f" ({b.python_compute_s:.3f} s of it after the read); Python / SQL = {b.ratio:.2f};"
            f" same answer: {b.same}; SQL not slower: {verdict(b.ratio >= 1)}"
        )


def run_benchmark(args: argparse.Namespace) -> int:
    env = machine()
    print(
        f"edge-agent analytics benchmark: {args.rate:,.0f} readings/s of {args.sensors} sensors,"
        f" {args.seconds} s measured after {args.warmup} s, grace {args.grace_ms} ms,"
        f" flat out {args.flat_out:,},"
        f" {args.rounds} round(s); {env['cpu']}, {env['cpus']} CPUs, Python {env['python']},"
        f" SQLite {env['sqlite']}, {env['mosquitto']}, kernel {env['kernel']};"
        f" load average {env['load']}",
        flush=True,
    )
    runs: list[Run] = []
    baselines: list[Baseline] = []
    parts = [part for part in args.parts.split(",") if part]
    began = time.monotonic()
    with work_directory(args.workdir, keep=args.keep) as workdir:
        for round_no in range(args.rounds):
            for part in parts:
                measure = measure_paced if part == "paced" else measure_flat_out
                for analytics in (False, True) if round_no % 2 == 0 else (True, False):
                    args.analytics = analytics
                    name = f"{part}-{round_no + 1}-{'on' if analytics else 'off'}"
                    run = measure(workdir / name, round_no, args)
                    runs.append(run)
                    print(
                        f"  {run.label} (round {round_no + 1}): {run.rate:,.0f} msg/s,"
                        f" CPU {fmt(run.cpu_pct, 1)} % of a core",
                        flush=True,
                    )
        last = [run for run in runs if run.part == "paced" and run.analytics]
        if last:
            spool = Path(last[-1].spool)
            baselines = [
                baseline(spool, "stats", STATS_SQL, args.repeat),
                baseline(
                    spool, "stats", STATS_SQL_AS_WRITTEN, args.repeat, "stats as first written"
                ),
                baseline(spool, "sensors", DISTINCT_SQL, args.repeat),
            ]
    report(runs, baselines, args)
    print(f"benchmark took {time.monotonic() - began:.0f}s")
    if args.json:
        write_json(
            args.json,
            {
                "environment": env,
                "arguments": {k: v for k, v in vars(args).items() if k != "analytics"},
                "runs": [asdict(run) for run in runs],
                "baselines": [asdict(b) for b in baselines],
            },
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=10_000, help="readings/s, paced part")
    parser.add_argument("--seconds", type=int, default=120, help="measured seconds, paced part")
    parser.add_argument("--warmup", type=int, default=10, help="seconds before measuring")
    parser.add_argument("--flat-out", type=int, default=100_000, help="messages, flat-out part")
    parser.add_argument("--sensors", type=int, default=50, help="distinct sensors (topics)")
    parser.add_argument("--threshold", type=float, default=25.0, help="the filter's threshold")
    parser.add_argument(
        "--grace-ms", type=int, default=GRACE_MS, help="the time windows' grace, ms"
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds (order alternates)")
    parser.add_argument("--repeat", type=int, default=3, help="baseline runs of each side")
    parser.add_argument("--parts", default="paced,flat-out", help="paced, flat-out or both")
    add_work_arguments(parser, kept="spools and logs")
    # The publisher's role (the benchmark starts itself in it).
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=1883, help=argparse.SUPPRESS)
    parser.add_argument("--messages", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--client-id", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publisher:
        return run_publisher(args.port, args.messages, args.sensors, args.client_id, args.rate)
    if args.warmup + args.seconds < 2 * MINUTE_MS / 1000 and "paced" in args.parts:
        parser.error("--warmup + --seconds must be at least 120 for a whole 1-minute window")
    return run_or_fail(run_benchmark, args)


if __name__ == "__main__":
    raise SystemExit(main())
