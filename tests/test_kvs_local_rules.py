"""kvs-local refuses what Kinesis Video Streams refuses, with the service's ErrorId (or
HTTP status), and stores nothing of a refused fragment; it takes what the service takes
(RELATIVE timecodes); and what it stores is a file players can seek in. Each body is
built by hand and sent, signed, to a kvs-local on a free loopback port."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import av
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from edge_agent.kvs_local.server import PutMediaServer
from edge_agent.media import mkv
from edge_agent.media.ebml import master, string, uint
from edge_agent.media.mkv import H264, Frame, VideoTrack, cluster, end_of_fragment, stream_header
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
