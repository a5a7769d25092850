"""MQTT intake benchmark: the agent against a bare paho subscriber on the same broker.

    .venv/bin/python bench/intake.py [--messages 50000] [--payload 200] [--runs 3]

Each round starts a fresh Mosquitto on a free loopback port (with the in-flight and
queue limits of samples/mosquitto.conf) and measures, one after the other (the order
alternates between rounds):

* **bare**: a plain paho-mqtt subscriber (persistent session, QoS 1, acks on receipt,
  stores nothing) in its own process: the ceiling of a Python MQTT client here;
* **agent**: ``edge-agent run`` with one QoS 1 subscription ``bench/#`` feeding a
  ``hold`` sink, durability "full", default commit settings, no caps.

For each, a publisher process sends N QoS 1 messages (JSON with a sequence number and
the send time, padded to the payload size) as fast as the broker takes them. Reported:
intake rate (first to last message received), CPU of the receiving process (user and
system time from /proc, voluntary context switches of its threads), its peak RSS
(VmHWM), and for the agent loss and duplicates (every
sequence number is looked up in the spool) and publish->receive latency (the spool's
captured_at_ms is taken on receipt, just before the commit).

Commit timing is measured in two extra agent runs (one saturated, one paced at
--paced-rate) of an instrumented launcher: the same agent, started by this script with
``Spool.append`` and the MQTT source's commit step wrapped to log when each returned and
how many records it stored. Records are numbered in arrival order, so every message maps
to the exact commit that made it durable (see docs/BENCHMARKS.md).

Exit status: 0 when the benchmark ran (targets met or not, see PASS/MISS), 1 if it broke.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import (
    DISCONNECT,
    REPO,
    ZERO_TIMES,
    AckCounter,
    BenchError,
    BrokerStalled,
    LineReader,
    LoopbackServer,
    ProcTimes,
    add_work_arguments,
    command_output,
    drop_session,
    fmt,
    make_payload,
    median,
    mqtt_connect,
    mqtt_string,
    paced,
    peak_rss_bytes,
    per,
    proc_times,
    publish_packet,
    read_status,
    run_or_fail,
    stop_process,
    verdict,
    wait_for_agent_exit,
    wait_until,
    work_directory,
    write_json,
)

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SAMPLE_BROKER_CONF = REPO / "samples" / "mosquitto.conf"
#: Broker settings taken from samples/mosquitto.conf (these values if it lacks them).
BROKER_SETTINGS = {
    "max_inflight_messages": "1000",
    "max_queued_messages": "1000000",
    "max_queued_bytes": "200000000",
    "autosave_interval": "300",
}
TOPIC_FILTER = "bench/#"
#: Distinct topics the publisher cycles through (bench/sensor-<i>/temperature).
SENSORS = 10
#: How often ``wait_until`` checks its condition.
WAIT_INTERVAL_S = 0.05
TARGET_RATIO = 0.9
TARGET_RSS_MB = 60.0


# ---------------------------------------------------------------------- small helpers


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not values:
        return float("nan")
    rank = max(1, min(len(values), math.ceil(pct / 100 * len(values) - 1e-9)))
    return values[rank - 1]


def run_publisher(port: int, count: int, size: int, client_id: str, rate: float) -> int:
    """Child process: publish ``count`` QoS 1 messages, flat out or at ``rate`` msg/s."""
    sock = mqtt_connect(port, client_id)
    sock.settimeout(None)
    acks = AckCounter(sock)
    acks.start()
    topics = [mqtt_string(f"bench/sensor-{i}/temperature") for i in range(SENSORS)]
    started = time.monotonic()
    seq = 0
    try:
        for numbers in paced(count, rate, acks):
            sock.sendall(
                b"".join(
                    publish_packet(
                        topics[number % SENSORS],
                        number % 65535 + 1,
                        make_payload(number, size, time.time()),
                    )
                    for number in numbers
                )
            )
            seq = numbers.stop
    except BrokerStalled as err:
        print(err, file=sys.stderr)
        return 1
    sent_in = time.monotonic() - started
    complete = acks.wait_for(count, 60)
    with contextlib.suppress(OSError):
        sock.sendall(DISCONNECT)
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    print(json.dumps({"sent": seq, "acked": acks.acked, "seconds": sent_in}), flush=True)
    if not complete:
        print(f"broker acknowledged {acks.acked} of {count} ({acks.error})", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------- bare subscriber


def run_bare_subscriber(port: int, count: int, client_id: str, timeout: float) -> int:
    """Child process: plain paho, persistent session, QoS 1, acks on receipt, stores nothing.

    Prints READY once subscribed, then one JSON line when ``count`` messages arrived (or
    the timeout passed), then waits for stdin to close so the parent can read /proc.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    subscribed = threading.Event()
    done = threading.Event()

    class Tally:
        received = 0
        first = 0.0
        last = 0.0
        first_payload = b""
        last_payload = b""
        refused = False

    tally = Tally()

    def on_connect(
        client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        client.subscribe(TOPIC_FILTER, qos=1)

    def on_subscribe(
        client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        tally.refused = any(code.is_failure for code in reason_codes)
        subscribed.set()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        tally.received += 1
        if tally.received == 1:
            tally.first = time.time()
            tally.first_payload = bytes(message.payload)
        if tally.received == count:
            tally.last = time.time()
            tally.last_payload = bytes(message.payload)
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        if not subscribed.wait(20) or tally.refused:
            print("subscription failed", file=sys.stderr)
            return 1
        print("READY", flush=True)
        done.wait(timeout)
        result: dict[str, Any] = {"received": tally.received, "first": tally.first}
        if done.is_set():
            result["last"] = tally.last
            result["first_sent"] = json.loads(tally.first_payload)["ts"]
            result["last_sent"] = json.loads(tally.last_payload)["ts"]
        print(json.dumps(result), flush=True)
        select.select([sys.stdin], [], [], 60)  # until the parent closes stdin
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


# ---------------------------------------------------------------------- the broker


def broker_settings() -> dict[str, str]:
    """The recommended limits, read from samples/mosquitto.conf."""
    settings = dict(BROKER_SETTINGS)
    text = SAMPLE_BROKER_CONF.read_text() if SAMPLE_BROKER_CONF.exists() else ""
    for key in settings:
        match = re.search(rf"^{key}\s+(\S+)", text, re.MULTILINE)
        if match:
            settings[key] = match.group(1)
    return settings


class Broker(LoopbackServer):
    name = "mosquitto"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory / "mosquitto.log")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {directory}/",
            *(f"{key} {value}" for key, value in broker_settings().items()),
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to 'mosquitto', who cannot write here
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> Broker:
        self.launch([MOSQUITTO, "-c", str(self.config)], timeout=10, interval=WAIT_INTERVAL_S)
        return self


# ---------------------------------------------------------------------- results


@dataclass
class CommitTiming:
    """Commit timing from an instrumented agent run (times in ms)."""

    mode: str
    messages: int
    rate: float
    commits: int
    commits_counted_by_agent: int
    mean_batch: float
    append_p50_ms: float
    append_p99_ms: float
    commit_step_mean_ms: float
    max_held: int
    pub_to_recv_p50_ms: float
    pub_to_recv_p99_ms: float
    recv_to_durable_p50_ms: float
    recv_to_durable_p99_ms: float
    pub_to_durable_p50_ms: float
    pub_to_durable_p99_ms: float
    missing: int
    duplicates: int


@dataclass
class Measurement:
    subject: str
    round: int
    messages: int
    received: int
    rate: float
    span_s: float
    times: ProcTimes
    rss_bytes: int
    broker_cpu_s: float
    missing: int
    duplicates: int | None = None
    pub_to_recv_p50_ms: float | None = None
    pub_to_recv_p99_ms: float | None = None
    commit_batches: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_pct(self) -> float:
        return per(100 * self.times.cpu, self.span_s)

    @property
    def cpu_per_10k(self) -> float:
        return per(self.times.cpu, self.received) * 10_000

    @property
    def user_us_per_msg(self) -> float:
        return per(1e6 * self.times.user, self.received)

    @property
    def sys_us_per_msg(self) -> float:
        return per(1e6 * self.times.system, self.received)

    @property
    def switches_per_msg(self) -> float:
        return per(self.times.switches, self.received)

    @property
    def broker_cpu_pct(self) -> float:
        return per(100 * self.broker_cpu_s, self.span_s)

    @property
    def rss_mib(self) -> float:
        return self.rss_bytes / 2**20


# ---------------------------------------------------------------------- the phases


def _self_command(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def start_publisher(
    port: int, count: int, size: int, *, client_id: str, log: Path, rate: float = 0
) -> subprocess.Popen[bytes]:
    command = _self_command(
        "--publisher",
        "--port",
        str(port),
        "--messages",
        str(count),
        "--payload",
        str(size),
        "--client-id",
        client_id,
        "--rate",
        str(rate),
    )
    with open(log, "ab") as handle:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=handle)


def finish_publisher(process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(process)
        raise BenchError("the publisher did not finish in time") from None
    if process.returncode != 0:
        raise BenchError(
            f"the publisher failed ({process.returncode}): "
            f"{log.read_text(errors='replace')[-1000:]} {out.decode(errors='replace')}"
        )


def measure_bare(
    broker: Broker, directory: Path, round_no: int, count: int, size: int
) -> Measurement:
    directory.mkdir(parents=True, exist_ok=True)
    client_id = f"bench-bare-{round_no}"
    log = directory / "children.log"
    timeout = max(60.0, count / 500)
    subscriber: subprocess.Popen[bytes] | None = None
    publisher: subprocess.Popen[bytes] | None = None
    try:
        with open(log, "ab") as handle:
            subscriber = subprocess.Popen(
                _self_command(
                    "--bare-subscriber",
                    "--port",
                    str(broker.port),
                    "--messages",
                    str(count),
                    "--client-id",
                    client_id,
                    "--timeout",
                    str(timeout),
                ),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=handle,
            )
        assert subscriber.stdout is not None and subscriber.stdin is not None
        lines = LineReader(subscriber.stdout)
        if lines.readline(30) != "READY":
            raise BenchError(f"bare subscriber did not subscribe: {log.read_text()[-1000:]}")
        cpu_before = proc_times(subscriber.pid)
        broker_before = proc_times(broker.pid)
        publisher = start_publisher(
            broker.port, count, size, client_id=f"bench-pub-bare-{round_no}", log=log
        )
        line = lines.readline(timeout + 10)
        if line is None:
            raise BenchError(f"bare subscriber gave no result: {log.read_text()[-1000:]}")
        cpu_after = proc_times(subscriber.pid)
        broker_after = proc_times(broker.pid)
        rss = peak_rss_bytes(subscriber.pid)
        subscriber.stdin.close()
        finish_publisher(publisher, 60, log)
        subscriber.wait(20)
    finally:
        stop_process(publisher)
        stop_process(subscriber)
    drop_session(broker.port, client_id)
    result = json.loads(line)
    received = int(result["received"])
    if "last" not in result:
        raise BenchError(f"bare subscriber got {received} of {count} messages in {timeout:.0f}s")
    span = result["last"] - result["first"]
    return Measurement(
        subject="bare",
        round=round_no,
        messages=count,
        received=received,
        rate=(count - 1) / span if span > 0 else float("nan"),
        span_s=span,
        times=cpu_after - cpu_before,
        rss_bytes=rss,
        broker_cpu_s=(broker_after - broker_before).cpu,
        missing=max(0, count - received),
        extra={
            "first_msg_pub_to_recv_ms": 1000 * (result["first"] - result["first_sent"]),
            "last_msg_pub_to_recv_ms": 1000 * (result["last"] - result["last_sent"]),
        },
    )


def agent_command(config: Path) -> list[str]:
    script = Path(sys.executable).with_name("edge-agent")
    if script.exists():
        return [str(script), "run", "-c", str(config)]
    return [sys.executable, "-m", "edge_agent", "run", "-c", str(config)]


def write_agent_config(directory: Path, port: int, client_id: str) -> Path:
    state = directory / "state"
    config = directory / "edge-agent.toml"
    config.write_text(
        f'[agent]\ndevice_name = "bench"\nstate_dir = "{state}"\n\n'
        f'[spool]\npath = "{state / "spool.db"}"\ndurability = "full"\n'
        'max_bytes = "off"\nmax_age = "off"\n\n'
        '[sinks.telemetry]\ntype = "hold"\nmax_bytes = "off"\nmax_age = "off"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nclient_id = "{client_id}"\n\n'
        f'[[mqtt.subscriptions]]\ntopic = "{TOPIC_FILTER}"\nqos = 1\nsinks = ["telemetry"]\n'
    )
    return config


@dataclass
class AgentRun:
    """What one agent run left behind, for the measurement and the commit timing."""

    rows: list[tuple[int, int, float]]  # (captured_at_ms, seq, sent time in s) by arrival
    unparsed: int
    status: dict[str, Any]
    window: tuple[float, float]  # wall-clock time from publish start to all committed
    times: ProcTimes = ZERO_TIMES
    rss_bytes: int = 0
    broker_cpu_s: float = 0.0
    commit_log: Path | None = None
    spool: Path | None = None


def run_agent(
    broker: Broker,
    directory: Path,
    client_id: str,
    count: int,
    size: int,
    *,
    rate: float = 0,
    instrumented: bool = False,
) -> AgentRun:
    directory.mkdir(parents=True, exist_ok=True)
    config = write_agent_config(directory, broker.port, client_id)
    spool = directory / "state" / "spool.db"
    status_file = Path(f"{spool}.status.json")
    log = directory / "agent.log"
    command = agent_command(config)
    commit_log = directory / "commits.json" if instrumented else None
    if commit_log is not None:
        command = _self_command(
            "--instrumented-agent", "--config", str(config), "--commit-log", str(commit_log)
        )
    timeout = max(60.0, count / 500 + (count / rate if rate else 0))
    process: subprocess.Popen[bytes] | None = None
    publisher: subprocess.Popen[bytes] | None = None
    agent_pid: int | None = None
    try:
        with open(log, "ab") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
        started = process

        def connected() -> bool:
            if started.poll() is not None:
                raise BenchError(f"the agent exited early:\n{log.read_text()[-2000:]}")
            status = read_status(status_file)
            return bool(status and status["sources"].get("mqtt", {}).get("state") == "connected")

        wait_until(connected, 30, "the agent to connect", interval=WAIT_INTERVAL_S)
        status = read_status(status_file)
        assert status is not None
        agent_pid = int(status["pid"])
        cpu_before = proc_times(agent_pid)
        broker_before = proc_times(broker.pid)
        window_start = time.time()
        pub_log = directory / "publisher.log"
        publisher = start_publisher(
            broker.port, count, size, client_id=f"{client_id}-pub", log=pub_log, rate=rate
        )

        def all_committed() -> bool:
            if started.poll() is not None:
                raise BenchError(f"the agent exited:\n{log.read_text()[-2000:]}")
            if publisher is not None and publisher.poll() not in (None, 0):
                raise BenchError(f"the publisher failed: {pub_log.read_text()[-1000:]}")
            status = read_status(status_file)
            mqtt = status["sources"].get("mqtt", {}) if status else {}
            return int(mqtt.get("committed", 0)) >= count

        wait_until(
            all_committed,
            timeout,
            f"the agent to commit {count} messages",
            interval=WAIT_INTERVAL_S,
        )
        window_end = time.time()
        cpu_after = proc_times(agent_pid)
        broker_after = proc_times(broker.pid)
        rss = peak_rss_bytes(agent_pid)
        finish_publisher(publisher, 60, pub_log)
        os.kill(agent_pid, signal.SIGTERM)
        wait_for_agent_exit(process, 20)
    finally:
        stop_process(publisher)
        if process is not None and process.poll() is None:
            if agent_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(agent_pid, signal.SIGKILL)
            stop_process(process)
    drop_session(broker.port, client_id)
    final = read_status(status_file) or {}
    rows, unparsed = read_spool(spool)
    return AgentRun(
        rows=rows,
        unparsed=unparsed,
        status=final.get("sources", {}).get("mqtt", {}),
        window=(window_start, window_end),
        times=cpu_after - cpu_before,
        rss_bytes=rss,
        broker_cpu_s=(broker_after - broker_before).cpu,
        commit_log=commit_log,
        spool=spool,
    )


def read_spool(path: Path) -> tuple[list[tuple[int, int, float]], int]:
    """(captured_at_ms, seq, sent) of every record, read straight from the SQLite file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        records = conn.execute(
            "SELECT r.captured_at_ms, r.payload FROM records r JOIN queues q"
            " ON q.id = r.queue_id WHERE q.name = 'telemetry' ORDER BY r.id"
        ).fetchall()
    finally:
        conn.close()
    rows: list[tuple[int, int, float]] = []
    unparsed = 0
    for captured, payload in records:
        try:
            body = json.loads(payload)
            rows.append((int(captured), int(body["seq"]), float(body["ts"])))
        except (ValueError, KeyError, TypeError):
            unparsed += 1
    return rows, unparsed


def loss(rows: Sequence[tuple[int, int, float]], count: int) -> tuple[int, int]:
    """(missing, duplicates) of sequence numbers 0..count-1."""
    seqs = [seq for _, seq, _ in rows]
    unique = set(seqs)
    return count - len(unique & set(range(count))), len(seqs) - len(unique)


def measure_agent(
    broker: Broker, directory: Path, round_no: int, count: int, size: int
) -> Measurement:
    run = run_agent(broker, directory, f"bench-agent-{round_no}", count, size)
    rows = run.rows
    missing, duplicates = loss(rows, count)
    captured = [c for c, _, _ in rows]
    span = (max(captured) - min(captured)) / 1000 if rows else 0.0
    latencies = sorted(c - 1000 * sent for c, _, sent in rows)
    return Measurement(
        subject="agent",
        round=round_no,
        messages=count,
        received=len(rows),
        rate=(len(rows) - 1) / span if span > 0 else float("nan"),
        span_s=span,
        times=run.times,
        rss_bytes=run.rss_bytes,
        broker_cpu_s=run.broker_cpu_s,
        missing=missing,
        duplicates=duplicates,
        pub_to_recv_p50_ms=percentile(latencies, 50),
        pub_to_recv_p99_ms=percentile(latencies, 99),
        commit_batches=int(run.status.get("commit_batches", 0)),
        extra={"unparsed": run.unparsed, "max_batch": run.status.get("max_batch")},
    )


# ---------------------------------------------------------------------- commit timing


def run_instrumented_agent(config: str, commit_log: str) -> int:
    """Child process: ``edge-agent run`` with its commits timed (nothing else changed).

    Logs, per commit, when the MQTT source's commit step started and ended (building
    records, the transaction, the acks) and when ``Spool.append`` started and returned
    (the records are durable then) with how many records it stored, and how many
    messages the source held unacknowledged when the commit started.
    """
    sys.path.insert(0, str(REPO))
    from edge_agent import cli
    from edge_agent.records import AppendResult, Record
    from edge_agent.sources.mqtt import MqttSource
    from edge_agent.spool.analytics import AlsoWrite
    from edge_agent.spool.store import Spool

    appends: list[tuple[float, float, int]] = []
    steps: list[tuple[float, float, int]] = []
    append = Spool.append
    commit = MqttSource._commit

    def timed_append(
        self: Spool,
        records: Sequence[Record],
        *,
        also: AlsoWrite | None = None,
        also_bytes: int = 0,
    ) -> AppendResult:
        started = time.time()
        result = append(self, records, also=also, also_bytes=also_bytes)
        appends.append((started, time.time(), result.stored))
        return result

    def timed_commit(self: MqttSource, batch: list[Any]) -> None:
        started = time.time()
        # Messages received and not yet acked: this batch and what waits behind it.
        held = len(batch) + len(getattr(self, "_inbox", ()))
        commit(self, batch)
        steps.append((started, time.time(), held))

    Spool.append = timed_append  # type: ignore[method-assign]
    MqttSource._commit = timed_commit  # type: ignore[method-assign]
    try:
        return cli.main(["run", "-c", config])
    finally:
        Path(commit_log).write_text(json.dumps({"appends": appends, "steps": steps}))


def time_commits(
    broker: Broker, directory: Path, mode: str, count: int, *, size: int, rate: float
) -> CommitTiming:
    client_id = f"bench-agent-{mode}"
    run = run_agent(broker, directory, client_id, count, size, rate=rate, instrumented=True)
    assert run.commit_log is not None
    rows = run.rows
    missing, duplicates = loss(rows, count)
    log = json.loads(run.commit_log.read_text())
    appends = [(float(a), float(b), int(n)) for a, b, n in log["appends"] if int(n) > 0]
    steps = [(float(a), float(b), int(held)) for a, b, held in log["steps"]]
    ends: list[int] = []  # cumulative records stored after each commit
    stored = 0
    for _, _, n in appends:
        stored += n
        ends.append(stored)
    if stored != len(rows):
        raise BenchError(f"commit log has {stored} records, the spool {len(rows)}")
    pub_recv: list[float] = []
    recv_durable: list[float] = []
    pub_durable: list[float] = []
    for index, (captured_ms, _, sent) in enumerate(rows):
        # Records are numbered in arrival order and every commit appends its batch in
        # one transaction: record k is in the first commit whose running total exceeds k.
        durable = appends[bisect.bisect_right(ends, index)][1]
        pub_recv.append(captured_ms - 1000 * sent)
        recv_durable.append(1000 * durable - captured_ms)
        pub_durable.append(1000 * (durable - sent))
    for values in (pub_recv, recv_durable, pub_durable):
        values.sort()
    durations = sorted(1000 * (end - start) for start, end, _ in appends)
    captured = [c for c, _, _ in rows]
    span = (max(captured) - min(captured)) / 1000
    return CommitTiming(
        mode=mode,
        messages=count,
        rate=(len(rows) - 1) / span if span > 0 else float("nan"),
        commits=len(appends),
        commits_counted_by_agent=int(run.status.get("commit_batches", 0)),
        mean_batch=len(rows) / len(appends),
        append_p50_ms=percentile(durations, 50),
        append_p99_ms=percentile(durations, 99),
        commit_step_mean_ms=1000 * statistics.fmean(b - a for a, b, _ in steps),
        max_held=max(held for _, _, held in steps),
        pub_to_recv_p50_ms=percentile(pub_recv, 50),
        pub_to_recv_p99_ms=percentile(pub_recv, 99),
        recv_to_durable_p50_ms=percentile(recv_durable, 50),
        recv_to_durable_p99_ms=percentile(recv_durable, 99),
        pub_to_durable_p50_ms=percentile(pub_durable, 50),
        pub_to_durable_p99_ms=percentile(pub_durable, 99),
        missing=missing,
        duplicates=duplicates,
    )


# ---------------------------------------------------------------------- report


def environment() -> dict[str, str]:
    import paho.mqtt

    banner = command_output([MOSQUITTO, "-h"])
    mosquitto = banner.splitlines()[0] if banner else "?"
    return {
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "paho-mqtt": paho.mqtt.__version__,
        "mosquitto": mosquitto,
        "kernel": platform.release(),
    }


def print_table(measurements: Sequence[Measurement]) -> None:
    header = (
        f"{'run':>6} {'subject':<7} {'received':>9} {'msg/s':>8} {'CPU %core':>9} "
        f"{'CPU s/10k':>9} {'RSS MiB':>8} {'broker %':>8} {'missing':>7} {'dups':>5} "
        f"{'pub->recv p50/p99 ms':>21}"
    )
    print(header)
    print("-" * len(header))

    def row(label: str, subject: str, values: Sequence[float | None], losses: str) -> None:
        received, rate, cpu, per_10k, rss, broker, p50, p99 = values
        latency = f"{fmt(p50)} / {fmt(p99)}" if p50 is not None else "-"
        print(
            f"{label:>6} {subject:<7} {fmt(received):>9} {fmt(rate):>8} {fmt(cpu):>9} "
            f"{fmt(per_10k, 2):>9} {fmt(rss, 1):>8} {fmt(broker):>8} {losses} {latency:>21}"
        )

    def values(m: Measurement) -> list[float | None]:
        return [
            m.received,
            m.rate,
            m.cpu_pct,
            m.cpu_per_10k,
            m.rss_mib,
            m.broker_cpu_pct,
            m.pub_to_recv_p50_ms,
            m.pub_to_recv_p99_ms,
        ]

    def losses(missing: int, duplicates: int | None) -> str:
        return f"{missing:>7} {'-' if duplicates is None else duplicates:>5}"

    for m in measurements:
        row(str(m.round + 1), m.subject, values(m), losses(m.missing, m.duplicates))
    print("-" * len(header))
    for subject in ("bare", "agent"):
        group = [m for m in measurements if m.subject == subject]
        if not group:
            continue
        columns = list(zip(*(values(m) for m in group), strict=True))
        medians = [
            None
            if any(v is None for v in column)
            else median([v or 0.0 for v in column], skip_nan=False)
            for column in columns
        ]
        duplicates = sum(m.duplicates or 0 for m in group) if subject == "agent" else None
        row("median", subject, medians, losses(sum(m.missing for m in group), duplicates))
    print(
        "Median rows: the median of each column; missing/dups there are totals over all runs."
        " pub->recv under saturation is mostly time queued in the broker."
    )
    print()
    print("Per message, medians: CPU in user space and in the kernel, and voluntary context")
    print("switches (a thread blocked: socket, fsync, a lock, or waiting for the GIL).")
    for subject in ("bare", "agent"):
        group = [m for m in measurements if m.subject == subject]
        if group:
            user = median([m.user_us_per_msg for m in group], skip_nan=False)
            system = median([m.sys_us_per_msg for m in group], skip_nan=False)
            switches = median([m.switches_per_msg for m in group], skip_nan=False)
            print(
                f"  {subject:<6} user {user:5.1f} us   sys {system:5.1f} us"
                f"   switches {switches:5.2f}"
            )


def print_timing(timing: CommitTiming, rate: float, seconds: float) -> None:
    what = (
        f"paced at {rate:,.0f} msg/s for {seconds:.0f}s"
        if timing.mode == "paced"
        else "saturated (publisher flat out)"
    )
    print(
        f"  {what}: {timing.messages:,} messages at {timing.rate:,.0f} msg/s,"
        f" missing {timing.missing}, dups {timing.duplicates}"
    )
    print(
        f"    {timing.commits} commits (agent's count: {timing.commits_counted_by_agent}),"
        f" mean batch {timing.mean_batch:.1f} records; Spool.append p50/p99"
        f" {timing.append_p50_ms:.2f}/{timing.append_p99_ms:.2f} ms; whole commit step"
        f" (records, transaction, acks) mean {timing.commit_step_mean_ms:.2f} ms;"
        f" most messages held unacked at a commit: {timing.max_held:,}"
    )
    for label, p50, p99 in (
        ("publish->receive", timing.pub_to_recv_p50_ms, timing.pub_to_recv_p99_ms),
        ("receive->durable", timing.recv_to_durable_p50_ms, timing.recv_to_durable_p99_ms),
        ("publish->durable", timing.pub_to_durable_p50_ms, timing.pub_to_durable_p99_ms),
    ):
        print(f"    {label}  p50 {p50:8.1f} ms   p99 {p99:8.1f} ms")


def run_benchmark(args: argparse.Namespace) -> int:
    count, size = args.messages, args.payload
    make_payload(count, size, time.time())  # fails early if the payload is too small
    env = environment()
    print(
        f"edge-agent intake benchmark: {count:,} QoS 1 messages of {size} bytes, "
        f"{args.runs} runs; {env['cpus']} CPUs, Python {env['python']}, "
        f"SQLite {env['sqlite']}, paho-mqtt {env['paho-mqtt']}, {env['mosquitto']}"
    )
    settings = broker_settings()
    print("broker: " + ", ".join(f"{key} {value}" for key, value in settings.items()))
    measurements: list[Measurement] = []
    timings: list[CommitTiming] = []
    began = time.monotonic()
    with work_directory(args.workdir, keep=args.keep) as workdir:
        for round_no in range(args.runs):
            order = ("bare", "agent") if round_no % 2 == 0 else ("agent", "bare")
            broker = Broker(workdir / f"round{round_no + 1}" / "broker").start()
            try:
                for subject in order:
                    directory = workdir / f"round{round_no + 1}" / subject
                    if subject == "bare":
                        m = measure_bare(broker, directory, round_no, count, size)
                    else:
                        m = measure_agent(broker, directory, round_no, count, size)
                    measurements.append(m)
                    print(
                        f"  run {round_no + 1} {subject:<5}: {m.rate:,.0f} msg/s,"
                        f" CPU {m.cpu_pct:.0f}% of a core, RSS {m.rss_mib:.1f} MiB",
                        flush=True,
                    )
            finally:
                broker.stop()
        if args.latency_runs:
            broker = Broker(workdir / "latency" / "broker").start()
            try:
                directory = workdir / "latency"
                timings.append(
                    time_commits(
                        broker, directory / "saturated", "saturated", count, size=size, rate=0
                    )
                )
                paced = round(args.paced_rate * args.paced_seconds)
                if paced >= 2:
                    timings.append(
                        time_commits(
                            broker,
                            directory / "paced",
                            "paced",
                            paced,
                            size=size,
                            rate=args.paced_rate,
                        )
                    )
            finally:
                broker.stop()

    print()
    print_table(measurements)
    if timings:
        print()
        print(
            "Commit timing (separate runs of the agent with its commits timed in-process;"
            " durable = Spool.append returned; receive = records.captured_at_ms):"
        )
        for timing in timings:
            print_timing(timing, args.paced_rate, args.paced_seconds)

    bare_rate = median([m.rate for m in measurements if m.subject == "bare"], skip_nan=False)
    agent_rate = median([m.rate for m in measurements if m.subject == "agent"], skip_nan=False)
    ratio = agent_rate / bare_rate
    ratios = []
    for round_no in range(args.runs):
        pair = {m.subject: m.rate for m in measurements if m.round == round_no}
        ratios.append(pair["agent"] / pair["bare"])
    agent_rss = max(m.rss_bytes for m in measurements if m.subject == "agent")
    missing = sum(m.missing for m in measurements if m.subject == "agent") + sum(
        timing.missing for timing in timings
    )
    duplicates = sum(m.duplicates or 0 for m in measurements) + sum(
        timing.duplicates for timing in timings
    )
    print()
    print(
        f"intake ratio agent/bare (medians) = {agent_rate:,.0f} / {bare_rate:,.0f} = {ratio:.2f}"
        f"  (per run: {', '.join(f'{r:.2f}' for r in ratios)}); target >= {TARGET_RATIO}:"
        f" {verdict(ratio >= TARGET_RATIO)}"
    )
    print(
        f"agent peak RSS (highest run) = {agent_rss / 2**20:.1f} MiB = {agent_rss / 1e6:.1f} MB;"
        f" target < {TARGET_RSS_MB:.0f} MB: {verdict(agent_rss / 1e6 < TARGET_RSS_MB)}"
    )
    print(
        f"loss = {missing} missing sequence numbers over all agent runs ({duplicates}"
        f" duplicates); target 0: {verdict(missing == 0)}"
    )
    print(f"benchmark took {time.monotonic() - began:.0f}s")
    if args.json:
        write_json(
            args.json,
            {
                "environment": env,
                "broker": settings,
                "messages": count,
                "payload": size,
                "measurements": [
                    {
                        **asdict(m),
                        "cpu_pct": m.cpu_pct,
                        "cpu_per_10k": m.cpu_per_10k,
                        "broker_cpu_pct": m.broker_cpu_pct,
                    }
                    for m in measurements
                ],
                "commit_timings": [asdict(timing) for timing in timings],
                "ratio": ratio,
            },
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=50_000, help="messages per run")
    parser.add_argument("--payload", type=int, default=200, help="payload bytes")
    parser.add_argument("--runs", type=int, default=3, help="rounds (median is reported)")
    parser.add_argument(
        "--paced-rate", type=float, default=2000, help="msg/s of the paced latency run"
    )
    parser.add_argument("--paced-seconds", type=float, default=5, help="length of the paced run")
    parser.add_argument(
        "--no-latency-runs",
        dest="latency_runs",
        action="store_false",
        help="skip the two instrumented runs that time commits",
    )
    add_work_arguments(parser, kept="spools, logs and commit logs")
    # Child process roles (the benchmark starts itself in these).
    parser.add_argument("--publisher", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-subscriber", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--instrumented-agent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--commit-log", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=1883, help=argparse.SUPPRESS)
    parser.add_argument("--client-id", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=120, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publisher:
        return run_publisher(args.port, args.messages, args.payload, args.client_id, args.rate)
    if args.bare_subscriber:
        return run_bare_subscriber(args.port, args.messages, args.client_id, args.timeout)
    if args.instrumented_agent:
        return run_instrumented_agent(args.config, args.commit_log)
    if args.messages < 2 or args.runs < 1:
        parser.error("need --messages >= 2 and --runs >= 1")
    return run_or_fail(run_benchmark, args)


if __name__ == "__main__":
    raise SystemExit(main())
