"""Assembly: the agent's parts built from its configuration.

The spool with each queue's caps, and one uploader per sink that sends somewhere: a
forwarder around the sink's request builder (Kinesis, Firehose), or the Kinesis Video
sink's own uploader. The sinks are imported when one is built, so commands that only
read the spool (``edge-agent spool``) load no AWS SDK. A new destination is its folder
under ``sinks/`` (its options declared in ``options.py``, registered in
``config.sinks.SINK_KINDS``) and one branch in ``make_sink`` (or in ``make_uploader``
for a sink that is its own uploader, as the Kinesis Video sink is).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from edge_agent.config.loading import Config
from edge_agent.config.sinks import SINK_KINDS, SinkConfig
from edge_agent.delivery.budget import Budget, SinkBudget
from edge_agent.spool.caps import QueuePolicy
from edge_agent.spool.store import Spool

if TYPE_CHECKING:
    from edge_agent.delivery.forwarder import Forwarder
    from edge_agent.sinks.base import Sink, Uploader

#: Kinds of sink that send (a "hold" sink only keeps records in the spool).
FORWARDING_TYPES = tuple(name for name, kind in SINK_KINDS.items() if kind.sends)
#: Requests a forwarder keeps on the wire at once.
REQUESTS_IN_FLIGHT = 2
AGGREGATING_REQUESTS_IN_FLIGHT = 1
#: User records a forwarder may hold leased when it aggregates many into one request.
AGGREGATING_WINDOW_RECORDS = 100_000
#: Beyond one request's bytes, what an aggregating window holds (aggregation framing
#: and records paced back for the next request), as a fraction of the request.
AGGREGATING_WINDOW_EXTRA = 0.125


def queue_policies(config: Config) -> dict[str, QueuePolicy]:
    """Each sink's queue caps, from its section; each analytics query's raw rows, its
    ``max_bytes`` (the oldest evicted first, counted)."""
    policies = {
        name: QueuePolicy(
            max_bytes=sink.max_bytes,
            max_age_s=sink.max_age,
            overflow=sink.overflow,
            max_record_bytes=sink.max_record_bytes,
        )
        for name, sink in config.sinks.items()
    }
    for query in config.analytics.values():  # a shared queue: the largest cap, or none
        shared = policies.get(query.queue)
        cap = query.max_bytes
        if shared is not None:
            cap = None if cap is None or shared.max_bytes is None else max(cap, shared.max_bytes)
        policies[query.queue] = QueuePolicy(max_bytes=cap, overflow="drop_oldest")
    return policies


def open_spool(config: Config) -> Spool:
    """The spool for writing, with the configured durability and caps."""
    spool = config.spool
    return Spool.open(
        spool.path,
        durability=spool.durability,
        policies=queue_policies(config),
        max_bytes=spool.max_bytes,
        max_age_s=spool.max_age,
        integrity_check=spool.integrity_check,
        reserve=spool.reserve,
    )


def make_uploader(
    config: SinkConfig,
    spool: Spool,
    budget: SinkBudget,
    stop: threading.Event,
    *,
    device: str = "",
) -> Uploader:
    """What sends a sink's queue: the Kinesis Video uploader for video, else a forwarder."""
    if config.type == "kvs":  # video: fragments over one streaming connection
        from edge_agent.sinks.kvs.uploader import KvsUploader

        return KvsUploader(config, spool, budget, stop)
    return make_forwarder(config, spool, budget, stop, device=device)


def make_sink(
    config: SinkConfig, budget: Budget, stop: threading.Event, *, device: str = ""
) -> Sink:
    """The request builder of a record sink (``device``: what an S3 key may name)."""
    if config.type == "kinesis":
        from edge_agent.sinks.kinesis.sink import KinesisSink

        return KinesisSink(config, budget, stop)
    if config.type == "firehose":
        from edge_agent.sinks.firehose.sink import FirehoseSink

        return FirehoseSink(config, budget, stop)
    if config.type == "s3":
        from edge_agent.sinks.s3.sink import S3Sink

        return S3Sink(config, budget, stop, device=device)
    raise ValueError(f"sink type {config.type!r} does not forward")


def make_forwarder(
    config: SinkConfig,
    spool: Spool,
    budget: Budget,
    stop: threading.Event,
    *,
    device: str = "",
) -> Forwarder:
    """A forwarder whose window holds what is in flight plus one request being packed.

    Plain requests (500 small records) cost the service far more time than the agent:
    two in flight keep it busy. An aggregating sink's requests carry about 5,000 user
    records (1 MiB) each, and packing them is the agent's own work: one in flight
    while the next is packed, and the window holds a request's bytes and an eighth
    more, twice."""
    from edge_agent.delivery.forwarder import Forwarder

    delivery = config.delivery
    assert delivery is not None
    aggregating = config.kinesis is not None and config.kinesis.aggregate
    if aggregating:
        in_flight = AGGREGATING_REQUESTS_IN_FLIGHT
        window_records = AGGREGATING_WINDOW_RECORDS
        window_bytes = int(
            (in_flight + 1) * delivery.max_request_bytes * (1 + AGGREGATING_WINDOW_EXTRA)
        )
    else:
        in_flight = REQUESTS_IN_FLIGHT
        # An object store's request is one object: hold no more than one per request.
        per_request = 1 if config.type == "s3" else delivery.max_request_records
        window_records = (in_flight + 1) * per_request
        window_bytes = (in_flight + 1) * delivery.max_request_bytes
    return Forwarder(
        make_sink(config, budget, stop, device=device),
        spool,
        delivery,
        stop,
        window_records=window_records,
        window_bytes=window_bytes,
        requests_in_flight=in_flight,
    )
