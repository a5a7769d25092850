"""What a spooled video fragment carries besides its Matroska Cluster.

A camera stores each fragment as one spool record: the payload is the fragment's
Cluster, the record's ``meta`` this record as compact JSON. The Kinesis Video sink reads
the track back from it to write the stream header of each PutMedia connection (a new
track, new parameter sets: a new connection). One type, written and read by the same
code, so the two sides cannot drift apart::

    {"camera":"door","frames":60,"duration_ms":1967,"codec_id":"V_MPEG4/ISO/AVC",
     "codec_private":"<avcC record, base64>","width":1280,"height":720,
     "audio":{"codec_id":"A_AAC","codec_private":"FAg=","sampling_hz":16000,"channels":1},
     "tags":[["site","plant-3"],["event_id","12"]]}

``audio`` is there only when the fragment holds audio frames: a fragment without them
goes under a video-only stream header (the service refuses a fragment that lacks
frames of a track its header names: 4011).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from edge_agent.errors import FormatError
from edge_agent.media.mkv import H264, AudioTrack, VideoTrack


@dataclass(frozen=True)
class FragmentMeta:
    camera: str
    frames: int
    duration_ms: int
    track: VideoTrack
    audio: AudioTrack | None = None
    #: Fragment metadata for Kinesis Video (fragment_tags.py), in the order written.
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def tracks(self) -> tuple[VideoTrack, AudioTrack | None]:
        """What the stream header of the connection that sends this fragment names."""
        return self.track, self.audio

    def to_json(self) -> str:
        meta: dict[str, object] = {
            "camera": self.camera,
            "frames": self.frames,
            "duration_ms": self.duration_ms,
            "codec_id": self.track.codec_id,
            "codec_private": base64.b64encode(self.track.codec_private).decode(),
            "width": self.track.width,
            "height": self.track.height,
        }
        if self.audio is not None:
            meta["audio"] = {
                "codec_id": self.audio.codec_id,
                "codec_private": base64.b64encode(self.audio.codec_private).decode(),
                "sampling_hz": self.audio.sampling_hz,
                "channels": self.audio.channels,
            }
        if self.tags:
            meta["tags"] = [list(tag) for tag in self.tags]
        return json.dumps(meta, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> FragmentMeta:
        """The record a camera stored; FormatError (a ValueError) if it cannot be read.
        Missing fields take the defaults of an H.264 track of unknown size."""
        try:
            meta = json.loads(text or "{}")
            if not isinstance(meta, dict):
                raise FormatError(f"expected a JSON object, got {type(meta).__name__}")
            track = VideoTrack(
                str(meta.get("codec_id", H264)),
                base64.b64decode(str(meta.get("codec_private", ""))),
                int(meta.get("width", 0)),
                int(meta.get("height", 0)),
            )
            audio = meta.get("audio")
            if audio is not None and not isinstance(audio, dict):
                raise FormatError(f"audio: expected a JSON object, got {type(audio).__name__}")
            return cls(
                str(meta.get("camera", "")),
                int(meta.get("frames", 0)),
                int(meta.get("duration_ms", 0)),
                track,
                _audio_track(audio) if audio else None,
                tuple((str(name), str(value)) for name, value in meta.get("tags", ())),
            )
        except (KeyError, TypeError, ValueError) as err:  # JSON, base64 and numbers alike
            if isinstance(err, FormatError):
                raise
            raise FormatError(str(err)) from err


def _audio_track(audio: dict[str, object]) -> AudioTrack:
    return AudioTrack(
        str(audio["codec_id"]),
        base64.b64decode(str(audio.get("codec_private", ""))),
        int(str(audio["sampling_hz"])),
        int(str(audio["channels"])),
    )


def with_tags(meta: str, tags: tuple[tuple[str, str], ...]) -> str:
    """A stored meta text with these tags instead of its own, every other key kept (a
    clock mark, say)."""
    try:
        fields = json.loads(meta or "{}")
    except ValueError:
        fields = {}
    if not isinstance(fields, dict):
        fields = {}
    if tags:
        fields["tags"] = [list(tag) for tag in tags]
    else:
        fields.pop("tags", None)
    return json.dumps(fields, separators=(",", ":"))


def tags_of(meta: str | None) -> tuple[tuple[str, str], ...]:
    """A stored fragment's tags (none if its meta cannot be read)."""
    if not meta or '"tags"' not in meta:
        return ()
    try:
        return FragmentMeta.from_json(meta).tags
    except FormatError:
        return ()
