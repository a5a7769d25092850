"""A fault-injecting TCP proxy for the outage tests: it stands between the agent and one
endpoint on 127.0.0.1 and does to the link what bad uplinks do, switched by the test:

    pass       forward both ways (the default)
    cut        connection refused: no listener; open connections are closed
    blackhole  connections are accepted but nothing is forwarded or answered, and open
               ones go silent, what they send dropped (a dead route: the agent sees
               timeouts); when the route comes back, those connections are reset, as
               TCP would give up on them
    reset      every connection, new or open, is reset (RST)
    latency    each chunk is forwarded ``latency`` seconds after it arrived (a delay
               line: a long route's latency, its throughput intact)
    rate       the agent -> endpoint direction is limited to ``rate`` bytes/s

It counts what the agent sent through it (``upstream``: time and size of every chunk
forwarded), so a test can measure the upload rate where the network would.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time
from types import TracebackType

from tests.support import free_port

CHUNK = 16 * 1024
MODES = ("pass", "cut", "blackhole", "reset")


class FaultProxy:
    def __init__(self, target_port: int, *, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.mode = "pass"
        self.latency = 0.0
        self.rate: float | None = None  # bytes/s upstream
        self.upstream: list[tuple[float, int]] = []  # (monotonic time, bytes) forwarded
        self.upstream_read = 0  # bytes read from the agent (forwarded, or on the line)
        self.connections = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._closed = threading.Event()
        self._bucket_at = time.monotonic()
        self._bucket = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ control

    def start(self) -> FaultProxy:
        self._listen()
        return self

    def stop(self) -> None:
        self._closed.set()
        self._unlisten()
        self._close_all(reset=False)

    def set_mode(self, mode: str) -> None:
        """Switch the fault; ``cut`` and ``reset`` also end the connections that are open."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        was, self.mode = self.mode, mode
        if was == "blackhole" and mode != "blackhole":
            self._close_all(reset=True)
        if mode == "cut":
            self._unlisten()
            self._close_all(reset=False)
        elif mode == "reset":
            self._close_all(reset=True)
        if mode != "cut" and self._listener is None:
            self._listen()

    def set_rate(self, rate: float | None) -> None:
        with self._lock:
            self.rate = rate
            self._bucket_at, self._bucket = time.monotonic(), 0.0

    def upstream_bytes(self, since: float = 0.0, until: float | None = None) -> int:
        end = time.monotonic() if until is None else until
        with self._lock:
            return sum(size for at, size in self.upstream if since <= at < end)

    def upstream_in_transit(self) -> int:
        """Bytes the agent sent that are still on the delay line (not yet forwarded)."""
        with self._lock:
            return self.upstream_read - sum(size for _, size in self.upstream)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _unlisten(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _close_all(self, *, reset: bool) -> None:
        with self._lock:
            sockets, self._open = set(self._open), set()
        for sock in sockets:
            _close(sock, reset=reset)

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed (cut or stop)
            if self.mode == "reset":
                _close(client, reset=True)
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.mode == "blackhole":
            self._swallow(client)
            return
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        except OSError:
            _close(client, reset=True)
            return
        server.settimeout(None)
        with self._lock:
            self._open.update((client, server))
        threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()
        self._pump(client, server, True)

    def _swallow(self, client: socket.socket) -> None:
        """Accept and read, never answer: what a dead route looks like from the agent."""
        with self._lock:
            self._open.add(client)
        with contextlib.suppress(OSError):
            while client.recv(CHUNK) and not self._closed.is_set():
                pass
        _close(client, reset=False)

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        """Read one direction; a delivery thread forwards each chunk once ``latency``
        has passed since it was read (a delay line: the latency of a long route
        without its throughput falling)."""
        line: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
        delivery = threading.Thread(target=self._deliver, args=(line, sink, upstream), daemon=True)
        delivery.start()
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                if self.mode == "blackhole":
                    continue  # a dead route: what is sent is lost
                if upstream:
                    self._take(len(data))  # the sender feels a slow link here
                    with self._lock:
                        self.upstream_read += len(data)
                line.put((time.monotonic() + self.latency, data))
        except OSError:
            pass
        finally:
            line.put(None)

    def _deliver(
        self, line: queue.Queue[tuple[float, bytes] | None], sink: socket.socket, upstream: bool
    ) -> None:
        try:
            while (item := line.get()) is not None:
                due, data = item
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the chunk is on the long route
                sink.sendall(data)
                if upstream:
                    with self._lock:
                        self.upstream.append((time.monotonic(), len(data)))
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def _take(self, size: int) -> None:
        """Wait until ``size`` bytes fit the rate limit (a token bucket, 50 ms deep)."""
        while True:
            with self._lock:
                rate = self.rate
                if rate is None:
                    return
                now = time.monotonic()
                self._bucket = min(rate * 0.05, self._bucket + (now - self._bucket_at) * rate)
                self._bucket_at = now
                if self._bucket >= 0:
                    self._bucket -= size
                    return
                wait = -self._bucket / rate
            time.sleep(min(wait, 0.5))


def _close(sock: socket.socket, *, reset: bool) -> None:
    """Close now: a reset (RST) or a shutdown, which also wakes a pump blocked on the
    socket (a bare close would wait for it, and the peer would see nothing)."""
    with contextlib.suppress(OSError):
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
