"""Audio codec configuration for camera audio: AAC (ISO 14496-3) and G.711.

    AudioSpecificConfig (ASC), MSB first, not byte-aligned inside LATM:
      audioObjectType         5 bits (31: 32 + the next 6 bits)
      samplingFrequencyIndex  4 bits (15: a 24-bit frequency follows)
      channelConfiguration    4 bits (0: a program config element, not supported here;
                              1-7: 1, 2, 3, 4, 5, 6, 8 channels)
      AOT 5 (SBR) / 29 (PS)   explicit HE-AAC: extensionSamplingFrequencyIndex (4 bits,
                              15: +24), then audioObjectType again (the core's)
      GASpecificConfig        frameLengthFlag (960 instead of 1024 samples a frame),
                              dependsOnCoreCoder (+14 bits delay), extensionFlag, ...

``AacConfig.sampling_hz`` is always the rate written in samplingFrequencyIndex. For
explicit HE-AAC that is the AAC core's rate, half the rate the decoder outputs once SBR
doubles it; ``frame_samples`` counts samples at that same core rate (1024 or 960).

    ADTS frame (what FFmpeg's MPEG-TS demuxer hands over): syncword 0xFFF, ID,
    layer, protection_absent, profile (AOT - 1), sampling index, private bit, channel
    configuration, 4 flag bits, frame_length (13 bits, header included), buffer
    fullness, number_of_raw_data_blocks - 1; a 16-bit CRC if protection_absent is 0.

    LATM StreamMuxConfig (RFC 6416 ``config=`` of MP4A-LATM, cpresent=0):
    audioMuxVersion(1) allStreamsSameTimeFraming(1) numSubFrames(6) numProgram(4)
    numLayer(3) AudioSpecificConfig frameLengthType(3) latmBufferFullness(8) ...

G.711 goes into Matroska as ``A_MS/ACM`` whose CodecPrivate is a WAVEFORMATEX.
Bytes that cannot be read raise ``FormatError`` (a ``ValueError``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edge_agent.errors import FormatError

WAVE_FORMAT_ALAW = 6
WAVE_FORMAT_MULAW = 7

AOT_SBR = 5
AOT_PS = 29
#: The sync words of backward-compatible SBR and PS signalling in an ASC.
_SYNC_EXTENSION = 0x2B7
_PS_SYNC_EXTENSION = 0x548
#: Audio object types with a GASpecificConfig (ISO 14496-3 1.6.2.1).
_GA_TYPES = frozenset({1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23})
#: Error-resilient types: an epConfig follows their specific config.
_ER_TYPES = frozenset({17, 19, 20, 21, 22, 23})
#: AAC LD: frameLengthFlag chooses 480 or 512 samples instead of 960 or 1024.
_AOT_LD = 23
#: samplingFrequencyIndex 0-12.
SAMPLING_RATES: tuple[int, ...] = (96000, 88200, 64000, 48000, 44100, 32000, 24000)
SAMPLING_RATES += (22050, 16000, 12000, 11025, 8000, 7350)
_CHANNELS = (0, 1, 2, 3, 4, 5, 6, 8)


class _Bits:
    """An MSB-first bit reader over plain bytes (no emulation prevention); FormatError
    past its end, naming what was being read."""

    def __init__(self, data: bytes, what: str) -> None:
        self._value = int.from_bytes(data, "big")
        self.size = len(data) * 8
        self.position = 0
        self._what = what

    def bits(self, count: int) -> int:
        end = self.position + count
        if end > self.size:
            raise FormatError(f"{self._what} ends early ({self.size // 8} bytes)")
        self.position = end
        return (self._value >> (self.size - end)) & ((1 << count) - 1)

    def peek(self, count: int) -> int | None:
        """The next ``count`` bits without reading them; None if fewer remain."""
        if self.position + count > self.size:
            return None
        return (self._value >> (self.size - self.position - count)) & ((1 << count) - 1)

    def slice(self, start: int, end: int) -> bytes:
        """Bits [start, end) as bytes, zero bits padding the last byte."""
        count = end - start
        value = (self._value >> (self.size - end)) & ((1 << count) - 1)
        pad = -count % 8
        return (value << pad).to_bytes((count + pad) // 8, "big")


@dataclass(frozen=True)
class AacConfig:
    audio_specific_config: bytes
    #: The rate of samplingFrequencyIndex: the core's for explicit HE-AAC (see above).
    sampling_hz: int
    channels: int
    #: Samples a frame at ``sampling_hz``: 1024, or 960 with frameLengthFlag (AAC LD:
    #: 512 or 480).
    frame_samples: int


@dataclass(frozen=True)
class LatmConfig:
    """What a LATM StreamMuxConfig says: the byte-aligned ASC of its one stream, and
    how many access units (subframes) each AudioMuxElement carries."""

    asc: bytes
    subframes: int


def _object_type(bits: _Bits) -> int:
    kind = bits.bits(5)
    return 32 + bits.bits(6) if kind == 31 else kind


def _frequency(bits: _Bits) -> int:
    index = bits.bits(4)
    if index == 15:
        return bits.bits(24)
    if index >= len(SAMPLING_RATES):
        raise FormatError(f"reserved AAC sampling frequency index {index}")
    return SAMPLING_RATES[index]


def _channels(config: int) -> int:
    if config == 0:
        raise FormatError("AAC channel configuration 0 (a program config element) not supported")
    if config >= len(_CHANNELS):
        raise FormatError(f"reserved AAC channel configuration {config}")
    return _CHANNELS[config]


def _read_asc(bits: _Bits) -> AacConfig:
    """Read an AudioSpecificConfig up to the end of its specific config (and epConfig):
    ``bits.position`` is then its end; the result's ``audio_specific_config`` is empty."""
    kind = explicit_kind = _object_type(bits)
    sampling_hz = _frequency(bits)
    channel_config = bits.bits(4)
    if kind in (AOT_SBR, AOT_PS):
        _frequency(bits)  # the extension's (output) rate
        kind = _object_type(bits)
        if kind == 22:
            bits.bits(4)  # extensionChannelConfiguration
    if kind not in _GA_TYPES:
        raise FormatError(f"AAC audio object type {kind} not supported")
    channels = _channels(channel_config)
    frame_length_flag = bits.bits(1)
    if bits.bits(1):  # dependsOnCoreCoder
        bits.bits(14)  # coreCoderDelay
    extension = bits.bits(1)
    if kind in (6, 20):
        bits.bits(3)  # layerNr
    if extension:
        if kind == 22:
            bits.bits(16)  # numOfSubFrame, layer_length
        if kind in (17, 19, 20, 23):
            bits.bits(3)  # the three resilience flags
        bits.bits(1)  # extensionFlag3
    if kind in _ER_TYPES and bits.bits(2) > 1:
        raise FormatError("AAC epConfig 2 and 3 (error protection config) not supported")
    if explicit_kind not in (AOT_SBR, AOT_PS) and bits.peek(11) == _SYNC_EXTENSION:
        _read_sync_extension(bits)
    if kind == _AOT_LD:
        frame_samples = 480 if frame_length_flag else 512
    else:
        frame_samples = 960 if frame_length_flag else 1024
    return AacConfig(b"", sampling_hz, channels, frame_samples)


def _read_sync_extension(bits: _Bits) -> None:
    """Backward-compatible HE-AAC signalling after the core's config (what FFmpeg's MP4
    muxer writes, and GStreamer copies into a LATM StreamMuxConfig): the sync word
    0x2b7, the extension's object type and, for SBR, whether it is present (with its
    rate) and the PS sync word 0x548 and flag."""
    bits.bits(11)
    extension = _object_type(bits)
    if extension == AOT_SBR:
        if bits.bits(1):  # sbrPresentFlag
            _frequency(bits)
            if bits.peek(11) == _PS_SYNC_EXTENSION:
                bits.bits(12)  # the sync word and psPresentFlag
    elif extension == 22:  # ER BSAC
        if bits.bits(1):
            _frequency(bits)
        bits.bits(4)  # extensionChannelConfiguration


def aac_config(asc: bytes) -> AacConfig:
    """The sampling rate, channels and frame size of an AudioSpecificConfig (an MP4's or
    Matroska's AAC CodecPrivate, an RFC 3640 ``config=``)."""
    config = _read_asc(_Bits(bytes(asc), "AudioSpecificConfig"))
    return AacConfig(bytes(asc), config.sampling_hz, config.channels, config.frame_samples)


def latm_config(config: bytes) -> LatmConfig:
    """The ASC (re-packed byte-aligned) and subframe count of a LATM StreamMuxConfig
    (audioMuxVersion 0, one program, one layer, frameLengthType 0). Bits missing from
    frameLengthType read as zeros; what follows it (latmBufferFullness, other data,
    CRC) is not read."""
    bits = _Bits(bytes(config), "StreamMuxConfig")
    if bits.bits(1):
        raise FormatError("LATM audioMuxVersion 1 not supported")
    bits.bits(1)  # allStreamsSameTimeFraming
    subframes = bits.bits(6) + 1
    if bits.bits(4) or bits.bits(3):
        raise FormatError("LATM with more than one program or layer not supported")
    start = bits.position
    _read_asc(bits)
    end = bits.position
    # GStreamer's rtpmp4apay ends the config inside (or before) frameLengthType; what
    # is not there reads as zeros, as FFmpeg's reader has it.
    remaining = bits.size - bits.position
    frame_length_type = bits.bits(3) if remaining >= 3 else bits.bits(remaining) << (3 - remaining)
    if frame_length_type != 0:
        raise FormatError(f"LATM frameLengthType {frame_length_type} not supported (AAC: 0)")
    return LatmConfig(bits.slice(start, end), subframes)


def asc_from_stream_mux_config(config: bytes) -> bytes:
    """The byte-aligned AudioSpecificConfig of a LATM StreamMuxConfig (``latm_config``)."""
    return latm_config(config).asc


_ADTS_HEADER = 7


def adts_to_raw(data: bytes) -> tuple[bytes, list[bytes]]:
    """Split a buffer of ADTS frames into raw AAC frames; returns them with the
    AudioSpecificConfig their (common) header describes."""
    data = bytes(data)
    if not data:
        raise FormatError("no ADTS frame")
    asc = b""
    frames: list[bytes] = []
    position = 0
    while position < len(data):
        header = data[position : position + _ADTS_HEADER]
        if len(header) < _ADTS_HEADER:
            raise FormatError("ADTS header truncated")
        fields = int.from_bytes(header, "big")
        if fields >> 44 != 0xFFF:
            raise FormatError(f"no ADTS syncword at byte {position}")
        protection_absent = (fields >> 40) & 1
        profile = (fields >> 38) & 3
        index = (fields >> 34) & 0xF
        channel_config = (fields >> 30) & 7
        length = (fields >> 13) & 0x1FFF
        if fields & 3:
            raise FormatError("ADTS frames of several raw data blocks not supported")
        if index >= len(SAMPLING_RATES):
            raise FormatError(f"reserved ADTS sampling frequency index {index}")
        _channels(channel_config)
        header_size = _ADTS_HEADER + (0 if protection_absent else 2)
        if length < header_size or position + length > len(data):
            raise FormatError(f"ADTS frame length {length} does not fit at byte {position}")
        frame_asc = (((profile + 1) << 11) | (index << 7) | (channel_config << 3)).to_bytes(2)
        if asc and frame_asc != asc:
            raise FormatError("ADTS frames of different configurations in one buffer")
        asc = frame_asc
        frames.append(data[position + header_size : position + length])
        position += length
    return asc, frames


def g711_codec_private(format_tag: int, sampling_hz: int, channels: int) -> bytes:
    """The 18-byte WAVEFORMATEX of a G.711 track (Matroska codec id ``A_MS/ACM``)."""
    if format_tag not in (WAVE_FORMAT_ALAW, WAVE_FORMAT_MULAW):
        raise ValueError(f"not a G.711 format tag: {format_tag}")
    if sampling_hz <= 0 or not 0 < channels < 0x10000:
        raise ValueError(f"bad G.711 rate or channels: {sampling_hz}, {channels}")
    return struct.pack(
        "<HHIIHHH", format_tag, channels, sampling_hz, sampling_hz * channels, channels, 8, 0
    )
