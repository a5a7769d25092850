"""The built-in RTSP client (RFC 2326): an IP camera's H.264 or H.265, and its audio if
asked for, over RTP interleaved in the RTSP connection (TCP), read in large, few reads.

    connect -> OPTIONS -> DESCRIBE (SDP) -> SETUP video, interleaved=0-1
            [-> SETUP audio, interleaved=2-3] -> PLAY
            -> '$' channel length RTP ... (and the answers to our keepalives)
            -> TEARDOWN

Video packets are yielded; audio packets are gathered in a list for the video's reader
to take, and the RTCP sender reports of both (what places the audio on the video's
timeline: sources/camera/audio_sync.py) go to a callback, on the same thread.

Why not FFmpeg's RTSP demuxer (through PyAV): it reads every RTP packet with its own
system calls and hands each picture to Python as a packet object, which made the
demuxer alone cost more than a whole ``ffmpeg -c copy`` of the same camera. Here the
socket's low-water mark (``SO_RCVLOWAT``) lets the kernel wake the thread once per
~64 KiB instead of once per 1.4 KiB packet (``poll`` honours it), and the poll's
timeout bounds how long a slow camera's data waits (``READ_SLICE_S``). docs/BENCHMARKS.md has
the numbers. Anything this client does not do (UDP transport, listen mode, codecs other
than H.264, FFmpeg options) stays with PyAV (``rtsp_client`` in the camera's config).

Credentials come from the URL (``rtsp://user:password@host/path``); the server picks
Basic or Digest (RFC 2617: MD5 or SHA-256, with or without ``qop=auth``). The session
is kept alive with GET_PARAMETER (or OPTIONS, if the server lists no GET_PARAMETER)
at half the session timeout the server names.

Errors (all ``SourceError``, retryable: the camera reconnects with backoff; socket
errors are described through ``OS_ERRORS``)::

    RtspError                 the connection or the protocol failed
    ├── RtspRefused           the server answered a request with an error status
    └── RtspStalled           no data for the stall timeout
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from edge_agent import __version__
from edge_agent.errors import SourceError
from edge_agent.redact import redact
from edge_agent.sources.camera.rtsp_auth import RtspAuth
from edge_agent.sources.camera.sdp import AudioMedia, SdpError, VideoMedia, audio_media, video_media

#: The kernel wakes the reader once this much has arrived (or READ_SLICE_S has passed).
LOW_WATER_BYTES = 64 * 1024
READ_SLICE_S = 0.25
RECEIVE_BUFFER_BYTES = 1024 * 1024
#: At most this much per read: below glibc's mmap threshold (malloc_tuning.py), so a
#: read's buffer comes from the heap instead of a fresh mapping that faults page by page.
READ_BYTES = 128 * 1024
#: An answer's headers and body, at most (a description is a few KiB).
MAX_MESSAGE_BYTES = 64 * 1024
MAX_REDIRECTS = 3
#: Servers that name no session timeout drop sessions after 60 s (RFC 2326 12.37).
DEFAULT_SESSION_TIMEOUT_S = 60
#: The interleaved channels asked for RTP (RTCP on the next); the server may choose others.
RTP_CHANNEL = 0
AUDIO_RTP_CHANNEL = 2
#: RTCP's sender report packet type (RFC 3550 6.4.1).
RTCP_SENDER_REPORT = 200
USER_AGENT = f"edge-agent/{__version__}"
_REQUEST_LINE = re.compile(rb"[A-Z_]{3,20} \S+ RTSP/1\.0\r\n")


class RtspError(SourceError):
    """The RTSP connection failed or the server broke the protocol."""


class RtspRefused(RtspError):
    """The server answered with an error status (``status``: 401, 404, 454, ...)."""

    def __init__(self, method: str, status: int, reason: str) -> None:
        self.status = status
        hint = {
            401: ": the camera refused the credentials in the URL",
            461: ': the camera offers no RTP over TCP (rtsp_client = "pyav" can take UDP)',
        }.get(status, "")
        super().__init__(f"{method} answered {status} {reason}{hint}")


class RtspStalled(RtspError):
    """Nothing arrived for the stall timeout."""


@dataclass
class _Message:
    """An answer (``status`` > 0) or a request of the server's (``status`` 0)."""

    status: int
    reason: str
    headers: dict[str, str]  # lower-case names; a repeated header: its last value
    challenges: list[str]  # every WWW-Authenticate value, in order
    body: bytes

    @property
    def cseq(self) -> str:
        return self.headers.get("cseq", "")


class RtspSession:
    """One RTSP session with one camera: ``open`` it, iterate ``packets``, ``close``."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        stall_timeout: float,
        stop: threading.Event | None = None,
    ) -> None:
        """``stop``: when set, ``packets`` ends within a read slice (a silent camera does
        not hold up a stop for the stall timeout)."""
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises for a port that is no number or out of range
        except ValueError:
            # Not urlsplit's words: they quote the "port", which is part of the password
            # when the password holds a '/' (the authority then ends inside it).
            raise RtspError(
                "the camera's URL has a port that is no number from 0 to 65535 (a '/', '?' "
                "or '#' in a password must be percent-encoded)"
            ) from None
        if parts.scheme.lower() != "rtsp" or not parts.hostname:
            raise RtspError("the built-in RTSP client takes rtsp://host[:port]/path URLs")
        self._auth = RtspAuth(unquote(parts.username or ""), unquote(parts.password or ""))
        self.url = redact(url, keep_user=False)
        self._connect_timeout = connect_timeout
        self._stall_timeout = stall_timeout
        self._stop = stop or threading.Event()
        self._sock: socket.socket | None = None
        self._pending = b""  # read past the last answer: the start of the stream
        self._sequence = 0
        self._session = ""
        self._keepalive_method = "OPTIONS"
        self._keepalive_every = DEFAULT_SESSION_TIMEOUT_S / 2
        self._aggregate_url = self.url  # PLAY, keepalives and TEARDOWN go here
        self._rtp_channel = RTP_CHANNEL  # as the server's SETUP answer chose
        self._audio_channel = -1  # the audio's RTP channel, if it was set up
        self.interleaved_errors = 0  # bytes skipped to find the next '$' frame
        #: The camera's audio as described, whether or not it was set up; the audio set up.
        self.audio_offered: AudioMedia | None = None
        self.audio: AudioMedia | None = None
        #: The audio's RTP packets as they arrive, for the reader of the video to take
        #: (the same thread: a list append is all an audio packet costs here).
        self.audio_packets: list[bytes] = []
        #: Called with each sender report: (is the audio's, NTP time in s, RTP timestamp).
        self.on_sender_report: Callable[[bool, float, int], None] | None = None

    # ------------------------------------------------------------------ handshake

    def open(self, audio_encodings: Collection[str] = ()) -> VideoMedia:
        """Connect, describe, set up the video over TCP (and the audio, if its encoding is
        one of ``audio_encodings``) and play; the video's media."""
        for _ in range(MAX_REDIRECTS + 1):
            self._connect()
            options = self._request("OPTIONS", self.url, required=False)
            if options is not None and "GET_PARAMETER" in options.headers.get("public", ""):
                self._keepalive_method = "GET_PARAMETER"
            described = self._request("DESCRIBE", self.url, {"Accept": "application/sdp"})
            if described is None:  # redirected: self.url changed
                continue
            base = described.headers.get("content-base") or self.url
            description = described.body.decode("utf-8", "replace")
            try:
                media = video_media(description, base)
                self.audio_offered = audio_media(description, base)
            except SdpError as err:
                raise RtspError(f"DESCRIBE: {err}") from None
            self._rtp_channel = self._setup(media.control, RTP_CHANNEL)
            offered = self.audio_offered
            if offered is not None and offered.encoding in audio_encodings:
                self._audio_channel = self._setup(offered.control, AUDIO_RTP_CHANNEL)
                self.audio = offered
            self._aggregate_url = media.aggregate
            self._request("PLAY", self._aggregate_url, {"Range": "npt=0.000-"})
            return media
        raise RtspError(f"more than {MAX_REDIRECTS} redirects")

    def _connect(self) -> None:
        self.close(teardown=False)
        parts = urlsplit(self.url)
        try:
            sock = socket.create_connection(
                (parts.hostname or "", parts.port or 554), timeout=self._connect_timeout
            )
        except OSError as err:
            raise RtspError(f"connect: {_describe(err)}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self._sock = sock
        self._pending = b""

    def _setup(self, control: str, channel: int) -> int:
        """SETUP one media over TCP, asking for ``channel`` (RTCP on the next); the RTP
        channel the server chose."""
        transport = f"RTP/AVP/TCP;unicast;interleaved={channel}-{channel + 1}"
        setup = self._request("SETUP", control, {"Transport": transport})
        assert setup is not None
        if not self._session:
            self._take_session(setup.headers.get("session", ""))
        answered = setup.headers.get("transport", "")
        if answered and "TCP" not in answered.upper():
            raise RtspError(f"SETUP: the camera answered another transport ({answered})")
        chosen = re.search(r"interleaved=(\d+)", answered)
        return int(chosen.group(1)) if chosen else channel

    def _take_session(self, value: str) -> None:
        session, _, rest = value.partition(";")
        if not session.strip():
            raise RtspError("SETUP: the answer has no Session")
        self._session = session.strip()
        found = re.search(r"timeout\s*=\s*(\d+)", rest)
        if found and int(found.group(1)) > 0:
            self._keepalive_every = max(1.0, int(found.group(1)) / 2)

    def _stream_mode(self) -> select.poll:
        """From here on: non-blocking reads after a poll that wakes once LOW_WATER_BYTES
        have arrived (or the slice has passed)."""
        sock = self._sock
        assert sock is not None
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, LOW_WATER_BYTES)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return poller

    def _request(
        self, method: str, url: str, headers: dict[str, str] | None = None, *, required: bool = True
    ) -> _Message | None:
        """Send a request and read its answer (during the handshake). Retries once with
        credentials on 401; follows a redirect of DESCRIBE (None: ``self.url`` moved).
        ``required=False``: an error answer is not fatal (OPTIONS)."""
        for attempt in range(2):
            self._send(method, url, headers or {})
            answer = self._read_answer(method)
            retry = answer.status == 401 and attempt == 0 and bool(self._auth.user)
            if retry and self._auth.take_challenge(answer.challenges):
                continue
            if method == "DESCRIBE" and answer.status in (301, 302, 303, 307):
                location = answer.headers.get("location", "")
                if not location.lower().startswith("rtsp://"):
                    raise RtspError(f"DESCRIBE: redirect to {redact(location)!r}")
                self.url = redact(location, keep_user=False)
                return None
            if answer.status >= 300:
                if not required:
                    return None
                raise RtspRefused(method, answer.status, answer.reason)
            return answer
        raise RtspRefused(method, 401, "Unauthorized")  # pragma: no cover - loop returns

    def _send(self, method: str, url: str, headers: dict[str, str]) -> None:
        assert self._sock is not None
        self._sequence += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self._sequence}", f"User-Agent: {USER_AGENT}"]
        if self._session:
            lines.append(f"Session: {self._session}")
        authorization = self._auth.header(method, url)
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines += [f"{name}: {value}" for name, value in headers.items()]
        try:
            self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        except OSError as err:
            raise RtspError(f"{method}: {_describe(err)}") from None

    def _read_answer(self, method: str) -> _Message:
        """The answer to the request just sent (by its CSeq), within the connect timeout.
        Interleaved data before it (a server that starts streaming early) is dropped: it
        precedes the first keyframe the camera waits for anyway; requests of the
        server's and stale answers are skipped."""
        deadline = time.monotonic() + self._connect_timeout
        cseq = str(self._sequence)
        data, position = self._pending, 0
        while True:
            while len(data) - position >= 4:
                if data[position] == 0x24:  # '$': interleaved data
                    end = position + 4 + int.from_bytes(data[position + 2 : position + 4], "big")
                    if end > len(data):
                        break
                    position = end
                elif _is_message(data, position):
                    message, end = _parse_message(data, position)
                    if message is None:
                        break
                    position = end
                    if message.status and message.cseq in ("", cseq):
                        self._pending = data[position:]
                        return message
                else:  # noise: on to the next frame or message
                    found = [
                        at
                        for at in (
                            data.find(b"$", position + 1),
                            data.find(b"RTSP/1.0 ", position + 1),
                        )
                        if at >= 0
                    ]
                    position = min(found) if found else len(data)
            data, position = data[position:], 0
            if len(data) > 2 * MAX_MESSAGE_BYTES:
                raise RtspError(f"{method}: no RTSP answer in {len(data)} bytes")
            data += self._recv_handshake(method, deadline)

    def _recv_handshake(self, method: str, deadline: float) -> bytes:
        """What arrives next, by the deadline; a stop ends the wait within a slice."""
        sock = self._sock
        assert sock is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RtspError(f"{method}: no answer within {self._connect_timeout:g}s")
            if self._stop.is_set():
                raise RtspError(f"{method}: stopping")
            sock.settimeout(min(READ_SLICE_S, remaining))
            try:
                chunk = sock.recv(READ_BYTES)
            except TimeoutError:
                continue
            except OSError as err:
                raise RtspError(f"{method}: {_describe(err)}") from None
            if not chunk:
                raise RtspError(f"{method}: the server closed the connection")
            return chunk

    # ------------------------------------------------------------------ streaming

    def packets(self) -> Iterator[memoryview]:
        """The video's RTP packets as they arrive (views, valid until the next one is
        asked for). Ends when ``stop`` is set; raises RtspStalled when no video packet
        came for the stall timeout (RTCP and keepalive answers do not count), RtspError
        when the server closes the connection."""
        sock = self._sock
        assert sock is not None
        wait = self._stream_mode().poll
        slice_ms = round(READ_SLICE_S * 1000)
        stall_timeout, stop = self._stall_timeout, self._stop
        channel, audio = self._rtp_channel, self._audio_channel
        audio_packets, on_report = self.audio_packets, self.on_sender_report
        data = self._pending
        self._pending = b""
        last_video = time.monotonic()
        next_keepalive = last_video + self._keepalive_every
        recv = sock.recv
        while True:
            position, size, video = 0, len(data), False
            view = memoryview(data)
            while size - position >= 4:
                if data[position] != 0x24:  # not '$' (interleaved data): a message
                    after = self._skip_message(data, position)
                    if after < 0:
                        break  # its end has not arrived yet
                    position = after
                    continue
                end = position + 4 + ((data[position + 2] << 8) | data[position + 3])
                if end > size:
                    break
                frame_channel = data[position + 1]
                if frame_channel == channel:
                    video = True
                    yield view[position + 4 : end]
                elif frame_channel == audio:
                    audio_packets.append(data[position + 4 : end])
                elif on_report is not None and frame_channel in (channel + 1, audio + 1):
                    _sender_report(view[position + 4 : end], frame_channel == audio + 1, on_report)
                position = end
            rest = data[position:]
            if stop.is_set():
                return
            wait(slice_ms)  # a slice later, what has arrived is taken even if it is little
            try:
                chunk: bytes | None = recv(READ_BYTES)
            except BlockingIOError:  # nothing arrived in this slice
                chunk = None
            except OSError as err:
                raise RtspError(f"reading the stream: {_describe(err)}") from None
            if chunk == b"":
                raise RtspError("the server closed the connection")
            now = time.monotonic()
            if video:
                last_video = now
            elif now - last_video > stall_timeout:
                raise RtspStalled(f"no video for {now - last_video:.1f}s")
            data = rest + chunk if rest and chunk else (chunk or rest)
            if now >= next_keepalive:
                next_keepalive = now + self._keepalive_every
                self._send(self._keepalive_method, self._aggregate_url, {})

    def _skip_message(self, data: bytes, position: int) -> int:
        """At something other than '$': an RTSP answer (to a keepalive: a 401 renews the
        credentials' challenge) or a request of the server's, skipped whole; anything
        else is skipped to the next '$'. The new position, or -1 to read more first."""
        if _is_message(data, position):
            try:
                message, after = _parse_message(data, position)
            except RtspError:
                message, after = None, -2  # not a message after all: resynchronize
            if message is not None:
                if message.status == 401:
                    self._auth.take_challenge(message.challenges)
                return after
            if after == -1:
                return -1  # the rest is still coming
        found = data.find(b"$", position + 1)
        after = found if found >= 0 else len(data)
        self.interleaved_errors += after - position
        return after

    def close(self, *, teardown: bool = True) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if teardown and self._session:
            try:
                sock.settimeout(1.0)
                self._sock = sock
                self._send("TEARDOWN", self._aggregate_url, {})
            except (OSError, RtspError):
                pass  # the camera is gone: nothing to tear down
            finally:
                self._sock = None
        self._session = ""
        sock.close()


def _sender_report(
    packet: memoryview, of_audio: bool, on_report: Callable[[bool, float, int], None]
) -> None:
    """The RTCP packet a compound packet starts with, if it is a sender report: its NTP
    time (seconds since 1900) and the RTP timestamp of the same instant."""
    if len(packet) < 20 or packet[0] >> 6 != 2 or packet[1] != RTCP_SENDER_REPORT:
        return
    ntp = int.from_bytes(packet[8:16], "big") / 2**32
    on_report(of_audio, ntp, int.from_bytes(packet[16:20], "big"))


def _is_message(data: bytes, position: int) -> bool:
    """Whether an answer ("RTSP/1.0 200 OK") or a request line starts at ``position``."""
    return data.startswith(b"RTSP/1.0 ", position) or bool(_REQUEST_LINE.match(data, position))


def _parse_message(data: bytes, position: int) -> tuple[_Message | None, int]:
    """The message at ``position`` and the position after it; (None, -1) while it has
    not all arrived. RtspError if it cannot be one (too large, a bad length)."""
    head_end = data.find(b"\r\n\r\n", position, position + MAX_MESSAGE_BYTES)
    if head_end < 0:
        if len(data) - position >= MAX_MESSAGE_BYTES:
            raise RtspError(f"a message of the server's is over {MAX_MESSAGE_BYTES} bytes")
        return None, -1
    lines = data[position:head_end].decode("utf-8", "replace").split("\r\n")
    headers: dict[str, str] = {}
    challenges: list[str] = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = value
        if name == "www-authenticate":
            challenges.append(value)
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit() or int(length_text) > MAX_MESSAGE_BYTES:
        raise RtspError(f"a message of the server's has Content-Length {length_text!r}")
    body_end = head_end + 4 + int(length_text)
    if len(data) < body_end:
        return None, -1
    first = lines[0].split(" ", 2)
    status = 0
    if first[0] == "RTSP/1.0":
        if len(first) < 2 or not first[1].isdigit() or not 100 <= int(first[1]) <= 999:
            raise RtspError(f"a bad status line: {lines[0][:80]!r}")
        status = int(first[1])
    reason = first[2] if status and len(first) > 2 else ""
    return _Message(status, reason, headers, challenges, data[head_end + 4 : body_end]), body_end


#: How a socket error reads in an RtspError: the first row whose type it is; any other
#: reads as its own text.
OS_ERRORS: tuple[tuple[type[OSError], str], ...] = (
    (ConnectionRefusedError, "connection refused"),
    (TimeoutError, "timed out"),  # socket.timeout, too
)


def _describe(err: OSError) -> str:
    for kind, text in OS_ERRORS:
        if isinstance(err, kind):
            return text
    return err.strerror or str(err)
