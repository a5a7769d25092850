"""The ``[metrics]`` section: where the Prometheus endpoint listens, if anywhere.

Off by default: an endpoint is a port open on the device, so it is asked for. The
address is checked here (a host and a port); whether it can be bound is only known when
the agent starts, and an address in use does not stop the agent (edge_agent/metrics).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from edge_agent.config.options import Kind, Table, off, option, read_section, section

#: The port of the examples: OpenTelemetry's Prometheus exporter's in the Prometheus
#: wiki's list of default ports, the nearest kind of exporter there is.
EXAMPLE_PORT = 9464
_ADDRESS = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d+)")


class Listen(NamedTuple):
    """A host (name or address; IPv6 without its brackets) and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _listen(raw: object) -> Listen:
    if not isinstance(raw, str):
        raise TypeError(f'expected "host:port", got {raw!r}')
    match = _ADDRESS.fullmatch(raw)
    if match is None:
        raise ValueError(f'expected "host:port" ("127.0.0.1:9464", "[::1]:9464"), got {raw!r}')
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"the port must be between 1 and 65535, got {port}")
    return Listen(match["ipv6"] or match["host"], port)


LISTEN: Kind[Listen] = Kind(
    "host:port", _listen, Listen("127.0.0.1", EXAMPLE_PORT), lambda value: f'"{value}"'
)


@section
class MetricsConfig:
    """The Prometheus endpoint: GET /metrics on this address answers with the running
    agent's metrics (docs/METRICS.md), in OpenMetrics when the scraper asks for it."""

    listen: Listen | None = option(
        kind=off(LISTEN),
        default=None,
        doc='Address of the endpoint, "host:port" ("127.0.0.1:9464"; "0.0.0.0:9464" for '
        'every interface). "off": no endpoint. An address that cannot be bound (in use) '
        "is logged and the agent runs without the endpoint. A change applies on reload.",
    )


def read_metrics(table: Table | None) -> MetricsConfig:
    if table is None:
        return MetricsConfig()
    metrics = read_section(MetricsConfig, table)
    table.finish()
    return metrics
