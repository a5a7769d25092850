"""The types every layer shares: what a source hands the spool, what a sender leases."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


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
    payload: bytes
    meta: str | None = None
    redelivered: bool = False


@dataclass(frozen=True, slots=True)
class LeasedRecord:
    """A record handed to a sender; it stays in the spool until acked or dead-lettered."""

    id: int
    queue: str
    partition_key: str
    captured_at_ms: int
    payload: bytes
    attempts: int
    meta: str | None = None
    size: int = field(init=False)  # len(payload), read often on the hot path

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", len(self.payload))


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What became of a batch handed to ``Spool.append``."""

    stored: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    evicted: int = 0
