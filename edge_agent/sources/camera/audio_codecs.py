"""The audio codecs a camera's audio is taken in, as they come (no decoding): AAC and
G.711 A-law and mu-law, the ones Kinesis Video plays back, with the codec ids and
codec private data its producer SDK writes (media/mkv.py, media/audio.py).

    RTSP (the built-in client), by the SDP's encoding:
      MPEG4-GENERIC  RFC 3640 AAC     A_AAC     the ASC of fmtp ``config``
      MP4A-LATM      RFC 6416 AAC     A_AAC     the ASC inside fmtp ``config``
      PCMA / PCMU    RFC 3551 G.711   A_MS/ACM  a WAVEFORMATEX (format 6 / 7)
    PyAV (files, FFmpeg's RTSP), by PyAV's codec name:
      aac                             A_AAC     the stream's extradata, or the ADTS
                                                headers' (MPEG-TS hands ADTS frames over)
      pcm_alaw / pcm_mulaw            A_MS/ACM

Any other audio (Opus, MP3, PCM, ...) is left out and said so (``AudioUnsupported``):
the video goes on without it.
"""

from __future__ import annotations

from typing import Any

from edge_agent.errors import FormatError
from edge_agent.media import audio
from edge_agent.media.mkv import AAC, G711, AudioTrack
from edge_agent.sources.camera.rtp_audio import (
    G711Depacketizer,
    LatmDepacketizer,
    Mpeg4GenericDepacketizer,
)
from edge_agent.sources.camera.sdp import AudioMedia

AudioDepacketizer = G711Depacketizer | Mpeg4GenericDepacketizer | LatmDepacketizer

#: The RTP encodings (as the SDP names them) the built-in RTSP client takes.
RTP_AUDIO_ENCODINGS = ("MPEG4-GENERIC", "MP4A-LATM", "PCMA", "PCMU")
_G711_FORMATS = {
    "PCMA": audio.WAVE_FORMAT_ALAW,
    "PCMU": audio.WAVE_FORMAT_MULAW,
    "pcm_alaw": audio.WAVE_FORMAT_ALAW,
    "pcm_mulaw": audio.WAVE_FORMAT_MULAW,
}


class AudioUnsupported(FormatError):
    """Audio the camera sends in a form that is not taken (the video goes on)."""


def g711_track(format_tag: int, sampling_hz: int, channels: int) -> AudioTrack:
    return AudioTrack(
        G711, audio.g711_codec_private(format_tag, sampling_hz, channels), sampling_hz, channels
    )


def aac_track(config: audio.AacConfig) -> AudioTrack:
    return AudioTrack(AAC, config.audio_specific_config, config.sampling_hz, config.channels)


def rtp_audio(media: AudioMedia) -> tuple[AudioTrack, AudioDepacketizer]:
    """The track and the depacketizer of an RTSP camera's audio; AudioUnsupported if it
    cannot be taken (FormatError details why)."""
    encoding, parameters = media.encoding, media.parameters
    try:
        if encoding in ("PCMA", "PCMU"):
            track = g711_track(_G711_FORMATS[encoding], media.clock_rate, media.channels)
            return track, G711Depacketizer()
        if encoding == "MPEG4-GENERIC":
            config = audio.aac_config(bytes.fromhex(parameters.get("config", "")))
            frame = _frame_ticks(config, media.clock_rate)
            return aac_track(config), Mpeg4GenericDepacketizer.from_fmtp(parameters, frame)
        if encoding == "MP4A-LATM":
            if parameters.get("cpresent", "1") != "0":
                raise AudioUnsupported("MP4A-LATM with its configuration in the stream")
            latm = audio.latm_config(bytes.fromhex(parameters.get("config", "")))
            config = audio.aac_config(latm.asc)
            frame = _frame_ticks(config, media.clock_rate)
            return aac_track(config), LatmDepacketizer(latm.subframes, frame)
    except AudioUnsupported:
        raise
    except ValueError as err:  # FormatError, and bytes.fromhex's
        raise AudioUnsupported(f"{encoding} audio with an unusable configuration: {err}") from None
    raise AudioUnsupported(f"{encoding} audio is not taken (AAC and G.711 are)")


def _frame_ticks(config: audio.AacConfig, clock_rate: int) -> int:
    """An AAC frame's length in RTP clock ticks (HE-AAC's clock may run at twice the
    core rate)."""
    return config.frame_samples * clock_rate // config.sampling_hz


class PyavAudio:
    """A PyAV audio stream's track, and its packets as frames (``frames``). ADTS AAC
    (no extradata) has its track from the first packet's header."""

    def __init__(self, track: AudioTrack | None) -> None:
        self.track = track
        self._adts = track is None

    def frames(self, data: bytes) -> list[bytes]:
        """A packet's frames (ADTS: the raw frames, headers removed); FormatError if
        the packet cannot be read."""
        if not self._adts:
            return [data]
        asc, frames = audio.adts_to_raw(data)
        if self.track is None:
            self.track = aac_track(audio.aac_config(asc))
        return frames


def pyav_audio(stream: Any) -> PyavAudio:
    """How a PyAV audio stream is taken; AudioUnsupported if it cannot be."""
    context = stream.codec_context
    name = context.name
    channels = context.channels or 1
    if name in _G711_FORMATS:
        return PyavAudio(g711_track(_G711_FORMATS[name], context.sample_rate, channels))
    if name == "aac":
        extradata = bytes(context.extradata or b"")
        if not extradata:
            return PyavAudio(None)
        try:
            return PyavAudio(aac_track(audio.aac_config(extradata)))
        except FormatError as err:
            raise AudioUnsupported(f"AAC audio that cannot be read: {err}") from None
    raise AudioUnsupported(f"{name} audio is not taken (AAC and G.711 are)")
