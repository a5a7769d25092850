"""A PutMedia-compatible endpoint on this machine (``edge-agent kvs-local``).

It takes what Kinesis Video Streams takes, and refuses what it refuses, so that the
agent (and anyone) can be tried without an AWS account:

    POST /getDataEndpoint, /describeStream   the control plane calls the agent makes
    POST /putMedia                           a chunked MKV stream, SigV4-signed

For each PutMedia connection it checks the signature (botocore's signer, the test
credentials it was given), the stream name (one connection per stream), the timecode
type, and then reads the MKV as it arrives, enforcing the ingestion rules: a keyframe
at every cluster start, frames and fragments in increasing time within the connection
(the service's rule is per PutMedia call: a later connection may send older fragments,
as an offline replay does), fragment size and duration limits, known track numbers,
AVCC frames. It answers on the same connection
with the service's acknowledgement events (BUFFERING, RECEIVED, PERSISTED, ERROR with
the service's ErrorId) and writes every fragment it accepted to a playable MKV file,
one per stream and connection, under its directory.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

from botocore.credentials import Credentials

from edge_agent.errors import EndpointRefusal
from edge_agent.kvs_local.mkv_reader import (
    Block,
    ClusterEnd,
    ClusterStart,
    MkvError,
    MkvReader,
    Tracks,
)
from edge_agent.kvs_local.sigv4 import SignatureRejected, check_signature
from edge_agent.media import h264
from edge_agent.media.mkv import Frame, VideoTrack, cluster, stream_header

log = logging.getLogger(__name__)

MAX_FRAGMENT_BYTES = 50 * 1000 * 1000
MAX_FRAGMENT_MS = 10_000
MAX_TRACKS = 3
#: The service ends a PutMedia request about this long after the last data.
IDLE_TIMEOUT_S = 30.0
FRAGMENT_NUMBER_BASE = 91343852333181432392682062607743920146264440000

STREAM_READ_ERROR = 4000
MAX_FRAGMENT_SIZE_REACHED = 4001
MAX_FRAGMENT_DURATION_REACHED = 4002
FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS = 4004
INVALID_MKV_DATA = 4006
TRACK_NUMBER_MISMATCH = 4010
MORE_THAN_ALLOWED_TRACKS_FOUND = 4012


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
        if self.headers.get("x-amzn-fragment-timecode-type", "ABSOLUTE") != "ABSOLUTE":
            raise EndpointRefusal(400, "InvalidArgumentException", "only ABSOLUTE timecodes here")
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
            _Ingest(self, state).run()
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


class _Ingest:
    """One PutMedia connection's stream: rules, acks, the file of what was accepted."""

    def __init__(self, handler: _Handler, state: StreamState) -> None:
        self.handler = handler
        self.endpoint = handler.endpoint
        self.state = state
        self.reader = MkvReader()
        self.track: VideoTrack | None = None
        self.track_numbers: set[int] = set()
        self.frames: list[Frame] = []
        self.fragment_ms: int | None = None
        #: The last fragment accepted on this connection: the next must be later.
        self.last_fragment_ms = -1
        self.fragment_bytes = 0
        self.skip = False  # the current fragment was refused: ignore its blocks
        self.file: BinaryIO | None = None

    def run(self) -> None:
        try:
            try:
                for chunk in self.handler.read_chunks():
                    for event in self.reader.feed(chunk):
                        if not self._on(event):
                            return
                for event in self.reader.end():
                    if not self._on(event):
                        return
            except MkvError as err:
                self._error(INVALID_MKV_DATA, str(err))
            except TimeoutError:
                self.handler.send_event({"EventType": "IDLE"})
        finally:
            if self.file is not None:
                self.file.close()

    def _on(self, event: object) -> bool:
        """Handle one MKV event; False ends the connection."""
        if isinstance(event, Tracks):
            return self._tracks(event)
        if isinstance(event, ClusterStart):
            return self._cluster_start(event.timecode)
        if isinstance(event, Block):
            return self._block(event)
        if isinstance(event, ClusterEnd):
            return self._cluster_end()
        return True

    def _tracks(self, tracks: Tracks) -> bool:
        if len(tracks.entries) > MAX_TRACKS:
            return self._error(MORE_THAN_ALLOWED_TRACKS_FOUND, "more than 3 tracks")
        self.track_numbers = {entry.number for entry in tracks.entries}
        video = next((e for e in tracks.entries if e.track_type == 1), None)
        if video is not None:
            self.track = VideoTrack(video.codec_id, video.codec_private, video.width, video.height)
        return True

    def _cluster_start(self, timecode: int) -> bool:
        self.frames, self.fragment_bytes, self.skip = [], 0, False
        self.fragment_ms = timecode
        if timecode <= self.last_fragment_ms:
            self.skip = True
            return self._error(
                FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS,
                f"fragment at {timecode} is not after {self.last_fragment_ms}",
                timecode,
            )
        self._ack("BUFFERING", timecode)
        return True

    def _block(self, block: Block) -> bool:
        if self.skip:
            return True
        if block.track not in self.track_numbers:
            return self._error(TRACK_NUMBER_MISMATCH, f"block of unknown track {block.track}")
        if not self.frames and not block.keyframe:
            return self._error(INVALID_MKV_DATA, "the fragment does not start with a keyframe")
        if self.frames and block.timecode <= self.frames[-1].time_ms:
            return self._error(FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS, "frame times must increase")
        try:
            h264.split_avcc(block.data)
        except ValueError:
            return self._error(INVALID_MKV_DATA, "a frame is not AVCC (length-prefixed NALs)")
        assert self.fragment_ms is not None
        if block.timecode - self.fragment_ms > self.endpoint.max_fragment_ms:
            return self._error(MAX_FRAGMENT_DURATION_REACHED, "the fragment is too long")
        self.fragment_bytes += len(block.data)
        if self.fragment_bytes > self.endpoint.max_fragment_bytes:
            return self._error(MAX_FRAGMENT_SIZE_REACHED, "the fragment is too large")
        self.frames.append(Frame(block.timecode, block.keyframe, block.data))
        return True

    def _cluster_end(self) -> bool:
        if self.skip or not self.frames or self.fragment_ms is None:
            return True
        self._write(self.frames)
        self.last_fragment_ms = self.fragment_ms
        with self.endpoint.lock:
            self.state.fragments += 1
            self.state.timecodes.append(self.fragment_ms)
            self.state.accepted_at.append(time.time())
        number = self.endpoint.next_fragment_number()
        self._ack("RECEIVED", self.fragment_ms, number)
        if self.endpoint.retention:
            self._ack("PERSISTED", self.fragment_ms, number)
        self.frames = []
        return True

    def _write(self, frames: list[Frame]) -> None:
        if self.file is None:
            track = self.track or VideoTrack("V_MPEG4/ISO/AVC", b"", 0, 0)
            path = self.endpoint.directory / f"{self.state.name}-{frames[0].time_ms}.mkv"
            self.file = path.open("wb")
            self.file.write(stream_header(track))
            self.state.files.append(path)
        self.file.write(cluster(frames))
        self.file.flush()

    def _ack(self, event_type: str, timecode: int, number: str | None = None) -> None:
        event: dict[str, Any] = {"EventType": event_type, "FragmentTimecode": timecode}
        event["FragmentNumber"] = number or str(self.endpoint._next_number + 1)
        self.handler.send_event(event)

    def _error(self, error_id: int, message: str, timecode: int | None = None) -> bool:
        log.info("kvs-local: stream %s: error %d: %s", self.state.name, error_id, message)
        event: dict[str, Any] = {"EventType": "ERROR", "ErrorId": error_id}
        at = timecode if timecode is not None else self.fragment_ms
        if at is not None:
            event["FragmentTimecode"] = at
        event["FragmentNumber"] = str(self.endpoint._next_number + 1)
        self.handler.send_event(event)
        # Out-of-order fragments are skipped and the connection goes on; anything else
        # about the stream's data ends it.
        return error_id == FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS and self.skip
