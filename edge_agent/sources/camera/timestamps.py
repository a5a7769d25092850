"""Frame times for Kinesis Video: absolute (ms since the Unix epoch) and strictly
increasing, across frames, fragments, reconnects and restarts, whatever the clocks do.

A camera's own timestamps (pts) are steady but start anywhere and restart with every
connection; the wall clock is absolute but may step (NTP, a dead RTC battery). So each
frame first gets its time on the stream's own timeline (``stream_ms``, from its pts)
and the arrival time is noted; when a fragment is stored, its frames are placed on the
wall clock (``absolute_ms``) by the connection's anchor: the smallest
``arrival - stream time`` seen, that is the frame that came with the least delay. The
anchor is settled by the first fragment of a connection and kept until the next one
(``reanchor``), so a wall-clock step within a connection changes nothing. Anchoring at
the first frame instead would be wrong by up to a second: FFmpeg hands over the frames
it read while probing a stream in one burst, late, and the whole stream would be
stamped ahead of real time.

Whatever comes out is at least one ms after the previous frame: a frame that would not
be (the wall clock stepped back, a camera repeated a pts) is moved forward and counted.
A restart carries on from the last time the spool holds (``resume_after``).

A file read faster than real time (``realtime = false``) has no arrival times worth
anchoring on: its frames would be stamped up to the file's length into the future, and
the service refuses those (4007). Such a connection is *backdated* instead
(``reanchor(backdate_ms=...)``): its first frame is placed the file's duration before
now (but after the last time stored), so its last frame ends by now; the camera waits
before storing a fragment that would still end in the future (a file replayed again at
once is paced to real time that way).

A camera's own times may also jump within a connection (an encoder that restarts, a
server that seeks a shared stream for a client that joined): a frame whose pts goes
back more than ``REORDER_MS`` (B-frames go back a few frames), or ahead of the previous
frame's by more than ``DISCONTINUITY_MS``, starts a new
stretch of the stream's timeline, joined to the old one by the time that passed between
the two frames' arrivals (monotonic clock), so times neither bunch up (a jump back) nor
leap (a jump ahead). Network delays and sources slower or faster than real time do not
change the pts steps, so they are not taken for jumps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

#: A pts step forward larger than this, or back by more than REORDER_MS, is a jump in
#: the stream's own times.
DISCONTINUITY_MS = 5_000
REORDER_MS = 1_000


class FrameClock:
    def __init__(
        self,
        *,
        resume_after_ms: int = 0,
        wall_ms: Callable[[], int] | None = None,
        monotonic_ms: Callable[[], int] | None = None,
    ) -> None:
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._monotonic_ms = monotonic_ms or (lambda: time.monotonic_ns() // 1_000_000)
        self._last_ms = resume_after_ms
        self._offset: int | None = None  # wall ms - stream ms, the anchor
        self._settled = False  # the anchor is fixed once a fragment has been placed
        self._last_stream: tuple[int, int] | None = None  # (stream ms, wall ms) last seen
        self._shift = 0  # added to the stream's own times: the jumps joined so far
        self._previous: tuple[int, int] | None = None  # (own ms, monotonic arrival ms)
        self.repaired = 0  # frames moved forward to keep time increasing
        self.discontinuities = 0  # jumps in the stream's own times
        self._backdate: int | None = None  # ms: see ``reanchor``

    @property
    def last_ms(self) -> int:
        return self._last_ms

    def reanchor(self, *, backdate_ms: int | None = None) -> None:
        """A new connection: its pts start afresh; its frames anchor again.
        ``backdate_ms``: a file read faster than real time, of that duration; its first
        frame goes that long before now (after the last time stored)."""
        self._offset = None
        self._settled = False
        self._last_stream = None
        self._shift = 0
        self._previous = None
        self._backdate = backdate_ms

    def stream_ms(self, pts: int | None, time_base: Fraction | None) -> int:
        """A frame just arrived: its time on the stream's timeline. Without a pts, the
        time elapsed since the previous frame arrived is added to that frame's time."""
        now = self._wall_ms()
        if pts is not None and time_base is not None:
            num, den = time_base.numerator * 1000, time_base.denominator  # ints: no Fraction
            own = (2 * pts * num + den) // (2 * den)  # rounded to the nearest ms
            arrived = self._monotonic_ms()
            previous = self._previous
            if previous is not None and not -REORDER_MS <= own - previous[0] <= DISCONTINUITY_MS:
                # a jump: this frame follows the previous one by the time between them
                step = max(1, arrived - previous[1])
                self._shift = previous[0] + self._shift + step - own
                self.discontinuities += 1
            self._previous = (own, arrived)
            stream = own + self._shift
        elif self._last_stream is not None:
            stream = self._last_stream[0] + max(1, now - self._last_stream[1])
        else:
            stream = 0
        self._last_stream = (stream, now)
        if self._backdate is not None and self._offset is None:
            self._offset = max(now - self._backdate, self._last_ms + 1) - stream
            self._settled = True
        if not self._settled and (self._offset is None or now - stream < self._offset):
            self._offset = now - stream
        return stream

    def aligned_ms(self, pts: int, time_base: Fraction) -> int:
        """Another track's pts (one with the same origin as the video's: a file's, or
        FFmpeg's RTSP, which aligns its streams) on the video's stream timeline."""
        num, den = time_base.numerator * 1000, time_base.denominator
        return (2 * pts * num + den) // (2 * den) + self._shift

    def placed_ms(self, stream_ms: int) -> int:
        """Another track's frame being stored: its absolute time by the video's anchor
        (without the video's repairs: the caller keeps its own track increasing)."""
        if self._offset is None:
            self._offset = self._wall_ms() - stream_ms
        return self._offset + stream_ms

    def ahead_of_now_ms(self, absolute_ms: int) -> int:
        """How far in the future an absolute time is (0 if it is not)."""
        return max(0, absolute_ms - self._wall_ms())

    def absolute_ms(self, stream_ms: int) -> int:
        """A frame being stored: its absolute time, after the previous frame's."""
        if self._offset is None:  # never seen: anchor it now
            self._offset = self._wall_ms() - stream_ms
        self._settled = True
        at = self._offset + stream_ms
        if at <= self._last_ms:
            self.repaired += 1
            at = self._last_ms + 1
        self._last_ms = at
        return at


def timed_packets(packets: Iterator[Any], stream: Any) -> Iterator[Any]:
    """Every packet with a pts. One without takes its dts, or the end of the packet
    before it (raw H.264 has no timestamps at all). The first packet of some RTSP
    sessions has none while the rest have large ones (a server that was already
    streaming): it is held until the next packet and timed one frame before it, so it
    cannot open a gap of many seconds at the start of the stream."""
    rate = stream.average_rate or stream.guessed_rate or 30
    frame_ticks = max(1, round(1 / (rate * stream.time_base))) if stream.time_base else 1
    held = None
    next_pts: int | None = None
    for packet in packets:
        if packet.pts is None:
            packet.pts = packet.dts if packet.dts is not None else next_pts
        if packet.pts is None:
            if held is None:
                held = packet  # the first packet: wait for the next one's time
                continue
            held.pts = 0  # two without any: a stream with no timestamps, count from 0
            packet.pts = held.duration or frame_ticks
        if held is not None:
            if held.pts is None:
                held.pts = packet.pts - (held.duration or frame_ticks)
            yield held
            held = None
        next_pts = packet.pts + (packet.duration or frame_ticks)
        yield packet
    if held is not None:
        held.pts = 0
        yield held


def reordered(previous: int | None, pts: int | None, time_base: Fraction | None) -> bool:
    """A picture (in decode order) shown before the one before it, by less than
    REORDER_MS: a B-frame. (A longer step back is a jump in the camera's own times.)"""
    if previous is None or pts is None or time_base is None or pts >= previous:
        return False
    return (previous - pts) * time_base * 1000 < REORDER_MS


def rtp_reordered(previous: int | None, timestamp: int, clock_rate: int) -> bool:
    """``reordered`` for RTP times (32 bits, wrapping)."""
    if previous is None:
        return False
    back = (previous - timestamp) % 2**32
    return 0 < back < clock_rate * REORDER_MS // 1000
