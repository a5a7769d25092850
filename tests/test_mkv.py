"""H.264 to Kinesis Video's MKV, checked with independent readers: PyAV (FFmpeg's
demuxer and decoder), ffprobe and mkvinfo (mkvtoolnix)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import pytest

from edge_agent.media import audio, h264
from edge_agent.media.ebml import size_vint
from edge_agent.media.mkv import (
    AUDIO_TRACK,
    G711,
    H264,
    AudioTrack,
    FragmentError,
    Frame,
    VideoTrack,
    cluster,
    interleaved,
    stream_header,
)
from tests.video_checks import ffprobe_video, mkvinfo_lines

FPS = 30
FRAMES = 90  # three fragments of one second
START_MS = 1_795_000_000_000


def encoded_frames(count: int = FRAMES) -> tuple[h264.ParameterSets, list[Frame]]:
    """A test pattern encoded with libx264 as a camera would (one IDR per second, no
    B-frames), packets in Annex-B, turned into AVCC frames with absolute times."""
    source = av.open(f"testsrc2=size=320x240:rate={FPS}", format="lavfi")
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.time_base = Fraction(1, FPS)
    encoder.framerate = Fraction(FPS)
    encoder.gop_size = FPS
    encoder.max_b_frames = 0
    encoder.options = {
        "tune": "zerolatency",
        "preset": "ultrafast",
        "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0",
    }
    packets = []
    for index, frame in enumerate(source.decode(video=0)):
        if index == count:
            break
        frame.pict_type = av.video.frame.PictureType.NONE
        frame.pts = index
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    source.close()
    frames, sets = [], None
    for packet in packets:
        data = bytes(packet)
        assert h264.is_annexb(data)
        units = h264.split_annexb(data)
        sets = sets or h264.parameter_sets(units)
        assert packet.pts is not None
        time_ms = START_MS + packet.pts * 1000 // FPS
        frames.append(Frame(time_ms, packet.is_keyframe, h264.to_avcc(units)))
    assert sets is not None
    return sets, frames


def write_mkv(path: Path) -> tuple[list[Frame], list[list[Frame]]]:
    sets, frames = encoded_frames()
    fragments: list[list[Frame]] = []
    for frame in frames:
        if frame.keyframe:
            fragments.append([])
        fragments[-1].append(frame)
    track = VideoTrack(H264, sets.avcc_record(), 320, 240, frame_duration_ns=10**9 // FPS)
    path.write_bytes(stream_header(track) + b"".join(cluster(f) for f in fragments))
    return frames, fragments


def test_pyav_reads_every_frame_back_unchanged_with_keyframes_at_cluster_starts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stream.mkv"
    frames, fragments = write_mkv(path)
    assert [len(f) for f in fragments] == [FPS] * 3
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 320, 240)
        packets = [p for p in container.demux(stream) if p.size]
        assert [bytes(p) for p in packets] == [f.data for f in frames]
        assert [p.is_keyframe for p in packets] == [f.keyframe for f in frames]
        times_ms = [int((p.pts or 0) * p.time_base * 1000) for p in packets]
        assert all(p.pts is not None for p in packets)
        assert times_ms == [f.time_ms for f in frames]  # absolute ms, cluster + block
    with av.open(str(path)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == FRAMES


def test_ffprobe_counts_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "stream.mkv"
    write_mkv(path)
    stream = ffprobe_video(path)
    assert (stream["codec_name"], stream["width"], stream["height"]) == ("h264", 320, 240)
    assert int(stream["nb_read_frames"]) == FRAMES


def test_mkvinfo_sees_three_clusters_of_keyframe_led_blocks(tmp_path: Path) -> None:
    path = tmp_path / "stream.mkv"
    write_mkv(path)
    lines = mkvinfo_lines(path)
    assert any("Codec ID: V_MPEG4/ISO/AVC" in line for line in lines)
    assert lines.count("|+ Cluster") == 3
    blocks = [line for line in lines if "+ Simple block:" in line]
    assert len(blocks) == FRAMES
    keyframes = [i for i, line in enumerate(blocks) if "Simple block: key," in line]
    assert keyframes == list(range(0, FRAMES, FPS))  # each cluster's first block, only


def test_a_fragment_must_start_with_a_keyframe_and_keep_time_moving() -> None:
    key = Frame(START_MS, True, b"\x00\x00\x00\x01\x65")
    with pytest.raises(FragmentError, match="keyframe"):
        cluster([Frame(START_MS, False, b"x")])
    with pytest.raises(FragmentError, match="increase"):
        cluster([key, Frame(START_MS, False, b"x")])
    with pytest.raises(FragmentError, match="spans at most"):
        cluster([key, Frame(START_MS + 32_768, False, b"x")])
    with pytest.raises(FragmentError, match="at least one"):
        cluster([])


def test_ebml_sizes_take_the_shortest_form_and_never_all_ones() -> None:
    assert size_vint(0) == b"\x80"
    assert size_vint(126) == b"\xfe"
    assert size_vint(127) == b"\x40\x7f"  # 0xff would mean "unknown size"
    assert size_vint(16382) == b"\x7f\xfe"
    assert size_vint(16383) == b"\x20\x3f\xff"


def test_annexb_with_three_and_four_byte_start_codes_becomes_avcc() -> None:
    sps, pps, idr, aud = b"\x67\x42\x00\x1f\xaa", b"\x68\xce\x3c\x80", b"\x65\x88\x84", b"\x09\xf0"
    annexb = b"\x00\x00\x00\x01" + aud + b"\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps
    annexb += b"\x00\x00\x01" + idr
    units = h264.split_annexb(annexb)
    assert units == [aud, sps, pps, idr]
    avcc = h264.to_avcc(units)
    assert h264.split_avcc(avcc) == [sps, pps, idr]  # the delimiter is dropped
    sets = h264.parameter_sets(units)
    assert sets == h264.ParameterSets(sps, pps)
    assert h264.parameter_sets_from_avcc_record(sets.avcc_record()) == sets
    with pytest.raises(ValueError):
        h264.split_avcc(b"\x00\x00\x00\x09\x65")


def test_the_later_slices_of_a_picture_are_told_from_a_new_picture() -> None:
    """libx264 with two slices per picture: the second slice (and SPS/PPS repeated in
    front of it, as some RTSP servers send) continues the picture; the first does not."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.time_base = Fraction(1, FPS)
    encoder.options = {"preset": "ultrafast", "x264-params": "slices=2"}
    frame = av.VideoFrame(320, 240, "yuv420p")
    units = [
        u for p in encoder.encode(frame) + encoder.encode(None) for u in h264.split_annexb(bytes(p))
    ]
    slices = [u for u in units if h264.nal_type(u) in (1, h264.NAL_IDR)]
    sets = [u for u in units if h264.nal_type(u) in (h264.NAL_SPS, h264.NAL_PPS)]
    assert len(slices) == 2
    assert not h264.continues_picture(units)
    assert h264.continues_picture(sets + slices[1:])
    assert not h264.continues_picture(sets)  # no slice: nothing to continue


def test_two_tracks_interleave_by_time_with_video_first_and_each_track_increasing() -> None:
    key = Frame(START_MS, True, b"\x00\x00\x00\x01\x65")
    sound = [Frame(START_MS + at, True, b"a", AUDIO_TRACK) for at in (0, 21, 42)]
    video = [key, Frame(START_MS + 33, False, b"\x00\x00\x00\x01\x41")]
    merged = interleaved(video, sound)
    assert [(f.track, f.time_ms - START_MS) for f in merged] == [
        (1, 0), (2, 0), (2, 21), (1, 33), (2, 42),
    ]  # fmt: skip
    cluster(merged)  # equal times across tracks are fine
    with pytest.raises(FragmentError, match="video keyframe"):
        cluster([sound[0], key])
    with pytest.raises(FragmentError, match="time order"):
        cluster([key, sound[1], sound[0]])
    with pytest.raises(FragmentError, match="track 2's times must increase"):
        cluster([key, sound[0], sound[0]])


def test_an_audio_track_is_described_as_the_producer_sdk_writes_it(tmp_path: Path) -> None:
    """Track 2, type 2, A_MS/ACM with its WAVEFORMATEX, and an Audio element: FFmpeg reads
    it as G.711, at its rate and channels, and decodes every block."""
    private = audio.g711_codec_private(audio.WAVE_FORMAT_MULAW, 8000, 1)
    sets, pictures = encoded_frames(1)
    video_track = VideoTrack(H264, sets.avcc_record(), 320, 240)
    sound = AudioTrack(G711, private, 8000, 1)
    samples = [Frame(START_MS + 20 * i, True, bytes(160), AUDIO_TRACK) for i in range(5)]
    path = tmp_path / "av.mkv"
    path.write_bytes(stream_header(video_track, sound) + cluster(interleaved(pictures, samples)))
    with av.open(str(path)) as container:
        (stream,) = container.streams.audio
        assert (stream.codec_context.name, stream.rate, stream.channels) == ("pcm_mulaw", 8000, 1)
        decoded = sum(frame.samples for frame in container.decode(audio=0))
    assert decoded == 5 * 160
