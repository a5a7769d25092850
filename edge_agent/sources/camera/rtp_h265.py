"""RTP packets of an H.265 stream (RFC 7798) -> pictures, as length-prefixed frames.

    RTP header   V=2, marker (last packet of an access unit), sequence, timestamp (90 kHz)
    payload      a 2-byte payload header shaped like a NAL unit header:
                 F(1) type(6) LayerId(6) TID(3), then by type
      0-47       a single NAL unit (the header is the unit's own)
      48 (AP)    aggregation: several units, each behind a 16-bit size
      49 (FU)    fragmentation: FU header S(1) E(1) FuType(6), then a piece of one unit;
                 the unit's header is the payload header with FuType for its type
      50 (PACI)  payload content information: not sent by cameras; counted unsupported

An access unit is every NAL unit with the same RTP timestamp, complete when a packet
with another timestamp arrives -- the rule of ``rtp_h264``, for the same cameras: the
marker bit is not trusted to end a picture (some set it on every slice), it only tells
that a lost packet did not belong to the picture it ends. Prefix units (VPS, SPS, PPS,
prefix SEI) after a picture's last slice go on to the next picture; suffix units
(suffix SEI, end of sequence/bitstream, filler) stay with the picture they follow. A
unit without any slice is not a frame. Units come out behind their 4-byte lengths,
access unit delimiters dropped, as Matroska takes them; timestamps are extended past
their 32-bit wrap.

A gap in the sequence numbers loses the picture it falls in: that picture is dropped
whole (a decoder cannot use a picture missing a slice) and counted in
``dropped_pictures``; the lost packets are counted in ``lost_packets``. When the gap
falls between two timestamps, the picture before it is kept if its last packet carried
the marker, and the next is kept if its first packet begins a picture (a parameter set,
prefix SEI, or the first slice segment). A packet from before the expected one (a
repeat) is skipped.

Decoding order numbers (DONL/DOND, present when the SDP's sprop-max-don-diff > 0) are
not supported: with ``max_don_diff > 0`` every packet is counted unsupported.
"""

from __future__ import annotations

from edge_agent.media.h265 import (
    NAL_AUD,
    NAL_EOB,
    NAL_EOS,
    NAL_FD,
    NAL_IRAP_FIRST,
    NAL_IRAP_LAST,
    NAL_PPS,
    NAL_SEI_SUFFIX,
    NAL_SPS,
    NAL_VCL_LAST,
    NAL_VPS,
)
from edge_agent.sources.camera import rtp
from edge_agent.sources.camera.rtp_h264 import AccessUnit

__all__ = ["AP", "FU", "PACI", "AccessUnit", "H265Depacketizer"]

AP = 48
FU = 49
PACI = 50
#: Units that follow the last slice of their access unit (H.265 7.4.2.4.4).
_SUFFIX = frozenset({NAL_EOS, NAL_EOB, NAL_FD, NAL_SEI_SUFFIX, 45, 46, 47})


class H265Depacketizer:
    def __init__(self, max_don_diff: int = 0) -> None:
        self._don = max_don_diff > 0  # DONL/DOND fields present: not supported
        self._parts: list[bytes] = []  # the access unit being built, length-prefixed pieces
        self._after_slice = -1  # len(_parts) after its last slice; -1: no slice yet
        self._keyframe = False
        self._damaged = False  # the access unit being built lost packets
        self._timestamp: int | None = None  # raw 32-bit timestamp of the unit being built
        self._fragments: list[bytes] | None = None  # an FU unit being built
        self._sequence = rtp.SequenceTracker()
        self._last_marker = False
        self._last_timestamp: int | None = None  # extended past the wrap
        #: The newest VPS, SPS and PPS seen in the stream, and how often they changed.
        self.vps: bytes | None = None
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.parameter_changes = 0
        self.lost_packets = 0
        self.dropped_pictures = 0
        self.unsupported_packets = 0
        self.malformed_packets = 0

    def push(self, packet: bytes | memoryview) -> list[AccessUnit]:
        """Take one RTP packet; returns the access unit it completed, if any (the one
        before it, when this packet begins another picture)."""
        header = rtp.parse(packet, min_payload=3)
        if header is None:
            self.malformed_packets += 1
            return []
        start, end, sequence, timestamp, marker = header
        missing = self._sequence.missing(sequence)
        if missing is None:
            return []  # from before the expected one: a repeat
        gap = missing > 0
        if gap:
            self.lost_packets += missing
            self._fragments = None
        done: list[AccessUnit] = []
        kind = (packet[start] >> 1) & 0x3F
        if timestamp != self._timestamp:
            if gap and not self._last_marker:
                self._damaged = True  # the lost packets may have ended this picture
            if self._after_slice >= 0:
                self._complete(done)
            self._damaged = gap and not self._begins_picture(packet, start, end, kind)
            self._timestamp = timestamp
            self._fragments = None
        elif gap:
            self._damaged = True
        self._last_marker = marker
        if self._don:
            self.unsupported_packets += 1
        elif kind < AP:
            self._unit(bytes(packet[start:end]), kind)
        elif kind == FU:
            self._fragment(packet, start, end)
        elif kind == AP:
            self._aggregate(packet, start + 2, end)
        else:
            self.unsupported_packets += 1
        return done

    def flush(self) -> AccessUnit | None:
        """The access unit in progress (at the end of a session), if it has a whole picture."""
        done: list[AccessUnit] = []
        if self._after_slice >= 0:
            self._complete(done)
        return done[0] if done else None

    @staticmethod
    def _begins_picture(packet: bytes | memoryview, start: int, end: int, kind: int) -> bool:
        """Whether this payload's first unit may begin an access unit: a prefix unit, or
        a slice with first_slice_segment_in_pic_flag set (at the start of its unit)."""
        position = start + 2
        if kind == AP:
            if start + 5 > end:
                return False
            kind = (packet[start + 4] >> 1) & 0x3F
            position = start + 6
        elif kind == FU:
            fu_header = packet[start + 2]
            if not fu_header & 0x80:
                return False
            kind = fu_header & 0x3F
            position = start + 3
        if kind > NAL_VCL_LAST:
            return kind not in _SUFFIX
        return position < end and bool(packet[position] & 0x80)

    def _unit(self, unit: bytes, kind: int) -> None:
        if kind == NAL_AUD:
            return
        if kind <= NAL_VCL_LAST:  # a slice segment
            self._keyframe |= NAL_IRAP_FIRST <= kind <= NAL_IRAP_LAST
            self._parts += (len(unit).to_bytes(4, "big"), unit)
            self._after_slice = len(self._parts)
            return
        if kind == NAL_VPS and unit != self.vps:
            self.vps = unit
            self.parameter_changes += 1
        elif kind == NAL_SPS and unit != self.sps:
            self.sps = unit
            self.parameter_changes += 1
        elif kind == NAL_PPS and unit != self.pps:
            self.pps = unit
            self.parameter_changes += 1
        self._parts += (len(unit).to_bytes(4, "big"), unit)
        if kind in _SUFFIX and self._after_slice >= 0:
            self._after_slice = len(self._parts)

    def _fragment(self, packet: bytes | memoryview, start: int, end: int) -> None:
        if end - start < 4:
            self.malformed_packets += 1
            return
        fu_header = packet[start + 2]
        kind = fu_header & 0x3F
        if fu_header & 0x80:  # start: the unit's header from the payload header and FuType
            header = bytes(((packet[start] & 0x81) | (kind << 1), packet[start + 1]))
            self._fragments = [header]
        elif self._fragments is None:
            return  # the start was lost: nothing to join to
        self._fragments.append(bytes(packet[start + 3 : end]))
        if fu_header & 0x40:  # end
            unit = b"".join(self._fragments)
            self._fragments = None
            self._unit(unit, kind)

    def _aggregate(self, packet: bytes | memoryview, position: int, end: int) -> None:
        while position + 2 <= end:
            size = (packet[position] << 8) | packet[position + 1]
            position += 2
            if size < 2 or position + size > end:
                self.malformed_packets += 1
                return
            self._unit(bytes(packet[position : position + size]), (packet[position] >> 1) & 0x3F)
            position += size

    def _complete(self, done: list[AccessUnit]) -> None:
        """Ends the picture built so far, into ``done`` unless it was damaged; what
        followed its last slice (prefix units of the next picture) is kept for that one."""
        raw = self._timestamp or 0
        last = self._last_timestamp
        extended = raw if last is None else rtp.extend(raw, last)
        self._last_timestamp = extended
        parts, cut = self._parts, self._after_slice
        if self._damaged:
            self.dropped_pictures += 1
        else:
            done.append(AccessUnit(extended, self._keyframe, b"".join(parts[:cut])))
        self._parts = parts[cut:]
        self._after_slice = -1
        self._keyframe = False
        self._damaged = False
