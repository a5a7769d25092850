"""What the built-in RTSP client reads from a camera's answers: the session description
(SDP), the picture size from the SPS (checked against PyAV's own decoder), and Digest
authentication (RFC 2617's worked example)."""

from __future__ import annotations

import base64
from fractions import Fraction
from pathlib import Path

import av
import pytest

from edge_agent.media import h264, h265
from edge_agent.sources.camera.sdp import SdpError, audio_media, video_media

CAMERA_SDP = """v=0
o=- 1 1 IN IP4 192.168.1.64
s=Media Presentation
c=IN IP4 0.0.0.0
t=0 0
a=control:*
m=audio 0 RTP/AVP 8
a=rtpmap:8 PCMA/8000
a=control:trackID=2
m=video 0 RTP/AVP 96
a=rtpmap:96 H264/90000
a=fmtp:96 profile-level-id=420029; packetization-mode=1; sprop-parameter-sets={sets}
a=control:trackID=1
""".format(sets="Z00AH5pkAoAt/zUBAQFAAAD6AAAw1DoYAJiAAJiAu8uNDAATEAATEBd5cFA=,aO48gA==")


def test_a_camera_description_gives_the_video_control_clock_and_parameter_sets() -> None:
    media = video_media(CAMERA_SDP, "rtsp://192.168.1.64:554/Streaming/Channels/101/")
    assert media.control == "rtsp://192.168.1.64:554/Streaming/Channels/101/trackID=1"
    assert (media.payload_type, media.encoding, media.clock_rate) == (96, "H264", 90_000)
    assert media.parameter_sets is not None
    assert h264.nal_type(media.parameter_sets.sps) == h264.NAL_SPS
    assert media.parameter_sets.pps == b"\x68\xee\x3c\x80"
    assert h264.sps_dimensions(media.parameter_sets.sps) == (1280, 720)


@pytest.mark.parametrize(
    ("control", "base", "expected"),
    [
        ("rtsp://cam/live/track0", "rtsp://cam/live", "rtsp://cam/live/track0"),
        ("stream=0", "rtsp://cam/live", "rtsp://cam/live/stream=0"),  # as FFmpeg joins it
        ("stream=0", "rtsp://cam/live/", "rtsp://cam/live/stream=0"),
        ("*", "rtsp://cam/live", "rtsp://cam/live"),
    ],
)
def test_media_controls_resolve_against_the_base(control: str, base: str, expected: str) -> None:
    sdp = f"v=0\r\nm=video 0 RTP/AVP 97\r\na=rtpmap:97 H265/90000\r\na=control:{control}\r\n"
    media = video_media(sdp, base)
    assert media.control == expected
    assert media.encoding == "H265"
    assert media.parameter_sets is None


def test_a_description_without_video_or_rtpmap_is_refused_with_the_reason() -> None:
    with pytest.raises(SdpError, match="no video"):
        video_media("v=0\nm=audio 0 RTP/AVP 0\n", "rtsp://cam/")
    with pytest.raises(SdpError, match="no rtpmap"):
        video_media("v=0\nm=video 0 RTP/AVP 96\n", "rtsp://cam/")
    assert video_media("v=0\nm=video 0 RTP/AVP 26\n", "rtsp://cam/").encoding == "JPEG"


@pytest.mark.parametrize(
    ("size", "profile"),
    [("320x240", "baseline"), ("1280x720", "high"), ("1920x1080", "main"), ("642x362", "high")],
)
def test_the_sps_tells_the_picture_size_pyav_decodes(
    tmp_path: Path, size: str, profile: str
) -> None:
    width, height = (int(value) for value in size.split("x"))
    path = tmp_path / "sized.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"profile": profile}
        frame = av.VideoFrame(width, height, "yuv420p")
        frame.pts, frame.time_base = 0, Fraction(1, 30)
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(path)) as container:
        extradata = bytes(container.streams.video[0].codec_context.extradata or b"")
        decoded = next(container.decode(video=0))
    sets = h264.parameter_sets_from_avcc_record(extradata)
    assert h264.sps_dimensions(sets.sps) == (decoded.width, decoded.height) == (width, height)


def test_an_sps_cut_short_is_an_error_not_a_size() -> None:
    sps = video_media(CAMERA_SDP, "rtsp://cam/").parameter_sets
    assert sps is not None
    with pytest.raises(ValueError, match="ends early"):
        h264.sps_dimensions(sps.sps[:6])


def test_h265_parameter_sets_come_from_sprop_vps_sps_and_pps() -> None:
    vps, sps, pps = b"\x40\x01\x0c", b"\x42\x01\x01", b"\x44\x01\xc1"
    vps64, sps64, pps64 = (base64.b64encode(unit).decode() for unit in (vps, sps, pps))
    sdp = (
        "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H265/90000\r\n"
        f"a=fmtp:96 sprop-vps={vps64}; sprop-sps={sps64}; sprop-pps={pps64}\r\n"
    )
    media = video_media(sdp, "rtsp://cam/live")
    assert media.encoding == "H265"
    assert media.parameter_sets == h265.ParameterSets(vps, sps, pps)


def test_h265_with_decoding_order_numbers_is_refused() -> None:
    sdp = (
        "v=0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H265/90000\r\n"
        "a=fmtp:96 sprop-max-don-diff=2\r\n"
    )
    with pytest.raises(SdpError, match="decoding order"):
        video_media(sdp, "rtsp://cam/live")


def test_the_audio_of_a_description_by_static_payload_type_or_rtpmap() -> None:
    base = "rtsp://192.168.1.64:554/Streaming/Channels/101/"
    pcma = audio_media(CAMERA_SDP.replace("a=rtpmap:8 PCMA/8000\n", ""), base)
    assert pcma is not None  # payload type 8 needs no rtpmap (RFC 3551)
    assert (pcma.encoding, pcma.clock_rate, pcma.channels) == ("PCMA", 8000, 1)
    assert pcma.control == base + "trackID=2"
    aac = audio_media(
        "v=0\nm=video 0 RTP/AVP 96\na=rtpmap:96 H264/90000\n"
        "m=audio 0 RTP/AVP 97\na=rtpmap:97 MPEG4-GENERIC/48000/2\n"
        "a=fmtp:97 streamtype=5; mode=AAC-hbr; config=1190; SizeLength=13\n"
        "a=control:stream=1\n",
        "rtsp://cam/live",
    )
    assert aac is not None
    assert (aac.encoding, aac.clock_rate, aac.channels) == ("MPEG4-GENERIC", 48_000, 2)
    assert aac.parameters["config"] == "1190" and aac.parameters["sizelength"] == "13"
    assert aac.control == "rtsp://cam/live/stream=1"
    assert audio_media("v=0\nm=video 0 RTP/AVP 96\na=rtpmap:96 H264/90000\n", "rtsp://c/") is None
    with pytest.raises(SdpError, match="audio clock rate"):
        audio_media("v=0\nm=audio 0 RTP/AVP 97\na=rtpmap:97 PCMA/x\n", "rtsp://c/")
