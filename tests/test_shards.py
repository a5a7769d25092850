"""The shard map predicts the shard Kinesis (kinesalite) puts each record on."""

from __future__ import annotations

import random
import uuid
from typing import Any

from edge_agent.sinks.kinesis.shards import ShardMap, hash_key_of
from tests.kinesis_streams import make_stream
from tests.support import Kinesalite, wait_until


def shard_map(client: Any, name: str) -> ShardMap:
    return ShardMap.from_list_shards(client.list_shards(StreamName=name)["Shards"])


def test_predicted_shard_matches_the_service(kinesalite: Kinesalite) -> None:
    client = kinesalite.client()
    name = make_stream(client, 5)
    shards = shard_map(client, name)
    chance = random.Random(7)
    keys = [uuid.uuid4().hex for _ in range(300)]
    hash_keys = [str(chance.randrange(2**128)) if i < 50 else None for i in range(300)]
    entries: list[dict[str, Any]] = []
    for key, hash_key in zip(keys, hash_keys, strict=True):
        entry: dict[str, Any] = {"Data": b"x", "PartitionKey": key}
        if hash_key is not None:
            entry["ExplicitHashKey"] = hash_key
        entries.append(entry)
    response = client.put_records(StreamName=name, Records=entries)
    assert response["FailedRecordCount"] == 0
    for key, hash_key, result in zip(keys, hash_keys, response["Records"], strict=True):
        assert shards.shard_for(key, hash_key) == result["ShardId"]


def test_closed_shards_are_left_out_after_a_split(kinesalite: Kinesalite) -> None:
    client = kinesalite.client()
    name = make_stream(client, 1)
    (parent,) = shard_map(client, name).shards
    middle = (parent.starting_hash_key + parent.ending_hash_key) // 2
    client.split_shard(
        StreamName=name, ShardToSplit=parent.shard_id, NewStartingHashKey=str(middle)
    )
    wait_until(lambda: len(shard_map(client, name).shards) == 2, 10, 0.05, "the split")
    shards = shard_map(client, name)
    assert parent.shard_id not in {shard.shard_id for shard in shards.shards}
    response = client.put_records(
        StreamName=name, Records=[{"Data": b"x", "PartitionKey": str(i)} for i in range(50)]
    )
    for i, result in enumerate(response["Records"]):
        assert shards.shard_for(str(i)) == result["ShardId"]


def test_hash_key_is_md5_as_128_bit_integer() -> None:
    # md5("") = d41d8cd98f00b204e9800998ecf8427e
    assert hash_key_of("") == 0xD41D8CD98F00B204E9800998ECF8427E
