"""The HTTP endpoint Prometheus scrapes: prometheus-client's WSGI server on a daemon
thread of its own, answering from a registry of the agent's own (never the library's
global one, which other code in the process could fill).

Besides the agent's collector the registry holds prometheus-client's process collector
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``, open file
descriptors): a few reads of /proc per scrape, and the numbers one wants next to the
agent's on a small device. The server answers each scrape on a thread of its own and
chooses the format from the request's Accept header (OpenMetrics when asked, else the
Prometheus text format); any path serves the metrics.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.registry import Collector

from edge_agent.config.metrics import Listen
from edge_agent.errors import MetricsUnavailable

log = logging.getLogger(__name__)

#: How long stopping waits for the server's thread (it notices the stop within 0.5 s).
STOP_TIMEOUT_S = 2.0


class MetricsEndpoint:
    """Serves ``collector`` on ``listen`` from construction until :meth:`stop`."""

    def __init__(self, listen: Listen, collector: Collector) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        try:
            self._server, self._thread = start_http_server(
                listen.port, listen.host, registry=self.registry
            )
        except OSError as err:  # in use, not this host's address, a name that does not resolve
            reason = err.strerror or str(err)
            raise MetricsUnavailable(f"cannot listen on {listen}: {reason}") from err
        self._thread.name = "metrics"
        #: The address bound (the port, if 0 was asked for).
        self.port = int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop answering and close the listening socket; a scrape being answered ends
        with the process (its thread is a daemon)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(STOP_TIMEOUT_S)
