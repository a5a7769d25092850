"""The device profile: the whole agent as one gateway runs it, with every feature on,
its memory and CPU sampled every 100 ms through steady running, an outage and the drain
after it; beside it, the separate pieces that would do the same jobs (docs/BENCHMARKS.md).

The agent's configuration is bench/device-profile.toml:

* ``door``: a 1080p30 H.264 camera over RTSP (gst-rtsp-server playing a recording),
  passed through, recorded to the local ring, with motion detection;
* ``yard``: a 720p30 test pattern with noise (lavfi) encoded to H.264 (veryfast,
  2 Mbit/s);
* 1,000 telemetry messages/s of 200 bytes over MQTT (Mosquitto, QoS 1), to an
  aggregating Kinesis sink (kinesalite);
* an analytics query (a 1-minute tumbling window per sensor), the camera events and the
  Prometheus endpoint on.

Phases: ``steady`` (``--steady`` seconds after every camera's first fragments were
acknowledged), ``outage`` (``--outage`` seconds with both uplinks refused at the proxies,
tests/fault_proxy.py), ``drain`` (until what was captured before the uplinks came back
has gone, at most ``--drain-timeout``). Each phase reports the agent's CPU (% of one
core, from /proc/PID/task/*/schedstat), its RSS peak and median (samples every 100 ms)
and its VmHWM: the sampler resets the agent's VmHWM after each sample
(``/proc/PID/clear_refs``), so a spike between two samples counts in its phase. The
run's VmHWM is the highest of them.

The baseline, measured after the agent on the same live sources: ``ffmpeg -c copy`` of
the 1080p camera to MKV, ``ffmpeg`` encoding the same 720p test pattern, a bare paho
subscriber (QoS 1, persistent session, acks on receipt, stores nothing), for
``--steady`` seconds side by side; and a bare boto3 loop sending the outage's telemetry
in full PutRecords requests (bench/forward.py's). ``--imports`` also prints what each
library costs to import (a fresh interpreter each: VmHWM after the import) and the
profile's floor: every library, the AWS clients and the two codecs alone (``FLOOR``).
Where the floor is above 80 MiB the target is the floor plus 10 %.

``--tracemalloc`` runs the agent under tracemalloc: per phase, the Python memory traced
and its largest holders. ``--start-split`` instead starts the agent with the profile's
features added one at a time (``FEATURE_STEPS``) and prints its RSS once started.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from common import (
    REPO,
    BenchError,
    add_work_arguments,
    command_output,
    fmt,
    free_port,
    peak_rss_bytes,
    read_status,
    rss_bytes,
    run_or_fail,
    stop_process,
    tail,
    verdict,
    wait_until,
    work_directory,
    write_json,
)
from forward import Kinesalite, Workload, measure_bare
from intake import Broker
from video import FPS, H264_1080, KvsLocal, cpu_s, make_recording, start_agent

sys.path.insert(0, str(REPO))
from tests.fault_proxy import FaultProxy
from tests.gst_rtsp_server import RtspServer, available
from tests.support import spooled_count

MIB = 1024 * 1024
PROFILE = Path(__file__).with_name("device-profile.toml")
SAMPLE_S = 0.1
#: ``--maps``: the anonymous memory by kind every this many samples (smaps is slow to read).
MAPS_EVERY = 5
#: glibc maps each arena but the main one at this alignment.
ARENA_ALIGN = 64 * MIB
MAP_KINDS = ("main heap", "second arena", "mapped on their own", "other")
RATE = 1000  # telemetry messages/s
PAYLOAD = 200
#: The 720p camera's source, the same for the agent and ffmpeg's baseline.
YARD_LAVFI = f"testsrc2=size=1280x720:rate={FPS},noise=alls=10:allf=t,realtime"
#: The queues whose backlog the drain empties (the analytics queue keeps its window).
DRAINED_QUEUES = ("telemetry", "results", "door", "yard")
MEMORY_TARGET_MIB = 80.0
#: ...or this much of the floor (the libraries and codecs alone), if that is above it.
FLOOR_MARGIN = 1.1
#: ``--start-split``: the profile's features added one at a time, each step the tables of
#: bench/device-profile.toml it adds; a step's cost is the agent's RSS once started less
#: the step before's.
FEATURE_STEPS = (
    ("the agent: spool, status, metrics", {"agent", "spool", "metrics"}),
    ("+ telemetry: MQTT, aggregated Kinesis", {"mqtt", "mqtt.subscriptions", "sinks.telemetry"}),
    ("+ analytics: one query, its results sink", {"analytics.per_sensor", "sinks.results"}),
    ("+ door: 1080p RTSP passthrough, ring, motion", {"cameras.door", "cameras.door.motion",
                                                     "sinks.door"}),
    ("+ yard: 720p encoded", {"cameras.yard", "sinks.yard"}),
)  # fmt: skip
#: How long each step runs once started before its RSS is read.
SPLIT_SETTLE_S = 20
#: The 1080p recording is made this long and repeated.
PIECE_S = 90


@dataclass
class Sample:
    at: float  # monotonic
    rss_mib: float
    anon_mib: float  # RssAnon: the heaps, stacks and anonymous maps
    cpu_s: float
    #: VmHWM: the highest RSS since the sample before (the sampler resets it after
    #: each sample where the kernel lets it), spikes between samples included.
    hwm_mib: float


@dataclass
class Phase:
    name: str
    seconds: float
    cpu_pct: float
    rss_peak_mib: float
    rss_median_mib: float
    anon_at_peak_mib: float  # RssAnon in the sample of the RSS peak
    #: The highest RSS in the phase, spikes between samples included (VmHWM per sample).
    hwm_mib: float = float("nan")


@dataclass
class Piece:
    """One baseline process over its window."""

    name: str
    cpu_pct: float
    rss_peak_mib: float


@dataclass
class Profile:
    phases: list[Phase]
    hwm_mib: float
    rss_anon_mib: float
    rss_file_mib: float
    start_rss_mib: float  # once every camera's first fragments were acknowledged
    outage_records: int
    drained: bool
    #: Per drained queue: seconds from the uplinks' return to its outage backlog gone.
    drain_s: dict[str, float]
    #: Per phase, tracemalloc's peak of Python memory in it and its largest holders at
    #: its end (``--tracemalloc``).
    holders: dict[str, Any] = field(default_factory=dict)
    #: Per phase, the anonymous memory by kind at its highest sample (``--maps``).
    maps: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline: list[Piece] = field(default_factory=list)
    imports: dict[str, float] = field(default_factory=dict)
    #: The phase, and seconds into it, in which the VmHWM was reached.
    hwm_reached: str = ""


class Sampler(threading.Thread):
    """The agent's RSS and CPU every SAMPLE_S, until stopped. After each sample it
    resets the agent's VmHWM (``/proc/PID/clear_refs``, "5"), so that each sample's
    VmHWM is the highest RSS since the one before: a spike between samples is placed
    to within one sample, in its phase."""

    def __init__(self, pid: int, *, maps: bool = False) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        #: Whether the kernel let the sampler reset the VmHWM (else it is cumulative).
        self.resets = True
        self.samples: list[Sample] = []
        #: With ``maps``: (time, anonymous memory by kind) every MAPS_EVERY samples.
        self.maps: list[tuple[float, dict[str, float]]] = []
        self._with_maps = maps
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(SAMPLE_S):
            try:
                at, (rss, anon, hwm) = time.monotonic(), status_mib(self.pid)
                if self.resets:  # at once: a peak after the read counts in the next sample
                    self.resets = reset_peak(self.pid)
                self.samples.append(Sample(at, rss, anon, cpu_s(self.pid), hwm))
                if self._with_maps and len(self.samples) % MAPS_EVERY == 1:
                    self.maps.append((at, anonymous_maps_mib(self.pid)))
            except (OSError, ValueError):
                return  # the process ended

    def highest_maps(self, start: float, end: float) -> dict[str, float]:
        """The anonymous memory by kind in the phase's sample with the most of it."""
        inside = [kinds for at, kinds in self.maps if start <= at <= end]
        return max(inside, key=lambda kinds: sum(kinds.values())) if inside else {}

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def highest(self) -> float:
        """The highest RSS the samples saw, spikes between them included."""
        return max((s.hwm_mib for s in self.samples), default=0.0)

    def hwm_reached(self, marks: dict[str, float], hwm: float) -> str:
        """Where the run's VmHWM ``hwm`` was reached: the phase, and seconds into it, of
        the first sample that saw it (to within one sample; "start-up" is before the
        steady), or after the last sample."""
        at = next((s.at for s in self.samples if s.hwm_mib >= hwm), None)
        if at is None:
            return "drain, after the last sample" if self.samples else "not sampled"
        name, start = "start-up", self.samples[0].at
        for phase in ("steady", "outage", "drain"):
            if marks[phase] <= at:
                name, start = phase, marks[phase]
        cumulative = "" if self.resets else "; not reset by the kernel: phases' VmHWM cumulative"
        return f"{name}, {at - start:.1f} s in{cumulative}"

    def phase(self, name: str, start: float, end: float) -> Phase:
        inside = [s for s in self.samples if start <= s.at <= end]
        if len(inside) < 2:
            nan = float("nan")
            return Phase(name, end - start, nan, nan, nan, nan)
        wall = inside[-1].at - inside[0].at
        peak = max(inside, key=lambda s: s.rss_mib)
        return Phase(
            name,
            end - start,
            100 * (inside[-1].cpu_s - inside[0].cpu_s) / wall,
            peak.rss_mib,
            statistics.median(s.rss_mib for s in inside),
            peak.anon_mib,
            max(s.hwm_mib for s in inside),
        )


def write_config(directory: Path, tables: set[str] | None = None, **values: object) -> Path:
    """The profile's configuration with ``values`` filled in; with ``tables``, only the
    blocks (separated by blank lines) whose tables are all among them."""
    config = directory / "edge-agent.toml"
    text = Template(PROFILE.read_text()).substitute(values)
    if tables is not None:
        text = "\n\n".join(
            block for block in text.split("\n\n")
            if {line.strip("[]") for line in block.splitlines() if line.startswith("[")} <= tables
        )  # fmt: skip
    config.write_text(text)
    return config


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its RSS now; False if the kernel does not allow it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def status_mib(pid: int) -> tuple[float, float, float]:
    """(VmRSS, RssAnon, VmHWM) of the process now, MiB."""
    fields = _status_fields(pid, ("VmRSS", "RssAnon", "VmHWM"))
    return fields["VmRSS"], fields["RssAnon"], fields["VmHWM"]


def _status_fields(pid: int, names: tuple[str, ...]) -> dict[str, float]:
    """Fields of /proc/PID/status given in kB, as MiB (NaN when missing)."""
    fields = dict.fromkeys(names, float("nan"))
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in fields:
                fields[name] = int(value.split()[0]) / 1024
    return fields


def smaps_mib(pid: int) -> tuple[float, float]:
    """(RssAnon, RssFile) of the process, MiB: the heap and what its libraries' pages
    hold."""
    fields = _status_fields(pid, ("RssAnon", "RssFile"))
    return fields["RssAnon"], fields["RssFile"]


def anonymous_maps_mib(pid: int) -> dict[str, float]:
    """The process's anonymous memory by kind, MiB (/proc/PID/smaps): glibc's main heap,
    its other arena (mapped at ARENA_ALIGN), and what is mapped on its own: buffers of
    256 KiB or more (the agent's mmap threshold), Python's 1 MiB arenas, the codecs'
    buffers. The kernel merges neighbouring mappings into one, so these cannot be told
    apart by size (a run of Python arenas reads as one large buffer)."""
    kib = dict.fromkeys(MAP_KINDS, 0)
    kind: str | None = None
    with open(f"/proc/{pid}/smaps") as handle:
        for line in handle:
            if line[0] in "0123456789abcdef":  # a mapping's first line; fields are Capitalized
                fields = line.split()
                start, end = (int(address, 16) for address in fields[0].split("-"))
                kind = _map_kind(fields[5] if len(fields) > 5 else "", start, end - start)
            elif kind is not None and line.startswith("Anonymous:"):
                kib[kind] += int(line.split()[1])
    return {name: value / 1024 for name, value in kib.items()}


def _map_kind(name: str, start: int, size: int) -> str | None:
    if name == "[heap]":
        return "main heap"
    if name:  # a file, a thread's stack, the vdso
        return None
    if start % ARENA_ALIGN == 0:
        return "second arena"
    return "mapped on their own" if size >= 256 * 1024 else "other"


def start_publisher(port: int, seconds: float, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(REPO / "bench" / "intake.py"), "--publisher", "--port",
               str(port), "--messages", str(int(RATE * seconds)), "--payload", str(PAYLOAD),
               "--client-id", "bench-device-sensors", "--rate", str(RATE)]  # fmt: skip
    with open(log, "ab") as handle:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle)


def cameras_acked(status: dict[str, Any] | None, at_least: int) -> bool:
    sinks = (status or {}).get("sinks", {})
    return all(int(sinks.get(name, {}).get("fragments_acked", 0)) >= at_least
               for name in ("door", "yard"))  # fmt: skip


def backlog(spool: Path, before_ms: int) -> dict[str, int]:
    """Per drained queue, its records captured before ``before_ms``."""
    return {
        queue: spooled_count(spool, queue, captured_before_ms=before_ms) for queue in DRAINED_QUEUES
    }


def run_profile(args: argparse.Namespace, workdir: Path, recording: Path) -> Profile:
    state = workdir / "state"
    spool = state / "spool.db"
    total_s = args.warmup_timeout + args.steady + args.outage + args.drain_timeout + 30
    broker = Broker(workdir / "broker").start()
    kinesalite = Kinesalite(workdir / "kinesalite.log").start()
    kvs = KvsLocal(workdir / "kvs-local.log").start(workdir / "kvs")
    agent = publisher = None
    sampler: Sampler | None = None
    try:
        stream = kinesalite.create_stream(4)
        with (
            FaultProxy(kinesalite.port) as kinesis_link,
            FaultProxy(kvs.port) as kvs_link,
            RtspServer(free_port(), {"/door": (recording, "h264")}) as server,
        ):
            config = write_config(
                workdir, state=state, metrics_port=free_port(), stream=stream,
                kinesis=kinesis_link.url, kvs=kvs_link.url, door_url=server.url("/door"),
                mqtt_port=broker.port, yard_lavfi=YARD_LAVFI,
            )  # fmt: skip
            log = workdir / "agent.log"
            publisher = start_publisher(broker.port, total_s, workdir / "publisher.log")
            command = ["-m", "edge_agent"]
            traced = workdir / "tracemalloc"
            if args.tracemalloc:
                traced.mkdir(exist_ok=True)
                command = ["-c", TRACED_AGENT, str(traced), ",".join(TRACED_PHASES)]
            agent = start_agent(config, log, command)
            sampler = Sampler(agent.pid, maps=args.maps)
            sampler.start()
            status_file = spool.with_name(spool.name + ".status.json")
            process = agent
            wait_until(
                lambda: process.poll() is not None or cameras_acked(read_status(status_file), 2),
                args.warmup_timeout,
                "every camera's first fragments to be acknowledged",
                interval=0.2,
            )
            if agent.poll() is not None:
                raise BenchError(f"the agent exited ({agent.returncode}):\n{tail(log)}")
            start_rss = rss_bytes(agent.pid) / MIB
            phase_ended(traced, "started", args.tracemalloc)
            marks = {"steady": time.monotonic()}
            print(f"steady for {args.steady} s ...", flush=True)
            _run_for(args.steady, agent, log)
            marks["outage"] = time.monotonic()
            phase_ended(traced, "steady", args.tracemalloc)
            kinesis_link.set_mode(args.outage_mode)
            kvs_link.set_mode(args.outage_mode)
            print(f"uplinks {args.outage_mode} for {args.outage} s ...", flush=True)
            _run_for(args.outage, agent, log)
            marks["drain"] = time.monotonic()
            phase_ended(traced, "outage", args.tracemalloc)
            back_ms = int(time.time() * 1000)
            left = backlog(spool, back_ms)
            outage_records = sum(left.values())
            kinesis_link.set_mode("pass")
            kvs_link.set_mode("pass")
            print(f"draining {outage_records:,} records ...", flush=True)
            deadline = time.monotonic() + args.drain_timeout
            drain_s: dict[str, float] = {}
            while time.monotonic() < deadline:
                now = time.monotonic() - marks["drain"]
                drain_s.update((q, now) for q, n in left.items() if not n and q not in drain_s)
                if len(drain_s) == len(left):
                    break
                if agent.poll() is not None:
                    raise BenchError(f"the agent exited during the drain:\n{tail(log)}")
                time.sleep(0.5)
                left = backlog(spool, back_ms)
            drained = len(drain_s) == len(left)
            marks["end"] = time.monotonic()
            sampler.stop()  # its last reset done: the samples' highest, and the highest since
            hwm = max(sampler.highest(), peak_rss_bytes(agent.pid) / MIB)
            anon, file_backed = smaps_mib(agent.pid)
            holders = {}
            if args.tracemalloc:
                phase_ended(traced, "drain", True)
                for phase in TRACED_PHASES:
                    result = traced / f"{phase}.json"
                    wait_until(result.exists, 120, f"the tracemalloc of {phase}", interval=0.5)
                    holders[phase] = json.loads(result.read_text())
    finally:
        if sampler is not None:
            sampler.stop()
        stop_process(agent, timeout=30)
        stop_process(publisher)
        kvs.stop()
        kinesalite.stop()
        broker.stop()
    assert sampler is not None
    phases = [
        sampler.phase("steady", marks["steady"], marks["outage"]),
        sampler.phase("outage", marks["outage"], marks["drain"]),
        sampler.phase("drain", marks["drain"], marks["end"]),
        sampler.phase("whole run", marks["steady"], marks["end"]),
    ]
    bounds = {"steady": ("steady", "outage"), "outage": ("outage", "drain"),
              "drain": ("drain", "end")}  # fmt: skip
    maps = {
        name: sampler.highest_maps(marks[start], marks[end])
        for name, (start, end) in bounds.items()
        if args.maps
    }
    return Profile(
        phases, hwm, anon, file_backed, start_rss, outage_records, drained, drain_s, holders,
        maps, hwm_reached=sampler.hwm_reached(marks, hwm),
    )  # fmt: skip


def run_start_split(workdir: Path, recording: Path) -> list[tuple[str, float, float]]:
    """Per step of FEATURE_STEPS (cumulative): the agent's RSS SPLIT_SETTLE_S after it
    started (its cameras' first fragments acknowledged) and its VmHWM then, MiB."""
    broker = Broker(workdir / "split-broker").start()
    kinesalite = Kinesalite(workdir / "split-kinesalite.log").start()
    kvs = KvsLocal(workdir / "split-kvs-local.log").start(workdir / "split-kvs")
    publisher = None
    rows: list[tuple[str, float, float]] = []
    try:
        stream = kinesalite.create_stream(4)
        total_s = len(FEATURE_STEPS) * (SPLIT_SETTLE_S + 60)
        publisher = start_publisher(broker.port, total_s, workdir / "split-publisher.log")
        with RtspServer(free_port(), {"/door": (recording, "h264")}) as server:
            tables: set[str] = set()
            for index, (name, added) in enumerate(FEATURE_STEPS):
                tables |= added
                step = workdir / f"split-{index}"
                step.mkdir()
                config = write_config(
                    step, tables, state=step / "state", metrics_port=free_port(),
                    stream=stream, kinesis=kinesalite.endpoint, kvs=kvs.endpoint,
                    door_url=server.url("/door"), mqtt_port=broker.port, yard_lavfi=YARD_LAVFI,
                )  # fmt: skip
                rows.append((name, *_started_rss(step, config, tables)))
                print(f"{name}: {rows[-1][1]:.1f} MiB", flush=True)
    finally:
        stop_process(publisher)
        kvs.stop()
        kinesalite.stop()
        broker.stop()
    return rows


def _started_rss(step: Path, config: Path, tables: set[str]) -> tuple[float, float]:
    """(VmRSS, VmHWM) of the agent of ``config``, SPLIT_SETTLE_S after it started."""
    cameras = [name.split(".")[1] for name in tables if name.count(".") == 1
               and name.startswith("cameras.")]  # fmt: skip
    status_file = step / "state" / "spool.db.status.json"
    log = step / "agent.log"
    agent = start_agent(config, log)
    try:

        def started() -> bool:
            status = read_status(status_file)
            sinks = (status or {}).get("sinks", {})
            acked = (int(sinks.get(c, {}).get("fragments_acked", 0)) >= 2 for c in cameras)
            return agent.poll() is not None or (status is not None and all(acked))

        wait_until(started, 90, "the agent to start", interval=0.2)
        _run_for(SPLIT_SETTLE_S, agent, log)
        return rss_bytes(agent.pid) / MIB, peak_rss_bytes(agent.pid) / MIB
    finally:
        stop_process(agent, timeout=30)


def phase_ended(traced: Path, phase: str, tracing: bool) -> None:
    """Tell the agent under tracemalloc (if it is) that ``phase`` ended."""
    if tracing:
        (traced / f"{phase}.now").touch()


def _run_for(seconds: float, agent: subprocess.Popen[bytes], log: Path) -> None:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        time.sleep(0.5)
        if agent.poll() is not None:
            raise BenchError(f"the agent exited ({agent.returncode}):\n{tail(log)}")


def run_baseline(args: argparse.Namespace, workdir: Path, recording: Path) -> list[Piece]:
    """The separate pieces side by side for ``--steady`` seconds, then the boto3 loop."""
    directory = workdir / "baseline"
    directory.mkdir()
    broker = Broker(directory / "broker").start()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with RtspServer(free_port(), {"/door": (recording, "h264")}) as server:
            copy = ["ffmpeg", "-nostdin", "-v", "error", "-rtsp_transport", "tcp", "-i",
                    server.url("/door"), "-c", "copy", "-f", "matroska", "-y",
                    str(directory / "door.mkv")]  # fmt: skip
            encode = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", YARD_LAVFI,
                      "-c:v", "libx264", "-preset", "veryfast", "-b:v", "2M", "-g",
                      str(2 * FPS), "-bf", "0", "-f", "matroska", "-y",
                      str(directory / "yard.mkv")]  # fmt: skip
            subscriber = [sys.executable, str(REPO / "bench" / "intake.py"), "--bare-subscriber",
                          "--port", str(broker.port), "--messages", str(10**9), "--client-id",
                          "bench-device-bare", "--timeout", str(args.steady + 120)]  # fmt: skip
            processes["ffmpeg -c copy (1080p camera)"] = subprocess.Popen(
                copy, stderr=subprocess.DEVNULL
            )
            processes["ffmpeg libx264 (720p camera)"] = subprocess.Popen(
                encode, stderr=subprocess.DEVNULL
            )
            processes["paho subscriber (telemetry)"] = subprocess.Popen(
                subscriber, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            bare = processes["paho subscriber (telemetry)"]
            assert bare.stdout is not None
            if bare.stdout.readline().strip() != b"READY":
                raise BenchError("the bare subscriber did not subscribe")
            publisher = start_publisher(broker.port, args.steady + 60, directory / "pub.log")
            processes["publisher"] = publisher
            time.sleep(10)  # the readers settle: every one has its stream
            pieces = {name: p for name, p in processes.items() if name != "publisher"}
            before = {name: cpu_s(p.pid) for name, p in pieces.items()}
            started = time.monotonic()
            time.sleep(args.steady)
            wall = time.monotonic() - started
            result = [
                Piece(name, 100 * (cpu_s(p.pid) - before[name]) / wall, peak_rss_bytes(p.pid) / MIB)
                for name, p in pieces.items()
            ]
    finally:
        for process in processes.values():
            stop_process(process)
        broker.stop()
    loop = measure_bare(directory / "boto3", 1, args.bare_records, Workload(PAYLOAD, 50, 4))
    window_s = max(loop.window_s, 1e-9)
    result.append(
        Piece(
            f"boto3 PutRecords loop ({args.bare_records:,} records)",
            100 * (loop.times.user + loop.times.system) / window_s,
            loop.rss_bytes / MIB,
        )
    )
    return result


#: The agent under tracemalloc (``--tracemalloc``): when ``<phase>.now`` appears in the
#: directory given, for each of PHASES in turn, the Python memory traced now and at its
#: peak since the phase before, and the largest holders by line and by file, are written
#: to ``<phase>.json`` there; with the largest holders at the highest traced total seen
#: in the phase (sampled every 0.2 s; a snapshot each time it rose by 1 MiB or more).
TRACED_AGENT = """
import json, sys, threading, time, tracemalloc
from pathlib import Path
directory, phases = Path(sys.argv[1]), sys.argv[2].split(",")
tracemalloc.start(1)

def holders(snapshot):
    return [(str(stat.traceback[0]), stat.size, stat.count)
            for stat in snapshot.statistics("lineno")[:25]]

def watch():
    # The statistics of a snapshot are Python objects, traced too (several MiB): the
    # peak is read before each is made and reset after, so that it is the agent's.
    for phase in phases:
        highest, at_highest, peak = 0, [], 0
        while not (directory / f"{phase}.now").exists():
            time.sleep(0.2)
            current, peak_now = tracemalloc.get_traced_memory()
            peak = max(peak, peak_now)
            if current > highest + 2 ** 20:  # a new high: who holds it
                highest, at_highest = current, holders(tracemalloc.take_snapshot())
                tracemalloc.reset_peak()
        current, peak_now = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot()
        result = {
            "total": current, "peak": max(peak, peak_now), "lineno": holders(snapshot),
            "filename": [(str(stat.traceback[0]), stat.size, stat.count)
                         for stat in snapshot.statistics("filename")[:25]],
            "highest": highest, "at_highest": at_highest,
        }
        del snapshot
        tracemalloc.reset_peak()
        (directory / f"{phase}.json").write_text(json.dumps(result))

threading.Thread(target=watch, daemon=True).start()
from edge_agent.cli import main
sys.exit(main(sys.argv[3:]))
"""
#: The phases whose ends ``--tracemalloc`` snapshots.
TRACED_PHASES = ("started", "steady", "outage", "drain")


#: What a fresh interpreter holds after importing each library (and making what the
#: agent makes of it).
IMPORTS = {
    "python alone": "pass",
    "sqlite3": "import sqlite3",
    "paho-mqtt": "import paho.mqtt.client",
    "boto3 (import)": "import boto3",
    "boto3 + a Kinesis client": "import boto3; boto3.client('kinesis', region_name='us-east-1')",
    "PyAV": "import av",
    "numpy": "import numpy",
    "prometheus-client": "import prometheus_client",
    "edge_agent.agent (no feature loaded)": "import edge_agent.agent",
}


#: The profile's floor: a fresh interpreter with every library the profile loads, the AWS
#: clients it makes, the 720p camera's encoder as the agent configures it, fed by the
#: same lavfi pattern, and the motion feature's decoder on keyframes of the 1080p
#: recording, one at a time. No spool, no threads, no data held. ``{lavfi}`` and
#: ``{recording}`` are filled in.
FLOOR = """
import av, boto3, numpy, paho.mqtt.client, prometheus_client, edge_agent.agent
from fractions import Fraction
session = boto3.session.Session(
    region_name="us-east-1", aws_access_key_id="floor", aws_secret_access_key="floor")
clients = [session.client(name) for name in ("kinesis", "kinesisvideo")]
source = av.open({lavfi!r}, format="lavfi")
encoder = av.CodecContext.create("libx264", "w")
encoder.width, encoder.height, encoder.pix_fmt = 1280, 720, "yuv420p"
encoder.time_base, encoder.framerate = Fraction(1, 30), Fraction(30)
encoder.gop_size, encoder.max_b_frames, encoder.bit_rate = 60, 0, 2_000_000
encoder.options = {{
    "preset": "veryfast",
    "tune": "zerolatency",
    "x264-params": "keyint=60:min-keyint=60:scenecut=0",
}}
for index, frame in enumerate(source.decode(video=0)):
    frame.pts = index
    encoder.encode(frame)
    if index == 90:
        break
with av.open({recording!r}) as container:
    stream = container.streams.video[0]
    keyframes = 0
    for packet in container.demux(stream):
        if not packet.is_keyframe or packet.size == 0:
            continue
        decoder = av.CodecContext.create("h264", "r")
        decoder.extradata = stream.codec_context.extradata
        decoder.thread_count = 1
        decoder.decode(packet)
        decoder.decode(None)
        keyframes += 1
        if keyframes == 5:
            break
print([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""
#: The row of the floor in the imports table.
FLOOR_ROW = "the floor: all of it, AWS clients, encoder, decoder"


def import_costs(recording: Path) -> dict[str, float]:
    costs = {}
    for name, statement in IMPORTS.items():
        script = (
            f"{statement}\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
        )
        out = command_output([sys.executable, "-c", script])
        costs[name] = int(out or 0) / 1024
    floor = FLOOR.format(lavfi=YARD_LAVFI, recording=str(recording))
    costs[FLOOR_ROW] = int(command_output([sys.executable, "-c", floor]) or 0) / 1024
    return costs


def environment() -> str:
    cpu = command_output(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"])
    return (
        f"machine: {(cpu or '?').strip()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {json.dumps(platform.platform())}"
    )


def print_start_split(rows: list[tuple[str, float, float]]) -> None:
    print(f"\n{'started with (cumulative)':<48} {'RSS MiB':>8} {'added':>6} {'VmHWM':>6}")
    before = 0.0
    for name, rss, hwm in rows:
        print(f"{name:<48} {rss:>8.1f} {rss - before:>6.1f} {hwm:>6.1f}")
        before = rss


def print_profile(profile: Profile) -> None:
    print(
        f"\n{'phase':<10} {'seconds':>8} {'CPU % core':>11} {'RSS peak MiB':>13} "
        f"{'RSS median':>11} {'anon at peak':>13} {'VmHWM':>6}"
    )
    for phase in profile.phases:
        print(
            f"{phase.name:<10} {phase.seconds:>8.0f} {fmt(phase.cpu_pct, 1):>11} "
            f"{fmt(phase.rss_peak_mib, 1):>13} {fmt(phase.rss_median_mib, 1):>11} "
            f"{fmt(phase.anon_at_peak_mib, 1):>13} {fmt(phase.hwm_mib, 1):>6}"
        )
    print(
        f"VmHWM {profile.hwm_mib:.1f} MiB, reached in the {profile.hwm_reached} "
        f"(at the end: RssAnon {profile.rss_anon_mib:.1f}, "
        f"RssFile {profile.rss_file_mib:.1f}); {profile.start_rss_mib:.1f} MiB once started; "
        f"the outage left {profile.outage_records:,} records"
        + ("" if profile.drained else " (NOT drained in time)")
    )
    print("drained, seconds after the uplinks came back: " + ", ".join(
        f"{queue} {seconds:.1f}" for queue, seconds in sorted(profile.drain_s.items())
    ))  # fmt: skip
    if profile.baseline:
        print(f"\n{'baseline piece':<44} {'CPU % core':>11} {'RSS peak MiB':>13}")
        for piece in profile.baseline:
            print(f"{piece.name:<44} {fmt(piece.cpu_pct, 1):>11} {fmt(piece.rss_peak_mib, 1):>13}")
        live = [p for p in profile.baseline if not p.name.startswith("boto3")]
        print(
            f"{'the live pieces together':<44} {fmt(sum(p.cpu_pct for p in live), 1):>11} "
            f"{fmt(sum(p.rss_peak_mib for p in live), 1):>13}"
        )
    if profile.imports:
        print(f"\n{'imported (fresh interpreter)':<44} {'VmHWM MiB':>10}")
        for name, mib in profile.imports.items():
            print(f"{name:<44} {mib:>10.1f}")
    if profile.maps:
        print(f"\n{'anonymous memory, MiB, at the highest':<38}"
              + "".join(f"{name:>9}" for name in profile.maps))  # fmt: skip
        for kind in (*MAP_KINDS, "all"):
            values = [kinds.get(kind, sum(kinds.values())) for kinds in profile.maps.values()]
            print(f"{kind:<38}" + "".join(f"{fmt(value, 1):>9}" for value in values))
    for phase_name, traced in profile.holders.items():
        print(f"\ntracemalloc, {phase_name}: {traced['total'] / MIB:.1f} MiB of Python memory at "
              f"its end, {traced['peak'] / MIB:.1f} MiB at its peak; the largest holders "
              "by line:")  # fmt: skip
        for where, size, count in traced["lineno"][:15]:
            print(f"{size / MIB:>8.2f} MiB {count:>8,}  {where}")
        print("by file:")
        for where, size, count in traced["filename"][:10]:
            print(f"{size / MIB:>8.2f} MiB {count:>8,}  {where}")
        if traced["at_highest"]:
            print(f"at its highest sampled ({traced['highest'] / MIB:.1f} MiB), by line:")
            for where, size, count in traced["at_highest"][:15]:
                print(f"{size / MIB:>8.2f} MiB {count:>8,}  {where}")
    met = profile.hwm_mib < MEMORY_TARGET_MIB
    target = f"< {MEMORY_TARGET_MIB:.0f} MiB"
    floor = profile.imports.get(FLOOR_ROW)
    if floor:  # above the target: within 10 % of the floor
        target += f", or within 10 % of the floor {floor:.1f} MiB: < {floor * FLOOR_MARGIN:.1f}"
        met = met or profile.hwm_mib < floor * FLOOR_MARGIN
    print(f"\nthe device profile's peak: {profile.hwm_mib:.1f} MiB (target {target}): "
          f"{verdict(met)}")  # fmt: skip


def long_recording(cache: Path, seconds: int) -> Path:
    """The 1080p recording, at least ``seconds`` long: a 90 s one made once, repeated
    (``-c copy``, times continued) as often as needed."""
    piece = H264_1080.file(cache, PIECE_S)
    make_recording(H264_1080, piece, PIECE_S)
    repeats = -(-seconds // PIECE_S)
    path = cache / f"{piece.stem}-x{repeats}.mp4"
    if not path.exists():
        partial = path.with_suffix(".partial.mp4")
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", str(repeats - 1), "-i",
             str(piece), "-c", "copy", str(partial)],
            check=True, timeout=600,
        )  # fmt: skip
        partial.rename(path)
    return path


def run_benchmark(args: argparse.Namespace) -> int:
    missing = available()
    if missing:
        raise BenchError(missing)
    recording = long_recording(
        Path(args.cache), int(args.warmup_timeout + args.steady * 2 + args.outage + 300)
    )
    with work_directory(args.workdir, keep=args.keep) as workdir:
        if args.start_split:
            print_start_split(run_start_split(workdir, recording))
            print(environment())
            return 0
        profile = run_profile(args, workdir, recording)
        if not args.no_baseline:
            profile.baseline = run_baseline(args, workdir, recording)
    if args.imports:
        profile.imports = import_costs(recording)
    print_profile(profile)
    print(environment())
    if args.json:
        write_json(args.json, {
            "phases": [vars(p) for p in profile.phases],
            **{k: v for k, v in vars(profile).items() if k not in ("phases", "baseline")},
            "baseline": [vars(p) for p in profile.baseline],
        })  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steady", type=int, default=60, help="seconds of steady running")
    parser.add_argument("--outage", type=int, default=120, help="seconds with the uplinks down")
    parser.add_argument("--outage-mode", default="cut", choices=("cut", "blackhole", "reset"))
    parser.add_argument("--drain-timeout", type=int, default=300, help="longest drain, seconds")
    parser.add_argument("--warmup-timeout", type=float, default=90)
    parser.add_argument("--bare-records", type=int, default=120_000,
                        help="records the boto3 loop sends")  # fmt: skip
    parser.add_argument("--no-baseline", action="store_true", help="the agent alone")
    parser.add_argument("--imports", action="store_true", help="also what each import costs")
    parser.add_argument(
        "--start-split", action="store_true",
        help="instead: the RSS once started as the features are added one at a time",
    )  # fmt: skip
    parser.add_argument(
        "--tracemalloc", action="store_true",
        help="run the agent under tracemalloc and print its largest holders (slower)",
    )  # fmt: skip
    parser.add_argument(
        "--maps", action="store_true",
        help="also sample the agent's anonymous memory by kind (heaps, arenas, mapped "
        "buffers) from /proc/PID/smaps and print it at each phase's highest",
    )  # fmt: skip
    parser.add_argument(
        "--cache",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "edge-agent-bench-video"),
        help="where the 1080p recording is made once and kept",
    )
    add_work_arguments(parser, kept="the work directory")
    return run_or_fail(run_benchmark, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
