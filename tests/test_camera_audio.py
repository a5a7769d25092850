"""A camera's audio as a second track: AAC (RFC 3640 and MP4A-LATM) and G.711 A-law and
mu-law from gst-rtsp-server into the built-in RTSP client, AAC (MP4 and ADTS) and G.711
from files through PyAV; checked by decoding what was stored with PyAV and ffprobe:
two tracks in every fragment, continuous, and the picture's flashes and the sound's
beeps within 100 ms of each other (tests/audio_media.py)."""

from __future__ import annotations

import base64
import itertools
import statistics
import subprocess
import threading
from pathlib import Path

import av
import pytest

from edge_agent.config.cameras import CameraConfig
from edge_agent.config.loading import parse_config
from edge_agent.config.units import plural
from edge_agent.kvs_local.server import PutMediaServer
from edge_agent.media.mkv import AudioTrack, VideoTrack, stream_header
from edge_agent.sources.camera.audio_sync import RESYNC_BY_ARRIVAL_MS, RESYNC_MS, AudioSync
from edge_agent.sources.camera.camera import Camera
from edge_agent.spool.store import Spool
from edge_agent.status import render_camera
from tests import gst_rtsp_server
from tests.audio_media import assert_aligned, flash_beep_file
from tests.gst_rtsp_server import RtspServer
from tests.putmedia_client import CREDENTIALS
from tests.support import free_port
from tests.test_camera import Fragments, fragments_of, run_until
from tests.test_kvs_uploader import kvs_sink, run_camera_into_kvs
from tests.video_checks import ffprobe_streams, mkvinfo_lines

#: What each kind of audio reads as in FFmpeg, and its rate.
DECODED = {
    "aac": ("aac", 48_000),
    "latm": ("aac", 48_000),
    "adts": ("aac", 48_000),
    "pcma": ("pcm_alaw", 8_000),
    "pcmu": ("pcm_mulaw", 8_000),
}


# ---------------------------------------------------------------- placing the audio


def test_audio_is_placed_by_arrival_until_sender_reports_place_it_exactly() -> None:
    """Video at 90 kHz, audio at 16 kHz, each from a random timestamp; the audio is
    captured 40 ms after each video frame. By arrival, the audio's longer encoder delay
    (50 ms more than the video's) shows; the sender reports correct it, once."""
    assert RESYNC_MS < 50 <= RESYNC_BY_ARRIVAL_MS
    sync = AudioSync(90_000, 16_000)
    video_base, audio_base = 3_000_000_000, 4_294_000_000  # the audio wraps soon
    assert sync.audio(audio_base, 70) is None  # before any video: nothing to place it by
    for frame in range(30):
        captured = frame * 100  # ms
        sync.video(video_base + captured * 90, 10_000 + captured, captured + 20)
        raw = (audio_base + (captured + 40) * 16) % 2**32
        late = 20 if frame == 7 else 0  # a packet held up on the way: it changes nothing
        at = sync.audio(raw, captured + 40 + 70 + late)
        assert at == 10_000 + captured + 40 + 50
    assert [sync.by_reports, sync.resyncs] == [False, 0]
    # The server's clock: 1000 s at the first frame's capture, for both streams.
    sync.sender_report(False, 1000.0, video_base % 2**32)
    sync.sender_report(True, 1000.0, audio_base % 2**32)
    assert [sync.by_reports] == [True]
    for captured in (2_900, 3_000):  # past the audio's wrap
        raw = (audio_base + (captured + 40) * 16) % 2**32
        assert sync.audio(raw, 5_000) == 10_000 + captured + 40
    assert sync.resyncs == 1


# ---------------------------------------------------------------- cameras with sound


def stored_tracks(fragments: Fragments) -> tuple[VideoTrack, AudioTrack]:
    meta = fragments[0][2]
    audio = meta["audio"]
    assert isinstance(audio, dict)
    video = VideoTrack(
        str(meta["codec_id"]),
        base64.b64decode(str(meta["codec_private"])),
        int(str(meta["width"])),
        int(str(meta["height"])),
    )
    sound = AudioTrack(
        str(audio["codec_id"]),
        base64.b64decode(str(audio["codec_private"])),
        int(audio["sampling_hz"]),
        int(audio["channels"]),
    )
    return video, sound


def assert_two_tracks_aligned(fragments: Fragments, kind: str, path: Path) -> None:
    """Every fragment has both tracks; played back, they are continuous and aligned."""
    assert len(fragments) >= 4
    assert all("audio" in meta for _, _, meta in fragments), [m for _, _, m in fragments]
    path.write_bytes(
        stream_header(*stored_tracks(fragments)) + b"".join(p for _, p, _ in fragments)
    )
    assert_plays_back_aligned(path, kind)


def assert_plays_back_aligned(path: Path, kind: str) -> None:
    codec, rate = DECODED[kind]
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (audio.codec_context.name, audio.rate, audio.channels) == (codec, rate, 1)
        pictures = sum(1 for _ in container.decode(video))
    with av.open(str(path)) as container:
        times = [f.time for f in container.decode(audio=0) if f.time is not None]
    assert pictures >= 60
    # Continuous across fragments: each frame follows the one before by a frame's length,
    # but where the audio's timeline was moved to a better estimate (audio_sync.py: by
    # arrival times, then by the sender reports), dropping the frames it put before the
    # last one stored.
    steps = [b - a for a, b in itertools.pairwise(times)]
    usual = statistics.median(steps)
    holes = [step for step in steps if step > 1.5 * usual]
    assert min(steps) > 0 and len(holes) <= 2 and max(steps) < usual + 0.15, (usual, holes)
    assert_aligned(path)


def served_with_audio(
    tmp_path: Path, source: Path, kind: str, **settings: object
) -> tuple[Camera, Fragments]:
    missing = gst_rtsp_server.available()
    if missing:
        pytest.fail(missing)
    stop = threading.Event()
    with (
        RtspServer(free_port(), {"/live": (source, f"h264+{kind}")}) as server,
        Spool.open(tmp_path / "s.db") as spool,
    ):
        config = CameraConfig(
            "ipcam",
            server.url("/live"),
            "video",
            "rtsp",
            fragment_ms=1000,
            **settings,  # type: ignore[arg-type]
        )
        camera = Camera(config, spool, stop)
        run_until(camera, stop, lambda: spool.pending("video")[0] >= 6)
        return camera, fragments_of(spool, "video")


@pytest.mark.parametrize(
    ("kind", "client"), [("aac", "builtin"), ("aac", "pyav"), ("pcmu", "pyav")]
)
def test_an_rtsp_cameras_audio_is_a_second_track_aligned_with_its_video(
    tmp_path: Path, kind: str, client: str
) -> None:
    """By either RTSP client (FFmpeg's places the audio by the sender reports itself);
    kvs-local takes every codec below."""
    source = flash_beep_file(tmp_path, kind)
    camera, fragments = served_with_audio(tmp_path, source, kind, audio=True, rtsp_client=client)
    snapshot = camera.snapshot()
    assert camera.stats.mode == "passthrough" and camera._builtin_rtsp == (client == "builtin")
    assert snapshot["audio"] == ("AAC 48000 Hz 1 ch" if kind == "aac" else "G.711 8000 Hz 1 ch")
    assert snapshot["audio_frames"] > 0
    frames = plural(snapshot["audio_frames"], "frame")
    assert f"  audio: {snapshot['audio']}, {frames}, dropped " in (
        "\n".join(render_camera("ipcam", snapshot))
    )
    assert_two_tracks_aligned(fragments, kind, tmp_path / "out.mkv")


def test_audio_is_left_out_unless_asked_for(tmp_path: Path) -> None:
    camera, fragments = served_with_audio(tmp_path, flash_beep_file(tmp_path, "aac"), "aac")
    assert camera.snapshot()["audio"] == "off"
    assert "audio" not in "\n".join(render_camera("ipcam", camera.snapshot()))
    assert all("audio" not in meta for _, _, meta in fragments)


@pytest.mark.parametrize("kind", ["aac", "adts", "pcma"])
def test_a_files_audio_is_a_second_track_aligned_with_its_video(tmp_path: Path, kind: str) -> None:
    stop = threading.Event()
    with Spool.open(tmp_path / "s.db") as spool:
        source = flash_beep_file(tmp_path, kind)
        config = CameraConfig("file", str(source), "video", "file", fragment_ms=1000, audio=True)
        camera = Camera(config, spool, stop)
        run_until(camera, stop, lambda: spool.pending("video")[0] >= 7)
        fragments = fragments_of(spool, "video")
    assert camera.stats.mode == "passthrough"
    assert_two_tracks_aligned(fragments[:7], kind, tmp_path / "out.mkv")


def test_audio_that_cannot_be_taken_is_reported_once_and_the_video_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    with Spool.open(tmp_path / "s.db") as spool:
        source = flash_beep_file(tmp_path, "opus")
        config = CameraConfig("file", str(source), "video", "file", fragment_ms=1000, audio=True)
        camera = Camera(config, spool, stop)
        run_until(camera, stop, lambda: spool.pending("video")[0] >= 10)  # a replay too
        fragments = fragments_of(spool, "video")
    assert camera.snapshot()["audio"] == "left out: opus audio is not taken (AAC and G.711 are)"
    assert caplog.text.count("audio left out") == 1
    assert all("audio" not in meta for _, _, meta in fragments)
    silent = tmp_path / "silent.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(source), "-an", "-c", "copy", str(silent)],
        check=True, timeout=60,
    )  # fmt: skip
    stop = threading.Event()
    with Spool.open(tmp_path / "t.db") as spool:
        config = CameraConfig("file", str(silent), "video", "file", fragment_ms=1000, audio=True)
        camera = Camera(config, spool, stop)
        run_until(camera, stop, lambda: spool.pending("video")[0] >= 3)
    assert camera.snapshot()["audio"] == "none (the camera sends no audio)"


# ---------------------------------------------------------------- into Kinesis Video


@pytest.mark.parametrize("kind", ["aac", "latm", "pcma", "pcmu"])
def test_an_rtsp_cameras_audio_reaches_kvs_local_and_plays_back_aligned(
    server: PutMediaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """gst-rtsp-server's H.264 with AAC (rtpmp4gpay, rtpmp4apay) or G.711 (rtppcmapay,
    rtppcmupay), through the built-in RTSP client, the spool and the Kinesis Video sink,
    into kvs-local (strict about tracks: 4010, 4011, ordering); what it stored has two
    tracks for mkvinfo, ffprobe and PyAV, continuous and aligned."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS.secret_key)
    missing = gst_rtsp_server.available()
    if missing:
        pytest.fail(missing)
    source = flash_beep_file(tmp_path, "aac" if kind == "latm" else kind)
    with RtspServer(free_port(), {"/live": (source, f"h264+{kind}")}) as rtsp:
        config = parse_config(
            {
                "sinks": {"video": kvs_sink(server.url)},
                "cameras": {
                    "door": {
                        "source": "rtsp",
                        "url": rtsp.url("/live"),
                        "sink": "video",
                        "fragment": "1s",
                        "audio": True,
                    }
                },
            }
        )
        uploader = run_camera_into_kvs(config, tmp_path, 6)
    assert uploader.stats.dead_lettered == 0 and uploader.stats.connections == 1
    (path,) = server.streams["cam"].files
    streams = ffprobe_streams(path)
    assert [s["codec_name"] for s in streams] == ["h264", DECODED[kind][0]]
    assert sum("+ Track type: audio" in line for line in mkvinfo_lines(path)) == 1
    assert_plays_back_aligned(path, kind)
