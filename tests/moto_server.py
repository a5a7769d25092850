"""A real moto server on a loopback port, and helpers for Firehose -> S3 delivery through it.

moto (``moto[s3]`` plus ``flask`` and ``flask-cors`` for its server) runs in a child process
so that stopping it cannot leave threads or sockets behind in the test process. Everything
is in memory: a new server, or :meth:`MotoServer.reset`, starts empty.

What moto 5 does with Firehose ``PutRecord``/``PutRecordBatch`` into an S3 destination
(checked by ``tests/test_moto_firehose.py``):

- delivery is synchronous: when the call returns, the object is already in the bucket;
  buffering hints (and ``CompressionFormat``) are stored but ignored;
- one call gives exactly one new object, whose body is the call's record ``Data`` joined
  as-is, in order, with no delimiter added (``PutRecord`` is a batch of one);
- keys are ``{Prefix}YYYY/MM/DD/HH/{stream}-1-YYYY-MM-DD-HH-MM-SS-{uuid4}``: the time has
  whole seconds and the uuid is random, so *key order is not delivery order* for calls made
  within the same second. :func:`delivered_objects` therefore orders by delivery (moto's
  creation order of the S3 objects, read from its ``/moto-api/data.json``);
- no limit is enforced: more than 500 records, records over 1,000 KiB and requests over
  4 MiB are all accepted with ``FailedPutCount`` 0. A test of those limits has to check the
  delivered objects itself;
- ``FailedPutCount`` is always 0; a missing stream gives ``ResourceNotFoundException``;
  a missing bucket gives an HTTP 500 (which botocore retries).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from tests.support import free_port, local_client, port_open, wait_until

ACCOUNT_ID = "123456789012"
FIREHOSE_ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/firehose-delivery"
START_TIMEOUT = 30.0
# Loopback only: never route the moto-api calls through an HTTP(S)_PROXY from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1, logging to ``directory / "moto.log"``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.log = directory / "moto.log"
        self.port = port or free_port()
        self._fixed_port = port is not None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> MotoServer:
        """Start the server and wait (at most ``timeout`` seconds) until it answers HTTP."""
        if self.process is not None:
            raise RuntimeError("moto server already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        # free_port() releases the port before moto binds it: if another process took it
        # in between, moto exits at once and we try another port.
        for _attempt in range(1 if self._fixed_port else 3):
            process = self._spawn()
            try:
                self._wait_answering(process, timeout)
            except BaseException:
                process.kill()
                process.wait(10)
                raise
            if process.poll() is None:
                self.process = process
                return self
            if not self._fixed_port:
                self.port = free_port()
        raise RuntimeError(f"moto server exited at start:\n{self.log_text()[-3000:]}")

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _wait_answering(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        wait_until(
            lambda: process.poll() is not None or self._answers(),
            timeout,
            what=f"moto server on port {self.port} to answer",
        )

    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def _answers(self) -> bool:
        if not port_open(self.port):
            return False
        try:
            with _DIRECT.open(f"{self.endpoint}/moto-api/", timeout=2) as response:
                return int(response.status) == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 10 s) and reap it."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget every resource in every service (POST /moto-api/reset)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with _DIRECT.open(request, timeout=30) as response:
            response.read()

    def model_data(self) -> Any:
        """moto's dump of its in-memory models (GET /moto-api/data.json)."""
        with _DIRECT.open(f"{self.endpoint}/moto-api/data.json", timeout=60) as response:
            return json.loads(response.read())

    def client(self, service: str, config: Any = None) -> Any:
        """A boto3 client for ``service`` on this server; the caller closes it (``close()``).

        ``config`` (a ``botocore.config.Config``) is merged over one that bypasses any
        HTTP(S)_PROXY from the environment.
        """
        return local_client(self.endpoint, service, config)

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        assert self.process is not None, "moto server not running"
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def bucket_name_for(stream: str) -> str:
    """A valid S3 bucket name derived from a delivery stream name."""
    base = re.sub(r"[^a-z0-9-]+", "-", stream.lower()).strip("-")[:48] or "stream"
    return f"firehose-{base}"


def make_firehose_to_s3(
    server: MotoServer,
    name: str,
    *,
    bucket: str | None = None,
    prefix: str = "",
    size_mb: int = 1,
    interval_s: int = 0,
) -> str:
    """Create bucket and DirectPut delivery stream ``name`` delivering into it; return the bucket.

    Buffering defaults to the smallest the API allows (1 MiB, 0 s); moto ignores it anyway.
    """
    bucket = bucket or bucket_name_for(name)
    with closing(server.client("s3")) as s3, closing(server.client("firehose")) as firehose:
        s3.create_bucket(Bucket=bucket)
        firehose.create_delivery_stream(
            DeliveryStreamName=name,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": FIREHOSE_ROLE_ARN,
                "BucketARN": f"arn:aws:s3:::{bucket}",
                "Prefix": prefix,
                "BufferingHints": {"SizeInMBs": size_mb, "IntervalInSeconds": interval_s},
                "CompressionFormat": "UNCOMPRESSED",
            },
        )

        def active() -> bool:
            description = firehose.describe_delivery_stream(DeliveryStreamName=name)
            return bool(
                description["DeliveryStreamDescription"]["DeliveryStreamStatus"] == "ACTIVE"
            )

        wait_until(active, 10, what=f"delivery stream {name} to be ACTIVE")
    return bucket


def listed_keys(server: MotoServer, bucket: str) -> list[str]:
    """Every key in ``bucket``, in key (lexicographic) order."""
    keys: list[str] = []
    with closing(server.client("s3")) as s3:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys.extend(str(item["Key"]) for item in page.get("Contents", []))
    return keys


def delivered_keys(server: MotoServer, bucket: str) -> list[str]:
    """Every key in ``bucket``, in the order moto created the objects (= delivery order)."""
    listed = set(listed_keys(server, bucket))
    created: list[str] = []
    for key in server.model_data().get("s3", {}).get("FakeKey", []):
        name = key.get("name")
        if key.get("bucket_name") == bucket and name in listed and name not in created:
            created.append(str(name))
    if set(created) != listed:
        raise AssertionError(f"moto's model data does not account for {listed - set(created)}")
    return created


def delivered_objects(
    server: MotoServer, bucket: str, *, order: Literal["delivery", "key"] = "delivery"
) -> list[bytes]:
    """The body of every object in ``bucket``: by default in delivery order, one per put call.

    ``order="key"`` sorts by key instead, which matches delivery order only for calls made in
    different wall-clock seconds (see the module docstring).
    """
    keys = delivered_keys(server, bucket) if order == "delivery" else listed_keys(server, bucket)
    bodies: list[bytes] = []
    with closing(server.client("s3")) as s3:
        for key in keys:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"]
            with closing(body):
                bodies.append(bytes(body.read()))
    return bodies
