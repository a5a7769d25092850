"""The Matroska stream Kinesis Video Streams takes, written as it goes.

    EBML header
    Segment (unknown size)
      Info        TimecodeScale 1 ms, SegmentUID, MuxingApp, WritingApp
      Tracks      one video track: CodecID, CodecPrivate (avcC), pixel size
      Cluster (unknown size), one per fragment:
        Timecode      the fragment's absolute time, ms since the Unix epoch
        SimpleBlock   one per frame: track 1, time relative to the cluster, key flag

``stream_header`` is written once per PutMedia connection; ``cluster`` once per
fragment (that is what a fragment's spool record holds). Every cluster starts with a
keyframe, frame times strictly increase, and a frame sits less than 32.768 s after its
cluster's time (the block's 16-bit relative timecode).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent import __version__
from edge_agent.errors import FormatError
from edge_agent.media.ebml import (
    binary,
    master,
    size_vint,
    string,
    uint,
    unknown_size_master,
)

EBML = 0x1A45DFA3
EBML_VERSION = 0x4286
EBML_READ_VERSION = 0x42F7
EBML_MAX_ID_LENGTH = 0x42F2
EBML_MAX_SIZE_LENGTH = 0x42F3
DOC_TYPE = 0x4282
DOC_TYPE_VERSION = 0x4287
DOC_TYPE_READ_VERSION = 0x4285
SEGMENT = 0x18538067
INFO = 0x1549A966
SEGMENT_UID = 0x73A4
TIMECODE_SCALE = 0x2AD7B1
MUXING_APP = 0x4D80
WRITING_APP = 0x5741
TRACKS = 0x1654AE6B
TRACK_ENTRY = 0xAE
TRACK_NUMBER = 0xD7
TRACK_UID = 0x73C5
TRACK_TYPE = 0x83
CODEC_ID = 0x86
CODEC_PRIVATE = 0x63A2
VIDEO = 0xE0
PIXEL_WIDTH = 0xB0
PIXEL_HEIGHT = 0xBA
DEFAULT_DURATION = 0x23E383
CLUSTER = 0x1F43B675
TAGS = 0x1254C367
TAG = 0x7373
TARGETS = 0x63C0
SIMPLE_TAG = 0x67C8
TAG_NAME = 0x45A3
TAG_STRING = 0x4487
TIMECODE = 0xE7
SIMPLE_BLOCK = 0xA3

#: Block times are in ms (TimecodeScale 1,000,000 ns), as the KVS producer SDKs write.
TIMECODE_SCALE_NS = 1_000_000
#: A block's time relative to its cluster is a signed 16-bit number of ms.
MAX_CLUSTER_SPAN_MS = 32_767
TRACK = 1
H264 = "V_MPEG4/ISO/AVC"
H265 = "V_MPEGH/ISO/HEVC"
_KEYFRAME = 0x80


@dataclass(frozen=True)
class VideoTrack:
    codec_id: str
    codec_private: bytes
    width: int
    height: int
    #: Nominal frame duration in ns, if the rate is known (players use it for the last frame).
    frame_duration_ns: int | None = None


@dataclass(frozen=True)
class Frame:
    """One encoded frame: AVCC data, absolute time in ms since the Unix epoch."""

    time_ms: int
    keyframe: bool
    data: bytes


def ebml_header() -> bytes:
    return master(
        EBML,
        uint(EBML_VERSION, 1),
        uint(EBML_READ_VERSION, 1),
        uint(EBML_MAX_ID_LENGTH, 4),
        uint(EBML_MAX_SIZE_LENGTH, 8),
        string(DOC_TYPE, "matroska"),
        uint(DOC_TYPE_VERSION, 2),
        uint(DOC_TYPE_READ_VERSION, 2),
    )


def stream_header(track: VideoTrack, *, segment_uid: bytes | None = None) -> bytes:
    """EBML header, the start of an unknown-size Segment, Info and Tracks."""
    video = [uint(PIXEL_WIDTH, track.width), uint(PIXEL_HEIGHT, track.height)]
    entry = [
        uint(TRACK_NUMBER, TRACK),
        uint(TRACK_UID, TRACK),
        uint(TRACK_TYPE, 1),
        string(CODEC_ID, track.codec_id),
        binary(CODEC_PRIVATE, track.codec_private),
    ]
    if track.frame_duration_ns:
        entry.append(uint(DEFAULT_DURATION, track.frame_duration_ns))
    entry.append(master(VIDEO, *video))
    app = f"edge-agent {__version__}"
    info = master(
        INFO,
        binary(SEGMENT_UID, segment_uid or os.urandom(16)),
        uint(TIMECODE_SCALE, TIMECODE_SCALE_NS),
        string(MUXING_APP, app),
        string(WRITING_APP, app),
    )
    return (
        ebml_header()
        + unknown_size_master(SEGMENT)
        + info
        + master(TRACKS, master(TRACK_ENTRY, *entry))
    )


#: The tag the producer SDKs write after each fragment: it tells the service the fragment
#: is complete now, instead of when the next Cluster begins (one fragment later).
END_OF_FRAGMENT = "AWS_KINESISVIDEO_END_OF_FRAGMENT"


def end_of_fragment() -> bytes:
    """A Tags element with the (empty) end-of-fragment tag, written after a Cluster."""
    return master(
        TAGS,
        master(
            TAG,
            master(TARGETS),
            master(SIMPLE_TAG, string(TAG_NAME, END_OF_FRAGMENT), string(TAG_STRING, "")),
        ),
    )


class FragmentError(FormatError):
    """Frames that cannot make a fragment (see ``cluster``)."""


def cluster(frames: Sequence[Frame]) -> bytes:
    """One fragment as an unknown-size Cluster: its Timecode is the first frame's time."""
    if not frames:
        raise FragmentError("a fragment needs at least one frame")
    if not frames[0].keyframe:
        raise FragmentError("a fragment must start with a keyframe")
    base = frames[0].time_ms
    parts = [unknown_size_master(CLUSTER), uint(TIMECODE, base)]
    last = base - 1
    for frame in frames:
        if frame.time_ms <= last:
            raise FragmentError(f"frame times must increase ({frame.time_ms} after {last})")
        relative = frame.time_ms - base
        if relative > MAX_CLUSTER_SPAN_MS:
            raise FragmentError(f"a fragment spans at most {MAX_CLUSTER_SPAN_MS} ms")
        last = frame.time_ms
        header = bytes((0x80 | TRACK,)) + relative.to_bytes(2, "big", signed=True)
        header += bytes((_KEYFRAME if frame.keyframe else 0,))
        parts += (
            SIMPLE_BLOCK.to_bytes(1, "big"),
            size_vint(len(header) + len(frame.data)),
            header,
            frame.data,
        )
    return b"".join(parts)
