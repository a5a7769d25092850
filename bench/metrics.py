"""Metrics endpoint benchmark: what serving Prometheus metrics costs the forwarding agent.

    .venv/bin/python bench/metrics.py [--seconds 60] [--rate 500] [--rounds 2]

Each round runs the agent twice, metrics off and metrics on, in alternating order,
against a fresh Mosquitto and a fresh stream on an in-memory kinesalite (both on free
loopback ports). In each run a publisher (samples/sensor_publisher.py) sends --rate QoS 1
readings per second, which the agent takes in and forwards to the stream, for the whole
run. After a warm-up (--warmup s, while the agent's first requests settle) the script
measures for --seconds: the agent's CPU (user + system of all its threads, from /proc)
over the window, as a share of one core, and its RSS (VmRSS, sampled every second: the
median, and VmHWM at the end). With metrics on, it scrapes /metrics once a second during
the window, the way a close-by collector would (Prometheus' default is every 15 s), and
records how long each scrape took and how large the answer was.

Targets: metrics on costs under 1 % of a core and under 5 MiB of RSS more than off.
Exit status: 0 when the benchmark ran (targets met or not, see PASS/MISS), 1 if it broke.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    REPO,
    BenchError,
    ProcTimes,
    add_work_arguments,
    fmt,
    free_port,
    median,
    peak_rss_bytes,
    proc_times,
    read_status,
    rss_bytes,
    run_or_fail,
    stop_process,
    verdict,
    wait_until,
    work_directory,
    write_json,
)
from forward import Kinesalite, child_env
from intake import Broker

MIB = 1024 * 1024
#: What metrics on may cost over off.
TARGET_CPU_PERCENT = 1.0
TARGET_RSS_MIB = 5.0
SENSORS = 20
WAIT_INTERVAL_S = 0.05


@dataclass
class Run:
    """One agent run's costs over the measured window."""

    metrics: bool
    cpu_percent: float = 0.0
    rss_median_mib: float = 0.0
    peak_rss_mib: float = 0.0
    records_sent: int = 0
    scrape_ms: list[float] = field(default_factory=list)
    scrape_bytes: int = 0

    @property
    def label(self) -> str:
        return "metrics on" if self.metrics else "metrics off"


def write_config(directory: Path, broker: int, kinesalite: str, stream: str, metrics: int) -> Path:
    state = directory / "state"
    config = directory / "edge-agent.toml"
    config.write_text(
        f'[agent]\ndevice_name = "bench"\nstate_dir = "{state}"\n\n'
        f'[sinks.telemetry]\ntype = "kinesis"\nstream = "{stream}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{kinesalite}"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker}\nclient_id = "bench-metrics"\n\n'
        '[[mqtt.subscriptions]]\ntopic = "sensors/#"\nqos = 1\nsinks = ["telemetry"]\n'
        + (f'\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n' if metrics else "")
    )
    return config


def scrape(port: int) -> tuple[float, int]:
    """One scrape: seconds it took, bytes of the answer."""
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        size = len(answer.read())
    return time.perf_counter() - started, size


def measure(directory: Path, metrics: bool, args: argparse.Namespace) -> Run:
    directory.mkdir(parents=True)
    run = Run(metrics)
    broker = Broker(directory / "broker").start()
    kinesalite = Kinesalite(directory / "kinesalite.log").start()
    agent: subprocess.Popen[bytes] | None = None
    publisher: subprocess.Popen[bytes] | None = None
    port = free_port() if metrics else 0
    try:
        stream = kinesalite.create_stream(2)
        config = write_config(directory, broker.port, kinesalite.endpoint, stream, port)
        status_file = directory / "state" / "spool.db.status.json"
        with open(directory / "agent.log", "ab") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", "run", "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=REPO,
            )

        def connected() -> bool:
            if agent is None or agent.poll() is not None:
                raise BenchError(f"the agent exited: {(directory / 'agent.log').read_text()}")
            status = read_status(status_file) or {}
            return bool(status.get("sources", {}).get("mqtt", {}).get("state") == "connected")

        wait_until(connected, 30, "the agent to connect", interval=WAIT_INTERVAL_S)
        total = int(args.rate * (args.warmup + args.seconds + 30))
        publisher = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "samples" / "sensor_publisher.py"),
                *("--port", str(broker.port), "--count", str(total), "--rate", str(args.rate)),
                *("--sensors", str(SENSORS), "--quiet"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(args.warmup)  # the load itself: the agent settles into forwarding
        first = read_status(status_file) or {}
        before: ProcTimes = proc_times(agent.pid)
        began = time.monotonic()
        rss: list[float] = []
        for second in range(args.seconds):
            if metrics:
                took, run.scrape_bytes = scrape(port)
                run.scrape_ms.append(took * 1000)
            rss.append(rss_bytes(agent.pid) / MIB)
            time.sleep(max(0.0, began + second + 1 - time.monotonic()))
        elapsed = time.monotonic() - began
        used = proc_times(agent.pid) - before
        last = read_status(status_file) or {}
        run.cpu_percent = used.cpu / elapsed * 100
        run.rss_median_mib = median(rss)
        run.peak_rss_mib = peak_rss_bytes(agent.pid) / MIB
        run.records_sent = _sent(last) - _sent(first)
        if run.records_sent < args.rate * args.seconds * 0.8:
            raise BenchError(f"{run.label}: the agent forwarded only {run.records_sent} records")
    finally:
        stop_process(publisher)
        stop_process(agent)
        kinesalite.stop()
        broker.stop()
    return run


def _sent(status: dict[str, Any]) -> int:
    return int(status.get("sinks", {}).get("telemetry", {}).get("records_sent", 0))


def environment() -> dict[str, str]:
    from importlib.metadata import version

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "prometheus_client": version("prometheus-client"),
        "kernel": platform.release(),
    }


def report(runs: Sequence[Run]) -> dict[str, Any]:
    print(
        f"{'run':<12} {'CPU %':>6} {'RSS med MiB':>11} {'RSS peak MiB':>12} {'sent':>7} "
        f"{'scrape ms':>9} {'answer B':>8}"
    )
    for run in runs:
        scrape_ms = fmt(median(run.scrape_ms), 2) if run.scrape_ms else "-"
        print(
            f"{run.label:<12} {run.cpu_percent:>6.2f} {run.rss_median_mib:>11.1f} "
            f"{run.peak_rss_mib:>12.1f} {run.records_sent:>7} {scrape_ms:>9} "
            f"{run.scrape_bytes or '-':>8}"
        )
    off = [run for run in runs if not run.metrics]
    on = [run for run in runs if run.metrics]
    cpu = median([run.cpu_percent for run in on]) - median([run.cpu_percent for run in off])
    rss = median([run.rss_median_mib for run in on]) - median([run.rss_median_mib for run in off])
    peak = median([run.peak_rss_mib for run in on]) - median([run.peak_rss_mib for run in off])
    print(
        f"metrics on - off (medians): CPU {cpu:+.2f} % of a core "
        f"(target < {TARGET_CPU_PERCENT:g}: {verdict(cpu < TARGET_CPU_PERCENT)}), "
        f"RSS {rss:+.1f} MiB, peak {peak:+.1f} MiB "
        f"(target < {TARGET_RSS_MIB:g}: {verdict(max(rss, peak) < TARGET_RSS_MIB)})"
    )
    return {"cpu_percent_extra": cpu, "rss_mib_extra": rss, "peak_rss_mib_extra": peak}


def run_benchmark(args: argparse.Namespace) -> int:
    env = environment()
    print(
        f"edge-agent metrics benchmark: {args.rate:g} readings/s forwarded to kinesalite, "
        f"{args.seconds} s measured after {args.warmup} s, {args.rounds} rounds, one scrape "
        f"a second when on; {env['cpu']}, {env['cpus']} CPUs, Python {env['python']}, "
        f"prometheus-client {env['prometheus_client']}, kernel {env['kernel']}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    runs: list[Run] = []
    with work_directory(args.workdir, keep=args.keep) as workdir:
        for round_no in range(args.rounds):
            for metrics in (False, True) if round_no % 2 == 0 else (True, False):
                name = f"round{round_no}-{'on' if metrics else 'off'}"
                runs.append(measure(workdir / name, metrics, args))
    summary = report(runs)
    if args.json:
        write_json(
            args.json,
            {"environment": env, "runs": [vars(run) for run in runs], "summary": summary},
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--seconds", type=int, default=60, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=10, help="seconds before measuring")
    parser.add_argument("--rate", type=float, default=500, help="readings per second")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs (order alternates)")
    add_work_arguments(parser, kept="the logs and spools")
    return run_or_fail(run_benchmark, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
