"""``edge-agent check-config --online``: every AWS sink asked its read-only question with
the agent's credentials, against kinesalite, a moto server (Firehose), kvs-local and a
control plane that denies; one line per sink, exit 2 on any problem."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from botocore.credentials import Credentials

from edge_agent.kvs_local.server import PutMediaServer
from tests.iot_credentials import IotCredentialsServer
from tests.kinesis_streams import make_stream
from tests.moto_server import MotoServer, make_firehose_to_s3
from tests.support import Kinesalite, cli, make_certificates


@pytest.fixture
def kvs_local(tmp_path: Path) -> Iterator[PutMediaServer]:
    """kvs-local with stream "cam", signed with the suite's dummy keys."""
    server = PutMediaServer(
        tmp_path / "received", credentials=Credentials("test", "test"), streams=["cam"]
    ).start()
    yield server
    server.stop()


class _Denies(BaseHTTPRequestHandler):
    """A Kinesis endpoint whose IAM policy allows nothing."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = (
            b'{"__type": "AccessDeniedException", "message": "User: arn:aws:sts::1:assumed-role/'
            b'edge/gw is not authorized to perform: kinesis:DescribeStreamSummary"}'
        )
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def denying() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Denies)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def sink(name: str, kind: str, target_key: str, target: str, url: str) -> str:
    return (
        f'[sinks.{name}]\ntype = "{kind}"\n{target_key} = "{target}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{url}"\n'
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge-agent.toml"
    path.write_text(f'[agent]\ndevice_name = "gw"\nstate_dir = "{tmp_path / "state"}"\n{text}')
    return path


def test_every_sink_that_exists_and_may_be_read_is_ok(
    tmp_path: Path, kinesalite: Kinesalite, kvs_local: PutMediaServer
) -> None:
    client = kinesalite.client()
    stream = make_stream(client, 2)
    client.close()
    with MotoServer(tmp_path / "moto") as moto:
        make_firehose_to_s3(moto, "archive")
        config = write(
            tmp_path,
            sink("telemetry", "kinesis", "stream", stream, kinesalite.endpoint)
            + sink("archive", "firehose", "delivery_stream", "archive", moto.endpoint)
            + sink("video", "kvs", "stream", "cam", kvs_local.url),
        )
        result = cli("check-config", "--online", "-c", str(config), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("credentials from the default chain") and lines[1].endswith(": ok")
    assert f"sink telemetry (kinesis {stream}): ok, ACTIVE, 2 open shards" in lines
    assert "sink archive (firehose archive): ok, ACTIVE" in lines
    assert f"sink video (kvs cam): ok, retention 24 h, data endpoint {kvs_local.url}" in lines


def test_a_missing_stream_and_a_denied_action_are_named_and_exit_2(
    tmp_path: Path, kinesalite: Kinesalite, denying: str
) -> None:
    config = write(
        tmp_path,
        sink("telemetry", "kinesis", "stream", "no-such-stream", kinesalite.endpoint)
        + sink("alarms", "kinesis", "stream", "alarms", denying),
    )
    result = cli("check-config", "--online", "-c", str(config), check=False)
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert (
        "sink telemetry (kinesis no-such-stream): ResourceNotFound: 'no-such-stream' "
        "does not exist (region us-east-1)"
    ) in lines
    (denied,) = [line for line in lines if line.startswith("sink alarms")]
    assert denied.startswith(
        "sink alarms (kinesis alarms): AccessDenied: not allowed kinesis:DescribeStreamSummary"
    )


def test_credentials_that_cannot_be_had_are_named_and_no_sink_is_asked(
    tmp_path: Path, kinesalite: Kinesalite
) -> None:
    certificates = make_certificates(tmp_path / "pki")
    provider = IotCredentialsServer(certificates)
    provider.refuse = 403
    provider.start()
    try:
        aws = (
            f'[aws]\ncredentials = "iot"\nendpoint = "{provider.url}"\nrole_alias = "edge"\n'
            f'cert = "{certificates["client"]}"\nkey = "{certificates["client_key"]}"\n'
            f'ca = "{certificates["ca"]}"\n'
        )
        config = write(tmp_path, aws + sink("t", "kinesis", "stream", "s", kinesalite.endpoint))
        result = cli("check-config", "--online", "-c", str(config), check=False)
    finally:
        provider.stop()
    assert result.returncode == 2
    credentials, sink_line = result.stdout.splitlines()[1:]
    assert credentials.startswith("credentials from the IoT certificate")
    assert "CertificateRefused" in credentials and "HTTP 403" in credentials
    assert sink_line == "sink t: not checked (no credentials)"
