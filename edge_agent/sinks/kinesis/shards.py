"""Which shard a record lands on: the stream's hash-key ranges from ListShards.

Kinesis hashes a record's partition key with MD5 and reads the digest as a 128-bit
unsigned integer (or takes the ExplicitHashKey as given); the open shard whose
HashKeyRange contains it receives the record. Knowing this lets the sink keep per-shard
rate budgets and aggregate only records bound for the same shard. Closed shards (after
a split or merge: their SequenceNumberRange has an end) take no new records.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def hash_key_of(partition_key: str) -> int:
    """The 128-bit hash key Kinesis derives from a partition key."""
    return int.from_bytes(hashlib.md5(partition_key.encode("utf-8")).digest(), "big")


@dataclass(frozen=True)
class Shard:
    shard_id: str
    starting_hash_key: int
    ending_hash_key: int


class ShardMap:
    """Open shards of one stream, searchable by hash key."""

    def __init__(self, shards: Iterable[Shard]) -> None:
        self.shards = sorted(shards, key=lambda shard: shard.starting_hash_key)
        if not self.shards:
            raise ValueError("a stream has at least one open shard")
        self._starts = [shard.starting_hash_key for shard in self.shards]
        self.shard_ids = frozenset(shard.shard_id for shard in self.shards)

    @classmethod
    def from_list_shards(cls, shards: Iterable[Mapping[str, Any]]) -> ShardMap:
        """From the ``Shards`` of ListShards responses (all pages); closed shards skipped."""
        return cls(
            Shard(
                shard["ShardId"],
                int(shard["HashKeyRange"]["StartingHashKey"]),
                int(shard["HashKeyRange"]["EndingHashKey"]),
            )
            for shard in shards
            if "EndingSequenceNumber" not in shard.get("SequenceNumberRange", {})
        )

    def shard_for(self, partition_key: str, explicit_hash_key: str | None = None) -> str:
        key = (
            int(explicit_hash_key) if explicit_hash_key is not None else hash_key_of(partition_key)
        )
        index = bisect.bisect_right(self._starts, key) - 1
        shard = self.shards[max(index, 0)]
        if not shard.starting_hash_key <= key <= shard.ending_hash_key:
            raise LookupError(f"hash key {key} is in no open shard (stale map?)")
        return shard.shard_id
