"""Pictures from a camera's video for motion and snapshots: its keyframes decoded on
their own (``KeyframeDecoder``), and decoded pictures encoded as JPEG
(``JpegEncoder``), both with PyAV.

A passthrough camera is not decoded at all; for motion or a snapshot only its
keyframes are, each an IDR that decodes without the pictures around it (a P-frame
needs its references, so sampling those would mean decoding all of them). A keyframe
is the first picture of a fragment: one every fragment duration. A decoder of its own
fed only the keyframes does what PyAV's ``skip_frame = "NONKEY"`` would on the camera's
stream, for both the built-in RTSP client (which has no PyAV stream) and PyAV's input,
and leaves the passthrough path untouched.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from edge_agent.media.mkv import H265, VideoTrack

#: libavcodec's MJPEG quantizer range: 2 is the finest; 5 keeps a 1080p picture near
#: 100 KB with no visible blocking.
JPEG_QMIN, JPEG_QMAX = 2, 5


class KeyframeDecoder:
    """Decodes keyframes (length-prefixed NAL units, as a fragment holds them) of one
    track; a new track (parameter sets) gets a new decoder."""

    def __init__(self) -> None:
        self._track: VideoTrack | None = None
        self._context: Any = None
        self.decoded = 0
        self.failed = 0

    def decode(self, data: bytes, track: VideoTrack) -> Any | None:
        """The picture of one keyframe, or None if it does not decode."""
        import av

        if track is not self._track or self._context is None:
            name = "hevc" if track.codec_id == H265 else "h264"
            context = av.CodecContext.create(name, "r")
            context.extradata = track.codec_private
            context.thread_count = 1  # one picture at a time: threads only add latency
            self._context, self._track = context, track
        try:
            pictures = self._context.decode(av.Packet(data))
            if not pictures:  # the decoder holds the picture until the next packet
                pictures = self._context.decode(None)
                self._context = None  # drained: a new one for the next keyframe
        except (av.FFmpegError, ValueError):
            self.failed += 1
            self._context = None
            return None
        if not pictures:
            self.failed += 1
            return None
        self.decoded += 1
        return pictures[-1]


class JpegEncoder:
    """JPEG snapshots of decoded pictures (full-range 4:2:0), one encoder per size."""

    def __init__(self) -> None:
        self._context: Any = None
        self._size: tuple[int, int] | None = None
        self._pts = 0

    def encode(self, picture: Any) -> bytes:
        import av

        size = (picture.width, picture.height)
        if self._context is None or size != self._size:
            context = av.CodecContext.create("mjpeg", "w")
            context.width, context.height = size
            context.pix_fmt = "yuvj420p"
            context.time_base = Fraction(1, 1000)
            context.options = {"qmin": str(JPEG_QMIN), "qmax": str(JPEG_QMAX)}
            self._context, self._size = context, size
        frame = picture.reformat(format="yuvj420p")
        # An encoder reused needs increasing times, in its own time base (a picture
        # keeps its stream's, which PyAV would rescale from).
        frame.pts, frame.time_base = self._pts, self._context.time_base
        self._pts += 1
        return b"".join(bytes(packet) for packet in self._context.encode(frame))
