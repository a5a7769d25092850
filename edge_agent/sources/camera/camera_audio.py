"""A camera's audio (``audio = true``): from the built-in RTSP client or PyAV to audio
frames on the video's stream timeline, for the fragmenter to put beside the video.

    RTSP  session.audio_packets, taken with each video frame -> depacketizer
          (rtp_audio.py) -> AudioSync (sender reports, else arrival times) -> frames
    PyAV  the audio stream's packets, demuxed with the video -> frames (ADTS headers
          removed) at their pts on the video's timeline (FrameClock.aligned_ms)

Frames wait in ``pending`` until the capture loop hands them to the fragmenter (after
each video frame: the same thread, no locks). When the fragment is stored, ``placed``
puts its audio on the wall clock by the video's anchor, keeping the track's times
increasing and never before the fragment's first video frame.

What the audio is doing is one line of status (``state``): "off", "none" (the camera
sends no audio), the track ("AAC 16000 Hz 1 ch"), or why it is not taken; a problem is
logged once per connection kind, not at every reconnect.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from edge_agent.errors import FormatError
from edge_agent.media.mkv import AAC, AUDIO_TRACK, AudioTrack, Frame
from edge_agent.sources.camera.audio_codecs import (
    RTP_AUDIO_ENCODINGS,
    AudioDepacketizer,
    AudioUnsupported,
    PyavAudio,
    pyav_audio,
    rtp_audio,
)
from edge_agent.sources.camera.audio_sync import AudioSync
from edge_agent.sources.camera.rtsp_client import RtspSession
from edge_agent.sources.camera.timestamps import FrameClock

log = logging.getLogger(__name__)

#: Audio packets taken together (about 0.2 s of a camera's audio): fragments wait up
#: to a second for their audio, and what costs an audio packet is mostly per batch.
AUDIO_BATCH = 8


class CameraAudio:
    def __init__(self, camera: str, enabled: bool, clock: FrameClock) -> None:
        self._camera = camera
        self.enabled = enabled
        self._clock = clock
        self.state = "off" if not enabled else "waiting for the camera"
        self.track: AudioTrack | None = None
        self.pending: list[Frame] = []
        self.frames = 0  # taken from the camera
        self.dropped = 0  # unreadable, or before the first video frame
        self.lost_packets = 0
        self._logged = ""  # the last problem logged
        self._last_placed_ms = 0  # the newest audio frame stored (absolute)
        #: The RTSP session's audio: depacketizer, placement, its packets as they come.
        self._rtp: tuple[AudioDepacketizer, AudioSync, list[bytes]] | None = None
        self._pyav: PyavAudio | None = None

    @property
    def taking(self) -> bool:
        """Whether the current connection's audio is being taken."""
        return self._rtp is not None or self._pyav is not None

    # ------------------------------------------------------------------ RTSP

    @property
    def rtsp_encodings(self) -> tuple[str, ...]:
        """What the RTSP client sets up, if the camera offers it."""
        return RTP_AUDIO_ENCODINGS if self.enabled else ()

    def start_rtsp(self, session: RtspSession, video_clock_rate: int) -> None:
        """A session has opened: take its audio, if it was set up."""
        self._rtp = None
        if not self.enabled:
            return
        offered = session.audio_offered
        if offered is None:
            self._set_none()
            return
        if session.audio is None:
            self._unsupported(f"{offered.encoding} audio is not taken (AAC and G.711 are)")
            return
        try:
            track, depacketizer = rtp_audio(session.audio)
        except AudioUnsupported as err:
            self._unsupported(str(err))
            return
        self._take(track)
        sync = AudioSync(video_clock_rate, session.audio.clock_rate)
        self._rtp = (depacketizer, sync, session.audio_packets)
        session.on_sender_report = sync.sender_report

    def rtsp_video(self, timestamp: int, stream_ms: int) -> None:
        """A video frame of the session: where the audio's timeline is pinned; and once
        AUDIO_BATCH audio packets have come, they become frames, together (they came in
        the last read or two, just before: one arrival time, one placement)."""
        if self._rtp is None:
            return
        depacketizer, sync, packets = self._rtp
        now = time.monotonic() * 1000
        sync.video(timestamp, stream_ms, now)
        if len(packets) < AUDIO_BATCH:
            return
        units = depacketizer.push_many(packets)
        packets.clear()
        placed = sync.place([unit.timestamp for unit in units], now)
        if not placed:
            self.dropped += len(units)  # before the first video frame
            return
        self.frames += len(units)
        self.pending += [
            Frame(at, True, unit.data, AUDIO_TRACK) for at, unit in zip(placed, units, strict=True)
        ]

    def end_rtsp(self) -> None:
        if self._rtp is not None:
            depacketizer = self._rtp[0]
            self.lost_packets += depacketizer.lost_packets
            self.dropped += depacketizer.unsupported_packets
            self._rtp = None

    # ------------------------------------------------------------------ PyAV

    def pyav_stream(self, container: Any) -> Any | None:
        """The audio stream to demux beside the video (None: no audio taken)."""
        self._pyav = None
        if not self.enabled:
            return None
        if not container.streams.audio:
            self._set_none()
            return None
        stream = container.streams.audio[0]
        try:
            taken = pyav_audio(stream)
        except AudioUnsupported as err:
            self._unsupported(str(err))
            return None
        if taken.track is not None:
            self._take(taken.track)
        self._pyav = taken
        return stream

    def pyav_packet(self, packet: Any) -> None:
        """A packet of the audio stream."""
        taken = self._pyav
        assert taken is not None
        if packet.pts is None or not packet.size or packet.time_base is None:
            self.dropped += 1
            return
        try:
            frames = taken.frames(bytes(packet))
        except FormatError:
            self.dropped += 1
            return
        if taken.track is not None and taken.track is not self.track:
            self._take(taken.track)
        at = self._clock.aligned_ms(packet.pts, packet.time_base)
        step = _frame_ms(taken.track)
        for index, data in enumerate(frames):
            self._add(at + round(index * step), data)

    # ------------------------------------------------------------------ frames

    def take(self) -> list[Frame]:
        """The frames that came since the last call."""
        pending, self.pending = self.pending, []
        return pending

    def placed(self, frames: tuple[Frame, ...], start_ms: int) -> tuple[Frame, ...]:
        """A fragment's audio being stored, on the wall clock: after the fragment's first
        video frame (``start_ms``, absolute) and after the audio stored before."""
        placed = []
        last = max(self._last_placed_ms, start_ms - 1)
        for frame in frames:
            at = self._clock.placed_ms(frame.time_ms)
            if at <= last:
                self.dropped += 1
                continue
            placed.append(Frame(at, True, frame.data, AUDIO_TRACK))
            last = at
        self._last_placed_ms = last
        return tuple(placed)

    def _add(self, stream_ms: int | None, data: bytes) -> None:
        if stream_ms is None:
            self.dropped += 1  # before the first video frame: nothing to place it by
            return
        self.frames += 1
        self.pending.append(Frame(stream_ms, True, data, AUDIO_TRACK))

    # ------------------------------------------------------------------ state

    def _take(self, track: AudioTrack) -> None:
        self.track = track
        kind = "AAC" if track.codec_id == AAC else "G.711"
        self.state = f"{kind} {track.sampling_hz} Hz {track.channels} ch"
        if self._logged:
            log.info("camera %s: audio taken again: %s", self._camera, self.state)
        self._logged = ""

    def _set_none(self) -> None:
        self.state = "none (the camera sends no audio)"
        self._log_once(self.state)

    def _unsupported(self, reason: str) -> None:
        self.state = f"left out: {reason}"
        self._log_once(f"audio left out: {reason}")

    def _log_once(self, message: str) -> None:
        if message != self._logged:
            log.warning("camera %s: %s; the video goes on", self._camera, message)
            self._logged = message


def _frame_ms(track: AudioTrack | None) -> float:
    """An AAC frame's length in ms (ADTS packets may hold several)."""
    if track is None or track.codec_id != AAC or not track.sampling_hz:
        return 0.0
    return 1024 * 1000 / track.sampling_hz
