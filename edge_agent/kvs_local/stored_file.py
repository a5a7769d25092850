"""The MKV file kvs-local keeps of one stream's connection: written fragment by
fragment as they are accepted, and finished on close so that players know its length
and can seek.

    EBML header
    Segment          unknown size while written; its size is set on close
      Void           room kept at the start; on close a SeekHead (Info, Tracks, Cues)
      Info           SegmentUID, TimecodeScale 1 ms, MuxingApp, WritingApp, Duration
                     (0 while written, set on close)
      Tracks         the connection's video track (1) and audio track (2), if any
      Cluster        one per accepted fragment, sized, starting with its video keyframe;
                     every block with its own track number
      Cues           written on close: a CuePoint (time, cluster position) per cluster,
                     on the video track (a cluster's first frame is a video keyframe)

The Duration runs from the first frame to the end of the last frame of any track (a
track's frame duration: the video's nominal one, else the gap between its first two
frames).

A file whose writer never closed (the process was killed) is still a playable stream
of unknown size, only without duration, cues and seek head.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

from edge_agent import __version__
from edge_agent.media import mkv
from edge_agent.media.ebml import (
    UNKNOWN_SIZE,
    binary,
    element,
    float64,
    id_bytes,
    master,
    string,
    uint,
    unknown_size_master,
)

SEEK_HEAD = 0x114D9B74
SEEK = 0x4DBB
SEEK_ID = 0x53AB
SEEK_POSITION = 0x53AC
VOID = 0xEC
DURATION = 0x4489
CUES = 0x1C53BB6B
CUE_POINT = 0xBB
CUE_TIME = 0xB3
CUE_TRACK_POSITIONS = 0xB7
CUE_TRACK = 0xF7
CUE_CLUSTER_POSITION = 0xF1
#: Bytes kept at the start of the Segment for the SeekHead (three entries need 68).
SEEK_HEAD_ROOM = 96


def void(size: int) -> bytes:
    """A Void element of exactly ``size`` bytes (2 to 128)."""
    if not 2 <= size <= 128:
        raise ValueError(f"no one-byte-sized Void of {size} bytes")
    return bytes((VOID, 0x80 | (size - 2))) + bytes(size - 2)


def _seek(element_id: int, position: int) -> bytes:
    # A fixed 8-byte position: the SeekHead's length does not depend on the file's.
    return master(
        SEEK,
        binary(SEEK_ID, id_bytes(element_id)),
        element(SEEK_POSITION, position.to_bytes(8, "big")),
    )


class StoredFile:
    """One connection's accepted fragments, as a seekable MKV file."""

    def __init__(
        self, path: Path, video: mkv.VideoTrack, audio: mkv.AudioTrack | None = None
    ) -> None:
        self.path = path
        self.video = video
        self.audio = audio
        self.track_numbers = {mkv.VIDEO_TRACK} | ({mkv.AUDIO_TRACK} if audio else set())
        self._file = path.open("xb")
        self._file.write(mkv.ebml_header())
        self._segment_size_at = self._file.tell() + len(id_bytes(mkv.SEGMENT))
        self._file.write(unknown_size_master(mkv.SEGMENT))
        self._segment_start = self._file.tell()
        self._file.write(void(SEEK_HEAD_ROOM))
        app = f"edge-agent {__version__} kvs-local"
        info = master(
            mkv.INFO,
            binary(mkv.SEGMENT_UID, os.urandom(16)),
            uint(mkv.TIMECODE_SCALE, mkv.TIMECODE_SCALE_NS),
            string(mkv.MUXING_APP, app),
            string(mkv.WRITING_APP, app),
            float64(DURATION, 0.0),
        )
        self._info_at = self._position()
        self._duration_at = self._file.tell() + len(info) - 8  # the float's bytes
        self._file.write(info)
        self._tracks_at = self._position()
        self._file.write(mkv.tracks(video, audio))
        self._file.flush()
        #: (time in ms, cluster position in the Segment) of every cluster written
        self.cue_points: list[tuple[int, int]] = []
        self._first_ms: int | None = None
        self._end_ms = 0
        #: Each track's frame duration (ms), once known.
        self._frame_ms: dict[int, int] = {}
        if video.frame_duration_ns:
            self._frame_ms[mkv.VIDEO_TRACK] = video.frame_duration_ns // 1_000_000

    def _position(self) -> int:
        return self._file.tell() - self._segment_start

    def add(self, frames: Sequence[mkv.Frame]) -> None:
        """One fragment (its frames' times absolute, ms; tracks 1 and 2) as a sized
        Cluster."""
        unknown = {frame.track for frame in frames} - self.track_numbers
        if unknown:
            raise ValueError(f"frames of tracks {sorted(unknown)} not in this file")
        stream = mkv.cluster(frames)  # validates the frames; an unknown-size cluster
        body = stream[len(unknown_size_master(mkv.CLUSTER)) :]
        self.cue_points.append((frames[0].time_ms, self._position()))
        self._file.write(element(mkv.CLUSTER, body))
        self._file.flush()
        if self._first_ms is None:
            self._first_ms = frames[0].time_ms
        last: dict[int, int] = {}
        for frame in frames:
            before = last.get(frame.track)
            if before is not None and frame.track not in self._frame_ms:
                self._frame_ms[frame.track] = frame.time_ms - before
            last[frame.track] = frame.time_ms
        ends = (at + max(self._frame_ms.get(track, 0), 1) for track, at in last.items())
        self._end_ms = max(self._end_ms, *ends)

    def close(self) -> None:
        """Cues at the end; Duration, SeekHead and the Segment's size set in place."""
        try:
            cues_at = self._position()
            self._file.write(
                master(
                    CUES,
                    *(
                        master(
                            CUE_POINT,
                            uint(CUE_TIME, at),
                            master(
                                CUE_TRACK_POSITIONS,
                                uint(CUE_TRACK, mkv.VIDEO_TRACK),
                                uint(CUE_CLUSTER_POSITION, position),
                            ),
                        )
                        for at, position in self.cue_points
                    ),
                )
            )
            segment_size = self._position()
            seek_head = master(
                SEEK_HEAD,
                _seek(mkv.INFO, self._info_at),
                _seek(mkv.TRACKS, self._tracks_at),
                _seek(CUES, cues_at),
            )
            self._file.seek(self._segment_start)
            self._file.write(seek_head + void(SEEK_HEAD_ROOM - len(seek_head)))
            duration = float(self._end_ms - (self._first_ms or 0)) if self.cue_points else 0.0
            self._file.seek(self._duration_at)
            self._file.write(struct.pack(">d", duration))
            self._file.seek(self._segment_size_at)
            self._file.write((segment_size | (1 << 56)).to_bytes(len(UNKNOWN_SIZE), "big"))
        finally:
            self._file.close()
