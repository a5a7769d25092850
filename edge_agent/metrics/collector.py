"""The agent's metrics, made at scrape time from what status already reports.

Nothing here counts anything: every value is read, at the moment Prometheus asks, from
the runtime status the agent builds for its status file (``Agent.status_snapshot``) and
from the spool's own counters (its ``queues`` table). So the endpoint and
``edge-agent status`` can never disagree, nothing is counted twice, and the agent does
no work for metrics between scrapes.

Most metrics are declared in catalog.py and read here the same way; the few that are
derived (states, flags, info, ages) are made below. Counters of the agent's parts start
at 0 with each start of the agent; the queues' counters live in the spool and go on
across restarts. A value the status does not have (a link not tried yet, a cap that is
off) is left out, not 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edge_agent.metrics.catalog import CAMERAS, MQTT, QUEUES, SINKS, STORAGE, Spec
from edge_agent.runtime_status import RuntimeStatus, SinkSnapshot
from edge_agent.spool.stats import SpoolStats

log = logging.getLogger(__name__)

Part = Mapping[str, object]


def _value(part: Part, keys: tuple[str, ...]) -> float | None:
    """The first of ``keys`` the part has, as a number (True is 1); None if absent."""
    for key in keys:
        value: object = part
        for step in key.split("."):
            value = value.get(step) if isinstance(value, Mapping) else None
        if isinstance(value, bool | int | float):
            return float(value)
    return None


def _family(spec: Spec, labels: list[str]) -> CounterMetricFamily | GaugeMetricFamily:
    if spec.name.endswith("_total"):
        return CounterMetricFamily(spec.name, spec.doc, labels=labels, unit=spec.unit)
    return GaugeMetricFamily(spec.name, spec.doc, labels=labels, unit=spec.unit)


def _unlabelled(specs: Iterable[Spec], part: Part) -> Iterator[Metric]:
    for spec in specs:
        value = _value(part, spec.keys)
        if value is not None:
            family = _family(spec, [])
            family.add_metric([], value)
            yield family


def _labelled(specs: Iterable[Spec], label: str, parts: Mapping[str, Part]) -> Iterator[Metric]:
    """One family per spec, a sample per part that has the value; empty ones left out."""
    for spec in specs:
        family = _family(spec, [label])
        for name, part in parts.items():
            value = _value(part, spec.keys)
            if value is not None:
                family.add_metric([name], value)
        if family.samples:
            yield family


def _states(name: str, doc: str, label: str, parts: Mapping[str, Part]) -> Iterator[Metric]:
    """``name{label, state}`` = 1 for each part's state now: the status words
    ("sending", "backing off", ...), which are free text, so no fixed state set."""
    family = GaugeMetricFamily(name, doc, labels=[label, "state"])
    for part_name, part in parts.items():
        family.add_metric([part_name, str(part.get("state", ""))], 1.0)
    if family.samples:
        yield family


def _flag(name: str, doc: str, on: bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=1.0 if on else 0.0)


def agent_metrics(status: RuntimeStatus) -> Iterator[Metric]:
    yield InfoMetricFamily(
        "edge_agent_build", "The agent's version.", value={"version": status["version"]}
    )
    yield GaugeMetricFamily(
        "edge_agent_start_time_seconds",
        "When the agent started (Unix time).",
        value=status["started_at"],
        unit="seconds",
    )
    max_rate = status["uplink"]["max_rate"]
    if max_rate is not None:
        yield GaugeMetricFamily(
            "edge_agent_uplink_max_bytes_per_second",
            "The device's upload budget (absent: unlimited).",
            value=max_rate,
        )


def mqtt_metrics(status: RuntimeStatus) -> Iterator[Metric]:
    source = status["sources"].get("mqtt")
    if source is None:
        return
    yield _flag(
        "edge_agent_mqtt_connected",
        "1 while the agent is connected to the broker.",
        source["state"] == "connected",
    )
    yield from _unlabelled(MQTT, source)


def queue_metrics(stats: SpoolStats, now: float) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "edge_agent_spool_file_bytes",
        "Size of the spool file and its write-ahead log.",
        value=stats.file_bytes,
        unit="bytes",
    )
    queues: dict[str, Part] = {queue["name"]: queue for queue in stats.queues}
    yield from _labelled(QUEUES, "queue", queues)
    age = GaugeMetricFamily(
        "edge_agent_queue_oldest_record_age_seconds",
        "Age of the oldest record waiting (from its capture time; 0: none waits).",
        labels=["queue"],
        unit="seconds",
    )
    for queue in stats.queues:
        oldest = queue["oldest_captured_at_ms"]
        age.add_metric([queue["name"]], 0.0 if oldest is None else max(0.0, now - oldest / 1000))
    if age.samples:
        yield age


def storage_metrics(status: RuntimeStatus) -> Iterator[Metric]:
    storage = status.get("storage")
    if storage is None:
        return
    yield _flag(
        "edge_agent_spool_intake_paused",
        "1 while intake waits for room on the spool's filesystem.",
        storage["intake_paused"] is not None,
    )
    yield _flag(
        "edge_agent_spool_file_lost",
        "1 while the spool file on disk is not the open one and could not be rebuilt.",
        storage["file_lost"] is not None,
    )
    yield from _unlabelled(STORAGE, storage)


def sink_metrics(sinks: Mapping[str, SinkSnapshot]) -> Iterator[Metric]:
    yield from _states(
        "edge_agent_sink_state", "1 for the state the sink is in now.", "sink", sinks
    )
    info = InfoMetricFamily("edge_agent_sink", "What a sink sends to.", labels=["sink"])
    for name, sink in sinks.items():
        part: Part = sink
        if "type" in part:  # not a sink that could not start
            info.add_metric([name], {"type": str(part["type"]), "target": str(part["target"])})
    if info.samples:
        yield info
    yield from _labelled(SINKS, "sink", sinks)
    throttles = CounterMetricFamily(
        "edge_agent_sink_shard_throttles_total",
        "Entries a Kinesis shard refused as over its limit (only shards refused so far).",
        labels=["sink", "shard"],
    )
    for name, sink in sinks.items():
        shards = sink.get("shards")
        for shard, entry in (shards if isinstance(shards, Mapping) else {}).items():
            if "throttled" in entry:
                throttles.add_metric([name, shard], entry["throttled"])
    if throttles.samples:
        yield throttles


def camera_metrics(status: RuntimeStatus) -> Iterator[Metric]:
    cameras = status["cameras"]
    yield from _states(
        "edge_agent_camera_state", "1 for the state the camera is in now.", "camera", cameras
    )
    yield from _labelled(CAMERAS, "camera", cameras)


class AgentCollector(Collector):
    """The agent's metric families, built when the registry is collected (a scrape).

    ``status``: the running agent's status now; ``spool``: the spool's counters, or
    None when they cannot be read (the queue metrics are then left out)."""

    def __init__(
        self,
        status: Callable[[], RuntimeStatus],
        spool: Callable[[], SpoolStats | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._status = status
        self._spool = spool
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        try:
            status = self._status()
            stats = self._spool()
            families = [
                *agent_metrics(status),
                *mqtt_metrics(status),
                *(queue_metrics(stats, self._clock()) if stats is not None else ()),
                *storage_metrics(status),
                *sink_metrics(status["sinks"]),
                *camera_metrics(status),
            ]
        except Exception:  # the scrape fails (HTTP 500), with the reason in the log
            log.exception("metrics: collecting failed")
            raise
        return families
