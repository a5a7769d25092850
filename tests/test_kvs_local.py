"""`edge-agent kvs-local`: the PutMedia-compatible endpoint, against a client that signs
with botocore and streams chunked MKV; what it writes is read back with PyAV, ffprobe
and mkvinfo."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import av
import boto3
import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from edge_agent.delivery.budget import UploadBudget
from edge_agent.errors import SinkPaused
from edge_agent.kvs_local.server import PutMediaServer
from edge_agent.media import audio, mkv
from edge_agent.media.mkv import (
    AAC,
    G711,
    H264,
    AudioTrack,
    Frame,
    VideoTrack,
    cluster,
    end_of_fragment,
    stream_header,
)
from edge_agent.sinks.aws import sink_error
from edge_agent.sinks.kvs.control import control_endpoint, get_data_endpoint
from edge_agent.sinks.kvs.putmedia import PutMediaConnection
from tests.putmedia_client import (
    CREDENTIALS,
    open_put_media,
    put_media,
    read_answer,
    send_chunks,
    signed_headers,
)
from tests.support import REPO, free_port, wait_until
from tests.test_mkv import FPS, FRAMES, START_MS, encoded_frames
from tests.video_checks import ffprobe_streams, ffprobe_video, mkvinfo_lines


def stream_chunks(audio_track: AudioTrack | None = None) -> tuple[bytes, list[list[Frame]]]:
    sets, frames = encoded_frames()
    fragments = [frames[i : i + FPS] for i in range(0, FRAMES, FPS)]
    header = stream_header(VideoTrack(H264, sets.avcc_record(), 320, 240), audio_track)
    return header, fragments


def with_audio(fragments: list[list[Frame]], audio_frames: list[Frame]) -> list[list[Frame]]:
    """Each video fragment with the audio frames from its start to the next one's."""
    starts = [f[0].time_ms for f in fragments[1:]] + [audio_frames[-1].time_ms + 1]
    return [
        mkv.interleaved(fragment, [a for a in audio_frames if start <= a.time_ms < end])
        for fragment, start, end in zip(
            fragments, [f[0].time_ms for f in fragments], starts, strict=True
        )
    ]


def send_two_tracks(
    server: PutMediaServer, audio_track: AudioTrack, audio_frames: list[Frame]
) -> tuple[Path, list[list[Frame]]]:
    """A three-fragment stream with audio interleaved: every fragment taken; the file."""
    header, video = stream_chunks(audio_track)
    fragments = with_audio(video, audio_frames)
    answer = put_media(
        server.url, "cam", [header] + [cluster(f) + end_of_fragment() for f in fragments]
    )
    assert [a.error_id for a in answer.acks if a.event_type == "ERROR"] == []
    persisted = [a.fragment_timecode for a in answer.acks if a.event_type == "PERSISTED"]
    assert persisted == [f[0].time_ms for f in fragments]
    (path,) = server.streams["cam"].files
    with av.open(str(path)) as container:  # (PyAV's packets die with their container)
        packets = [(p.stream.type, p.pts, bytes(p)) for p in container.demux() if p.size]
    sound = [(at, data) for kind, at, data in packets if kind == "audio"]
    assert sound == [(a.time_ms, a.data) for a in audio_frames]
    assert sum(kind == "video" for kind, _, _ in packets) == FRAMES
    return path, fragments


def test_a_stream_with_aac_audio_is_stored_with_both_tracks(
    server: PutMediaServer, tmp_path: Path
) -> None:
    """Real AAC (FFmpeg's encoder, a 1 kHz sine at 16 kHz): 1024 samples, 64 ms a frame;
    both tracks have a frame at the stream's first time."""
    encoded = tmp_path / "sine.m4a"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=16000",
         "-t", "3", "-c:a", "aac", "-ac", "1", str(encoded)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with av.open(str(encoded)) as source:
        asc = source.streams.audio[0].codec_context.extradata
        assert asc is not None  # the AudioSpecificConfig
        packets = [bytes(p) for p in source.demux(audio=0) if p.size]
    frames = [Frame(START_MS + i * 64, True, p, mkv.AUDIO_TRACK) for i, p in enumerate(packets)]
    path, fragments = send_two_tracks(server, AudioTrack(AAC, asc, 16000, 1), frames)
    assert fragments[0][0].time_ms == fragments[0][1].time_ms == START_MS
    video, sound = ffprobe_streams(path)
    assert (video["codec_name"], video["width"]) == ("h264", 320)
    assert (sound["codec_name"], sound["sample_rate"], sound["channels"]) == ("aac", "16000", 1)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    duration = float(json.loads(probe.stdout)["format"]["duration"])
    assert duration == pytest.approx((frames[-1].time_ms + 64 - START_MS) / 1000, abs=0.002)


@pytest.mark.parametrize(
    ("format_tag", "codec_name"),
    [(audio.WAVE_FORMAT_ALAW, "pcm_alaw"), (audio.WAVE_FORMAT_MULAW, "pcm_mulaw")],
)
def test_a_stream_with_g711_audio_is_stored_with_both_tracks(
    server: PutMediaServer, format_tag: int, codec_name: str
) -> None:
    """G.711 at 8 kHz, 20 ms (160 one-byte samples) a frame: any bytes are samples."""
    rng = random.Random(format_tag)
    track = AudioTrack(G711, audio.g711_codec_private(format_tag, 8000, 1), 8000, 1)
    frames = [
        Frame(START_MS + at, True, rng.randbytes(160), mkv.AUDIO_TRACK)
        for at in range(0, FRAMES * 1000 // FPS, 20)
    ]
    path, fragments = send_two_tracks(server, track, frames)
    equal = {f.time_ms for f in fragments[1] if f.track == 1} & {a.time_ms for a in frames}
    assert equal  # times both tracks have, inside a fragment too
    video, sound = ffprobe_streams(path)
    assert video["codec_name"] == "h264"
    assert (sound["codec_name"], sound["sample_rate"], sound["channels"]) == (codec_name, "8000", 1)


def test_a_stream_is_acknowledged_fragment_by_fragment_and_stored_playable(
    server: PutMediaServer,
) -> None:
    header, fragments = stream_chunks()
    chunks = [header] + [cluster(f) for f in fragments]
    answer = put_media(server.url, "cam", chunks)
    assert answer.status == 200
    kinds = [(a.event_type, a.fragment_timecode) for a in answer.acks]
    expected = []
    for fragment in fragments:
        at = fragment[0].time_ms
        expected += [("BUFFERING", at), ("RECEIVED", at), ("PERSISTED", at)]
    assert kinds == expected
    persisted = [a.fragment_number for a in answer.acks if a.event_type == "PERSISTED"]
    assert all(isinstance(n, str) and n.isdigit() for n in persisted)
    assert len(set(persisted)) == 3
    (path,) = server.streams["cam"].files
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert [bytes(p) for p in packets] == [f.data for fragment in fragments for f in fragment]
    assert int(ffprobe_video(path)["nb_read_frames"]) == FRAMES
    lines = mkvinfo_lines(path)
    assert lines.count("|+ Cluster") == 3
    assert "|   + Pixel width: 320" in lines


def test_chunks_that_split_elements_anywhere_are_fine(server: PutMediaServer) -> None:
    header, fragments = stream_chunks()
    data = header + b"".join(cluster(f) for f in fragments)
    chunks = [data[i : i + 977] for i in range(0, len(data), 977)]
    answer = put_media(server.url, "cam", chunks)
    assert [a.event_type for a in answer.acks].count("PERSISTED") == 3


def test_a_tampered_or_wrongly_signed_request_is_refused(server: PutMediaServer) -> None:
    headers = signed_headers(server.url, "cam")
    headers["x-amzn-stream-name"] = "other"  # signed for "cam"
    sock = open_put_media(server.url, headers)
    send_chunks(sock, [b"x"])
    answer = read_answer(sock)
    assert (answer.status, answer.headers["x-amzn-errortype"]) == (403, "InvalidSignatureException")
    wrong_secret = Credentials(CREDENTIALS.access_key, "not-the-secret")
    assert put_media(server.url, "cam", [b"x"], credentials=wrong_secret).status == 403
    unknown = put_media(server.url, "cam", [b"x"], credentials=Credentials("AKIDOTHER", "s"))
    assert unknown.status == 401
    assert server.streams["cam"].fragments == 0


def test_unknown_streams_and_a_second_connection_are_refused(server: PutMediaServer) -> None:
    assert put_media(server.url, "nope", [b"x"]).headers["x-amzn-errortype"] == (
        "ResourceNotFoundException"
    )
    header, fragments = stream_chunks()
    first = open_put_media(server.url, signed_headers(server.url, "cam"))
    send_chunks(first, [header, cluster(fragments[0])], last=False)
    wait_until(lambda: server.streams["cam"].active, 10, 0.01, "the first connection")
    second = put_media(server.url, "cam", [header])
    assert (second.status, second.headers["x-amzn-errortype"]) == (
        400,
        "ConnectionLimitExceededException",
    )
    send_chunks(first, [])
    assert [a.event_type for a in read_answer(first).acks].count("PERSISTED") == 1


def test_a_connection_the_sink_closes_frees_the_stream_at_once(server: PutMediaServer) -> None:
    """The sink's reader thread is waiting for acknowledgements when the sink drops the
    connection (a schedule window holds the backlog mid-fragment): the end goes out on
    the wire at once, not when the reader's socket timeout (30 s here) runs out, so the
    stream's next connection is taken."""
    header, fragments = stream_chunks()

    def connect() -> PutMediaConnection:
        connection = PutMediaConnection(
            server.url, "cam", CREDENTIALS.get_frozen_credentials(), region="us-east-1",
            budget=UploadBudget(None, 1024), stop=threading.Event(), timeout=30,
        )  # fmt: skip
        connection.open()
        connection.send(header)
        return connection

    first = connect()
    first.send(cluster(fragments[0])[:1000])  # a fragment cut short
    assert first.answered.wait(10)  # the reader now waits for acknowledgements
    assert server.streams["cam"].active
    first.close()
    wait_until(lambda: not server.streams["cam"].active, 2, 0.01, "the stream free again")
    second = connect()
    second.send(cluster(fragments[1]))
    second.finish()
    answers = [second.acks.get(timeout=10) for _ in range(3)]
    second.close()
    assert [a.event_type for a in answers if a is not None and not isinstance(a, Exception)] == [
        "BUFFERING", "RECEIVED", "PERSISTED",
    ]  # fmt: skip
    assert server.streams["cam"].refused_connections == 0


def test_fragments_that_break_the_rules_get_the_services_error_ids(
    server: PutMediaServer,
) -> None:
    header, fragments = stream_chunks()
    # Back in time: the second fragment is refused with 4004 and skipped, the third taken.
    answer = put_media(
        server.url,
        "cam",
        [header, cluster(fragments[1]), cluster(fragments[0]), cluster(fragments[2])],
    )
    errors = [a.error_id for a in answer.acks if a.event_type == "ERROR"]
    assert errors == [4004]
    assert [a.event_type for a in answer.acks].count("PERSISTED") == 2
    # A fragment whose first frame is not a keyframe (its block's key flag cleared):
    # invalid MKV data, and the stream ends.
    first = fragments[0][0]
    keyframe_led = cluster([Frame(first.time_ms + 60_000, True, first.data)])
    not_key = keyframe_led.replace(b"\x81\x00\x00\x80", b"\x81\x00\x00\x00", 1)
    assert not_key != keyframe_led
    answer = put_media(server.url, "cam", [header, not_key])
    assert [a.error_id for a in answer.acks if a.event_type == "ERROR"] == [4006]


def test_a_fragment_longer_than_the_limit_gets_4002(tmp_path: Path) -> None:
    endpoint = PutMediaServer(tmp_path / "r", credentials=CREDENTIALS, max_fragment_ms=500).start()
    try:
        header, fragments = stream_chunks()
        answer = put_media(endpoint.url, "any-stream", [header, cluster(fragments[0])])
        assert [a.error_id for a in answer.acks if a.event_type == "ERROR"] == [4002]
    finally:
        endpoint.stop()


def test_the_control_plane_answers_boto3(server: PutMediaServer) -> None:
    client = boto3.client(
        "kinesisvideo",
        region_name="us-east-1",
        endpoint_url=server.url,
        aws_access_key_id=CREDENTIALS.access_key,
        aws_secret_access_key=CREDENTIALS.secret_key,
    )
    endpoint = client.get_data_endpoint(StreamName="cam", APIName="PUT_MEDIA")
    assert endpoint["DataEndpoint"] == server.url
    info = client.describe_stream(StreamName="cam")["StreamInfo"]
    assert info["Status"] == "ACTIVE"


def test_edge_agent_kvs_local_serves_until_terminated(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "edge_agent", "kvs-local", "--port", str(port)]
    command += ["--dir", str(tmp_path / "files"), "--stream", "cam"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert f"PutMedia endpoint at http://127.0.0.1:{port}" in line
            header, fragments = stream_chunks()
            answer = put_media(f"http://127.0.0.1:{port}", "cam", [header, cluster(fragments[0])])
            assert [a.event_type for a in answer.acks] == ["BUFFERING", "RECEIVED", "PERSISTED"]
            assert len(list((tmp_path / "files").glob("cam-*.mkv"))) == 1
            process.send_signal(signal.SIGTERM)
            assert process.wait(10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def test_the_sinks_getdataendpoint_call_and_how_its_refusals_are_classified(
    server: PutMediaServer,
) -> None:
    """The KVS sink's own signed GetDataEndpoint (sinks/kvs/control.py) against
    kvs-local: the data endpoint for a known stream; for an unknown one botocore's
    ClientError with the service's code, which the sinks' classifier turns into a pause;
    and the default endpoints, China regions included."""

    def ask(stream: str) -> str:
        return get_data_endpoint(
            server.url, stream, CREDENTIALS.get_frozen_credentials(), region="us-east-1",
            timeout=5, budget=UploadBudget(None, 1024), stop=threading.Event(),
        )  # fmt: skip

    assert ask("cam") == server.url
    with pytest.raises(ClientError) as refused:
        ask("nope")
    assert refused.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert isinstance(sink_error(refused.value), SinkPaused)
    assert ("/getDataEndpoint", CREDENTIALS.access_key) in server.signed_with
    assert control_endpoint("eu-west-1", None) == "https://kinesisvideo.eu-west-1.amazonaws.com"
    assert control_endpoint("cn-north-1", None).endswith(".amazonaws.com.cn")
    assert control_endpoint("us-east-1", "http://127.0.0.1:8090/") == "http://127.0.0.1:8090"
