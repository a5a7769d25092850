"""boto3 clients for the sinks, and what their errors mean for the forwarder.

botocore does the signing, credentials (environment, profile, instance role, refresh
of temporary credentials) and the wire protocol. Every client comes from the one
session of the ``[aws]`` identity (credentials/shared.py), so all sinks sign with one
credentials object, fetched and renewed once. Its own retries are switched off
(``total_max_attempts = 1``): the forwarder retries with full jitter and shows every retry in
status, and retrying inside botocore would hide throttling from the per-shard pacing.

Every request passes the upload budget with its size on the wire (body, headers and
the signature's headers), through botocore's ``before-sign`` event: waiting for the
budget before signing keeps a long wait on a slow uplink from expiring the signature.

A sink's read timeout adapts to the link (delivery/adaptive_timeout.py). botocore fixes
the timeout per client (its ``Config``; there is no per-request timeout), so a sink's
``TimedClients`` keeps one client per timeout step in use, at most MAX_CLIENTS, made
from one boto3 session: a client after the first shares the session's loaded service
model and costs about 0.3 MiB and 30 ms to make (the first: 11 MiB).
"""

from __future__ import annotations

import functools
import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from edge_agent.config.sink_kinds import AwsEndpoint
from edge_agent.credentials.shared import SharedSession, shared_session
from edge_agent.delivery.adaptive_timeout import AdaptiveTimeout
from edge_agent.delivery.budget import Budget
from edge_agent.delivery.exception_frames import release_frames
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
#: Error codes of a signature or credentials that are too old: signed again (with
#: renewed credentials), the same request can succeed.
RENEW_CODES = frozenset({"RequestExpired", "ExpiredTokenException"})
#: KMS errors are "pause" errors, except this one.
KMS_THROTTLING = "KMSThrottlingException"
#: Authorization, X-Amz-Date and X-Amz-Security-Token (temporary credentials), added
#: when the request is signed, after it was metered.
SIGNATURE_HEADER_BYTES = 1200
#: The request itself is malformed: some record in it can never be accepted.
REJECT_CODES = frozenset({"InvalidArgumentException", "ValidationException"})
#: Clients a sink keeps (one per timeout step in use); more only while in use.
MAX_CLIENTS = 2


class WireMeter:
    """Bytes a sink's requests put on the wire (body, headers, request line)."""

    def __init__(self) -> None:
        self.bytes = 0


def wire_bytes(method: str, url: str, headers: Iterable[tuple[str, Any]], body: object) -> int:
    """What a request puts on the wire: request line, headers and body (bytes, or a
    seekable stream: botocore hands S3 bodies over as one)."""
    size = len(method) + len(url) + 12  # request line
    size += sum(len(name) + len(str(value)) + 4 for name, value in headers)
    return size + body_bytes(body)


def body_bytes(body: object) -> int:
    """The bytes left to send in ``body``: bytes, text, or a seekable stream (read from
    where it stands, which is left as it was). Anything else counts as empty."""
    if isinstance(body, bytes | bytearray):
        return len(body)
    if isinstance(body, memoryview):
        return body.nbytes
    if isinstance(body, str):
        return len(body.encode())
    tell, seek = getattr(body, "tell", None), getattr(body, "seek", None)
    if tell is None or seek is None:
        return 0
    start = tell()
    end = seek(0, io.SEEK_END)
    seek(start)
    return int(end) - int(start)


def make_client(
    service: str,
    endpoint: AwsEndpoint,
    budget: Budget,
    stop: threading.Event,
    meter: WireMeter,
    *,
    session: SharedSession | None = None,
    read_timeout: float | None = None,
) -> Any:
    """A boto3 client whose requests pass the budget and are counted by ``meter``
    (from ``session``, default the endpoint's shared one), waiting ``read_timeout`` for
    an answer (default: the endpoint's ``request_timeout``)."""
    from botocore.config import Config as BotoConfig

    session = session or shared_session(endpoint.identity, endpoint.profile)
    client = session.client(
        service,
        region_name=endpoint.region,
        endpoint_url=endpoint.endpoint_url,
        config=BotoConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=endpoint.connect_timeout,
            read_timeout=endpoint.request_timeout if read_timeout is None else read_timeout,
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
        size = SIGNATURE_HEADER_BYTES + wire_bytes(
            request.method, request.url, request.headers.items(), request.data
        )
        if not budget.acquire(size, stop):
            raise SinkUnavailable("Stopping", "the agent is stopping")
        meter.bytes += size

    client.meta.events.register("before-sign", admit)
    return client


class TimedClients:
    """The boto3 clients of sink ``name``, whose read timeout adapts: ``call`` makes
    each request with the client of the current timeout, and reports how it went to
    ``timeout`` (a read timeout grows it; answers of any kind bring it back down).
    ``prepare`` is applied to each client made (the sink's event handlers)."""

    def __init__(
        self,
        service: str,
        endpoint: AwsEndpoint,
        budget: Budget,
        stop: threading.Event,
        meter: WireMeter,
        *,
        name: str,
        prepare: Callable[[Any], None] = lambda client: None,
    ) -> None:
        self.name = name
        self.timeout = AdaptiveTimeout(endpoint.request_timeout, endpoint.request_timeout_max)
        self.session = shared_session(endpoint.identity, endpoint.profile)
        self._make = functools.partial(
            make_client, service, endpoint, budget, stop, meter, session=self.session
        )
        self._prepare = prepare
        #: Clients by read timeout, the least recently used first; and their users.
        self._clients: OrderedDict[float, Any] = OrderedDict()
        self._users: dict[float, int] = {}
        self._lock = threading.Lock()
        self._sent_at = threading.local()  # when this thread's request went on the wire

    def call(self, operation: str, params: dict[str, Any], *, items: int = 0) -> Any:
        """``operation`` with ``params`` (``items``: the records it carries, counted
        if it times out); botocore's errors come out as the agent's (``sink_error``)."""
        timeout = self.timeout.current
        try:
            client = self._take(timeout)  # resolves the credentials the first time
        except Exception as err:
            raise sink_error(err) from err
        self._sent_at.value = None
        started = time.monotonic()
        try:
            answer = getattr(client, operation)(**params)
        except Exception as err:
            self._report(err, timeout, items, started)
            raise sink_error(err) from err
        finally:
            self._give_back(timeout)
        self.timeout.answered(self._elapsed(started))
        return answer

    def ready(self) -> SinkError | None:
        """What keeps the sink from sending at all: no credentials, or their provider
        refuses or cannot be reached; None when the credentials can be had."""
        try:
            self.session.credentials()
        except Exception as err:
            return sink_error(err)
        return None

    @property
    def kept(self) -> list[float]:
        """The read timeouts of the clients kept, the least recently used first."""
        with self._lock:
            return list(self._clients)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            client.close()

    def _report(self, err: Exception, timeout: float, items: int, started: float) -> None:
        from botocore import exceptions as boto

        if isinstance(err, boto.ReadTimeoutError):
            if self.timeout.timed_out(timeout, items):
                log.warning(
                    "sink %s: no answer within %gs; waiting up to %gs from now on",
                    self.name,
                    timeout,
                    self.timeout.current,
                )
        elif isinstance(err, boto.ClientError):  # an answer, if not the one hoped for
            self.timeout.answered(self._elapsed(started))

    def _elapsed(self, started: float) -> float:
        """Since the request went on the wire (a wait for the budget is not the link's)."""
        sent_at = getattr(self._sent_at, "value", None)
        return time.monotonic() - (started if sent_at is None else sent_at)

    def _sending(self, **_: Any) -> None:
        self._sent_at.value = time.monotonic()

    def _take(self, timeout: float) -> Any:
        with self._lock:
            client = self._clients.get(timeout)
            if client is None:
                client = self._clients[timeout] = self._make(read_timeout=timeout)
                client.meta.events.register("before-send", self._sending)
                self._prepare(client)
            self._clients.move_to_end(timeout)
            self._users[timeout] = self._users.get(timeout, 0) + 1
            closing = self._unused()
        for old in closing:
            old.close()
        return client

    def _give_back(self, timeout: float) -> None:
        with self._lock:
            self._users[timeout] -= 1
            closing = self._unused()
        for old in closing:
            old.close()

    def _unused(self) -> list[Any]:
        """Beyond MAX_CLIENTS: the least recently used clients no request is using."""
        closing: list[Any] = []
        for timeout in list(self._clients):
            if len(self._clients) <= MAX_CLIENTS:
                break
            if not self._users.get(timeout):
                closing.append(self._clients.pop(timeout))
                self._users.pop(timeout, None)
        return closing


def sink_error(err: Exception) -> SinkError:
    """Translate what boto3 raised into the forwarder's error tree: the first row of
    ``botocore_errors()`` whose types ``err`` is one of says what it means. A ``SinkError``
    comes back as it is; anything else is raised again (not botocore's: a bug)."""
    if isinstance(err, SinkError):
        return err
    for types, translate in botocore_errors():
        if isinstance(err, types):
            release_frames(err)  # botocore's frames hold it in a cycle, and the body
            return translate(err)
    raise err


#: One row of the table: botocore's exception types, and what makes the agent's error.
Translation = tuple[tuple[type[Exception], ...], Callable[[Any], SinkError]]


def _as(kind: type[SinkError], code: str, message: str | None = None) -> Callable[[Any], SinkError]:
    """A translation to ``kind(code, message)``; the message is the exception's text
    unless given."""
    return lambda err: kind(code, str(err) if message is None else message)


def _client_error(err: Any) -> SinkError:
    """The service answered with an error: its code (and HTTP status) says which."""
    error = err.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    message = str(error.get("Message") or "")
    status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in REJECT_CODES:
        return RequestRejected(code, message)
    if "Signature expired" in message or code in RENEW_CODES:
        return SinkUnavailable(code, message)  # signed too long ago / credentials renew
    if code in PAUSE_CODES or (code.startswith("KMS") and code != KMS_THROTTLING):
        return SinkPaused(code, message)
    if status >= 500 or status in (0, 429) or "Throttl" in code or "Exceeded" in code:
        return SinkUnavailable(code, message)
    if code == "ServiceUnavailableException":
        return SinkUnavailable(code, message)
    return SinkPaused(code, f"HTTP {status}: {message}")


def _endpoint_unreachable(err: Any) -> SinkError:
    """No connection to the endpoint: its name did not resolve, it refused, or else."""
    reason = str(getattr(err, "kwargs", {}).get("error", err))
    if "Name or service not known" in reason or "getaddrinfo" in reason:
        return SinkUnavailable("DnsFailure", str(err))
    if "Connection refused" in reason:
        return SinkUnavailable("ConnectionRefused", str(err))
    return SinkUnavailable("ConnectionError", str(err))


@functools.cache
def botocore_errors() -> tuple[Translation, ...]:
    """The table: botocore's exceptions -> the agent's errors, walked in order
    (the first row whose type matches; a subclass comes before its base). Built on
    first use: botocore is imported only by a process that has an AWS sink."""
    from botocore import exceptions as boto

    return (
        # botocore's own checks of the request
        ((boto.ParamValidationError,), _as(RequestRejected, "ParamValidation")),
        ((boto.ClientError,), _client_error),
        (
            (boto.NoCredentialsError, boto.PartialCredentialsError),
            _as(SinkPaused, "NoCredentials"),
        ),
        ((boto.CredentialRetrievalError,), _as(SinkUnavailable, "CredentialRetrieval")),
        (
            (boto.NoRegionError,),
            _as(SinkPaused, "NoRegion", "no region: set region in the sink's config"),
        ),
        ((boto.SSLError,), _as(SinkUnavailable, "TlsError")),
        ((boto.ConnectTimeoutError, boto.ReadTimeoutError), _as(SinkUnavailable, "Timeout")),
        ((boto.EndpointConnectionError,), _endpoint_unreachable),
        (
            (boto.ConnectionClosedError, boto.HTTPClientError),
            _as(SinkUnavailable, "ConnectionError"),
        ),
        ((boto.BotoCoreError,), lambda err: SinkUnavailable(type(err).__name__, str(err))),
    )
