"""The fault-injecting proxy itself: each fault does what the outage tests rely on."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.fault_proxy import FaultProxy


@pytest.fixture
def echo() -> Iterator[int]:
    """An echo server on a free loopback port (its port)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield int(listener.getsockname()[1])
    listener.close()


@pytest.fixture
def proxy(echo: int) -> Iterator[FaultProxy]:
    with FaultProxy(echo) as running:
        yield running


def roundtrip(port: int, data: bytes = b"ping", timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_it_forwards_and_counts_what_went_up(proxy: FaultProxy) -> None:
    assert roundtrip(proxy.port, b"x" * 5000) == b"x" * 5000
    assert proxy.upstream_bytes() == 5000


def test_cut_refuses_connections_until_it_heals(proxy: FaultProxy) -> None:
    proxy.set_mode("cut")
    with pytest.raises(ConnectionRefusedError):
        roundtrip(proxy.port)
    proxy.set_mode("pass")
    assert roundtrip(proxy.port) == b"ping"


def test_blackhole_accepts_and_never_answers(proxy: FaultProxy) -> None:
    proxy.set_mode("blackhole")
    with pytest.raises(TimeoutError):
        roundtrip(proxy.port, timeout=0.3)
    proxy.set_mode("pass")
    assert roundtrip(proxy.port) == b"ping"


def test_reset_resets_open_and_new_connections(proxy: FaultProxy) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.sendall(b"a")
    assert sock.recv(10) == b"a"
    proxy.set_mode("reset")
    with pytest.raises(ConnectionResetError):
        for _ in range(50):  # the reset may take a write or two to surface
            sock.sendall(b"b")
            if not sock.recv(10):
                raise ConnectionResetError("closed")
    sock.close()
    with pytest.raises((ConnectionResetError, ConnectionRefusedError)):
        roundtrip(proxy.port)


def test_latency_holds_every_chunk(proxy: FaultProxy) -> None:
    proxy.latency = 0.2
    started = time.monotonic()
    assert roundtrip(proxy.port) == b"ping"
    assert time.monotonic() - started >= 0.4  # both directions


def test_the_rate_limit_holds_the_upload_to_its_rate(proxy: FaultProxy) -> None:
    proxy.set_rate(200_000)
    payload = b"y" * 300_000
    started = time.monotonic()
    assert roundtrip(proxy.port, payload, timeout=10) == payload
    elapsed = time.monotonic() - started
    assert 1.3 <= elapsed <= 2.0  # 1.5 s at 200 kB/s
