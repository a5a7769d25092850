"""H.264 access units -> RTP packets (RFC 6184), for the depacketizer's tests and the
scripted RTSP server: single NAL units, STAP-A for the small units before a picture
(SPS, PPS, SEI), FU-A for units larger than the payload size, and the marker bit on
each access unit's last packet. The RTP header's options (CSRCs, an extension, padding)
can be switched on to show the depacketizer skips them."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av

from edge_agent.media import h264

PAYLOAD_TYPE = 96
MAX_PAYLOAD = 1400


@dataclass(frozen=True)
class SourceFrame:
    timestamp: int  # 90 kHz
    keyframe: bool
    units: tuple[bytes, ...]

    @property
    def avcc(self) -> bytes:
        """What the depacketizer should make of it (access unit delimiters dropped)."""
        return b"".join(
            len(unit).to_bytes(4, "big") + unit
            for unit in self.units
            if h264.nal_type(unit) != h264.NAL_AUD
        )


def frames_of(path: Path) -> list[SourceFrame]:
    """The frames of an H.264 MP4, each with the SPS and PPS in front of its keyframes
    (as a camera sends them in-band)."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        sets = h264.parameter_sets_from_avcc_record(bytes(stream.codec_context.extradata or b""))
        assert stream.time_base is not None
        for packet in container.demux(stream):
            if not packet.size or packet.pts is None:
                continue
            units = tuple(bytes(unit) for unit in h264.split_avcc(bytes(packet)))
            if packet.is_keyframe:
                units = (sets.sps, sets.pps, *units)
            timestamp = int(packet.pts * stream.time_base * 90_000)
            frames.append(SourceFrame(timestamp, bool(packet.is_keyframe), units))
    return frames


@dataclass
class Packetizer:
    sequence: int = 1000
    ssrc: int = 0x1234ABCD
    max_payload: int = MAX_PAYLOAD
    marker: bool = True
    csrcs: int = 0
    extension_words: int = 0
    padding: int = 0

    def packets(self, frame: SourceFrame, timestamp_offset: int = 0) -> list[bytes]:
        payloads = list(self._payloads(frame.units))
        timestamp = (frame.timestamp + timestamp_offset) & 0xFFFFFFFF
        packets = []
        for index, payload in enumerate(payloads):
            last = index == len(payloads) - 1
            packets.append(self._packet(payload, timestamp, last and self.marker))
        return packets

    def _payloads(self, units: tuple[bytes, ...]) -> Iterator[bytes]:
        small = [unit for unit in units if h264.nal_type(unit) in (6, 7, 8, 9)]
        rest = [unit for unit in units if unit not in small]
        if len(small) > 1:
            aggregate = bytes((small[0][0] & 0x60 | 24,))
            aggregate += b"".join(len(unit).to_bytes(2, "big") + unit for unit in small)
            yield aggregate
        else:
            rest = small + rest
        for unit in rest:
            if len(unit) <= self.max_payload:
                yield unit
                continue
            indicator = (unit[0] & 0xE0) | 28
            body = unit[1:]
            step = self.max_payload - 2
            for offset in range(0, len(body), step):
                start = 0x80 if offset == 0 else 0
                end = 0x40 if offset + step >= len(body) else 0
                header = bytes((indicator, start | end | (unit[0] & 0x1F)))
                yield header + body[offset : offset + step]

    def _packet(self, payload: bytes, timestamp: int, marker: bool) -> bytes:
        first = 0x80 | self.csrcs
        if self.extension_words:
            first |= 0x10
        if self.padding:
            first |= 0x20
        header = struct.pack(
            "!BBHII",
            first,
            (0x80 if marker else 0) | PAYLOAD_TYPE,
            self.sequence & 0xFFFF,
            timestamp,
            self.ssrc,
        )
        self.sequence += 1
        header += b"\x00\x00\x00\x07" * self.csrcs
        if self.extension_words:
            header += struct.pack("!HH", 0xBEDE, self.extension_words)
            header += b"\xee" * (4 * self.extension_words)
        tail = b"\x00" * (self.padding - 1) + bytes((self.padding,)) if self.padding else b""
        return header + payload + tail
