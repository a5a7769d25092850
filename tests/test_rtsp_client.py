"""The built-in RTSP client: against GStreamer's gst-rtsp-server (a real camera-like
server: its packetizer, Basic and Digest authentication) and against a scripted server
for the protocol's corners (keepalive, RTCP and noise between frames, silence, a closed
connection, a redirect). The camera-level tests (reconnects, fragments that play) are
in tests/test_camera.py."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from edge_agent.config.cameras import CameraConfig
from edge_agent.sources.camera.camera import Camera
from edge_agent.sources.camera.rtp_h264 import AccessUnit, H264Depacketizer
from edge_agent.sources.camera.rtsp_client import (
    RtspError,
    RtspRefused,
    RtspSession,
    RtspStalled,
)
from edge_agent.spool.store import Spool
from tests import gst_rtsp_server
from tests.gst_rtsp_server import RtspServer
from tests.rtp_packets import SourceFrame, frames_of
from tests.scripted_rtsp import Script, ScriptedRtspServer
from tests.support import free_port, wait_until
from tests.test_camera import FPS, h264_file, slice_units


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return h264_file(tmp_path_factory.mktemp("rtsp") / "served.mp4", seconds=3)


@pytest.fixture(scope="module")
def frames(recording: Path) -> list[SourceFrame]:
    return frames_of(recording)


def read_units(session: RtspSession, count: int) -> list[AccessUnit]:
    """Open the session and read ``count`` access units (bounded by the stall timeout).
    A picture is complete when the next one begins: the last one sent never is."""
    depacketizer = H264Depacketizer()
    units: list[AccessUnit] = []
    session.open()
    for packet in session.packets():
        units += depacketizer.push(packet)
        if len(units) >= count:
            break
    return units[:count]


@pytest.fixture
def gst_server(recording: Path) -> Iterator[RtspServer]:
    missing = gst_rtsp_server.available()
    if missing:
        pytest.fail(missing)  # not a skip: CI must not pass without the RTSP tests
    with RtspServer(free_port(), {"/live": (recording, "h264")}) as server:
        yield server


def test_every_slice_of_a_gstreamer_stream_arrives_unchanged(
    gst_server: RtspServer, frames: list[SourceFrame]
) -> None:
    session = RtspSession(gst_server.url("/live"), connect_timeout=10, stall_timeout=10)
    try:
        units = read_units(session, len(frames) - 1)
    finally:
        session.close()
    sent = frames[:-1]
    assert [slice_units(unit.data) for unit in units] == [slice_units(frame.avcc) for frame in sent]
    assert [unit.keyframe for unit in units] == [frame.keyframe for frame in sent]
    steps = {later.timestamp - unit.timestamp for unit, later in itertools.pairwise(units)}
    assert all(abs(step - 90_000 // FPS) <= 1 for step in steps)  # 90 kHz, rounded


@pytest.mark.parametrize("method", ["basic", "digest"])
def test_a_camera_asking_for_credentials_gets_them_from_the_url(
    recording: Path, method: str
) -> None:
    """gst-rtsp-server checks the credentials itself; the password holds a ':' that the
    URL carries percent-encoded."""
    missing = gst_rtsp_server.available()
    if missing:
        pytest.fail(missing)
    auth = (method, "viewer", "se:cret")
    with RtspServer(free_port(), {"/live": (recording, "h264")}, auth=auth) as server:
        good = server.url("/live").replace("rtsp://", "rtsp://viewer:se%3Acret@")
        session = RtspSession(good, connect_timeout=10, stall_timeout=10)
        try:
            assert len(read_units(session, 3)) == 3
        finally:
            session.close()
        assert "se%3Acret" not in session.url and "viewer" not in session.url
        bad = server.url("/live").replace("rtsp://", "rtsp://viewer:wrong@")
        refused = RtspSession(bad, connect_timeout=10, stall_timeout=10)
        with pytest.raises(RtspRefused, match="401") as raised:
            refused.open()
        refused.close()
        assert raised.value.status == 401
        assert raised.value.retryable  # a camera keeps trying: someone may fix it


def test_a_camera_with_wrong_credentials_reports_them_and_keeps_trying(
    recording: Path, tmp_path: Path
) -> None:
    missing = gst_rtsp_server.available()
    if missing:
        pytest.fail(missing)
    auth = ("digest", "viewer", "secret")
    with RtspServer(free_port(), {"/live": (recording, "h264")}, auth=auth) as server:
        url = server.url("/live").replace("rtsp://", "rtsp://viewer:wrong@")
        config = CameraConfig("door", url, "video", reconnect_min=0.05, reconnect_max=0.1)
        stop = threading.Event()
        with Spool.open(tmp_path / "s.db") as spool:
            camera = Camera(config, spool, stop)
            camera.start()
            try:
                wait_until(lambda: camera.stats.reconnects >= 2, 20, 0.01, "two refusals")
            finally:
                stop.set()
                camera.join(10)
    snapshot = camera.snapshot()
    assert "401" in snapshot["last_error"] and "credentials" in snapshot["last_error"]
    assert "wrong" not in str(snapshot)


def test_keepalives_go_out_at_half_the_session_timeout_and_their_answers_are_skipped(
    frames: list[SourceFrame],
) -> None:
    """A 2 s session timeout: GET_PARAMETER about every second; the answers arrive
    between the RTP frames and every frame still comes out whole."""
    with ScriptedRtspServer(Script(frames, session_timeout=2)) as server:
        session = RtspSession(server.url(), connect_timeout=5, stall_timeout=5)
        try:
            units = read_units(session, len(frames) - 1)
        finally:
            session.close()
        wait_until(lambda: "TEARDOWN" in server.methods(), 5, 0.01, "the teardown")
    methods = server.methods()
    assert methods[:4] == ["OPTIONS", "DESCRIBE", "SETUP", "PLAY"]
    assert methods.count("GET_PARAMETER") >= 2  # 3 s of video
    assert [unit.data for unit in units] == [frame.avcc for frame in frames[:-1]]


def test_rtcp_and_noise_between_frames_are_skipped_on_the_channels_the_server_chose(
    frames: list[SourceFrame],
) -> None:
    script = Script(frames, rtcp_every=5, noise_every=7, channel=2)
    with ScriptedRtspServer(script) as server:
        session = RtspSession(server.url(), connect_timeout=5, stall_timeout=5)
        try:
            units = read_units(session, len(frames) - 1)
        finally:
            session.close()
    assert [unit.data for unit in units] == [frame.avcc for frame in frames[:-1]]
    assert session.interleaved_errors > 0  # the noise was seen and counted


@pytest.mark.parametrize("then", ["silence", "rtcp"])
def test_a_camera_without_video_is_a_stall_after_the_stall_timeout(
    frames: list[SourceFrame], then: Literal["silence", "rtcp"]
) -> None:
    """Silence, or RTCP reports and keepalive answers without video: both are a stall."""
    with ScriptedRtspServer(Script(frames[:10], then=then, session_timeout=1)) as server:
        session = RtspSession(server.url(), connect_timeout=5, stall_timeout=0.6)
        depacketizer = H264Depacketizer()
        session.open()
        started = time.monotonic()
        with pytest.raises(RtspStalled, match="no video for"):
            for packet in session.packets():
                depacketizer.push(packet)
        waited = time.monotonic() - started
        session.close()
    assert 0.6 <= waited < 0.6 + 1.0  # a receive slice (0.25 s) past the timeout at most


def test_a_stop_ends_the_reading_of_a_silent_camera_within_a_slice(
    frames: list[SourceFrame],
) -> None:
    stop = threading.Event()
    with ScriptedRtspServer(Script(frames[:10], then="silence")) as server:
        session = RtspSession(server.url(), connect_timeout=5, stall_timeout=60, stop=stop)
        session.open()
        read, stopped_at = 0, 0.0
        for _ in session.packets():  # the camera goes silent after its tenth frame
            read += 1
            if read == 5:
                stop.set()
                stopped_at = time.monotonic()
        ended = time.monotonic()
        session.close()
    assert ended - stopped_at < 2  # not the 60 s stall timeout
    assert read > 5  # what had arrived was still read


def test_a_camera_that_closes_the_connection_ends_the_session(frames: list[SourceFrame]) -> None:
    with ScriptedRtspServer(Script(frames[:10], then="close")) as server:
        session = RtspSession(server.url(), connect_timeout=5, stall_timeout=30)
        depacketizer = H264Depacketizer()
        units: list[AccessUnit] = []
        session.open()
        with pytest.raises(RtspError, match="closed the connection"):
            for packet in session.packets():
                units += depacketizer.push(packet)
        session.close()
    assert [unit.data for unit in units] == [frame.avcc for frame in frames[:9]]
    last = depacketizer.flush()  # the tenth: nothing came after it
    assert last is not None and last.data == frames[9].avcc


def test_a_redirect_is_followed_without_the_credentials_in_the_log(
    frames: list[SourceFrame],
) -> None:
    with ScriptedRtspServer(Script(frames)) as server:
        server.script.redirect_to = server.url("/moved")
        session = RtspSession(
            server.url().replace("rtsp://", "rtsp://u:p@"), connect_timeout=5, stall_timeout=5
        )
        try:
            assert len(read_units(session, 2)) == 2
        finally:
            session.close()
        assert session.url == server.url("/moved")
        assert [r.url for r in server.requests if r.method == "SETUP"] == [
            server.url("/moved") + "/trackID=1"
        ]


def test_which_cameras_take_the_built_in_client() -> None:
    def camera(**settings: object) -> CameraConfig:
        return CameraConfig("c", "rtsp://cam/live", "video", **settings)  # type: ignore[arg-type]

    assert camera().builtin_rtsp
    assert not camera(extra_options={"rtsp_transport": "udp"}).builtin_rtsp
    assert not camera(rtsp_client="pyav").builtin_rtsp
    assert not camera(source="file").builtin_rtsp


def test_requests_of_the_server_during_the_handshake_are_not_taken_for_answers(
    frames: list[SourceFrame],
) -> None:
    with ScriptedRtspServer(Script(frames, server_requests=True)) as server:
        session = RtspSession(server.url(), connect_timeout=5, stall_timeout=5)
        try:
            units = read_units(session, 3)
        finally:
            session.close()
    assert [unit.data for unit in units] == [frame.avcc for frame in frames[:3]]
