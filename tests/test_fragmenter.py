"""Frame times that always increase, and fragments cut at keyframes."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import av
import pytest

from edge_agent.media.mkv import AUDIO_TRACK, H264, Frame, VideoTrack, stream_header
from edge_agent.sources.camera.fragmenter import AUDIO_WAIT_MS, MAX_HELD_AUDIO, Fragmenter
from edge_agent.sources.camera.timestamps import FrameClock
from tests.test_mkv import FPS, FRAMES, encoded_frames

MS = Fraction(1, 1000)


def placed(clock: FrameClock, pts: int | None, time_base: Fraction | None) -> int:
    """A frame stored as soon as it arrives: its time on the stream, then on the wall."""
    return clock.absolute_ms(clock.stream_ms(pts, time_base))


class WallClock:
    def __init__(self, now_ms: int = 1_795_000_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def test_frames_follow_their_pts_from_the_wall_clock_anchor() -> None:
    wall = WallClock()
    clock = FrameClock(wall_ms=wall)
    assert placed(clock, 9000, Fraction(1, 90000)) == wall.now_ms  # the anchor
    wall.now_ms += 5000  # the wall clock no longer matters within a connection
    assert placed(clock, 12000, Fraction(1, 90000)) == 1_795_000_000_000 + 33
    assert clock.repaired == 0


def test_frames_read_while_probing_do_not_put_the_stream_ahead_of_real_time() -> None:
    """FFmpeg returns the frames it buffered while probing in one burst: the first
    28 frames (0..900 ms) arrive at once, 900 ms late; then frames arrive 5 ms after
    they are made. The anchor is the least-delayed frame: no frame is stamped after it
    arrived, and the first is not stamped 900 ms late."""
    wall = WallClock()
    start = wall.now_ms
    arrivals = [start + max(900, round(index * 1000 / 30) + 5) for index in range(60)]
    clock = FrameClock(wall_ms=wall)
    stream = []
    for index, arrived in enumerate(arrivals):
        wall.now_ms = arrived
        stream.append(clock.stream_ms(index * 3000, Fraction(1, 90000)))
    placed = [clock.absolute_ms(ms) for ms in stream]  # the fragment is stored
    assert placed[0] == start + 5
    assert all(at <= arrived for at, arrived in zip(placed, arrivals, strict=True))
    assert clock.repaired == 0
    wall.now_ms -= 60_000  # a clock step within the connection changes nothing
    assert clock.absolute_ms(clock.stream_ms(60 * 3000, Fraction(1, 90000))) == start + 2005


def test_time_keeps_increasing_when_the_clock_steps_back_or_pts_repeat() -> None:
    wall = WallClock()
    clock = FrameClock(wall_ms=wall)
    first = placed(clock, 0, MS)
    assert placed(clock, 0, MS) == first + 1  # a repeated pts
    clock.reanchor()  # the camera reconnected...
    wall.now_ms -= 3_600_000  # ...after the wall clock stepped back an hour
    after = [placed(clock, pts, MS) for pts in (0, 40, 80)]
    assert after == [first + 2, first + 3, first + 4]
    assert clock.repaired == 4


def test_a_restart_carries_on_after_the_last_stored_time() -> None:
    wall = WallClock()
    clock = FrameClock(resume_after_ms=wall.now_ms + 10, wall_ms=wall)
    assert placed(clock, 0, MS) == wall.now_ms + 11
    assert placed(clock, None, None) == wall.now_ms + 12  # no pts: the wall clock, moved on


def test_a_jump_in_the_cameras_own_times_is_joined_where_the_frame_arrived() -> None:
    """The camera's pts jump back a minute (a shared stream sought to its start for a
    client that joined), later ahead an hour: the stored times go on 33 ms a frame as
    the frames arrived, not bunched 1 ms apart for a minute nor leaping an hour; a frame
    3 s late is a delay, not a jump, and neither is a source slower than real time."""
    wall = WallClock()
    start = wall.now_ms
    clock = FrameClock(wall_ms=wall, monotonic_ms=lambda: wall.now_ms - start)
    pts = [3000 * (i + 1800) for i in range(100)]  # a minute in
    pts += [3000 * i for i in range(100)]  # back to the start
    pts += [3000 * (i + 120_000) for i in range(100)]  # an hour ahead
    times = []
    for index, frame_pts in enumerate(pts):
        wall.now_ms = start + index * 1000 // 30 + (3000 if index == 250 else 0)
        times.append(clock.absolute_ms(clock.stream_ms(frame_pts, Fraction(1, 90000))))
    steps = {later - earlier for earlier, later in itertools.pairwise(times)}
    assert steps <= {33, 34}
    assert clock.discontinuities == 2
    assert clock.repaired == 0
    slow = FrameClock(wall_ms=wall, monotonic_ms=lambda: wall.now_ms - start)
    for index in range(600):  # 20 s of video delivered at half speed
        wall.now_ms += 66
        slow.stream_ms(3000 * index, Fraction(1, 90000))
    assert slow.discontinuities == 0


def frames(count: int, gop: int, step_ms: int = 33, start: int = 1_000) -> list[Frame]:
    return [Frame(start + i * step_ms, i % gop == 0, bytes([i % 256])) for i in range(count)]


def test_fragments_start_at_keyframes_and_last_about_the_target() -> None:
    fragmenter = Fragmenter(target_ms=2000)
    out = [f for frame in frames(300, gop=30) if (f := fragmenter.add(frame))]
    fragments = [*out, *fragmenter.flush()]
    # keyframes every 0.99 s: the one at 1.98 s is "about 2 s" (a strict 2 s would wait
    # for the one at 2.97 s and make every fragment half again as long)
    assert [len(f.frames) for f in fragments] == [60] * 5
    assert all(f.frames[0].keyframe for f in fragments)
    assert sum(len(f.frames) for f in fragments) == 300
    assert fragmenter.dropped_frames == fragmenter.forced_cuts == 0


def test_a_gop_longer_than_the_maximum_is_cut_and_the_wait_for_a_keyframe_counted() -> None:
    fragmenter = Fragmenter(target_ms=2000, max_ms=5000)
    out = [f for frame in frames(450, gop=300) if (f := fragmenter.add(frame))]
    assert [len(f.frames) for f in out] == [152]  # up to 5 s after its keyframe
    assert fragmenter.forced_cuts == 1
    assert fragmenter.dropped_frames == 300 - 152
    [rest] = fragmenter.flush()
    assert rest.frames[0].keyframe and len(rest.frames) == 150


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        Fragmenter(target_ms=3000, max_ms=2000)
    with pytest.raises(ValueError):
        Fragmenter(target_ms=2000, max_ms=40_000)


def test_encoded_camera_frames_become_fragments_pyav_plays_back(tmp_path: Path) -> None:
    sets, encoded = encoded_frames()
    fragmenter = Fragmenter(target_ms=1000)
    fragments = [f for frame in encoded if (f := fragmenter.add(frame))]
    fragments += fragmenter.flush()
    assert [len(f.frames) for f in fragments] == [FPS] * (FRAMES // FPS)
    track = VideoTrack(H264, sets.avcc_record(), 320, 240)
    path = tmp_path / "fragments.mkv"
    path.write_bytes(stream_header(track) + b"".join(f.cluster() for f in fragments))
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == FRAMES


def sound(start: int, count: int, step_ms: int = 21) -> list[Frame]:
    return [Frame(start + i * step_ms, True, b"a", AUDIO_TRACK) for i in range(count)]


def test_audio_is_cut_where_the_video_is_and_a_fragment_waits_for_its_audio() -> None:
    """Audio arriving after its video (as a camera's often does) still lands in the
    fragment its time belongs to; none falls between fragments."""
    fragmenter = Fragmenter(target_ms=1000)
    fragmenter.expect_audio(True)  # the camera's audio is set up: fragments wait for it
    video = frames(60, gop=30, start=1_000)  # keyframes at 1000 and 1990
    audio = sound(900, 70)  # 900 .. 2349, starting before the first keyframe
    for frame in video[:31]:  # up to the second keyframe: the first fragment is closed
        assert fragmenter.add(frame) is None
    done = [f for frame in audio[:50] if (f := fragmenter.add_audio(frame))]
    assert done == []  # the audio has not reached 1990 yet (900 + 49 * 21 = 1929)
    done = [f for frame in audio[50:] if (f := fragmenter.add_audio(frame))]
    assert len(done) == 1  # released by the first audio frame at or after 1990
    (first,) = done
    expected = [f.time_ms for f in audio if 1_000 <= f.time_ms < 1_990]
    assert [f.time_ms for f in first.audio] == expected
    assert fragmenter.dropped_audio == 5  # 900 .. 984: before the first keyframe
    for frame in video[31:]:
        assert fragmenter.add(frame) is None
    (second,) = fragmenter.flush()
    assert second.audio[0].time_ms >= 1_990 == second.frames[0].time_ms
    assert len(first.audio) + len(second.audio) + 5 == len(audio)
    # Both tracks in one cluster, in time order: the cluster writer checks it.
    assert first.cluster() and second.cluster()
    # What the camera stores: the same bytes, as pieces that hold the frames themselves.
    for fragment in (first, second):
        pieces = fragment.cluster_pieces()
        assert pieces.joined() == fragment.cluster() and len(pieces) == len(fragment.cluster())
        held = {id(part) for part in pieces.parts}
        assert all(id(frame.data) in held for frame in (*fragment.frames, *fragment.audio))


def test_a_fragment_whose_audio_stops_goes_without_waiting_longer_than_a_second() -> None:
    fragmenter = Fragmenter(target_ms=2000)
    fragmenter.expect_audio(True)
    fragmenter.add_audio(sound(1_000, 1)[0])  # then the audio stops
    video = frames(180, gop=60, start=1_000)  # keyframes at 1000, 2980, 4960
    out = [(frame.time_ms, f) for frame in video if (f := fragmenter.add(frame))]
    # each fragment waited for its audio until the video was AUDIO_WAIT_MS past its end
    waited = [
        min(f.time_ms for f in video if f.time_ms >= end + AUDIO_WAIT_MS) for end in (2_980, 4_960)
    ]
    assert [at for at, _ in out] == waited
    assert [len(f.audio) for _, f in out] == [1, 0]
    assert len(fragmenter.flush()) == 1  # the one in progress (none is waiting)


def test_audio_out_of_order_or_piling_up_is_dropped_and_counted() -> None:
    fragmenter = Fragmenter(target_ms=1000)
    for frame in sound(1_000, 3) + sound(1_010, 1):  # the last goes back in time
        fragmenter.add_audio(frame)
    assert fragmenter.dropped_audio == 1
    for frame in sound(2_000, MAX_HELD_AUDIO + 10):  # no video: bounded
        fragmenter.add_audio(frame)
    assert fragmenter.dropped_audio == 1 + 3 + 10
