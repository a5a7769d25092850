"""Building a forwarder for each configured sink that sends somewhere."""

from __future__ import annotations

import threading

from edge_agent.config.loading import SinkConfig
from edge_agent.delivery.budget import Budget, SinkBudget
from edge_agent.delivery.forwarder import Forwarder
from edge_agent.sinks.base import Sink
from edge_agent.sinks.kvs.uploader import KvsUploader
from edge_agent.spool.store import Spool

#: Kinds of sink that forward (a "hold" sink only keeps records in the spool).
FORWARDING_TYPES = ("kinesis", "firehose", "kvs")
#: Requests a forwarder keeps on the wire at once.
REQUESTS_IN_FLIGHT = 2
AGGREGATING_REQUESTS_IN_FLIGHT = 1
#: User records a forwarder may hold leased when it aggregates many into one request.
AGGREGATING_WINDOW_RECORDS = 100_000
#: Beyond one request's bytes, what an aggregating window holds (aggregation framing
#: and records paced back for the next request).
AGGREGATING_WINDOW_EXTRA_BYTES = 1024 * 1024


def make_sink(config: SinkConfig, governor: Budget, stop: threading.Event) -> Sink:
    if config.type == "kinesis":
        from edge_agent.sinks.kinesis.sink import KinesisSink

        return KinesisSink(config, governor, stop)
    if config.type == "firehose":
        from edge_agent.sinks.firehose.sink import FirehoseSink

        return FirehoseSink(config, governor, stop)
    raise ValueError(f"sink type {config.type!r} does not forward")


def make_uploader(
    config: SinkConfig, spool: Spool, governor: SinkBudget, stop: threading.Event
) -> Forwarder | KvsUploader:
    """What sends a sink's queue: a Kinesis Video uploader for video, else a forwarder."""
    if config.type == "kvs":  # video: fragments over one streaming connection
        return KvsUploader(config, spool, governor, stop)
    return make_forwarder(config, spool, governor, stop)


def make_forwarder(
    config: SinkConfig, spool: Spool, governor: Budget, stop: threading.Event
) -> Forwarder:
    """A forwarder whose window holds what is in flight plus one request being packed.

    Plain requests (500 small records) cost the service far more time than the agent:
    two in flight keep it busy. An aggregating sink's requests carry about 25,000 user
    records and 5 MiB each, and packing them is the agent's own work: one in flight
    while the next is packed, and the window holds a request's bytes and a little more,
    twice."""
    delivery = config.delivery
    assert delivery is not None
    aggregating = config.kinesis is not None and config.kinesis.aggregate
    if aggregating:
        in_flight = AGGREGATING_REQUESTS_IN_FLIGHT
        window_records = AGGREGATING_WINDOW_RECORDS
        window_bytes = (in_flight + 1) * (
            delivery.max_request_bytes + AGGREGATING_WINDOW_EXTRA_BYTES
        )
    else:
        in_flight = REQUESTS_IN_FLIGHT
        window_records = (in_flight + 1) * delivery.max_request_records
        window_bytes = (in_flight + 1) * delivery.max_request_bytes
    return Forwarder(
        make_sink(config, governor, stop),
        spool,
        delivery,
        stop,
        window_records=window_records,
        window_bytes=window_bytes,
        requests_in_flight=in_flight,
    )
