"""The Matroska stream Kinesis Video Streams takes, written as it goes.

    EBML header
    Segment (unknown size)
      Info        TimecodeScale 1 ms, SegmentUID, MuxingApp, WritingApp
      Tracks      track 1, video: CodecID, CodecPrivate (avcC or hvcC), pixel size;
                  track 2, audio (if the camera's audio is taken): CodecID, CodecPrivate
                  (AAC: the AudioSpecificConfig; G.711: a WAVEFORMATEX), sampling rate,
                  channels
      Cluster (unknown size), one per fragment:
        Timecode      the fragment's absolute time, ms since the Unix epoch
        SimpleBlock   one per frame: track, time relative to the cluster, key flag

``stream_header`` is written once per PutMedia connection; ``cluster`` once per
fragment (that is what a fragment's spool record holds). Every cluster starts with a
video keyframe and a frame sits less than 32.768 s after its cluster's time (the
block's 16-bit relative timecode, never negative). The blocks of a cluster are in time
order across its tracks (equal times allowed, video first), and each track's own times
strictly increase. That is the order the Kinesis Video producer SDK writes: its frame
order coordinator interleaves the tracks by time, its content view refuses a frame
earlier than the one before it on any track, and its generator refuses a frame earlier
than its cluster (docs/ARCHITECTURE.md, "Audio").
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple

from edge_agent import __version__
from edge_agent.errors import FormatError
from edge_agent.media.ebml import (
    binary,
    element,
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
AUDIO = 0xE1
SAMPLING_FREQUENCY = 0xB5
CHANNELS = 0x9F
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
VIDEO_TRACK = 1
AUDIO_TRACK = 2
#: Matroska's TrackType values.
TRACK_TYPE_VIDEO = 1
TRACK_TYPE_AUDIO = 2
H264 = "V_MPEG4/ISO/AVC"
H265 = "V_MPEGH/ISO/HEVC"
#: The audio codec ids the Kinesis Video producer SDK writes (G.711 A-law and mu-law
#: alike: the WAVEFORMATEX in the codec private data tells them apart).
AAC = "A_AAC"
G711 = "A_MS/ACM"
_KEYFRAME = 0x80
_TIME = itemgetter(0)  # a Frame's time_ms


@dataclass(frozen=True)
class VideoTrack:
    codec_id: str
    codec_private: bytes
    width: int
    height: int
    #: Nominal frame duration in ns, if the rate is known (players use it for the last frame).
    frame_duration_ns: int | None = None


@dataclass(frozen=True)
class AudioTrack:
    codec_id: str
    codec_private: bytes
    sampling_hz: int
    channels: int


class Frame(NamedTuple):
    """One encoded frame (video: length-prefixed NAL units; audio: one AAC access unit
    or G.711 samples) and its time in ms (absolute: since the Unix epoch). A named
    tuple: every frame of every camera is one, built in a few hundred ns."""

    time_ms: int
    keyframe: bool
    data: bytes
    track: int = VIDEO_TRACK


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


def tracks(video: VideoTrack, audio: AudioTrack | None = None) -> bytes:
    """The Tracks element: the video as track 1, the audio (if any) as track 2."""
    entry = [
        uint(TRACK_NUMBER, VIDEO_TRACK),
        uint(TRACK_UID, VIDEO_TRACK),
        uint(TRACK_TYPE, TRACK_TYPE_VIDEO),
        string(CODEC_ID, video.codec_id),
        binary(CODEC_PRIVATE, video.codec_private),
    ]
    if video.frame_duration_ns:
        entry.append(uint(DEFAULT_DURATION, video.frame_duration_ns))
    entry.append(master(VIDEO, uint(PIXEL_WIDTH, video.width), uint(PIXEL_HEIGHT, video.height)))
    entries = [master(TRACK_ENTRY, *entry)]
    if audio is not None:
        entries.append(
            master(
                TRACK_ENTRY,
                uint(TRACK_NUMBER, AUDIO_TRACK),
                uint(TRACK_UID, AUDIO_TRACK),
                uint(TRACK_TYPE, TRACK_TYPE_AUDIO),
                string(CODEC_ID, audio.codec_id),
                binary(CODEC_PRIVATE, audio.codec_private),
                master(
                    AUDIO,
                    element(SAMPLING_FREQUENCY, struct.pack(">d", float(audio.sampling_hz))),
                    uint(CHANNELS, audio.channels),
                ),
            )
        )
    return master(TRACKS, *entries)


def stream_header(
    video: VideoTrack, audio: AudioTrack | None = None, *, segment_uid: bytes | None = None
) -> bytes:
    """EBML header, the start of an unknown-size Segment, Info and Tracks."""
    app = f"edge-agent {__version__}"
    info = master(
        INFO,
        binary(SEGMENT_UID, segment_uid or os.urandom(16)),
        uint(TIMECODE_SCALE, TIMECODE_SCALE_NS),
        string(MUXING_APP, app),
        string(WRITING_APP, app),
    )
    return ebml_header() + unknown_size_master(SEGMENT) + info + tracks(video, audio)


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


def interleaved(video: Sequence[Frame], audio: Sequence[Frame]) -> list[Frame]:
    """Two tracks' frames (each in time order) as one list in time order, video first
    at equal times (a stable sort of two runs: a merge, in C)."""
    return sorted([*video, *audio], key=_TIME)


def cluster(frames: Sequence[Frame]) -> bytes:
    """One fragment as an unknown-size Cluster: its Timecode is the first frame's time,
    which must be a video keyframe; the frames are in the order described above."""
    return b"".join(cluster_parts(frames))


def cluster_parts(frames: Sequence[Frame]) -> list[bytes]:
    """``cluster`` as the pieces it is joined from: its headers, and each frame's block
    header and the frame's own bytes (not copied)."""
    if not frames:
        raise FragmentError("a fragment needs at least one frame")
    if not frames[0].keyframe or frames[0].track != VIDEO_TRACK:
        raise FragmentError("a fragment must start with a video keyframe")
    base = frames[0].time_ms
    parts = [unknown_size_master(CLUSTER), uint(TIMECODE, base)]
    previous = base
    last_of_track: dict[int, int] = {}
    for frame in frames:
        at, track = frame.time_ms, frame.track
        if at < previous:
            raise FragmentError(f"frames must be in time order ({at} after {previous})")
        if last_of_track.get(track, at - 1) >= at:
            raise FragmentError(
                f"track {track}'s times must increase ({at} after {last_of_track[track]})"
            )
        relative = at - base
        if relative > MAX_CLUSTER_SPAN_MS:
            raise FragmentError(f"a fragment spans at most {MAX_CLUSTER_SPAN_MS} ms")
        previous = last_of_track[track] = at
        header = bytes((0x80 | track,)) + relative.to_bytes(2, "big", signed=True)
        header += bytes((_KEYFRAME if frame.keyframe else 0,))
        parts += (
            SIMPLE_BLOCK.to_bytes(1, "big"),
            size_vint(len(header) + len(frame.data)),
            header,
            frame.data,
        )
    return parts
