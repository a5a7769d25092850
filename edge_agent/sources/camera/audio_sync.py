"""An RTSP camera's audio, placed on its video's stream timeline.

The audio and the video of an RTSP session are separate RTP streams: each has its own
clock rate and a random starting timestamp, so their timestamps say nothing about each
other. Two things do:

* **RTCP sender reports** (RFC 3550 6.4.1): each stream's server says, every few
  seconds, which RTP timestamp belongs to which wall-clock (NTP) instant of the
  server's own clock. With one report of each stream, an audio timestamp converts to
  the instant it was captured, and that instant to the video timestamp of the same
  instant: exact, whatever the encoders' and the network's delays.
* **Arrival times**, until both reports have come (servers send the first one within
  a few seconds): each stream's smallest ``arrival - timestamp`` is the packet that came
  with the least delay, as FrameClock anchors the video; the two such anchors give the
  same conversion, off by the difference between the streams' encoding delays.

An audio frame's place is then estimated as its distance from the newest video frame,
added to that frame's stream time: it follows the video's timeline through its jumps
and wraps (timestamps.py), and needs nothing of the video's own timestamps but the
newest.

The estimates move (each new least delayed packet, the first reports), while audio
must play without holes or overlaps. So the audio keeps its own timeline, its RTP
timestamps plus an offset, and the offset moves to the estimate only when the two
are more than RESYNC_MS apart (RESYNC_BY_ARRIVAL_MS before the reports): once when
the reports replace arrival times (if those were that far off), and when the video's
timeline jumps. Such a resync is counted;
the frames it puts before the last one stored are dropped (camera_audio.py).
"""

from __future__ import annotations

from edge_agent.sources.camera import rtp

#: How far the audio's own timeline may be from the estimate before it is moved (ms):
#: by the sender reports, and by arrival times, which wobble by tens of ms while the
#: least delayed packets are still being found (reads come a quarter second apart).
RESYNC_MS = 25
RESYNC_BY_ARRIVAL_MS = 60


class AudioSync:
    """``video`` with each video frame, ``audio`` for each audio frame's stream time,
    ``sender_report`` with each RTCP sender report."""

    def __init__(self, video_rate: int, audio_rate: int) -> None:
        self._video_rate = video_rate
        self._audio_rate = audio_rate
        self._video: tuple[int, int] | None = None  # newest video frame: (timestamp, stream ms)
        # The smallest arrival - timestamp (ms) of each stream: its least delayed packet.
        self._video_anchor: float | None = None
        self._audio_anchor: float | None = None
        self._audio_last: int | None = None  # the newest audio timestamp (extended)
        # The newest sender report of each stream: (NTP seconds, extended RTP timestamp).
        self._video_report: tuple[float, int] | None = None
        self._audio_report: tuple[float, int] | None = None
        #: The audio's own timeline: stream ms = its timestamp in ms + this.
        self._offset: float | None = None
        self.resyncs = 0  # the audio's timeline moved to the estimate

    @property
    def by_reports(self) -> bool:
        """Whether the audio is placed by the sender reports (else by arrival times)."""
        return self._video_report is not None and self._audio_report is not None

    def video(self, timestamp: int, stream_ms: int, arrival_ms: float) -> None:
        """A video frame: its extended RTP timestamp, its stream time, when it arrived."""
        self._video = (timestamp, stream_ms)
        anchor = arrival_ms - timestamp * 1000 / self._video_rate
        if self._video_anchor is None or anchor < self._video_anchor:
            self._video_anchor = anchor

    def sender_report(self, of_audio: bool, ntp_s: float, rtp_timestamp: int) -> None:
        if of_audio:
            if self._audio_last is not None:
                self._audio_report = (ntp_s, rtp.extend(rtp_timestamp, self._audio_last))
        elif self._video is not None:
            self._video_report = (ntp_s, rtp.extend(rtp_timestamp, self._video[0]))

    def audio(self, raw_timestamp: int, arrival_ms: float) -> int | None:
        """One audio frame's time on the video's stream timeline (ms); None before the
        first video frame."""
        placed = self.place([raw_timestamp], arrival_ms)
        return placed[0] if placed else None

    def place(self, raw_timestamps: list[int], arrival_ms: float) -> list[int]:
        """The times on the video's stream timeline (ms) of audio frames that arrived
        together (empty before the first video frame)."""
        rate = self._audio_rate
        last = self._audio_last
        extended = []
        for raw in raw_timestamps:
            last = raw if last is None else rtp.extend(raw, last)
            extended.append(last)
        if last is None:
            return []
        self._audio_last = last
        anchor = arrival_ms - last * 1000 / rate  # the newest of those that came together
        if self._audio_anchor is None or anchor < self._audio_anchor:
            self._audio_anchor = anchor
        estimate = self._estimate()
        if estimate is None:
            return []
        offset, tolerance = estimate
        if self._offset is None or abs(self._offset - offset) > tolerance:
            if self._offset is not None:
                self.resyncs += 1
            self._offset = offset
        offset, scale = self._offset, 1000 / rate
        return [round(timestamp * scale + offset) for timestamp in extended]

    def _estimate(self) -> tuple[float, float] | None:
        """Where the audio belongs: the offset (ms) from its timestamps (in ms) to the
        video's stream times, and how far the audio's own may be from it."""
        if self._video is None or self._video_anchor is None or self._audio_anchor is None:
            return None
        video_timestamp, video_ms = self._video
        video_report, audio_report = self._video_report, self._audio_report
        if video_report is not None and audio_report is not None:
            audio_origin = audio_report[0] * 1000 - audio_report[1] * 1000 / self._audio_rate
            video_at = video_report[0] + (video_timestamp - video_report[1]) / self._video_rate
            return video_ms + audio_origin - video_at * 1000, RESYNC_MS
        video_at = video_timestamp * 1000 / self._video_rate + self._video_anchor
        return video_ms + self._audio_anchor - video_at, RESYNC_BY_ARRIVAL_MS
