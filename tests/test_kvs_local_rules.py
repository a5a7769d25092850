"""kvs-local refuses what Kinesis Video Streams refuses, with the service's ErrorId (or
HTTP status), and stores nothing of a refused fragment; it takes what the service takes
(RELATIVE timecodes); and what it stores is a file players can seek in. Each body is
built by hand and sent, signed, to a kvs-local on a free loopback port."""

from __future__ import annotations

import json
import struct
import subprocess
import time
from pathlib import Path

import av
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from edge_agent.kvs_local.server import PutMediaServer
from edge_agent.media import audio, mkv
from edge_agent.media.ebml import binary, element, master, string, uint, unknown_size_master
from edge_agent.media.mkv import (
    G711,
    H264,
    AudioTrack,
    Frame,
    VideoTrack,
    cluster,
    end_of_fragment,
    stream_header,
)
from tests.putmedia_client import (
    CREDENTIALS,
    Answer,
    open_put_media,
    put_media,
    read_answer,
    send_chunks,
)
from tests.test_mkv import FPS, START_MS, encoded_frames


@pytest.fixture(scope="module")
def video() -> tuple[bytes, list[list[Frame]]]:
    """The avcC record and three one-second fragments (times from START_MS)."""
    sets, frames = encoded_frames()
    return sets.avcc_record(), [frames[i : i + FPS] for i in range(0, len(frames), FPS)]


def header_of(codec_private: bytes) -> bytes:
    return stream_header(VideoTrack(H264, codec_private, 320, 240))


def retimed(frames: list[Frame], start_ms: int) -> list[Frame]:
    shift = start_ms - frames[0].time_ms
    return [Frame(f.time_ms + shift, f.keyframe, f.data) for f in frames]


def errors(answer: Answer) -> list[int | None]:
    return [a.error_id for a in answer.acks if a.event_type == "ERROR"]


def persisted(answer: Answer) -> list[int | None]:
    return [a.fragment_timecode for a in answer.acks if a.event_type == "PERSISTED"]


def stored(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.rglob("*.mkv"))


def tags(*pairs: tuple[str, str]) -> bytes:
    simple = [
        master(mkv.SIMPLE_TAG, string(mkv.TAG_NAME, name), string(mkv.TAG_STRING, value))
        for name, value in pairs
    ]
    return master(mkv.TAGS, master(mkv.TAG, master(mkv.TARGETS), *simple))


#: G.711 A-law, 8 kHz mono: any bytes decode, one a sample.
G711_TRACK = AudioTrack(G711, audio.g711_codec_private(audio.WAVE_FORMAT_ALAW, 8000, 1), 8000, 1)
AUDIO_STEP_MS = 20
ALAW = b"\xd5" * 160  # 20 ms of silence
#: 20 ms of A-law that is also valid AVCC (a 4-byte length, then that many bytes), so
#: that only the track rules can refuse it.
AVCC_SHAPED_ALAW = (156).to_bytes(4, "big") + b"\xd5" * 156


def audio_frames(start_ms: int, end_ms: int, step_ms: int = AUDIO_STEP_MS) -> list[Frame]:
    """A-law frames of ``step_ms`` each, from ``start_ms`` up to (not including) ``end_ms``."""
    data = b"\xd5" * (8 * step_ms)
    return [Frame(at, True, data, mkv.AUDIO_TRACK) for at in range(start_ms, end_ms, step_ms)]


def with_audio(fragment: list[Frame]) -> list[Frame]:
    """A video fragment with A-law frames interleaved, from its first frame to its last
    (both tracks have a frame at the first frame's time)."""
    return mkv.interleaved(fragment, audio_frames(fragment[0].time_ms, fragment[-1].time_ms + 1))


def av_header(avcc: bytes, track: AudioTrack | None = G711_TRACK) -> bytes:
    return stream_header(VideoTrack(H264, avcc, 320, 240), track)


def block(track: int, relative: int, data: bytes, *, key: bool = True) -> bytes:
    """A SimpleBlock made by hand (mkv.cluster refuses to write the broken ones)."""
    head = bytes((0x80 | track,)) + relative.to_bytes(2, "big", signed=True)
    return element(mkv.SIMPLE_BLOCK, head + bytes((0x80 if key else 0,)) + data)


def raw_cluster(timecode: int, *blocks: bytes) -> bytes:
    return unknown_size_master(mkv.CLUSTER) + uint(mkv.TIMECODE, timecode) + b"".join(blocks)


def put_relative(url: str, start: str, chunks: list[bytes]) -> Answer:
    headers = {
        "x-amzn-stream-name": "cam",
        "x-amzn-fragment-timecode-type": "RELATIVE",
        "x-amzn-producer-start-timestamp": start,
        "x-amzn-fragment-acknowledgment-required": "1",
        "Transfer-Encoding": "chunked",
        "Connection": "keep-alive",
    }
    request = AWSRequest(method="POST", url=f"{url}/putMedia", data=b"", headers=headers)
    SigV4Auth(CREDENTIALS, "kinesisvideo", "us-east-1").add_auth(request)
    sock = open_put_media(url, dict(request.headers.items()))
    send_chunks(sock, chunks)
    return read_answer(sock)


@pytest.mark.parametrize(
    "start_ms",
    [int(time.time() * 1000) + 3_600_000, 0, 946_684_799_000],
    ids=["an-hour-ahead", "the-1970-epoch", "just-before-2000"],
)
def test_a_fragment_with_an_implausible_producer_time_gets_4007(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]], start_ms: int
) -> None:
    avcc, fragments = video
    answer = put_media(
        server.url, "cam", [header_of(avcc), cluster(retimed(fragments[0], start_ms))]
    )
    assert errors(answer) == [4007]
    assert persisted(answer) == []
    assert server.streams["cam"].fragments == 0
    assert stored(tmp_path) == []


def test_the_connection_goes_on_after_a_4007(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]]
) -> None:
    avcc, fragments = video
    future = retimed(fragments[0], int(time.time() * 1000) + 3_600_000)
    answer = put_media(server.url, "cam", [header_of(avcc), cluster(future), cluster(fragments[1])])
    assert errors(answer) == [4007]
    assert persisted(answer) == [fragments[1][0].time_ms]


def test_annexb_codec_private_data_gets_4006(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]]
) -> None:
    avcc, fragments = video
    sps_size = int.from_bytes(avcc[6:8], "big")
    sps = avcc[8 : 8 + sps_size]
    pps = avcc[8 + sps_size + 3 :]
    annexb = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps
    answer = put_media(server.url, "cam", [header_of(annexb), cluster(fragments[0])])
    assert errors(answer) == [4006]
    assert persisted(answer) == [] and stored(tmp_path) == []


def test_a_webm_doctype_gets_4006(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]]
) -> None:
    avcc, fragments = video
    webm = master(
        mkv.EBML,
        uint(mkv.EBML_VERSION, 1),
        uint(mkv.EBML_READ_VERSION, 1),
        string(mkv.DOC_TYPE, "webm"),
        uint(mkv.DOC_TYPE_VERSION, 2),
        uint(mkv.DOC_TYPE_READ_VERSION, 2),
    )
    header = webm + header_of(avcc)[len(mkv.ebml_header()) :]
    answer = put_media(server.url, "cam", [header, cluster(fragments[0])])
    assert errors(answer) == [4006]
    assert persisted(answer) == [] and stored(tmp_path) == []


@pytest.mark.parametrize("overlap", ["inside", "at-the-last-frame"])
def test_a_fragment_starting_before_the_previous_fragments_last_frame_gets_4004(
    server: PutMediaServer,
    tmp_path: Path,
    video: tuple[bytes, list[list[Frame]]],
    overlap: str,
) -> None:
    """Its cluster time is later than the previous cluster's, but not than its last frame."""
    avcc, fragments = video
    first = fragments[0]
    start = first[-1].time_ms - 500 if overlap == "inside" else first[-1].time_ms
    late = retimed(fragments[1], start)
    after = retimed(fragments[2], first[-1].time_ms + 5000)
    answer = put_media(
        server.url, "cam", [header_of(avcc), cluster(first), cluster(late), cluster(after)]
    )
    assert errors(answer) == [4004]
    assert persisted(answer) == [first[0].time_ms, after[0].time_ms]
    (path,) = server.streams["cam"].files
    with av.open(str(path)) as container:
        times = [p.pts for p in container.demux(video=0) if p.size]
    assert times == [f.time_ms for f in first + after]


def test_a_laced_block_gets_4006(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]]
) -> None:
    avcc, fragments = video
    plain = cluster(fragments[0])
    laced = plain.replace(b"\x81\x00\x00\x80", b"\x81\x00\x00\x82", 1)  # Xiph lacing bits
    assert laced != plain
    answer = put_media(server.url, "cam", [header_of(avcc), laced])
    assert errors(answer) == [4006]
    assert persisted(answer) == [] and stored(tmp_path) == []


def test_ten_tags_are_taken_and_eleven_get_4009(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]]
) -> None:
    """The end-of-fragment tag counts: nine user tags and it make ten."""
    avcc, fragments = video
    nine = [tags((f"site-{i}", "a")) for i in range(9)]
    answer = put_media(
        server.url, "cam", [header_of(avcc), cluster(fragments[0]), *nine, end_of_fragment()]
    )
    assert errors(answer) == [] and persisted(answer) == [fragments[0][0].time_ms]
    ten = [*nine, tags(("site-9", "a"))]
    answer = put_media(
        server.url, "cam", [header_of(avcc), cluster(fragments[1]), *ten, end_of_fragment()]
    )
    assert errors(answer) == [4009]
    assert persisted(answer) == []
    assert server.streams["cam"].timecodes == [fragments[0][0].time_ms]
    assert len(stored(tmp_path)) == 1


@pytest.mark.parametrize(
    "tag",
    [("AWS_MY_TAG", "x"), ("AWSome", "x"), ("n" * 129, "x"), ("site", "v" * 257)],
    ids=["aws-prefix", "aws-word", "long-name", "long-value"],
)
def test_a_reserved_or_oversized_tag_gets_4009(
    server: PutMediaServer,
    tmp_path: Path,
    video: tuple[bytes, list[list[Frame]]],
    tag: tuple[str, str],
) -> None:
    avcc, fragments = video
    chunks = [header_of(avcc), cluster(fragments[0]), tags(tag), end_of_fragment()]
    answer = put_media(server.url, "cam", chunks)
    assert errors(answer) == [4009]
    assert persisted(answer) == [] and stored(tmp_path) == []


@pytest.mark.parametrize("name", ["../escaped", "..", ".", "a/b", "", "x" * 257, "cam\\..\\x"])
def test_a_stream_name_outside_the_services_pattern_is_refused_and_writes_nothing(
    tmp_path: Path, video: tuple[bytes, list[list[Frame]]], name: str
) -> None:
    """Any stream is taken here (no --stream list, no credentials): the name is the only
    thing between the request and a file outside --dir."""
    endpoint = PutMediaServer(tmp_path / "received").start()
    try:
        avcc, fragments = video
        answer = put_media(endpoint.url, name, [header_of(avcc), cluster(fragments[0])])
        assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
        assert (answer.status, answer.headers["x-amzn-errortype"]) == (
            400,
            "InvalidArgumentException",
        )
        good = put_media(endpoint.url, "a_B-9.x", [header_of(avcc), cluster(fragments[0])])
        assert persisted(good) == [fragments[0][0].time_ms]
        assert [p.parent for p in tmp_path.rglob("*.mkv")] == [tmp_path / "received"]
    finally:
        endpoint.stop()


def test_relative_timecodes_are_taken_as_start_timestamp_plus_cluster_time(
    server: PutMediaServer, video: tuple[bytes, list[list[Frame]]]
) -> None:
    """The start timestamp as the C producer writes it: ".89" is 89 ms, not 890."""
    avcc, fragments = video
    start_ms = START_MS + 89
    relative = [retimed(f, f[0].time_ms - START_MS) for f in fragments]
    assert relative[0][0].time_ms == 0
    chunks = [header_of(avcc)] + [cluster(f) for f in relative]
    answer = put_relative(server.url, f"{START_MS // 1000}.89", chunks)
    assert answer.status == 200 and errors(answer) == []
    assert persisted(answer) == [0, 1000, 2000]  # the timecodes as sent
    assert server.streams["cam"].timecodes == [start_ms, start_ms + 1000, start_ms + 2000]
    (path,) = server.streams["cam"].files
    with av.open(str(path)) as container:
        times = [p.pts for p in container.demux(video=0) if p.size]
    assert times == [start_ms + f.time_ms for fragment in relative for f in fragment]


def test_a_relative_stream_without_a_start_timestamp_is_refused(server: PutMediaServer) -> None:
    answer = put_relative(server.url, "soon", [b"x"])
    assert (answer.status, answer.headers["x-amzn-errortype"]) == (400, "InvalidArgumentException")


def test_a_stored_file_has_a_duration_and_cues_and_players_can_seek_in_it(
    server: PutMediaServer, video: tuple[bytes, list[list[Frame]]]
) -> None:
    avcc, fragments = video
    chunks = [header_of(avcc)] + [cluster(f) + end_of_fragment() for f in fragments]
    assert len(persisted(put_media(server.url, "cam", chunks))) == 3
    (path,) = server.streams["cam"].files
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert float(json.loads(probe.stdout)["format"]["duration"]) == pytest.approx(3.0, abs=0.05)
    lines = subprocess.run(
        ["mkvinfo", "-a", str(path)], check=True, capture_output=True, text=True, timeout=60
    ).stdout.splitlines()  # -a: the entries of Cues and SeekHead too
    assert "|+ Cues" in lines and "|+ Seek head" in lines
    assert sum(line.endswith("+ Cue point") for line in lines) == 3
    assert any("(KaxCues)" in line for line in lines)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(fragments[2][0].time_ms + 300, stream=stream)
        packet = next(p for p in container.demux(stream) if p.size)
        assert (packet.pts, packet.is_keyframe) == (fragments[2][0].time_ms, True)
        container.seek(fragments[1][0].time_ms + 300, stream=stream)
        frame = next(container.decode(stream))
        assert (frame.pts, frame.width) == (fragments[1][0].time_ms, 320)


def test_a_fragment_sent_again_on_a_new_connection_gets_a_file_of_its_own(
    server: PutMediaServer, video: tuple[bytes, list[list[Frame]]]
) -> None:
    """A producer retrying after a dropped connection: the earlier file is kept."""
    avcc, fragments = video
    for _ in range(2):
        answer = put_media(server.url, "cam", [header_of(avcc), cluster(fragments[0])])
        assert persisted(answer) == [fragments[0][0].time_ms]
    files = server.streams["cam"].files
    assert len(set(files)) == 2 and all(path.stat().st_size > 0 for path in files)


def test_equal_times_across_tracks_are_taken_and_a_block_earlier_than_the_last_gets_4004(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]]
) -> None:
    avcc, fragments = video
    first = with_audio(fragments[0])
    assert first[0].time_ms == first[1].time_ms and first[1].track == mkv.AUDIO_TRACK
    answer = put_media(server.url, "cam", [av_header(avcc), cluster(first)])
    assert errors(answer) == [] and persisted(answer) == [first[0].time_ms]
    key, next_frame = fragments[1][0], fragments[1][1]
    at = key.time_ms
    back = raw_cluster(
        at, block(1, 0, key.data), block(1, 33, next_frame.data, key=False), block(2, 20, ALAW)
    )
    answer = put_media(server.url, "cam", [av_header(avcc), back])
    assert errors(answer) == [4004] and persisted(answer) == []
    assert server.streams["cam"].timecodes == [first[0].time_ms]


def test_a_repeated_time_within_the_audio_track_gets_4004(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]]
) -> None:
    """Audio at the time of the video frame before it is fine; at its own last time not."""
    avcc, fragments = video
    key, next_frame = fragments[0][0], fragments[0][1]
    blocks = [block(1, 0, key.data), block(2, 10, ALAW)]
    blocks += [block(1, 33, next_frame.data, key=False), block(2, 33, ALAW)]
    answer = put_media(server.url, "cam", [av_header(avcc), raw_cluster(key.time_ms, *blocks)])
    assert errors(answer) == [] and persisted(answer) == [key.time_ms]
    repeated = raw_cluster(key.time_ms, *blocks, block(2, 33, ALAW))
    answer = put_media(server.url, "cam", [av_header(avcc), repeated])
    assert errors(answer) == [4004] and persisted(answer) == []


@pytest.mark.parametrize("early", ["audio", "video"])
def test_a_block_before_its_clusters_timecode_gets_4006(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]], early: str
) -> None:
    """A negative relative timecode: an audio block, or the fragment's key frame itself
    (which is then before nothing else in the fragment)."""
    avcc, fragments = video
    key = fragments[0][0]
    if early == "audio":
        blocks = [block(1, 0, key.data), block(2, -5, ALAW)]
    else:
        blocks = [block(1, -5, key.data), block(2, 0, AVCC_SHAPED_ALAW)]
    answer = put_media(server.url, "cam", [av_header(avcc), raw_cluster(key.time_ms, *blocks)])
    assert errors(answer) == [4006]
    assert persisted(answer) == [] and stored(tmp_path) == []


def test_a_fragment_without_frames_of_a_track_in_trackinfo_gets_4011(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]]
) -> None:
    avcc, fragments = video
    answer = put_media(server.url, "cam", [av_header(avcc), cluster(fragments[0])])
    assert errors(answer) == [4011]
    assert persisted(answer) == [] and stored(tmp_path) == []
    chunks = [av_header(avcc), cluster(with_audio(fragments[1])), cluster(fragments[2])]
    answer = put_media(server.url, "cam", chunks)
    assert errors(answer) == [4011] and persisted(answer) == [fragments[1][0].time_ms]


def test_a_fragment_starting_with_an_audio_block_gets_4006(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]]
) -> None:
    avcc, fragments = video
    key = fragments[0][0]
    blocks = [block(2, 0, AVCC_SHAPED_ALAW), block(1, 0, key.data), block(2, 20, ALAW)]
    answer = put_media(server.url, "cam", [av_header(avcc), raw_cluster(key.time_ms, *blocks)])
    assert errors(answer) == [4006]
    assert persisted(answer) == [] and stored(tmp_path) == []


def test_a_block_of_a_track_not_in_trackinfo_gets_4010(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]]
) -> None:
    avcc, fragments = video
    key = fragments[0][0]
    blocks = [block(1, 0, key.data), block(2, 0, ALAW), block(3, 10, ALAW)]
    answer = put_media(server.url, "cam", [av_header(avcc), raw_cluster(key.time_ms, *blocks)])
    assert errors(answer) == [4010]
    assert persisted(answer) == [] and stored(tmp_path) == []


def _waveformatex(tag: int, channels: int, rate: int) -> bytes:
    return struct.pack("<HHIIHHH", tag, channels, rate, rate * channels, channels, 8, 0)


@pytest.mark.parametrize(
    ("codec_id", "private"),
    [
        ("A_AAC", b"\x12"),  # one byte
        ("A_AAC", b"\x16\x88"),  # sampling frequency index 13 (reserved)
        ("A_AAC", b"\x17\x88"),  # index 15 without its 24-bit rate
        ("A_AAC", b"\x12\x00"),  # channel configuration 0 (a program config element)
        ("A_AAC", b"\x12\x78"),  # channel configuration 15 (reserved)
        (G711, struct.pack("<HHIIHHH", 1, 1, 8000, 16000, 2, 16, 0)),  # format 1: PCM
        (G711, _waveformatex(audio.WAVE_FORMAT_ALAW, 1, 8000)[:14]),  # too short
        (G711, _waveformatex(audio.WAVE_FORMAT_MULAW, 3, 8000)),  # three channels
        (G711, _waveformatex(audio.WAVE_FORMAT_ALAW, 1, 4000)),  # 4 kHz
    ],
    ids=[
        "aac-1-byte", "aac-index-13", "aac-index-15-cut", "aac-pce", "aac-channels-15",
        "g711-pcm", "g711-short", "g711-3-channels", "g711-4khz",
    ],
)  # fmt: skip
def test_audio_codec_private_data_the_sdk_would_not_write_gets_4006(
    server: PutMediaServer,
    tmp_path: Path,
    video: tuple[bytes, list[list[Frame]]],
    codec_id: str,
    private: bytes,
) -> None:
    avcc, fragments = video
    header = av_header(avcc, AudioTrack(codec_id, private, 8000, 1))
    answer = put_media(server.url, "cam", [header, cluster(fragments[0])])
    assert errors(answer) == [4006]
    assert persisted(answer) == [] and stored(tmp_path) == []


def test_four_tracks_get_4012(
    server: PutMediaServer, tmp_path: Path, video: tuple[bytes, list[list[Frame]]]
) -> None:
    avcc, fragments = video
    entries = [
        master(
            mkv.TRACK_ENTRY,
            uint(mkv.TRACK_NUMBER, number),
            uint(mkv.TRACK_TYPE, mkv.TRACK_TYPE_VIDEO if number == 1 else mkv.TRACK_TYPE_AUDIO),
            string(mkv.CODEC_ID, H264 if number == 1 else G711),
            binary(mkv.CODEC_PRIVATE, avcc if number == 1 else G711_TRACK.codec_private),
        )
        for number in range(1, 5)
    ]
    header = mkv.ebml_header() + unknown_size_master(mkv.SEGMENT) + master(mkv.TRACKS, *entries)
    answer = put_media(server.url, "cam", [header, cluster(with_audio(fragments[0]))])
    assert errors(answer) == [4012]
    assert persisted(answer) == [] and stored(tmp_path) == []
