"""The Prometheus endpoint (``[metrics] listen``): docs/METRICS.md lists what it serves.

``collector.py`` makes the metric families at scrape time from the agent's runtime
status and the spool's counters; ``endpoint.py`` serves them over HTTP. Both import
prometheus-client, so they are imported here only when an endpoint is asked for: an
agent without one does not load the library.

The spool's counters are read per scrape through a read-only connection of the
scrape's own (as ``edge-agent status`` reads them), not through the agent's spool
object: WAL readers do not wait for the writer, so a scrape never holds up intake and
intake never holds up a scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from edge_agent.config.metrics import MetricsConfig
from edge_agent.errors import MetricsUnavailable, SpoolError
from edge_agent.runtime_status import RuntimeStatus
from edge_agent.spool.stats import SpoolStats
from edge_agent.spool.store import Spool

log = logging.getLogger(__name__)


class Endpoint(Protocol):
    """A running endpoint (endpoint.MetricsEndpoint), as the agent holds it."""

    def stop(self) -> None: ...


class SpoolCounters:
    """Reads the spool's counters for one scrape; a spool that cannot be read leaves the
    queue metrics out (logged once until it can be read again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._failing = False

    def __call__(self) -> SpoolStats | None:
        try:
            with Spool.open_read_only(self.path) as spool:
                stats = spool.stats(events=0)
        except SpoolError as err:
            if not self._failing:
                log.warning("metrics: cannot read the spool's counters: %s", err)
            self._failing = True
            return None
        self._failing = False
        return stats


def start_metrics(
    config: MetricsConfig, status: Callable[[], RuntimeStatus], spool_path: Path
) -> Endpoint | None:
    """Start serving the agent's metrics if ``config`` asks for it. An address that
    cannot be bound is logged and the agent goes on without metrics (None)."""
    if config.listen is None:
        return None
    from edge_agent.metrics.collector import AgentCollector
    from edge_agent.metrics.endpoint import MetricsEndpoint

    try:
        endpoint = MetricsEndpoint(config.listen, AgentCollector(status, SpoolCounters(spool_path)))
    except MetricsUnavailable as err:
        log.error("metrics: %s; running without the metrics endpoint", err)
        return None
    log.info("metrics: serving http://%s/metrics", config.listen)
    return endpoint
