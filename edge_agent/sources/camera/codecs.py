"""The video codecs a camera passes through as they come (no decoding): H.264 and H.265,
each with its NAL unit handling, its decoder configuration record and its Matroska
codec id, by the name PyAV gives the stream's codec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from edge_agent.media import h264, h265
from edge_agent.media.mkv import H264, H265
from edge_agent.sources.camera.rtp_h264 import H264Depacketizer
from edge_agent.sources.camera.rtp_h265 import H265Depacketizer

ParameterSets = h264.ParameterSets | h265.ParameterSets


@dataclass(frozen=True)
class PassthroughCodec:
    codec_id: str
    parameter_sets: Callable[[list[h264.NalUnit]], ParameterSets | None]
    from_record: Callable[[bytes], ParameterSets]
    continues_picture: Callable[[list[h264.NalUnit]], bool]
    length_prefixed: Callable[[list[h264.NalUnit]], bytes]


#: By PyAV's codec name.
PASSTHROUGH: dict[str, PassthroughCodec] = {
    "h264": PassthroughCodec(
        H264,
        h264.parameter_sets,
        h264.parameter_sets_from_avcc_record,
        h264.continues_picture,
        h264.to_avcc,
    ),
    "hevc": PassthroughCodec(
        H265,
        h265.parameter_sets,
        h265.parameter_sets_from_hvcc_record,
        h265.continues_picture,
        h265.to_length_prefixed,
    ),
}


#: The RTP encodings (as the SDP names them) the built-in RTSP client passes through.
RTP_ENCODINGS = ("H264", "H265")
Depacketizer = H264Depacketizer | H265Depacketizer


def depacketizer_for(encoding: str) -> Depacketizer:
    return H265Depacketizer() if encoding == "H265" else H264Depacketizer()


def sets_seen(depacketizer: Depacketizer) -> ParameterSets | None:
    """The parameter sets a depacketizer saw in the stream, once it has all of them."""
    if isinstance(depacketizer, H265Depacketizer):
        vps, sps, pps = depacketizer.vps, depacketizer.sps, depacketizer.pps
        return h265.ParameterSets(vps, sps, pps) if vps and sps and pps else None
    sps, pps = depacketizer.sps, depacketizer.pps
    return h264.ParameterSets(sps, pps) if sps and pps else None


def picture_size(sets: ParameterSets) -> tuple[int, int]:
    """Width and height from the SPS (FormatError if it cannot be read)."""
    if isinstance(sets, h265.ParameterSets):
        return h265.sps_dimensions(sets.sps)
    return h264.sps_dimensions(sets.sps)


def track_of(sets: ParameterSets) -> tuple[str, bytes]:
    """The Matroska codec id and codec private data of these parameter sets."""
    if isinstance(sets, h265.ParameterSets):
        return H265, sets.hvcc_record()
    return H264, sets.avcc_record()


@dataclass
class Picture:
    """The packets of one picture, gathered before it becomes a frame."""

    pts: int | None
    time_base: Fraction | None
    keyframe: bool
    units: list[h264.NalUnit]
    sets: ParameterSets
