"""What every forwarding sink implements, and the types it shares with the forwarder.

The forwarder owns the loop (lease, order, pace, settle, back off); a sink only knows its
service::

    pack(candidates, now) -> Packed      choose records for one request within the
                                         service's limits (and the sink's own pacing)
    transmit(request) -> answer          the request on the wire; a whole-request failure
                                         raises a SinkError. Runs in the forwarder's
                                         transmit pool while the next request is packed,
                                         so it touches nothing but the client
    outcomes(request, answer) -> [Outcome, ...]
                                         one outcome per entry, in order (may raise a
                                         SinkError for an answer that makes no sense);
                                         back in the forwarder thread, free to update
                                         the sink's state (positions, shard map, pace)
    plain_entries(records) -> [Entry]    one entry per record (to find a bad record)
    rebuild(entry, records) -> Entry     an entry made again from its records, after
                                         its data went into a request's body
    ready() -> SinkError | None          what keeps it from sending at all (its
                                         credentials); asked at start until None
    snapshot() -> SinkFields             sink-specific status (shards, sequence numbers)

An ``Entry`` is one record as the service sees it. It carries one spooled record, or
several when the sink aggregates them; every record of an entry shares its outcome.
``transmit`` takes each entry's data as it writes the request's body (``take_data``):
while the request is on the wire its bytes are held once, in the body. A request the
service refuses as invalid is split up to find the record to blame, and its entries are
made again from their records (``rebuild``), read back from the spool.

Ordered mode: candidates come in spool order, and for each partition key only a prefix
that is due. ``RequestPacker`` keeps the rule that makes order survive partial failures:
a key appears in at most one entry per request, and once a record of a key is skipped,
no later record of that key is taken.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from edge_agent.errors import SinkError
from edge_agent.records import LeasedRecord
from edge_agent.runtime_status import SinkFields, UploaderSnapshot


@dataclass(slots=True)
class Entry:
    records: list[LeasedRecord]
    data: bytes
    partition_key: str = ""
    explicit_hash_key: str | None = None
    shard_id: str | None = None
    #: The data went into a request's body (``take_data``): the entry no longer has it.
    taken: bool = False

    def take_data(self) -> bytes:
        """The data, let go of by the entry: from now on the request's body holds the
        bytes (an aggregate is not held a second time while it is on the wire)."""
        data, self.data, self.taken = self.data, b"", True
        return data

    @property
    def size(self) -> int:
        """What the service counts against its limits: data plus partition key."""
        return len(self.data) + len(self.partition_key.encode())


@dataclass(slots=True)
class Request:
    entries: list[Entry]

    @property
    def records(self) -> list[LeasedRecord]:
        return [record for entry in self.entries for record in entry.records]


class Sent(NamedTuple):
    """Accepted; ``position`` is the sequence number (Kinesis) or record id (Firehose)."""

    shard_id: str | None
    position: str | None


class Failed(NamedTuple):
    """Not accepted this time (throttled, internal failure): retry later."""

    code: str
    message: str


Outcome = Sent | Failed


@dataclass(slots=True)
class Packed:
    """What ``pack`` chose: a request (or None), records that can never be sent with the
    reason, and how long to wait when pacing held records back."""

    request: Request | None
    rejected: list[tuple[LeasedRecord, str]] = field(default_factory=list)
    wait: float | None = None


class Sink(Protocol):
    name: str
    kind: str
    target: str
    ordered: bool
    aggregating: bool  # many records per entry: a request is not full at 500 records
    needs_meta: bool  # its records are leased with their meta text (an S3 object's)

    def pack(self, candidates: Sequence[LeasedRecord], now: float) -> Packed: ...

    def transmit(self, request: Request) -> Any: ...

    def outcomes(self, request: Request, answer: Any) -> list[Outcome]: ...

    def plain_entries(self, records: Sequence[LeasedRecord]) -> list[Entry]:
        """One entry per record, no aggregation (to find a record the service refuses)."""
        ...

    def rebuild(self, entry: Entry, records: Sequence[LeasedRecord]) -> Entry:
        """``entry`` made again from ``records`` (its records, with their payloads, less
        any the spool no longer holds), as ``pack`` made it: its data was taken into
        the body of a request the service refused as invalid, and a part of that
        request is sent again."""
        ...

    def snapshot(self) -> SinkFields: ...

    def ready(self) -> SinkError | None:
        """What keeps the sink from sending at all (no credentials, or their provider
        refuses), or None: asked in the forwarder's thread before it leases anything."""
        ...

    def close(self) -> None: ...


class Uploader(Protocol):
    """The role every sink's uploader plays for the agent: one thread that leases its
    queue from the spool, sends it, and settles what the service confirmed. The
    forwarder (record sinks: Kinesis, Firehose) and the Kinesis Video sink play it."""

    #: The spool failed as corrupt under this uploader: the agent restarts to check it.
    spool_corrupt: bool

    def start(self) -> None: ...

    def join(self, timeout: float) -> None:
        """Wait for the thread to end after the stop event was set."""
        ...

    @property
    def running(self) -> bool: ...

    @property
    def healthy(self) -> bool:
        """Every thread of the uploader is alive (the watchdog asks)."""
        ...

    def snapshot(self) -> UploaderSnapshot: ...


class RequestPacker:
    """Fills one request within count and byte limits, keeping per-key order if asked."""

    def __init__(self, max_entries: int, max_bytes: int, *, ordered: bool) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ordered = ordered
        self.entries: list[Entry] = []
        self.open_entries = 0  # entries still being filled (aggregates)
        self.size = 0
        #: Ordered mode: keys that may not go into this request any more.
        self.blocked_keys: set[str] = set()

    @property
    def full(self) -> bool:
        return len(self.entries) + self.open_entries >= self.max_entries

    def has_room(self, size: int) -> bool:
        """Room for one more entry of ``size`` bytes. An empty request has room for any
        one entry: a record larger than ``max_bytes`` goes in a request of its own."""
        if self.full:
            return False
        return self.size + size <= self.max_bytes or not (self.entries or self.open_entries)

    def blocked(self, key: str) -> bool:
        return key in self.blocked_keys

    def block(self, key: str) -> None:
        """Ordered mode: take no more records of this key in this request."""
        if self.ordered:
            self.blocked_keys.add(key)

    def add(self, entry: Entry, *, reserved: int = 0) -> None:
        """Close an entry; ``reserved`` is what was already counted while it was filled."""
        self.entries.append(entry)
        self.size += entry.size - reserved
        if self.ordered:
            self.blocked_keys.update(record.partition_key for record in entry.records)

    def request(self) -> Request | None:
        return Request(self.entries) if self.entries else None


def send(sink: Sink, request: Request) -> list[Outcome]:
    """Transmit a request and read its outcomes, in the calling thread."""
    return sink.outcomes(request, sink.transmit(request))


def rebuilt(
    sink: Sink,
    entries: Sequence[Entry],
    restore: Callable[[list[LeasedRecord]], list[LeasedRecord]],
) -> list[Entry]:
    """Entries of a refused request, ready to be sent again: one whose data went into
    the request's body is made again from its records, with their payloads ``restore``d
    (read back from the spool; one eviction took leaves, and so does an entry left
    empty)."""
    made: list[Entry] = []
    for entry in entries:
        if not entry.taken:
            made.append(entry)
            continue
        records = restore(entry.records)
        if records:
            made.append(sink.rebuild(entry, records))
    return made
