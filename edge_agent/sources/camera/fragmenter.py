"""Encoded frames -> fragments: each starts at a keyframe and lasts about the target.

A fragment closes when a keyframe arrives at about ``target_ms`` after the fragment's
first frame (90 % of it or more: a camera whose GOP is the fragment duration delivers
its keyframes a few ms early as often as late, and a strict bound would make every
other fragment twice as long), and also before a frame would take it past ``max_ms`` (the service's
limit, and the 32.767 s a Matroska block can sit after its cluster). Frames between
such a forced close and the next keyframe cannot start a fragment; they are dropped
and counted (an encoder set to a GOP of the fragment duration never causes this; a
camera whose GOP is longer than ``max_ms`` does).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.media.mkv import MAX_CLUSTER_SPAN_MS, Frame, cluster

#: Kinesis Video's documented fragment limit is 10 s (the SDK's own bound is larger).
DEFAULT_MAX_FRAGMENT_MS = 10_000


@dataclass(frozen=True)
class Fragment:
    frames: tuple[Frame, ...]

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
        return cluster(self.frames)


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

    def add(self, frame: Frame) -> Fragment | None:
        """Take a frame; returns the fragment it completed, if any."""
        done = None
        if self._frames:
            span = frame.time_ms - self._frames[0].time_ms
            if frame.keyframe and span >= self._cut_ms:
                done = self._close()
            elif span > self.max_ms:
                done = self._close()
                self.forced_cuts += 1
        if not self._frames and not frame.keyframe:
            self.dropped_frames += 1
            return done
        self._frames.append(frame)
        return done

    @property
    def pending(self) -> int:
        """Frames of the fragment in progress (1 right after a frame began one)."""
        return len(self._frames)

    def flush(self) -> Fragment | None:
        """The fragment in progress (at the end of a stream or a connection)."""
        return self._close() if self._frames else None

    def _close(self) -> Fragment:
        fragment = Fragment(tuple(self._frames))
        self._frames = []
        return fragment
