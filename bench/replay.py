"""Replay after an outage: a backlog of video fragments and telemetry drains through
the agent within the upload budget.

The spool is filled before the agent starts, as after a long outage: ``--video-mb`` of
real H.264 fragments (one second each, about 1 MB) for a KVS sink and ``--records``
telemetry records of ``--payload`` bytes for a Kinesis sink (aggregating, 4 shards).
Then ``edge-agent run`` starts with ``[uplink] max_rate = --budget``; telemetry goes to
kinesalite and video to ``edge-agent kvs-local``, each through a proxy
(tests/fault_proxy.py) that counts the bytes crossing it, where the network would. While
the backlog drains, a sensor publishes 20 readings a second over MQTT (Mosquitto).

Reported:

* drain rate: bytes at the proxies from the first to the last byte of the backlog,
  divided by that time, as a share of the budget (target >= 0.95);
* budget accuracy: the highest and lowest 10 s window of the drain against the budget;
* live readings' latency (publish to arrival in kinesalite) while video fills the
  budget (those published after the telemetry backlog is gone), p50 and p99;
* the agent's RSS during the drain (median of 0.5 s samples, and the peak), for backlogs
  of different sizes (``--scales``): the peak must not grow with the backlog.

With ``--camera``, a test-pattern camera records live video (640x360, 1 Mbit/s, 2 s
fragments) into the same stream during the drain, and the video sink replays its backlog
``--replay`` oldest-first or live-first (comma-separated: each in turn). Also reported
then: how far behind capture the newest video acknowledged by the endpoint is, sampled
every 0.5 s from the status once the telemetry backlog (which goes first) is through:
what live-first buys with its lower drain rate.

    .venv/bin/python bench/replay.py        # 60 MB video + 200k records, then 3 x that
    .venv/bin/python bench/replay.py --video-mb 1000 --records 1000000 --scales 1
    .venv/bin/python bench/replay.py --camera --replay oldest-first,live-first --scales 1
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common import (
    REPO,
    BenchError,
    add_work_arguments,
    fmt,
    peak_rss_bytes,
    rss_bytes,
    run_or_fail,
    stop_process,
    tail,
    verdict,
    wait_until,
    work_directory,
    write_json,
)
from forward import Kinesalite, kinesis_client
from intake import Broker
from video import KvsLocal

sys.path.insert(0, str(REPO))
from edge_agent.config.units import parse_rate
from edge_agent.records import Record
from edge_agent.spool.store import Spool
from tests.fault_proxy import FaultProxy
from tests.support import spooled_count
from tests.video_backlog import encode_one_second, fill_backlog

MIB = 1024 * 1024
LIVE_RATE = 20  # readings per second during the drain
WINDOW_S = 10.0


def fill_spool(path: Path, video_mb: int, records: int, payload: int) -> tuple[int, int]:
    """The backlog: (video bytes, telemetry bytes) in the spool."""
    video = encode_one_second()
    fragment = sum(len(frame) for frame in video[1])
    fragments = max(1, video_mb * MIB // fragment)
    with Spool.open(path, durability="normal") as spool:
        fill_backlog(spool, video, fragments)
        now = int(time.time() * 1000)
        batch = []
        for seq in range(records):
            body = json.dumps({"seq": seq, "pad": ""}).encode()
            body = body[:-2] + b"x" * max(0, payload - len(body)) + b'"}'
            batch.append(Record("telemetry", f"k{seq % 64}", now, body))
            if len(batch) == 10_000:
                spool.append(batch)
                batch = []
        if batch:
            spool.append(batch)
    return fragments * fragment, records * payload


CAMERA = (
    '[cameras.live]\nsource = "lavfi"\nurl = "testsrc2=size=640x360:rate=30,realtime"\n'
    'sink = "video"\nfragment = "2s"\npreset = "ultrafast"\nbitrate = "1Mbit/s"\n'
)


def write_config(
    directory: Path,
    spool: Path,
    args: argparse.Namespace,
    replay: str,
    *,
    kinesis: str,
    stream: str,
    kvs: str,
    mqtt: int,
) -> Path:
    config = directory / "edge-agent.toml"
    config.write_text(
        f'[agent]\ndevice_name = "bench"\nstate_dir = "{directory / "state"}"\n'
        'status_interval = "500ms"\n\n'
        f'[spool]\npath = "{spool}"\nmax_bytes = "off"\nmax_age = "off"\n\n'
        f'[uplink]\nmax_rate = "{args.budget}"\n\n'
        f'[sinks.telemetry]\ntype = "kinesis"\nstream = "{stream}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{kinesis}"\naggregate = true\nmax_bytes = "off"\nmax_age = "off"\n'
        'linger = "100ms"\n\n'
        f'[sinks.video]\ntype = "kvs"\nstream = "cam"\nregion = "us-east-1"\n'
        f'endpoint_url = "{kvs}"\nack_timeout = "60s"\nmax_bytes = "off"\nmax_age = "off"\n'
        f'replay = "{replay}"\n\n'
        + (CAMERA + "\n" if args.camera else "")
        + f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt}\nclient_id = "bench-replay"\n\n'
        '[[mqtt.subscriptions]]\ntopic = "sensors/#"\nqos = 1\nsinks = ["telemetry"]\n'
        'partition_key = "live-{topic[1]}"\n'
    )
    return config


def pending(spool: Path, queue: str | None = None, before_ms: int | None = None) -> int:
    """Records in the spool (of ``queue``, or all; captured before ``before_ms``)."""
    return spooled_count(spool, queue, captured_before_ms=before_ms)


def backlog_left(spool: Path, started_ms: int) -> bool:
    """Anything of the backlog still there (live readings and video do not count)."""
    return (
        pending(spool, "video", started_ms) > 0
        or pending(spool, "telemetry", started_ms) > 2 * LIVE_RATE
    )


def video_lag(status: Path) -> float | None:
    """Seconds from the capture of the newest fragment the endpoint acknowledged to now."""
    try:
        newest = json.loads(status.read_text())["sinks"]["video"].get("newest_acked_ms")
    except (OSError, ValueError, KeyError):
        return None
    return time.time() - newest / 1000 if newest else None


def live_latencies(endpoint: str, stream: str, *, since: float) -> list[float]:
    """Publish-to-arrival of the live readings (their key starts with "live-") published
    from ``since`` on (wall clock): readings published while the telemetry backlog was
    still there wait behind it, oldest first, as they should."""
    from aws_kinesis_agg.deaggregator import iter_deaggregate_records

    client = kinesis_client(endpoint)
    out = []
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for _ in range(100_000):
            page = client.get_records(ShardIterator=iterator, Limit=10_000)
            for record in page["Records"]:
                if not record["PartitionKey"].startswith("live-"):
                    continue
                arrived = record["ApproximateArrivalTimestamp"].timestamp()
                raw = {
                    "eventSource": "aws:kinesis",
                    "eventID": f"{shard['ShardId']}:{record['SequenceNumber']}",
                    "kinesis": {
                        "kinesisSchemaVersion": "1.0",
                        "partitionKey": record["PartitionKey"],
                        "sequenceNumber": record["SequenceNumber"],
                        "approximateArrivalTimestamp": arrived,
                        "data": base64.b64encode(record["Data"]).decode(),
                    },
                }
                for user in iter_deaggregate_records([raw]):
                    published = float(json.loads(base64.b64decode(user["kinesis"]["data"]))["ts"])
                    if published >= since:
                        out.append(arrived - published)
            iterator = page.get("NextShardIterator")
            if not page["Records"] or not iterator:
                break
    return out


@dataclass
class Drain:
    scale: int
    replay: str
    backlog_mib: float
    link_mib: float
    seconds: float
    rate: float  # bytes/s at the link
    windows: list[float]  # bytes/s of each full 10 s window
    latencies: list[float]
    rss_peak_mib: float
    rss_median_mib: float
    lags: list[float]  # newest acknowledged video behind capture, s (with --camera)

    def p99(self) -> float:
        if len(self.latencies) >= 100:
            return statistics.quantiles(self.latencies, n=100)[98]
        return max(self.latencies or [float("nan")])


def drain_once(args: argparse.Namespace, workdir: Path, scale: int, replay: str) -> Drain:
    spool = workdir / "state" / "spool.db"
    spool.parent.mkdir(parents=True)
    video_mb, records = args.video_mb * scale, args.records * scale
    print(f"x{scale}: filling the spool with {video_mb} MB of video and {records:,} records ...")
    video_bytes, telemetry_bytes = fill_spool(spool, video_mb, records, args.payload)
    kinesalite = Kinesalite(workdir / "kinesalite.log").start()
    kvs = KvsLocal(workdir / "kvs-local.log").start(workdir / "kvs")
    broker = Broker(workdir / "broker").start()
    agent = publisher = None
    try:
        stream = kinesalite.create_stream(4)
        with FaultProxy(kinesalite.port) as kinesis_link, FaultProxy(kvs.port) as kvs_link:
            kinesis_link.latency = kvs_link.latency = args.latency_ms / 1000
            config = write_config(
                workdir, spool, args, replay, kinesis=kinesis_link.url, stream=stream,
                kvs=kvs_link.url, mqtt=broker.port,
            )  # fmt: skip
            started_ms = int(time.time() * 1000)  # what is captured from now on is live
            status = spool.with_name(spool.name + ".status.json")
            env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
            log = workdir / "agent.log"
            with open(log, "ab") as handle:
                agent = subprocess.Popen(
                    [sys.executable, "-m", "edge_agent", "run", "-c", str(config)],
                    stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                )  # fmt: skip
            publisher = subprocess.Popen(
                [sys.executable, str(REPO / "samples" / "sensor_publisher.py"), "--port",
                 str(broker.port), "--count", "0", "--rate", str(LIVE_RATE), "--quiet"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            rss: list[float] = []
            lags: list[float] = []
            deadline = time.monotonic() + args.timeout
            video_only_since: float | None = None  # wall time the telemetry backlog was gone
            while backlog_left(spool, started_ms):
                if video_only_since is None and pending(spool, "telemetry") <= 2 * LIVE_RATE:
                    video_only_since = time.time()
                if agent.poll() is not None:
                    raise BenchError(f"the agent exited:\n{tail(log)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"not drained in {args.timeout:.0f}s:\n{tail(log)}")
                rss.append(rss_bytes(agent.pid) / MIB)
                # Once telemetry (priority 0) has its backlog through, video has the link.
                lag = video_lag(status) if args.camera and video_only_since else None
                if lag is not None:
                    lags.append(lag)
                time.sleep(0.5)
            drained_at = time.monotonic()
            rss_peak = peak_rss_bytes(agent.pid) / MIB
            stop_process(publisher)
            wait_until(
                lambda: pending(spool, "telemetry") == 0, 30, "the last readings", interval=0.2
            )
            ups = sorted(kinesis_link.upstream + kvs_link.upstream)
        latencies = live_latencies(kinesalite.endpoint, stream, since=video_only_since or 0.0)
    finally:
        stop_process(publisher)
        stop_process(agent, timeout=20)
        broker.stop()
        kvs.stop()
        kinesalite.stop()
    first = ups[0][0]
    total = sum(size for at, size in ups if at <= drained_at)
    windows = []
    start = first + 2.0  # after the burst allowance
    while start + WINDOW_S <= drained_at:
        windows.append(sum(n for at, n in ups if start <= at < start + WINDOW_S) / WINDOW_S)
        start += WINDOW_S
    return Drain(
        scale=scale,
        replay=replay,
        backlog_mib=(video_bytes + telemetry_bytes) / MIB,
        link_mib=total / MIB,
        seconds=drained_at - first,
        rate=total / (drained_at - first),
        windows=windows,
        latencies=latencies,
        rss_peak_mib=rss_peak,
        rss_median_mib=statistics.median(rss) if rss else float("nan"),
        lags=lags,
    )


def run(args: argparse.Namespace) -> int:
    budget = parse_rate(args.budget)
    drains = []
    with work_directory(args.workdir, keep=args.keep) as workdir:
        for replay in args.replay.split(","):
            for scale in (int(part) for part in args.scales.split(",")):
                where = workdir / f"{replay}-x{scale}"
                drains.append(drain_once(args, where, scale, replay))
    print(json.dumps({"python": platform.python_version(), "cpus": os.cpu_count()}))
    print(f"budget {args.budget} = {budget:,.0f} B/s; 10 s windows after the first 2 s")
    if args.camera:
        print("a live camera records during the drain")
    if args.latency_ms:
        print(f"links {args.latency_ms:.0f} ms each way ({2 * args.latency_ms:.0f} ms round trip)")
    for d in drains:
        low = min(d.windows) / budget if d.windows else float("nan")
        high = max(d.windows) / budget if d.windows else float("nan")
        print(
            f"{d.replay} x{d.scale}: backlog {d.backlog_mib:,.0f} MiB -> "
            f"{d.link_mib:,.1f} MiB at the link in {d.seconds:,.1f} s = "
            f"{d.rate / budget:.3f} x the budget; windows "
            f"{fmt(low, 3)}..{fmt(high, 3)} x; live readings {len(d.latencies)}, p50 "
            f"{fmt(statistics.median(d.latencies) if d.latencies else None, 3)} s, p99 "
            f"{fmt(d.p99(), 3)} s; RSS median {d.rss_median_mib:.1f} MiB, peak "
            f"{d.rss_peak_mib:.1f} MiB"
            + (
                f"; newest video acknowledged behind capture: median "
                f"{fmt(statistics.median(d.lags), 1)} s, max {fmt(max(d.lags), 1)} s"
                if d.lags
                else ""
            )
        )
    print()
    # The drain target is for replay in capture order; live-first gives up some of the
    # drain rate for current live video (printed, not judged).
    judged = [d for d in drains if d.replay == "oldest-first"] or drains
    worst = min(d.rate for d in judged) / budget
    print(f"{verdict(worst >= 0.95)}  drain rate >= 0.95 x the budget ({worst:.3f})")
    for d in drains:
        if d not in judged:
            print(f"      {d.replay} x{d.scale}: drain rate {d.rate / budget:.3f} x the budget")
    highest = max((max(d.windows) for d in drains if d.windows), default=float("nan")) / budget
    print(f"{verdict(highest <= 1.05)}  no 10 s window above the budget + 5 % ({fmt(highest, 3)})")
    p99 = max(d.p99() for d in drains)
    print(f"{verdict(p99 < 2.0)}  live readings p99 < 2 s while video fills the budget ({p99:.3f})")
    for replay in dict.fromkeys(d.replay for d in drains):
        same = [d for d in drains if d.replay == replay]
        growth = same[-1].rss_peak_mib / same[0].rss_peak_mib
        print(
            f"{verdict(growth <= 1.1)}  peak RSS does not grow with the backlog ({replay}, "
            f"x{same[-1].scale} / x{same[0].scale}: {growth:.2f})"
        )
    if args.json:
        write_json(args.json, {"budget": budget, "drains": [asdict(d) for d in drains]})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="20Mbit/s")
    parser.add_argument("--video-mb", type=int, default=60, help="video backlog at x1")
    parser.add_argument("--records", type=int, default=200_000, help="telemetry backlog at x1")
    parser.add_argument("--scales", default="1,3", help="backlog multiples to drain")
    parser.add_argument("--payload", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--replay", default="oldest-first", help="video replay orders to run, comma-separated"
    )
    parser.add_argument("--camera", action="store_true", help="live video during the drain")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="one-way latency of the links (a long route)"
    )
    add_work_arguments(parser, kept="the spool and the logs")
    return run_or_fail(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
