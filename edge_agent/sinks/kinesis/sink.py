"""The Kinesis Data Streams sink: PutRecords, per-shard pacing, KPL aggregation.

Per request: at most ``max_request_records`` entries and ``max_request_bytes``; each
entry (data plus partition key) at most ``max_record_bytes``; larger records are
rejected here, before the service sees them. Records are paced per shard (the shard map
comes from ListShards and is refreshed periodically and whenever the service puts a
record on a shard other than the predicted one, i.e. after resharding). With
``aggregate``, records bound for the same shard are packed into KPL aggregated records.

If ListShards is not allowed (a policy granting only kinesis:PutRecords), the sink
still works: it paces and aggregates per partition key instead of per shard, which is
always correct for aggregation and approximate for pacing.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent.config.sinks import SinkConfig
from edge_agent.delivery.budget import Budget
from edge_agent.errors import SinkError, SinkUnavailable
from edge_agent.records import LeasedRecord
from edge_agent.runtime_status import ShardSnapshot, SinkFields
from edge_agent.sinks import prebuilt_body
from edge_agent.sinks.aws import TimedClients, WireMeter
from edge_agent.sinks.base import Entry, Failed, Outcome, Packed, Request, RequestPacker, Sent
from edge_agent.sinks.kinesis.kpl import NO_ROOM, AggregateBuilder
from edge_agent.sinks.kinesis.pacing import PaceBudget, ShardPacer
from edge_agent.sinks.kinesis.shards import ShardMap
from edge_agent.sinks.prebuilt_body import PREBUILT_BODY, data_record, json_string, records_body

log = logging.getLogger(__name__)

THROTTLED = "ProvisionedThroughputExceededException"
MAX_PARTITION_KEY_CHARS = 256
#: Without a shard map pacers are per partition key; keep at most this many.
MAX_KEY_PACERS = 10_000
#: An aggregate that landed on another shard than predicted (after resharding).
WRONG_SHARD = "AggregateOnWrongShard"
#: Forget cached key -> shard lookups beyond this many keys.
MAX_CACHED_KEYS = 50_000


@dataclass
class _PackState:
    """One pack() call: the request being filled and the aggregates still open."""

    packer: RequestPacker
    packed: Packed
    open_aggregates: dict[str, _OpenAggregate] = field(default_factory=dict)
    held_shards: set[str] = field(default_factory=set)
    budgets: dict[str, PaceBudget] = field(default_factory=dict)

    def wait(self, seconds: float) -> None:
        current = self.packed.wait
        self.packed.wait = seconds if current is None else min(current, seconds)


@dataclass
class _OpenAggregate:
    builder: AggregateBuilder
    shard: str
    budget: PaceBudget
    room: float  # bytes the shard's pace still allows this aggregate to grow
    records: list[LeasedRecord] = field(default_factory=list)


class KinesisSink:
    kind = "kinesis"
    needs_meta = False

    def __init__(
        self,
        config: SinkConfig,
        budget: Budget,
        stop: threading.Event,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert config.kinesis is not None and config.delivery is not None
        assert config.aws is not None
        self.name = config.name
        self.options = options = config.kinesis
        self.delivery = config.delivery
        self.target = options.stream
        self.ordered = options.ordered
        self.aggregating = options.aggregate
        self.max_record_bytes = config.max_record_bytes
        self._clock = clock
        self.wire = WireMeter()
        self.clients = TimedClients(
            "kinesis",
            config.aws,
            budget,
            stop,
            self.wire,
            name=config.name,
            prepare=lambda client: prebuilt_body.install(client, "PutRecords"),
        )
        # Partition keys as JSON, for the request bodies (the transmit pool's own).
        self._key_json: dict[str, bytes] = {}
        self._map: ShardMap | None = None
        self._map_checked_at = -1e18
        self._map_stale = True
        self._shard_of_key: dict[str, str] = {}
        self._pacers: dict[str, ShardPacer] = {}
        self.last_sequence: dict[str, str] = {}
        self.map_refreshes = 0
        self.wrong_shard = 0

    # ------------------------------------------------------------------ shard map

    def _refresh_map(self, now: float) -> None:
        self._map_checked_at = now
        self._map_stale = False
        try:
            shards: list[dict[str, Any]] = []
            response = self.clients.call("list_shards", {"StreamName": self.target})
            shards += response["Shards"]
            for _ in range(1000):  # bounded: 1000 pages of shards
                token = response.get("NextToken")
                if not token:
                    break
                response = self.clients.call("list_shards", {"NextToken": token})
                shards += response["Shards"]
            shard_map = ShardMap.from_list_shards(shards)
        except Exception as err:  # the map is an optimisation: keep going without it
            log.warning(
                "sink %s: cannot list the shards of %s (%s: %s); pacing and aggregating "
                "per partition key instead",
                self.name,
                self.target,
                type(err).__name__,
                err,
            )
            return
        if self._map is None or [s.shard_id for s in self._map.shards] != [
            s.shard_id for s in shard_map.shards
        ]:
            log.info(
                "sink %s: stream %s has %d open shards",
                self.name,
                self.target,
                len(shard_map.shards),
            )
        self._map = shard_map
        self.map_refreshes += 1
        self._shard_of_key.clear()
        open_ids = {shard.shard_id for shard in shard_map.shards}
        self._pacers = {sid: pacer for sid, pacer in self._pacers.items() if sid in open_ids}

    def _shard_of(self, key: str) -> str:
        shard = self._shard_of_key.get(key)
        if shard is None:
            if self._map is None:
                shard = "key:" + key
            else:
                try:
                    shard = self._map.shard_for(key, self.options.explicit_hash_key)
                except LookupError:
                    self._map_stale = True
                    shard = "key:" + key
            if len(self._shard_of_key) >= MAX_CACHED_KEYS:
                self._shard_of_key.clear()
            self._shard_of_key[key] = shard
        return shard

    def _pacer(self, shard: str) -> ShardPacer:
        pacer = self._pacers.get(shard)
        if pacer is None:
            if len(self._pacers) >= MAX_KEY_PACERS:  # per-key pacers without a shard map
                self._pacers = {k: p for k, p in self._pacers.items() if not k.startswith("key:")}
            pacer = self._pacers[shard] = ShardPacer(
                self.options.shard_records_per_second,
                self.options.shard_bytes_per_second,
                self._clock,
            )
        return pacer

    # ------------------------------------------------------------------ packing

    def pack(self, candidates: Sequence[LeasedRecord], now: float) -> Packed:
        if self._map_stale or now - self._map_checked_at >= self.options.shard_refresh:
            self._refresh_map(now)
        for pacer in self._pacers.values():
            pacer.recover()
        packer = RequestPacker(
            self.clients.timeout.max_entries(self.delivery.max_request_records),
            self.delivery.max_request_bytes,
            ordered=self.ordered,
        )
        packed = Packed(None)
        state = _PackState(packer, packed)
        hash_key = self.options.explicit_hash_key
        aggregate = self.options.aggregate
        # What each shard could take in this request, so that a shard short of tokens
        # waits for enough of them rather than for half its burst (aggregates: unknown
        # until packed, so half the burst).
        demand = None if aggregate else self._demand(candidates)
        blocked = packer.blocked_keys
        shard_of_key = self._shard_of_key
        held_shards, budgets = state.held_shards, state.budgets
        open_aggregates = state.open_aggregates
        max_record_bytes = self.max_record_bytes
        aggregate_max_bytes = self.options.aggregate_max_bytes if aggregate else -1
        for record in candidates:
            key = record.partition_key
            if key in blocked:
                continue
            key_bytes = len(key.encode())
            size = len(record.payload) + key_bytes
            if not 1 <= len(key) <= MAX_PARTITION_KEY_CHARS:
                packed.rejected.append(
                    (record, f"partition key has {len(key)} characters; Kinesis takes 1 to 256")
                )
                continue
            if size > max_record_bytes:
                packed.rejected.append(
                    (
                        record,
                        f"record is {size} bytes with its partition key; stream "
                        f"{self.target} accepts at most {self.max_record_bytes}",
                    )
                )
                continue
            shard = shard_of_key.get(key) or self._shard_of(key)
            if shard in held_shards:
                packer.block(key)
                continue
            budget = budgets.get(shard)
            tried = None
            if size <= aggregate_max_bytes and budget is not None:
                # The common case, inline: the record joins its shard's open aggregate.
                current = open_aggregates.get(shard)
                if current is not None:
                    room = min(current.room, packer.max_bytes - packer.size)
                    tried = current.builder.try_add(key, record.payload, hash_key, int(room))
                    if tried >= 0:
                        current.records.append(record)
                        current.room -= tried
                        packer.size += tried
                        continue
            if budget is None:
                pacer = self._pacer(shard)
                wanted = demand.get(shard, (1, size)) if demand is not None else (math.inf,) * 2
                if not pacer.ready(*wanted):
                    state.held_shards.add(shard)
                    state.wait(pacer.wait_until_ready(*wanted))
                    packer.block(key)
                    continue
                budget = budgets[shard] = PaceBudget(pacer)
            if size > aggregate_max_bytes:
                if shard in state.open_aggregates:
                    # close the shard's aggregate first: spool order within the request
                    self._close(state.open_aggregates.pop(shard), packer)
                    if packer.blocked(key):  # ordered: its earlier records are in there
                        continue
                if not packer.has_room(size) or not budget.allows(1, size):
                    self._hold_back(state, shard, budget.pacer, key, size)
                    if packer.full:
                        break
                    continue
                budget.use(1, size)
                packer.add(Entry([record], record.payload, key, hash_key, shard))
                continue
            self._aggregate(state, record, shard, budget, tried)
            if not state.open_aggregates and packer.full:
                break
            if (
                state.held_shards
                and self._map is not None
                and len(state.held_shards) >= len(self._map.shards)
            ):
                break  # every shard is full or paced: the rest waits for the next request
        for open_aggregate in state.open_aggregates.values():
            self._close(open_aggregate, packer)
        for budget in state.budgets.values():
            budget.commit()
        packed.request = packer.request()
        return packed

    def _demand(self, candidates: Sequence[LeasedRecord]) -> dict[str, tuple[int, int]]:
        """Per shard: records and bytes one request could carry (ordered: one per key)."""
        demand: dict[str, tuple[int, int]] = {}
        seen_keys: set[str] = set()
        for record in candidates:
            key = record.partition_key
            if self.ordered:
                if key in seen_keys:
                    continue
                seen_keys.add(key)
            shard = self._shard_of(key)
            count, size = demand.get(shard, (0, 0))
            demand[shard] = (count + 1, size + len(record.payload) + len(key))
        return demand

    @staticmethod
    def _hold_back(state: _PackState, shard: str, pacer: ShardPacer, key: str, size: int) -> None:
        """Nothing more for this shard in this request: taking a later record of it
        (tokens come back while packing) would let it overtake this one."""
        state.held_shards.add(shard)
        state.packer.block(key)
        if not state.packer.full and state.packer.has_room(size):  # held by the pace
            state.wait(pacer.wait_time(1, size))

    def _aggregate(
        self,
        state: _PackState,
        record: LeasedRecord,
        shard: str,
        budget: PaceBudget,
        tried: int | None,
    ) -> None:
        """A record that did not fit its shard's open aggregate (``tried``: what
        ``try_add`` answered), or whose shard has none: close the aggregate and start
        one, or hold the shard back. Pacing tokens are checked when an aggregate opens
        (its byte room) and taken when it closes."""
        packer, open_aggregates = state.packer, state.open_aggregates
        key = record.partition_key
        hash_key = self.options.explicit_hash_key
        current = open_aggregates.get(shard)
        if current is not None:
            assert tried is not None and tried < 0
            if tried == NO_ROOM:  # held by the pace or the request's size
                self._hold_back(state, shard, budget.pacer, key, len(record.payload))
                return
            del open_aggregates[shard]
            self._close(current, packer)
            if packer.blocked(key):  # ordered: this key already went in the closed entry
                return
        fresh = AggregateBuilder(self.options.aggregate_max_bytes)
        fresh.add(key, record.payload, hash_key)
        size = fresh.size
        if not packer.has_room(size) or not budget.allows(1, size):
            self._hold_back(state, shard, budget.pacer, key, size)
            return
        packer.size += size
        packer.open_entries += 1
        room = budget.bytes - size
        open_aggregates[shard] = _OpenAggregate(fresh, shard, budget, room, [record])

    def _close(self, open_aggregate: _OpenAggregate, packer: RequestPacker) -> None:
        built = open_aggregate.builder.build()
        packer.open_entries -= 1
        entry = Entry(
            open_aggregate.records,
            built.data,
            built.partition_key,
            built.explicit_hash_key,
            open_aggregate.shard,
        )
        open_aggregate.budget.use(1, entry.size)
        packer.add(entry, reserved=open_aggregate.builder.size)

    # ------------------------------------------------------------------ sending

    def plain_entries(self, records: Sequence[LeasedRecord]) -> list[Entry]:
        hash_key = self.options.explicit_hash_key
        return [
            Entry([r], r.payload, r.partition_key, hash_key, self._shard_of(r.partition_key))
            for r in records
        ]

    def rebuild(self, entry: Entry, records: Sequence[LeasedRecord]) -> Entry:
        if len(records) == 1:  # plain, as a one-record aggregate is (``build``)
            return self.plain_entries(records)[0]
        hash_key = self.options.explicit_hash_key
        builder = AggregateBuilder(sys.maxsize)  # they were in one aggregate: they fit
        for record in records:
            builder.add(record.partition_key, record.payload, hash_key)
        built = builder.build()
        return Entry(
            list(records), built.data, built.partition_key, built.explicit_hash_key, entry.shard_id
        )

    def transmit(self, request: Request) -> Any:
        body = records_body(
            {"StreamName": self.target},
            (self._record_json(entry) for entry in request.entries),
        )
        return self.clients.call(
            "put_records",
            {"StreamName": self.target, PREBUILT_BODY: body},
            items=sum(len(entry.records) for entry in request.entries),
        )

    def _record_json(self, entry: Entry) -> tuple[bytes, ...]:
        key = self._key_json.get(entry.partition_key)
        if key is None:
            if len(self._key_json) >= MAX_CACHED_KEYS:
                self._key_json.clear()
            key = self._key_json[entry.partition_key] = b',"PartitionKey":' + json_string(
                entry.partition_key
            )
        if entry.explicit_hash_key is None:
            return data_record(entry.take_data(), key)
        return data_record(
            entry.take_data(), key, b',"ExplicitHashKey":' + json_string(entry.explicit_hash_key)
        )

    def outcomes(self, request: Request, answer: Any) -> list[Outcome]:
        results = answer.get("Records")
        if not isinstance(results, list) or len(results) != len(request.entries):
            raise SinkUnavailable(
                "InvalidResponse", "PutRecords answered for a different number of records"
            )
        outcomes: list[Outcome] = []
        refreshed = False
        for entry, result in zip(request.entries, results, strict=True):
            sequence = result.get("SequenceNumber")
            if sequence is not None:
                shard = str(result.get("ShardId", ""))
                self.last_sequence[shard] = sequence
                predicted = entry.shard_id
                if (
                    predicted is not None
                    and shard != predicted
                    and not predicted.startswith("key:")
                    and len(entry.records) > 1
                ):
                    if not refreshed:  # resharded? one ListShards call tells
                        self._refresh_map(self._clock())
                        refreshed = True
                    if self._map is not None and predicted not in self._map.shard_ids:
                        # The predicted shard is closed: a consumer drops user records of
                        # an aggregate that sit on a shard their keys do not hash to.
                        # Send them again, re-packed with the new map.
                        self.wrong_shard += 1
                        outcomes.append(Failed(WRONG_SHARD, f"{predicted} is closed"))
                        continue
                outcomes.append(Sent(shard, sequence))
                continue
            code = str(result.get("ErrorCode", "Unknown"))
            if code == THROTTLED and entry.shard_id is not None:
                self._pacer(entry.shard_id).on_throttled()
            outcomes.append(Failed(code, str(result.get("ErrorMessage", ""))))
        return outcomes

    # ------------------------------------------------------------------ status

    def snapshot(self) -> SinkFields:
        # Called from another thread: iterate copies (dict.copy is atomic under the GIL).
        shards: dict[str, ShardSnapshot] = {}
        for shard, sequence in self.last_sequence.copy().items():
            shards.setdefault(shard, {})["last_sequence_number"] = sequence
        for shard, pacer in self._pacers.copy().items():
            if shard.startswith("key:"):
                continue
            if pacer.factor < 1.0 or pacer.throttled:
                entry = shards.setdefault(shard, {})
                entry["pace"] = round(pacer.factor, 2)
                entry["throttled"] = pacer.throttled
        return {
            "stream": self.target,
            "open_shards": len(self._map.shards) if self._map else None,
            "aggregate": self.options.aggregate,
            "ordered": self.ordered,
            "shards": shards,
            "aggregates_resent_after_resharding": self.wrong_shard,
            "wire_bytes": self.wire.bytes,
            "request_timeout": self.clients.timeout.snapshot(),
        }

    def ready(self) -> SinkError | None:
        return self.clients.ready()

    def close(self) -> None:
        self.clients.close()
