"""A PutMedia-compatible endpoint on this machine (``edge-agent kvs-local``).

It takes what Kinesis Video Streams takes, and refuses what it refuses, so that the
agent (and anyone) can be tried without an AWS account:

    POST /getDataEndpoint, /describeStream   the control plane calls the agent makes
    POST /putMedia                           a chunked MKV stream, SigV4-signed

For each PutMedia connection it checks the signature (botocore's signer, the test
credentials it was given), the stream name (the service's pattern; one connection per
stream), the timecode type (ABSOLUTE or RELATIVE) and start timestamp, and then reads
the MKV as it arrives (kvs_local/ingest.py), holding it to the ingestion rules listed
with their ErrorIds in kvs_local/rules.py: the EBML DocType, codec private data (avcC,
hvcC, an AAC AudioSpecificConfig, a G.711 WAVEFORMATEX), at most 3 tracks, a video
keyframe at every cluster start, no lacing, plausible producer times, frames and
fragments in increasing time within the connection (the tracks interleaved in time
order; the service's rule is per PutMedia call: a later connection may send older
fragments, as an offline replay does), fragment size and duration limits, known track
numbers and frames of every track in every fragment, AVCC video frames, fragment
metadata limits. It answers on the same connection with the service's acknowledgement events
(BUFFERING, RECEIVED, PERSISTED, ERROR with the service's ErrorId) and writes every
fragment it accepted to a seekable MKV file (kvs_local/stored_file.py), one per stream
and connection, under its directory.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from botocore.credentials import Credentials

from edge_agent.errors import EndpointRefusal
from edge_agent.kvs_local import rules
from edge_agent.kvs_local.ingest import Ingest
from edge_agent.kvs_local.sigv4 import SignatureRejected, check_signature

log = logging.getLogger(__name__)

MAX_FRAGMENT_BYTES = 50 * 1000 * 1000
MAX_FRAGMENT_MS = 10_000
#: The service ends a PutMedia request about this long after the last data.
IDLE_TIMEOUT_S = 30.0
FRAGMENT_NUMBER_BASE = 91343852333181432392682062607743920146264440000


@dataclass
class StreamState:
    name: str
    active: bool = False
    fragments: int = 0
    #: PutMedia connections accepted for the stream, so far.
    connections: int = 0
    #: Connections refused because the stream had one (ConnectionLimitExceeded).
    refused_connections: int = 0
    #: Every accepted fragment's timecode, in the order they were accepted, and when
    #: each was accepted (wall clock, seconds).
    timecodes: list[int] = field(default_factory=list)
    accepted_at: list[float] = field(default_factory=list)
    #: Each accepted fragment's metadata tags (as GetMedia would return them).
    metadata: list[dict[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


class PutMediaServer:
    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: Credentials | Sequence[Credentials] | None = None,
        region: str = "us-east-1",
        streams: list[str] | None = None,
        retention: bool = True,
        max_fragment_ms: int = MAX_FRAGMENT_MS,
        max_fragment_bytes: int = MAX_FRAGMENT_BYTES,
        idle_timeout: float = IDLE_TIMEOUT_S,
        max_future_ms: int = rules.MAX_FUTURE_MS,
    ) -> None:
        self.directory = directory
        #: The test credentials requests must be signed with (any of them; None: no check).
        self.credentials: list[Credentials] | None = (
            None
            if credentials is None
            else [credentials]
            if isinstance(credentials, Credentials)
            else list(credentials)
        )
        #: (path, access key) of every request whose signature was accepted
        self.signed_with: list[tuple[str, str]] = []
        self.region = region
        self.retention = retention
        self.max_fragment_ms = max_fragment_ms
        self.max_fragment_bytes = max_fragment_bytes
        self.idle_timeout = idle_timeout
        #: How far ahead of this machine's clock a producer time may be (ms).
        self.max_future_ms = max_future_ms
        self.any_stream = streams is None
        self.streams = {name: StreamState(name) for name in streams or ()}
        self.lock = threading.Lock()
        self._next_number = FRAGMENT_NUMBER_BASE
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.endpoint = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> PutMediaServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kvs-local", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def stream(self, name: str) -> StreamState | None:
        with self.lock:
            state = self.streams.get(name)
            if state is None and self.any_stream:
                state = self.streams[name] = StreamState(name)
            return state

    def next_fragment_number(self) -> str:
        with self.lock:
            self._next_number += 1
            return str(self._next_number)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edge-agent-kvs-local"

    @property
    def endpoint(self) -> PutMediaServer:
        return self.server.endpoint  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("kvs-local: " + format, *args)

    def do_POST(self) -> None:
        try:
            if self.path == "/putMedia":
                self._put_media()
            elif self.path in ("/getDataEndpoint", "/describeStream"):
                self._control_plane()
            else:
                raise EndpointRefusal(404, "UnknownOperationException", f"no {self.path} here")
        except EndpointRefusal as refused:
            self._refuse(refused)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    # ------------------------------------------------------------------ control plane

    def _control_plane(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        self._check_signature(raw)
        request = json.loads(raw or b"{}")
        arn = str(request.get("StreamARN", ""))  # arn:...:stream/NAME/CREATION
        name = str(request.get("StreamName") or arn.rpartition("/")[0].rpartition("/")[2])
        rules.check_stream_name(name)
        state = self.endpoint.stream(name)
        if state is None:
            raise EndpointRefusal(404, "ResourceNotFoundException", f"stream {name} not found")
        if self.path == "/getDataEndpoint":
            # Where the caller reached us (a proxy in front stays in the path).
            host = self.headers.get("Host")
            body: dict[str, Any] = {"DataEndpoint": f"http://{host}" if host else self.endpoint.url}
        else:
            body = {
                "StreamInfo": {
                    "StreamName": name,
                    "StreamARN": f"arn:aws:kinesisvideo:{self.endpoint.region}:000000000000:"
                    f"stream/{name}/0",
                    "Status": "ACTIVE",
                    "DataRetentionInHours": 24 if self.endpoint.retention else 0,
                }
            }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # ------------------------------------------------------------------ PutMedia

    def _check_signature(self, body: bytes | None = None) -> None:
        endpoint = self.endpoint
        if endpoint.credentials is None:
            return
        host = self.headers.get("Host", "")
        refusal = SignatureRejected("UnrecognizedClientException", "unknown access key")
        for credentials in endpoint.credentials:
            try:
                check_signature(
                    "POST",
                    f"http://{host}{self.path}",
                    {name: value for name, value in self.headers.items()},
                    credentials,
                    region=endpoint.region,
                    service="kinesisvideo",
                    payload=body,
                )
            except SignatureRejected as err:
                if err.error_type != "UnrecognizedClientException":
                    refusal = err
                continue
            with endpoint.lock:
                endpoint.signed_with.append((self.path, credentials.access_key))
            return
        raise refusal

    def _put_media(self) -> None:
        self._check_signature()
        name = self.headers.get("x-amzn-stream-name", "")
        rules.check_stream_name(name)
        offset_ms = rules.timecode_offset_ms(
            self.headers.get("x-amzn-fragment-timecode-type", "ABSOLUTE"),
            self.headers.get("x-amzn-producer-start-timestamp"),
        )
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            raise EndpointRefusal(400, "InvalidArgumentException", "the body must be chunked")
        state = self.endpoint.stream(name)
        if state is None:
            raise EndpointRefusal(404, "ResourceNotFoundException", f"stream {name!r} not found")
        with self.endpoint.lock:
            if state.active:
                state.refused_connections += 1
                raise EndpointRefusal(
                    400, "ConnectionLimitExceededException", f"stream {name} has a connection"
                )
            state.active = True
            state.connections += 1
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.connection.settimeout(self.endpoint.idle_timeout)
            Ingest(self, state, offset_ms).run()
        finally:
            with self.endpoint.lock:
                state.active = False
            self.close_connection = True
        # The answer ends once the stream takes a new connection: a producer that waits
        # for the end before it opens the next one is never refused.
        self.wfile.write(b"0\r\n\r\n")

    def send_event(self, event: dict[str, Any]) -> None:
        data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def read_chunks(self) -> Any:
        """The request body's chunks, as they arrive."""
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise ConnectionError("the client went away mid-stream")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            data = self.rfile.read(size)
            self.rfile.readline(8)  # the chunk's CRLF
            yield data

    def _refuse(self, refused: EndpointRefusal) -> None:
        data = json.dumps({"message": str(refused)}).encode()
        self.send_response(refused.status)
        self.send_header("x-amzn-ErrorType", refused.error_type)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True
