"""H.264 bitstreams: Annex-B (start codes, as cameras and RTSP deliver it) to AVCC
(4-byte length-prefixed NAL units, what Matroska and Kinesis Video Streams take), and
the parameter sets (SPS, PPS) to the AVCDecoderConfigurationRecord ("avcC") that goes
into the track's CodecPrivate. Bytes that are not what they should be raise
``FormatError`` (a ``ValueError``)."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.errors import FormatError

NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9

START_CODE = b"\x00\x00\x01"
#: A NAL unit as the splitters return it: a view into the packet (no copy) or bytes.
NalUnit = bytes | memoryview


def is_annexb(data: bytes) -> bool:
    """Whether a packet (or extradata) uses start codes; decided once per stream."""
    return data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")


def split_annexb(data: bytes) -> list[NalUnit]:
    """The NAL units of an Annex-B buffer, without start codes (3 or 4 bytes) and
    without the zero bytes that pad between units; views into ``data``, not copies."""
    view = memoryview(data)
    units: list[NalUnit] = []
    find = data.find
    start = find(START_CODE)
    while start >= 0:
        start += 3
        following = find(START_CODE, start)
        end = len(data) if following < 0 else following
        if following >= 0:
            while end > start and data[end - 1] == 0:  # trailing zeros, a 4-byte code's first
                end -= 1
        if end > start:
            units.append(view[start:end])
        start = following
    return units


def split_avcc(data: bytes, length_size: int = 4) -> list[NalUnit]:
    """The NAL units of a length-prefixed buffer (views into ``data``); ValueError if
    the lengths do not add up."""
    view = memoryview(data)
    units: list[NalUnit] = []
    position = 0
    while position < len(data):
        if position + length_size > len(data):
            raise FormatError("truncated NAL length")
        size = int.from_bytes(view[position : position + length_size], "big")
        position += length_size
        if size == 0 or position + size > len(data):
            raise FormatError("NAL unit length runs past the packet")
        units.append(view[position : position + size])
        position += size
    return units


def nal_type(unit: NalUnit) -> int:
    return unit[0] & 0x1F


def continues_picture(units: list[NalUnit]) -> bool:
    """True if these NAL units carry the later slices of a picture begun in an earlier
    packet: the first slice here does not start at macroblock 0. (first_mb_in_slice is
    the slice header's first field, Exp-Golomb coded: 0 is a single 1 bit.)"""
    for unit in units:
        if 1 <= nal_type(unit) <= NAL_IDR:
            return len(unit) > 1 and not unit[1] & 0x80
    return False


def to_avcc(units: list[NalUnit]) -> bytes:
    """NAL units as AVCC, in one copy; access unit delimiters are dropped (they carry
    nothing a Matroska reader needs)."""
    parts: list[NalUnit] = []
    for unit in units:
        if unit[0] & 0x1F != NAL_AUD:
            parts.append(len(unit).to_bytes(4, "big"))
            parts.append(unit)
    return b"".join(parts)


@dataclass(frozen=True)
class ParameterSets:
    sps: bytes
    pps: bytes

    def avcc_record(self) -> bytes:
        """The AVCDecoderConfigurationRecord (ISO/IEC 14496-15) for one SPS and one PPS,
        with 4-byte NAL lengths."""
        if len(self.sps) < 4:
            raise FormatError("SPS too short")
        return (
            bytes((1, self.sps[1], self.sps[2], self.sps[3], 0xFC | 3, 0xE0 | 1))
            + len(self.sps).to_bytes(2, "big")
            + self.sps
            + b"\x01"
            + len(self.pps).to_bytes(2, "big")
            + self.pps
        )


def parameter_sets(units: list[NalUnit]) -> ParameterSets | None:
    """The last SPS and PPS among these NAL units (as bytes), if both are there."""
    sps: NalUnit | None = None
    pps: NalUnit | None = None
    for unit in units:
        kind = nal_type(unit)
        if kind == NAL_SPS:
            sps = unit
        elif kind == NAL_PPS:
            pps = unit
    if sps is None or pps is None:
        return None
    return ParameterSets(bytes(sps), bytes(pps))


def parameter_sets_from_avcc_record(record: bytes) -> ParameterSets:
    """The first SPS and PPS of an avcC record (extradata of MP4/MKV inputs)."""
    if len(record) < 7 or record[0] != 1:
        raise FormatError("not an AVCDecoderConfigurationRecord")
    position = 6
    sps_size = int.from_bytes(record[position : position + 2], "big")
    sps = record[position + 2 : position + 2 + sps_size]
    position += 2 + sps_size
    if record[5] & 0x1F == 0 or position >= len(record):
        raise FormatError("avcC record without SPS or PPS")
    position += 1  # number of PPS
    pps_size = int.from_bytes(record[position : position + 2], "big")
    pps = record[position + 2 : position + 2 + pps_size]
    if len(sps) != sps_size or len(pps) != pps_size or not sps or not pps:
        raise FormatError("truncated avcC record")
    return ParameterSets(sps, pps)


def unescape_rbsp(unit: bytes) -> bytes:
    """A NAL unit's payload without its emulation prevention bytes (00 00 03 -> 00 00)."""
    if b"\x00\x00\x03" not in unit:
        return unit
    out = bytearray()
    zeros = 0
    for byte in unit:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


class RbspBits:
    """A big-endian bit reader with Exp-Golomb codes over an RBSP (H.264 and H.265 SPS);
    FormatError past its end."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = len(data) * 8

    def bits(self, count: int) -> int:
        if count > self._left:
            raise FormatError("SPS ends early")
        self._left -= count
        return (self._value >> self._left) & ((1 << count) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.bits(1) == 0:
            zeros += 1
            if zeros > 31:
                raise FormatError("Exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code % 2 else -(code // 2)


#: Profiles whose SPS carries chroma format, bit depths and scaling matrices.
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def sps_dimensions(sps: bytes) -> tuple[int, int]:
    """The picture size an SPS declares, after its cropping (ITU-T H.264 7.3.2.1.1):
    what a camera that sends no SDP size or codec context still tells in-band."""
    bits = RbspBits(unescape_rbsp(sps[1:]))
    profile = bits.bits(8)
    bits.bits(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    chroma_format = 1
    separate_planes = 0
    if profile in _HIGH_PROFILES:
        chroma_format = bits.ue()
        if chroma_format == 3:
            separate_planes = bits.bits(1)
        bits.ue()  # bit depth luma
        bits.ue()  # bit depth chroma
        bits.bits(1)  # qpprime_y_zero_transform_bypass
        if bits.bits(1):  # seq_scaling_matrix_present
            for index in range(8 if chroma_format != 3 else 12):
                if bits.bits(1):
                    _skip_scaling_list(bits, 16 if index < 6 else 64)
    bits.ue()  # log2_max_frame_num - 4
    order_type = bits.ue()
    if order_type == 0:
        bits.ue()
    elif order_type == 1:
        bits.bits(1)
        bits.se()
        bits.se()
        for _ in range(bits.ue()):
            bits.se()
    bits.ue()  # max_num_ref_frames
    bits.bits(1)  # gaps_in_frame_num_allowed
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.bits(1)
    if not frame_mbs_only:
        bits.bits(1)  # mb_adaptive_frame_field
    bits.bits(1)  # direct_8x8_inference
    width = width_mbs * 16
    height = height_map_units * 16 * (2 - frame_mbs_only)
    if bits.bits(1):  # frame_cropping
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        chroma = 0 if separate_planes else chroma_format
        crop_x = 1 if chroma in (0, 3) else 2
        crop_y = (1 if chroma in (0, 2, 3) else 2) * (2 - frame_mbs_only)
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)
    if width <= 0 or height <= 0:
        raise FormatError("SPS crops the picture away")
    return width, height


def _skip_scaling_list(bits: RbspBits, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            following = (last + bits.se() + 256) % 256
        last = following or last
