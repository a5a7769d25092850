"""A spool, one sink's forwarder thread and the fault-injecting endpoint, for tests."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from edge_agent.assembly import make_forwarder
from edge_agent.config.loading import parse_config
from edge_agent.config.sinks import SinkConfig
from edge_agent.delivery.budget import UploadBudget
from edge_agent.delivery.forwarder import Forwarder
from edge_agent.records import Record
from edge_agent.runtime_status import ForwarderSnapshot
from edge_agent.spool.store import Spool
from tests.faulty_kinesis import FaultyKinesis
from tests.support import wait_until


class MakeHarness(Protocol):
    def __call__(self, **options: Any) -> Harness: ...


class Harness:
    """A spool, one sink's forwarder thread, and the endpoint it sends to."""

    def __init__(self, endpoint: FaultyKinesis, kind: str, tmp: Path, **options: Any) -> None:
        self.endpoint = endpoint
        self.kind = kind
        self.target = f"t-{uuid.uuid4().hex[:8]}"
        if kind == "kinesis":
            endpoint.create_stream(self.target, options.pop("shards", 2))
            # Pacing has tests of its own; here it would only spread requests out.
            target = {
                "stream": self.target,
                "shard_records_per_second": 100_000,
                "shard_bytes_per_second": "100MiB",
            }
        else:
            options.pop("shards", None)
            endpoint.create_delivery_stream(self.target)
            target = {"delivery_stream": self.target}
        sink = {
            "type": kind,
            **target,
            "region": "us-east-1",
            "endpoint_url": endpoint.endpoint,
            "retry_min": "10ms",
            "retry_max": "200ms",
            "pause_probe": "1s",
            "linger": "0s",  # the records are appended at once; linger has its own test
            **options,
        }
        self.table = sink
        self.config: SinkConfig = parse_config({"sinks": {"out": sink}}).sinks["out"]
        self.spool = Spool.open(tmp / f"{self.target}.db")
        self.stop = threading.Event()
        self.forwarder: Forwarder | None = None
        self.next_seq = 0

    def append(self, count: int, keys: int = 5, size: int = 100) -> list[int]:
        seqs = list(range(self.next_seq, self.next_seq + count))
        self.next_seq += count
        now = int(time.time() * 1000)
        self.spool.append(
            [
                Record("out", f"k{seq % keys}", now, json.dumps({"seq": seq}).ljust(size).encode())
                for seq in seqs
            ]
        )
        return seqs

    def start(self) -> Forwarder:
        self.forwarder = make_forwarder(
            self.config, self.spool, UploadBudget(None, 1024), self.stop
        )
        self.forwarder.start()
        return self.forwarder

    @property
    def status(self) -> ForwarderSnapshot:
        assert self.forwarder is not None
        return self.forwarder.snapshot()

    def wait_drained(self, timeout: float = 30) -> None:
        wait_until(lambda: self.spool.pending("out")[0] == 0, timeout, 0.01, "spool drained")

    def delivered(self) -> list[tuple[str, int]]:
        """(partition key or "", seq) of every record the endpoint accepted, in order."""
        if self.kind == "kinesis":
            return [
                (record.partition_key, json.loads(record.data)["seq"])
                for record in self.endpoint.records(self.target)
            ]
        return [
            ("", json.loads(data)["seq"]) for data in self.endpoint.firehose_records(self.target)
        ]

    def close(self) -> None:
        self.stop.set()
        self.spool.wake_waiters()
        if self.forwarder is not None:
            self.forwarder.join(10)
        self.spool.close()

    def reconfigure(self, **changes: Any) -> None:
        """Change keys of the sink's config table (before ``start``)."""
        self.table = {**self.table, **changes}
        self.config = parse_config({"sinks": {"out": self.table}}).sinks["out"]
