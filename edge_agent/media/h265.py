"""H.265 (HEVC) bitstreams, the counterpart of ``h264``: Annex-B or length-prefixed NAL
units in, 4-byte length-prefixed units out (what Matroska's ``V_MPEGH/ISO/HEVC`` and
Kinesis Video Streams take), and the parameter sets (VPS, SPS, PPS) to the
HEVCDecoderConfigurationRecord ("hvcC", ISO/IEC 14496-15 8.3.3.1) that goes into the
track's CodecPrivate. Bytes that are not what they should be raise ``FormatError``.

An H.265 NAL unit begins with a 2-byte header: F(1) type(6) LayerId(6) TID(3). Types
0-31 are slices (VCL), 16-21 of them pictures a decoder can start at (IRAP: BLA, IDR,
CRA); 32-34 are the VPS, SPS and PPS.

The Annex-B splitter and the emulation-prevention remover do not depend on the codec
and are ``h264``'s, named here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.errors import FormatError
from edge_agent.media.h264 import NalUnit, RbspBits, is_annexb, split_annexb, unescape_rbsp
from edge_agent.media.h264 import split_avcc as split_length_prefixed

__all__ = [
    "HVCC_HEADER_SIZE",
    "LENGTH_SIZE",
    "NAL_AUD",
    "NAL_EOB",
    "NAL_EOS",
    "NAL_FD",
    "NAL_IRAP_FIRST",
    "NAL_IRAP_LAST",
    "NAL_PPS",
    "NAL_SEI_PREFIX",
    "NAL_SEI_SUFFIX",
    "NAL_SPS",
    "NAL_VCL_LAST",
    "NAL_VPS",
    "NalUnit",
    "ParameterSets",
    "continues_picture",
    "is_annexb",
    "is_keyframe",
    "is_slice",
    "nal_type",
    "parameter_sets",
    "parameter_sets_from_hvcc_record",
    "split_annexb",
    "split_length_prefixed",
    "sps_dimensions",
    "to_length_prefixed",
    "unescape_rbsp",
]

NAL_IRAP_FIRST = 16  # BLA_W_LP
NAL_IRAP_LAST = 21  # CRA_NUT (22, 23 are reserved IRAP types)
NAL_VCL_LAST = 31
NAL_VPS = 32
NAL_SPS = 33
NAL_PPS = 34
NAL_AUD = 35
NAL_EOS = 36
NAL_EOB = 37
NAL_FD = 38
NAL_SEI_PREFIX = 39
NAL_SEI_SUFFIX = 40

#: The hvcC record's fixed part, before its arrays of NAL units.
HVCC_HEADER_SIZE = 23
#: 4-byte NAL lengths (lengthSizeMinusOne = 3), the same as our AVCC.
LENGTH_SIZE = 4
#: The general profile_tier_level: profile space/tier/idc (1 byte), compatibility flags
#: (4), constraint flags (6), level (1) -- the same 12 bytes, in the same order, in hvcC.
_GENERAL_PTL_SIZE = 12


def nal_type(unit: NalUnit) -> int:
    return (unit[0] >> 1) & 0x3F


def is_slice(kind: int) -> bool:
    return kind <= NAL_VCL_LAST


def is_keyframe(kind: int) -> bool:
    """An IRAP picture (BLA, IDR, CRA): a decoder can begin there."""
    return NAL_IRAP_FIRST <= kind <= NAL_IRAP_LAST


def continues_picture(units: list[NalUnit]) -> bool:
    """True if these NAL units carry the later slice segments of a picture begun in an
    earlier packet: the first slice's first_slice_segment_in_pic_flag (the first bit
    after the 2-byte NAL header) is 0."""
    for unit in units:
        if is_slice(nal_type(unit)):
            return len(unit) > 2 and not unit[2] & 0x80
    return False


def to_length_prefixed(units: list[NalUnit]) -> bytes:
    """NAL units each behind its 4-byte big-endian length, in one copy; access unit
    delimiters are dropped."""
    parts: list[NalUnit] = []
    for unit in units:
        if nal_type(unit) != NAL_AUD:
            parts.append(len(unit).to_bytes(LENGTH_SIZE, "big"))
            parts.append(unit)
    return b"".join(parts)


@dataclass(frozen=True)
class ParameterSets:
    vps: bytes
    sps: bytes
    pps: bytes

    def hvcc_record(self) -> bytes:
        """The HEVCDecoderConfigurationRecord for one VPS, SPS and PPS, with 4-byte NAL
        lengths. Profile, tier, level, chroma format and bit depths come from the SPS.
        min_spatial_segmentation_idc and parallelismType are written as 0 ("unknown",
        as FFmpeg writes them for streams without VUI bitstream restrictions), and so
        are avgFrameRate and constantFrameRate. array_completeness is 0: the sets may
        come again in-band, as cameras send them before each keyframe."""
        info = _sps_info(self.sps)
        layers = info.max_sub_layers << 3 | info.temporal_id_nesting << 2 | (LENGTH_SIZE - 1)
        header = (
            b"\x01"
            + info.general_ptl
            + b"\xf0\x00"  # reserved 1111, min_spatial_segmentation_idc 0
            + b"\xfc"  # reserved 111111, parallelismType 0
            + bytes((0xFC | info.chroma_format, 0xF8 | info.bit_depth_luma - 8))
            + bytes((0xF8 | info.bit_depth_chroma - 8,))
            + b"\x00\x00"  # avgFrameRate
            + bytes((layers,))  # constantFrameRate 0 in the top 2 bits
        )
        arrays = [bytes((3,))]
        for kind, unit in ((NAL_VPS, self.vps), (NAL_SPS, self.sps), (NAL_PPS, self.pps)):
            arrays.append(bytes((kind,)) + b"\x00\x01" + len(unit).to_bytes(2, "big") + unit)
        return header + b"".join(arrays)


def parameter_sets(units: list[NalUnit]) -> ParameterSets | None:
    """The last VPS, SPS and PPS among these NAL units (as bytes), if all are there."""
    found: dict[int, NalUnit] = {}
    for unit in units:
        kind = nal_type(unit)
        if kind in (NAL_VPS, NAL_SPS, NAL_PPS):
            found[kind] = unit
    if len(found) < 3:
        return None
    return ParameterSets(bytes(found[NAL_VPS]), bytes(found[NAL_SPS]), bytes(found[NAL_PPS]))


def parameter_sets_from_hvcc_record(record: bytes) -> ParameterSets:
    """The first VPS, SPS and PPS of an hvcC record (extradata of MP4/MKV inputs); other
    arrays (SEI) are skipped."""
    if len(record) < HVCC_HEADER_SIZE or record[0] != 1:
        raise FormatError("not an HEVCDecoderConfigurationRecord")
    found: dict[int, bytes] = {}
    position = HVCC_HEADER_SIZE
    for _ in range(record[HVCC_HEADER_SIZE - 1]):
        if position + 3 > len(record):
            raise FormatError("truncated hvcC record")
        kind = record[position] & 0x3F
        count = int.from_bytes(record[position + 1 : position + 3], "big")
        position += 3
        for _ in range(count):
            size = int.from_bytes(record[position : position + 2], "big")
            unit = record[position + 2 : position + 2 + size]
            if len(unit) != size or position + 2 > len(record):
                raise FormatError("truncated hvcC record")
            found.setdefault(kind, unit)
            position += 2 + size
    if not all(found.get(kind) for kind in (NAL_VPS, NAL_SPS, NAL_PPS)):
        raise FormatError("hvcC record without VPS, SPS or PPS")
    return ParameterSets(found[NAL_VPS], found[NAL_SPS], found[NAL_PPS])


def sps_dimensions(sps: bytes) -> tuple[int, int]:
    """The picture size an SPS declares, after its conformance window (ITU-T H.265
    7.3.2.2): what a camera that sends no SDP size or codec context still tells in-band."""
    info = _sps_info(sps)
    return info.width, info.height


@dataclass(frozen=True)
class _SpsInfo:
    max_sub_layers: int
    temporal_id_nesting: int
    general_ptl: bytes
    chroma_format: int
    width: int
    height: int
    bit_depth_luma: int
    bit_depth_chroma: int


def _sps_info(sps: bytes) -> _SpsInfo:
    """The SPS fields up to the bit depths (H.265 7.3.2.2.1 and profile_tier_level 7.3.3)."""
    if len(sps) < 3 or nal_type(sps) != NAL_SPS:
        raise FormatError("not an H.265 SPS")
    rbsp = unescape_rbsp(bytes(sps[2:]))
    if len(rbsp) < 1 + _GENERAL_PTL_SIZE:
        raise FormatError("SPS too short")
    max_sub_layers = ((rbsp[0] >> 1) & 0x07) + 1
    nesting = rbsp[0] & 0x01
    general_ptl = rbsp[1 : 1 + _GENERAL_PTL_SIZE]
    bits = RbspBits(rbsp[1 + _GENERAL_PTL_SIZE :])
    sub_layers = max_sub_layers - 1
    present = [(bits.bits(1), bits.bits(1)) for _ in range(sub_layers)]
    if sub_layers:
        bits.bits(2 * (8 - sub_layers))  # reserved_zero_2bits
    for profile_present, level_present in present:
        bits.bits(88 * profile_present)
        bits.bits(8 * level_present)
    bits.ue()  # sps_seq_parameter_set_id
    chroma_format = bits.ue()
    if chroma_format > 3:
        raise FormatError("SPS chroma_format_idc out of range")
    separate_planes = bits.bits(1) if chroma_format == 3 else 0
    width, height = bits.ue(), bits.ue()
    if bits.bits(1):  # conformance_window_flag
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        chroma = 0 if separate_planes else chroma_format
        width -= (2 if chroma in (1, 2) else 1) * (left + right)
        height -= (2 if chroma == 1 else 1) * (top + bottom)
    if width <= 0 or height <= 0:
        raise FormatError("SPS crops the picture away")
    luma, chroma_depth = bits.ue() + 8, bits.ue() + 8
    if luma > 15 or chroma_depth > 15:
        raise FormatError("SPS bit depth out of range")
    return _SpsInfo(
        max_sub_layers, nesting, general_ptl, chroma_format, width, height, luma, chroma_depth
    )
