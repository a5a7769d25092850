"""A camera: frames in, cut into fragments, appended to the spool. One thread each.

    RTSP H.264/H.265 camera -> the built-in RTSP client (rtsp_client.py) -> frames
    anything else     -> av.open(url) -> packets -> H.264/H.265? pass through (NAL units)
                                         else decode, encode with libx264 (GOP = fragment)
    -> FrameClock.stream_ms -> Fragmenter -> FrameClock.absolute_ms
    (audio = true: the camera's AAC or G.711 beside it, camera_audio.py)
    -> spool record: the fragment's MKV Cluster; meta: a FragmentMeta (tracks, duration)

Sources: RTSP (TCP, connect/read timeouts), V4L2 devices, files (paced to real time or
as fast as they read) and lavfi test patterns. A source that fails to open, ends, or
delivers nothing for ``stall_timeout`` is closed, reported, and opened again after a
full-jitter backoff, whatever the error (every SourceError is retryable; PyAV's become
CameraErrors through ``camera_errors``); the fragment in progress is kept (it is
complete up to its last frame). Credentials in a URL never reach a log or the status.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from edge_agent.clock_sync import UNCHECKED, ClockGate
from edge_agent.config.cameras import CameraConfig
from edge_agent.delivery.backoff import Backoff
from edge_agent.errors import SpoolError, SpoolFull
from edge_agent.events.recorder import Recorder, StoredFragment
from edge_agent.events.watch import CameraWatch
from edge_agent.media import h264
from edge_agent.media.fragment_meta import FragmentMeta
from edge_agent.media.mkv import Frame, VideoTrack
from edge_agent.redact import redact, redact_text
from edge_agent.runtime_status import CameraSnapshot
from edge_agent.sources.camera.camera_audio import CameraAudio
from edge_agent.sources.camera.camera_errors import (
    PicturesReordered,
    StreamStalled,
    camera_error,
)
from edge_agent.sources.camera.codecs import (
    PASSTHROUGH,
    RTP_ENCODINGS,
    ParameterSets,
    PassthroughCodec,
    Picture,
    depacketizer_for,
    picture_size,
    sets_seen,
    track_of,
)
from edge_agent.sources.camera.fragmenter import Fragment, Fragmenter
from edge_agent.sources.camera.pyav_input import backdate_ms, open_with_pyav
from edge_agent.sources.camera.rtsp_client import RtspError, RtspSession, RtspStalled
from edge_agent.sources.camera.sdp import VideoMedia
from edge_agent.sources.camera.timestamps import (
    FrameClock,
    reordered,
    rtp_reordered,
    timed_packets,
)
from edge_agent.spool.store import Spool
from edge_agent.worker import ThreadWorker, WorkerState

log = logging.getLogger(__name__)


@dataclass
class CameraStats(WorkerState):
    connects: int = 0
    reconnects: int = 0
    frames: int = 0
    fragments: int = 0
    bytes: int = 0
    mode: str = ""  # "passthrough" or "encode"
    last_keyframe_at: float | None = None
    #: Frames lost before the fragmenter (corrupt, undecodable, unsupported packets);
    #: status adds the fragmenter's own (frames before a fragment's first keyframe).
    dropped_frames: int = 0
    last_error: str = ""
    lost_packets: int = 0  # RTP sequence gaps (the built-in RTSP client)
    #: Fragments the spool refused for want of room (intake paused: a full disk).
    unstored_fragments: int = 0
    #: The camera sends B-frames: it is encoded (without them) instead of passed through.
    b_frames: bool = False


class Camera(ThreadWorker):
    clock_gate: ClockGate = UNCHECKED  # the agent's: waits for the clock, marks fragments

    def __init__(
        self,
        settings: CameraConfig,
        spool: Spool,
        stop: threading.Event,
        *,
        opener: Callable[..., Any] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self._stop = stop
        self._open = opener or open_with_pyav
        self._backoff = Backoff(settings.reconnect_min, settings.reconnect_max)
        self.stats = CameraStats()
        self.recorder = Recorder(settings, spool)
        self.watch = CameraWatch(settings, spool, recorded_until_ms=self.recorder.newest_ms)
        self.clock = FrameClock(resume_after_ms=self._last_stored_ms())
        self.fragmenter = Fragmenter(settings.fragment_ms, settings.max_fragment_ms)
        self.audio = CameraAudio(settings.name, settings.audio, self.clock)
        self._track: VideoTrack | None = None  # the newest frames'
        self._fragment_track: VideoTrack | None = None  # the fragment in progress'
        self._track_source: tuple[ParameterSets, int, int] | None = None
        self._builtin_rtsp = settings.builtin_rtsp
        self._refused = False  # the spool refused the last fragment (a full disk)
        self._backdate_ms: int | None = None  # a file read faster than real time
        self._reordered = False  # the camera sends B-frames: encoded from then on
        self._audio_stream: Any = None  # PyAV's audio stream, demuxed with the video

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._start_thread(self.run, f"camera-{self.settings.name}")

    def run(self) -> None:
        """Capture until stopped: open, read, and after any failure open again."""
        self.clock_gate.hold(self.settings.name, self._stop, self._set_state)
        while not self._stop.is_set():
            try:
                self._capture_once()
                reason = "the stream ended"
            except SpoolError as err:
                reason = f"spool: {err}"
            except PicturesReordered as err:
                self._reordered = self.stats.b_frames = True
                self._builtin_rtsp = False  # PyAV decodes it from now on
                log.warning(
                    "camera %s: %s; decoding and encoding it without B-frames from now on "
                    "(turn B-frames off on the camera to pass it through, at far less CPU)",
                    self.settings.name,
                    err,
                )
                self.stats.last_error = str(err)
                self._store_all(self.fragmenter.flush())
                continue  # at once: not an outage
            except Exception as err:  # PyAV's errors, a camera that vanished, a bug
                # Whatever the error quotes (a URL with its password), not the password.
                reason = redact_text(str(camera_error(err)))
            try:
                self._store_all(self.fragmenter.flush())
            except SpoolError as err:  # the fragment in progress is lost with the spool
                log.error("camera %s: its last fragment is lost: %s", self.settings.name, err)
            if self._stop.is_set():
                break
            delay = self._backoff.next_delay()
            self._set_state("reconnecting", reason)
            self.stats.last_error = reason
            self.stats.reconnects += 1
            log.warning(
                "camera %s (%s): %s; opening again in %.1fs",
                self.settings.name,
                redact(self.settings.url),
                reason,
                delay,
            )
            self._stop.wait(delay)
        self._set_state("stopped")

    # ------------------------------------------------------------------ capture

    def _capture_once(self) -> None:
        settings = self.settings
        self._set_state("connecting")
        if self._builtin_rtsp:
            session = RtspSession(
                settings.url,
                connect_timeout=settings.connect_timeout,
                stall_timeout=settings.stall_timeout,
                stop=self._stop,
            )
            try:
                media = session.open(self.audio.rtsp_encodings)
                if media.encoding in RTP_ENCODINGS:
                    self.audio.start_rtsp(session, media.clock_rate)
                    self._capture(self._rtsp_frames(session, media), "passthrough")
                    return
            finally:
                session.close()
                self.audio.end_rtsp()
            self._builtin_rtsp = False  # not H.264: PyAV decodes it, from now on
            log.info(
                "camera %s sends %s over RTSP: decoded and encoded with PyAV",
                settings.name,
                media.encoding,
            )
        container = self._open(settings)
        try:
            stream = container.streams.video[0]
            self._backdate_ms = backdate_ms(settings, container)
            self._audio_stream = self.audio.pyav_stream(container)
            codec = PASSTHROUGH.get(stream.codec_context.name)
            if codec is not None and not self._reordered:
                self._capture(self._passthrough(container, stream, codec), "passthrough")
            else:
                self._capture(self._encode(container, stream), "encode")
        finally:
            container.close()

    def _capture(self, frames: Iterator[Frame], mode: str) -> None:
        """Frames of one connection into fragments, each stored with the track its
        first frame was captured with (parameter sets change at keyframes)."""
        self.stats.connects += 1
        self.clock.reanchor(backdate_ms=self._backdate_ms)
        self.fragmenter.expect_audio(self.audio.taking)
        self.stats.mode = mode
        self._set_state("capturing")
        stats, fragmenter, audio = self.stats, self.fragmenter, self.audio
        watching = self.watch.active and mode == "passthrough"  # encoded: its pictures
        for frame in frames:
            if self._stop.is_set():
                return
            stats.frames += 1
            if frame.keyframe:
                self._backoff.reset()
                stats.last_keyframe_at = time.time()
                if self._track is not self._fragment_track:
                    self._store_all(fragmenter.flush())  # new parameter sets: a new fragment
                if watching and self._track is not None:  # placed: the anchor, no repairs
                    at_ms = self.clock.placed_ms(frame.time_ms)
                    self.watch.keyframe(frame.data, self._track, at_ms)
            done = fragmenter.add(frame)
            if done is not None:
                self._store(done)
            if fragmenter.pending == 1:  # this frame began a fragment
                self._fragment_track = self._track
            if audio.pending:
                for sound in audio.take():
                    if (done := fragmenter.add_audio(sound)) is not None:
                        self._store(done)

    def _packets(self, container: Any, stream: Any) -> Iterator[Any]:
        """The stream's packets, timed (``timed_packets``) and paced for real-time file replay;
        a read that returns nothing for stall_timeout raises StreamStalled."""
        settings = self.settings
        pace = settings.source == "file" and settings.realtime
        started = time.monotonic()
        first_pts: float | None = None
        time_base = stream.time_base  # the packets' own; read once (each read is a Fraction)
        for packet in timed_packets(self._received(container, stream), stream):
            if pace and packet.pts is not None and time_base is not None:
                at = packet.pts * time_base.numerator / time_base.denominator
                first_pts = at if first_pts is None else first_pts
                wait = (at - first_pts) - (time.monotonic() - started)
                if wait > 0 and self._stop.wait(wait):
                    return
            yield packet

    def _received(self, container: Any, stream: Any) -> Iterator[Any]:
        """Non-empty packets as they arrive; StreamStalled after stall_timeout without."""
        stall_timeout = self.settings.stall_timeout
        last_packet = time.monotonic()
        audio = self._audio_stream
        streams = (stream,) if audio is None else (stream, audio)
        for packet in container.demux(*streams):
            if packet.stream is audio:
                self.audio.pyav_packet(packet)
                continue
            now = time.monotonic()
            if now - last_packet > stall_timeout:
                raise StreamStalled(f"no frames for {now - last_packet:.1f}s")
            last_packet = now
            if packet.size:
                yield packet

    def _passthrough(self, container: Any, stream: Any, codec: PassthroughCodec) -> Iterator[Frame]:
        """H.264 as the camera sent it: no decoding. Annex-B or AVCC is decided from
        the stream's extradata; parameter sets seen in the stream update the track.
        A packet holding the later slices of a picture joins the packet before it: some
        servers repeat SPS/PPS between the slices of an IDR, and FFmpeg's parser then
        splits the picture in two."""
        extradata = bytes(stream.codec_context.extradata or b"")
        annexb = not extradata or h264.is_annexb(extradata)
        sets: ParameterSets | None = None
        if extradata and not annexb:
            sets = codec.from_record(extradata)
        elif extradata:
            sets = codec.parameter_sets(h264.split_annexb(extradata))
        width, height = stream.codec_context.width, stream.codec_context.height
        time_base = stream.time_base
        picture: Picture | None = None
        for packet in self._packets(container, stream):
            data = bytes(packet)
            try:
                units = h264.split_annexb(data) if annexb else h264.split_avcc(data)
            except ValueError:
                self.stats.dropped_frames += 1  # a corrupt packet: skip it, keep the stream
                continue
            found = codec.parameter_sets(units)
            if found is not None and found != sets:
                sets = found
            if sets is None:
                continue  # nothing decodable before the first parameter sets
            if picture is not None and codec.continues_picture(units):
                picture.units += units
                picture.keyframe |= bool(packet.is_keyframe)
                continue
            if picture is not None:
                if reordered(picture.pts, packet.pts, time_base):
                    raise PicturesReordered("the camera sends B-frames")
                yield self._passthrough_frame(picture, width, height, codec)
            picture = Picture(packet.pts, time_base, bool(packet.is_keyframe), units, sets)
        if picture is not None:
            yield self._passthrough_frame(picture, width, height, codec)

    def _passthrough_frame(
        self, picture: Picture, width: int, height: int, codec: PassthroughCodec
    ) -> Frame:
        self._set_track(picture.sets, width, height)
        return Frame(
            self.clock.stream_ms(picture.pts, picture.time_base),
            picture.keyframe,
            codec.length_prefixed(picture.units),
        )

    def _rtsp_frames(self, session: RtspSession, media: VideoMedia) -> Iterator[Frame]:
        """H.264 or H.265 from the built-in RTSP client: RTP packets straight to length-
        prefixed frames. The parameter sets come from the description and from the stream
        (where they may change); the picture size from the SPS. A picture is complete when
        the next one begins: the last one of a session is taken when the session ends."""
        depacketizer = depacketizer_for(media.encoding)
        sets = media.parameter_sets
        if sets is not None:
            self._set_rtsp_track(sets)
        seen_changes = 0
        time_base = Fraction(1, media.clock_rate)
        stats, stream_ms = self.stats, self.clock.stream_ms
        opened = time.monotonic()
        previous: int | None = None
        try:
            for packet in session.packets():
                for unit in depacketizer.push(packet):
                    if depacketizer.parameter_changes != seen_changes:
                        seen_changes = depacketizer.parameter_changes
                        found = sets_seen(depacketizer)
                        if found is not None and found != sets and self._set_rtsp_track(found):
                            sets = found
                    if self._track is None:
                        stats.dropped_frames += 1  # nothing decodable before an SPS
                        waited = time.monotonic() - opened
                        if waited > self.settings.stall_timeout:
                            raise RtspStalled(f"no usable SPS and PPS in {waited:.0f}s")
                        continue
                    if rtp_reordered(previous, unit.timestamp, media.clock_rate):
                        raise PicturesReordered("the camera sends B-frames")
                    previous = unit.timestamp
                    at = stream_ms(unit.timestamp, time_base)
                    self.audio.rtsp_video(unit.timestamp, at)
                    yield Frame(at, unit.keyframe, unit.data)
            ended: RtspError | None = None
        except RtspError as err:
            ended = err
        finally:
            stats.lost_packets += depacketizer.lost_packets
            stats.dropped_frames += depacketizer.unsupported_packets
        last = depacketizer.flush()
        if last is not None and self._track is not None:
            yield Frame(stream_ms(last.timestamp, time_base), last.keyframe, last.data)
        if ended is not None:
            raise ended

    def _set_rtsp_track(self, sets: ParameterSets) -> bool:
        """The track of these parameter sets, sized by the SPS; False (and the track
        unchanged) if the SPS cannot be read."""
        try:
            width, height = picture_size(sets)
        except ValueError as err:
            log.warning("camera %s: an SPS that cannot be read (%s)", self.settings.name, err)
            return False
        self._set_track(sets, width, height)
        return True

    def _encode(self, container: Any, stream: Any) -> Iterator[Frame]:
        """Decode whatever the camera sends and encode H.264: one IDR per fragment, no
        B-frames, so every fragment starts at a keyframe and no frame waits for a later one."""
        import av

        settings = self.settings
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
        fps = max(1, round(float(rate)))
        encoder: Any = None
        index = 0
        for packet in self._packets(container, stream):
            for decoded in packet.decode():
                if encoder is None:
                    encoder = av.CodecContext.create("libx264", "w")
                    encoder.width, encoder.height = decoded.width, decoded.height
                    encoder.pix_fmt = "yuv420p"
                    encoder.time_base = Fraction(1, fps)
                    encoder.framerate = Fraction(fps)
                    gop = max(1, fps * settings.fragment_ms // 1000)
                    encoder.gop_size = gop
                    encoder.max_b_frames = 0
                    if settings.bitrate:
                        encoder.bit_rate = settings.bitrate
                    encoder.options = {
                        "preset": settings.preset,
                        "tune": "zerolatency",
                        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
                    }
                times = (decoded.pts, decoded.time_base)
                picture = decoded
                if picture.format.name != "yuv420p":
                    picture = picture.reformat(format="yuv420p")
                picture.pict_type = av.video.frame.PictureType.NONE  # no IDR on every frame
                picture.pts = index
                index += 1
                captured = self.clock.stream_ms(*times)
                if self.watch.active:
                    self.watch.picture(picture, self.clock.placed_ms(captured))
                for out in encoder.encode(picture):
                    data = bytes(out)
                    units = h264.split_annexb(data)
                    sets = h264.parameter_sets(units)
                    if sets is not None:
                        self._set_track(sets, encoder.width, encoder.height)
                    if self._track is None:
                        continue
                    yield Frame(captured, bool(out.is_keyframe), h264.to_avcc(units))

    # ------------------------------------------------------------------ storing

    def _set_track(self, sets: ParameterSets, width: int, height: int) -> None:
        if self._track is not None and (sets, width, height) == self._track_source:
            return  # the same parameter sets as the previous frame (nearly always)
        self._track_source = (sets, width, height)
        codec_id, record = track_of(sets)
        track = self._track
        if track is None or (track.codec_id, track.codec_private, track.width, track.height) != (
            codec_id,
            record,
            width,
            height,
        ):
            self._track = VideoTrack(codec_id, record, width, height)

    def _store_all(self, fragments: list[Fragment]) -> None:
        for fragment in fragments:
            self._store(fragment)

    def _store(self, fragment: Fragment) -> None:
        track = self._fragment_track
        if track is None:
            return
        video = tuple(  # from the stream's timeline to the wall clock
            Frame(self.clock.absolute_ms(frame.time_ms), frame.keyframe, frame.data)
            for frame in fragment.frames
        )
        audio = self.audio.placed(fragment.audio, video[0].time_ms) if fragment.audio else ()
        fragment = Fragment(video, audio)
        meta = FragmentMeta(
            self.settings.name,
            len(video),
            fragment.duration_ms,
            track,
            self.audio.track if audio else None,  # no audio frames: no audio track (4011)
        ).to_json()
        meta = self.clock_gate.mark(meta)  # before the system clock is synchronized
        if self._backdate_ms is not None:  # never a fragment that ends in the future
            ahead = self.clock.ahead_of_now_ms(fragment.frames[-1].time_ms)
            if ahead and self._stop.wait(ahead / 1000):
                return
        payload = fragment.cluster_pieces()  # written into the spool as they are
        end_ms = fragment.frames[-1].time_ms
        try:
            self.recorder.store(StoredFragment(fragment.start_ms, end_ms, meta, payload))
        except SpoolFull as err:
            # A camera has no broker to keep what the spool cannot take: the fragment is
            # counted and capture goes on (reconnecting would gain nothing).
            if not self._refused:
                log.warning("camera %s: fragments not stored: %s", self.settings.name, err)
            self._refused = True
            self.stats.unstored_fragments += 1
            self.stats.last_error = f"fragments not stored: {err}"
            return
        if self._refused:
            log.info(
                "camera %s: fragments stored again (%d were not so far)",
                self.settings.name,
                self.stats.unstored_fragments,
            )
            self._refused = False
        self.stats.fragments += 1
        self.stats.bytes += len(payload)
        self.watch.stored()

    def _last_stored_ms(self) -> int:
        """Where a restart carries on: the newest fragment this camera has spooled."""
        sink = self.settings.sink
        return max(self.spool.newest_captured_at(sink) or 0 if sink else 0, self.recorder.newest_ms)

    def _set_state(self, state: str, reason: str = "") -> None:
        self.stats.set(state, reason)

    def snapshot(self) -> CameraSnapshot:
        stats = self.stats
        return {
            "url": redact(self.settings.url),
            "state": stats.state,
            "reason": stats.reason,
            "since": stats.since,
            "mode": stats.mode,
            "connects": stats.connects,
            "reconnects": stats.reconnects,
            "frames": stats.frames,
            "fragments": stats.fragments,
            "bytes": stats.bytes,
            "last_keyframe_at": stats.last_keyframe_at,
            "dropped_frames": stats.dropped_frames + self.fragmenter.dropped_frames,
            "repaired_times": self.clock.repaired,
            "time_jumps": self.clock.discontinuities,
            "lost_packets": stats.lost_packets,
            "unstored_fragments": stats.unstored_fragments,
            "b_frames": stats.b_frames,
            "audio": self.audio.state,
            "audio_frames": self.audio.frames,
            "dropped_audio": self.audio.dropped + self.fragmenter.dropped_audio,
            "events": self.recorder.snapshot() | self.watch.snapshot(),
            "last_error": stats.last_error,
        }
