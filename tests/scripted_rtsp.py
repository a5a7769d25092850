"""A scripted RTSP camera on 127.0.0.1, for what a real server will not do on demand:
name a short session timeout and count the keepalives, put RTCP and noise between the
RTP frames, go silent, close mid-stream, redirect. It speaks just enough RTSP (OPTIONS,
DESCRIBE, SETUP interleaved, PLAY, GET_PARAMETER, TEARDOWN) and streams a real x264
recording packetized by tests/rtp_packets.py. The real server of the tests is
gst-rtsp-server (tests/gst_rtsp_server.py); this one stands in only for these cases."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from tests.rtp_packets import PAYLOAD_TYPE, Packetizer, SourceFrame

FRAME_S = 1 / 30
RTCP_SENDER_REPORT = bytes((0x80, 200, 0, 6)) + bytes(24)


@dataclass
class Script:
    frames: list[SourceFrame]
    session_timeout: int = 60
    rtcp_every: int = 0  # an RTCP sender report on channel 1 every N frames
    noise_every: int = 0  # bytes that are no interleaved frame, every N frames
    #: After the last frame: keep the connection open and send nothing (or only RTCP
    #: sender reports, as a server does whose source stopped), or close it.
    then: Literal["silence", "rtcp", "close"] = "silence"
    #: During the handshake, a request of the server's (SET_PARAMETER) before each answer.
    server_requests: bool = False
    redirect_to: str | None = None  # DESCRIBE answers 302 to this URL
    channel: int = 0  # the interleaved channel the server chooses for RTP


@dataclass
class Request:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedRtspServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Request] = []
        self.frames_sent = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str = "/live") -> str:
        return f"rtsp://127.0.0.1:{self.port}{path}"

    def methods(self) -> list[str]:
        return [request.method for request in list(self.requests)]

    def __enter__(self) -> ScriptedRtspServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(0.05)
                with contextlib.suppress(OSError):  # the client went away
                    self._session(connection)

    def _session(self, connection: socket.socket) -> None:
        buffer = b""
        playing = False
        while not self._stop.is_set() and not playing:
            request, buffer = self._next_request(connection, buffer)
            if request is None:
                continue
            playing = self._answer(connection, request)
        if playing:
            self._stream(connection, buffer)

    def _next_request(
        self, connection: socket.socket, buffer: bytes
    ) -> tuple[Request | None, bytes]:
        while b"\r\n\r\n" not in buffer:
            try:
                chunk = connection.recv(4096)
            except TimeoutError:
                return None, buffer
            if not chunk:
                raise ConnectionResetError
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        method, url, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        request = Request(method, url, headers)
        self.requests.append(request)
        return request, buffer

    def _answer(self, connection: socket.socket, request: Request) -> bool:
        """Answers a request; True once PLAY has been answered."""
        cseq = request.headers.get("cseq", "0")
        session = f"Session: 4711;timeout={self.script.session_timeout}\r\n"
        extra, body, status = "", b"", "200 OK"
        if request.method == "OPTIONS":
            extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN\r\n"
        elif request.method == "DESCRIBE":
            if self.script.redirect_to and request.url != self.script.redirect_to:
                status, extra = "302 Moved", f"Location: {self.script.redirect_to}\r\n"
            else:
                body = self._description().encode()
                extra = f"Content-Base: {request.url}/\r\nContent-Type: application/sdp\r\n"
        elif request.method == "SETUP":
            channels = f"{self.script.channel}-{self.script.channel + 1}"
            extra = session + f"Transport: RTP/AVP/TCP;unicast;interleaved={channels}\r\n"
        elif request.method in ("PLAY", "GET_PARAMETER", "TEARDOWN"):
            extra = session
        else:
            status = "501 Not Implemented"
        if self.script.server_requests and request.method != "GET_PARAMETER":
            connection.sendall(
                f"SET_PARAMETER {request.url} RTSP/1.0\r\nCSeq: 90\r\n"
                "Content-Type: text/parameters\r\nContent-Length: 7\r\n\r\nping: 1".encode()
            )
        head = f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n{extra}"
        connection.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        return request.method == "PLAY"

    def _description(self) -> str:
        keyframe = next(frame for frame in self.script.frames if frame.keyframe)
        sps, pps = (base64.b64encode(unit).decode() for unit in keyframe.units[:2])
        return (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=scripted\r\nt=0 0\r\n"
            f"m=video 0 RTP/AVP {PAYLOAD_TYPE}\r\na=rtpmap:{PAYLOAD_TYPE} H264/90000\r\n"
            f"a=fmtp:{PAYLOAD_TYPE} packetization-mode=1;sprop-parameter-sets={sps},{pps}\r\n"
            "a=control:trackID=1\r\n"
        )

    def _stream(self, connection: socket.socket, buffer: bytes) -> None:
        """The frames in real time, answering requests that arrive meanwhile in-band."""
        script, packetizer = self.script, Packetizer()
        started = time.monotonic()
        for index, frame in enumerate(script.frames):
            if self._stop.is_set():
                return
            rtp, rtcp = bytes((0x24, script.channel)), bytes((0x24, script.channel + 1))
            packets = packetizer.packets(frame)
            out = b"".join(rtp + len(packet).to_bytes(2, "big") + packet for packet in packets)
            if script.rtcp_every and index % script.rtcp_every == 0:
                out += rtcp + len(RTCP_SENDER_REPORT).to_bytes(2, "big") + RTCP_SENDER_REPORT
            if script.noise_every and index % script.noise_every == 1:
                out = b"\r\n\x00noise" + out
            connection.sendall(out)
            self.frames_sent += 1
            buffer = self._answer_waiting(connection, buffer, started + (index + 1) * FRAME_S)
        if script.then == "close":
            return
        rtcp = bytes((0x24, script.channel + 1)) + len(RTCP_SENDER_REPORT).to_bytes(2, "big")
        while not self._stop.is_set():  # answer requests, send no video
            if script.then == "rtcp":
                connection.sendall(rtcp + RTCP_SENDER_REPORT)
            buffer = self._answer_waiting(connection, buffer, time.monotonic() + 0.1)

    def _answer_waiting(self, connection: socket.socket, buffer: bytes, until: float) -> bytes:
        while time.monotonic() < until and not self._stop.is_set():
            request, buffer = self._next_request(connection, buffer)
            if request is not None:
                self._answer(connection, request)
        return buffer
