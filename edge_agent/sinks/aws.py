"""boto3 clients for the sinks, and what their errors mean for the forwarder.

botocore does the signing, credentials (environment, profile, instance role, refresh
of temporary credentials) and the wire protocol. Its own retries are switched off
(``total_max_attempts = 1``): the forwarder retries with full jitter and shows every retry in
status, and retrying inside botocore would hide throttling from the per-shard pacing.

Every request passes the upload governor with its size on the wire (body, headers and
the signature's headers), through botocore's ``before-sign`` event: waiting for the
budget before signing keeps a long wait on a slow uplink from expiring the signature.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from edge_agent.config.loading import AwsEndpoint
from edge_agent.delivery.budget import Budget
from edge_agent.errors import RequestRejected, SinkError, SinkPaused, SinkUnavailable

log = logging.getLogger(__name__)

#: Error codes after which retrying soon cannot help: pause and probe slowly.
PAUSE_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "ResourceNotFoundException",
        "ResourceInUseException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "InvalidClientTokenId",
        "NotAuthorized",
        "InvalidKMSResourceException",
    }
)
#: KMS errors are "pause" errors, except this one.
KMS_THROTTLING = "KMSThrottlingException"
#: Authorization, X-Amz-Date and X-Amz-Security-Token (temporary credentials), added
#: when the request is signed, after it was metered.
SIGNATURE_HEADER_BYTES = 1200
#: The request itself is malformed: some record in it can never be accepted.
REJECT_CODES = frozenset({"InvalidArgumentException", "ValidationException"})


class WireMeter:
    """Bytes a sink's requests put on the wire (body, headers, request line)."""

    def __init__(self) -> None:
        self.bytes = 0


def wire_bytes(
    method: str, url: str, headers: Iterable[tuple[str, Any]], body: bytes | bytearray
) -> int:
    """What a request puts on the wire: request line, headers and body."""
    size = len(method) + len(url) + 12  # request line
    size += sum(len(name) + len(str(value)) + 4 for name, value in headers)
    return size + len(body)


def make_client(
    service: str,
    endpoint: AwsEndpoint,
    governor: Budget,
    stop: threading.Event,
    meter: WireMeter,
    *,
    session: Any = None,
) -> Any:
    """A boto3 client whose requests pass the governor and are counted by ``meter``
    (from ``session`` if given: a caller that also needs its credentials)."""
    import boto3
    from botocore.config import Config as BotoConfig

    session = session or boto3.session.Session(profile_name=endpoint.profile)
    client = session.client(
        service,
        region_name=endpoint.region,
        endpoint_url=endpoint.endpoint_url,
        config=BotoConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=endpoint.connect_timeout,
            read_timeout=endpoint.request_timeout,
            tcp_keepalive=True,
            max_pool_connections=2,
            # The sinks check every limit themselves before sending; botocore's own
            # validation walks each of 500 records per request and costs more CPU than
            # all of the agent's packing.
            parameter_validation=False,
        ),
    )

    def admit(request: Any, **_: Any) -> None:
        # Before signing, not before sending: a request that waited for the budget after
        # it was signed could expire (AWS refuses signatures older than 5 minutes).
        body = request.data if isinstance(request.data, bytes | bytearray) else b""
        size = SIGNATURE_HEADER_BYTES + wire_bytes(
            request.method, request.url, request.headers.items(), body
        )
        if not governor.acquire(size, stop):
            raise SinkUnavailable("Stopping", "the agent is stopping")
        meter.bytes += size

    client.meta.events.register("before-sign", admit)
    return client


def sink_error(err: Exception) -> SinkError:
    """Translate what boto3 raised into the forwarder's error tree."""
    from botocore import exceptions as boto

    if isinstance(err, SinkError):
        return err
    if isinstance(err, boto.ParamValidationError):  # botocore's own checks of the request
        return RequestRejected("ParamValidation", str(err))
    if isinstance(err, boto.ClientError):
        error = err.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or "")
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in REJECT_CODES:
            return RequestRejected(code, message)
        if "Signature expired" in message or code in ("RequestExpired", "ExpiredTokenException"):
            return SinkUnavailable(code, message)  # signed too long ago / credentials renew
        if code in PAUSE_CODES or (code.startswith("KMS") and code != KMS_THROTTLING):
            return SinkPaused(code, message)
        if status >= 500 or status in (0, 429) or "Throttl" in code or "Exceeded" in code:
            return SinkUnavailable(code, message)
        if code == "ServiceUnavailableException":
            return SinkUnavailable(code, message)
        return SinkPaused(code, f"HTTP {status}: {message}")
    if isinstance(err, boto.NoCredentialsError | boto.PartialCredentialsError):
        return SinkPaused("NoCredentials", str(err))
    if isinstance(err, boto.CredentialRetrievalError):
        return SinkUnavailable("CredentialRetrieval", str(err))
    if isinstance(err, boto.NoRegionError):
        return SinkPaused("NoRegion", "no region: set region in the sink's config")
    if isinstance(err, boto.SSLError):
        return SinkUnavailable("TlsError", str(err))
    if isinstance(err, boto.ConnectTimeoutError | boto.ReadTimeoutError):
        return SinkUnavailable("Timeout", str(err))
    if isinstance(err, boto.EndpointConnectionError):
        reason = str(getattr(err, "kwargs", {}).get("error", err))
        if "Name or service not known" in reason or "getaddrinfo" in reason:
            return SinkUnavailable("DnsFailure", str(err))
        if "Connection refused" in reason:
            return SinkUnavailable("ConnectionRefused", str(err))
        return SinkUnavailable("ConnectionError", str(err))
    if isinstance(err, boto.ConnectionClosedError | boto.HTTPClientError):
        return SinkUnavailable("ConnectionError", str(err))
    if isinstance(err, boto.BotoCoreError):
        return SinkUnavailable(type(err).__name__, str(err))
    raise err
