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

Tracks: every track entry in TrackInfo (at most 3) must have frames in every fragment,
which starts with a key frame of the video track (the first entry of TrackType 1). The
stored file keeps that track as its track 1 and the first audio entry as its track 2
(the producer SDK's numbers); blocks of any further track are checked but not stored.
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
    TrackEntry,
    Tracks,
)
from edge_agent.kvs_local.stored_file import StoredFile
from edge_agent.media import h264, mkv
from edge_agent.media.mkv import END_OF_FRAGMENT, AudioTrack, Frame, VideoTrack

if TYPE_CHECKING:
    from edge_agent.kvs_local.server import StreamState, _Handler

log = logging.getLogger(__name__)

#: Refusals after which the connection goes on (the fragment is skipped).
_SKIPPED = (rules.FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS, rules.INVALID_PRODUCER_TIMESTAMP)
#: Matroska's defaults for an audio track without SamplingFrequency / Channels.
_DEFAULT_HZ, _DEFAULT_CHANNELS = 8000, 1


@dataclass
class _Fragment:
    timecode: int  # as the producer sent it (the acknowledgements' FragmentTimecode)
    frames: list[Frame]  # producer times (absolute), the producer's track numbers


class Ingest:
    """One PutMedia connection's stream: rules, acks, the file of what was accepted."""

    def __init__(self, handler: _Handler, state: StreamState, offset_ms: int = 0) -> None:
        self.handler = handler
        self.endpoint = handler.endpoint
        self.state = state
        #: Added to cluster Timecodes for producer times (RELATIVE: the start timestamp).
        self.offset_ms = offset_ms
        self.reader = MkvReader()
        self.video: VideoTrack | None = None
        self.audio: AudioTrack | None = None
        self.track_numbers: set[int] = set()  # every entry of TrackInfo
        self.video_numbers: set[int] = set()  # the video tracks' (TrackType 1)
        #: The producer's track number -> the stored file's (1 video, 2 audio).
        self.stored_numbers: dict[int, int] = {}
        self.frames: list[Frame] = []
        #: The current fragment's last time on each track (producer time).
        self.last_of_track: dict[int, int] = {}
        self.fragment_ms: int | None = None  # the current cluster's Timecode, as sent
        #: The last frame of the last fragment taken on this connection: the next
        #: fragment must start later.
        self.last_frame_ms: int | None = None
        self.fragment_bytes = 0
        self.skip = False  # the current fragment was refused: ignore its blocks
        #: A complete fragment waiting for its tags (or the next cluster) to be taken.
        self.pending: _Fragment | None = None
        self.tags = 0  # tags counted for the pending fragment (or the next one)
        #: Its metadata (the end-of-fragment tag left out), as the service keeps it.
        self.metadata: list[tuple[str, str]] = []
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
        videos = [e for e in tracks.entries if e.track_type == mkv.TRACK_TYPE_VIDEO]
        audios = [e for e in tracks.entries if e.track_type == mkv.TRACK_TYPE_AUDIO]
        self.video_numbers = {entry.number for entry in videos}
        self.video, self.audio, self.stored_numbers = None, None, {}
        if videos:
            video = videos[0]
            self.video = VideoTrack(video.codec_id, video.codec_private, video.width, video.height)
            self.stored_numbers[video.number] = mkv.VIDEO_TRACK
        if audios:
            self.audio = _audio_track(audios[0])
            self.stored_numbers[audios[0].number] = mkv.AUDIO_TRACK
        return True

    def _cluster_start(self, timecode: int) -> bool:
        self.frames, self.fragment_bytes, self.skip = [], 0, False
        self.last_of_track = {}
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
        video = block.track in self.video_numbers
        first_video = self.stored_numbers.get(block.track) == mkv.VIDEO_TRACK
        if not self.frames and not (first_video and block.keyframe):
            return self._error(
                rules.INVALID_MKV_DATA,
                "the fragment does not start with a keyframe of the video track",
            )
        assert self.fragment_ms is not None
        if block.timecode < self.fragment_ms:
            return self._error(
                rules.INVALID_MKV_DATA,
                f"a block {self.fragment_ms - block.timecode} ms before its cluster's Timecode",
            )
        if not self.frames and self.last_frame_ms is not None and at <= self.last_frame_ms:
            self.skip = True
            return self._error(
                rules.FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
                f"frame at {at} is not after the last frame, {self.last_frame_ms}",
            )
        if at <= self.last_of_track.get(block.track, at - 1):
            return self._error(
                rules.FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
                f"track {block.track}'s frame times must increase",
            )
        if self.frames and at < self.frames[-1].time_ms:
            return self._error(
                rules.FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
                f"a block of track {block.track} at {at} is earlier than the block before it",
            )
        if video:
            try:
                h264.split_avcc(block.data)
            except ValueError:
                return self._error(
                    rules.INVALID_MKV_DATA, "a frame is not AVCC (length-prefixed NALs)"
                )
        elif not block.data:
            return self._error(rules.INVALID_MKV_DATA, f"an empty block of track {block.track}")
        if block.timecode - self.fragment_ms > self.endpoint.max_fragment_ms:
            return self._error(rules.MAX_FRAGMENT_DURATION_REACHED, "the fragment is too long")
        self.fragment_bytes += len(block.data)
        if self.fragment_bytes > self.endpoint.max_fragment_bytes:
            return self._error(rules.MAX_FRAGMENT_SIZE_REACHED, "the fragment is too large")
        self.frames.append(Frame(at, block.keyframe, block.data, block.track))
        self.last_of_track[block.track] = at
        return True

    def _cluster_end(self) -> bool:
        frames, self.frames = self.frames, []
        if self.skip or not frames or self.fragment_ms is None:
            return True
        missing = self.track_numbers - {frame.track for frame in frames}
        if missing:
            return self._error(
                rules.FRAMES_MISSING_FOR_TRACK,
                f"the fragment has no frames of track(s) {sorted(missing)}",
            )
        self.pending = _Fragment(self.fragment_ms, frames)
        return True

    def _tags(self, tags: Tags) -> bool:
        self.tags += len(tags.tags)
        problems = [p for name, value in tags.tags if (p := rules.tag_problem(name, value))]
        if self.tags > rules.MAX_TAGS_PER_FRAGMENT:
            problems.append(f"{self.tags} tags (at most {rules.MAX_TAGS_PER_FRAGMENT})")
        if problems:
            at = self.pending.timecode if self.pending is not None else None
            self.pending, self.metadata = None, []
            return self._error(rules.FRAGMENT_METADATA_LIMIT_REACHED, "; ".join(problems), at)
        self.metadata += [(name, value) for name, value in tags.tags if name != END_OF_FRAGMENT]
        if any(name == END_OF_FRAGMENT for name, _ in tags.tags):
            return self._take()
        return True

    def _take(self) -> bool:
        """The pending fragment is complete: store and acknowledge it."""
        fragment, self.pending = self.pending, None
        if fragment is None:
            return True
        self.tags = 0
        metadata, self.metadata = self.metadata, []
        if self.file is None:
            video = self.video or VideoTrack(mkv.H264, b"", 0, 0)
            path = self._new_path(fragment.frames[0].time_ms)
            self.file = StoredFile(path, video, self.audio)
            self.state.files.append(path)
        numbers = self.stored_numbers
        self.file.add(
            [
                Frame(f.time_ms, f.keyframe, f.data, numbers[f.track])
                for f in fragment.frames
                if f.track in numbers
            ]
        )
        self.last_frame_ms = fragment.frames[-1].time_ms
        with self.endpoint.lock:
            self.state.fragments += 1
            self.state.timecodes.append(fragment.frames[0].time_ms)
            self.state.accepted_at.append(time.time())
            self.state.metadata.append(dict(metadata))
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


def _audio_track(entry: TrackEntry) -> AudioTrack:
    """The stored file's audio track, as TrackInfo has it (Matroska's defaults for a
    missing rate or channel count)."""
    return AudioTrack(
        entry.codec_id,
        entry.codec_private,
        round(entry.sampling_hz) or _DEFAULT_HZ,
        entry.channels or _DEFAULT_CHANNELS,
    )
