"""Event video: the local recording ring, events and their uploads (docs/EVENTS.md).

The ring and the recorder are driven directly against a real spool with fragments of
known times; the agent runs end to end with a lavfi camera, kvs-local and Mosquitto,
and what kvs-local stored is read back with PyAV."""

from __future__ import annotations

import io
import itertools
import json
import sqlite3
import time
import tomllib
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from edge_agent.config.cameras import CameraConfig
from edge_agent.config.loading import parse_config
from edge_agent.errors import ConfigError
from edge_agent.events.pictures import JpegEncoder
from edge_agent.events.recorder import Recorder, StoredFragment
from edge_agent.kvs_local.server import PutMediaServer
from edge_agent.media.fragment_meta import FragmentMeta, tags_of
from edge_agent.media.fragment_tags import fit
from edge_agent.media.mkv import H264, VideoTrack
from edge_agent.spool import camera_events
from edge_agent.spool.camera_events import NewEvent
from edge_agent.spool.queues import Queues
from edge_agent.spool.store import Spool
from tests.putmedia_client import CREDENTIALS
from tests.support import (
    AgentProcess,
    Mosquitto,
    cli,
    publish_one,
    spool_path,
    start_agent,
    wait_until,
    write_config,
)
from tests.video_checks import ffprobe_duration, ffprobe_video

T0 = 1_700_000_000_000
FRAGMENT_MS = 1000
META = FragmentMeta("door", 30, 967, VideoTrack(H264, b"\x01", 320, 240)).to_json()


class Clock:
    def __init__(self) -> None:
        self.now_ms = T0

    def __call__(self) -> float:
        return self.now_ms / 1000


def camera(**options: object) -> CameraConfig:
    settings: dict[str, object] = {
        "pre_roll_ms": 2000,
        "post_roll_ms": 2000,
        "record": True,
        "record_max_bytes": 1 << 30,
        "record_max_age": 3600.0,
        **options,
    }
    return CameraConfig("door", "testsrc2", "video", "lavfi", **settings)  # type: ignore[arg-type]


def store(recorder: Recorder, clock: Clock, index: int, size: int = 1000) -> None:
    """Fragment ``index``: from T0 + index s, one second long, ``size`` bytes."""
    start = T0 + index * FRAGMENT_MS
    clock.now_ms = start + FRAGMENT_MS
    payload = index.to_bytes(4, "big") * (size // 4)
    recorder.store(StoredFragment(start, start + FRAGMENT_MS - 33, META, payload))


def new_event(
    spool: Spool, started_ms: int, ended_ms: int | None, pre_roll_ms: int = 2000, **fields: object
) -> int:
    made: list[int] = []

    def also(conn: sqlite3.Connection, _queues: Queues) -> None:
        event = NewEvent("door", "manual", started_ms, ended_ms, pre_roll_ms, 2000, dict(fields))
        made.append(camera_events.create(conn, event, started_ms))

    spool.append([], also=also)
    return made[0]


def queued(spool: Spool) -> list[tuple[int, str]]:
    """The video queue's fragments: (index, meta)."""
    rows = spool._conn.execute(
        "SELECT r.captured_at_ms, r.meta FROM records r JOIN queues q ON q.id = r.queue_id"
        " WHERE q.name = 'video' ORDER BY r.id"
    ).fetchall()
    return [((at - T0) // FRAGMENT_MS, meta) for at, meta in rows]


def ring(spool: Spool) -> list[int]:
    rows = spool._conn.execute(
        "SELECT start_ms FROM recordings WHERE camera = 'door' ORDER BY start_ms"
    ).fetchall()
    return [(start - T0) // FRAGMENT_MS for (start,) in rows]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool.open(tmp_path / "spool.db") as opened:
        yield opened


def test_the_ring_keeps_its_bytes_and_age_and_drops_the_oldest_first(spool: Spool) -> None:
    clock = Clock()
    recorder = Recorder(camera(upload="off", record_max_bytes=5000), spool, clock=clock)
    for index in range(12):
        store(recorder, clock, index)
    assert ring(spool) == [7, 8, 9, 10, 11]  # 5 x 1000 bytes
    assert recorder.stats.ring_bytes == 5000 and recorder.stats.trimmed == 7
    assert queued(spool) == []  # upload = "off": nothing for the sink

    aged = Recorder(camera(upload="off", record_max_age=3.0), spool, clock=clock)
    assert aged.stats.ring_bytes == 5000  # read back from the spool
    store(aged, clock, 12)
    # Now T0 + 13 s: what ended before T0 + 10 s is older than 3 s.
    assert ring(spool) == [10, 11, 12]


def test_the_ring_never_drops_a_fragment_an_event_still_wants(spool: Spool) -> None:
    clock = Clock()
    settings = camera(upload="events", record_max_bytes=3000, pre_roll_ms=8000)
    recorder = Recorder(settings, spool, clock=clock)
    for index in range(4):
        store(recorder, clock, index)
    # An open event from T0 + 10 s wants video from T0 + 2 s on (8 s of pre-roll): the
    # fragments from index 2 on stay, though the ring is over its 3,000 bytes.
    new_event(spool, T0 + 10_000, None, pre_roll_ms=8000)
    for index in range(4, 9):
        store(recorder, clock, index)
    assert ring(spool)[0] == 2
    assert recorder.stats.ring_bytes > 3000
    # Those went to the upload queue: the ring keeps them until the service has them.
    assert [index for index, _ in queued(spool)] == [2, 3, 4, 5, 6, 7, 8]
    leased = spool.lease("video", max_records=3, max_bytes=1 << 20)
    spool.ack(leased)  # 2, 3 and 4 uploaded
    store(recorder, clock, 9)
    assert ring(spool)[0] == 5


def test_events_mode_uploads_the_pre_roll_the_event_and_the_post_roll_in_order(
    spool: Spool,
) -> None:
    clock = Clock()
    recorder = Recorder(camera(upload="events", tags={"site": "plant-3"}), spool, clock=clock)
    for index in range(5):
        store(recorder, clock, index)
    assert queued(spool) == []
    event = new_event(spool, T0 + 5_500, T0 + 6_200, door="north")
    for index in range(5, 12):
        store(recorder, clock, index)
    # 2 s of pre-roll before 5.5 s, 2 s of post-roll after 6.2 s: fragments 3 to 8.
    indexes = [index for index, _ in queued(spool)]
    assert indexes == [3, 4, 5, 6, 7, 8]
    for _, meta in queued(spool):
        tags = dict(tags_of(meta))
        assert tags == {
            "site": "plant-3",
            "event_id": str(event),
            "event_trigger": "manual",
            "event_door": "north",
        }
    (stored,) = spool.read("event", lambda conn: [camera_events.get(conn, event)])
    assert stored is not None and stored.covered == 1 and stored.fragments == 6
    assert recorder.stats.not_uploaded == 5 + 3  # 0-2 and 9-11 never went
    # The ring marks what went: the queue holds its own copy.
    copied = spool._conn.execute("SELECT count(*) FROM recordings WHERE queued = 1").fetchone()
    assert copied[0] == 6


def test_a_later_event_never_queues_a_fragment_behind_one_queued_already(spool: Spool) -> None:
    clock = Clock()
    recorder = Recorder(camera(upload="events"), spool, clock=clock)
    for index in range(6):
        store(recorder, clock, index)
    new_event(spool, T0 + 6_500, T0 + 6_500)
    for index in range(6, 10):
        store(recorder, clock, index)
    # A second event whose pre-roll reaches back before what went for the first:
    # only what comes after it is queued (a PutMedia session takes times in order).
    new_event(spool, T0 + 10_200, T0 + 10_200, pre_roll_ms=9000)
    for index in range(10, 14):
        store(recorder, clock, index)
    indexes = [index for index, _ in queued(spool)]
    assert indexes == sorted(indexes) and len(indexes) == len(set(indexes))
    assert indexes[:5] == [4, 5, 6, 7, 8]


def test_continuous_mode_tags_the_fragments_of_an_open_event(spool: Spool) -> None:
    clock = Clock()
    recorder = Recorder(camera(upload="continuous", record=False), spool, clock=clock)
    store(recorder, clock, 0)
    new_event(spool, T0 + 1_500, None)
    store(recorder, clock, 1)
    store(recorder, clock, 2)
    metas = [dict(tags_of(meta)) for _, meta in queued(spool)]
    assert metas[0] == {}
    assert metas[1]["event_trigger"] == metas[2]["event_trigger"] == "manual"
    assert ring(spool) == []  # no ring


def test_an_event_open_past_max_event_is_ended(spool: Spool) -> None:
    clock = Clock()
    recorder = Recorder(camera(upload="events", max_event_ms=3000), spool, clock=clock)
    event = new_event(spool, T0, None)
    for index in range(10):
        store(recorder, clock, index)
    stored = spool.read("event", lambda conn: camera_events.get(conn, event))
    assert stored is not None and stored.ended_ms == T0 + 3000 and stored.covered == 1
    # Pre-roll (none before T0), 0-3 s, post-roll to 5 s: fragments 0 to 5.
    assert [index for index, _ in queued(spool)] == [0, 1, 2, 3, 4, 5]


# ---------------------------------------------------------------------- the agent


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PutMediaServer]:
    """kvs-local with the stream "cam", and the agent's credentials for it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS.secret_key)
    endpoint = PutMediaServer(
        tmp_path / "received", credentials=CREDENTIALS, streams=["cam"], idle_timeout=5
    ).start()
    yield endpoint
    endpoint.stop()


def _kvs_config(tmp_path: Path, broker: Mosquitto, server: PutMediaServer, extra: str) -> Path:
    sinks = (
        '[sinks.telemetry]\ntype = "hold"\n'
        '[sinks.events]\ntype = "hold"\n'
        f'[sinks.video]\ntype = "kvs"\nstream = "cam"\nregion = "us-east-1"\n'
        f'endpoint_url = "{server.url}"\nretry_min = "50ms"\nretry_max = "200ms"\n'
        '[cameras.door]\nsource = "lavfi"\n'
        'url = "testsrc2=size=320x240:rate=30,realtime"\nsink = "video"\nfragment = "1s"\n'
        'preset = "ultrafast"\nupload = "events"\npre_roll = "2s"\npost_roll = "2s"\n'
        'events_sink = "events"\n'
        '[cameras.door.tags]\nsite = "plant-3"\n'
        f"{extra}"
    )
    return write_config(tmp_path, broker.port, sinks=sinks)


def _received(server: PutMediaServer) -> list[tuple[int, dict[str, str]]]:
    stored = server.streams["cam"]
    return list(zip(stored.timecodes, stored.metadata, strict=True))


def _spooled(tmp_path: Path, queue: str) -> list[dict[str, object]]:
    conn = sqlite3.connect(spool_path(tmp_path))
    try:
        rows = conn.execute(
            "SELECT r.payload FROM records r JOIN queues q ON q.id = r.queue_id"
            " WHERE q.name = ? ORDER BY r.id",
            (queue,),
        ).fetchall()
    finally:
        conn.close()
    return [json.loads(payload) for (payload,) in rows]


def _covered_and_uploaded(tmp_path: Path, server: PutMediaServer) -> bool:
    """Every event covered (its post-roll stored) and all it queued received."""
    conn = sqlite3.connect(spool_path(tmp_path))
    try:
        rows = conn.execute("SELECT covered, fragments FROM camera_events").fetchall()
    finally:
        conn.close()
    wanted = sum(fragments for _, fragments in rows)
    return (
        bool(rows)
        and all(covered for covered, _ in rows)
        and (server.streams["cam"].fragments >= wanted)
    )


def _check_range(received: list[tuple[int, dict[str, str]]], from_ms: int, to_ms: int) -> None:
    """Only fragments (1 s each) that reach into the range, and all of it covered."""
    assert received, "nothing uploaded"
    for at, _ in received:
        assert from_ms - 1100 <= at <= to_ms, (at, from_ms, to_ms)
    starts = [at for at, _ in received]
    assert min(starts) <= from_ms and max(starts) + 900 >= to_ms
    assert starts == sorted(set(starts))


def test_a_manual_event_uploads_only_its_range_tagged_and_is_announced(
    tmp_path: Path, broker: Mosquitto, server: PutMediaServer, agents: list[AgentProcess]
) -> None:
    config = _kvs_config(tmp_path, broker, server, "")
    agent = start_agent(config, agents)
    wait_until(
        lambda: agent.status().get("cameras", {}).get("door", {}).get("fragments", 0) >= 4,
        60,
        0.05,
        "four fragments recorded",
    )
    assert server.streams["cam"].fragments == 0  # nothing outside an event goes
    cli("event", "door", "-c", str(config), "--field", "operator=ana")
    wait_until(lambda: len(_spooled(tmp_path, "events")) >= 2, 30, 0.05, "start and end")
    wait_until(lambda: _covered_and_uploaded(tmp_path, server), 30, 0.05, "the event uploaded")
    assert agent.terminate() == 0
    start, end = _spooled(tmp_path, "events")
    assert (start["state"], end["state"]) == ("start", "end")
    at = int(str(start["started_ms"]))
    _check_range(_received(server), at - 2000, at + 2000)
    for _, tags in _received(server):
        assert tags["site"] == "plant-3" and tags["event_id"] == str(start["event_id"])
        assert tags["event_trigger"] == "manual" and tags["event_operator"] == "ana"
    fields = start["fields"]
    assert isinstance(fields, dict) and fields["operator"] == "ana"
    # What kvs-local stored plays back, frame for frame.
    frames = 0
    for path in server.streams["cam"].files:
        with av.open(str(path)) as container:
            frames += sum(1 for _ in container.decode(video=0))
    assert frames >= 30 * 4
    listing = cli("events", "-c", str(config)).stdout
    assert "manual" in listing and "ring door:" in listing


def test_an_mqtt_trigger_opens_and_closes_an_event_with_fields_from_the_payload(
    tmp_path: Path, broker: Mosquitto, server: PutMediaServer, agents: list[AgentProcess]
) -> None:
    trigger = (
        '[triggers.contact]\ntopics = ["doors/+/contact"]\ncameras = ["door"]\n'
        'state = "$.state"\n[triggers.contact.fields]\ndoor = "$.door"\n'
    )
    config = _kvs_config(tmp_path, broker, server, trigger)
    agent = start_agent(config, agents)
    wait_until(
        lambda: agent.status().get("cameras", {}).get("door", {}).get("fragments", 0) >= 3,
        60,
        0.05,
        "three fragments recorded",
    )
    publish_one(broker.port, "doors/north/contact", b'{"state": "open", "door": "north"}')
    wait_until(lambda: len(_spooled(tmp_path, "events")) >= 1, 30, 0.05, "the event's start")
    opened = int(str(_spooled(tmp_path, "events")[0]["started_ms"]))
    wait_until(lambda: time.time() * 1000 > opened + 3000, 10, 0.05, "3 s of event")
    publish_one(broker.port, "doors/north/contact", b'{"state": "closed", "door": "north"}')
    wait_until(lambda: len(_spooled(tmp_path, "events")) >= 2, 30, 0.05, "the event's end")
    wait_until(lambda: _covered_and_uploaded(tmp_path, server), 30, 0.05, "the event uploaded")
    assert agent.terminate() == 0
    start, end = _spooled(tmp_path, "events")
    assert (start["state"], end["state"]) == ("start", "end")
    closed = int(str(end["ended_ms"]))
    assert closed - opened >= 3000
    _check_range(_received(server), opened - 2000, closed + 2000)
    for _, tags in _received(server):
        assert tags["event_door"] == "north" and tags["event_trigger"] == "mqtt:contact"
    assert start["fields"] == {"door": "north", "topic": "doors/north/contact"}


# ---------------------------------------------------------------------- motion

SCENE_FPS = 15


def scene(path: Path, *, box_from_s: float | None, box_to_s: float = 0, seconds: int = 12) -> Path:
    """An H.264 file (one keyframe a second) of a still, noisy grey scene; with
    ``box_from_s``, a white box crosses the left half from then until ``box_to_s``."""
    width, height = 320, 240
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=SCENE_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = SCENE_FPS
        stream.codec_context.max_b_frames = 0
        stream.codec_context.options = {
            "x264-params": f"keyint={SCENE_FPS}:min-keyint={SCENE_FPS}:scenecut=0",
            "preset": "ultrafast",
        }
        for index in range(seconds * SCENE_FPS):
            at = index / SCENE_FPS
            yuv = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
            noise = rng.integers(-10, 11, size=(height, width))
            yuv[:height] = np.clip(120 + noise, 0, 255)
            if box_from_s is not None and box_from_s <= at < box_to_s:
                x = int(10 + (at - box_from_s) * 40)
                yuv[80:160, x : x + 60] = 235
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, SCENE_FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _motion_config(
    tmp_path: Path, broker: Mosquitto, server: PutMediaServer, source: Path, motion: str
) -> Path:
    sinks = (
        '[sinks.telemetry]\ntype = "hold"\n'
        '[sinks.events]\ntype = "hold"\n'
        f'[sinks.video]\ntype = "kvs"\nstream = "cam"\nregion = "us-east-1"\n'
        f'endpoint_url = "{server.url}"\nretry_min = "50ms"\nretry_max = "200ms"\n'
        f'[cameras.door]\nsource = "file"\nurl = "{source}"\nsink = "video"\n'
        'fragment = "1s"\nupload = "events"\npre_roll = "2s"\npost_roll = "2s"\n'
        'events_sink = "events"\n'
        f'[cameras.door.motion]\ncooldown = "2s"\n{motion}'
    )
    return write_config(tmp_path, broker.port, sinks=sinks)


def _camera_status(agent: AgentProcess) -> dict[str, object]:
    return dict(agent.status().get("cameras", {}).get("door", {}))


def _run_without_events(agent: AgentProcess, tmp_path: Path, server: PutMediaServer) -> None:
    """Seven fragments recorded: no event, nothing uploaded."""
    wait_until(
        lambda: int(str(_camera_status(agent).get("fragments", 0))) >= 7,
        40,
        0.05,
        "seven fragments recorded",
    )
    assert agent.terminate() == 0
    assert _spooled(tmp_path, "events") == []
    assert server.streams["cam"].fragments == 0


def test_a_box_crossing_a_still_scene_makes_one_event_with_its_rolls_uploaded(
    tmp_path: Path, broker: Mosquitto, server: PutMediaServer, agents: list[AgentProcess]
) -> None:
    source = scene(tmp_path / "scene.mp4", box_from_s=5, box_to_s=8)
    config = _motion_config(tmp_path, broker, server, source, "")
    agent = start_agent(config, agents)
    wait_until(lambda: _covered_and_uploaded(tmp_path, server), 40, 0.05, "the event uploaded")
    wait_until(lambda: len(_spooled(tmp_path, "events")) >= 2, 10, 0.05, "its end announced")
    assert agent.terminate() == 0
    events = [e for e in _spooled(tmp_path, "events") if e["state"] == "start"]
    assert len(events) == 1 and events[0]["trigger"] == "motion"
    start, end = _spooled(tmp_path, "events")
    # The first keyframe with the box is 5 s into the file; the last, 7 s.
    conn = sqlite3.connect(spool_path(tmp_path))
    try:
        (first,) = conn.execute("SELECT min(start_ms) FROM recordings").fetchone()
    finally:
        conn.close()
    began = int(str(start["started_ms"])) - first
    lasted = int(str(end["ended_ms"])) - int(str(start["started_ms"]))
    assert 4_900 <= began <= 6_100, began  # detected at the first keyframe with the box
    assert 1_900 <= lasted <= 3_100, lasted
    _check_range(
        _received(server), int(str(start["started_ms"])) - 2000, int(str(end["ended_ms"])) + 2000
    )
    # kvs-local holds nothing outside the rolls: every frame of what it stored, read back
    # with PyAV (producer times, absolute) and counted by ffprobe's own parser.
    from_ms, to_ms = int(str(start["started_ms"])) - 2000, int(str(end["ended_ms"])) + 2000
    frames = 0
    for path in server.streams["cam"].files:
        with av.open(str(path), "r") as container:
            times = [int(p.pts) for p in container.demux(video=0) if p.pts is not None]
        assert from_ms - 1100 <= min(times) and max(times) <= to_ms + 1000, (times, from_ms)
        info = ffprobe_video(path)
        assert info["codec_name"] == "h264" and int(info["nb_read_frames"]) == len(times)
        frames += len(times)
    assert frames == SCENE_FPS * len(_received(server))


def test_a_still_scene_makes_no_event_and_uploads_nothing(
    tmp_path: Path, broker: Mosquitto, server: PutMediaServer, agents: list[AgentProcess]
) -> None:
    source = scene(tmp_path / "still.mp4", box_from_s=None, seconds=8)
    config = _motion_config(tmp_path, broker, server, source, "")
    _run_without_events(start_agent(config, agents), tmp_path, server)


def test_a_mask_over_the_boxs_path_suppresses_its_motion(
    tmp_path: Path, broker: Mosquitto, server: PutMediaServer, agents: list[AgentProcess]
) -> None:
    source = scene(tmp_path / "scene.mp4", box_from_s=2, box_to_s=5, seconds=8)
    mask = "masks = [[[0, 0.25], [0.75, 0.25], [0.75, 0.75], [0, 0.75]]]\n"
    config = _motion_config(tmp_path, broker, server, source, mask)
    _run_without_events(start_agent(config, agents), tmp_path, server)


# ---------------------------------------------------------------------- clips


def _ring_times(tmp_path: Path) -> list[tuple[int, int]]:
    conn = sqlite3.connect(spool_path(tmp_path))
    try:
        return conn.execute("SELECT start_ms, end_ms FROM recordings ORDER BY start_ms").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_a_clip_of_the_ring_plays_and_lasts_as_long_as_its_range(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess], suffix: str
) -> None:
    sinks = (
        '[sinks.telemetry]\ntype = "hold"\n'
        '[cameras.door]\nsource = "lavfi"\nurl = "testsrc2=size=320x240:rate=30,realtime"\n'
        'fragment = "1s"\npreset = "ultrafast"\nupload = "off"\n'
    )
    config = write_config(tmp_path, broker.port, sinks=sinks)
    agent = start_agent(config, agents)
    wait_until(lambda: len(_ring_times(tmp_path)) >= 7, 60, 0.05, "seven fragments recorded")
    times = _ring_times(tmp_path)
    # From the middle of the second fragment to the middle of the sixth: the clip runs
    # from the second's keyframe to the sixth's last frame.
    start, end = times[1][0] + 500, times[5][0] + 500
    output = tmp_path / f"clip{suffix}"
    printed = cli(
        "clip", "door", "-c", str(config), "--from", str(start), "--to", str(end), "-o", str(output)
    ).stdout  # while the agent runs: read-only
    assert "5 fragments" in printed
    assert agent.terminate() == 0
    info = ffprobe_video(output)
    assert info["codec_name"] == "h264" and (info["width"], info["height"]) == (320, 240)
    assert int(info["nb_read_frames"]) == 5 * 30
    # Five fragments of 30 frames: from the first frame to the last, plus one frame.
    expected = (times[5][1] - times[1][0]) / 1000 + 1 / 30
    assert abs(ffprobe_duration(output) - expected) <= 0.1, (ffprobe_duration(output), expected)
    with av.open(str(output), "r") as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 5 * 30


# ---------------------------------------------------------------------- tags


def test_a_fragment_carries_at_most_nine_tags_static_ones_first() -> None:
    static = {f"s{n}": "v" for n in range(7)}
    events = [{"id": 4, "trigger": "motion", "fields": {"area": 0.02, "zone": "door"}}]
    tags, left_out = fit(static, events)
    assert len(tags) == 9 and left_out == 2
    assert [name for name, _ in tags] == [*static, "event_id", "event_trigger"]
    joined, _ = fit({}, [{"id": 1, "trigger": "motion"}, {"id": 2, "trigger": "manual"}])
    assert dict(joined) == {"event_id": "1,2", "event_trigger": "motion,manual"}
    long, _ = fit({}, [{"id": 1, "trigger": "x", "fields": {"note": "é" * 300}}])
    assert len(dict(long)["event_note"].encode()) <= 256


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ('AWS_x = "1"', "starts with AWS"),
        ("site = 3", "expected a string"),
        ("\n".join(f't{n} = "v"' for n in range(10)), "at most 9"),
    ],
)
def test_camera_tags_the_service_would_refuse_are_config_errors(tags: str, reason: str) -> None:
    document = (
        '[sinks.video]\ntype = "hold"\nmax_record_bytes = "8MiB"\n'
        '[cameras.door]\nurl = "rtsp://127.0.0.1/x"\nsink = "video"\n'
        f"[cameras.door.tags]\n{tags}\n"
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(tomllib.loads(document))
    assert any(reason in problem.reason for problem in raised.value.problems), raised.value


def test_one_jpeg_encoder_takes_pictures_of_any_stream_time_base(tmp_path: Path) -> None:
    """Snapshots reuse their encoder: pictures decoded from a file carry the file's time
    base (here 1/15360), which must not make their times collide."""
    source = scene(tmp_path / "still.mp4", box_from_s=None, seconds=1)
    encoder = JpegEncoder()
    with av.open(str(source), "r") as container:
        pictures = list(itertools.islice(container.decode(video=0), 3))
    for picture in pictures:
        with av.open(io.BytesIO(encoder.encode(picture)), "r") as jpeg:
            decoded = next(jpeg.decode(video=0))
        assert (decoded.width, decoded.height) == (320, 240)


def test_a_kill_in_the_middle_of_an_event_loses_none_of_its_video_and_repeats_nothing(
    tmp_path: Path, broker: Mosquitto, server: PutMediaServer, agents: list[AgentProcess]
) -> None:
    """SIGKILL while an event's video is being queued and sent, then a restart: every
    fragment the ring holds in the event's range reaches kvs-local, the event is
    announced once (start and end), and no fragment is queued twice."""
    config = _kvs_config(tmp_path, broker, server, "")
    first = start_agent(config, agents)
    wait_until(
        lambda: first.status().get("cameras", {}).get("door", {}).get("fragments", 0) >= 3,
        60,
        0.05,
        "three fragments recorded",
    )
    cli("event", "door", "-c", str(config), "--duration", "6s")
    wait_until(lambda: server.streams["cam"].fragments >= 3, 30, 0.05, "the event's first video")
    first.kill()
    second = start_agent(config, agents)
    wait_until(lambda: _covered_and_uploaded(tmp_path, server), 60, 0.05, "the event uploaded")
    wait_until(lambda: len(_spooled(tmp_path, "events")) >= 2, 10, 0.05, "its end announced")
    assert second.terminate() == 0
    start, end = _spooled(tmp_path, "events")
    assert (start["state"], end["state"]) == ("start", "end")
    from_ms = int(str(start["started_ms"])) - 2000
    to_ms = int(str(end["ended_ms"])) + 2000
    conn = sqlite3.connect(spool_path(tmp_path))
    try:
        in_range = [
            at
            for (at,) in conn.execute(
                "SELECT start_ms FROM recordings WHERE end_ms >= ? AND start_ms <= ?",
                (from_ms, to_ms),
            )
        ]
        queued = conn.execute("SELECT count(*) FROM recordings WHERE queued = 1").fetchone()[0]
    finally:
        conn.close()
    received = [at for at, _ in _received(server)]
    assert set(in_range) <= set(received), sorted(set(in_range) - set(received))
    assert queued == len(in_range)  # each once
    # What was on the wire at the kill may come twice; nothing else does.
    assert len(received) - len(set(received)) <= 10
