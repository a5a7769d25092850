"""The streaming Matroska reader, on what our writer produces and on what FFmpeg's
muxer produces (an independent writer), fed in chunks of every size."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import av
import pytest

from edge_agent.kvs_local.mkv_reader import (
    Block,
    ClusterEnd,
    ClusterStart,
    Header,
    MkvError,
    MkvReader,
    Tags,
    TrackEntry,
    Tracks,
)
from edge_agent.media import mkv
from edge_agent.media.ebml import binary, element, master, string, uint
from edge_agent.media.mkv import (
    AAC,
    H264,
    AudioTrack,
    Frame,
    VideoTrack,
    cluster,
    end_of_fragment,
    stream_header,
)
from tests.test_mkv import FPS, FRAMES, encoded_frames, write_mkv


def read_all(data: bytes, chunk_sizes: list[int]) -> list[object]:
    reader = MkvReader()
    events: list[object] = []
    position = 0
    for size in chunk_sizes:
        events += reader.feed(data[position : position + size])
        position += size
    events += reader.feed(data[position:])
    return events + reader.end()


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_our_stream_reads_back_frame_for_frame(tmp_path: Path, chunk: int) -> None:
    frames, _ = write_mkv(tmp_path / "s.mkv")
    data = (tmp_path / "s.mkv").read_bytes()
    events = read_all(data, [chunk] * (len(data) // chunk))
    (tracks,) = [e for e in events if isinstance(e, Tracks)]
    assert tracks.entries[0].codec_id == H264 and tracks.entries[0].number == 1
    blocks = [e for e in events if isinstance(e, Block)]
    assert [(b.timecode, b.keyframe, b.data) for b in blocks] == [
        (f.time_ms, f.keyframe, f.data) for f in frames
    ]
    assert events[0] == Header("matroska")
    kinds = [type(e).__name__ for e in events if not isinstance(e, Block | Tracks | Header)]
    assert kinds == ["ClusterStart", "ClusterEnd"] * (FRAMES // FPS)


def test_random_chunking_gives_the_same_events(tmp_path: Path) -> None:
    write_mkv(tmp_path / "s.mkv")
    data = (tmp_path / "s.mkv").read_bytes()
    whole = read_all(data, [])
    rng = random.Random(3)
    sizes = [rng.randrange(1, 3000) for _ in range(len(data) // 1500)]
    assert read_all(data, sizes) == whole


def test_ffmpegs_own_matroska_reads_too(tmp_path: Path) -> None:
    """FFmpeg writes sized clusters and other elements; the reader takes them as well."""
    sets, frames = encoded_frames()
    path = tmp_path / "ffmpeg.mkv"
    mine = stream_header(VideoTrack(H264, sets.avcc_record(), 320, 240)) + cluster(frames[:FPS])
    (tmp_path / "ours.mkv").write_bytes(mine)
    with av.open(str(tmp_path / "ours.mkv")) as source, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.size:
                packet.stream = stream
                out.mux(packet)
    events = read_all(path.read_bytes(), [])
    blocks = [e for e in events if isinstance(e, Block)]
    assert [b.data for b in blocks] == [f.data for f in frames[:FPS]]
    assert blocks[0].keyframe
    assert any(isinstance(e, ClusterStart) for e in events)
    assert any(isinstance(e, ClusterEnd) for e in events)


def test_broken_streams_raise() -> None:
    key = Frame(1000, True, b"\x00\x00\x00\x02\x65\x88")
    header = stream_header(VideoTrack(H264, b"\x01\x42\x00\x1f\xff\xe1", 16, 16))
    with pytest.raises(MkvError, match="ends inside"):
        read_all(header + cluster([key])[:-3], [])
    with pytest.raises(MkvError):
        read_all(b"\x1a\x45\xdf\xa3\x00" + b"\xff" * 20, [])


def test_the_end_of_fragment_tag_closes_a_cluster_at_once() -> None:
    """Without it an unknown-size cluster ends only when the next one begins."""
    key = Frame(1000, True, b"\x00\x00\x00\x02\x65\x88")
    header = stream_header(VideoTrack(H264, b"\x01\x42\x00\x1f\xff\xe1", 16, 16))
    reader = MkvReader()
    without = reader.feed(header + cluster([key]))
    assert not any(isinstance(e, ClusterEnd) for e in without)
    assert reader.feed(end_of_fragment()) == [
        ClusterEnd(),
        Tags((("AWS_KINESISVIDEO_END_OF_FRAGMENT", ""),)),
    ]


def test_an_audio_track_entry_and_its_blocks_read_back() -> None:
    """SamplingFrequency as our writer puts it (an 8-byte float) and as a 4-byte one."""
    avcc = b"\x01\x42\x00\x1f\xff\xe1"
    header = stream_header(VideoTrack(H264, avcc, 16, 16), AudioTrack(AAC, b"\x14\x08", 16000, 1))
    frames = [
        Frame(1000, True, b"\x00\x00\x00\x02\x65\x88"),
        Frame(1000, True, b"\x21\x10", mkv.AUDIO_TRACK),
        Frame(1064, True, b"\x21\x11", mkv.AUDIO_TRACK),
    ]
    events = read_all(header + cluster(frames), [5] * 100)
    (tracks,) = [e for e in events if isinstance(e, Tracks)]
    assert tracks.entries == (
        TrackEntry(1, H264, avcc, mkv.TRACK_TYPE_VIDEO, 16, 16),
        TrackEntry(2, AAC, b"\x14\x08", mkv.TRACK_TYPE_AUDIO, 0, 0, 16000.0, 1),
    )
    blocks = [(b.track, b.timecode, b.data) for b in events if isinstance(b, Block)]
    assert blocks == [(f.track, f.time_ms, f.data) for f in frames]
    for sampling, expected in [(struct.pack(">f", 44100.0), 44100.0), (b"", 0.0)]:
        (event,) = MkvReader().feed(_audio_tracks(sampling))
        assert isinstance(event, Tracks)
        assert (event.entries[0].sampling_hz, event.entries[0].channels) == (expected, 2)
    with pytest.raises(MkvError, match="float"):
        MkvReader().feed(_audio_tracks(bytes(5)))


def _audio_tracks(sampling_frequency: bytes) -> bytes:
    """A Tracks element of one stereo AAC entry, its SamplingFrequency these bytes."""
    return master(
        mkv.TRACKS,
        master(
            mkv.TRACK_ENTRY,
            uint(mkv.TRACK_NUMBER, 2),
            uint(mkv.TRACK_TYPE, mkv.TRACK_TYPE_AUDIO),
            string(mkv.CODEC_ID, AAC),
            binary(mkv.CODEC_PRIVATE, b"\x12\x10"),
            master(
                mkv.AUDIO,
                element(mkv.SAMPLING_FREQUENCY, sampling_frequency),
                uint(mkv.CHANNELS, 2),
            ),
        ),
    )
