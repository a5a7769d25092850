"""The runtime status file: what the running agent reports about itself.

The agent rewrites ``<spool name>.status.json`` (beside the spool, or in
``agent.status_dir``) every ``agent.status_interval``; ``edge-agent status`` reads it
from another process. The file is written in place, over blocks allocated once
(``STATUS_BLOCK`` at a time), never through a new file and a rename: on a filesystem
that is full, the status must still be written. A reader that catches a write half done
sees JSON that does not parse, nearly always, and reads again a moment later (a status
view, not a record: a rare mix of two writes that parses costs nothing).
Its keys are a contract with users (``edge-agent status --json`` prints them), so they
are declared here once, as TypedDicts, and mypy checks both the parts that write them
(the MQTT source, cameras, uploaders, the upload budget) and ``status.py``, which reads
them. This module imports nothing of the running agent: the status command stays light.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import NotRequired, TypedDict

#: The file's name: ``<spool name>`` + this.
SUFFIX = ".status.json"
#: The status file grows by this many bytes at a time (allocated, then overwritten).
STATUS_BLOCK = 64 * 1024
#: Reads of a file caught while it was being written before giving up, and the pause
#: between two.
READ_TRIES = 5
READ_PAUSE_S = 0.01


class WorkerFields(TypedDict):
    """What every worker reports: what it is doing, why, and since when (epoch s)."""

    state: str
    reason: str
    since: float
    #: When this worker was started (a reload restarts only the parts that changed).
    started_at: NotRequired[float]


class LinkFields(TypedDict):
    """Whether an uploader's endpoint answers, and since when (None: not tried yet)."""

    online: bool | None
    link_since: float | None


class ShareSnapshot(TypedDict):
    """A sink's share of the upload budget."""

    priority: int
    max_rate: float | None  # bytes/s (as every rate here; the text output shows bits/s)
    scheduled: str
    paused: bool
    admitted_bytes: int


class ShardSnapshot(TypedDict, total=False):
    last_sequence_number: str
    pace: float
    throttled: int


class TimeoutSnapshot(TypedDict):
    """A sink's adaptive request (or acknowledgement) timeout."""

    current_s: float
    peak_s: float
    timeouts: int  # requests that timed out
    timed_out_items: int  # the records (fragments) they carried: possible duplicates


class SinkFields(TypedDict, total=False):
    """What a record sink adds to its forwarder's status (the keys of its kind)."""

    stream: str
    delivery_stream: str
    open_shards: int | None
    aggregate: bool
    ordered: bool
    shards: dict[str, ShardSnapshot]
    aggregates_resent_after_resharding: int
    bucket: str  # s3
    objects: int
    multipart_uploads: int
    parts_resumed: int
    orphan_uploads_aborted: int
    wire_bytes: int
    request_timeout: TimeoutSnapshot


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
    ack_timeout: NotRequired[TimeoutSnapshot]
    acknowledged_on: NotRequired[str]  # PERSISTED, or RECEIVED (a stream keeping no data)
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
    #: Reconnects that found the broker had lost the agent's session (and its queue).
    sessions_lost: int
    last_error: str | None
    last_error_at: float | None
    commit_batches: int
    max_batch: int
    backpressure_waits: int
    inbox: int
    broker: str
    client_id: str


class CameraEventsSnapshot(TypedDict, total=False):
    """A camera's ring, uploads for events, motion and snapshots (events/)."""

    upload: str  # continuous, events, off
    ring_fragments: int
    ring_bytes: int
    ring_trimmed: int  # fragments the ring dropped (bytes or age)
    ring_yielded: int  # of those, dropped early to give room on a full disk
    queued_for_events: int
    not_uploaded: int  # fragments outside every event (upload = "events")
    tags_left_out: int
    motion_samples: int
    motion_events: int
    motion_area: float  # the changed part of the watched picture at the last sample
    snapshots: int
    snapshot_ms: float | None  # how long the last JPEG took
    undecodable_keyframes: int


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
    unstored_fragments: NotRequired[int]  # refused by a paused intake (a full disk)
    b_frames: NotRequired[bool]  # sends B-frames: encoded without them
    audio: NotRequired[str]  # "off", "none", the track ("AAC 16000 Hz 1 ch"), or why not
    audio_frames: NotRequired[int]
    dropped_audio: NotRequired[int]  # unreadable, late, or before the first fragment
    events: NotRequired[CameraEventsSnapshot]
    last_error: str


class BudgetSnapshot(TypedDict):
    max_rate: float | None  # bytes/s; None: no budget


class StorageSnapshot(TypedDict):
    """The spool's filesystem and file (spool/storage.py, spool/file_watch.py)."""

    free_bytes: int | None  # for the agent's user (f_bavail)
    filesystem_bytes: int | None
    free_pages_bytes: int | None  # free pages inside the spool file, reused first
    reserve_bytes: int
    ballast_bytes: int
    intake_paused: str | None
    paused_since: float | None
    pauses: int
    disk_full_errors: int  # appends SQLite refused for want of room
    ballast_releases: int
    file_rebuilds: int
    file_lost: str | None


class ReloadSnapshot(TypedDict):
    """The last configuration reload (SIGHUP)."""

    at: float
    #: "applied", "incomplete" (a part could not start; tried again at the next
    #: reload), "refused" (needs a restart) or "failed" (errors in the file).
    outcome: str
    #: What changed, or why nothing did.
    message: str


class AnalyticsSnapshot(TypedDict):
    """One analytics query (analytics/engine.py)."""

    window: str
    emitted: int  # windows emitted (revisions included)
    rows_out: int  # result rows, each a record per sink
    late: int  # readings that came for a window already closed
    revisions: int
    last_emit_ms: int | None
    run_seconds: float  # the last run of the query
    max_run_seconds: float
    failures: int
    skipped: int  # windows given up after failing again and again (no rows)
    untimed: int  # readings without an event time: in no window
    last_error: str
    last_error_at: float | None


class ClockSnapshot(TypedDict):
    """Whether the system clock is synchronized (clock_sync.py)."""

    state: str  # "synchronized", "unsynchronized" or "unknown" (not asked, or no way to)
    since: float
    #: Records and fragments marked as captured on an unsynchronized clock.
    marked: int


class EventsSnapshot(TypedDict):
    """The event keeper (events/keeper.py)."""

    state: str
    announced: int  # event starts and ends sent as records
    requests: int  # manual events taken from the command line
    bad_requests: int
    last_error: str


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
    storage: NotRequired[StorageSnapshot]
    reload: NotRequired[ReloadSnapshot]
    clock: NotRequired[ClockSnapshot]
    analytics: NotRequired[dict[str, AnalyticsSnapshot]]
    events: NotRequired[EventsSnapshot]


def status_path(spool_path: Path, status_dir: Path | None = None) -> Path:
    """Where the running agent writes its status: in ``status_dir``, or beside the spool."""
    return (status_dir or spool_path.parent) / (spool_path.name + SUFFIX)


def write(path: Path, status: RuntimeStatus) -> None:
    """Write the status over the file's allocated blocks, padded with blanks to their
    end; allocates more (STATUS_BLOCK at a time) only when it grew. OSError if it
    cannot (the allocation, when the filesystem is full)."""
    data = json.dumps(status, indent=1).encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:  # a status_dir that is not there yet
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if len(data) >= size:
            size = (len(data) // STATUS_BLOCK + 1) * STATUS_BLOCK
            os.posix_fallocate(fd, 0, size)
        os.pwrite(fd, data + b" " * (size - len(data)), 0)
    finally:
        os.close(fd)


def read(path: Path) -> RuntimeStatus:
    """The file as the agent wrote it; OSError or ValueError if it is missing or torn
    (a torn read is tried again, READ_TRIES times)."""
    for attempt in range(READ_TRIES):
        try:
            data = json.loads(path.read_bytes())
            break
        except ValueError:
            if attempt == READ_TRIES - 1:
                raise
            time.sleep(READ_PAUSE_S)  # the writer is mid-write: let it finish
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a status object")
    status: RuntimeStatus = data  # type: ignore[assignment]  # written by write() above
    return status
