"""RTP (RFC 3550) as the depacketizers read it: where a packet's payload is, its
sequence number, timestamp and marker, what a sequence number says about loss, and
timestamps extended past their 32-bit wrap."""

from __future__ import annotations

from typing import NamedTuple


class RtpPacket(NamedTuple):
    """A packet's payload bounds (``packet[start:end]``) and header fields."""

    start: int
    end: int
    sequence: int
    timestamp: int
    marker: bool


def parse(packet: bytes | memoryview, min_payload: int = 1) -> RtpPacket | None:
    """The header of an RTP version 2 packet (CSRCs, a header extension and padding
    skipped); None if it is malformed or its payload is shorter than ``min_payload``."""
    size = len(packet)
    if size < 12 + min_payload or packet[0] >> 6 != 2:
        return None
    first = packet[0]
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 4 bytes, then its length in 32-bit words
        if size < start + 4:
            return None
        start += 4 + 4 * ((packet[start + 2] << 8) | packet[start + 3])
    end = size - packet[size - 1] if first & 0x20 else size  # padding
    if end - start < min_payload:
        return None
    return RtpPacket(
        start,
        end,
        (packet[2] << 8) | packet[3],
        int.from_bytes(packet[4:8], "big"),
        bool(packet[1] & 0x80),
    )


_WRAP = 1 << 32
_HALF = 1 << 31


def extend(raw: int, near: int) -> int:
    """A 32-bit RTP timestamp extended past its wraps: of the values it may stand for,
    the one nearest ``near`` (an extended timestamp of the same stream, such as the last)."""
    return near + ((raw - near + _HALF) % _WRAP - _HALF)


class SequenceTracker:
    """Loss and repeats, from the 16-bit sequence numbers (wrapping)."""

    def __init__(self) -> None:
        #: The sequence number the next packet should have (None before the first):
        #: a per-packet path may compare with it and step it itself.
        self.expected: int | None = None

    def missing(self, sequence: int) -> int | None:
        """How many packets were lost before this one (0: none); None if it comes from
        before the expected one (a repeat: to be skipped)."""
        expected = self.expected
        missing = 0
        if expected is not None and sequence != expected:
            missing = (sequence - expected) & 0xFFFF
            if missing >= 0x8000:
                return None
        self.expected = (sequence + 1) & 0xFFFF
        return missing
