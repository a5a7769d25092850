"""A minimal PutMedia client for the endpoint's tests: a SigV4-signed (botocore),
chunked POST over a plain socket, as the producer SDKs send it."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from edge_agent.sinks.kvs.acks import Ack, AckParser

CREDENTIALS = Credentials("AKIDLOCALTEST", "local-test-secret")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    acks: list[Ack]
    body: bytes


def signed_headers(
    url: str, stream: str, credentials: Credentials = CREDENTIALS, region: str = "us-east-1"
) -> dict[str, str]:
    headers = {
        "x-amzn-stream-name": stream,
        "x-amzn-fragment-timecode-type": "ABSOLUTE",
        "x-amzn-producer-start-timestamp": f"{time.time():.3f}",
        "x-amzn-fragment-acknowledgment-required": "1",
        "Transfer-Encoding": "chunked",
        "Connection": "keep-alive",
    }
    request = AWSRequest(method="POST", url=f"{url}/putMedia", data=b"", headers=headers)
    SigV4Auth(credentials, "kinesisvideo", region).add_auth(request)
    return dict(request.headers.items())


def open_put_media(url: str, headers: dict[str, str], timeout: float = 10) -> socket.socket:
    host = urlsplit(url).netloc
    name, _, port = host.partition(":")
    sock = socket.create_connection((name, int(port)), timeout)
    lines = ["POST /putMedia HTTP/1.1", f"Host: {host}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def send_chunks(sock: socket.socket, chunks: list[bytes], *, last: bool = True) -> None:
    try:
        for chunk in chunks:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        if last:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the endpoint refused and closed: its answer says why


def read_answer(sock: socket.socket) -> Answer:
    data = b""
    while True:
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            break
        if not part:
            break
        data += part
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        decoded = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            decoded += rest[:size]
            body = rest[size + 2 :]
        body = decoded
    return Answer(status, headers, AckParser().feed(body), body)


def put_media(url: str, stream: str, chunks: list[bytes], **sign: object) -> Answer:
    sock = open_put_media(url, signed_headers(url, stream, **sign))  # type: ignore[arg-type]
    send_chunks(sock, chunks)
    return read_answer(sock)
