"""One PutMedia connection's MKV, held to the service's rules as it arrives
(kvs_local/rules.py lists them with their ErrorIds).

A fragment is a Cluster. It is acknowledged BUFFERING when its Timecode arrives, and
taken (written to the stream's file, RECEIVED and PERSISTED) once it is complete:
at its end-of-fragment tag, at the next Cluster, or at the end of the stream. The
Tags between a fragment's blocks and that point are the fragment's metadata; a Tags
element before any fragment counts for the next one. Acknowledgements carry the
cluster Timecode as the producer sent it (relative, with RELATIVE timecodes); what
is stored is the producer time (absolute).

Out-of-order fragments (4004) and implausible producer times (4007) are skipped and
the connection goes on; any other refusal ends the connection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.kvs_local import rules
from edge_agent.kvs_local.mkv_reader import (
    Block,
    ClusterEnd,
    ClusterStart,
    Header,
    MkvError,
    MkvReader,
    Tags,
    Tracks,
)
from edge_agent.kvs_local.stored_file import StoredFile
from edge_agent.media import h264
from edge_agent.media.mkv import END_OF_FRAGMENT, Frame, VideoTrack

if TYPE_CHECKING:
    from edge_agent.kvs_local.server import StreamState, _Handler

log = logging.getLogger(__name__)

#: Refusals after which the connection goes on (the fragment is skipped).
_SKIPPED = (rules.FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS, rules.INVALID_PRODUCER_TIMESTAMP)


@dataclass
class _Fragment:
    timecode: int  # as the producer sent it (the acknowledgements' FragmentTimecode)
    frames: list[Frame]  # producer times (absolute)


class Ingest:
    """One PutMedia connection's stream: rules, acks, the file of what was accepted."""

    def __init__(self, handler: _Handler, state: StreamState, offset_ms: int = 0) -> None:
        self.handler = handler
        self.endpoint = handler.endpoint
        self.state = state
        #: Added to cluster Timecodes for producer times (RELATIVE: the start timestamp).
        self.offset_ms = offset_ms
        self.reader = MkvReader()
        self.track: VideoTrack | None = None
        self.track_numbers: set[int] = set()
        self.frames: list[Frame] = []
        self.fragment_ms: int | None = None  # the current cluster's Timecode, as sent
        #: The last frame of the last fragment taken on this connection: the next
        #: fragment must start later.
        self.last_frame_ms: int | None = None
        self.fragment_bytes = 0
        self.skip = False  # the current fragment was refused: ignore its blocks
        #: A complete fragment waiting for its tags (or the next cluster) to be taken.
        self.pending: _Fragment | None = None
        self.tags = 0  # tags counted for the pending fragment (or the next one)
        self.file: StoredFile | None = None

    def run(self) -> None:
        try:
            try:
                for chunk in self.handler.read_chunks():
                    for event in self.reader.feed(chunk):
                        if not self._on(event):
                            return
                for event in self.reader.end():
                    if not self._on(event):
                        return
                self._take()
            except MkvError as err:
                self._error(rules.INVALID_MKV_DATA, str(err))
            except TimeoutError:
                self._take()
                self.handler.send_event({"EventType": "IDLE"})
        finally:
            if self.file is not None:
                self.file.close()

    def _on(self, event: object) -> bool:
        """Handle one MKV event; False ends the connection."""
        if isinstance(event, Header):
            if event.doc_type != rules.DOC_TYPE:
                return self._error(rules.INVALID_MKV_DATA, f"DocType {event.doc_type!r}")
            return True
        if isinstance(event, Tracks):
            return self._tracks(event)
        if isinstance(event, ClusterStart):
            return self._take() and self._cluster_start(event.timecode)
        if isinstance(event, Block):
            return self._block(event)
        if isinstance(event, ClusterEnd):
            return self._cluster_end()
        if isinstance(event, Tags):
            return self._tags(event)
        return True

    def _tracks(self, tracks: Tracks) -> bool:
        if len(tracks.entries) > rules.MAX_TRACKS:
            return self._error(rules.MORE_THAN_ALLOWED_TRACKS_FOUND, "more than 3 tracks")
        self.track_numbers = {entry.number for entry in tracks.entries}
        for entry in tracks.entries:
            problem = rules.codec_private_problem(entry.codec_id, entry.codec_private)
            if problem is not None:
                return self._error(rules.INVALID_MKV_DATA, problem)
        video = next((e for e in tracks.entries if e.track_type == 1), None)
        if video is not None:
            self.track = VideoTrack(video.codec_id, video.codec_private, video.width, video.height)
        return True

    def _cluster_start(self, timecode: int) -> bool:
        self.frames, self.fragment_bytes, self.skip = [], 0, False
        self.fragment_ms = timecode
        producer_ms = timecode + self.offset_ms
        problem = rules.producer_time_problem(
            producer_ms, int(time.time() * 1000), self.endpoint.max_future_ms
        )
        if problem is not None:
            self.skip = True
            return self._error(rules.INVALID_PRODUCER_TIMESTAMP, problem, timecode)
        if self.last_frame_ms is not None and producer_ms <= self.last_frame_ms:
            self.skip = True
            return self._error(
                rules.FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
                f"fragment at {producer_ms} is not after the last frame, {self.last_frame_ms}",
                timecode,
            )
        self._ack("BUFFERING", timecode)
        return True

    def _block(self, block: Block) -> bool:
        if self.skip:
            return True
        at = block.timecode + self.offset_ms
        if block.track not in self.track_numbers:
            return self._error(rules.TRACK_NUMBER_MISMATCH, f"block of unknown track {block.track}")
        if block.lacing:
            return self._error(rules.INVALID_MKV_DATA, "laced blocks are not taken")
        if not self.frames and not block.keyframe:
            return self._error(
                rules.INVALID_MKV_DATA, "the fragment does not start with a keyframe"
            )
        if not self.frames and self.last_frame_ms is not None and at <= self.last_frame_ms:
            self.skip = True
            return self._error(
                rules.FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
                f"frame at {at} is not after the last frame, {self.last_frame_ms}",
            )
        if self.frames and at <= self.frames[-1].time_ms:
            return self._error(
                rules.FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS, "frame times must increase"
            )
        try:
            h264.split_avcc(block.data)
        except ValueError:
            return self._error(rules.INVALID_MKV_DATA, "a frame is not AVCC (length-prefixed NALs)")
        assert self.fragment_ms is not None
        if block.timecode - self.fragment_ms > self.endpoint.max_fragment_ms:
            return self._error(rules.MAX_FRAGMENT_DURATION_REACHED, "the fragment is too long")
        self.fragment_bytes += len(block.data)
        if self.fragment_bytes > self.endpoint.max_fragment_bytes:
            return self._error(rules.MAX_FRAGMENT_SIZE_REACHED, "the fragment is too large")
        self.frames.append(Frame(at, block.keyframe, block.data))
        return True

    def _cluster_end(self) -> bool:
        if not self.skip and self.frames and self.fragment_ms is not None:
            self.pending = _Fragment(self.fragment_ms, self.frames)
        self.frames = []
        return True

    def _tags(self, tags: Tags) -> bool:
        self.tags += len(tags.tags)
        problems = [p for name, value in tags.tags if (p := rules.tag_problem(name, value))]
        if self.tags > rules.MAX_TAGS_PER_FRAGMENT:
            problems.append(f"{self.tags} tags (at most {rules.MAX_TAGS_PER_FRAGMENT})")
        if problems:
            at = self.pending.timecode if self.pending is not None else None
            self.pending = None
            return self._error(rules.FRAGMENT_METADATA_LIMIT_REACHED, "; ".join(problems), at)
        if any(name == END_OF_FRAGMENT for name, _ in tags.tags):
            return self._take()
        return True

    def _take(self) -> bool:
        """The pending fragment is complete: store and acknowledge it."""
        fragment, self.pending = self.pending, None
        if fragment is None:
            return True
        self.tags = 0
        if self.file is None:
            track = self.track or VideoTrack("V_MPEG4/ISO/AVC", b"", 0, 0)
            path = self._new_path(fragment.frames[0].time_ms)
            self.file = StoredFile(path, track)
            self.state.files.append(path)
        self.file.add(fragment.frames)
        self.last_frame_ms = fragment.frames[-1].time_ms
        with self.endpoint.lock:
            self.state.fragments += 1
            self.state.timecodes.append(fragment.frames[0].time_ms)
            self.state.accepted_at.append(time.time())
        number = self.endpoint.next_fragment_number()
        self._ack("RECEIVED", fragment.timecode, number)
        if self.endpoint.retention:
            self._ack("PERSISTED", fragment.timecode, number)
        return True

    def _new_path(self, first_ms: int) -> Path:
        """<stream>-<first frame ms>.mkv under the directory, numbered if a connection
        before this one (a retry of the same fragments) has that name already."""
        directory = self.endpoint.directory
        path = directory / f"{self.state.name}-{first_ms}.mkv"
        copy = 1
        while path.exists():
            copy += 1
            path = directory / f"{self.state.name}-{first_ms}-{copy}.mkv"
        if path.resolve().parent != directory.resolve():  # the stream name rule forbids it
            raise ValueError(f"{path.name!r} is not a file name")
        return path

    def _ack(self, event_type: str, timecode: int, number: str | None = None) -> None:
        event: dict[str, Any] = {"EventType": event_type, "FragmentTimecode": timecode}
        event["FragmentNumber"] = number or str(self.endpoint._next_number + 1)
        self.handler.send_event(event)

    def _error(self, error_id: int, message: str, timecode: int | None = None) -> bool:
        log.info("kvs-local: stream %s: error %d: %s", self.state.name, error_id, message)
        event: dict[str, Any] = {"EventType": "ERROR", "ErrorId": error_id}
        at = timecode if timecode is not None else self.fragment_ms
        if at is not None:
            event["FragmentTimecode"] = at
        event["FragmentNumber"] = str(self.endpoint._next_number + 1)
        self.handler.send_event(event)
        # A skipped fragment lets the connection go on; anything else about the
        # stream's data ends it.
        return error_id in _SKIPPED and self.skip
