"""Event video benchmark: what motion detection and the local ring cost on one 1080p30
H.264 camera passed through, against the same camera without them and against decoding
every frame, side by side in one run (docs/EVENTS.md).

The camera is a recording made here with ffmpeg: a still, noisy grey scene (so that it
costs a camera's bit rate, 4 Mbit/s, a keyframe every 2 s), with a white box crossing
it from 21.0 s to 27.0 s of every 40 s; the agent reads it as a file camera at its own
pace (``realtime = true``), opened again when it ends, and uploads to
``edge-agent kvs-local``. Runs, each one agent for ``--seconds`` after a warm-up:

* ``passthrough``: every fragment uploaded, nothing else (the reference);
* ``motion``: the same with ``[cameras.cam.motion]``: only the keyframes are decoded;
* ``ring``: the same with ``record = true`` (every fragment also into the local ring);
* ``events``: ``upload = "events"`` with motion and the ring: what a door camera runs.

Beside them, ``decode-all``: a PyAV process that decodes every frame of the same file
at the same pace, the cost of a motion detector that looks at every picture (the
baseline the keyframe sampling is measured against). Targets:

* motion adds less than 5 % of a core over passthrough;
* the ring adds at most 10 % to passthrough's CPU;
* detection latency, from the box's first frame to the event in the spool, under 1 s
  plus one fragment (2 s): the box appears 1.0 s before a keyframe, and the event is
  created when that keyframe's fragment begins (``events`` run: each event's creation
  time against its keyframe's time less 1.0 s);
* the snapshot encode time (a decoded 1080p keyframe to JPEG, median of 20) is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    REPO,
    BenchError,
    add_work_arguments,
    command_output,
    fmt,
    peak_rss_bytes,
    read_status,
    run_or_fail,
    stop_process,
    tail,
    verdict,
    wait_until,
    work_directory,
    write_json,
)
from video import KvsLocal, cpu_s, start_agent

FPS = 30
GOP_S = 2
SCENE_S = 40
BOX_FROM_S, BOX_TO_S = 21.0, 27.0
#: The box's first frame comes this long before the keyframe that shows it.
BOX_BEFORE_KEYFRAME_MS = 1000
MIB = 1024 * 1024

DECODE_ALL = """
import sys, time, av
path = sys.argv[1]
while True:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        started, first = time.monotonic(), None
        for frame in container.decode(stream):
            at = float(frame.pts * stream.time_base)
            first = at if first is None else first
            wait = (at - first) - (time.monotonic() - started)
            if wait > 0:
                time.sleep(wait)
"""


def make_scene(path: Path) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = (
        f"color=c=gray:s=1920x1080:r={FPS},noise=alls=10:allf=t[bg];"
        f"color=c=white:s=240x240:r={FPS}[box];"
        f"[bg][box]overlay=x='(t-{BOX_FROM_S})*250':y=420:"
        f"enable='between(t,{BOX_FROM_S},{BOX_TO_S - 0.01})'"
    )
    gop = GOP_S * FPS
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", graph]
    command += ["-t", str(SCENE_S), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    command += ["-b:v", "4M", "-maxrate", "4M", "-bufsize", "4M", "-bf", "0"]
    command += ["-x264-params", f"keyint={gop}:min-keyint={gop}:scenecut=0"]
    partial = path.with_suffix(".partial.mp4")
    print(f"making {path.name} ...", flush=True)
    subprocess.run([*command, str(partial)], check=True, timeout=1800)
    partial.rename(path)


@dataclass(frozen=True)
class Run:
    name: str
    options: str  # camera options


RUNS = {
    "passthrough": Run("passthrough", ""),
    "motion": Run("motion", '[cameras.cam.motion]\ncooldown = "3s"\n'),
    "ring": Run("ring", "record = true\n"),
    "events": Run(
        "events",
        'upload = "events"\npre_roll = "4s"\npost_roll = "4s"\n'
        '[cameras.cam.motion]\ncooldown = "3s"\n',
    ),
}


@dataclass
class Measured:
    name: str
    cpu_pct: float
    rss_peak_mib: float
    fragments: int
    events: list[tuple[int, int, int]]  # (started_ms, created_ms, keyframe fragment start)


def write_config(directory: Path, run: Run, scene: Path, endpoint: str) -> Path:
    config = directory / "edge-agent.toml"
    config.write_text(
        f'[agent]\ndevice_name = "bench"\nstate_dir = "{directory / "state"}"\n'
        f'[spool]\nmax_bytes = "4GiB"\n'
        f'[sinks.cam]\ntype = "kvs"\nstream = "cam"\nregion = "us-east-1"\n'
        f'endpoint_url = "{endpoint}"\nmax_record_bytes = "8MiB"\n'
        f'[cameras.cam]\nsource = "file"\nurl = "{scene}"\nsink = "cam"\n'
        f'fragment = "{GOP_S}s"\n' + run.options
    )
    return config


def measure(run: Run, scene: Path, workdir: Path, seconds: int, warmup: int) -> Measured:
    directory = workdir / run.name
    directory.mkdir(parents=True)
    endpoint = KvsLocal(directory / "kvs-local.log").start(directory / "kvs")
    log = directory / "agent.log"
    status_file = directory / "state" / "spool.db.status.json"
    agent: subprocess.Popen[bytes] | None = None
    try:
        config = write_config(directory, run, scene, endpoint.endpoint)
        agent = start_agent(config, log)
        process = agent
        wait_until(
            lambda: process.poll() is not None or _fragments(read_status(status_file)) >= 2,
            60,
            "the camera's first fragments",
            interval=0.2,
        )
        time.sleep(warmup)
        if agent.poll() is not None:
            raise BenchError(f"the agent exited ({agent.returncode}):\n{tail(log)}")
        before, started = cpu_s(agent.pid), time.monotonic()
        while time.monotonic() - started < seconds:
            time.sleep(0.5)
            if agent.poll() is not None:
                raise BenchError(f"the agent exited during the measurement:\n{tail(log)}")
        cpu = 100 * (cpu_s(agent.pid) - before) / (time.monotonic() - started)
        peak = peak_rss_bytes(agent.pid) / MIB
        fragments = _fragments(read_status(status_file))
    finally:
        stop_process(agent, timeout=20)
        endpoint.stop()
    return Measured(run.name, cpu, peak, fragments, _events(directory / "state" / "spool.db"))


def measure_decode_all(scene: Path, seconds: int, warmup: int) -> float:
    process = subprocess.Popen([sys.executable, "-c", DECODE_ALL, str(scene)])
    try:
        time.sleep(warmup)
        before, started = cpu_s(process.pid), time.monotonic()
        time.sleep(seconds)
        if process.poll() is not None:
            raise BenchError("the decode-all reader ended")
        return 100 * (cpu_s(process.pid) - before) / (time.monotonic() - started)
    finally:
        stop_process(process)


def snapshot_ms(scene: Path) -> float:
    """Median time to JPEG-encode a decoded 1080p keyframe (the agent's encoder)."""
    import av

    sys.path.insert(0, str(REPO))
    from edge_agent.events.pictures import JpegEncoder

    with av.open(str(scene)) as container:
        picture = next(container.decode(video=0))
    encoder = JpegEncoder()
    times = []
    for _ in range(21):
        started = time.perf_counter()
        encoder.encode(picture)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[1:])


def write_cost_ms(fragment_bytes: int, count: int = 60) -> tuple[float, float]:
    """CPU ms per fragment of storing it in a spool and taking it out after its upload,
    without and with its copy in the ring (in this process, on the work directory's
    filesystem): the floor of what the ring adds."""
    import resource

    sys.path.insert(0, str(REPO))
    from edge_agent.records import Record
    from edge_agent.spool import recordings
    from edge_agent.spool.store import Spool

    payload = os.urandom(fragment_bytes)
    costs: list[float] = []
    with work_directory(None, keep=False) as directory:
        for ring in (False, True, False, True):
            path = directory / f"spool-{len(costs)}.db"
            with Spool.open(path) as spool:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                before = usage.ru_utime + usage.ru_stime
                for number in range(count):

                    def also(conn: sqlite3.Connection, _: object, at: int = number * 2000) -> None:
                        recordings.insert(
                            conn, "cam", at, at + 1966, meta="{}", payload=payload, queued=False
                        )

                    record = Record("cam", "cam", number * 2000, payload, "{}")
                    if ring:
                        spool.append([record], also=also, also_bytes=fragment_bytes)
                    else:
                        spool.append([record])
                    spool.ack(spool.lease("cam", max_records=1, max_bytes=2 * fragment_bytes))
                usage = resource.getrusage(resource.RUSAGE_SELF)
                costs.append((usage.ru_utime + usage.ru_stime - before) * 1000 / count)
    return min(costs[0], costs[2]), min(costs[1], costs[3])


def _fragments(status: dict[str, object] | None) -> int:
    cameras = (status or {}).get("cameras", {})
    camera = cameras.get("cam", {}) if isinstance(cameras, dict) else {}
    return int(camera.get("fragments", 0)) if isinstance(camera, dict) else 0


def _events(spool: Path) -> list[tuple[int, int, int]]:
    """Each motion event: (its start, when it was created, the start of the ring
    fragment that holds its start)."""
    if not spool.exists():
        return []
    conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        events = conn.execute(
            "SELECT started_ms, created_ms FROM camera_events WHERE trigger = 'motion'"
        ).fetchall()
        found = []
        for started_ms, created_ms in events:
            row = conn.execute(
                "SELECT max(start_ms) FROM recordings WHERE start_ms <= ?", (started_ms,)
            ).fetchone()
            found.append((started_ms, created_ms, row[0] if row and row[0] else started_ms))
        return found
    finally:
        conn.close()


def _medians(rounds: list[dict[str, Measured]]) -> dict[str, Measured]:
    """Each run's median CPU over the rounds, with its highest peak RSS and the last
    round's fragments and events."""
    return {
        name: Measured(
            name,
            statistics.median(m[name].cpu_pct for m in rounds),
            max(m[name].rss_peak_mib for m in rounds),
            last.fragments,
            last.events,
        )
        for name, last in rounds[-1].items()
    }


def run_benchmark(args: argparse.Namespace) -> int:
    with work_directory(args.workdir, keep=args.keep) as workdir:
        scene = Path(args.cache) / "scene-1080p30-box.mp4"
        make_scene(scene)
        jpeg_ms = snapshot_ms(scene)
        fragment_bytes = scene.stat().st_size * GOP_S // SCENE_S
        alone_ms, with_ring_ms = write_cost_ms(fragment_bytes)
        rounds = [
            {name: measure(RUNS[name], scene, workdir / f"round-{number}", args.seconds,
                           args.warmup)
             for name in args.runs.split(",")}
            for number in range(1, args.rounds + 1)
        ]  # fmt: skip
        decode_all = measure_decode_all(scene, args.seconds, args.warmup)
    print(f"\n{'run':<14} {'CPU % core':>10} {'RSS peak MiB':>13} {'fragments':>10} {'events':>7}")
    for number, measured in enumerate(rounds, 1):
        if len(rounds) > 1:
            print(f"round {number}")
        for result in measured.values():
            print(
                f"{result.name:<14} {fmt(result.cpu_pct, 1):>10} "
                f"{fmt(result.rss_peak_mib, 1):>13} {result.fragments:>10} {len(result.events):>7}"
            )
    print(f"{'decode-all':<14} {fmt(decode_all, 1):>10}")
    results = rounds[-1] if len(rounds) == 1 else _medians(rounds)
    if len(rounds) > 1:
        print(f"medians of {len(rounds)} rounds (CPU; RSS the highest)")
        for result in results.values():
            cpu, rss = fmt(result.cpu_pct, 1), fmt(result.rss_peak_mib, 1)
            print(f"{result.name:<14} {cpu:>10} {rss:>13}")
    base = results.get("passthrough")
    checks: list[tuple[str, bool]] = []
    if base is not None and "motion" in results:
        extra = results["motion"].cpu_pct - base.cpu_pct
        print(
            f"\nmotion adds {extra:+.1f} % of a core over passthrough (target < 5 %): "
            f"{verdict(extra < 5)}; decoding every frame costs {decode_all:.1f} % "
            f"({decode_all / max(extra, 0.1):.0f} x the keyframe sampling's extra)"
        )
        checks.append(("motion", extra < 5))
    if base is not None and "ring" in results:
        ratios = [m["ring"].cpu_pct / m["passthrough"].cpu_pct for m in rounds]
        ratio = statistics.median(ratios)
        print(
            f"the ring: {ratio:.3f} x passthrough's CPU (target <= 1.10): {verdict(ratio <= 1.1)}"
            + (f"; the median of rounds {', '.join(f'{r:.3f}' for r in ratios)}"
               if len(ratios) > 1 else "")
        )  # fmt: skip
        checks.append(("ring", ratio <= 1.1))
    events = [e for m in rounds for e in m["events"].events] if "events" in results else []
    latencies = [created - (keyframe - BOX_BEFORE_KEYFRAME_MS) for _, created, keyframe in events]
    if latencies:
        worst = max(latencies)
        target = 1000 + GOP_S * 1000
        print(
            f"detection latency (box's first frame to the event): median "
            f"{statistics.median(latencies):.0f} ms, max {worst:.0f} ms over {len(latencies)} "
            f"events (target < {target} ms): {verdict(worst < target)}"
        )
        checks.append(("latency", worst < target))
    print(
        f"storing a fragment ({fragment_bytes / MIB:.2f} MiB) and deleting it after upload: "
        f"{alone_ms:.1f} ms of CPU; with its copy in the ring {with_ring_ms:.1f} ms "
        f"(+{with_ring_ms - alone_ms:.1f} ms: the floor of the ring's cost, "
        f"{(with_ring_ms - alone_ms) / (GOP_S * 10):.2f} % of a core)"
    )
    print(f"snapshot: a 1080p keyframe to JPEG in {jpeg_ms:.1f} ms (median of 20)")
    print(environment())
    if args.json:
        write_json(
            args.json,
            {
                "runs": {name: vars(result) for name, result in results.items()},
                "rounds": [{name: vars(m) for name, m in measured.items()} for measured in rounds],
                "decode_all_cpu_pct": decode_all,
                "snapshot_ms": jpeg_ms,
                "fragment_write_ms": {"alone": alone_ms, "with_ring": with_ring_ms},
                "latencies_ms": latencies,
            },
        )
    return 0 if all(passed for _, passed in checks) else 1


def environment() -> str:
    cpu = command_output(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"])
    return (
        f"machine: {(cpu or '?').strip()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {json.dumps(platform.platform())}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="measured per run")
    parser.add_argument("--warmup", type=int, default=10, help="seconds before measuring")
    parser.add_argument("--runs", default=",".join(RUNS), help="which runs, comma-separated")
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds of the runs; medians are reported"
    )
    parser.add_argument(
        "--cache",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "edge-agent-bench-events"),
        help="where the recording is made once and kept",
    )
    add_work_arguments(parser, kept="the work directory")
    return run_or_fail(run_benchmark, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
