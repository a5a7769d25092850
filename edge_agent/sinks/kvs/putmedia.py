"""One PutMedia connection: a SigV4-signed, chunked POST that stays open while fragments
are written into it, and the acknowledgements read back on the same connection.

boto3 has no PutMedia; botocore's SigV4 signer signs the request (service
``kinesisvideo``, the empty payload's hash, as the producer SDKs do), and a reader
thread parses the response as it streams in. Every chunk passes the upload budget.

The socket's timeout bounds each write. A write that times out ends the connection, and
the fragments on the wire go again on the next one: on an uplink too slow for the
timeout that would repeat for ever. Given a ``write_timeout`` (an ``AdaptiveTimeout``
that outlives the connection), the writes wait its current value, a write that times
out makes the next connection's wait longer, and chunks written in good time bring it
back down (delivery/adaptive_timeout.py).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from edge_agent.delivery.adaptive_timeout import AdaptiveTimeout
from edge_agent.delivery.budget import Budget
from edge_agent.errors import SinkError
from edge_agent.sinks.kvs.acks import Ack, AckParser
from edge_agent.sinks.kvs.http import open_connection

#: The budget is asked for a fragment a slice at a time: what the tightest rate in force
#: admits in METER_SLICE_S, within these bounds (the largest when nothing limits uploads:
#: fewer system calls, and nothing to share the budget with).
METER_SLICE_S = 0.02
MIN_METER_SLICE_BYTES = 8 * 1024
MAX_METER_SLICE_BYTES = 64 * 1024
#: Chunk framing on the wire: the hex size line and two CRLFs.
CHUNK_OVERHEAD = 12
#: The reader takes the answer off the socket this much at a time.
READ_BYTES = 64 * 1024


def meter_slice_bytes(rate: float | None) -> int:
    """How much of a fragment is metered at once at ``rate`` bytes/s (None: no limit)."""
    if rate is None:
        return MAX_METER_SLICE_BYTES
    return max(MIN_METER_SLICE_BYTES, min(MAX_METER_SLICE_BYTES, int(rate * METER_SLICE_S)))


#: Error types of a PutMedia refusal after which nothing works until someone acts.
PAUSE_ERROR_TYPES = frozenset(
    {"ResourceNotFoundException", "NotAuthorizedException", "AccessDeniedException"}
)


class PutMediaRefused(SinkError):
    """The endpoint answered the request with an HTTP error: ``code`` (and
    ``error_type``) is its error type. Retryable unless the credentials or the stream
    are at fault (401, 403, PAUSE_ERROR_TYPES): those pause the sink."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(error_type, message)
        self.args = (f"HTTP {status} {error_type}: {message}",)
        self.status, self.error_type = status, error_type
        self.retryable = not (error_type in PAUSE_ERROR_TYPES or status in (401, 403))


class PutMediaConnection:
    def __init__(
        self,
        endpoint_url: str,
        stream: str,
        credentials: ReadOnlyCredentials,
        *,
        region: str,
        budget: Budget,
        stop: threading.Event,
        timeout: float = 10.0,
        write_timeout: AdaptiveTimeout | None = None,
        on_answer: Callable[[], None] | None = None,
    ) -> None:
        """``timeout`` bounds opening the connection, and the writes unless
        ``write_timeout`` is given. ``on_answer`` is called (in the reader thread)
        after each item put on ``acks``: the uploader can sleep until then instead of
        polling the queue."""
        self.endpoint_url = endpoint_url.rstrip("/")
        self.stream = stream
        self._credentials = credentials
        self._region = region
        self._budget = budget
        self._stop = stop
        self._timeout = timeout
        self._write_timeout = write_timeout
        self._write_wait = timeout  # what this connection's writes wait
        self._on_answer = on_answer or (lambda: None)
        self._sock: socket.socket | None = None
        self._closing = threading.Event()
        #: Set when the endpoint's answer has begun (status line and headers read).
        self.answered = threading.Event()
        self.acks: queue.Queue[Ack | PutMediaRefused | None] = queue.Queue()
        self.opened_at = time.monotonic()
        self.bytes_sent = 0

    def open(self) -> None:
        connection = open_connection(self.endpoint_url, self._timeout)
        headers = {
            "x-amzn-stream-name": self.stream,
            "x-amzn-fragment-timecode-type": "ABSOLUTE",
            "x-amzn-producer-start-timestamp": f"{time.time():.3f}",
            "x-amzn-fragment-acknowledgment-required": "1",
            "Transfer-Encoding": "chunked",
            "Connection": "keep-alive",
            "Content-Type": "application/json",
        }
        request = AWSRequest(
            method="POST", url=f"{self.endpoint_url}/putMedia", data=b"", headers=headers
        )
        SigV4Auth(self._credentials, "kinesisvideo", self._region).add_auth(request)
        connection.putrequest("POST", "/putMedia", skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", urlsplit(self.endpoint_url).netloc)
        for name, value in request.headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        self._sock = connection.sock
        if self._write_timeout is not None:
            self._write_wait = self._write_timeout.current
            connection.sock.settimeout(self._write_wait)
        self.opened_at = time.monotonic()
        threading.Thread(
            target=self._read, args=(connection.sock,), name=f"acks-{self.stream}", daemon=True
        ).start()

    def send(self, data: bytes) -> None:
        """One chunk, written in slices that each wait for the upload budget: a fragment
        never holds the budget for longer than a slice takes, so a sink of a higher
        priority gets its turn in between."""
        sock = self._sock
        assert sock is not None
        if not data:
            return  # an empty chunk would end the request
        view = memoryview(data)
        step = meter_slice_bytes(self._budget.rate_limit())
        slowest = 0.0  # the longest a slice waited for the socket
        for offset in range(0, len(data), step):
            piece = view[offset : offset + step]
            first, last = offset == 0, offset + step >= len(data)
            wire = len(piece) + (CHUNK_OVERHEAD if first else 0)
            if not self._budget.acquire(wire, self._stop):
                raise ConnectionAbortedError("the agent is stopping")
            head = f"{len(data):x}\r\n".encode() if first else b""
            slowest = max(slowest, self._write(sock, (head, piece, b"\r\n" if last else b"")))
            self.bytes_sent += wire
        if self._write_timeout is not None:
            # A chunk written counts as an answer, as slow as its slowest slice (a slice
            # alone says little: the first ones of a connection fill empty buffers).
            self._write_timeout.answered(slowest)

    def _write(self, sock: socket.socket, parts: tuple[bytes | memoryview, ...]) -> float:
        """One slice on the wire; how long it waited for the socket. A write that
        times out counts against ``write_timeout``."""
        started = time.monotonic()
        try:
            sock.sendall(b"".join(parts))
        except TimeoutError:
            if self._write_timeout is not None:
                self._write_timeout.timed_out(self._write_wait)
            raise
        return time.monotonic() - started

    def finish(self) -> None:
        """The last chunk: the endpoint acknowledges what it has and ends the answer."""
        if self._sock is not None:
            self._sock.sendall(b"0\r\n\r\n")

    def close(self) -> None:
        """End the connection on the wire at once: a reader blocked in ``recv`` would
        otherwise keep it open until its timeout, and the endpoint would still count it
        when the stream's next connection arrives."""
        self._closing.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _read(self, sock: Any) -> None:
        """The answer: status line, headers, then chunks of acknowledgements."""
        try:
            stream = _AnswerStream(sock, self._closing)
            status_line = stream.readline(4096).decode("latin-1").split()
            if len(status_line) < 2:
                raise ConnectionError("no answer from the endpoint")
            status = int(status_line[1])
            headers: dict[str, str] = {}
            while (line := stream.readline(8192)) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            self.answered.set()
            if status != 200:
                length = int(headers.get("content-length") or 0)
                body = stream.read(min(length, 65536)).decode(errors="replace") if length else ""
                self._answer(
                    PutMediaRefused(status, headers.get("x-amzn-errortype", "Unknown"), body)
                )
                return
            parser = AckParser()
            while True:
                size_line = stream.readline(64)
                if not size_line:
                    break
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    break
                data = stream.read(size)
                stream.readline(8)
                for ack in parser.feed(data):
                    self._answer(ack)
        except (OSError, ValueError):
            pass  # the connection ended; the uploader sees None and decides
        finally:
            self._answer(None)

    def _answer(self, item: Ack | PutMediaRefused | None) -> None:
        self.acks.put(item)
        self._on_answer()


class _AnswerStream:
    """The answer as it comes off the socket, for the reader thread. The socket's
    timeout guards the uploader's writes; for the reader a timeout only means that the
    endpoint had nothing to say (nothing is due while the uploader waits for its budget
    or the camera), so it reads on until the connection is closed. A stalled
    connection is the uploader's to judge (``ack_timeout``)."""

    def __init__(self, sock: socket.socket, closing: threading.Event) -> None:
        self._sock = sock
        self._closing = closing
        self._buffer = bytearray()

    def readline(self, limit: int) -> bytes:
        while True:
            end = self._buffer.find(b"\n", 0, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self._buffer) >= limit or not self._fill():
                return self._take(min(limit, len(self._buffer)))

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(min(size, len(self._buffer)))

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _fill(self) -> bool:
        """More bytes into the buffer; False at the end of the connection."""
        while True:
            try:
                data = self._sock.recv(READ_BYTES)
            except TimeoutError:
                if self._closing.is_set():
                    return False
                continue
            if not data:
                return False
            self._buffer += data
            return True
