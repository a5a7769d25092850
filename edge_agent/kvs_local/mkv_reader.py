"""Reading a Matroska stream as it arrives (the receiving side of PutMedia).

Feed bytes in; get events out, as soon as each element is complete:

    Header(doc_type)                       the EBML header (its DocType)
    Tracks(entries)                        the track entries (number, type, codec, private
                                           data, pixel size, sampling rate, channels)
    ClusterStart(timecode)                 a fragment begins (its Timecode element read)
    Block(track, timecode, keyframe, data) one frame; timecode absolute, cluster + relative
    ClusterEnd()                           the fragment is complete (the next Cluster, or
                                           the end of the stream, closed it)
    Tags(tags)                             a Tags element's (name, value) SimpleTags

Master elements of unknown size (a live stream's Segment and Clusters) end where an
element that cannot be their child begins. Anything the reader does not know is
skipped by its size; an element that cannot be parsed raises MkvError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from edge_agent.errors import FormatError
from edge_agent.media import mkv
from edge_agent.media.ebml import element as mkv_element

_UNKNOWN = -1
#: Elements larger than this are not accepted (a fragment is at most 50 MB).
MAX_ELEMENT_BYTES = 64 * 1024 * 1024


class MkvError(FormatError):
    """Bytes that are not the Matroska stream they should be."""


@dataclass(frozen=True)
class TrackEntry:
    number: int
    codec_id: str
    codec_private: bytes
    track_type: int
    width: int = 0
    height: int = 0
    #: From the Audio element (0 if the entry has none).
    sampling_hz: float = 0
    channels: int = 0


@dataclass(frozen=True)
class Header:
    doc_type: str


@dataclass(frozen=True)
class Tags:
    tags: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Tracks:
    entries: tuple[TrackEntry, ...]


@dataclass(frozen=True)
class ClusterStart:
    timecode: int


@dataclass(frozen=True)
class Block:
    track: int
    timecode: int
    keyframe: bool
    data: bytes
    #: The block's lacing bits (0: one frame, no lacing).
    lacing: int = 0


@dataclass(frozen=True)
class ClusterEnd:
    pass


Event = Header | Tracks | ClusterStart | Block | ClusterEnd | Tags


def _vint(data: bytes | bytearray, position: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """(value, length) of the variable-length integer at ``position``, or None if it is
    not all there yet. Sizes drop the marker bit (all ones: unknown); IDs keep it."""
    if position >= len(data):
        return None
    first = data[position]
    length = 1
    mask = 0x80
    while length <= 8 and not first & mask:
        mask >>= 1
        length += 1
    if length > 8:
        raise MkvError("invalid variable-length integer")
    if position + length > len(data):
        return None
    value = first if keep_marker else first & (mask - 1)
    all_ones = (first & (mask - 1)) == mask - 1
    for byte in data[position + 1 : position + length]:
        value = (value << 8) | byte
        all_ones = all_ones and byte == 0xFF
    if not keep_marker and all_ones:
        return _UNKNOWN, length
    return value, length


_TOP_LEVEL = {mkv.SEGMENT, mkv.EBML}
_SEGMENT_CHILDREN = {
    mkv.INFO,
    mkv.TRACKS,
    mkv.CLUSTER,
    0x114D9B74,  # SeekHead
    0x1C53BB6B,  # Cues
    0x1254C367,  # Tags
    0x1941A469,  # Attachments
    0x1043A770,  # Chapters
}


class MkvReader:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._in_segment = False
        self._cluster: int | None = None  # the open cluster's timecode
        self._cluster_open = False  # between its start and its Timecode element
        self.bytes_read = 0

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        self.bytes_read += len(data)
        events: list[Event] = []
        while True:
            element = self._next()
            if element is None:
                return events
            events += element

    def end(self) -> list[Event]:
        """The stream is over: close the open cluster; leftover bytes are an error."""
        events: list[Event] = []
        if self._cluster is not None:
            events.append(ClusterEnd())
            self._cluster = None
        if self._buffer:
            raise MkvError(f"the stream ends inside an element ({len(self._buffer)} bytes left)")
        return events

    def _next(self) -> list[Event] | None:
        buffer = self._buffer
        head = _vint(buffer, 0, keep_marker=True)
        if head is None:
            return None
        element_id, id_length = head
        sized = _vint(buffer, id_length, keep_marker=False)
        if sized is None:
            return None
        size, size_length = sized
        header = id_length + size_length
        events: list[Event] = []
        top = element_id in _SEGMENT_CHILDREN or element_id in _TOP_LEVEL
        if top and (self._cluster is not None or self._cluster_open):
            if self._cluster_open:
                raise MkvError("a cluster without a Timecode")
            events.append(ClusterEnd())
            self._cluster = None
        if element_id == mkv.SEGMENT and size != _UNKNOWN:  # sized: read into it
            self._in_segment = True
            del buffer[:header]
            return events
        if size == _UNKNOWN:
            if element_id == mkv.SEGMENT:
                self._in_segment = True
            elif element_id == mkv.CLUSTER:
                self._cluster_open = True
            else:
                raise MkvError(f"element {element_id:#x} of unknown size")
            del buffer[:header]
            return events
        if size > MAX_ELEMENT_BYTES:
            raise MkvError(f"element {element_id:#x} of {size} bytes is too large")
        if len(buffer) < header + size:
            if events:  # a new top element began: report the closed cluster now
                return events
            return None
        payload = bytes(buffer[header : header + size])
        del buffer[: header + size]
        if element_id == mkv.CLUSTER:  # a cluster of known size: read its children
            events += self._known_cluster(payload)
        elif element_id == mkv.EBML:
            doc_type = dict(_children(payload)).get(mkv.DOC_TYPE, b"")
            events.append(Header(doc_type.decode(errors="replace")))
        elif element_id == mkv.TRACKS:
            events.append(Tracks(tuple(_track_entries(payload))))
        elif element_id == mkv.TAGS:
            events.append(Tags(tuple(_simple_tags(payload))))
        elif element_id == mkv.TIMECODE:
            if not self._cluster_open:
                raise MkvError("a Timecode outside a cluster")
            self._cluster_open = False
            self._cluster = int.from_bytes(payload, "big")
            events.append(ClusterStart(self._cluster))
        elif element_id == mkv.SIMPLE_BLOCK:
            if self._cluster is None:
                raise MkvError("a block before its cluster's Timecode")
            events.append(_block(payload, self._cluster))
        return events

    def _known_cluster(self, payload: bytes) -> list[Event]:
        inner = MkvReader()
        inner._cluster_open = True
        events = inner.feed(payload) + inner.end()
        return events


def _children(payload: bytes) -> list[tuple[int, bytes]]:
    children = []
    position = 0
    while position < len(payload):
        head = _vint(payload, position, keep_marker=True)
        sized = head and _vint(payload, position + head[1], keep_marker=False)
        if head is None or not sized or sized[0] == _UNKNOWN:
            raise MkvError("a truncated or unsized child element")
        start = position + head[1] + sized[1]
        end = start + sized[0]
        if end > len(payload):
            raise MkvError("a child element runs past its parent")
        children.append((head[0], payload[start:end]))
        position = end
    return children


def _track_entries(payload: bytes) -> list[TrackEntry]:
    entries = []
    for element_id, entry in _children(payload):
        if element_id != mkv.TRACK_ENTRY:
            continue
        fields = dict(_children(entry))
        video = dict(_children(fields.get(mkv.VIDEO, b"")))
        audio = dict(_children(fields.get(mkv.AUDIO, b"")))
        entries.append(
            TrackEntry(
                int.from_bytes(fields.get(mkv.TRACK_NUMBER, b"\x00"), "big"),
                fields.get(mkv.CODEC_ID, b"").decode(errors="replace"),
                fields.get(mkv.CODEC_PRIVATE, b""),
                int.from_bytes(fields.get(mkv.TRACK_TYPE, b"\x00"), "big"),
                int.from_bytes(video.get(mkv.PIXEL_WIDTH, b"\x00"), "big"),
                int.from_bytes(video.get(mkv.PIXEL_HEIGHT, b"\x00"), "big"),
                _float(audio.get(mkv.SAMPLING_FREQUENCY, b"")),
                int.from_bytes(audio.get(mkv.CHANNELS, b"\x00"), "big"),
            )
        )
    return entries


def _float(payload: bytes) -> float:
    """An EBML float: 4 or 8 bytes, big-endian (0 bytes: 0)."""
    if len(payload) == 4:
        return float(struct.unpack(">f", payload)[0])
    if len(payload) == 8:
        return float(struct.unpack(">d", payload)[0])
    if not payload:
        return 0.0
    raise MkvError(f"a float of {len(payload)} bytes")


def _simple_tags(payload: bytes) -> list[tuple[str, str]]:
    """Every SimpleTag's (name, value) in a Tags element, nested ones included."""
    tags: list[tuple[str, str]] = []
    for element_id, child in _children(payload):
        if element_id == mkv.TAG:
            tags += _simple_tags(child)
        elif element_id == mkv.SIMPLE_TAG:
            fields = _children(child)
            values = dict(fields)
            name = values.get(mkv.TAG_NAME, b"").decode(errors="replace")
            tags.append((name, values.get(mkv.TAG_STRING, b"").decode(errors="replace")))
            for kind, nested in fields:
                if kind == mkv.SIMPLE_TAG:
                    tags += _simple_tags(mkv_element(kind, nested))
    return tags


def _block(payload: bytes, cluster_timecode: int) -> Block:
    track = _vint(payload, 0, keep_marker=False)
    if track is None or len(payload) < track[1] + 3:
        raise MkvError("a truncated SimpleBlock")
    number, length = track
    relative = int.from_bytes(payload[length : length + 2], "big", signed=True)
    flags = payload[length + 2]
    keyframe, lacing = bool(flags & 0x80), (flags >> 1) & 0x03
    return Block(number, cluster_timecode + relative, keyframe, payload[length + 3 :], lacing)
