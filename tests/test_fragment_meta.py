"""The record a camera stores with each fragment, read back by the Kinesis Video sink."""

from __future__ import annotations

import json

import pytest

from edge_agent.media.fragment_meta import FragmentMeta
from edge_agent.media.mkv import AAC, H264, AudioTrack, VideoTrack


def test_what_a_camera_writes_the_sink_reads_back() -> None:
    meta = FragmentMeta("door", 60, 1967, VideoTrack(H264, b"\x01\x64\x00\x1f", 1280, 720))
    text = meta.to_json()
    assert json.loads(text) == {
        "camera": "door",
        "frames": 60,
        "duration_ms": 1967,
        "codec_id": H264,
        "codec_private": "AWQAHw==",
        "width": 1280,
        "height": 720,
    }
    assert " " not in text  # compact: it is stored with every fragment
    assert FragmentMeta.from_json(text) == meta


def test_an_audio_track_is_written_only_when_the_fragment_has_audio() -> None:
    video = VideoTrack(H264, b"\x01", 320, 240)
    meta = FragmentMeta("door", 30, 967, video, AudioTrack(AAC, b"\x14\x08", 16000, 1))
    text = meta.to_json()
    assert json.loads(text)["audio"] == {
        "codec_id": AAC,
        "codec_private": "FAg=",
        "sampling_hz": 16000,
        "channels": 1,
    }
    assert FragmentMeta.from_json(text) == meta
    assert meta.tracks == (video, meta.audio)
    assert "audio" not in FragmentMeta("door", 30, 967, video).to_json()


def test_missing_fields_read_as_an_h264_track_of_unknown_size() -> None:
    assert FragmentMeta.from_json(None) == FragmentMeta("", 0, 0, VideoTrack(H264, b"", 0, 0))


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        '{"width": "wide"}',
        '{"codec_private": "a"}',
        '{"audio": [1]}',
        '{"audio": {"codec_id": "A_AAC"}}',
    ],
)
def test_unreadable_metadata_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        FragmentMeta.from_json(text)
