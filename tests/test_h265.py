"""H.265 bitstreams against a real encoder: the hvcC record we build from x265's VPS,
SPS and PPS is the one FFmpeg's MP4 muxer wrote, the SPS tells the picture size (an odd
one too, through the conformance window), and a Matroska stream of our length-prefixed
frames behind our hvcC decodes with FFmpeg."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pytest

from edge_agent.errors import FormatError
from edge_agent.media import h265
from edge_agent.media.mkv import H265, Frame, VideoTrack, cluster, stream_header

FPS = 25
KEYINT = 10


@dataclass(frozen=True)
class HevcFrame:
    timestamp: int  # 90 kHz
    keyframe: bool
    units: tuple[bytes, ...]


@dataclass(frozen=True)
class HevcFile:
    record: bytes  # the hvcC FFmpeg wrote
    width: int
    height: int
    frames: list[HevcFrame]


def hevc_file(
    path: Path,
    size: tuple[int, int] = (320, 240),
    count: int = 25,
    slices: int = 1,
    pix_fmt: str = "yuv420p",
) -> Path:
    """An H.265 MP4 (hvcC extradata, an IRAP picture every KEYINT frames) made by x265."""
    width, height = size
    params = f"keyint={KEYINT}:min-keyint={KEYINT}:scenecut=0:bframes=0:slices={slices}"
    with (
        av.open(f"testsrc2=size={width}x{height}:rate={FPS}", format="lavfi") as source,
        av.open(str(path), "w") as out,
    ):
        stream = out.add_stream("libx265", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.options = {"x265-params": f"{params}:log-level=error"}
        for index, frame in enumerate(source.decode(video=0)):
            if index == count:
                break
            frame.pict_type = av.video.frame.PictureType.NONE
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def read_hevc(path: Path) -> HevcFile:
    """The frames of an H.265 MP4, with the VPS, SPS and PPS in front of each keyframe
    (as a camera sends them in-band)."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        record = bytes(stream.codec_context.extradata or b"")
        sets = h265.parameter_sets_from_hvcc_record(record)
        assert stream.time_base is not None
        for packet in container.demux(stream):
            if not packet.size or packet.pts is None:
                continue
            units = tuple(bytes(unit) for unit in h265.split_length_prefixed(bytes(packet)))
            if packet.is_keyframe:
                units = (sets.vps, sets.sps, sets.pps, *units)
            timestamp = int(packet.pts * stream.time_base * 90_000)
            frames.append(HevcFrame(timestamp, bool(packet.is_keyframe), units))
        width, height = stream.codec_context.width, stream.codec_context.height
    return HevcFile(record, width, height, frames)


@pytest.fixture(
    scope="module",
    params=[((320, 240), "yuv420p"), ((322, 242), "yuv420p"), ((322, 242), "yuv422p10le")],
    ids=["320x240", "322x242", "322x242-422-10bit"],
)
def encoded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> HevcFile:
    size: tuple[int, int] = request.param[0]
    path = tmp_path_factory.mktemp("h265") / "in.mp4"
    return read_hevc(hevc_file(path, size, pix_fmt=request.param[1]))


def without_sei_arrays(record: bytes) -> bytes:
    """An hvcC record with only its VPS, SPS and PPS arrays (FFmpeg also copies x265's
    prefix SEI, its settings as text, from the extradata into one)."""
    arrays = []
    position = h265.HVCC_HEADER_SIZE
    for _ in range(record[position - 1]):
        start = position
        count = int.from_bytes(record[position + 1 : position + 3], "big")
        position += 3
        for _ in range(count):
            position += 2 + int.from_bytes(record[position : position + 2], "big")
        if record[start] & 0x3F in (h265.NAL_VPS, h265.NAL_SPS, h265.NAL_PPS):
            arrays.append(record[start:position])
    header = record[: h265.HVCC_HEADER_SIZE - 1] + bytes((len(arrays),))
    return header + b"".join(arrays)


def test_the_hvcc_record_is_the_one_ffmpeg_writes(encoded: HevcFile) -> None:
    sets = h265.parameter_sets(list(encoded.frames[0].units))
    assert sets is not None
    assert sets.hvcc_record() == without_sei_arrays(encoded.record)
    assert h265.parameter_sets_from_hvcc_record(sets.hvcc_record()) == sets


def test_the_sps_tells_the_picture_size_after_its_conformance_window(
    encoded: HevcFile,
) -> None:
    sets = h265.parameter_sets_from_hvcc_record(encoded.record)
    assert b"\x00\x00\x03" in sets.sps  # the emulation prevention bytes were removed
    assert h265.sps_dimensions(sets.sps) == (encoded.width, encoded.height)


def test_keyframes_are_the_irap_pictures(encoded: HevcFile) -> None:
    for frame in encoded.frames:
        slices = [h265.nal_type(unit) for unit in frame.units if h265.is_slice(h265.nal_type(unit))]
        assert slices and all(h265.is_keyframe(kind) == frame.keyframe for kind in slices)
    assert sum(frame.keyframe for frame in encoded.frames) == 3  # frames 0, 10, 20


def test_annexb_and_length_prefixed_split_to_the_same_units(encoded: HevcFile) -> None:
    units = [unit for frame in encoded.frames[:3] for unit in frame.units]
    aud = bytes((h265.NAL_AUD << 1, 1, 0x50))
    annexb = b"".join(b"\x00\x00\x00\x01" + unit for unit in [aud, *units])
    assert h265.is_annexb(annexb)
    split = h265.split_annexb(annexb)
    assert [bytes(unit) for unit in split] == [aud, *units]
    prefixed = h265.to_length_prefixed(split)  # the delimiter is dropped
    assert prefixed == b"".join(len(unit).to_bytes(4, "big") + unit for unit in units)
    assert [bytes(unit) for unit in h265.split_length_prefixed(prefixed)] == units
    assert h265.parameter_sets(split[:3]) is None  # the PPS is not among them


def test_a_matroska_stream_of_our_frames_behind_our_hvcc_decodes(
    encoded: HevcFile, tmp_path: Path
) -> None:
    sets = h265.parameter_sets(list(encoded.frames[0].units))
    assert sets is not None
    width, height = h265.sps_dimensions(sets.sps)
    track = VideoTrack(H265, sets.hvcc_record(), width, height)
    frames = [
        Frame(
            1_000 + frame.timestamp // 90,
            frame.keyframe,
            h265.to_length_prefixed(list(frame.units)),
        )
        for frame in encoded.frames
    ]
    path = tmp_path / "out.mkv"
    path.write_bytes(stream_header(track) + cluster(frames))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "hevc"
        decoded = [(frame.width, frame.height) for frame in container.decode(stream)]
    assert decoded == [(encoded.width, encoded.height)] * len(encoded.frames)


def test_later_slice_segments_continue_their_picture(tmp_path: Path) -> None:
    encoded = read_hevc(hevc_file(tmp_path / "slices.mp4", count=3, slices=2))
    for frame in encoded.frames:
        slices = [unit for unit in frame.units if h265.is_slice(h265.nal_type(unit))]
        assert len(slices) == 2
        assert not h265.continues_picture(list(frame.units))
        assert h265.continues_picture([slices[1]])
    assert not h265.continues_picture([encoded.frames[0].units[0]])  # a VPS: no slice


def test_malformed_records_and_parameter_sets_raise_format_errors(encoded: HevcFile) -> None:
    sets = h265.parameter_sets_from_hvcc_record(encoded.record)
    record = sets.hvcc_record()
    with pytest.raises(FormatError):
        h265.parameter_sets_from_hvcc_record(b"\x00" + record[1:])  # version 0
    with pytest.raises(FormatError):
        h265.parameter_sets_from_hvcc_record(record[:-3])  # the PPS cut short
    with pytest.raises(FormatError):
        h265.parameter_sets_from_hvcc_record(record[: h265.HVCC_HEADER_SIZE - 1] + b"\x00")
    with pytest.raises(FormatError):
        h265.sps_dimensions(sets.pps)  # not an SPS
    with pytest.raises(FormatError):
        h265.sps_dimensions(sets.sps[:16])  # ends inside the fields we read
    with pytest.raises(FormatError):
        h265.split_length_prefixed(b"\x00\x00\x00\x09\x40\x01")
