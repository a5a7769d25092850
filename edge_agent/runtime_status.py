"""The runtime status file: what the running agent reports about itself.

The agent rewrites ``<spool>.status.json`` every ``agent.status_interval`` (atomically:
a temporary file, then a rename); ``edge-agent status`` reads it from another process.
Its keys are a contract with users (``edge-agent status --json`` prints them), so they
are declared here once, as TypedDicts, and mypy checks both the parts that write them
(the MQTT source, cameras, uploaders, the upload budget) and ``status.py``, which reads
them. This module imports nothing of the running agent: the status command stays light.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NotRequired, TypedDict

#: The file's name next to the spool: ``<spool name>`` + this.
SUFFIX = ".status.json"


class WorkerFields(TypedDict):
    """What every worker reports: what it is doing, why, and since when (epoch s)."""

    state: str
    reason: str
    since: float


class LinkFields(TypedDict):
    """Whether an uploader's endpoint answers, and since when (None: not tried yet)."""

    online: bool | None
    link_since: float | None


class ShareSnapshot(TypedDict):
    """A sink's share of the upload budget."""

    priority: int
    max_rate: float | None
    scheduled: str
    paused: bool
    admitted_bytes: int


class ShardSnapshot(TypedDict, total=False):
    last_sequence_number: str
    pace: float
    throttled: int


class SinkFields(TypedDict, total=False):
    """What a record sink adds to its forwarder's status (the keys of its kind)."""

    stream: str
    delivery_stream: str
    open_shards: int | None
    aggregate: bool
    ordered: bool
    shards: dict[str, ShardSnapshot]
    aggregates_resent_after_resharding: int
    wire_bytes: int


class ForwarderSnapshot(WorkerFields, LinkFields, SinkFields):
    """A Kinesis Data Streams or Firehose sink."""

    type: str
    target: str
    requests: int
    records_sent: int
    entries_sent: int
    bytes_sent: int
    retries: int
    request_errors: int
    dead_lettered: int
    last_error: str
    last_error_at: float | None
    records_per_s: float
    bytes_per_s: float
    in_window: int
    upload: NotRequired[ShareSnapshot | None]


class LatencySummary(TypedDict):
    p50: float
    max: float


class KvsSnapshot(WorkerFields, LinkFields):
    """A Kinesis Video Streams sink."""

    type: str
    target: str
    replay: str
    connections: int
    fragments_sent: int
    fragments_acked: int
    bytes_sent: int
    resent: int
    dead_lettered: int
    out_of_order: int
    last_fragment_number: str | None
    last_ack_latency_s: float | None
    capture_latency_s: LatencySummary | None
    newest_acked_ms: int | None
    last_error: str
    in_window: int
    live_sessions: int
    backlog_sessions: int
    backlog_sent: int
    bytes_per_s: float
    upload: NotRequired[ShareSnapshot | None]


class FailedSink(TypedDict):
    """A sink whose uploader could not start (intake goes on)."""

    state: str
    reason: str


UploaderSnapshot = ForwarderSnapshot | KvsSnapshot
SinkSnapshot = ForwarderSnapshot | KvsSnapshot | FailedSink


class MqttSnapshot(TypedDict):
    state: str
    since: float
    reason: str
    received: int
    committed: int
    acked: int
    redelivered: int
    unrouted: int
    dropped_qos0: int
    connects: int
    last_error: str | None
    last_error_at: float | None
    commit_batches: int
    max_batch: int
    backpressure_waits: int
    inbox: int
    broker: str
    client_id: str


class CameraSnapshot(WorkerFields):
    url: str
    mode: str
    connects: int
    reconnects: int
    frames: int
    fragments: int
    bytes: int
    last_keyframe_at: float | None
    dropped_frames: int
    repaired_times: int
    time_jumps: int
    lost_packets: int
    last_error: str


class BudgetSnapshot(TypedDict):
    max_rate: float | None  # bytes/s; None: no budget


class RuntimeStatus(TypedDict):
    """The whole file."""

    pid: int
    version: str
    started_at: float
    updated_at: float
    running: bool
    sources: dict[str, MqttSnapshot]
    uplink: BudgetSnapshot
    sinks: dict[str, SinkSnapshot]
    cameras: dict[str, CameraSnapshot]


def status_path(spool_path: Path) -> Path:
    """Where the running agent writes its status: next to the spool."""
    return spool_path.with_name(spool_path.name + SUFFIX)


def write(path: Path, status: RuntimeStatus) -> None:
    """Replace the file atomically (readers never see half of it); OSError if it cannot."""
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write(json.dumps(status, indent=1))
    os.replace(tmp, path)


def read(path: Path) -> RuntimeStatus:
    """The file as the agent wrote it; OSError or ValueError if it is missing or torn."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a status object")
    status: RuntimeStatus = data  # type: ignore[assignment]  # written by write() above
    return status
