"""RTP packets of an H.264 stream (RFC 6184) -> access units, as AVCC frames.

    RTP header  V=2, marker (last packet of an access unit), sequence, timestamp (90 kHz)
    payload     a single NAL unit (types 1-23), STAP-A (24: several small units, each
                with a 16-bit size) or FU-A (28: one unit in pieces, start and end bits)

An access unit (one picture and the parameter sets or SEI before it) is every NAL unit
with the same RTP timestamp; it is complete when a packet with another timestamp
arrives. The marker bit is not trusted: cameras set it on every slice, on parameter
sets of their own, or never. Parameter sets and SEI after a unit's last slice (a camera
that stamps them with the previous picture's time) go on to the next picture, and a
unit without any slice is not a frame. Units come out as AVCC (each behind its 4-byte
length), access unit delimiters dropped, as Matroska takes them. Timestamps are
extended past their 32-bit wrap (13 hours at 90 kHz).

A gap in the sequence numbers (a server that dropped packets; TCP itself loses none)
loses the unit a fragmented packet was building, and is counted; a packet from before
the expected one (repeated) is skipped. Interleaved modes
(STAP-B, MTAP, FU-B: packetization-mode 2) are not used by cameras; such packets are
counted as unsupported and skipped.

This is the per-packet path of every RTSP camera, so it is written for few Python
operations per packet: one method call, no objects but the unit's bytes.
"""

from __future__ import annotations

from typing import NamedTuple

from edge_agent.media.h264 import NAL_AUD, NAL_IDR, NAL_PPS, NAL_SPS
from edge_agent.sources.camera import rtp

STAP_A = 24
FU_A = 28


class AccessUnit(NamedTuple):
    #: RTP timestamp, extended past its wrap (90 kHz for H.264).
    timestamp: int
    keyframe: bool
    #: The units in AVCC: each behind its 4-byte big-endian length.
    data: bytes


class H264Depacketizer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []  # the access unit being built, AVCC pieces
        self._after_slice = -1  # len(_parts) after its last slice; -1: no slice yet
        self._keyframe = False
        self._timestamp: int | None = None  # raw 32-bit timestamp of the unit being built
        self._fragments: list[bytes] | None = None  # an FU-A unit being built
        self._sequence = rtp.SequenceTracker()
        self._last_timestamp: int | None = None  # extended past the wrap
        #: The newest SPS and PPS seen in the stream, and how often they changed.
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.parameter_changes = 0
        self.lost_packets = 0
        self.unsupported_packets = 0
        self.malformed_packets = 0

    def push(self, packet: bytes | memoryview) -> list[AccessUnit]:
        """Take one RTP packet; returns the access unit it completed, if any (the one
        before it, when this packet begins another picture)."""
        parsed = rtp.parse(packet)
        if parsed is None:
            self.malformed_packets += 1
            return []
        start, end, sequence, timestamp, _ = parsed
        gap = self._sequence.missing(sequence)
        if gap is None:
            return []  # from before the expected one: a repeat
        if gap:
            self.lost_packets += gap
            self._fragments = None  # the unit in pieces lost some of them
        done: list[AccessUnit] = []
        if timestamp != self._timestamp:
            if self._after_slice >= 0:
                done.append(self._complete())
            self._timestamp = timestamp
            self._fragments = None
        header = packet[start]
        kind = header & 0x1F
        if 0 < kind < STAP_A:
            self._unit(bytes(packet[start:end]), kind)
        elif kind == FU_A:
            self._fragment(packet, start, end, header)
        elif kind == STAP_A:
            self._aggregate(packet, start + 1, end)
        else:
            self.unsupported_packets += 1
        return done

    def flush(self) -> AccessUnit | None:
        """The access unit in progress (at the end of a session), if it has a picture."""
        return self._complete() if self._after_slice >= 0 else None

    def _unit(self, unit: bytes, kind: int) -> None:
        if kind in (NAL_AUD, 0):
            return
        if 0 < kind <= NAL_IDR:  # a slice (1-5)
            self._keyframe |= kind == NAL_IDR
            self._parts += (len(unit).to_bytes(4, "big"), unit)
            self._after_slice = len(self._parts)
            return
        if kind == NAL_SPS and unit != self.sps:
            self.sps = unit
            self.parameter_changes += 1
        elif kind == NAL_PPS and unit != self.pps:
            self.pps = unit
            self.parameter_changes += 1
        self._parts += (len(unit).to_bytes(4, "big"), unit)

    def _fragment(self, packet: bytes | memoryview, start: int, end: int, header: int) -> None:
        if end - start < 2:
            self.malformed_packets += 1
            return
        fu_header = packet[start + 1]
        if fu_header & 0x80:  # start: the unit's own header from both headers
            self._fragments = [bytes(((header & 0xE0) | (fu_header & 0x1F),))]
        elif self._fragments is None:
            return  # the start was lost: nothing to join to
        self._fragments.append(bytes(packet[start + 2 : end]))
        if fu_header & 0x40:  # end
            unit = b"".join(self._fragments)
            self._fragments = None
            self._unit(unit, fu_header & 0x1F)

    def _aggregate(self, packet: bytes | memoryview, position: int, end: int) -> None:
        while position + 2 <= end:
            size = (packet[position] << 8) | packet[position + 1]
            position += 2
            if size == 0 or position + size > end:
                self.malformed_packets += 1
                return
            self._unit(bytes(packet[position : position + size]), packet[position] & 0x1F)
            position += size

    def _complete(self) -> AccessUnit:
        """The access unit of the picture built so far; what followed its last slice
        (parameter sets, SEI) is kept for the next one."""
        raw = self._timestamp or 0
        last = self._last_timestamp
        extended = raw if last is None else rtp.extend(raw, last)
        self._last_timestamp = extended
        parts, cut = self._parts, self._after_slice
        unit = AccessUnit(extended, self._keyframe, b"".join(parts[:cut]))
        self._parts = parts[cut:]
        self._after_slice = -1
        self._keyframe = False
        return unit
