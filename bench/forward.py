"""Forwarding benchmark: the agent drains a spool into kinesalite, against a bare boto3 loop.

The agent starts on a pre-filled spool; the bare loop sends the same records with boto3
PutRecords to the same endpoint.

    .venv/bin/python bench/forward.py [--records 200000] [--payload 200] [--rounds 3]

Every run gets a fresh in-memory kinesalite on a free loopback port and a new stream
(4 shards by default). The subjects:

* **bare**: the ceiling for this endpoint. A plain boto3 client in its own process sends
  the same N records (``{"seq":N,"pad":"xx..."}`` of exactly --payload bytes, partition
  keys ``sensor-<seq % 50>``) in full PutRecords requests of 500, one after the other,
  checking FailedRecordCount (and resending the failed entries, which kinesalite never
  produces). It stores nothing and has no spool to read or settle.
* **agent plain**: ``edge-agent run`` with no MQTT source and one kinesis sink, started
  on a spool pre-filled (with the project's own ``Spool.append``) with the same N records;
  pacing set out of the way (kinesalite has no shard limits), everything else default
  (``durability = "full"``: every ack is an fsync'ed transaction).
* **agent aggregated**: the same with ``aggregate = true`` (KPL aggregated records).

Parts (``--parts``, all by default): ``plain`` (bare and agent plain, N records, the order
alternating between rounds), ``aggregated`` (agent aggregated, N records) and ``backlog``
(agent aggregated at each ``--backlogs`` size and agent plain at the smallest one, for
peak RSS against backlog size).

Rates are taken from the endpoint: every record is read back (GetRecords, aggregates
opened with aws-kinesis-agg, the independent de-aggregator) with kinesalite's
ApproximateArrivalTimestamp (ms). A sequential client's requests show up as clusters of
equal timestamps; the drain rate counts the records after the first request over the
time from the first request to the last, the same way for both subjects. "incl.
start-up" is N / (last arrival - process start). Every record is checked: missing and
duplicate sequence numbers, partition keys. CPU (user + system of the process, all
threads, from /proc) is taken over the drain (bare: from its "go" to its result; agent:
from the first status report with records sent to the one with all N sent) and divided
by the records sent in that window; peak RSS is VmHWM just before the process stops, and
for the agent the median of VmRSS sampled every 20 ms while it drains is shown too.

``--profile plain|aggregated`` instead runs the agent's forwarder in this process under
cProfile (built with the project's own factory, on a copy of the pre-filled spool) and
prints where its time goes.

Exit status: 0 when the benchmark ran (targets met or not, see PASS/MISS), 1 if it broke.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import json
import math
import os
import platform
import pstats
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from common import (
    CLK_TCK,
    REPO,
    BenchError,
    LineReader,
    LoopbackServer,
    ProcTimes,
    add_work_arguments,
    command_output,
    fmt,
    make_payload,
    median,
    peak_rss_bytes,
    per,
    proc_times,
    read_status,
    rss_bytes,
    run_or_fail,
    stop_process,
    tail,
    verdict,
    wait_for_agent_exit,
    wait_until,
    work_directory,
    write_json,
)

KINESALITE_MODULES = REPO / ".local-tools" / "node_modules"
#: The sink (and so the spool queue) the agent forwards.
QUEUE = "telemetry"
REGION = "us-east-1"
#: Entries per PutRecords request of the bare loop (the service's maximum).
BATCH = 500
#: Records per Spool.append call when pre-filling.
PREFILL_CHUNK = 10_000
#: Records of one request reach kinesalite within a few ms of each other; a larger gap
#: between two arrival timestamps starts the next request.
REQUEST_GAP_S = 0.010
#: How often the status file is read while the agent drains.
POLL_S = 0.02
#: How often ``wait_until`` checks its condition.
WAIT_INTERVAL_S = 0.02
TARGET_RATIO = 0.9
TARGET_AGGREGATED_RATE = 100_000.0
#: Peak RSS at the largest backlog may exceed that at N by at most this factor.
RSS_GROWTH_LIMIT = 1.10
#: A run during which other processes used more than this share of a core is flagged.
NOISY_OTHER_PCT = 15.0
KPL_MAGIC = b"\xf3\x89\x9a\xc2"


@dataclass(frozen=True)
class Workload:
    """What every run sends: payload size, distinct partition keys, shards of the stream."""

    payload: int
    keys: int
    shards: int


# ---------------------------------------------------------------------- small helpers


def machine_busy() -> float:
    """CPU seconds all cores spent running processes since boot (/proc/stat: user, nice
    and system time; interrupts are left out, since loopback traffic is handled there)."""
    with open("/proc/stat") as handle:
        values = [int(value) for value in handle.readline().split()[1:4]]
    return sum(values) / CLK_TCK


def own_cpu() -> float:
    """CPU seconds of this (benchmark) process."""
    times = os.times()
    return times.user + times.system


@dataclass(frozen=True)
class Snapshot:
    """CPU of the subject, of kinesalite, of this script and of the machine at a moment."""

    subject: ProcTimes
    endpoint: ProcTimes
    own: float
    busy: float
    at: float

    @staticmethod
    def take(subject_pid: int, endpoint_pid: int) -> Snapshot:
        return Snapshot(
            proc_times(subject_pid),
            proc_times(endpoint_pid),
            own_cpu(),
            machine_busy(),
            time.time(),
        )

    def other_cpu(self, later: Snapshot) -> float:
        """CPU seconds used meanwhile by everything else on the machine (other work)."""
        ours = (
            (later.subject - self.subject).cpu
            + (later.endpoint - self.endpoint).cpu
            + later.own
            - self.own
        )
        return max(0.0, later.busy - self.busy - ours)


def parse_seq(payload: bytes) -> int:
    """The sequence number of a payload made by ``make_payload`` (-1 if it is not one)."""
    if not payload.startswith(b'{"seq":'):
        return -1
    end = payload.find(b",", 7)
    try:
        return int(payload[7:end])
    except ValueError:
        return -1


def partition_key(seq: int, keys: int) -> str:
    return f"sensor-{seq % keys}"


def child_env() -> dict[str, str]:
    """Dummy credentials for kinesalite, and never a proxy for the loopback endpoint."""
    no_proxy = ",".join(
        part for part in (os.environ.get("NO_PROXY", ""), "127.0.0.1,localhost") if part
    )
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": REGION,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }


def kinesis_client(endpoint: str, *, admin: bool = False) -> Any:
    """A boto3 client like the agent's: no retries inside botocore (``admin``: defaults)."""
    import boto3
    from botocore.config import Config

    config = Config(proxies={}, read_timeout=120)
    if not admin:
        config = config.merge(
            Config(retries={"total_max_attempts": 1, "mode": "standard"}, tcp_keepalive=True)
        )
    return boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=config,
    )


# ---------------------------------------------------------------------- kinesalite


def kinesalite_version() -> str:
    try:
        package = json.loads((KINESALITE_MODULES / "kinesalite" / "package.json").read_text())
    except (OSError, ValueError):
        return "?"
    return str(package.get("version", "?"))


class Kinesalite(LoopbackServer):
    """kinesalite on a free loopback port, in memory (no ``path``: memdown)."""

    name = "kinesalite"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Kinesalite:
        if not (KINESALITE_MODULES / "kinesalite").is_dir():
            raise BenchError(f"kinesalite is not installed in {KINESALITE_MODULES}")
        node = shutil.which("node")
        if node is None:
            raise BenchError("node is not on PATH (kinesalite needs it)")
        script = (
            "require('kinesalite')({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0,"
            f" shardLimit: 100}}).listen({self.port}, '127.0.0.1')"
        )
        self.launch(
            [node, "-e", script],
            timeout=20,
            interval=WAIT_INTERVAL_S,
            env={**os.environ, "NODE_PATH": str(KINESALITE_MODULES)},
            stderr_to_log=True,
        )
        return self

    def create_stream(self, shards: int) -> str:
        client = kinesis_client(self.endpoint, admin=True)
        try:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            client.create_stream(StreamName=name, ShardCount=shards)

            def active() -> bool:
                summary = client.describe_stream_summary(StreamName=name)
                return bool(summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")

            wait_until(active, 20, "the stream to become active", interval=WAIT_INTERVAL_S)
            return name
        finally:
            client.close()


@dataclass
class ReadBack:
    """What the stream holds, user records unpacked."""

    entries: int = 0
    #: Arrival time (kinesalite's ApproximateArrivalTimestamp) of every user record.
    arrivals: list[float] = field(default_factory=list)
    missing: int = 0
    duplicates: int = 0
    bad_records: int = 0
    seconds: float = 0.0


def read_back(endpoint: str, stream: str, count: int, keys: int) -> ReadBack:
    """Every record of every shard, aggregates opened by aws-kinesis-agg, checked."""
    from aws_kinesis_agg.deaggregator import iter_deaggregate_records

    began = time.monotonic()
    client = kinesis_client(endpoint, admin=True)
    result = ReadBack()
    seen = bytearray(count)
    extra = 0

    def take(key: str, data: bytes, arrival: float) -> None:
        nonlocal extra
        seq = parse_seq(data)
        result.arrivals.append(arrival)
        if not 0 <= seq < count or key != partition_key(seq, keys):
            result.bad_records += 1
        elif seen[seq]:
            extra += 1
        else:
            seen[seq] = 1

    try:
        for shard in client.list_shards(StreamName=stream)["Shards"]:
            iterator = client.get_shard_iterator(
                StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            for _ in range(100_000):  # bounded: pages per shard
                page = client.get_records(ShardIterator=iterator, Limit=1000)
                for item in page["Records"]:
                    result.entries += 1
                    data = bytes(item["Data"])
                    arrival = item["ApproximateArrivalTimestamp"].timestamp()
                    if not data.startswith(KPL_MAGIC):
                        take(item["PartitionKey"], data, arrival)
                        continue
                    for user in iter_deaggregate_records(item, data_format="Boto3"):
                        record = user["kinesis"]
                        raw = record["data"]
                        user_data = base64.b64decode(raw) if record.get("aggregated") else raw
                        take(record["partitionKey"], bytes(user_data), arrival)
                iterator = page.get("NextShardIterator")
                if not page["Records"] or not iterator:
                    break
    finally:
        client.close()
    result.missing = count - sum(seen)
    result.duplicates = extra
    result.seconds = time.monotonic() - began
    return result


@dataclass(frozen=True)
class Drain:
    """Rates from arrival timestamps at the endpoint."""

    rate: float  # user records after the first request / (last - first request)
    seconds: float
    first_request: int  # user records in the first request
    requests: int  # clusters of arrival times: the requests the endpoint saw
    first_arrival: float
    last_arrival: float


def drain_from_arrivals(arrivals: Sequence[float]) -> Drain:
    times = sorted(arrivals)
    if not times:
        return Drain(float("nan"), float("nan"), 0, 0, float("nan"), float("nan"))
    first_end = 0
    while first_end + 1 < len(times) and times[first_end + 1] - times[first_end] <= REQUEST_GAP_S:
        first_end += 1
    requests = 1 + sum(1 for a, b in pairwise(times) if b - a > REQUEST_GAP_S)
    span = times[-1] - times[first_end]
    after = len(times) - first_end - 1
    return Drain(
        rate=after / span if span > 0 and after > 0 else float("nan"),
        seconds=span,
        first_request=first_end + 1,
        requests=requests,
        first_arrival=times[0],
        last_arrival=times[-1],
    )


# ---------------------------------------------------------------------- results


@dataclass
class Measurement:
    subject: str  # "bare" or "agent"
    mode: str  # "plain" or "aggregated"
    round: int
    records: int
    received: int
    entries: int
    drain: Drain
    started_at: float  # wall clock when the process was started
    times: ProcTimes  # CPU over the measured window
    window_records: int  # records sent in that window
    window_s: float
    total_times: ProcTimes  # whole process, start-up included
    rss_bytes: int  # peak (VmHWM)
    #: Median of VmRSS sampled every poll while draining (agent; the peak for bare).
    rss_median_bytes: int
    endpoint_times: ProcTimes  # kinesalite over the same window
    #: CPU used by other processes on the machine over the same window (noise).
    other_cpu_s: float
    missing: int
    duplicates: int
    bad_records: int
    requests: int  # the client's own count
    loop_rate: float | None = None  # bare: N / its own loop time
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.drain.rate

    @property
    def total_s(self) -> float:
        return self.drain.last_arrival - self.started_at

    @property
    def total_rate(self) -> float:
        return self.records / self.total_s if self.total_s > 0 else float("nan")

    @property
    def startup_s(self) -> float:
        """Process start to the first record at the endpoint."""
        return self.drain.first_arrival - self.started_at

    def _us_per_record(self, times: ProcTimes) -> float:
        """CPU of ``times`` per record sent in the window, in microseconds."""
        return per(1e6 * times.cpu, self.window_records)

    def _pct_of_core(self, us_per_record: float) -> float:
        """Share of a core while draining: CPU per record x records per second."""
        return us_per_record * self.rate / 1e4

    @property
    def us_per_record(self) -> float:
        return self._us_per_record(self.times)

    @property
    def cpu_pct(self) -> float:
        return self._pct_of_core(self.us_per_record)

    @property
    def endpoint_us_per_record(self) -> float:
        return self._us_per_record(self.endpoint_times)

    @property
    def endpoint_cpu_pct(self) -> float:
        return self._pct_of_core(self.endpoint_us_per_record)

    @property
    def other_cpu_pct(self) -> float:
        return per(100 * self.other_cpu_s, self.window_s)

    @property
    def rss_mib(self) -> float:
        return self.rss_bytes / 2**20

    @property
    def rss_median_mib(self) -> float:
        return self.rss_median_bytes / 2**20

    @property
    def label(self) -> str:
        return "bare" if self.subject == "bare" else f"agent {self.mode}"


def measurement(
    subject: str,
    mode: str,
    round_no: int,
    back: ReadBack,
    *,
    count: int,
    span: tuple[Snapshot, Snapshot],
    started_at: float,
    window_records: int,
    window_s: float,
    rss: int,
    rss_median: int,
    requests: int,
    extra: dict[str, Any],
    loop_rate: float | None = None,
) -> Measurement:
    """One run's Measurement: records and arrivals from ``back``, CPU from the snapshots
    ``span`` taken at the start and the end of the drain window."""
    before, after = span
    return Measurement(
        subject=subject,
        mode=mode,
        round=round_no,
        records=count,
        received=len(back.arrivals),
        entries=back.entries,
        drain=drain_from_arrivals(back.arrivals),
        started_at=started_at,
        times=after.subject - before.subject,
        window_records=window_records,
        window_s=window_s,
        total_times=after.subject,
        rss_bytes=rss,
        rss_median_bytes=rss_median,
        endpoint_times=after.endpoint - before.endpoint,
        other_cpu_s=before.other_cpu(after),
        missing=back.missing,
        duplicates=back.duplicates,
        bad_records=back.bad_records,
        requests=requests,
        loop_rate=loop_rate,
        extra=extra,
    )


def as_dict(m: Measurement) -> dict[str, Any]:
    return {
        **asdict(m),
        "rate": m.rate,
        "total_rate": m.total_rate,
        "startup_s": m.startup_s,
        "us_per_record": m.us_per_record,
        "cpu_pct": m.cpu_pct,
        "endpoint_us_per_record": m.endpoint_us_per_record,
        "endpoint_cpu_pct": m.endpoint_cpu_pct,
        "other_cpu_pct": m.other_cpu_pct,
    }


# ---------------------------------------------------------------------- the spool


def build_template(path: Path, count: int, size: int, keys: int) -> float:
    """A spool holding ``count`` records for the sink, written with the project's API;
    returns the seconds it took. Closed afterwards, so the file is complete on its own."""
    sys.path.insert(0, str(REPO))
    from edge_agent.records import Record
    from edge_agent.spool.store import Spool

    began = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    spool = Spool.open(path)
    try:
        # A backlog: records captured an hour ago (nothing lingers for more to come).
        now_ms = int(time.time() * 1000) - 3_600_000
        for first in range(0, count, PREFILL_CHUNK):
            spool.append(
                [
                    Record(QUEUE, partition_key(seq, keys), now_ms, make_payload(seq, size))
                    for seq in range(first, min(count, first + PREFILL_CHUNK))
                ]
            )
        pending = spool.pending(QUEUE)[0]
    finally:
        spool.close()
    if pending != count:
        raise BenchError(f"pre-filled spool holds {pending} records, not {count}")
    return time.monotonic() - began


def copy_spool(template: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        source = Path(f"{template}{suffix}")
        if source.exists():
            shutil.copyfile(source, Path(f"{target}{suffix}"))


def spool_rows(path: Path) -> int:
    """Records left in the spool file, read with sqlite3 independently of the agent."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])
    finally:
        conn.close()


class Templates:
    """One pre-filled spool per record count, built on first use and copied per run."""

    def __init__(self, directory: Path, size: int, keys: int) -> None:
        self.directory = directory
        self.size = size
        self.keys = keys
        self.built: dict[int, Path] = {}
        self.seconds: dict[int, float] = {}

    def get(self, count: int) -> Path:
        path = self.built.get(count)
        if path is None:
            path = self.directory / f"spool-{count}.db"
            self.seconds[count] = build_template(path, count, self.size, self.keys)
            print(
                f"  pre-filled a spool with {count:,} records in {self.seconds[count]:.1f}s",
                flush=True,
            )
            self.built[count] = path
        return path


# ---------------------------------------------------------------------- bare loop


def _self_command(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def run_bare_loop(endpoint: str, stream: str, count: int, size: int, keys: int) -> int:
    """Child process: full PutRecords batches, sequentially, as fast as the endpoint answers.

    Prints READY once its client exists, starts on a line on stdin, prints one JSON line
    when done, then waits for stdin to close so the parent can read /proc.
    """
    client = kinesis_client(endpoint)
    print("READY", flush=True)
    if not sys.stdin.readline():
        return 1
    started = time.time()
    requests = 0
    resent = 0
    for first in range(0, count, BATCH):
        entries = [
            {"Data": make_payload(seq, size), "PartitionKey": partition_key(seq, keys)}
            for seq in range(first, min(count, first + BATCH))
        ]
        for _ in range(1000):  # bounded: resend what failed
            response = client.put_records(StreamName=stream, Records=entries)
            requests += 1
            if not response["FailedRecordCount"]:
                break
            entries = [
                entry
                for entry, result in zip(entries, response["Records"], strict=True)
                if "ErrorCode" in result
            ]
            resent += len(entries)
        else:
            print(f"entries still failing after 1000 tries at {first}", file=sys.stderr)
            return 1
    ended = time.time()
    print(
        json.dumps({"start": started, "end": ended, "requests": requests, "resent": resent}),
        flush=True,
    )
    select.select([sys.stdin], [], [], 60)  # until the parent closes stdin
    client.close()
    return 0


def measure_bare(directory: Path, round_no: int, count: int, work: Workload) -> Measurement:
    size, keys, shards = work.payload, work.keys, work.shards
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "bare.log"
    kinesalite = Kinesalite(directory / "kinesalite.log").start()
    child: subprocess.Popen[bytes] | None = None
    try:
        stream = kinesalite.create_stream(shards)
        timeout = max(60.0, count / 1000)
        started_at = time.time()
        with open(log, "ab") as handle:
            child = subprocess.Popen(
                _self_command(
                    "--bare-loop",
                    "--endpoint",
                    kinesalite.endpoint,
                    "--stream",
                    stream,
                    "--records",
                    str(count),
                    "--payload",
                    str(size),
                    "--keys",
                    str(keys),
                ),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=handle,
                env=child_env(),
            )
        assert child.stdout is not None and child.stdin is not None
        lines = LineReader(child.stdout)
        if lines.readline(60) != "READY":
            raise BenchError(f"the bare loop did not start: {tail(log)}")
        before = Snapshot.take(child.pid, kinesalite.pid)
        go = time.time()
        child.stdin.write(b"go\n")
        child.stdin.flush()
        line = lines.readline(timeout)
        if line is None:
            raise BenchError(f"the bare loop gave no result in {timeout:.0f}s: {tail(log)}")
        after = Snapshot.take(child.pid, kinesalite.pid)
        window_s = after.at - go
        rss = peak_rss_bytes(child.pid)
        child.stdin.close()
        child.wait(20)
        if child.returncode != 0:
            raise BenchError(f"the bare loop failed ({child.returncode}): {tail(log)}")
        result = json.loads(line)
        back = read_back(kinesalite.endpoint, stream, count, keys)
    finally:
        stop_process(child)
        kinesalite.stop()
    loop_s = float(result["end"]) - float(result["start"])
    return measurement(
        "bare",
        "plain",
        round_no,
        back,
        count=count,
        span=(before, after),
        started_at=started_at,
        window_records=count,
        window_s=window_s,
        rss=rss,
        rss_median=rss,
        requests=int(result["requests"]),
        loop_rate=count / loop_s if loop_s > 0 else float("nan"),
        extra={"resent": int(result["resent"]), "read_back_s": back.seconds},
    )


# ---------------------------------------------------------------------- the agent


def write_agent_config(
    directory: Path, spool: Path, endpoint: str, stream: str, *, aggregate: bool
) -> Path:
    config = directory / "edge-agent.toml"
    config.write_text(
        f'[agent]\ndevice_name = "bench"\nstate_dir = "{directory / "state"}"\n'
        'status_interval = "200ms"\n\n'
        f'[spool]\npath = "{spool}"\nmax_bytes = "off"\nmax_age = "off"\n\n'
        f'[sinks.{QUEUE}]\ntype = "kinesis"\nstream = "{stream}"\nregion = "{REGION}"\n'
        f'endpoint_url = "{endpoint}"\nmax_bytes = "off"\nmax_age = "off"\n'
        "# kinesalite has no shard limits: pacing would only cap the run\n"
        'shard_records_per_second = 1000000\nshard_bytes_per_second = "1GiB"\n'
        f"aggregate = {'true' if aggregate else 'false'}\n"
    )
    return config


def sink_status(status: dict[str, Any] | None) -> dict[str, Any]:
    if not status:
        return {}
    return dict(status.get("sinks", {}).get(QUEUE, {}))


def measure_agent(
    directory: Path,
    round_no: int,
    count: int,
    work: Workload,
    *,
    template: Path,
    aggregate: bool,
) -> Measurement:
    keys, shards = work.keys, work.shards
    directory.mkdir(parents=True, exist_ok=True)
    spool = directory / "state" / "spool.db"
    copy_spool(template, spool)
    status_file = Path(f"{spool}.status.json")
    log = directory / "agent.log"
    kinesalite = Kinesalite(directory / "kinesalite.log").start()
    process: subprocess.Popen[bytes] | None = None
    try:
        stream = kinesalite.create_stream(shards)
        config = write_agent_config(
            directory, spool, kinesalite.endpoint, stream, aggregate=aggregate
        )
        timeout = max(60.0, count / 1000)
        started_at = time.time()
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "-c", str(config)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=child_env(),
            )
        pid = process.pid
        first: tuple[int, Snapshot] | None = None
        rss_samples: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise BenchError(f"the agent exited ({process.returncode}):\n{tail(log)}")
            status = read_status(status_file)
            sent = int(sink_status(status).get("records_sent", 0))
            if first is None and sent > 0:
                first = (sent, Snapshot.take(pid, kinesalite.pid))
            if first is not None:
                rss_samples.append(rss_bytes(pid))
            if sent >= count:
                break
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the agent sent {sent} of {count} records in {timeout:.0f}s:\n{tail(log)}"
                )
            time.sleep(POLL_S)
        assert first is not None and status is not None
        after = Snapshot.take(pid, kinesalite.pid)
        rss = peak_rss_bytes(pid)
        final = sink_status(status)
        process.send_signal(signal.SIGTERM)
        wait_for_agent_exit(process, 30, log)
        back = read_back(kinesalite.endpoint, stream, count, keys)
    finally:
        stop_process(process)
        kinesalite.stop()
    first_sent, before = first
    left = spool_rows(spool)
    return measurement(
        "agent",
        "aggregated" if aggregate else "plain",
        round_no,
        back,
        count=count,
        span=(before, after),
        started_at=started_at,
        window_records=count - first_sent,
        window_s=after.at - before.at,
        rss=rss,
        rss_median=int(statistics.median(rss_samples)),
        requests=int(final.get("requests", 0)),
        extra={
            "records_sent": int(final.get("records_sent", 0)),
            "entries_sent": int(final.get("entries_sent", 0)),
            "retries": int(final.get("retries", 0)),
            "request_errors": int(final.get("request_errors", 0)),
            "dead_lettered": int(final.get("dead_lettered", 0)),
            "left_in_spool": left,
            "read_back_s": back.seconds,
        },
    )


# ---------------------------------------------------------------------- profile


def run_profile(args: argparse.Namespace, workdir: Path) -> None:
    """The agent's forwarder in this process under cProfile, on a pre-filled spool."""
    sys.path.insert(0, str(REPO))
    from edge_agent.assembly import make_forwarder
    from edge_agent.config.loading import load_config
    from edge_agent.delivery.budget import UploadBudget
    from edge_agent.spool.store import Spool

    count = args.records
    aggregate = args.profile == "aggregated"
    template = Templates(workdir / "templates", args.payload, args.keys).get(count)
    directory = workdir / "profile"
    spool_path = directory / "state" / "spool.db"
    copy_spool(template, spool_path)
    kinesalite = Kinesalite(directory / "kinesalite.log").start()
    try:
        stream = kinesalite.create_stream(args.shards)
        config = load_config(
            write_agent_config(
                directory, spool_path, kinesalite.endpoint, stream, aggregate=aggregate
            )
        )
        os.environ.update(child_env())
        stop = threading.Event()
        spool = Spool.open(spool_path)
        forwarder = make_forwarder(config.sinks[QUEUE], spool, UploadBudget(None, 1024), stop)

        def stopper() -> None:
            deadline = time.monotonic() + max(60.0, count / 500)
            while spool.pending(QUEUE)[0] > 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            stop.set()
            spool.wake_waiters()

        watcher = threading.Thread(target=stopper, name="stopper", daemon=True)
        profile = cProfile.Profile()
        endpoint_before = proc_times(kinesalite.pid)
        began = time.monotonic()
        cpu_began = time.thread_time()
        watcher.start()
        profile.enable()
        forwarder.run()
        profile.disable()
        cpu = time.thread_time() - cpu_began
        seconds = time.monotonic() - began
        endpoint_cpu = (proc_times(kinesalite.pid) - endpoint_before).cpu
        watcher.join(5)
        left = spool.pending(QUEUE)[0]
        spool.close()
    finally:
        kinesalite.stop()
    stats_file = workdir / "profile.pstats"
    profile.dump_stats(stats_file)
    sent = forwarder.stats.records_sent
    print()
    print(
        f"forwarder ({args.profile}) in-process under cProfile: {sent:,} records sent in"
        f" {seconds:.1f}s ({sent / seconds:,.0f}/s, profiling slows it down),"
        f" {forwarder.stats.requests} requests, {left} left in the spool;"
        f" forwarder thread CPU {cpu:.1f}s ({1e6 * cpu / max(sent, 1):.1f} us/record),"
        f" kinesalite CPU {endpoint_cpu:.1f}s"
    )
    for order in ("tottime", "cumulative"):
        buffer = io.StringIO()
        stats = pstats.Stats(str(stats_file), stream=buffer)
        stats.strip_dirs().sort_stats(order).print_stats(args.profile_top)
        print(f"\n--- top {args.profile_top} by {order} ---")
        text = buffer.getvalue()
        print(text[text.find("   ncalls") :] if "   ncalls" in text else text)


# ---------------------------------------------------------------------- report


def environment() -> dict[str, str]:
    import boto3

    node = command_output(["node", "--version"]) or "?"
    git = ["git", "-C", str(REPO)]
    commit = command_output([*git, "rev-parse", "--short", "HEAD"])
    changed = command_output([*git, "status", "--porcelain", "--", "edge_agent"])
    if commit is None or changed is None:
        commit, changed = "", ""
    return {
        "code": (commit.strip() or "?") + (" + changes in edge_agent/" if changed else ""),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "boto3": boto3.__version__,
        "node": node.strip() or "?",
        "kinesalite": kinesalite_version(),
        "kernel": platform.release(),
    }


COLUMNS = (
    ("records", 9, 0),
    ("rec/s", 8, 0),
    ("incl.start", 10, 0),
    ("start s", 7, 2),
    ("CPU us/rec", 10, 1),
    ("CPU %", 6, 0),
    ("CPU s all", 9, 2),
    ("RSS MiB", 8, 1),
    ("RSS med", 7, 1),
    ("kl us/rec", 9, 1),
    ("kl %", 5, 0),
    ("req", 5, 0),
    ("other %", 7, 0),
)


def _values(m: Measurement) -> list[float]:
    return [
        m.records,
        m.rate,
        m.total_rate,
        m.startup_s,
        m.us_per_record,
        m.cpu_pct,
        m.total_times.cpu,
        m.rss_mib,
        m.rss_median_mib,
        m.endpoint_us_per_record,
        m.endpoint_cpu_pct,
        m.requests,
        m.other_cpu_pct,
    ]


def print_table(measurements: Sequence[Measurement]) -> None:
    header = f"{'round':>5} {'subject':<17} " + " ".join(
        f"{name:>{width}}" for name, width, _ in COLUMNS
    )
    header += f" {'missing':>7} {'dups':>4}"
    print(header)
    print("-" * len(header))

    def row(label: str, subject: str, values: Sequence[float], losses: str) -> None:
        cells = " ".join(
            f"{fmt(value, digits):>{width}}"
            for value, (_, width, digits) in zip(values, COLUMNS, strict=True)
        )
        print(f"{label:>5} {subject:<17} {cells} {losses}")

    for m in measurements:
        row(str(m.round + 1), m.label, _values(m), f"{m.missing:>7} {m.duplicates:>4}")
    print("-" * len(header))
    groups: dict[tuple[str, int], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.label, m.records), []).append(m)
    for (label, _), group in groups.items():
        columns = list(zip(*(_values(m) for m in group), strict=True))
        losses = f"{sum(m.missing for m in group):>7} {sum(m.duplicates for m in group):>4}"
        row("med", label, [median(column) for column in columns], losses)
    print(
        "rec/s: user records after the first request / (last - first request), from the"
        " endpoint's arrival times; incl.start: records / (last arrival - process start);"
        " start s: process start -> first record at the endpoint; CPU us/rec and CPU %"
        " (of one core): the process while draining; CPU s all: the whole process, start-up"
        " included; RSS MiB: peak (VmHWM); RSS med: median of VmRSS sampled every 20 ms while"
        " draining (agent); kl: kinesalite over the same window; req: PutRecords requests;"
        " other %: CPU of all other processes on the machine over that window (noise);"
        " med rows: medians, missing/dups there are totals."
    )


def rates(measurements: Sequence[Measurement], label: str, count: int) -> list[float]:
    return [m.rate for m in measurements if m.label == label and m.records == count]


def summarize(measurements: Sequence[Measurement], args: argparse.Namespace) -> dict[str, Any]:
    count = args.records
    summary: dict[str, Any] = {}
    bare = median(rates(measurements, "bare", count))
    plain = median(rates(measurements, "agent plain", count))
    aggregated = median(rates(measurements, "agent aggregated", count))
    print()
    if not math.isnan(bare) and not math.isnan(plain):
        ratio = plain / bare
        per_round = []
        for round_no in range(args.rounds):
            pair = {
                m.label: m.rate
                for m in measurements
                if m.round == round_no and m.records == count and m.mode == "plain"
            }
            if "bare" in pair and "agent plain" in pair:
                per_round.append(pair["agent plain"] / pair["bare"])
        summary["plain_ratio"] = ratio
        summary["plain_ratio_per_round"] = per_round
        print(
            f"unaggregated: agent/bare (medians) = {plain:,.0f} / {bare:,.0f} rec/s = {ratio:.2f}"
            f"  (per round: {', '.join(f'{r:.2f}' for r in per_round)});"
            f" target >= {TARGET_RATIO}: {verdict(ratio >= TARGET_RATIO)}"
        )
    if not math.isnan(aggregated):
        summary["aggregated_rate"] = aggregated
        context = f"; {aggregated / bare:.1f}x the bare loop" if not math.isnan(bare) else ""
        print(
            f"aggregated: agent {aggregated:,.0f} user records/s (median){context};"
            f" target >= {TARGET_AGGREGATED_RATE:,.0f}/s:"
            f" {verdict(aggregated >= TARGET_AGGREGATED_RATE)}"
        )
    for mode in ("plain", "aggregated"):
        label = f"agent {mode}"
        by_size: dict[int, list[float]] = {}
        for m in measurements:
            if m.label == label:
                by_size.setdefault(m.records, []).append(m.rss_mib)
        if len(by_size) < 2:
            continue
        sizes = sorted(by_size)
        medians = {size: median(by_size[size]) for size in sizes}
        typical = {
            size: median(
                [m.rss_median_mib for m in measurements if m.label == label and m.records == size]
            )
            for size in sizes
        }
        summary[f"rss_mib_{mode}"] = {str(size): medians[size] for size in sizes}
        summary[f"rss_median_mib_{mode}"] = {str(size): typical[size] for size in sizes}
        line = ", ".join(
            f"{size:,}: {medians[size]:.1f} (max {max(by_size[size]):.1f})" for size in sizes
        )
        largest = sizes[-1]
        reference = count if count in medians and count != largest else sizes[-2]
        growth = medians[largest] / medians[reference]
        print(
            f"peak RSS {label}, MiB by backlog (median): {line}; {largest:,} vs {reference:,}:"
            f" x{growth:.2f}, target <= x{RSS_GROWTH_LIMIT:.2f}:"
            f" {verdict(growth <= RSS_GROWTH_LIMIT)}"
        )
        print(
            "  RSS while draining (median of samples): "
            + ", ".join(f"{size:,}: {typical[size]:.1f}" for size in sizes)
        )
    busy = [m for m in measurements if m.other_cpu_pct > NOISY_OTHER_PCT]
    if busy:
        print(
            f"WARNING: {len(busy)} of {len(measurements)} runs shared the machine with other"
            f" work (other processes above {NOISY_OTHER_PCT:.0f}% of a core: column other %);"
            " their rates are not comparable"
        )
    lost = sum(m.missing + m.duplicates + m.bad_records for m in measurements)
    left = sum(int(m.extra.get("left_in_spool", 0)) for m in measurements)
    print(
        f"every run read back: {sum(m.missing for m in measurements)} missing,"
        f" {sum(m.duplicates for m in measurements)} duplicates,"
        f" {sum(m.bad_records for m in measurements)} wrong key or payload;"
        f" {left} records left in agent spools: {verdict(lost == 0 and left == 0)}"
    )
    return summary


def run_benchmark(args: argparse.Namespace) -> int:
    count, size, keys, shards = args.records, args.payload, args.keys, args.shards
    parts = set(args.parts.split(","))
    work = Workload(size, keys, shards)
    make_payload(count, size)  # fails early if the payload is too small
    env = environment()
    print(
        f"edge-agent forwarding benchmark: {count:,} records of {size} bytes, {keys} keys,"
        f" {shards} shards, {args.rounds} rounds, parts {','.join(sorted(parts))};"
        f" {env['cpus']} CPUs, Python {env['python']}, boto3 {env['boto3']},"
        f" kinesalite {env['kinesalite']} on node {env['node']}, SQLite {env['sqlite']};"
        f" code {env['code']}; load average {os.getloadavg()[0]:.2f}"
    )
    measurements: list[Measurement] = []
    began = time.monotonic()
    with work_directory(args.workdir, keep=args.keep) as workdir:
        templates = Templates(workdir / "templates", size, keys)
        if args.profile:
            run_profile(args, workdir)
            return 0
        for round_no in range(args.rounds):
            plan: list[tuple[str, int, bool]] = []  # (subject, records, aggregate)
            if "plain" in parts:
                pair = [("bare", count, False), ("agent", count, False)]
                plan += pair if round_no % 2 == 0 else pair[::-1]
            if "aggregated" in parts:
                plan.append(("agent", count, True))
            if "backlog" in parts:
                plan += [("agent", backlog, True) for backlog in args.backlogs]
                plan.append(("agent", min(args.backlogs), False))
            for subject, records, aggregate in plan:
                name = f"{subject}-{'aggregated' if aggregate else 'plain'}-{records}"
                directory = workdir / f"round{round_no + 1}" / name
                if subject == "bare":
                    m = measure_bare(directory, round_no, records, work)
                else:
                    template = templates.get(records)
                    m = measure_agent(
                        directory, round_no, records, work, template=template, aggregate=aggregate
                    )
                measurements.append(m)
                print(
                    f"  round {round_no + 1} {m.label:<16} {records:>9,}: {fmt(m.rate):>9} rec/s"
                    f" ({fmt(m.total_rate)} incl. start-up), CPU {fmt(m.us_per_record, 1)}"
                    f" us/rec, peak RSS {m.rss_mib:.1f} MiB, kinesalite {fmt(m.endpoint_cpu_pct)}%"
                    f" of a core, other load {m.other_cpu_pct:.0f}%, {m.missing} missing",
                    flush=True,
                )
                if not args.keep:
                    shutil.rmtree(directory, ignore_errors=True)

    print()
    print_table(measurements)
    summary = summarize(measurements, args)
    print(
        f"benchmark took {time.monotonic() - began:.0f}s;"
        f" load average (1/5/15 min) now {', '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    if args.json:
        write_json(
            args.json,
            {
                "environment": env,
                "records": count,
                "payload": size,
                "keys": keys,
                "shards": shards,
                "prefill_seconds": {str(k): v for k, v in templates.seconds.items()},
                "measurements": [as_dict(m) for m in measurements],
                "summary": summary,
            },
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=200_000, help="records per run (N)")
    parser.add_argument("--payload", type=int, default=200, help="payload bytes")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--shards", type=int, default=4, help="shards of each stream")
    parser.add_argument("--keys", type=int, default=50, help="distinct partition keys")
    parser.add_argument(
        "--parts",
        default="plain,aggregated,backlog",
        help="what to run, comma-separated: plain, aggregated, backlog",
    )
    parser.add_argument(
        "--backlogs",
        default="50000,800000",
        help="backlog sizes of the RSS runs (aggregated at each, plain at the smallest)",
    )
    parser.add_argument(
        "--profile",
        choices=("plain", "aggregated"),
        help="instead: profile the forwarder in-process (cProfile) draining --records",
    )
    parser.add_argument("--profile-top", type=int, default=30, help=argparse.SUPPRESS)
    add_work_arguments(parser, kept="spools, logs and profiles")
    # The child process role (the benchmark starts itself in it).
    parser.add_argument("--bare-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--stream", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_loop:
        return run_bare_loop(args.endpoint, args.stream, args.records, args.payload, args.keys)
    try:
        args.backlogs = sorted({int(value) for value in args.backlogs.split(",") if value})
    except ValueError:
        parser.error("--backlogs takes comma-separated record counts")
    unknown = set(args.parts.split(",")) - {"plain", "aggregated", "backlog"}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if args.records < 2 or args.rounds < 1 or not args.backlogs or min(args.backlogs) < 2:
        parser.error("need --records >= 2, --rounds >= 1 and backlogs >= 2")
    return run_or_fail(run_benchmark, args)


if __name__ == "__main__":
    raise SystemExit(main())
