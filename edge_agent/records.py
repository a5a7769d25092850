"""The types every layer shares: what a source hands the spool, what an uploader leases."""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeAlias

#: What a queue at its byte cap does with new records: evict its oldest, or refuse.
Overflow = Literal["drop_oldest", "reject_new"]


class PayloadPieces:
    """A payload given as the pieces it is made of, in order, never joined: a video
    fragment's Cluster is its headers and its frames' own bytes. The spool writes a
    large one into its row a piece at a time, so the fragment is not held twice (as
    frames and as one joined copy) while it is stored; ``len`` is its size in bytes."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: Sequence[bytes]) -> None:
        self.parts = tuple(parts)
        self.size = sum(map(len, self.parts))

    def __len__(self) -> int:
        return self.size

    def joined(self) -> bytes:
        return b"".join(self.parts)


#: What a record carries: its bytes, or (a video fragment) the pieces they are made of.
Payload: TypeAlias = bytes | PayloadPieces


def payload_bytes(payload: Payload) -> bytes:
    """The payload as one bytes object (pieces joined: for a small one, or a rare path)."""
    return payload if isinstance(payload, bytes) else payload.joined()


class Record(NamedTuple):
    """One unit of data bound for one sink (queue).

    ``meta`` is a short JSON text with source details (the MQTT topic, QoS, redelivery
    flag); it is kept with the record and shown in exports, never sent. A NamedTuple, not
    a frozen dataclass: intake builds one per message, and a frozen dataclass's __init__
    costs several times more.
    """

    queue: str
    partition_key: str
    captured_at_ms: int
    payload: Payload
    meta: str | None = None
    redelivered: bool = False


class LeasedRecord(NamedTuple):
    """A record handed to an uploader; it stays in the spool until acked or dead-lettered.

    A NamedTuple for the same reason as ``Record``: an uploader leases tens of thousands a
    second, and a frozen dataclass's __init__ was a tenth of the forwarder's CPU.
    """

    id: int
    queue: str
    partition_key: str
    captured_at_ms: int
    payload: bytes
    attempts: int
    meta: str | None = None

    @property
    def size(self) -> int:
        return len(self.payload)

    def on_the_wire(self) -> LeasedRecord:
        """The record as an uploader keeps it once sent, until it settles: without its
        payload. Settling reads only the id and queue, and a record sent again is read
        from the spool again (a fragment's megabyte is not held while it waits for its
        acknowledgement)."""
        return self._replace(payload=b"")


#: Fields of a LeasedRecord by position, for the hot loops (map(RECORD_ID, records) is
#: several times cheaper than a comprehension over ``record.id``).
RECORD_ID = operator.itemgetter(0)
RECORD_QUEUE = operator.itemgetter(1)
RECORD_CAPTURED_AT = operator.itemgetter(3)
RECORD_PAYLOAD = operator.itemgetter(4)
#: A row (or zipped columns) in LeasedRecord's field order as a LeasedRecord, without a
#: Python call per record (``LeasedRecord._make`` is one).
as_leased_record = functools.partial(tuple.__new__, LeasedRecord)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What became of a batch handed to ``Spool.append``."""

    stored: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    evicted: int = 0
