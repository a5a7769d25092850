"""Building a forwarder for each configured sink that sends somewhere."""

from __future__ import annotations

import threading

from edge_agent.config import SinkConfig
from edge_agent.forwarder import Forwarder
from edge_agent.governor import UploadGovernor
from edge_agent.sinks.base import Sink
from edge_agent.spool import Spool

#: Kinds of sink that forward (a "hold" sink only keeps records in the spool).
FORWARDING_TYPES = ("kinesis", "firehose")
#: User records a forwarder may hold leased when it aggregates many into one request.
AGGREGATING_WINDOW_RECORDS = 100_000
#: Beyond one request's bytes, what an aggregating window holds (aggregation framing
#: and records paced back for the next request).
AGGREGATING_WINDOW_EXTRA_BYTES = 1024 * 1024


def make_sink(config: SinkConfig, governor: UploadGovernor, stop: threading.Event) -> Sink:
    if config.type == "kinesis":
        from edge_agent.sinks.kinesis import KinesisSink

        return KinesisSink(config, governor, stop)
    if config.type == "firehose":
        from edge_agent.sinks.firehose import FirehoseSink

        return FirehoseSink(config, governor, stop)
    raise ValueError(f"sink type {config.type!r} does not forward")


def make_forwarder(
    config: SinkConfig, spool: Spool, governor: UploadGovernor, stop: threading.Event
) -> Forwarder:
    """A forwarder whose window holds two requests' worth of records (aggregating: one
    request's bytes and a little more, since a request may hold 25,000 small records)."""
    delivery = config.delivery
    assert delivery is not None
    aggregating = config.kinesis is not None and config.kinesis.aggregate
    return Forwarder(
        make_sink(config, governor, stop),
        spool,
        delivery,
        stop,
        window_records=(
            AGGREGATING_WINDOW_RECORDS if aggregating else 2 * delivery.max_request_records
        ),
        window_bytes=(
            delivery.max_request_bytes + AGGREGATING_WINDOW_EXTRA_BYTES
            if aggregating
            else 2 * delivery.max_request_bytes
        ),
    )
