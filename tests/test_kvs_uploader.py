"""The Kinesis Video sink end to end on loopback: a camera (lavfi, encoded) spools
fragments, the uploader streams them over PutMedia to `kvs-local`, which checks the
signature and the ingestion rules and stores what it accepted; read back with PyAV."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path

import av
import pytest
from botocore.credentials import Credentials

from edge_agent.config.loading import Config, parse_config
from edge_agent.delivery.budget import UploadBudget
from edge_agent.kvs_local.server import PutMediaServer
from edge_agent.records import LeasedRecord
from edge_agent.sinks.kvs.endpoint import KvsEndpoint
from edge_agent.sinks.kvs.uploader import KvsUploader
from edge_agent.sources.camera.camera import Camera
from edge_agent.spool.store import Spool
from edge_agent.worker import LinkState
from tests.support import (
    AgentProcess,
    JsonHandler,
    Mosquitto,
    spool_path,
    start_agent,
    wait_until,
    write_config,
)
from tests.video_backlog import encode_one_second, fill_backlog

KEY, SECRET = "AKIDKVSTEST", "kvs-test-secret"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PutMediaServer]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    endpoint = PutMediaServer(
        tmp_path / "received", credentials=Credentials(KEY, SECRET), streams=["cam"]
    ).start()
    yield endpoint
    endpoint.stop()


def make(
    server: PutMediaServer,
    tmp_path: Path,
    *,
    realtime: bool = False,
    aws: Mapping[str, object] | None = None,
    **kvs: object,
) -> tuple[Spool, Camera, KvsUploader, threading.Event]:
    """A lavfi camera (as fast as it encodes, or at real-time pace) and a KVS sink
    (``aws``: the config's [aws] section)."""
    document = {
        "aws": aws or {},
        "sinks": {
            "video": {
                "type": "kvs",
                "stream": "cam",
                "region": "us-east-1",
                "endpoint_url": server.url,
                "retry_min": "50ms",
                "retry_max": "200ms",
                **kvs,
            }
        },
        "cameras": {
            "pattern": {
                "source": "lavfi",
                "url": "testsrc2=size=320x240:rate=30" + (",realtime" if realtime else ""),
                "sink": "video",
                "fragment": "1s",
            }
        },
    }
    config = parse_config(document)
    spool = Spool.open(tmp_path / "spool.db")
    stop = threading.Event()
    camera = Camera(config.cameras["pattern"], spool, stop)
    uploader = KvsUploader(config.sinks["video"], spool, UploadBudget(None, 1024), stop)
    return spool, camera, uploader, stop


def run_until(
    parts: tuple[Spool, Camera, KvsUploader, threading.Event], done: object, what: str
) -> None:
    """Run the camera and the uploader until ``done()``; then stop both (the spool stays
    open for the test to look at)."""
    _, camera, uploader, stop = parts
    camera.start()
    uploader.start()
    try:
        wait_until(done, 60, 0.02, what)  # type: ignore[arg-type]
    finally:
        stop.set()
        camera.join(10)
        uploader.join(10)


def run_camera_into_kvs(config: Config, tmp_path: Path, fragments: int) -> KvsUploader:
    """Camera "door" into the sink "video" of ``config`` until that many fragments
    are acknowledged."""
    stop = threading.Event()
    with Spool.open(tmp_path / "spool.db") as spool:
        camera = Camera(config.cameras["door"], spool, stop)
        uploader = KvsUploader(config.sinks["video"], spool, UploadBudget(None, 1024), stop)
        parts = (spool, camera, uploader, stop)
        done = lambda: uploader.stats.fragments_acked >= fragments  # noqa: E731
        run_until(parts, done, f"{fragments} fragments acknowledged")
    return uploader


def test_camera_fragments_reach_kvs_local_persisted_and_play_back(
    server: PutMediaServer, tmp_path: Path
) -> None:
    parts = make(server, tmp_path, realtime=True)  # a live camera's pace: 1 s fragments
    spool, _, uploader, _ = parts
    with spool:
        run_until(parts, lambda: uploader.stats.fragments_acked >= 4, "4 fragments acked")
    assert uploader.stats.connections == 1 and uploader.stats.dead_lettered == 0
    # Stopping waits for the acknowledgements of what is on the wire: nothing is left to
    # be sent again after a restart.
    assert uploader.stats.fragments_acked == uploader.stats.fragments_sent
    assert uploader.stats.last_fragment_number is not None
    stored = server.streams["cam"]
    assert stored.fragments >= 4
    (path,) = stored.files
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    keyframes = [i for i, p in enumerate(packets) if p.is_keyframe]
    assert keyframes == list(range(0, 30 * len(keyframes), 30))  # one per 1 s fragment
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(packets)
    snapshot = uploader.snapshot()
    assert snapshot["fragments_acked"] >= 4
    # The end-of-fragment tag: acknowledged at once, not when the next fragment begins.
    assert snapshot["last_ack_latency_s"] is not None and snapshot["last_ack_latency_s"] < 0.5
    # From the capture of a fragment's first frame to its PERSISTED: the fragment's own
    # second (it is complete when the next keyframe arrives) and little more.
    captured = snapshot["capture_latency_s"]
    assert captured is not None
    assert 0.95 <= captured["p50"] <= captured["max"] < 1.5


def test_an_answer_quiet_for_longer_than_the_socket_timeout_keeps_the_connection(
    server: PutMediaServer, tmp_path: Path
) -> None:
    """Between fragments (and while the upload budget holds video back) the endpoint has
    nothing to say for longer than the socket's timeout: that is not the end of the
    connection, and the sink does not reconnect."""
    parts = make(server, tmp_path, realtime=True, connect_timeout="300ms")
    spool, _, uploader, _ = parts
    with spool:
        run_until(parts, lambda: uploader.stats.fragments_acked >= 3, "3 fragments acked")
    assert uploader.stats.connections == 1
    assert uploader.stats.last_error == ""


def test_a_fragment_the_service_refuses_is_dead_lettered_and_the_rest_go_on(
    server: PutMediaServer, tmp_path: Path
) -> None:
    """Within one PutMedia session times must increase: a fragment spooled after a
    later one (as from a camera whose clock was set back without repair) is refused
    with 4004, dead-lettered and counted, and the fragments after it go on."""
    spool, _, uploader, stop = make(server, tmp_path)
    video = encode_one_second()
    now = int(time.time() * 1000)
    with spool:
        for start in (now - 20_000, now - 30_000, now - 10_000):  # the second goes back
            fill_backlog(spool, video, 1, start_ms=start)
        uploader.start()
        try:
            wait_until(
                lambda: uploader.stats.dead_lettered == 1 and spool.pending("video")[0] == 0,
                60, 0.02, "one refused, the rest taken",
            )  # fmt: skip
        finally:
            stop.set()
            uploader.join(10)
        dead = spool.dead_letters(limit=10)
    assert uploader.stats.out_of_order == 1
    assert [d.reason for d in dead] == [
        "Kinesis Video refused the fragment: FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS (4004)"
    ]
    assert server.streams["cam"].timecodes == [now - 20_000, now - 10_000]


def test_a_fragment_whose_track_cannot_be_read_is_dead_lettered(
    server: PutMediaServer, tmp_path: Path
) -> None:
    spool, _, uploader, stop = make(server, tmp_path)
    video = encode_one_second()
    now = int(time.time() * 1000)
    with spool:
        fill_backlog(spool, video, 1, start_ms=now - 20_000)
        spool._conn.execute("UPDATE records SET meta = '{not json'")  # damaged on disk
        fill_backlog(spool, video, 1, start_ms=now - 10_000)
        uploader.start()
        try:
            wait_until(lambda: spool.pending("video")[0] == 0, 30, 0.02, "both settled")
        finally:
            stop.set()
            uploader.join(10)
        (dead,) = spool.dead_letters(limit=10)
    assert dead.reason.startswith("the fragment's track (meta) is unreadable")
    assert server.streams["cam"].timecodes == [now - 10_000]


def test_wrong_credentials_pause_the_sink_and_keep_the_fragments(
    server: PutMediaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    parts = make(server, tmp_path, pause_probe="1s")
    spool, _, uploader, _ = parts
    with spool:
        run_until(
            parts,
            lambda: uploader.stats.state == "paused" and spool.pending("video")[0] >= 2,
            "paused, fragments kept",
        )
        pending = spool.pending("video")[0]
    assert "InvalidSignatureException" in uploader.stats.last_error
    assert pending >= 2 and server.streams["cam"].fragments == 0


def test_once_access_is_granted_the_fragments_kept_during_a_pause_go_out_first_first(
    server: PutMediaServer, tmp_path: Path
) -> None:
    """The endpoint does not know the agent's key at first (as before an IAM policy is
    attached): the sink pauses and the camera keeps spooling. Once the key is accepted,
    the next probe sends everything, beginning with the very first fragment (the one
    the refused attempt had taken), and nothing is dead-lettered."""
    server.credentials = [Credentials("AKIDSOMEONEELSE", "not-ours")]
    parts = make(server, tmp_path, realtime=True, pause_probe="1s")
    spool, camera, uploader, stop = parts
    with spool:
        camera.start()
        uploader.start()
        try:
            wait_until(
                lambda: uploader.stats.state == "paused" and spool.pending("video")[0] >= 2,
                30, 0.02, "paused with fragments kept",
            )  # fmt: skip
            (first_ms,) = spool._conn.execute("SELECT MIN(captured_at_ms) FROM records").fetchone()
            kept = spool.pending("video")[0]
            server.credentials.append(Credentials(KEY, SECRET))  # access granted
            wait_until(lambda: uploader.stats.fragments_acked > kept, 30, 0.02, "the backlog")
        finally:
            stop.set()
            camera.join(10)
            uploader.join(10)
    assert "UnrecognizedClientException" in uploader.stats.last_error
    assert uploader.stats.dead_lettered == 0
    (path,) = server.streams["cam"].files
    with av.open(str(path)) as container:
        first_packet = next(p for p in container.demux(video=0) if p.size)
    assert first_packet.pts == first_ms


def test_sigkill_during_capture_and_upload_loses_no_persisted_fragment(
    server: PutMediaServer, tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    """The agent is killed (SIGKILL) while the camera captures and fragments are on the
    wire, then started again: every fragment the endpoint persisted is in its files
    and decodes; times keep increasing across the restart; what was on the wire at the
    kill is at most re-sent (the endpoint takes a fragment it already has again in a
    new session, as the service does), and nothing is dead-lettered."""
    sinks = (
        '[sinks.telemetry]\ntype = "hold"\n'
        f'[sinks.video]\ntype = "kvs"\nstream = "cam"\nregion = "us-east-1"\n'
        f'endpoint_url = "{server.url}"\nretry_min = "50ms"\nretry_max = "200ms"\n'
        '[cameras.pattern]\nsource = "lavfi"\n'
        'url = "testsrc2=size=320x240:rate=30,realtime"\nsink = "video"\nfragment = "1s"\n'
        'preset = "ultrafast"\n'
    )
    config = write_config(tmp_path, broker.port, sinks=sinks)
    stored = server.streams["cam"]
    first = start_agent(config, agents)
    wait_until(lambda: stored.fragments >= 3, 60, 0.02, "three fragments persisted")
    assert first.process is not None
    first.process.kill()
    first.process.wait(10)
    before = stored.fragments
    second = start_agent(config, agents)
    wait_until(lambda: stored.fragments >= before + 3, 60, 0.02, "three more after restart")
    assert second.terminate() == 0
    frames = 0
    for path in stored.files:
        with av.open(str(path)) as container:
            frames += sum(1 for _ in container.decode(video=0))
    assert frames >= 30 * stored.fragments - 1  # every persisted fragment plays back
    with Spool.open(spool_path(tmp_path)) as spool:
        assert spool.dead_letters(limit=100) == []
        (video,) = [queue for queue in spool.stats().queues if queue["name"] == "video"]
    timecodes = stored.timecodes
    resent = len(timecodes) - len(set(timecodes))
    assert resent <= 10 + 1  # at most what was in flight (max_in_flight) re-sent
    # Every fragment the endpoint got twice was counted as sent again after the restart.
    assert video["resent_after_restart_count"] >= resent
    # Fragments after the restart continue after the ones before it.
    assert sorted(set(timecodes)) == list(dict.fromkeys(timecodes))


class RotatingCredentials(ThreadingHTTPServer):
    """A container credentials endpoint (what ECS and EKS Pod Identity serve, and what
    botocore's own provider reads): every fetch hands out new temporary keys that
    expire in five minutes, so botocore must fetch again before each use."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CredentialsHandler)
        self.fetches = 0

    def keys(self, count: int) -> list[Credentials]:
        return [Credentials(f"ASIAROTATE{n}", f"secret-{n}", f"token-{n}") for n in range(count)]


class _CredentialsHandler(JsonHandler):
    server: RotatingCredentials

    def do_GET(self) -> None:
        number = self.server.fetches
        self.server.fetches += 1
        expires = datetime.now(UTC) + timedelta(minutes=5)
        body = json.dumps({
            "AccessKeyId": f"ASIAROTATE{number}", "SecretAccessKey": f"secret-{number}",
            "Token": f"token-{number}", "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }).encode()  # fmt: skip
        self.answer(200, body)


def test_each_connection_signs_with_credentials_refreshed_when_they_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temporary credentials from botocore's container provider (a real HTTP endpoint
    on loopback): the keys expire in five minutes, inside botocore's refresh window, so
    every new PutMedia connection must carry freshly fetched keys, with their session
    token signed. The endpoint accepts only those temporary keys."""
    issuer = RotatingCredentials()
    threading.Thread(target=issuer.serve_forever, daemon=True).start()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{issuer.server_port}/creds"
    )
    server = PutMediaServer(
        tmp_path / "received", credentials=issuer.keys(50), streams=["cam"]
    ).start()
    try:
        parts = make(server, tmp_path)
        spool, _, uploader, _ = parts
        # Connections are replaced after 0.5 s instead of 40 min, so the test sees several.
        uploader.options = replace(uploader.options, connection_max_age=0.5)
        with spool:
            run_until(
                parts,
                lambda: uploader.stats.connections >= 3 and uploader.stats.fragments_acked >= 6,
                "three connections",
            )
    finally:
        server.stop()
        issuer.shutdown()
        issuer.server_close()
    assert all(key.startswith("ASIAROTATE") for _, key in server.signed_with)
    used = [key for path, key in server.signed_with if path == "/putMedia"]
    assert len(used) >= 3
    assert len(set(used)) == len(used), "each connection signed with keys fetched for it"
    assert issuer.fetches >= 3
    assert uploader.stats.dead_lettered == 0


@pytest.fixture
def keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PutMediaServer]:
    """kvs-local for a stream with DataRetentionInHours = 0: RECEIVED, never PERSISTED."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    endpoint = PutMediaServer(
        tmp_path / "received",
        credentials=Credentials(KEY, SECRET),
        streams=["cam"],
        retention=False,
    ).start()
    yield endpoint
    endpoint.stop()


def test_a_stream_that_keeps_no_data_is_acknowledged_on_received(
    keeps_nothing: PutMediaServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ack_on = "auto" (the default) reads the retention: 0 hours means no PERSISTED ever
    comes, so fragments leave the spool once RECEIVED, with one warning."""
    parts = make(keeps_nothing, tmp_path)
    spool, _, uploader, _ = parts
    with spool, caplog.at_level(logging.WARNING):
        run_until(parts, lambda: uploader.stats.fragments_acked >= 3, "fragments acknowledged")
    assert uploader.snapshot()["acknowledged_on"] == "RECEIVED"
    assert caplog.text.count("keeps no data") == 1


def test_persisted_acknowledgements_on_a_stream_that_keeps_no_data_pause_the_sink(
    keeps_nothing: PutMediaServer, tmp_path: Path
) -> None:
    parts = make(keeps_nothing, tmp_path, ack_on="persisted", pause_probe="1s")
    spool, _, uploader, _ = parts
    with spool:
        run_until(
            parts,
            lambda: uploader.stats.state == "paused" and spool.pending("video")[0] >= 2,
            "paused with the reason",
        )
    assert "keeps no data" in uploader.stats.last_error
    assert uploader.stats.fragments_sent == 0  # nothing sent to wait forever for


def kvs_sink(endpoint_url: str) -> dict[str, str]:
    """A KVS sink for stream "cam" at this endpoint (control plane and PutMedia)."""
    return {"type": "kvs", "stream": "cam", "region": "us-east-1", "endpoint_url": endpoint_url}


class _DeniesDescribeStream(JsonHandler):
    """A control plane whose IAM policy allows GetDataEndpoint only."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"message": "not authorized to perform kinesisvideo:DescribeStream"}'
        self.answer(403, body, {"x-amzn-ErrorType": "AccessDeniedException:"})


def test_a_retention_that_cannot_be_read_leaves_the_configured_acknowledgement(
    caplog: pytest.LogCaptureFixture,
) -> None:
    control = ThreadingHTTPServer(("127.0.0.1", 0), _DeniesDescribeStream)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    try:
        config = parse_config(
            {"sinks": {"video": kvs_sink(f"http://127.0.0.1:{control.server_port}")}}
        )
        aws = config.sinks["video"].aws
        assert aws is not None
        endpoint = KvsEndpoint(aws, "cam", UploadBudget(None, 1024), threading.Event(), LinkState())
        credentials = Credentials(KEY, SECRET).get_frozen_credentials()
        with caplog.at_level(logging.WARNING):
            assert endpoint.retention_hours(credentials) is None
            assert endpoint.retention_hours(credentials) is None  # cached: asked once
        assert caplog.text.count("cannot read its retention") == 1
        assert "kinesisvideo:DescribeStream" in caplog.text
    finally:
        control.shutdown()
        control.server_close()


def test_h265_fragments_reach_kvs_local_and_play_back(
    server: PutMediaServer, tmp_path: Path
) -> None:
    """An H.265 camera passes through: kvs-local (strict about the codec private data)
    takes its hvcC tracks, and what it stored decodes as HEVC."""
    source = tmp_path / "in.mp4"
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
            "-t", "3", "-c:v", "libx265", "-pix_fmt", "yuv420p",
            "-x265-params", "keyint=30:min-keyint=30:bframes=0:log-level=error", str(source),
        ],
        check=True,
        timeout=120,
    )  # fmt: skip
    config = parse_config(
        {
            "sinks": {"video": kvs_sink(server.url)},
            "cameras": {
                "door": {"source": "file", "url": str(source), "sink": "video", "fragment": "1s"}
            },
        }
    )
    run_camera_into_kvs(config, tmp_path, 3)
    stored = server.streams["cam"]
    assert stored.fragments >= 3
    frames = 0
    for path in stored.files:
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.name == "hevc"
            frames += sum(1 for _ in container.decode(video=0))
    assert frames >= 30 * 3


def _payload_bytes_held(thread_name: str) -> list[int]:
    """The payloads of leased fragments the frames of that thread hold now."""
    (thread,) = [t for t in threading.enumerate() if t.name == thread_name]
    assert thread.ident is not None
    frame = sys._current_frames().get(thread.ident)
    held = []
    while frame is not None:
        held += [
            len(value.payload)
            for value in frame.f_locals.values()
            if isinstance(value, LeasedRecord) and value.payload
        ]
        frame = frame.f_back
    return held


def test_a_session_holds_no_fragment_it_has_sent(server: PutMediaServer, tmp_path: Path) -> None:
    """The fragments sent in a session are not held by it: not the first, which opened
    it (a session lasts up to ``connection_max_age``), nor the last, while the next is
    read from the spool or awaited (the 1080p camera's are 1.4 MB each)."""
    spool, _, uploader, stop = make(server, tmp_path)
    video = encode_one_second()
    with spool:
        fill_backlog(spool, video, 3)
        uploader.start()
        try:
            wait_until(lambda: uploader.stats.fragments_acked >= 3, 60, 0.02, "3 acknowledged")
            # The session stays open for the camera's next fragment.
            wait_until(lambda: uploader.stats.state == "sending", 10, 0.02, "the session open")
            held = _payload_bytes_held(f"kvs-{uploader.name}")
        finally:
            stop.set()
            uploader.join(10)
    assert held == []
