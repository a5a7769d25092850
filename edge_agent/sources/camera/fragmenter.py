"""Encoded frames -> fragments: each starts at a keyframe and lasts about the target.

A fragment closes when a keyframe arrives at about ``target_ms`` after the fragment's
first frame (90 % of it or more: a camera whose GOP is the fragment duration delivers
its keyframes a few ms early as often as late, and a strict bound would make every
other fragment twice as long), and also before a frame would take it past ``max_ms`` (the service's
limit, and the 32.767 s a Matroska block can sit after its cluster). Frames between
such a forced close and the next keyframe cannot start a fragment; they are dropped
and counted (an encoder set to a GOP of the fragment duration never causes this; a
camera whose GOP is longer than ``max_ms`` does).

Audio (``add_audio``, when the camera's audio is taken) shares the video's fragments:
a fragment holds the audio frames from its first video frame up to the next
fragment's, so the tracks' timelines are cut at the same instant and no audio falls
between fragments. A camera's audio arrives ahead of or behind its video, so a
fragment closed by a keyframe waits until audio up to that keyframe's time has come,
or until the video is AUDIO_WAIT_MS past it (the audio is late or has stopped: what
arrives later for it is dropped and counted). Audio from before the first fragment's
start (a connection's first keyframe) is dropped the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from edge_agent.media.mkv import (
    MAX_CLUSTER_SPAN_MS,
    Frame,
    cluster,
    cluster_parts,
    interleaved,
)
from edge_agent.records import PayloadPieces

#: How long a fragment closed by a keyframe waits for the audio up to that keyframe.
AUDIO_WAIT_MS = 1_000
#: Audio frames held for fragments not yet closed, at most (30 s of 1024-sample AAC at
#: 48 kHz; more only while the video has stopped, until the camera's stall timeout).
MAX_HELD_AUDIO = 1_500

#: Kinesis Video's documented fragment limit is 10 s (the SDK's own bound is larger).
DEFAULT_MAX_FRAGMENT_MS = 10_000


@dataclass(frozen=True)
class Fragment:
    frames: tuple[Frame, ...]  # the video's
    audio: tuple[Frame, ...] = ()

    @property
    def start_ms(self) -> int:
        return self.frames[0].time_ms

    @property
    def duration_ms(self) -> int:
        """From the first frame to the last (the last frame's own duration unknown)."""
        return self.frames[-1].time_ms - self.frames[0].time_ms

    @property
    def size(self) -> int:
        return sum(len(frame.data) for frame in self.frames)

    def cluster(self) -> bytes:
        return cluster(self._in_order())

    def cluster_pieces(self) -> PayloadPieces:
        """The Cluster as its pieces, the frames' bytes among them (not joined)."""
        return PayloadPieces(cluster_parts(self._in_order()))

    def _in_order(self) -> Sequence[Frame]:
        return interleaved(self.frames, self.audio) if self.audio else self.frames


class Fragmenter:
    def __init__(self, target_ms: int = 2000, max_ms: int = DEFAULT_MAX_FRAGMENT_MS) -> None:
        if not 0 < target_ms <= max_ms <= MAX_CLUSTER_SPAN_MS:
            raise ValueError(
                f"need 0 < target ({target_ms} ms) <= max ({max_ms} ms) <= {MAX_CLUSTER_SPAN_MS} ms"
            )
        self.target_ms = target_ms
        self.max_ms = max_ms
        self._cut_ms = target_ms * 9 // 10
        self._frames: list[Frame] = []
        self.dropped_frames = 0  # waiting for a keyframe to start a fragment
        self.forced_cuts = 0  # fragments closed at max_ms instead of at a keyframe
        self._audio: deque[Frame] = deque()  # audio not yet in a fragment, in time order
        self._with_audio = False  # audio has come: closed fragments wait for theirs
        #: A closed fragment's video frames and the time its successor starts at.
        self._waiting: tuple[list[Frame], int] | None = None
        self.dropped_audio = 0  # before a fragment, late, or out of order

    def add(self, frame: Frame) -> Fragment | None:
        """Take a video frame; returns the fragment it completed, if any."""
        done = None
        waiting = self._waiting
        if waiting is not None and frame.time_ms - waiting[1] >= AUDIO_WAIT_MS:
            done = self._release()  # the audio is late: the fragment goes without it
        if self._frames:
            span = frame.time_ms - self._frames[0].time_ms
            if frame.keyframe and span >= self._cut_ms:
                done = self._close(frame.time_ms) or done
            elif span > self.max_ms:
                done = self._close(frame.time_ms) or done
                self.forced_cuts += 1
        if not self._frames and not frame.keyframe:
            self.dropped_frames += 1
            return done
        self._frames.append(frame)
        return done

    def expect_audio(self, expected: bool) -> None:
        """Whether audio comes with the video (from the next fragment on): fragments
        then wait for theirs. (The first audio frame turns it on as well.)"""
        self._with_audio = expected

    def add_audio(self, frame: Frame) -> Fragment | None:
        """Take an audio frame; returns the fragment it completed, if any (one that was
        waiting for the audio up to its end)."""
        self._with_audio = True
        audio = self._audio
        if audio and frame.time_ms <= audio[-1].time_ms:
            self.dropped_audio += 1  # not after the one before: the track must increase
            return None
        audio.append(frame)
        if len(audio) > MAX_HELD_AUDIO:
            audio.popleft()
            self.dropped_audio += 1
        waiting = self._waiting
        if waiting is not None and frame.time_ms >= waiting[1]:
            return self._release()
        return None

    @property
    def pending(self) -> int:
        """Frames of the fragment in progress (1 right after a frame began one)."""
        return len(self._frames)

    def flush(self) -> list[Fragment]:
        """The fragments not yet returned (at the end of a stream or a connection): one
        waiting for its audio, and the one in progress with the audio that came for it."""
        done = [self._release()] if self._waiting is not None else []
        if self._frames:
            frames, self._frames = self._frames, []
            done.append(self._fragment(frames, frames[0].time_ms + self.max_ms + 1))
        self._audio.clear()
        return done

    def _close(self, end_ms: int) -> Fragment | None:
        """The fragment in progress is complete; the next one starts at ``end_ms``. With
        audio, it waits for its audio (returning the one that was waiting, if any)."""
        frames, self._frames = self._frames, []
        if not self._with_audio:
            return Fragment(tuple(frames))
        released = self._release() if self._waiting is not None else None
        self._waiting = (frames, end_ms)
        return released

    def _release(self) -> Fragment:
        assert self._waiting is not None
        (frames, end_ms), self._waiting = self._waiting, None
        return self._fragment(frames, end_ms)

    def _fragment(self, frames: list[Frame], end_ms: int) -> Fragment:
        """The video frames with the audio from their start up to ``end_ms`` (and within
        the fragment's longest span: after a gap in the video, the rest is dropped)."""
        start, audio, taken = frames[0].time_ms, self._audio, []
        end_ms = min(end_ms, start + self.max_ms + 1)
        while audio and audio[0].time_ms < end_ms:
            first = audio.popleft()
            if first.time_ms >= start:
                taken.append(first)
            else:
                self.dropped_audio += 1
        return Fragment(tuple(frames), tuple(taken))
