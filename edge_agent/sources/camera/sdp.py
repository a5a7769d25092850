"""The session description an RTSP camera answers DESCRIBE with (SDP, RFC 8866): what
the built-in RTSP client needs of its video and audio: where to SETUP each, the RTP
payload type and clock, and the format parameters (H.264: ``sprop-parameter-sets``,
RFC 6184; H.265: ``sprop-vps/-sps/-pps``, RFC 7798; AAC: ``config`` and the AU header
sizes, RFC 3640 and RFC 6416).

    v=0 ... m=video 0 RTP/AVP 96
    a=rtpmap:96 H264/90000
    a=fmtp:96 packetization-mode=1;sprop-parameter-sets=Z0IAH...,aM4G...
    a=control:trackID=1
    m=audio 0 RTP/AVP 97
    a=rtpmap:97 MPEG4-GENERIC/16000/1
    a=fmtp:97 streamtype=5;mode=AAC-hbr;config=1408;sizelength=13;indexlength=3;...
    a=control:trackID=2
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from edge_agent.errors import FormatError
from edge_agent.media import h265
from edge_agent.media.h264 import NAL_PPS, NAL_SPS, ParameterSets


class SdpError(FormatError):
    """A description the client cannot use (no video, no payload type)."""


@dataclass(frozen=True)
class VideoMedia:
    #: The URL to SETUP the video with (absolute).
    control: str
    #: The session's URL (PLAY, keepalives, TEARDOWN): its own control, else the base.
    aggregate: str
    payload_type: int
    #: As the rtpmap names it, upper case: "H264", "H265", "JPEG", ...
    encoding: str
    clock_rate: int
    #: H.264: the SPS and PPS of sprop-parameter-sets; H.265: the VPS, SPS and PPS of
    #: sprop-vps/-sps/-pps (RFC 7798); if the camera gives them.
    parameter_sets: ParameterSets | h265.ParameterSets | None = None


@dataclass(frozen=True)
class MediaSection:
    """One m= section as read; the audio is used as it is (``AudioMedia``)."""

    #: The URL to SETUP the media with (absolute).
    control: str
    payload_type: int
    #: As the rtpmap names it, upper case: "MPEG4-GENERIC", "MP4A-LATM", "PCMA", "PCMU", ...
    encoding: str
    clock_rate: int
    channels: int
    #: The fmtp parameters, by lower-case name.
    parameters: dict[str, str]


AudioMedia = MediaSection


def video_media(sdp: str, base_url: str) -> VideoMedia:
    """The first video media of ``sdp``; relative controls resolve against ``base_url``
    (the answer's Content-Base, else the request URL) as FFmpeg and most clients do:
    appended to it, whatever its last path segment."""
    media, base_url = _sections(sdp, base_url)
    for lines in media:
        fields = lines[0][2:].split()
        if len(fields) < 4 or fields[0] != "video":
            continue
        return _video(_read_media(lines, fields, base_url), base_url)
    raise SdpError("the camera's description has no video")


def audio_media(sdp: str, base_url: str) -> AudioMedia | None:
    """The first audio media of ``sdp``, if it has one (controls resolve as for video)."""
    media, base_url = _sections(sdp, base_url)
    for lines in media:
        fields = lines[0][2:].split()
        if len(fields) < 4 or fields[0] != "audio":
            continue
        return _read_media(lines, fields, base_url)
    return None


def _sections(sdp: str, base_url: str) -> tuple[list[list[str]], str]:
    """The lines of each m= section, and the base URL (a session-level absolute
    control replaces it)."""
    session_control: str | None = None
    media: list[list[str]] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        elif line.startswith("a=control:"):
            session_control = line[len("a=control:") :].strip()
    if session_control and session_control != "*" and "://" in session_control:
        base_url = session_control
    return media, base_url


def _read_media(lines: list[str], fields: list[str], base_url: str) -> MediaSection:
    kind = fields[0]
    try:
        payload_type = int(fields[3])
    except ValueError:
        raise SdpError(f"{kind} payload type {fields[3]!r} is not a number") from None
    control = base_url
    encoding, clock_rate, channels = _static_encoding(payload_type)
    parameters: dict[str, str] = {}
    prefix_map, prefix_fmtp = f"a=rtpmap:{payload_type} ", f"a=fmtp:{payload_type} "
    for line in lines[1:]:
        if line.startswith("a=control:"):
            control = _resolve(line[len("a=control:") :].strip(), base_url)
        elif line.startswith(prefix_map):
            name, _, rest = line[len(prefix_map) :].strip().partition("/")
            encoding = name.upper()
            rate, _, count = rest.partition("/")
            if not rate.isdigit() or int(rate) == 0:
                raise SdpError(f"{kind} clock rate {rate!r} is not a positive number")
            clock_rate = int(rate)
            channels = int(count) if count.isdigit() and int(count) > 0 else 1
        elif line.startswith(prefix_fmtp):
            for item in line[len(prefix_fmtp) :].split(";"):
                key, _, value = item.strip().partition("=")
                parameters[key.lower()] = value.strip()
    if not encoding:
        raise SdpError(f"{kind} payload type {payload_type} has no rtpmap")
    return MediaSection(control, payload_type, encoding, clock_rate, channels, parameters)


def _video(media: MediaSection, base_url: str) -> VideoMedia:
    encoding, parameters = media.encoding, media.parameters
    sets: ParameterSets | h265.ParameterSets | None = None
    if encoding == "H264" and "sprop-parameter-sets" in parameters:
        sets = _parameter_sets(parameters["sprop-parameter-sets"])
    elif encoding == "H265":
        if int(parameters.get("sprop-max-don-diff", "0") or 0) > 0:
            raise SdpError("H.265 with decoding order numbers (sprop-max-don-diff > 0)")
        sets = _h265_parameter_sets(parameters)
    return VideoMedia(media.control, base_url, media.payload_type, encoding, media.clock_rate, sets)


#: RFC 3551's static payload types a camera might still use: (encoding, clock, channels).
STATIC_PAYLOAD_TYPES = {
    0: ("PCMU", 8_000, 1),
    8: ("PCMA", 8_000, 1),
    26: ("JPEG", 90_000, 1),
    32: ("MPV", 90_000, 1),
    34: ("H263", 90_000, 1),
}


def _static_encoding(payload_type: int) -> tuple[str, int, int]:
    return STATIC_PAYLOAD_TYPES.get(payload_type, ("", 90_000, 1))


def _resolve(control: str, base_url: str) -> str:
    if not control or control == "*":
        return base_url
    if "://" in control:
        return control
    return base_url.rstrip("/") + "/" + control.lstrip("/")


def _h265_parameter_sets(parameters: dict[str, str]) -> h265.ParameterSets | None:
    """sprop-vps, sprop-sps and sprop-pps: base64 NAL units (the first of each)."""
    found = []
    for key in ("sprop-vps", "sprop-sps", "sprop-pps"):
        units = _base64_units(parameters.get(key, ""))
        if not units:
            return None
        found.append(units[0])
    return h265.ParameterSets(*found)


def _base64_units(value: str) -> list[bytes] | None:
    """Comma-separated base64 NAL units; None if one does not decode."""
    units = []
    for item in value.split(","):
        try:
            unit = base64.b64decode(item.strip() + "=" * (-len(item.strip()) % 4))
        except (binascii.Error, ValueError):
            return None
        if unit:
            units.append(unit)
    return units


def _parameter_sets(value: str) -> ParameterSets | None:
    """sprop-parameter-sets: base64 NAL units, comma-separated. A value that does not
    decode is ignored: the camera repeats its SPS and PPS in-band anyway."""
    sps = pps = None
    for unit in _base64_units(value) or []:
        if unit[0] & 0x1F == NAL_SPS:
            sps = unit
        elif unit[0] & 0x1F == NAL_PPS:
            pps = unit
    return ParameterSets(sps, pps) if sps and pps else None
