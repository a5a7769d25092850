"""The KVS sink's HTTP connections (GetDataEndpoint, PutMedia): http.client, TLS with
the system's certificate authorities for https URLs."""

from __future__ import annotations

import http.client
import ssl
from urllib.parse import urlsplit


def open_connection(url: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to the host and port of ``url`` (http or https; the scheme's port
    if it names none). It connects with its first request; network failures are
    ``OSError`` (``ssl.SSLError`` included)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    if parts.scheme == "https":
        return http.client.HTTPSConnection(
            parts.hostname, parts.port or 443, timeout=timeout, context=ssl.create_default_context()
        )
    return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
