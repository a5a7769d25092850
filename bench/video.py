"""Video benchmark: cameras pulled over RTSP, through the spool and PutMedia into
``edge-agent kvs-local``, against Debian's ffmpeg remuxing (or encoding) the same
stream to MKV, side by side in the same run.

Parts (``--parts``, all by default):

* ``pass720`` / ``pass1080``: one 720p30 / 1080p30 H.264 camera, passed through. The
  baseline is ``ffmpeg -i rtsp://... -c copy -f matroska``; target: the agent's CPU at
  most 1.5 x the baseline's. Two more readers of the same stream show where the cost
  lies: PyAV demuxing it (FFmpeg's RTSP client, the agent's with ``rtsp_client =
  "pyav"``) and the agent's built-in RTSP client alone (no fragments, spool or upload).
* ``encode720``: one 720p30 Motion JPEG camera, decoded and encoded with libx264
  (veryfast); the baseline is ffmpeg doing the same.
* ``four720``: four 720p30 H.264 cameras in one agent, each a stream of its own (the
  same recording behind four paths); target: under 20 % of one core together
  (baseline: four ffmpeg remuxes).
* ``pass1080hevc``: one 1080p30 H.265 camera, passed through; the baseline is
  ``ffmpeg -c copy``; target: at most 1.5 x, like H.264.
* ``bframes720``: one 720p30 H.264 camera that sends B-frames, which the agent decodes
  and encodes without them (libx264 veryfast); the baseline is ffmpeg doing the same:
  what such a camera costs.
* ``audio720off``, ``audio720aac``, ``audio720pcma``: one 720p30 H.264 camera with a
  microphone (the same video as ``pass720``, with AAC 48 kHz mono, RFC 3640, or G.711
  A-law in 20 ms packets, as cameras send them), the agent's ``audio`` off and on;
  target: audio costs the agent less than 10 % more CPU than the video alone
  (``audio720off``, measured in the same run). The baseline is ``ffmpeg -c copy`` of
  the same streams (``-an`` in ``audio720off``), so ffmpeg's own cost of the audio
  shows beside the agent's.

Every camera part also checks: the agent's peak RSS under 100 MiB per camera part with
one camera, and capture-to-PERSISTED latency (first frame of a fragment captured to its
PERSISTED acknowledgement, as the KVS sink's status reports it) at most the fragment
duration + 1 s.

The cameras are a real RTSP server (GStreamer's gst-rtsp-server, ``tests/
gst_rtsp_server.py``) serving recordings made here with ffmpeg (a noisy test pattern
at a camera's bit rate: 2 Mbit/s at 720p, 4 Mbit/s at 1080p, a keyframe every 2 s, no
B-frames); each agent camera and each baseline ffmpeg pulls its own RTSP session over
TCP. CPU is read from /proc for each process over the same measuring window, after a
warm-up in which every KVS sink has had fragments acknowledged. The stored MKV files
of the endpoint and of the baselines are checked with ffprobe afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from common import (
    REPO,
    BenchError,
    LoopbackServer,
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

sys.path.insert(0, str(REPO))
from tests.gst_rtsp_server import RtspServer, available

FRAGMENT_S = 2
#: Between the reference readers' starts.
READER_STAGGER_S = 0.5
FPS = 30
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
MIB = 1024 * 1024


def start_agent(
    config: Path, log: Path, command: Sequence[str] = ("-m", "edge_agent")
) -> subprocess.Popen[bytes]:
    """``edge-agent run`` of ``config`` (``command``: what follows the interpreter), with
    the local endpoints' credentials, its output appended to ``log``."""
    env = {**os.environ, **CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"}
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, *command, "run", "-c", str(config)],
            stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env,
        )  # fmt: skip


@dataclass(frozen=True)
class Source:
    """A recording the RTSP server plays as a camera would send it."""

    mount: str
    size: str
    codec: str  # as the RTSP server names it: "h264", "h265" or "jpeg"
    bitrate: str
    b_frames: int = 0
    #: The microphone's, as the RTSP server names it ("aac", "pcma"): the video of the
    #: same source without audio, with this audio muxed in.
    audio: str = ""

    def file(self, cache: Path, seconds: int) -> Path:
        suffix = "mkv" if self.codec == "jpeg" else "mov" if self.audio == "pcma" else "mp4"
        return cache / f"{self.mount.strip('/')}-{seconds}s.{suffix}"

    @property
    def served_as(self) -> str:
        """The codec as the RTSP server's mount names it (video+audio)."""
        return f"{self.codec}+{self.audio}" if self.audio else self.codec


H264_720 = Source("/h264_720", "1280x720", "h264", "2M")
H264_1080 = Source("/h264_1080", "1920x1080", "h264", "4M")
MJPEG_720 = Source("/mjpeg_720", "1280x720", "jpeg", "")
H265_1080 = Source("/h265_1080", "1920x1080", "h265", "4M")
H264_720_B_FRAMES = Source("/h264_bf_720", "1280x720", "h264", "2M", b_frames=2)
H264_720_AAC = Source("/h264_aac_720", "1280x720", "h264", "2M", audio="aac")
H264_720_PCMA = Source("/h264_pcma_720", "1280x720", "h264", "2M", audio="pcma")
#: ffmpeg's arguments for each microphone: AAC at 64 kbit/s, G.711 A-law at 8 kHz.
AUDIO_ENCODERS = {
    "aac": ["-c:a", "aac", "-b:a", "64k", "-ar", "48000", "-ac", "1"],
    "pcma": ["-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1"],
}


@dataclass(frozen=True)
class Part:
    name: str
    label: str
    source: Source
    cameras: int
    encode: bool = False
    audio: bool = False  # the agent's ``audio`` setting


PARTS = {
    "pass720": Part("pass720", "720p30 H.264 passthrough", H264_720, 1),
    "pass1080": Part("pass1080", "1080p30 H.264 passthrough", H264_1080, 1),
    "encode720": Part("encode720", "720p30 MJPEG -> H.264 veryfast", MJPEG_720, 1, True),
    "four720": Part("four720", "4 x 720p30 H.264 passthrough", H264_720, 4),
    "pass1080hevc": Part("pass1080hevc", "1080p30 H.265 passthrough", H265_1080, 1),
    "bframes720": Part(
        "bframes720", "720p30 H.264 with B-frames -> encoded", H264_720_B_FRAMES, 1, True
    ),
    "audio720off": Part("audio720off", "720p30 H.264 + AAC, audio off", H264_720_AAC, 1),
    "audio720aac": Part("audio720aac", "720p30 H.264 + AAC, audio on", H264_720_AAC, 1, audio=True),
    "audio720pcma": Part(
        "audio720pcma", "720p30 H.264 + G.711, audio on", H264_720_PCMA, 1, audio=True
    ),
}
#: The parts whose audio is measured against the video alone (audio720off).
AUDIO_PARTS = ("audio720aac", "audio720pcma")


def make_recording(source: Source, path: Path, seconds: int) -> None:
    """A noisy test pattern (so it costs a camera's bit rate), made once and cached; with
    audio, the same source's video with a tone muxed in."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if source.audio:
        video = replace(source, audio="")
        make_recording(video, video.file(path.parent, seconds), seconds)
        command = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
        command += ["-i", str(video.file(path.parent, seconds)), "-f", "lavfi"]
        command += ["-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
        command += ["-map", "0:v", "-map", "1:a", "-c:v", "copy", *AUDIO_ENCODERS[source.audio]]
        partial = path.with_suffix(".partial" + path.suffix)
        subprocess.run([*command, str(partial)], check=True, timeout=600)
        partial.rename(path)
        return
    pattern = f"testsrc2=size={source.size}:rate={FPS},noise=alls=10:allf=t"
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", pattern]
    command += ["-t", str(seconds)]
    if source.codec == "h264":
        gop = FRAGMENT_S * FPS
        command += ["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main"]
        command += ["-pix_fmt", "yuv420p", "-b:v", source.bitrate, "-maxrate", source.bitrate]
        command += ["-bufsize", source.bitrate, "-bf", str(source.b_frames)]
        command += ["-x264-params", f"keyint={gop}:min-keyint={gop}:scenecut=0"]
    elif source.codec == "h265":
        gop = FRAGMENT_S * FPS
        command += ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
        command += ["-b:v", source.bitrate, "-tag:v", "hvc1"]
        command += ["-x265-params", f"keyint={gop}:min-keyint={gop}:bframes=0:log-level=error"]
    else:
        command += ["-c:v", "mjpeg", "-q:v", "5", "-pix_fmt", "yuvj420p"]
    partial = path.with_suffix(".partial" + path.suffix)
    print(f"making {path.name} ({seconds} s) ...", flush=True)
    subprocess.run([*command, str(partial)], check=True, timeout=1800)
    partial.rename(path)


class KvsLocal(LoopbackServer):
    name = "edge-agent kvs-local"

    def start(self, directory: Path) -> KvsLocal:
        command = [sys.executable, "-m", "edge_agent", "kvs-local", "--port", str(self.port)]
        command += ["--dir", str(directory), "--access-key", "bench", "--secret-key", "bench"]
        self.launch(command, timeout=30, interval=0.1, stderr_to_log=True)
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def camera_mount(part: Part, index: int) -> str:
    """Each camera of a part is a stream of its own, as four cameras are (the same
    recording behind each): gst-rtsp-server's shared media could stop answering when
    several clients set up the same stream at once."""
    return part.source.mount if part.cameras == 1 else f"{part.source.mount}_{index}"


def write_agent_config(directory: Path, part: Part, urls: list[str], endpoint: str) -> Path:
    lines = [
        '[agent]\ndevice_name = "bench"',
        f'state_dir = "{directory / "state"}"\n',  # default status interval (2 s)
        f'[spool]\npath = "{directory / "state" / "spool.db"}"\nmax_bytes = "2GiB"\n',
    ]
    for index in range(part.cameras):
        name = f"cam{index}"
        lines.append(
            f'[sinks.{name}]\ntype = "kvs"\nstream = "{name}"\nregion = "us-east-1"\n'
            f'endpoint_url = "{endpoint}"\nmax_bytes = "512MiB"\n'
        )
        camera = f'[cameras.{name}]\nsource = "rtsp"\nurl = "{urls[index]}"\nsink = "{name}"\n'
        camera += f'fragment = "{FRAGMENT_S}s"\n'
        if part.audio:
            camera += "audio = true\n"
        if part.encode:
            camera += 'preset = "veryfast"\nbitrate = "2Mbit/s"\n'
        lines.append(camera)
    config = directory / "edge-agent.toml"
    config.write_text("\n".join(lines))
    return config


def baseline_command(part: Part, url: str, out: Path) -> list[str]:
    command = ["ffmpeg", "-nostdin", "-v", "error", "-rtsp_transport", "tcp", "-i", url]
    if part.encode:
        gop = FRAGMENT_S * FPS
        command += ["-c:v", "libx264", "-preset", "veryfast", "-b:v", "2M", "-g", str(gop)]
        command += ["-bf", "0"]
    else:
        command += ["-c", "copy"]
    if part.source.audio and not part.audio:
        command.append("-an")  # the video alone, as the agent takes it: ffmpeg's audio cost shows
    return [*command, "-f", "matroska", "-y", str(out)]


#: The library floor: PyAV reading the same RTSP session (as the camera opens it) and
#: doing nothing with the packets. Shows what the agent adds on top of its demuxer.
PYAV_DEMUX = """
import sys, av
with av.open(sys.argv[1], options={"rtsp_transport": "tcp"}, timeout=(10, 10)) as source:
    for packet in source.demux(video=0):
        bytes(packet)
"""


#: The built-in RTSP client alone, reading the same stream into access units and
#: dropping them: what the agent's cameras cost before fragments, spool and upload.
BUILTIN_RTSP_READ = """
import sys
sys.path.insert(0, sys.argv[2])
from edge_agent.sources.camera.rtp_h264 import H264Depacketizer
from edge_agent.sources.camera.rtsp_client import RtspSession
session = RtspSession(sys.argv[1], connect_timeout=10, stall_timeout=10)
session.open()
depacketizer = H264Depacketizer()
for packet in session.packets():
    depacketizer.push(packet)
"""


@dataclass
class Usage:
    """CPU (% of one core) and RSS of one process over the measuring window."""

    cpu_pct: float = 0.0
    rss_peak_mib: float = 0.0
    rss_samples: list[float] = field(default_factory=list)

    @property
    def rss_last_mib(self) -> float:
        return self.rss_samples[-1] if self.rss_samples else float("nan")


@dataclass
class PartResult:
    part: str
    label: str
    cameras: int
    agent: Usage
    baseline: Usage  # all baseline processes together
    library: Usage | None  # PyAV demuxing the same sessions, nothing else
    client: Usage | None  # the built-in RTSP client reading them, nothing else
    endpoint_cpu_pct: float
    other_cpu_pct: float
    fragments_acked: int
    capture_latency_p50_s: float
    capture_latency_max_s: float
    received_frames: int
    baseline_frames: int

    @property
    def cpu_ratio(self) -> float:
        return self.agent.cpu_pct / self.baseline.cpu_pct if self.baseline.cpu_pct else float("nan")


def cpu_s(pid: int) -> float:
    """CPU time of a process's threads, in ns precision (/proc/PID/task/*/schedstat; the
    10 ms ticks of /proc/PID/stat are too coarse for a process using 1 % of a core)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as handle:
                total += int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended
    return total / 1e9


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine so far (from /proc/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def sinks_acked(status: dict[str, Any] | None, cameras: int, at_least: int) -> bool:
    sinks = (status or {}).get("sinks", {})
    names = [f"cam{index}" for index in range(cameras)]
    return all(int(sinks.get(name, {}).get("fragments_acked", 0)) >= at_least for name in names)


def ffprobe_frames(path: Path) -> int:
    out = command_output(
        ["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_packets", "-of", "csv=p=0", str(path)]
    )  # fmt: skip
    try:
        return int((out or "").strip() or 0)
    except ValueError:
        return 0


def measure_part(
    part: Part, server: RtspServer, workdir: Path, seconds: int, warmup_timeout: float
) -> PartResult:
    directory = workdir / part.name
    directory.mkdir(parents=True)
    urls = [server.url(camera_mount(part, index)) for index in range(part.cameras)]
    endpoint = KvsLocal(directory / "kvs-local.log").start(directory / "kvs")
    agent: subprocess.Popen[bytes] | None = None
    baselines: list[subprocess.Popen[bytes]] = []
    readers: list[subprocess.Popen[bytes]] = []  # PyAV demux only (passthrough parts)
    clients: list[subprocess.Popen[bytes]] = []  # the built-in client only (passthrough)
    log = directory / "agent.log"
    status_file = directory / "state" / "spool.db.status.json"
    try:
        # The reference readers join first, one at a time: gst-rtsp-server's shared media
        # can refuse a client that arrives while another is being set up (PyAV reported
        # it as EPERM), and every client's PLAY seeks the shared recording to its start,
        # a jump back in the stream's times for the clients already there.
        for index, url in enumerate(urls):
            out = directory / f"baseline{index}.mkv"
            commands = [baseline_command(part, url, out)]
            if not part.encode:
                commands += [
                    [sys.executable, "-c", PYAV_DEMUX, url],
                    [sys.executable, "-c", BUILTIN_RTSP_READ, url, str(REPO)],
                ]
            for command, group in zip(commands, (baselines, readers, clients), strict=False):
                group.append(subprocess.Popen(command, stderr=subprocess.DEVNULL))
                time.sleep(READER_STAGGER_S)
        config = write_agent_config(directory, part, urls, endpoint.endpoint)
        agent = start_agent(config, log)
        process = agent
        wait_until(
            lambda: (
                process.poll() is not None or sinks_acked(read_status(status_file), part.cameras, 2)
            ),
            warmup_timeout,
            "every camera's first fragments to be acknowledged",
            interval=0.2,
        )
        if agent.poll() is not None:
            raise BenchError(f"the agent exited ({agent.returncode}):\n{tail(log)}")
        others = [*baselines, *readers, *clients]
        pids = [agent.pid, endpoint.pid, *(b.pid for b in others)]
        before = {pid: cpu_s(pid) for pid in pids}
        machine_before, started = machine_cpu_s(), time.monotonic()
        samples: dict[int, list[float]] = {pid: [] for pid in pids}
        while time.monotonic() - started < seconds:
            for pid in pids:
                samples[pid].append(rss_bytes(pid) / MIB)
            time.sleep(0.5)
            if agent.poll() is not None or any(b.poll() is not None for b in others):
                raise BenchError(f"a process ended during the measurement:\n{tail(log)}")
        wall = time.monotonic() - started
        after = {pid: cpu_s(pid) for pid in pids}
        machine = machine_cpu_s() - machine_before
        peaks = {pid: peak_rss_bytes(pid) / MIB for pid in pids}
        status = read_status(status_file) or {}
    finally:
        stop_process(agent, timeout=20)
        for copier in [*baselines, *readers, *clients]:
            stop_process(copier)
        endpoint.stop()

    def usage(pid: int) -> Usage:
        return Usage(100 * (after[pid] - before[pid]) / wall, peaks[pid], samples[pid])

    baseline = _together([usage(b.pid) for b in baselines])
    library = _together([usage(r.pid) for r in readers]) if readers else None
    client = _together([usage(c.pid) for c in clients]) if clients else None
    agent_usage, endpoint_cpu = usage(pids[0]), usage(pids[1]).cpu_pct
    measured = agent_usage.cpu_pct + endpoint_cpu + baseline.cpu_pct
    measured += library.cpu_pct if library else 0.0
    measured += client.cpu_pct if client else 0.0
    sinks = status.get("sinks", {})
    latencies = [sink.get("capture_latency_s") or {} for sink in sinks.values()]
    stored = sorted((directory / "kvs").rglob("*.mkv"))
    copies = [directory / f"baseline{index}.mkv" for index in range(part.cameras)]
    return PartResult(
        part=part.name,
        label=part.label,
        cameras=part.cameras,
        agent=agent_usage,
        baseline=baseline,
        library=library,
        client=client,
        endpoint_cpu_pct=endpoint_cpu,
        other_cpu_pct=max(0.0, 100 * machine / wall - measured),
        fragments_acked=sum(int(sink.get("fragments_acked", 0)) for sink in sinks.values()),
        capture_latency_p50_s=_worst(latencies, "p50"),
        capture_latency_max_s=_worst(latencies, "max"),
        received_frames=sum(ffprobe_frames(path) for path in stored),
        baseline_frames=sum(ffprobe_frames(path) for path in copies),
    )  # fmt: skip


def _together(usages: list[Usage]) -> Usage:
    """Several processes doing one job: CPU and RSS added up, peak of the largest."""
    return Usage(
        sum(u.cpu_pct for u in usages),
        max(u.rss_peak_mib for u in usages),
        [sum(values) for values in zip(*(u.rss_samples for u in usages), strict=True)],
    )


def _worst(latencies: list[dict[str, float]], key: str) -> float:
    return max((float(lat.get(key, "nan")) for lat in latencies), default=float("nan"))


def print_results(results: Sequence[PartResult]) -> None:
    header = f"{'part':<34} {'process':<12} {'CPU %':>6} {'RSS peak':>9} {'RSS end':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for result in results:
        rows = [("edge-agent", result.agent), ("ffmpeg", result.baseline)]
        if result.library is not None:
            rows.append(("pyav demux", result.library))
        if result.client is not None:
            rows.append(("rtsp client", result.client))
        for index, (who, usage) in enumerate(rows):
            label = result.label if index == 0 else ""
            print(
                f"{label:<34} {who:<12} {fmt(usage.cpu_pct, 1):>6} "
                f"{fmt(usage.rss_peak_mib, 1):>9} {fmt(usage.rss_last_mib, 1):>8}"
            )
        print(
            f"{'':<34} agent/ffmpeg CPU {fmt(result.cpu_ratio, 2)} x; kvs-local "
            f"{fmt(result.endpoint_cpu_pct, 1)} %; other {fmt(result.other_cpu_pct, 0)} %; "
            f"fragments acked {result.fragments_acked}; capture->PERSISTED p50 "
            f"{fmt(result.capture_latency_p50_s, 2)} s, "
            f"max {fmt(result.capture_latency_max_s, 2)} s; "
            f"frames stored {result.received_frames} (ffmpeg {result.baseline_frames})"
        )  # fmt: skip


def targets(results: Sequence[PartResult]) -> list[tuple[str, bool]]:
    checks: list[tuple[str, bool]] = []
    by_part = {result.part: result for result in results}
    for result in results:
        if result.part in ("pass720", "pass1080"):
            checks.append(
                (f"{result.label}: agent CPU <= 1.5 x ffmpeg -c copy "
                 f"({fmt(result.cpu_ratio, 2)} x)", result.cpu_ratio <= 1.5)
            )  # fmt: skip
        if result.cameras == 1:
            checks.append(
                (f"{result.label}: agent RSS < 100 MiB ({fmt(result.agent.rss_peak_mib, 1)} MiB)",
                 result.agent.rss_peak_mib < 100)
            )  # fmt: skip
        if result.part == "four720":
            checks.append(
                (f"{result.label}: agent CPU < 20 % of one core "
                 f"({fmt(result.agent.cpu_pct, 1)} %)", result.agent.cpu_pct < 20)
            )  # fmt: skip
        if result.part in AUDIO_PARTS and "audio720off" in by_part:
            alone = by_part["audio720off"]
            more = result.agent.cpu_pct / alone.agent.cpu_pct - 1
            ffmpeg_more = result.baseline.cpu_pct / alone.baseline.cpu_pct - 1
            checks.append(
                (f"{result.label}: audio costs < 10 % more agent CPU than the video alone "
                 f"({fmt(100 * more, 1)} %; ffmpeg's audio: {fmt(100 * ffmpeg_more, 1)} %)",
                 more < 0.10)
            )  # fmt: skip
        limit = FRAGMENT_S + 1.0
        checks.append(
            (f"{result.label}: capture->PERSISTED max <= {limit:.0f} s "
             f"({fmt(result.capture_latency_max_s, 2)} s)", result.capture_latency_max_s <= limit)
        )  # fmt: skip
        checks.append(
            (f"{result.label}: the endpoint stored playable video ({result.received_frames} "
             f"frames)", result.received_frames > 0)
        )  # fmt: skip
    return checks


def print_audio_medians(rounds: Sequence[Sequence[PartResult]]) -> None:
    """The audio parts' cost over the rounds: a fraction of a per-cent of a core each,
    where one round's ratio is noisy; the median of the rounds is the measurement."""
    print()
    for name in AUDIO_PARTS:
        agent, ffmpeg = [], []
        for measured in rounds:
            by_part = {result.part: result for result in measured}
            if name in by_part and "audio720off" in by_part:
                on, off = by_part[name], by_part["audio720off"]
                agent.append(on.agent.cpu_pct / off.agent.cpu_pct - 1)
                ffmpeg.append(on.baseline.cpu_pct / off.baseline.cpu_pct - 1)
        if agent:
            more = statistics.median(agent)
            print(
                f"{verdict(more < 0.10)}  {PARTS[name].label}: audio costs < 10 % more agent "
                f"CPU than the video alone, median of {len(agent)} rounds "
                f"({fmt(100 * more, 1)} %; rounds "
                f"{', '.join(fmt(100 * value, 1) for value in agent)} %; ffmpeg's audio: "
                f"median {fmt(100 * statistics.median(ffmpeg), 1)} %)"
            )


def environment() -> dict[str, str]:
    import av

    ffmpeg = (command_output(["ffmpeg", "-version"]) or "?").split("\n")[0]
    commit = command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "?"
    return {
        "code": commit.strip(),
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "pyav": av.__version__,
        "ffmpeg": ffmpeg,
        "kernel": platform.release(),
    }


def run_benchmark(args: argparse.Namespace) -> int:
    missing = available()
    if missing:
        raise BenchError(missing)
    parts = [PARTS[name] for name in args.parts.split(",")]
    length = args.seconds + int(args.warmup_timeout) + 30  # the recording must outlast a part
    cache = Path(args.cache)
    sources = {part.source for part in parts}
    for source in sorted(sources, key=lambda s: s.mount):
        make_recording(source, source.file(cache, length), length)
    print(json.dumps(environment()))
    results: list[PartResult] = []
    rounds: list[list[PartResult]] = []
    with work_directory(args.workdir, keep=args.keep) as workdir:
        for number in range(1, args.rounds + 1):
            rounds.append([])
            for part in parts:
                source = part.source
                recording = (source.file(cache, length), source.served_as)
                mounts = {camera_mount(part, index): recording for index in range(part.cameras)}
                # A fresh server per part: every part's cameras start the recording at 0.
                with RtspServer(free_port(), mounts) as server:
                    print(f"round {number}: {part.label} for {args.seconds} s ...", flush=True)
                    directory = workdir / f"round{number}"
                    directory.mkdir(exist_ok=True)
                    result = measure_part(
                        part, server, directory, args.seconds, args.warmup_timeout
                    )
                rounds[-1].append(result)
                results.append(result)
    for number, measured in enumerate(rounds, 1):
        if len(rounds) > 1:
            print(f"\nround {number}")
        print_results(measured)
        print()
        for what, passed in targets(measured):
            print(f"{verdict(passed)}  {what}")
    if len(rounds) > 1:
        print_audio_medians(rounds)
    if args.json:
        write_json(args.json, {"environment": environment(), "results": [
            {**r.__dict__, "agent": r.agent.__dict__, "baseline": r.baseline.__dict__,
             "library": r.library.__dict__ if r.library else None,
             "client": r.client.__dict__ if r.client else None}
            for r in results]})  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="which parts, comma-separated")
    parser.add_argument("--seconds", type=int, default=30, help="measuring window per part")
    parser.add_argument("--warmup-timeout", type=float, default=30.0)
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure the parts this many times, in turn"
    )
    parser.add_argument(
        "--cache",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "edge-agent-bench-video"),
        help="where the recordings are made once and kept",
    )
    add_work_arguments(parser, kept="the spools, logs and stored MKV files")
    return run_or_fail(run_benchmark, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
