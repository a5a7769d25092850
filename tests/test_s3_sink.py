"""The "s3" sink against a real moto S3 server: snapshots from a camera's events arrive
as decodable JPEGs; a multipart upload killed (SIGKILL) in the middle resumes with the
parts already there; every part passes the upload budget; uploads abandoned long ago are
aborted at start."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import av
import pytest

from edge_agent.config.budget import ShareConfig
from edge_agent.config.loading import parse_config
from edge_agent.delivery.budget import UploadBudget
from edge_agent.records import LeasedRecord
from edge_agent.sinks.base import Entry, Request, Sent
from edge_agent.sinks.s3.sink import S3Sink
from tests.moto_server import MotoServer
from tests.support import (
    AgentProcess,
    Mosquitto,
    cli,
    local_client,
    start_agent,
    wait_until,
    write_config,
)

BUCKET = "edge-media"
MIB = 1024 * 1024


@pytest.fixture
def s3(moto: MotoServer) -> Any:
    moto.reset()
    client = local_client(moto.endpoint, "s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def _sink_config(moto: MotoServer, extra: str = "") -> Any:
    return _sink_config_from(moto.endpoint, extra)


def _record(record_id: int, payload: bytes, **meta: object) -> LeasedRecord:
    return LeasedRecord(record_id, "media", "door", 1_796_500_000_123, payload, 0, json.dumps(meta))


def _objects(s3: Any) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents") or []
    return {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def test_an_object_goes_under_its_key_with_its_type_and_metadata(s3: Any, moto: MotoServer) -> None:
    budget = UploadBudget(None, 0).share("media", ShareConfig())
    sink = S3Sink(_sink_config(moto), budget, threading.Event(), device="gate-7")
    record = _record(
        41, b"\xff\xd8jpeg", kind="snapshot", camera="door", event=7, extension="jpg",
        content_type="image/jpeg", width=320, height=240,
    )  # fmt: skip
    assert sink.ready() is None
    outcomes = sink.outcomes(
        Request([Entry([record], record.payload)]),
        sink.transmit(Request([Entry([record], record.payload)])),
    )
    (stored_key,) = _objects(s3)
    assert outcomes == [Sent(None, stored_key)]
    head = s3.head_object(Bucket=BUCKET, Key=stored_key)
    assert stored_key.startswith("gate-7/door/snapshot/") and stored_key.endswith("-7-41.jpg")
    assert head["ContentType"] == "image/jpeg"
    assert head["Metadata"]["event"] == "7" and head["Metadata"]["width"] == "320"


def test_every_part_passes_the_upload_budget_with_its_body(s3: Any, moto: MotoServer) -> None:
    payload = bytes(range(256)) * (11 * MIB // 256)  # three parts of 5, 5 and 1 MiB
    snapshot = b"\xff\xd8" + bytes(100_000)
    budget = UploadBudget(None, 0).share("media", ShareConfig())
    extra = 'part_size = "5MiB"\nmultipart_threshold = "5MiB"\nmax_record_bytes = "32MiB"\n'
    sink = S3Sink(_sink_config_from(moto.endpoint, extra), budget, threading.Event())
    clip = _record(9, payload, kind="clip", camera="door", extension="mkv")
    still = _record(10, snapshot, kind="snapshot", camera="door", extension="jpg")
    sink.transmit(Request([Entry([clip], payload)]))
    assert sink.multipart_uploads == 1
    sink.transmit(Request([Entry([still], snapshot)]))
    assert sorted(len(body) for body in _objects(s3).values()) == [len(snapshot), len(payload)]
    # S3 bodies reach the budget as streams, not bytes: each one is measured all the same.
    sent = len(payload) + len(snapshot)
    assert sent < budget.admitted_bytes < sent + 64 * 1024  # plus request lines and headers
    assert sink.wire.bytes == budget.admitted_bytes


UPLOADER = """
import json, sys, threading
sys.path.insert(0, {repo!r})
from tests.test_s3_sink import _sink_config_from, _record
from edge_agent.config.budget import ShareConfig
from edge_agent.delivery.budget import UploadBudget
from edge_agent.sinks.base import Entry, Request
from edge_agent.sinks.s3.sink import S3Sink
budget = UploadBudget({rate}, {burst}).share("media", ShareConfig())
sink = S3Sink(_sink_config_from({endpoint!r}, {extra!r}), budget, threading.Event())
payload = open({payload!r}, "rb").read()
record = _record(9, payload, kind="clip", camera="door", extension="mkv")
sink.transmit(Request([Entry([record], payload)]))
print("done", flush=True)
"""


def _sink_config_from(endpoint: str, extra: str) -> Any:
    document = (
        f'[sinks.media]\ntype = "s3"\nbucket = "{BUCKET}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{endpoint}"\n{extra}'
    )
    return parse_config(tomllib.loads(document)).sinks["media"]


def test_a_multipart_upload_killed_in_the_middle_resumes_with_the_parts_already_there(
    s3: Any, moto: MotoServer, tmp_path: Path
) -> None:
    payload = bytes(range(256)) * (17 * MIB // 256)  # 17 MiB: four parts of 5 MiB
    source = tmp_path / "clip.bin"
    source.write_bytes(payload)
    extra = 'part_size = "5MiB"\nmultipart_threshold = "5MiB"\nmax_record_bytes = "32MiB"\n'
    repo = str(Path(__file__).resolve().parents[1])
    # At 2 MiB/s a 5 MiB part waits 2.5 s for the budget: the kill lands between parts.
    script = UPLOADER.format(
        repo=repo, rate=2 * MIB, burst=MIB, endpoint=moto.endpoint, extra=extra, payload=str(source)
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=repo)
    try:

        def parts_there() -> int:
            uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads") or []
            if not uploads:
                return 0
            upload = uploads[0]
            listed = s3.list_parts(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
            return len(listed.get("Parts") or [])

        wait_until(lambda: parts_there() >= 2, 60, 0.05, "two parts uploaded")
        child.kill()  # SIGKILL: no cleanup of any kind
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert _objects(s3) == {}, "the object is not complete before the upload is"
    before = parts_there()
    assert 2 <= before < 4

    budget = UploadBudget(None, 0).share("media", ShareConfig())
    sink = S3Sink(_sink_config_from(moto.endpoint, extra), budget, threading.Event())
    record = _record(9, payload, kind="clip", camera="door", extension="mkv")
    sink.transmit(Request([Entry([record], payload)]))
    assert sink.parts_resumed == before  # not sent again
    assert sink.multipart_uploads == 0  # the one begun before the kill was finished
    (body,) = _objects(s3).values()
    assert body == payload
    assert (s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads") or []) == []


def test_uploads_abandoned_long_ago_are_aborted_when_the_sink_starts(
    s3: Any, moto: MotoServer
) -> None:
    orphan = s3.create_multipart_upload(Bucket=BUCKET, Key="gate-7/door/clip/orphan.mkv")
    s3.upload_part(
        Bucket=BUCKET, Key="gate-7/door/clip/orphan.mkv", UploadId=orphan["UploadId"],
        PartNumber=1, Body=b"x" * 1024,
    )  # fmt: skip
    elsewhere = s3.create_multipart_upload(Bucket=BUCKET, Key="not-ours/file.bin")
    budget = UploadBudget(None, 0).share("media", ShareConfig())
    sink = S3Sink(
        _sink_config(
            moto, 'key = "gate-7/{camera}/{kind}/{id}.{extension}"\nabandon_after = "0s"\n'
        ),
        budget,
        threading.Event(),
    )
    assert sink.ready() is None
    assert sink.orphans_aborted == 1
    left = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads") or []
    assert [u["UploadId"] for u in left] == [elsewhere["UploadId"]]  # outside its prefix


def test_a_missing_bucket_pauses_the_sink_with_the_reason(moto: MotoServer) -> None:
    moto.reset()
    budget = UploadBudget(None, 0).share("media", ShareConfig())
    sink = S3Sink(_sink_config(moto), budget, threading.Event())
    record = _record(1, b"x", kind="snapshot", camera="door", extension="jpg")
    with pytest.raises(Exception) as raised:
        sink.transmit(Request([Entry([record], record.payload)]))
    assert getattr(raised.value, "retryable", True) is False
    assert "NoSuchBucket" in str(raised.value)


def _camera_config(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer, camera: str, sinks: str = ""
) -> Path:
    """A 320x240 test-pattern camera whose snapshots go to the bucket through "media"."""
    return write_config(
        tmp_path,
        broker.port,
        sinks=(
            f'[sinks.telemetry]\ntype = "hold"\n{sinks}'
            f'[sinks.media]\ntype = "s3"\nbucket = "{BUCKET}"\nregion = "us-east-1"\n'
            f'endpoint_url = "{moto.endpoint}"\nretry_min = "50ms"\nretry_max = "200ms"\n'
            '[cameras.door]\nsource = "lavfi"\nurl = "testsrc2=size=320x240:rate=30,realtime"\n'
            f'fragment = "1s"\npreset = "ultrafast"\nsnapshot_sink = "media"\n{camera}'
        ),
    )


def _recording(agent: AgentProcess, fragments: int) -> AgentProcess:
    wait_until(
        lambda: agent.status().get("cameras", {}).get("door", {}).get("fragments", 0) >= fragments,
        60,
        0.05,
        f"{fragments} fragments recorded",
    )
    return agent


def test_an_event_snapshot_arrives_in_s3_as_a_decodable_jpeg_of_the_pictures_size(
    s3: Any,
    moto: MotoServer,
    tmp_path: Path,
    broker: Mosquitto,
    agents: list[AgentProcess],
) -> None:
    video = '[sinks.video]\ntype = "hold"\nmax_record_bytes = "8MiB"\n'
    config = _camera_config(tmp_path, broker, moto, 'sink = "video"\n', video)
    agent = _recording(start_agent(config, agents), 2)
    cli("event", "door", "-c", str(config))
    wait_until(lambda: len(_objects(s3)) >= 1, 30, 0.05, "the snapshot in S3")
    assert agent.terminate() == 0
    ((key, body),) = _objects(s3).items()
    assert key.startswith("test-device/door/snapshot/") and key.endswith(".jpg")
    assert body[:2] == b"\xff\xd8"
    with av.open(io.BytesIO(body), "r") as container:
        picture = next(container.decode(video=0))
    assert (picture.width, picture.height) == (320, 240)


def test_an_exported_clip_is_uploaded_through_the_running_agent(
    s3: Any,
    moto: MotoServer,
    tmp_path: Path,
    broker: Mosquitto,
    agents: list[AgentProcess],
) -> None:
    config = _camera_config(tmp_path, broker, moto, 'upload = "off"\n')
    agent = _recording(start_agent(config, agents), 4)
    output = tmp_path / "door.mkv"
    cli("clip", "door", "-c", str(config), "--from", "10m", "-o", str(output), "--upload")
    wait_until(lambda: len(_objects(s3)) >= 1, 30, 0.05, "the clip in S3")
    assert agent.terminate() == 0
    ((key, body),) = _objects(s3).items()
    assert key.startswith("test-device/door/clip/") and key.endswith(".mkv")
    assert body == output.read_bytes()
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "video/x-matroska"
    assert not list((tmp_path / "state").glob("spool.db.requests/*.json"))  # taken


def test_snapshot_every_sends_a_snapshot_that_often_without_an_event(
    s3: Any,
    moto: MotoServer,
    tmp_path: Path,
    broker: Mosquitto,
    agents: list[AgentProcess],
) -> None:
    config = _camera_config(tmp_path, broker, moto, 'upload = "off"\nsnapshot_every = "2s"\n')
    agent = start_agent(config, agents)
    wait_until(lambda: len(_objects(s3)) >= 3, 30, 0.05, "three snapshots")
    assert agent.terminate() == 0
    keys = sorted(_objects(s3))
    assert all("/snapshot/" in key and "-none-" in key for key in keys)
    times = [s3.head_object(Bucket=BUCKET, Key=k)["Metadata"]["captured-at"] for k in keys]
    assert len(set(times)) == len(times)
