"""Clip export: a camera's ring from one time to another as a playable file
(``edge-agent clip``), read-only while the agent runs.

The ring's fragments are Matroska Clusters with absolute times: behind one stream
header they are already a Matroska stream (what PutMedia sends). PyAV then copies
that stream's packets, untouched, into the file asked for (``.mkv`` or ``.mp4``), so
that it has an index and a duration, and starts at 0. The clip runs from the fragment
that holds ``from`` to the one that holds ``to``: its ends fall on keyframes (up to one
fragment more on each side). A change of the camera's stream (new parameter sets, a
new picture size) inside the range ends the clip there, and says so.
"""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import EdgeAgentError, FormatError
from edge_agent.media.fragment_meta import FragmentMeta
from edge_agent.media.mkv import stream_header
from edge_agent.spool import recordings

FORMATS = {".mkv": "matroska", ".mp4": "mp4"}


class ClipError(EdgeAgentError):
    """No clip can be made of that range (nothing recorded, an unknown format)."""


@dataclass(frozen=True)
class Clip:
    path: Path
    fragments: int
    from_ms: int
    to_ms: int  # the last frame's time
    cut_short: str  # why the clip ends before ``to`` ("" if it does not)


def export(conn: sqlite3.Connection, camera: str, from_ms: int, to_ms: int, output: Path) -> Clip:
    """Write the camera's recording from ``from_ms`` to ``to_ms`` into ``output``."""
    container_format = FORMATS.get(output.suffix.lower())
    if container_format is None:
        raise ClipError(f"{output}: the clip is written as .mkv or .mp4")
    if to_ms <= from_ms:
        raise ClipError("--to must be after --from")
    fragments = list(recordings.in_range(conn, camera, from_ms, to_ms))
    if not fragments:
        raise ClipError(f"camera {camera} has no recording in that range (see edge-agent events)")
    try:
        first = FragmentMeta.from_json(fragments[0].meta)
    except FormatError as err:
        raise ClipError(f"the recording's track cannot be read: {err}") from err
    taken, cut_short = [fragments[0]], ""
    for fragment in fragments[1:]:
        meta = FragmentMeta.from_json(fragment.meta)
        if meta.tracks != first.tracks:
            cut_short = f"the camera's stream changed at {fragment.start_ms} ms"
            break
        taken.append(fragment)
    with tempfile.TemporaryDirectory(prefix="edge-agent-clip-") as scratch:
        stream = Path(scratch) / "stream.mkv"
        with open(stream, "wb") as handle:
            handle.write(stream_header(first.track, first.audio))
            for fragment in taken:
                handle.write(fragment.payload)
        _copy_packets(stream, output, container_format)
    return Clip(output, len(taken), taken[0].start_ms, taken[-1].end_ms, cut_short)


def _copy_packets(source: Path, output: Path, container_format: str) -> None:
    """Every packet of ``source`` into ``output``, untouched, times from 0."""
    import av

    with (
        av.open(str(source), "r") as reader,
        av.open(str(output), "w", format=container_format) as writer,
    ):
        streams = {}
        for stream in reader.streams:
            if stream.type in ("video", "audio"):
                streams[stream.index] = writer.add_stream_from_template(stream)
        origin: int | None = None
        for packet in reader.demux(*[reader.streams[i] for i in streams]):
            first = packet.pts if packet.pts is not None else packet.dts
            if first is None:
                continue  # the demuxer's end-of-stream packet
            if origin is None:
                origin = first
            if packet.pts is not None:
                packet.pts -= origin
            if packet.dts is not None:
                packet.dts -= origin
            packet.stream = streams[packet.stream.index]
            writer.mux(packet)
