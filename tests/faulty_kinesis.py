"""A fault-injecting Kinesis Data Streams / Firehose endpoint for tests.

The sinks must cope with what the real services do under load: single records failing inside
a 200 response (``ProvisionedThroughputExceededException``, ``InternalFailure``), per-shard
write limits, whole-request errors, resharding. No emulator (kinesalite, LocalStack) throttles
or fails individual records, so this is our own small HTTP server speaking the AWS JSON 1.1
protocol the way boto3 calls it (``X-Amz-Target: Kinesis_20131202.<Op>`` or
``Firehose_20150804.<Op>``). It implements PutRecords, ListShards, DescribeStreamSummary,
PutRecordBatch and DescribeDeliveryStream with the services' validation, stores every accepted
record, and has knobs (settable from the test thread at any time) to inject faults.
Signatures are not checked.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple

from tests.support import local_client

ACCOUNT = "000000000000"
REGION = "us-east-1"
JSON_TYPE = "application/x-amz-json-1.1"
HASH_KEY_MAX = 2**128 - 1
# 56 digits like real sequence numbers, so they compare correctly as strings and as integers.
SEQUENCE_BASE = 49_600_000_000_000_000_000_000_000_000_000_000_000_000_000_000_000_000_000
EXPLICIT_HASH_KEY = re.compile(r"0|[1-9]\d{0,38}")
PUT_OPS = frozenset({"PutRecords", "PutRecordBatch"})

Json = dict[str, Any]


class KinesisRecord(NamedTuple):
    shard_id: str
    sequence_number: str
    partition_key: str
    data: bytes
    explicit_hash_key: str | None


class AwsError(Exception):
    """A whole-request error response."""

    def __init__(self, status: int, error_type: str, message: str = "") -> None:
        super().__init__(message or error_type)
        self.status, self.error_type, self.message = status, error_type, message or error_type


def _invalid(message: str) -> AwsError:
    return AwsError(400, "InvalidArgumentException", message)


def _md5_key(partition_key: str) -> int:
    return int.from_bytes(hashlib.md5(partition_key.encode("utf-8")).digest(), "big")


@dataclass
class _Shard:
    shard_id: str
    start: int
    end: int
    starting_sequence: str
    parent: str | None = None
    ending_sequence: str | None = None
    window: deque[tuple[float, int]] = field(default_factory=deque)  # (accepted at, bytes)
    window_bytes: int = 0

    @property
    def is_open(self) -> bool:
        return self.ending_sequence is None

    def as_json(self) -> Json:
        sequence_range = {"StartingSequenceNumber": self.starting_sequence}
        if self.ending_sequence is not None:
            sequence_range["EndingSequenceNumber"] = self.ending_sequence
        shard: Json = {
            "ShardId": self.shard_id,
            "HashKeyRange": {"StartingHashKey": str(self.start), "EndingHashKey": str(self.end)},
            "SequenceNumberRange": sequence_range,
        }
        if self.parent is not None:
            shard["ParentShardId"] = self.parent
        return shard


@dataclass
class _Stream:
    name: str
    created: float
    shards: list[_Shard] = field(default_factory=list)
    records: list[KinesisRecord] = field(default_factory=list)

    @property
    def arn(self) -> str:
        return f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{self.name}"


class FaultyKinesis:
    """Kinesis + Firehose on 127.0.0.1 with fault knobs; see the module docstring."""

    def __init__(
        self,
        seed: int = 0,
        *,
        max_record_bytes: int = 1 << 20,
        max_request_bytes: int = 5 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_record_bytes = max_record_bytes
        self.max_request_bytes = max_request_bytes
        self.firehose_max_record_bytes = 1000 * 1024
        self.firehose_max_request_bytes = 4 << 20
        self.clock = clock  # injectable so rate-limit tests need no sleeps
        # Fault knobs.
        self.fail_share = 0.0
        self.fail_codes: tuple[str, ...] = (
            "ProvisionedThroughputExceededException",
            "InternalFailure",
        )
        self.enforce_shard_limits = False
        self.shard_records_per_second = 1000
        self.shard_bytes_per_second = 1048576
        self.persistent_request_error: tuple[int, str] | None = None
        self.reject_data_containing: bytes | None = None
        self.answer_delay = 0.0  # seconds each Put* answer is held back (a slow link)
        # Counters (Put* operations only).
        self.requests = 0  # every Put* request received
        self.records_attempted = 0  # records in every Put* request, also rejected ones
        self.records_failed = 0  # records failed individually inside a 200 response
        self.throttled_records = 0  # of those, failed by the shard limits
        self.request_errors_sent = 0  # Put* requests answered with an error as a whole
        self.request_times: list[float] = []  # clock() at each Put* request's arrival
        self.peak_shard_records_per_second = 0  # max accepted by one shard in a 1-s window
        self.peak_shard_bytes_per_second = 0
        self.peak_requests_in_flight = 0  # Put* requests being handled at the same time
        self.shared_key_overlaps = 0  # Put* requests that overlapped one with a same key
        self._active: list[set[str]] = []  # partition keys of each Put* being handled
        #: The client ports (connections) each stream's Put* requests came on.
        self.peers: dict[str, set[int]] = {}

        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._queued_errors: deque[tuple[int, str]] = deque()
        self._streams: dict[str, _Stream] = {}
        self._firehose: dict[str, list[bytes]] = {}
        self._sequence = SEQUENCE_BASE
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultyKinesis:
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name="faulty-kinesis", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FaultyKinesis:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FaultyKinesis is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def client(self, service: str = "kinesis", total_attempts: int = 1) -> Any:
        """A boto3 client for it. ``total_attempts`` counts the first attempt too."""
        from botocore.config import Config

        # Config(retries={"max_attempts": 1}) means one *retry* (two attempts) in botocore.
        retries = {"total_max_attempts": total_attempts, "mode": "standard"}
        return local_client(self.endpoint, service, Config(retries=retries))

    # -- setup and inspection ----------------------------------------------------------------

    def create_stream(self, name: str, shards: int) -> None:
        with self._lock:
            stream = self._streams[name] = _Stream(name, time.time())
            bounds = [index * (HASH_KEY_MAX + 1) // shards for index in range(shards + 1)]
            for index in range(shards):
                start, end = bounds[index], bounds[index + 1] - 1
                stream.shards.append(_Shard(f"shardId-{index:012d}", start, end, self._next()))

    def create_delivery_stream(self, name: str) -> None:
        with self._lock:
            self._firehose[name] = []

    def split_shard(
        self, name: str, shard_id: str, new_starting_hash_key: int | None = None
    ) -> tuple[str, str]:
        """Close ``shard_id`` and open two children (halves by default); returns their ids."""
        with self._lock:
            stream = self._streams[name]
            parent = next(s for s in stream.shards if s.shard_id == shard_id)
            if not parent.is_open:
                raise ValueError(f"{shard_id} is already closed")
            middle = new_starting_hash_key or (parent.start + parent.end + 1) // 2
            if not parent.start < middle <= parent.end:
                raise ValueError(f"{middle} does not split {shard_id}")
            parent.ending_sequence = self._next()
            children = []
            for start, end in ((parent.start, middle - 1), (middle, parent.end)):
                child_id = f"shardId-{len(stream.shards):012d}"
                stream.shards.append(_Shard(child_id, start, end, self._next(), shard_id))
                children.append(child_id)
            return children[0], children[1]

    def queue_request_errors(self, *errors: tuple[int, str]) -> None:
        """The next Put* requests fail as a whole with these (status, type), one each, FIFO."""
        with self._lock:
            self._queued_errors.extend(errors)

    def records(self, stream: str) -> list[KinesisRecord]:
        """Accepted records of a Kinesis stream, in acceptance order."""
        with self._lock:
            return list(self._streams[stream].records)

    def shard_records(self, stream: str, shard_id: str) -> list[KinesisRecord]:
        return [record for record in self.records(stream) if record.shard_id == shard_id]

    def firehose_records(self, name: str) -> list[bytes]:
        with self._lock:
            return list(self._firehose[name])

    # -- request handling (called by handler threads) ----------------------------------------

    def handle(self, target: str, body: bytes, peer: int = 0) -> tuple[int, Json]:
        prefix, _, op = target.partition(".")
        try:
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                raise AwsError(400, "SerializationException", "body is not JSON") from None
            handler = {
                ("Kinesis_20131202", "PutRecords"): self._put_records,
                ("Kinesis_20131202", "ListShards"): self._list_shards,
                ("Kinesis_20131202", "DescribeStreamSummary"): self._describe_stream_summary,
                ("Firehose_20150804", "PutRecordBatch"): self._put_record_batch,
                ("Firehose_20150804", "DescribeDeliveryStream"): self._describe_delivery_stream,
            }.get((prefix, op))
            if handler is None:
                raise AwsError(400, "UnknownOperationException", f"unsupported: {target}")
            if op not in PUT_OPS:
                with self._lock:
                    return 200, handler(request)
            keys = {str(r.get("PartitionKey")) for r in request.get("Records") or []}
            name = str(request.get("StreamName") or request.get("DeliveryStreamName"))
            with self._lock:
                self.peers.setdefault(name, set()).add(peer)
                self.requests += 1
                self.request_times.append(self.clock())
                self.records_attempted += len(request.get("Records") or [])
                if any(keys & other for other in self._active):
                    self.shared_key_overlaps += 1
                self._active.append(keys)
                self.peak_requests_in_flight = max(self.peak_requests_in_flight, len(self._active))
            try:
                with self._lock:
                    try:
                        answer = handler(request)
                    except AwsError:
                        self.request_errors_sent += 1
                        raise
                if self.answer_delay:
                    time.sleep(self.answer_delay)  # latency of the link, not synchronization
                return 200, answer
            finally:
                with self._lock:
                    self._active.remove(keys)
        except AwsError as error:
            return error.status, {"__type": error.error_type, "message": error.message}

    def _next(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    def _injected_request_error(self) -> None:
        if self.persistent_request_error is not None:
            raise AwsError(*self.persistent_request_error)
        if self._queued_errors:
            raise AwsError(*self._queued_errors.popleft())

    def _reject_data(self, records: list[bytes]) -> None:
        needle = self.reject_data_containing
        if needle is not None and any(needle in data for data in records):
            raise _invalid("record data rejected (reject_data_containing)")

    def _stream(self, request: Json) -> _Stream:
        name = request.get("StreamName") or str(request.get("StreamARN", "")).partition("/")[2]
        if name not in self._streams:
            raise AwsError(
                400,
                "ResourceNotFoundException",
                f"Stream {name} under account {ACCOUNT} not found.",
            )
        return self._streams[name]

    @staticmethod
    def _decode(records: list[Json], limit: int, max_record: int, max_request: int) -> list[bytes]:
        if not 1 <= len(records) <= limit:
            raise _invalid(f"{len(records)} records: a request holds 1 to {limit}")
        decoded, total = [], 0
        for index, record in enumerate(records):
            try:
                data = base64.b64decode(record.get("Data", ""), validate=True)
            except (binascii.Error, TypeError):
                raise AwsError(400, "SerializationException", "Data is not base64") from None
            size = len(data) + len(str(record.get("PartitionKey", "")).encode())
            if size > max_record:
                raise _invalid(f"Records.{index}: {size} bytes is over the {max_record} limit")
            total += size
            decoded.append(data)
        if total > max_request:
            raise _invalid(f"request of {total} bytes is over the {max_request} limit")
        return decoded

    def _put_records(self, request: Json) -> Json:
        self._injected_request_error()
        records = request.get("Records") or []
        stream = self._stream(request)
        datas = self._decode(records, 500, self.max_record_bytes, self.max_request_bytes)
        targets: list[_Shard] = []
        for index, record in enumerate(records):
            key, explicit = str(record.get("PartitionKey", "")), record.get("ExplicitHashKey")
            if not 1 <= len(key) <= 256:
                raise _invalid(f"Records.{index}.PartitionKey: length must be 1 to 256")
            if explicit is not None and not (
                EXPLICIT_HASH_KEY.fullmatch(str(explicit)) and int(explicit) <= HASH_KEY_MAX
            ):
                raise _invalid(f"Records.{index}.ExplicitHashKey: {explicit!r} is invalid")
            hash_key = int(explicit) if explicit is not None else _md5_key(key)
            targets += [s for s in stream.shards if s.start <= hash_key <= s.end and s.is_open]
        self._reject_data(datas)
        now, results, failed = self.clock(), list[Json](), 0
        for record, data, shard in zip(records, datas, targets, strict=True):
            key = record["PartitionKey"]
            error = self._record_fault(self.fail_codes)
            if error is None:
                error = self._take_capacity(stream, shard, now, len(data) + len(key.encode()))
            if error is not None:
                failed += 1
                results.append({"ErrorCode": error[0], "ErrorMessage": error[1]})
                continue
            sequence = self._next()
            stream.records.append(
                KinesisRecord(shard.shard_id, sequence, key, data, record.get("ExplicitHashKey"))
            )
            results.append({"SequenceNumber": sequence, "ShardId": shard.shard_id})
        self.records_failed += failed
        return {"FailedRecordCount": failed, "Records": results}

    def _record_fault(self, codes: tuple[str, ...]) -> tuple[str, str] | None:
        if self.fail_share > 0 and self._rng.random() < self.fail_share:
            code = self._rng.choice(codes)
            return code, f"injected {code}"
        return None

    def _take_capacity(
        self, stream: _Stream, shard: _Shard, now: float, size: int
    ) -> tuple[str, str] | None:
        window = shard.window
        while window and window[0][0] <= now - 1.0:
            shard.window_bytes -= window.popleft()[1]
        if self.enforce_shard_limits and (
            len(window) >= self.shard_records_per_second
            or shard.window_bytes + size > self.shard_bytes_per_second
        ):
            self.throttled_records += 1
            return (
                "ProvisionedThroughputExceededException",
                f"Rate exceeded for shard {shard.shard_id} in stream {stream.name}"
                f" under account {ACCOUNT}.",
            )
        window.append((now, size))
        shard.window_bytes += size
        self.peak_shard_records_per_second = max(self.peak_shard_records_per_second, len(window))
        self.peak_shard_bytes_per_second = max(self.peak_shard_bytes_per_second, shard.window_bytes)
        return None

    def _list_shards(self, request: Json) -> Json:
        token = request.get("NextToken")
        if token is not None:
            name, _, offset_text = base64.b64decode(token).decode().rpartition("|")
            stream, offset = self._stream({"StreamName": name}), int(offset_text)
        else:
            stream, offset = self._stream(request), 0
        limit = int(request.get("MaxResults") or 1000)
        page = stream.shards[offset : offset + limit]
        response: Json = {"Shards": [shard.as_json() for shard in page]}
        if offset + limit < len(stream.shards):
            token = f"{stream.name}|{offset + limit}"
            response["NextToken"] = base64.b64encode(token.encode()).decode()
        return response

    def _describe_stream_summary(self, request: Json) -> Json:
        stream = self._stream(request)
        open_shards = sum(1 for shard in stream.shards if shard.is_open)
        return {
            "StreamDescriptionSummary": {
                "StreamName": stream.name,
                "StreamARN": stream.arn,
                "StreamStatus": "ACTIVE",
                "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                "RetentionPeriodHours": 24,
                "StreamCreationTimestamp": stream.created,
                "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
                "EncryptionType": "NONE",
                "OpenShardCount": open_shards,
                "ConsumerCount": 0,
            }
        }

    def _delivery_stream(self, request: Json) -> list[bytes]:
        name = str(request.get("DeliveryStreamName", ""))
        if name not in self._firehose:
            raise AwsError(400, "ResourceNotFoundException", f"Firehose {name} not found.")
        return self._firehose[name]

    def _put_record_batch(self, request: Json) -> Json:
        self._injected_request_error()
        records = request.get("Records") or []
        stored = self._delivery_stream(request)
        datas = self._decode(
            records, 500, self.firehose_max_record_bytes, self.firehose_max_request_bytes
        )
        self._reject_data(datas)
        results, failed = list[Json](), 0
        for data in datas:
            error = self._record_fault(("ServiceUnavailableException",))
            if error is not None:
                failed += 1
                results.append({"ErrorCode": error[0], "ErrorMessage": "Slow down."})
                continue
            stored.append(data)
            results.append({"RecordId": f"{self._next()}-{len(stored)}"})
        self.records_failed += failed
        return {"FailedPutCount": failed, "Encrypted": False, "RequestResponses": results}

    def _describe_delivery_stream(self, request: Json) -> Json:
        self._delivery_stream(request)
        name = request["DeliveryStreamName"]
        arn = f"arn:aws:firehose:{REGION}:{ACCOUNT}:deliverystream/{name}"
        description = {"DeliveryStreamName": name, "DeliveryStreamARN": arn, "VersionId": "1"}
        description |= {"DeliveryStreamStatus": "ACTIVE", "DeliveryStreamType": "DirectPut"}
        description |= {"Destinations": [], "HasMoreDestinations": False}
        return {"DeliveryStreamDescription": description}


class _Server(ThreadingHTTPServer):
    """Tracks open connections so that stop() can end keep-alive handler threads."""

    daemon_threads = True

    def __init__(self, fake: FaultyKinesis) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake
        self._open: dict[socket.socket, threading.Thread] = {}
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._open_lock:
            self._open[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            open_now = list(self._open.items())
        for sock, thread in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            thread.join(10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, payload = self.server.fake.handle(
            self.headers.get("X-Amz-Target", ""), body, self.client_address[1]
        )
        encoded = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(len(encoded)))
        self.send_header("x-amzn-RequestId", f"{random.getrandbits(64):016x}")
        if status != 200:
            self.send_header("x-amzn-ErrorType", f"{payload['__type']}:")
        self.end_headers()
        self.wfile.write(encoded)

    def log_message(self, format: str, *args: Any) -> None:
        pass
