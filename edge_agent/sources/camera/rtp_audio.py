"""RTP packets of camera audio -> audio units (raw AAC access units, G.711 samples).

    RTP header  V=2, marker, sequence, timestamp (the stream's clock: its sampling rate)
    PCMA/PCMU   RFC 3551: the payload is the samples, one unit a packet
    MPEG4-GENERIC (RFC 3640, mode AAC-hbr: 13/3/3 bits, or AAC-lbr: 6/2/2)
                AU-headers-length (16 bits: the headers' size in bits), AU headers
                (AU-size, AU-Index for the first and AU-Index-delta for the rest),
                padding to a byte, the AUs one after another. An AU larger than a
                packet comes in fragments: one header each (the whole AU's size), the
                same timestamp, the marker on the last one.
    MP4A-LATM   RFC 6416, cpresent=0 (the StreamMuxConfig is in the SDP): packets
                with the same timestamp, the marker on the last, carry one
                AudioMuxElement: per subframe a PayloadLengthInfo (bytes of 255 that
                add up, ended by a byte below 255) and then that many bytes.

The n-th access unit of a packet (or element) is stamped ``timestamp + n *
frame_samples``. Timestamps are extended past their 32-bit wrap. A gap in the sequence
numbers drops the unit being reassembled, and the lost packets are counted; a packet
from before the expected one (a repeat) is skipped. Malformed packets and what is not
supported (interleaving: a non-zero AU-Index, CTS/DTS or auxiliary data, LATM other
data) are counted in ``unsupported_packets`` and skipped; nothing here raises for bad
packets.
"""

from __future__ import annotations

from typing import NamedTuple

from edge_agent.errors import FormatError
from edge_agent.sources.camera import rtp

_WRAP = 1 << 32
_HALF = 1 << 31


class AudioUnit(NamedTuple):
    #: RTP timestamp, extended past the wrap (the stream's clock rate).
    timestamp: int
    #: One raw AAC access unit, or G.711 samples.
    data: bytes


class _Depacketizer:
    """Counters, loss tracking and timestamp extension shared by the depacketizers."""

    #: Where the usual packet's unit starts (a 12-byte RTP header, then for AAC-hbr one
    #: 4-byte AU header section), for ``push_many``; 0: no usual form.
    _usual_start = 0

    def __init__(self) -> None:
        self._sequence = rtp.SequenceTracker()
        self._last_timestamp: int | None = None  # extended past the wrap
        self.lost_packets = 0
        self.unsupported_packets = 0
        self._fragments: list[bytes] = []  # a unit being reassembled

    def push_many(self, packets: list[bytes]) -> list[AudioUnit]:
        """``push`` for packets that came together. The usual packet (no CSRCs,
        extension or padding, the sequence number expected, one whole unit) is read
        here, inline: a camera's audio is 50 packets a second, each worth a few
        microseconds of Python at most."""
        units: list[AudioUnit] = []
        sequence, usual_start = self._sequence, self._usual_start
        expected, last = sequence.expected, self._last_timestamp
        # AAC-hbr's usual packet: AU-headers-length 16, an AU-size of the whole rest and
        # AU-Index 0 (and no AU being reassembled).
        aac = usual_start == 16
        for packet in packets:
            size = len(packet)
            if (
                usual_start
                and size > usual_start
                and packet[0] == 0x80
                and (packet[2] << 8) | packet[3] == expected
                and last is not None
                and (
                    not aac
                    or (
                        packet[12] == 0
                        and packet[13] == 16
                        and (packet[14] << 5) | (packet[15] >> 3) == size - 16
                        and not packet[15] & 7
                        and not self._fragments
                    )
                )
            ):
                expected = (expected + 1) & 0xFFFF
                raw = int.from_bytes(packet[4:8], "big")
                last += (raw - last + _HALF) % _WRAP - _HALF
                units.append(AudioUnit(last, packet[usual_start:]))
                continue
            sequence.expected, self._last_timestamp = expected, last
            units += self.push(packet)
            expected, last = sequence.expected, self._last_timestamp
        sequence.expected, self._last_timestamp = expected, last
        return units

    def push(self, packet: bytes | memoryview) -> list[AudioUnit]:
        """The units a packet completes."""
        raise NotImplementedError

    def _header(self, packet: bytes | memoryview) -> tuple[rtp.RtpPacket | None, bool]:
        """The packet's header (None: malformed or a repeat) and whether packets were
        lost before it."""
        parsed = rtp.parse(packet)
        if parsed is None:
            self.unsupported_packets += 1
            return None, False
        missing = self._sequence.missing(parsed.sequence)
        if missing is None:
            return None, False
        self.lost_packets += missing
        return parsed, missing > 0

    def _extend(self, raw: int) -> int:
        last = self._last_timestamp
        extended = raw if last is None else rtp.extend(raw, last)
        self._last_timestamp = extended
        return extended

    def flush(self) -> list[AudioUnit]:
        """The units still held at the end of a session (an incomplete one is dropped)."""
        return []


class G711Depacketizer(_Depacketizer):
    """PCMA / PCMU (RFC 3551): each packet's payload is one unit of samples."""

    _usual_start = 12

    def push(self, packet: bytes | memoryview) -> list[AudioUnit]:
        parsed, _ = self._header(packet)
        if parsed is None:
            return []
        payload = bytes(packet[parsed.start : parsed.end])
        return [AudioUnit(self._extend(parsed.timestamp), payload)]


def _fmtp_int(parameters: dict[str, str], key: str, default: int) -> int:
    text = parameters.get(key, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise FormatError(f"mpeg4-generic {key}={text!r} is not a number") from None
    if not 0 <= value <= 32:
        raise FormatError(f"mpeg4-generic {key}={value} out of range")
    return value


class Mpeg4GenericDepacketizer(_Depacketizer):
    """AAC in RFC 3640 (mpeg4-generic), AU headers of AU-size and AU-Index(-delta) only."""

    def __init__(
        self,
        size_length: int = 13,
        index_length: int = 3,
        index_delta_length: int = 3,
        frame_samples: int = 1024,
    ) -> None:
        super().__init__()
        if size_length <= 0 or index_length < 0 or index_delta_length < 0:
            raise ValueError("bad AU header field lengths")
        self._size_length = size_length
        self._index_length = index_length
        self._delta_length = index_delta_length
        self._frame_samples = frame_samples
        #: AAC-hbr's layout (13-bit AU-size, 3-bit AU-Index): one header is 16 bits.
        self._usual_start = 16 if (size_length, index_length) == (13, 3) else 0
        self._fragment_size = 0  # its AU-size
        self._fragment_timestamp = 0

    @classmethod
    def from_fmtp(
        cls, parameters: dict[str, str], frame_samples: int = 1024
    ) -> Mpeg4GenericDepacketizer:
        """A depacketizer for an SDP's ``a=fmtp`` parameters (keys in lower case).
        ``frame_samples`` is the caller's: ``aac_config`` of ``config=``, at the
        stream's clock rate. A missing streamtype is taken as audio (5)."""
        stream_type = parameters.get("streamtype", "5").strip()
        if stream_type != "5":
            raise FormatError(f"mpeg4-generic streamtype={stream_type} is not audio (5)")
        mode = parameters.get("mode", "").strip()
        if mode.lower() == "aac-hbr":
            defaults = (13, 3, 3)
        elif mode.lower() == "aac-lbr":
            defaults = (6, 2, 2)
        else:
            raise FormatError(f"mpeg4-generic mode={mode!r} not supported (AAC-hbr, AAC-lbr)")
        for key in ("ctsdeltalength", "dtsdeltalength", "auxiliarydatasizelength"):
            if _fmtp_int(parameters, key, 0):
                raise FormatError(f"mpeg4-generic with {key} not supported")
        return cls(
            _fmtp_int(parameters, "sizelength", defaults[0]),
            _fmtp_int(parameters, "indexlength", defaults[1]),
            _fmtp_int(parameters, "indexdeltalength", defaults[2]),
            frame_samples,
        )

    def push(self, packet: bytes | memoryview) -> list[AudioUnit]:
        parsed, gap = self._header(packet)
        if parsed is None:
            return []
        start, end, _, timestamp, marker = parsed
        if gap:
            self._fragments = []
        headers = self._au_sizes(packet, start, end)
        if headers is None:
            self.unsupported_packets += 1
            self._fragments = []
            return []
        data_start, sizes = headers
        data = bytes(packet[data_start:end])
        if self._fragments and (
            timestamp != self._fragment_timestamp or sizes != [self._fragment_size]
        ):
            self._fragments = []  # the rest of an AU never came
            self.unsupported_packets += 1
        if len(sizes) == 1 and (self._fragments or sizes[0] > len(data)):
            return self._fragment(data, sizes[0], timestamp, marker)
        if sum(sizes) > len(data):
            self.unsupported_packets += 1
            return []
        base = self._extend(timestamp)
        units = []
        position = 0
        for index, size in enumerate(sizes):
            units.append(
                AudioUnit(base + index * self._frame_samples, data[position : position + size])
            )
            position += size
        return units

    def _au_sizes(
        self, packet: bytes | memoryview, start: int, end: int
    ) -> tuple[int, list[int]] | None:
        """Where the AUs begin and each one's AU-size; None if malformed or interleaved
        (a non-zero AU-Index or AU-Index-delta)."""
        if end - start < 2:
            return None
        header_bits = (packet[start] << 8) | packet[start + 1]
        data_start = start + 2 + (header_bits + 7) // 8
        if header_bits == 0 or data_start > end:
            return None
        value = int.from_bytes(packet[start + 2 : data_start], "big")
        left = (data_start - start - 2) * 8
        sizes = []
        used = 0
        index_length = self._index_length
        while used < header_bits:
            width = self._size_length + index_length
            used += width
            if used > header_bits:
                return None
            field = (value >> (left - used)) & ((1 << width) - 1)
            size = field >> index_length
            if size == 0 or field & ((1 << index_length) - 1):
                return None
            sizes.append(size)
            index_length = self._delta_length
        return data_start, sizes

    def _fragment(self, data: bytes, size: int, timestamp: int, marker: bool) -> list[AudioUnit]:
        if not self._fragments:
            self._fragment_size, self._fragment_timestamp = size, timestamp
        self._fragments.append(data)
        have = sum(len(piece) for piece in self._fragments)
        if have < size and not marker:
            return []
        unit, self._fragments = b"".join(self._fragments), []
        if len(unit) != size:
            return []  # missing its start (after a loss) or a bad size
        return [AudioUnit(self._extend(timestamp), unit)]


class LatmDepacketizer(_Depacketizer):
    """AAC in RFC 6416 MP4A-LATM, cpresent=0; ``subframes`` from ``latm_config``."""

    def __init__(self, subframes: int = 1, frame_samples: int = 1024) -> None:
        super().__init__()
        if subframes < 1:
            raise ValueError("subframes must be at least 1")
        self._subframes = subframes
        self._frame_samples = frame_samples
        self._parts: list[bytes] = []  # the AudioMuxElement being built
        self._timestamp = 0
        self._damaged = False  # packets were lost since the element being built began

    def push(self, packet: bytes | memoryview) -> list[AudioUnit]:
        parsed, gap = self._header(packet)
        if parsed is None:
            return []
        start, end, _, timestamp, marker = parsed
        done: list[AudioUnit] = []
        if gap:
            self._parts = []
            self._damaged = True
        elif self._parts and timestamp != self._timestamp:
            self._complete(done)  # a sender that did not mark the element's end
        if not self._parts:
            self._timestamp = timestamp
        self._parts.append(bytes(packet[start:end]))
        if marker:
            self._complete(done)
        return done

    def flush(self) -> list[AudioUnit]:
        done: list[AudioUnit] = []
        if self._parts:
            self._complete(done)
        return done

    def _complete(self, done: list[AudioUnit]) -> None:
        element, self._parts = b"".join(self._parts), []
        damaged, self._damaged = self._damaged, False
        units = self._split(element)
        if units is None:
            if not damaged:  # else it lost its start: the loss is counted already
                self.unsupported_packets += 1
            return
        base = self._extend(self._timestamp)
        done += (AudioUnit(base + n * self._frame_samples, unit) for n, unit in enumerate(units))

    def _split(self, element: bytes) -> list[bytes] | None:
        """The subframes' payloads; None unless the element is exactly those."""
        units = []
        position = 0
        for _ in range(self._subframes):
            size = 0
            while position < len(element) and element[position] == 0xFF:
                size += 255
                position += 1
            if position >= len(element):
                return None
            size += element[position]
            position += 1
            if size == 0 or position + size > len(element):
                return None
            units.append(element[position : position + size])
            position += size
        return units if position == len(element) else None
