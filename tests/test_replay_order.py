"""The order in which a Kinesis Video sink sends a backlog (``replay``).

oldest-first sends everything in capture order: live video waits for the backlog.
live-first sends the newest fragment at once and follows the camera; the backlog goes
in separate sessions whenever live video has caught up. Sessions take turns on the one
connection a stream may have, and times increase within each: kvs-local refuses a
second connection and an older fragment within a connection, and stores what each
connection brought as its own MKV file, which PyAV must decode.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from botocore.credentials import Credentials

from edge_agent.config.budget import ScheduleWindow, ShareConfig
from edge_agent.config.loading import parse_config
from edge_agent.delivery.budget import SinkBudget, UploadBudget
from edge_agent.kvs_local.server import PutMediaServer, StreamState
from edge_agent.media import h264
from edge_agent.sinks.kvs.uploader import KvsUploader
from edge_agent.sources.camera.camera import Camera
from edge_agent.spool.store import Spool
from tests.support import wait_until
from tests.video_backlog import encode_one_second, fill_backlog

#: One-second fragments waiting in the spool when the sink starts.
BACKLOG = 12
#: The upload budget: a backlog fragment (about 40 kB) takes about 0.4 s, and the
#: backlog drains in several seconds beside the camera's live video.
BUDGET = 100_000
#: Live-first: from the capture of a live fragment's first frame to the endpoint
#: storing it, at most its own second, the encoder's delay, the backlog fragment on
#: the wire and a turn of sessions.
LIVE_FIRST_WAIT_S = 3.5


@pytest.fixture(scope="module")
def small_second() -> tuple[h264.ParameterSets, list[bytes]]:
    return encode_one_second(bitrate=300_000)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PutMediaServer]:
    endpoint = PutMediaServer(
        tmp_path / "received", credentials=Credentials("test", "test"), streams=["cam"]
    ).start()
    yield endpoint
    endpoint.stop()


class Setup:
    """A spool holding a backlog, a real-time lavfi camera, and the KVS sink."""

    def __init__(
        self,
        server: PutMediaServer,
        tmp_path: Path,
        video: tuple[h264.ParameterSets, list[bytes]],
        *,
        replay: str,
        budget: SinkBudget | None = None,
    ) -> None:
        document: dict[str, Any] = {
            "sinks": {
                "video": {
                    "type": "kvs", "stream": "cam", "region": "us-east-1",
                    "endpoint_url": server.url, "replay": replay,
                    "retry_min": "50ms", "retry_max": "200ms",
                }
            },
            "cameras": {
                "pattern": {
                    "source": "lavfi", "url": "testsrc2=size=320x240:rate=30,realtime",
                    "sink": "video", "fragment": "1s", "preset": "ultrafast",
                    "bitrate": "200kbit/s",
                }
            },
        }  # fmt: skip
        config = parse_config(document)
        self.spool = Spool.open(tmp_path / "spool.db")
        now = int(time.time() * 1000)
        fill_backlog(self.spool, video, BACKLOG, start_ms=now - (BACKLOG + 1) * 1000)
        self.backlog = [now - (BACKLOG + 1 - i) * 1000 for i in range(BACKLOG)]
        self.stop = threading.Event()
        self.camera = Camera(config.cameras["pattern"], self.spool, self.stop)
        self.uploader = KvsUploader(
            config.sinks["video"], self.spool, budget or UploadBudget(BUDGET, 16 * 1024), self.stop
        )
        self.stored: StreamState = server.streams["cam"]

    def run_until(self, done: Any, what: str, timeout: float = 60) -> None:
        self.camera.start()
        self.uploader.start()
        try:
            wait_until(done, timeout, 0.02, what)
        finally:
            self.stop.set()
            self.camera.join(10)
            self.uploader.join(10)

    def live(self) -> list[int]:
        """Timecodes stored that the camera captured (after the backlog)."""
        return [t for t in self.stored.timecodes if t > self.backlog[-1]]

    def backlog_stored(self) -> bool:
        return set(self.backlog) <= set(self.stored.timecodes)


def check_sessions(setup: Setup) -> None:
    """Nothing lost or refused; one connection at a time; each connection's file plays."""
    with setup.spool:
        assert setup.spool.dead_letters(limit=10) == []
    stored = setup.stored
    assert stored.refused_connections == 0, "never a second connection"
    assert setup.uploader.stats.last_error == ""
    frames = 0
    for path in stored.files:
        with av.open(str(path)) as container:
            frames += sum(1 for _ in container.decode(video=0))
    assert frames >= 30 * len(stored.timecodes) - 1


def test_oldest_first_sends_the_backlog_before_live_video(
    server: PutMediaServer, tmp_path: Path, small_second: tuple[h264.ParameterSets, list[bytes]]
) -> None:
    setup = Setup(server, tmp_path, small_second, replay="oldest-first")
    setup.run_until(lambda: setup.backlog_stored() and len(setup.live()) >= 3, "all sent")
    stored = setup.stored
    timecodes = stored.timecodes
    assert timecodes[:BACKLOG] == setup.backlog  # in capture order, the oldest first
    assert timecodes == sorted(timecodes)
    # Live video waited for the whole backlog.
    first_live = stored.accepted_at[BACKLOG] - timecodes[BACKLOG] / 1000
    assert first_live > LIVE_FIRST_WAIT_S, first_live
    check_sessions(setup)


def test_live_first_sends_the_newest_first_and_the_backlog_in_sessions_behind_it(
    server: PutMediaServer, tmp_path: Path, small_second: tuple[h264.ParameterSets, list[bytes]]
) -> None:
    setup = Setup(server, tmp_path, small_second, replay="live-first")
    setup.run_until(lambda: setup.backlog_stored() and len(setup.live()) >= 3, "all sent")
    stored = setup.stored
    timecodes = stored.timecodes
    # The first fragment stored is the newest there was: the backlog's last one (the
    # camera had not finished its first fragment yet) or the camera's first.
    assert timecodes[0] >= setup.backlog[-1]
    # The backlog went behind it, in capture order, over several sessions while the
    # camera went on, and live fragments went in between.
    backlog_order = [t for t in timecodes if t in set(setup.backlog[:-1])]
    assert backlog_order == sorted(backlog_order)
    stats = setup.uploader.stats
    assert stats.backlog_sessions >= 2 and stats.live_sessions >= 2
    assert stats.backlog_sent >= BACKLOG - 1
    last_backlog = max(i for i, t in enumerate(timecodes) if t in set(setup.backlog))
    live_meanwhile = [i for i, t in enumerate(timecodes[:last_backlog]) if t > setup.backlog[-1]]
    assert live_meanwhile, "live fragments went out while the backlog drained"
    # A live fragment waited at most for the backlog fragment on the wire and a
    # reconnection: from its capture (first frame) to stored, its own second and a
    # little more.
    waits = [stored.accepted_at[i] - timecodes[i] / 1000 for i in live_meanwhile]
    assert max(waits) < LIVE_FIRST_WAIT_S, waits
    # One file per connection that brought a fragment (the last may have brought none
    # yet at the stop), each in increasing time; no duplicates.
    assert stats.connections == stored.connections
    assert stats.connections - 1 <= len(stored.files) <= stats.connections
    assert len(timecodes) == len(set(timecodes))
    check_sessions(setup)


def test_a_backlog_window_holds_the_backlog_while_live_video_goes(
    server: PutMediaServer, tmp_path: Path, small_second: tuple[h264.ParameterSets, list[bytes]]
) -> None:
    """Video backlog only at night, live video always: in the day the backlog stays in
    the spool while live fragments are stored; when the night window comes, it goes."""
    now = [time.struct_time((2026, 11, 23, 12, 0, 0, 0, 327, 0))]  # Monday noon
    budget = UploadBudget(BUDGET, 16 * 1024, local_time=lambda: now[0])
    day = ScheduleWindow("06:00", "00:00", "pause", traffic="backlog")
    share = budget.share("video", ShareConfig(priority=10, schedule=(day,)))
    setup = Setup(server, tmp_path, small_second, replay="live-first", budget=share)
    setup.camera.start()
    setup.uploader.start()
    try:
        wait_until(lambda: len(setup.live()) >= 3, 30, 0.02, "live video in the day")
        assert setup.spool.pending("video")[0] >= BACKLOG - 1, "the backlog held"
        assert setup.uploader.stats.backlog_sessions == 0
        assert share.snapshot()["scheduled"] == "backlog paused by the schedule until 00:00"
        now[0] = time.struct_time((2026, 11, 24, 0, 30, 0, 1, 328, 0))  # the night
        wait_until(setup.backlog_stored, 30, 0.02, "the backlog at night")
    finally:
        setup.stop.set()
        setup.camera.join(10)
        setup.uploader.join(10)
    check_sessions(setup)
