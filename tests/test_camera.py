"""Cameras: PyAV sources through the fragmenter into the spool, read back with PyAV.

Sources here, all real PyAV/FFmpeg inputs: a lavfi test pattern (raw frames: encoded),
H.264 files (passed through), RTSP pushed by Debian's ffmpeg to a listening camera, and
RTSP pulled from GStreamer's gst-rtsp-server as from an IP camera."""

from __future__ import annotations

import base64
import itertools
import json
import logging
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from edge_agent.config.cameras import CameraConfig
from edge_agent.errors import IntakePaused
from edge_agent.media import h264
from edge_agent.media.mkv import VideoTrack, stream_header
from edge_agent.records import AppendResult, Record
from edge_agent.redact import redact
from edge_agent.sources.camera.camera import Camera
from edge_agent.sources.camera.timestamps import timed_packets
from edge_agent.spool.store import Spool
from tests import gst_rtsp_server
from tests.gst_rtsp_server import RtspServer
from tests.rtp_packets import frames_of
from tests.scripted_rtsp import Script, ScriptedRtspServer
from tests.support import (
    AgentProcess,
    Mosquitto,
    cli,
    free_port,
    spool_path,
    start_agent,
    wait_until,
    write_config,
)
from tests.video_checks import ffprobe_video

FPS = 30


#: Stored fragments: (capture time, payload, meta).
Fragments = list[tuple[int, bytes, dict[str, object]]]


def fragments_of(spool: Spool, queue: str) -> Fragments:
    rows = spool._conn.execute(
        "SELECT r.captured_at_ms, r.payload, r.meta FROM records r JOIN queues q"
        " ON q.id = r.queue_id WHERE q.name = ? ORDER BY r.id",
        (queue,),
    ).fetchall()
    return [(at, payload, json.loads(meta)) for at, payload, meta in rows]


def as_mkv(fragments: Fragments, path: Path) -> Path:
    meta = fragments[0][2]
    track = VideoTrack(
        str(meta["codec_id"]),
        base64.b64decode(str(meta["codec_private"])),
        int(str(meta["width"])),
        int(str(meta["height"])),
    )
    path.write_bytes(stream_header(track) + b"".join(payload for _, payload, _ in fragments))
    return path


def run_until(camera: Camera, stop: threading.Event, done: object, timeout: float = 60) -> None:
    camera.start()
    try:
        wait_until(done, timeout, 0.02, "camera output")  # type: ignore[arg-type]
    finally:
        stop.set()
        camera.join(10)
    assert not camera.running


def h264_file(path: Path, seconds: int = 3, size: tuple[int, int] = (320, 240)) -> Path:
    """An H.264 MP4 (AVCC extradata, one IDR per second) made with PyAV."""
    width, height = size
    with (
        av.open(f"testsrc2=size={width}x{height}:rate={FPS}", format="lavfi") as source,
        av.open(str(path), "w") as out,
    ):
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = FPS
        stream.codec_context.max_b_frames = 0
        stream.codec_context.options = {"x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0"}
        for index, frame in enumerate(source.decode(video=0)):
            if index == seconds * FPS:
                break
            frame.pict_type = av.video.frame.PictureType.NONE
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def fast_file_camera(name: str, source: Path) -> CameraConfig:
    """A file read as fast as it reads (1 s fragments), opened again at once when it ends."""
    return CameraConfig(
        name,
        str(source),
        "video",
        "file",
        fragment_ms=1000,
        realtime=False,
        reconnect_min=0.01,
        reconnect_max=0.05,
    )


def test_a_test_pattern_is_encoded_into_two_second_keyframe_led_fragments(
    tmp_path: Path,
) -> None:
    stop = threading.Event()
    with Spool.open(tmp_path / "s.db") as spool:
        settings = CameraConfig("pattern", f"testsrc2=size=320x240:rate={FPS}", "video", "lavfi")
        camera = Camera(settings, spool, stop)
        run_until(camera, stop, lambda: spool.pending("video")[0] >= 3)
        fragments = fragments_of(spool, "video")
    assert camera.stats.mode == "encode"
    times = [at for at, _, _ in fragments]
    assert times == sorted(set(times))
    full = fragments[:3]
    assert [meta["frames"] for _, _, meta in full] == [2 * FPS] * 3
    with av.open(str(as_mkv(full, tmp_path / "out.mkv"))) as container:
        packets = [p for p in container.demux(video=0) if p.size]
        assert len(packets) == 6 * FPS
        assert [i for i, p in enumerate(packets) if p.is_keyframe] == [0, 2 * FPS, 4 * FPS]
    with av.open(str(tmp_path / "out.mkv")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6 * FPS


def test_h264_files_pass_through_byte_for_byte_and_replay_after_they_end(
    tmp_path: Path,
) -> None:
    source = h264_file(tmp_path / "in.mp4")
    with av.open(str(source)) as container:
        expected = [bytes(p) for p in container.demux(video=0) if p.size]
    stop = threading.Event()
    with Spool.open(tmp_path / "s.db") as spool:
        settings = fast_file_camera("replay", source)
        camera = Camera(settings, spool, stop)
        run_until(
            camera, stop, lambda: camera.stats.connects >= 2 and spool.pending("video")[0] >= 6
        )
        fragments = fragments_of(spool, "video")
    assert camera.stats.mode == "passthrough"
    assert camera.stats.reconnects >= 1
    times = [at for at, _, _ in fragments]
    assert times == sorted(set(times)), "times keep increasing across the replays"
    first_pass = fragments[:3]
    with av.open(str(as_mkv(first_pass, tmp_path / "out.mkv"))) as container:
        got = [bytes(p) for p in container.demux(video=0) if p.size]
    assert got == expected  # MP4 packets are AVCC already: the very same bytes
    assert all(h264.split_avcc(frame) for frame in got)


def test_corrupt_and_truncated_h264_is_survived_and_what_is_whole_still_plays(
    tmp_path: Path,
) -> None:
    """A raw H.264 recording with a burst of garbage in its second second and cut off in
    the middle of its last frame, passed through twice: the camera keeps running,
    every fragment it stores starts at a keyframe and PyAV and ffprobe read them all.
    Raw H.264 carries no timestamps: frames are timed by the stream's frame rate."""
    clean = tmp_path / "clean.h264"
    convert = ["ffmpeg", "-v", "error", "-i", str(h264_file(tmp_path / "in.mp4"))]
    subprocess.run([*convert, "-c", "copy", "-f", "h264", str(clean)], check=True, timeout=60)
    data = bytearray(clean.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = random.Random(7).randbytes(2000)
    broken = tmp_path / "broken.h264"
    broken.write_bytes(bytes(data[: len(data) - 300]))
    stop = threading.Event()
    with Spool.open(tmp_path / "s.db") as spool:
        settings = CameraConfig(
            "broken", str(broken), "video", "file", fragment_ms=1000, realtime=False,
            reconnect_min=0.01, reconnect_max=0.05,
        )  # fmt: skip
        camera = Camera(settings, spool, stop)
        run_until(camera, stop, lambda: camera.stats.connects >= 3)
        fragments = fragments_of(spool, "video")
    assert camera.stats.mode == "passthrough"
    assert len(fragments) >= 4
    first = fragments[0][2]  # raw H.264 has no timestamps: 1/30 s per frame is assumed
    assert first["frames"] == FPS
    assert first["duration_ms"] == round((FPS - 1) * 1000 / FPS)  # first to last frame
    mkv = as_mkv(fragments, tmp_path / "out.mkv")
    with av.open(str(mkv)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert len(packets) == sum(int(str(meta["frames"])) for _, _, meta in fragments)
    starts = {0}
    for _, _, meta in fragments[:-1]:
        starts.add(max(starts) + int(str(meta["frames"])))
    assert all(packets[i].is_keyframe for i in starts)
    probed = ffprobe_video(mkv)  # garbage decodes to nothing, the rest to pictures
    assert probed["codec_name"] == "h264"
    assert int(probed["nb_read_frames"]) >= len(packets) - FPS


def test_credentials_never_reach_the_status() -> None:
    assert (
        redact("rtsp://admin:s3cret@10.0.0.7:554/stream1")
        == "rtsp://admin:***@10.0.0.7:554/stream1"
    )
    assert redact("rtsp://10.0.0.7/stream1") == "rtsp://10.0.0.7/stream1"


def test_the_agent_runs_a_camera_into_its_sink_and_shows_it_in_status(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    sinks = (
        '[sinks.telemetry]\ntype = "hold"\n'
        '[sinks.video]\ntype = "hold"\nmax_record_bytes = "8MiB"\n'
    )
    camera = (
        '[cameras.pattern]\nsource = "lavfi"\n'
        f'url = "testsrc2=size=320x240:rate={FPS}"\nsink = "video"\nfragment = "1s"\n'
    )
    config = write_config(tmp_path, broker.port, sinks=sinks + camera)
    agent = start_agent(config, agents)

    def fragments() -> int:
        return int(agent.status().get("cameras", {}).get("pattern", {}).get("fragments", 0))

    wait_until(lambda: fragments() >= 3, 30, 0.05, "three fragments")
    text = cli("status", "-c", str(config)).stdout
    assert "camera pattern (testsrc2=size=320x240:rate=30): capturing" in text
    assert "encode:" in text
    assert agent.terminate() == 0
    with Spool.open(spool_path(tmp_path)) as spool:
        stored = fragments_of(spool, "video")
    assert len(stored) >= 3
    times = [at for at, _, _ in stored]
    assert times == sorted(set(times))
    with av.open(str(as_mkv(stored, tmp_path / "agent.mkv"))) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == sum(int(str(meta["frames"])) for _, _, meta in stored)


def test_rtsp_h264_passes_through_with_every_slice_unchanged(tmp_path: Path) -> None:
    """A real RTSP session: Debian's ffmpeg pushes an H.264 recording (-c copy, RTP over
    TCP) to the camera's RTSP input in listen mode. Every frame's slice NAL units arrive
    byte for byte (the parameter sets travel in the SDP and may be repeated in-band)."""
    source = h264_file(tmp_path / "in.mp4")
    with av.open(str(source)) as container:
        expected = [slice_units(bytes(p)) for p in container.demux(video=0) if p.size]
    stop = threading.Event()
    with Spool.open(tmp_path / "s.db") as spool:
        url, camera = rtsp_listener("rtsp", spool, stop)
        camera.start()
        try:
            wait_until(lambda: camera.stats.state == "connecting", 10, 0.01, "listening")
            push = ["ffmpeg", "-v", "error", "-re", "-i", str(source), "-c", "copy"]
            push += ["-f", "rtsp", "-rtsp_transport", "tcp", url]
            for _ in range(50):  # the listening socket may not be bound yet: refused
                pushed = subprocess.run(
                    push, check=False, capture_output=True, text=True, timeout=60
                )
                if pushed.returncode == 0 or "refused" not in pushed.stderr:
                    break
                threading.Event().wait(0.1)  # a retry's pause, bounded by the loop
            assert pushed.returncode == 0, pushed.stderr
            wait_until(lambda: camera.stats.reconnects >= 1, 20, 0.01, "the push to end")
        finally:
            stop.set()
            camera.join(10)
        fragments = fragments_of(spool, "video")
    assert camera.stats.mode == "passthrough"
    with av.open(str(as_mkv(fragments, tmp_path / "out.mkv"))) as container:
        got = [slice_units(bytes(p)) for p in container.demux(video=0) if p.size]
    assert got == expected
    assert [int(str(meta["frames"])) for _, _, meta in fragments] == [FPS] * 3


def rtsp_listener(
    name: str, spool: Spool, stop: threading.Event, **settings: Any
) -> tuple[str, Camera]:
    """A camera whose RTSP input listens on a free port for a pusher (ffmpeg)."""
    url = f"rtsp://127.0.0.1:{free_port()}/live"
    config = CameraConfig(
        name, url, "video", "rtsp", fragment_ms=1000, reconnect_min=0.05, reconnect_max=0.1,
        extra_options={"rtsp_flags": "listen", "listen_timeout": "20"}, **settings,
    )  # fmt: skip
    return url, Camera(config, spool, stop)


def slice_units(avcc: bytes) -> list[bytes]:
    """The slice NAL units of an AVCC frame (servers may add or drop SPS/PPS/SEI)."""
    return [bytes(unit) for unit in h264.split_avcc(avcc) if h264.nal_type(unit) in (1, 5)]


def test_a_camera_that_stops_sending_is_reported_and_opened_again(tmp_path: Path) -> None:
    """ffmpeg pushes over RTSP and is then frozen (SIGSTOP): no packet arrives, the
    read times out after stall_timeout, the camera reports it and listens again; what
    it had captured is spooled and plays back."""
    source = h264_file(tmp_path / "in.mp4")
    stop = threading.Event()
    with Spool.open(tmp_path / "s.db") as spool:
        url, camera = rtsp_listener("frozen", spool, stop, stall_timeout=1.0)
        camera.start()
        push = ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(source)]
        push += ["-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp", url]
        pusher = None
        try:
            wait_until(lambda: camera.stats.state == "connecting", 10, 0.01, "listening")
            for _ in range(50):  # the listening socket may not be bound yet: refused
                pusher = subprocess.Popen(push, stderr=subprocess.DEVNULL)
                attempt = pusher
                wait_until(
                    lambda: camera.stats.frames > 0 or attempt.poll() is not None,  # noqa: B023
                    20,
                    0.01,
                    "frames or a refused push",
                )
                if camera.stats.frames > 0:
                    break
                threading.Event().wait(0.1)  # a retry's pause, bounded by the loop
            wait_until(lambda: camera.stats.frames >= 2 * FPS, 20, 0.01, "two seconds")
            assert pusher is not None
            pusher.send_signal(signal.SIGSTOP)  # the camera freezes: nothing more arrives
            wait_until(lambda: camera.stats.reconnects >= 1, 20, 0.01, "the stall noticed")
        finally:
            stop.set()
            if pusher is not None:
                pusher.kill()
                pusher.wait(10)
            camera.join(10)
        fragments = fragments_of(spool, "video")
    assert camera.stats.last_error
    assert len(fragments) >= 2
    with av.open(str(as_mkv(fragments, tmp_path / "out.mkv"))) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == sum(int(str(meta["frames"])) for _, _, meta in fragments)


@pytest.fixture
def rtsp_server(tmp_path: Path) -> Iterator[RtspServer]:
    """gst-rtsp-server on a free loopback port, serving a 3 s H.264 recording at /live."""
    missing = gst_rtsp_server.available()
    if missing:
        pytest.fail(missing)  # not a skip: CI must not pass without the RTSP tests
    server = RtspServer(free_port(), {"/live": (h264_file(tmp_path / "served.mp4"), "h264")})
    with server:
        yield server


@pytest.mark.parametrize("client", ["builtin", "pyav"])
def test_a_camera_pulls_from_an_rtsp_server_and_comes_back_after_it_restarts(
    tmp_path: Path, rtsp_server: RtspServer, client: str
) -> None:
    """An IP camera's setup: the camera pulls from a real RTSP server (GStreamer's
    gst-rtsp-server) over RTP/TCP, with either RTSP client. Every slice of the served
    recording arrives byte for byte; the server is then stopped (the camera drops) and
    started again on the same port: the camera reconnects by itself and its timecodes
    keep increasing."""
    with av.open(str(rtsp_server.mounts["/live"][0])) as container:
        expected = [slice_units(bytes(p)) for p in container.demux(video=0) if p.size]
    config = CameraConfig(
        "ipcam", rtsp_server.url("/live"), "video", "rtsp", fragment_ms=1000,
        reconnect_min=0.05, reconnect_max=0.2, stall_timeout=2.0,
        rtsp_client=client,  # type: ignore[arg-type]
    )  # fmt: skip
    stop = threading.Event()
    with Spool.open(tmp_path / "s.db") as spool:
        camera = Camera(config, spool, stop)
        camera.start()
        try:
            wait_until(lambda: camera.stats.frames >= len(expected), 30, 0.01, "the recording")
            rtsp_server.stop()  # the camera drops off the network
            wait_until(lambda: "refused" in camera.stats.last_error, 20, 0.01, "the drop")
            connects, frames = camera.stats.connects, camera.stats.frames
            rtsp_server.start()
            wait_until(lambda: camera.stats.connects > connects, 30, 0.01, "a reconnect")
            wait_until(lambda: camera.stats.frames >= frames + FPS, 30, 0.01, "frames again")
        finally:
            stop.set()
            camera.join(10)
        fragments = fragments_of(spool, "video")
    assert camera.stats.mode == "passthrough"
    with av.open(str(as_mkv(fragments[:3], tmp_path / "first.mkv"))) as container:
        got = [slice_units(bytes(p)) for p in container.demux(video=0) if p.size]
    assert got == expected
    times = [at for at, _, _ in fragments]
    assert times == sorted(set(times))
    with av.open(str(as_mkv(fragments, tmp_path / "all.mkv"))) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == sum(int(str(meta["frames"])) for _, _, meta in fragments)


class _Packet:
    def __init__(self, pts: int | None, duration: int = 0) -> None:
        self.pts, self.dts, self.duration = pts, None, duration


class _Stream:
    average_rate = Fraction(30)
    guessed_rate = None
    time_base = Fraction(1, 90000)


def test_packets_without_timestamps_are_timed_from_their_neighbours() -> None:
    """A joined RTSP session: the first packet has no pts, the rest start at 7 s (the
    server was already streaming): the first is timed one frame before the second, not
    at 0 (which would open a 7 s gap). Raw H.264 has none at all: counted from 0 by the
    packets' durations."""
    joined = [_Packet(None)] + [_Packet(630_000 + 3000 * i) for i in range(3)]
    timed = [p.pts for p in timed_packets(iter(joined), _Stream())]
    assert timed == [627_000, 630_000, 633_000, 636_000]
    raw = [_Packet(None, duration=3000) for _ in range(4)]
    assert [p.pts for p in timed_packets(iter(raw), _Stream())] == [0, 3000, 6000, 9000]
    whole = [_Packet(9000 * i) for i in range(3)]
    assert [p.pts for p in timed_packets(iter(whole), _Stream())] == [0, 9000, 18000]


def mjpeg_file(path: Path, seconds: int = 2) -> Path:
    """A Motion JPEG recording (what many USB and older IP cameras send), made with PyAV."""
    with (
        av.open(f"testsrc2=size=320x240:rate={FPS}", format="lavfi") as source,
        av.open(str(path), "w") as out,
    ):
        stream = out.add_stream("mjpeg", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuvj420p"
        for index, frame in enumerate(source.decode(video=0)):
            if index == seconds * FPS:
                break
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            out.mux(stream.encode(frame.reformat(format="yuvj420p")))
        out.mux(stream.encode(None))
    return path


def test_an_rtsp_camera_that_sends_motion_jpeg_is_encoded_through_pyav(tmp_path: Path) -> None:
    """The built-in client takes H.264 only: for anything else it hands the camera to
    PyAV, which decodes it, and libx264 encodes keyframe-led fragments."""
    missing = gst_rtsp_server.available()
    if missing:
        pytest.fail(missing)
    mounts = {"/mjpeg": (mjpeg_file(tmp_path / "served.mkv"), "jpeg")}
    config = CameraConfig(
        "usbcam", "", "video", "rtsp", fragment_ms=1000, reconnect_min=0.05, reconnect_max=0.2
    )
    stop = threading.Event()
    with RtspServer(free_port(), mounts) as server, Spool.open(tmp_path / "s.db") as spool:
        camera = Camera(replace(config, url=server.url("/mjpeg")), spool, stop)
        run_until(camera, stop, lambda: camera.stats.fragments >= 1, timeout=60)
        fragments = fragments_of(spool, "video")
    assert camera.stats.mode == "encode"
    assert not camera._builtin_rtsp
    with av.open(str(as_mkv(fragments, tmp_path / "out.mkv"))) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == sum(int(str(meta["frames"])) for _, _, meta in fragments) > 0


def test_a_new_picture_size_mid_stream_starts_fragments_with_their_own_track(
    tmp_path: Path,
) -> None:
    """The camera switches from 320x240 to 480x272 at a keyframe (new SPS in-band) one
    second into a two-second fragment: that fragment ends there, and every fragment is
    stored with the parameter sets and size of its own frames and plays back with PyAV
    at that size."""
    small = frames_of(h264_file(tmp_path / "small.mp4", seconds=3))
    large = frames_of(h264_file(tmp_path / "large.mp4", seconds=3, size=(480, 272)))
    step = 90_000 // FPS
    shifted = [replace(f, timestamp=f.timestamp + small[-1].timestamp + step) for f in large]
    config = CameraConfig("cam", "", "video", "rtsp", fragment_ms=2000, stall_timeout=0.5)
    stop = threading.Event()
    with (
        ScriptedRtspServer(Script(small + shifted)) as server,
        Spool.open(tmp_path / "s.db") as spool,
    ):
        camera = Camera(replace(config, url=server.url()), spool, stop)
        run_until(camera, stop, lambda: camera.stats.fragments >= 3, timeout=30)
        fragments = fragments_of(spool, "video")
    sizes = [(meta["width"], meta["height"]) for _, _, meta in fragments]
    assert sizes[:3] == [(320, 240), (320, 240), (480, 272)]
    assert [meta["frames"] for _, _, meta in fragments[:2]] == [2 * FPS, FPS]
    for index, fragment in enumerate(fragments[:3]):
        with av.open(str(as_mkv([fragment], tmp_path / f"{index}.mkv"))) as container:
            pictures = list(container.decode(video=0))
        assert {(p.width, p.height) for p in pictures} == {sizes[index]}
        assert len(pictures) == fragment[2]["frames"]


def test_a_paused_intake_costs_fragments_not_the_camera(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk (intake paused) refuses fragments: they are counted, the camera keeps
    capturing, and stores again once the spool takes them."""
    stop = threading.Event()
    with Spool.open(tmp_path / "s.db") as spool:
        append = spool.append
        full = threading.Event()
        full.set()

        def refusing(records: Sequence[Record], **more: Any) -> AppendResult:
            if full.is_set():
                raise IntakePaused("intake paused: the spool's filesystem is below its reserve")
            return append(records, **more)

        monkeypatch.setattr(spool, "append", refusing)
        settings = CameraConfig(
            "pattern", f"testsrc2=size=320x240:rate={FPS}", "video", "lavfi", fragment_ms=500
        )
        camera = Camera(settings, spool, stop)
        camera.start()
        try:
            wait_until(lambda: camera.stats.unstored_fragments >= 2, 30, what="refusals")
            assert camera.running and camera.stats.reconnects == 0
            assert camera.snapshot()["unstored_fragments"] >= 2
            full.clear()
            wait_until(lambda: spool.pending("video")[0] >= 2, 30, what="fragments stored")
        finally:
            stop.set()
            camera.join(10)
    assert camera.stats.reconnects == 0


def test_a_file_read_faster_than_real_time_never_stores_a_fragment_that_ends_in_the_future(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``realtime = false``: the first pass is read at once and stamped to end by now
    (not up to the file's length ahead, which the service refuses: 4007); the replay
    that follows is paced so that no fragment ends after the moment it is stored."""
    source = h264_file(tmp_path / "in.mp4", seconds=3)
    stop = threading.Event()
    stored: list[tuple[int, int, int]] = []  # (start ms, end ms, wall ms when stored)
    with Spool.open(tmp_path / "s.db") as spool:
        append = spool.append

        def watched(records: Sequence[Record], **more: Any) -> AppendResult:
            now = time.time_ns() // 1_000_000
            for record in records:
                meta = json.loads(record.meta or "{}")
                start = record.captured_at_ms
                stored.append((start, start + int(meta["duration_ms"]), now))
            return append(records, **more)

        monkeypatch.setattr(spool, "append", watched)
        settings = fast_file_camera("bulk", source)
        camera = Camera(settings, spool, stop)
        run_until(camera, stop, lambda: len(stored) >= 6, timeout=30)
    frame_ms = 1000 // FPS + 1
    for _start, end, at in stored:
        assert end <= at + frame_ms, f"a fragment ending {end - at} ms in the future"
    first_pass = stored[:3]
    assert first_pass[-1][2] - first_pass[0][2] < 1500, "the first pass is read at once"
    assert first_pass[0][2] - first_pass[0][0] >= 2500, "and stamped back to end by now"
    starts = [start for start, _, _ in stored]
    assert starts == sorted(set(starts))
    # The replay right after is paced: its three fragments take about its 3 s.
    assert stored[5][2] - stored[3][2] >= 1500


def b_frame_file(path: Path, seconds: int = 3) -> Path:
    """H.264 with two B-frames between references (as "main/high profile" cameras send)."""
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={FPS}",
            "-t", str(seconds), "-c:v", "libx264", "-bf", "2", "-g", str(FPS),
            "-pix_fmt", "yuv420p", str(path),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    return path


def assert_shown_at_their_times(fragments: Fragments, tmp: Path) -> None:
    """Decoded, the stored video shows one picture per frame step, in order: no
    bunches 1 ms apart, no holes (what decode-order times with B-frames give)."""
    with av.open(str(as_mkv(fragments, tmp / "out.mkv"))) as container:
        times = [frame.time for frame in container.decode(video=0) if frame.time is not None]
    steps = [round((b - a) * 1000) for a, b in itertools.pairwise(times)]
    assert len(steps) >= FPS  # a second of video at least
    step = 1000 / FPS
    assert all(step / 2 <= s <= step * 1.5 for s in steps), sorted(set(steps))


def test_a_file_with_b_frames_is_encoded_without_them_and_shown_at_its_times(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = b_frame_file(tmp_path / "bframes.mp4")
    stop = threading.Event()
    with Spool.open(tmp_path / "s.db") as spool, caplog.at_level(logging.WARNING):
        settings = CameraConfig("main-profile", str(source), "video", "file", fragment_ms=1000)
        camera = Camera(settings, spool, stop)
        run_until(
            camera, stop, lambda: camera.stats.mode == "encode" and spool.pending("video")[0] >= 4
        )
        fragments = [f for f in fragments_of(spool, "video") if int(str(f[2]["frames"])) > 2]
    assert caplog.text.count("sends B-frames") == 1
    assert camera.snapshot()["b_frames"] and camera.stats.mode == "encode"
    assert camera.clock.repaired == 0
    assert_shown_at_their_times(fragments[-3:], tmp_path)


def served_camera(
    tmp_path: Path, source: Path, codec: str, done: Callable[[Camera, Spool], bool]
) -> tuple[Camera, Fragments]:
    """A recording served by gst-rtsp-server, read by a camera with the default RTSP
    client until ``done``; the camera and the fragments it stored."""
    missing = gst_rtsp_server.available()
    if missing:
        pytest.fail(missing)
    stop = threading.Event()
    with (
        RtspServer(free_port(), {"/live": (source, codec)}) as server,
        Spool.open(tmp_path / "s.db") as spool,
    ):
        settings = CameraConfig("ipcam", server.url("/live"), "video", "rtsp", fragment_ms=1000)
        camera = Camera(settings, spool, stop)
        run_until(camera, stop, lambda: done(camera, spool))
        return camera, fragments_of(spool, "video")


def test_an_rtsp_camera_with_b_frames_is_encoded_without_them(tmp_path: Path) -> None:
    camera, stored = served_camera(
        tmp_path,
        b_frame_file(tmp_path / "served.mp4"),
        "h264",
        lambda camera, spool: camera.stats.mode == "encode" and spool.pending("video")[0] >= 4,
    )
    fragments = [f for f in stored if int(str(f[2]["frames"])) > 2]
    assert not camera._builtin_rtsp  # the built-in client saw the reordering first
    assert_shown_at_their_times(fragments[-2:], tmp_path)


def h265_file(path: Path, seconds: int = 3) -> Path:
    """H.265 in MP4 (hvcC extradata, one keyframe per second, no B-frames)."""
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={FPS}",
            "-t", str(seconds), "-c:v", "libx265", "-pix_fmt", "yuv420p",
            "-x265-params", f"keyint={FPS}:min-keyint={FPS}:bframes=0:log-level=error",
            "-tag:v", "hvc1", str(path),
        ],
        check=True,
        timeout=120,
    )  # fmt: skip
    return path


def test_h265_files_pass_through_byte_for_byte_as_hevc_tracks(tmp_path: Path) -> None:
    """H.265 is not transcoded: its pictures go into V_MPEGH/ISO/HEVC fragments as the
    file holds them, with an hvcC record FFmpeg's decoder takes."""
    source = h265_file(tmp_path / "in.mp4")
    with av.open(str(source)) as container:
        expected = [bytes(p) for p in container.demux(video=0) if p.size]
    stop = threading.Event()
    with Spool.open(tmp_path / "s.db") as spool:
        settings = CameraConfig("hevc", str(source), "video", "file", fragment_ms=1000)
        camera = Camera(settings, spool, stop)
        run_until(camera, stop, lambda: spool.pending("video")[0] >= 3)
        fragments = fragments_of(spool, "video")[:3]
    assert camera.stats.mode == "passthrough"
    assert {str(meta["codec_id"]) for _, _, meta in fragments} == {"V_MPEGH/ISO/HEVC"}
    with av.open(str(as_mkv(fragments, tmp_path / "out.mkv"))) as container:
        assert container.streams.video[0].codec_context.name == "hevc"
        got = [bytes(p) for p in container.demux(video=0) if p.size]
    assert got == expected
    with av.open(str(tmp_path / "out.mkv")) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(expected) == 3 * FPS


def test_an_h265_rtsp_camera_passes_through_the_built_in_client(tmp_path: Path) -> None:
    """gst-rtsp-server's rtph265pay (RFC 7798) into the built-in client: the pictures go
    into HEVC fragments without decoding, and every frame decodes."""
    camera, stored = served_camera(
        tmp_path,
        h265_file(tmp_path / "served.mp4"),
        "h265",
        lambda camera, spool: spool.pending("video")[0] >= 3,
    )
    fragments = stored[:3]
    assert camera.stats.mode == "passthrough" and camera._builtin_rtsp
    assert {str(meta["codec_id"]) for _, _, meta in fragments} == {"V_MPEGH/ISO/HEVC"}
    with av.open(str(as_mkv(fragments, tmp_path / "out.mkv"))) as container:
        assert container.streams.video[0].codec_context.name == "hevc"
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == sum(int(str(meta["frames"])) for _, _, meta in fragments) >= 2 * FPS
