"""The error tree (edge_agent/errors.py): every exception edge-agent defines is in it,
its docstring draws all of it, and the lower libraries' exceptions are translated
through their tables (botocore: sinks.aws.sink_error; PyAV: camera_errors.camera_error)."""

from __future__ import annotations

import errno
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable

import av
import pytest
from botocore import exceptions as boto

import edge_agent
from edge_agent import errors
from edge_agent.delivery.budget import BacklogHeld
from edge_agent.errors import (
    NETWORK_ERROR_CODES,
    EdgeAgentError,
    EndpointRefusal,
    FormatError,
    RequestRejected,
    SinkError,
    SinkPaused,
    SinkUnavailable,
    SourceError,
)
from edge_agent.kvs_local.mkv_reader import MkvError
from edge_agent.kvs_local.sigv4 import SignatureRejected
from edge_agent.media import h264
from edge_agent.media.mkv import FragmentError
from edge_agent.sinks.aws import sink_error
from edge_agent.sinks.kvs.putmedia import PutMediaRefused
from edge_agent.sources.camera import rtsp_client
from edge_agent.sources.camera.camera_errors import (
    CameraError,
    CameraRefused,
    StreamStalled,
    camera_error,
)
from edge_agent.sources.camera.rtsp_client import RtspError, RtspRefused, RtspStalled
from edge_agent.sources.camera.sdp import SdpError

#: Modules not imported by the walk, and why.
NOT_IMPORTED = {
    "edge_agent.__main__": "importing it runs the command line (python -m edge_agent)",
}
#: Exceptions edge-agent defines outside the tree (qualified name -> why): none.
OUTSIDE_THE_TREE: dict[str, str] = {}


def _modules() -> list[str]:
    names = [
        info.name
        for info in pkgutil.walk_packages(edge_agent.__path__, "edge_agent.")
        if info.name not in NOT_IMPORTED
    ]
    for name in names:
        importlib.import_module(name)
    return names


def _exceptions_defined_in_edge_agent() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                found[f"{name}.{value.__qualname__}"] = value
    return found


def _tree() -> set[type[EdgeAgentError]]:
    _modules()  # every subclass is defined (and registered) once its module is imported
    seen: set[type[EdgeAgentError]] = set()
    todo: list[type[EdgeAgentError]] = [EdgeAgentError]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.add(cls)
            todo += cls.__subclasses__()
    return seen


def test_every_exception_edge_agent_defines_is_in_the_tree() -> None:
    found = _exceptions_defined_in_edge_agent()
    assert "edge_agent.sources.camera.camera_errors.StreamStalled" in found  # the walk works
    outside = {
        name: cls
        for name, cls in found.items()
        if not issubclass(cls, EdgeAgentError) and name not in OUTSIDE_THE_TREE
    }
    assert outside == {}


def test_the_docstring_draws_every_class_of_the_tree_and_only_those() -> None:
    doc = errors.__doc__ or ""
    names = {cls.__name__ for cls in _tree()}
    missing = sorted(name for name in names if not re.search(rf"\b{name}\b", doc))
    assert missing == []
    drawn = set(re.findall(r"(?:──|^ {4})\s*([A-Z]\w+)", doc, re.MULTILINE))
    assert drawn - names == set()  # nothing drawn that is not a class


def test_retryable_says_what_a_sink_or_source_does_next() -> None:
    # A sink: RequestRejected is split up, other non-retryable errors pause the sink.
    assert not SinkPaused("AccessDeniedException", "").retryable
    assert SinkUnavailable("Timeout", "").retryable
    assert not RequestRejected("ValidationException", "").retryable
    assert BacklogHeld("until 00:00").retryable  # not a SinkError: not a failure
    assert not issubclass(BacklogHeld, SinkError)
    # A source always reconnects.
    for cls in _tree():
        if issubclass(cls, SourceError):
            assert cls.retryable, cls


def test_unreachable_is_a_network_code_of_a_sink_unavailable() -> None:
    for code in NETWORK_ERROR_CODES:
        assert SinkUnavailable(code, "").unreachable
    assert not SinkUnavailable("ThrottlingException", "").unreachable
    assert not SinkPaused("Timeout", "").unreachable  # an answer came back
    assert not RequestRejected("ValidationException", "").unreachable


def test_parse_errors_are_value_errors() -> None:
    for cls in (FormatError, FragmentError, MkvError, SdpError):
        assert issubclass(cls, ValueError) and issubclass(cls, EdgeAgentError)
    with pytest.raises(FormatError, match="truncated NAL length"):
        h264.split_avcc(b"\x00\x00")


def test_putmedia_refusals_pause_for_credentials_and_missing_streams() -> None:
    refused = PutMediaRefused(403, "InvalidSignatureException", "Signature expired")
    assert str(refused) == "HTTP 403 InvalidSignatureException: Signature expired"
    assert (refused.code, refused.message) == ("InvalidSignatureException", "Signature expired")
    assert not refused.retryable and not refused.unreachable
    assert not PutMediaRefused(404, "ResourceNotFoundException", "").retryable
    assert not PutMediaRefused(400, "NotAuthorizedException", "").retryable
    assert PutMediaRefused(400, "ConnectionLimitExceededException", "").retryable
    assert PutMediaRefused(500, "Unknown", "").retryable


def test_kvs_local_refusals_carry_their_answer() -> None:
    refused = EndpointRefusal(404, "ResourceNotFoundException", "stream x not found")
    assert (str(refused), refused.status) == ("stream x not found", 404)
    unknown = SignatureRejected("UnrecognizedClientException", "unknown access key")
    assert (unknown.status, unknown.error_type, str(unknown)) == (
        401,
        "UnrecognizedClientException",
        "unknown access key",
    )
    assert SignatureRejected("InvalidSignatureException", "Signature expired").status == 403


# ---------------------------------------------------------------------- botocore


def _client_error(code: str, status: int, message: str = "the message") -> boto.ClientError:
    return boto.ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PutRecords",
    )


URL = "https://kinesis.eu-west-1.amazonaws.com"

BOTOCORE_CASES: list[tuple[Exception, type[SinkError], str]] = [
    (boto.ParamValidationError(report="Records is empty"), RequestRejected, "ParamValidation"),
    (_client_error("ValidationException", 400), RequestRejected, "ValidationException"),
    (_client_error("InvalidArgumentException", 400), RequestRejected, "InvalidArgumentException"),
    (_client_error("ExpiredTokenException", 400), SinkUnavailable, "ExpiredTokenException"),
    (_client_error("RequestExpired", 400), SinkUnavailable, "RequestExpired"),
    (
        _client_error("InvalidSignatureException", 400, "Signature expired: 20240101T000000Z"),
        SinkUnavailable,
        "InvalidSignatureException",
    ),
    (_client_error("InvalidSignatureException", 400), SinkPaused, "InvalidSignatureException"),
    (_client_error("AccessDeniedException", 400), SinkPaused, "AccessDeniedException"),
    (_client_error("ResourceNotFoundException", 400), SinkPaused, "ResourceNotFoundException"),
    (_client_error("KMSDisabledException", 400), SinkPaused, "KMSDisabledException"),
    (_client_error("KMSThrottlingException", 400), SinkUnavailable, "KMSThrottlingException"),
    (
        _client_error("ProvisionedThroughputExceededException", 400),
        SinkUnavailable,
        "ProvisionedThroughputExceededException",
    ),
    (_client_error("ThrottlingException", 400), SinkUnavailable, "ThrottlingException"),
    (_client_error("InternalFailure", 500), SinkUnavailable, "InternalFailure"),
    (_client_error("SlowDown", 429), SinkUnavailable, "SlowDown"),
    (_client_error("Odd", 0), SinkUnavailable, "Odd"),
    (
        _client_error("ServiceUnavailableException", 400),
        SinkUnavailable,
        "ServiceUnavailableException",
    ),
    (_client_error("Forbidden", 403), SinkPaused, "Forbidden"),
    (boto.ClientError({}, "PutRecords"), SinkUnavailable, "Unknown"),  # no status: 0
    (boto.NoCredentialsError(), SinkPaused, "NoCredentials"),
    (
        boto.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
        SinkPaused,
        "NoCredentials",
    ),
    (
        boto.CredentialRetrievalError(provider="sso", error_msg="expired"),
        SinkUnavailable,
        "CredentialRetrieval",
    ),
    (boto.NoRegionError(), SinkPaused, "NoRegion"),
    (
        boto.SSLError(endpoint_url=URL, error="certificate verify failed"),
        SinkUnavailable,
        "TlsError",
    ),
    (boto.ConnectTimeoutError(endpoint_url=URL), SinkUnavailable, "Timeout"),
    (boto.ReadTimeoutError(endpoint_url=URL), SinkUnavailable, "Timeout"),
    (
        boto.EndpointConnectionError(
            endpoint_url=URL, error="[Errno -2] Name or service not known"
        ),
        SinkUnavailable,
        "DnsFailure",
    ),
    (
        boto.EndpointConnectionError(endpoint_url=URL, error="getaddrinfo failed"),
        SinkUnavailable,
        "DnsFailure",
    ),
    (
        boto.EndpointConnectionError(endpoint_url=URL, error="[Errno 111] Connection refused"),
        SinkUnavailable,
        "ConnectionRefused",
    ),
    (
        boto.EndpointConnectionError(endpoint_url=URL, error="[Errno 113] No route to host"),
        SinkUnavailable,
        "ConnectionError",
    ),
    (  # no network code: botocore's other errors are named by their type
        boto.ProxyConnectionError(proxy_url="http://proxy:3128", error="refused"),
        SinkUnavailable,
        "ProxyConnectionError",
    ),
    (boto.ConnectionClosedError(endpoint_url=URL), SinkUnavailable, "ConnectionError"),
    (boto.HTTPClientError(error="boom"), SinkUnavailable, "ConnectionError"),
    (boto.DataNotFoundError(data_path="kinesis"), SinkUnavailable, "DataNotFoundError"),
]


@pytest.mark.parametrize(
    ("err", "kind", "code"), BOTOCORE_CASES, ids=[type(case[0]).__name__ for case in BOTOCORE_CASES]
)
def test_sink_error_translates_each_botocore_exception(
    err: Exception, kind: type[SinkError], code: str
) -> None:
    error = sink_error(err)
    assert type(error) is kind
    assert error.code == code
    assert error.unreachable == (code in NETWORK_ERROR_CODES)


def test_sink_error_keeps_the_message_or_names_the_fix() -> None:
    assert sink_error(_client_error("AccessDeniedException", 400)).message == "the message"
    assert sink_error(_client_error("Forbidden", 403)).message == "HTTP 403: the message"
    assert sink_error(boto.NoRegionError()).message == "no region: set region in the sink's config"
    timeout = boto.ConnectTimeoutError(endpoint_url=URL)
    assert sink_error(timeout).message == str(timeout)


def test_sink_error_passes_the_agents_own_and_raises_anything_else() -> None:
    paused = SinkPaused("NoRegion", "no region")
    assert sink_error(paused) is paused
    with pytest.raises(KeyError):
        sink_error(KeyError("a bug"))


# ---------------------------------------------------------------------- PyAV

SECRET_URL = "rtsp://admin:s3cret@10.0.0.7:554/stream1"

PYAV_CASES: list[tuple[Callable[[], Exception], type[SourceError], str]] = [
    (
        lambda: av.error.HTTPUnauthorizedError(
            -825242872, "Server returned 401 Unauthorized (authorization failed)", SECRET_URL
        ),
        CameraRefused,
        "Server returned 401 Unauthorized (authorization failed): "
        "the camera refused the credentials in the URL",
    ),
    (
        lambda: av.error.HTTPNotFoundError(
            -1279870712, "Server returned 404 Not Found", SECRET_URL
        ),
        CameraRefused,
        "Server returned 404 Not Found",
    ),
    (
        lambda: av.error.HTTPServerError(-1482175992, "Server returned 5XX Server Error reply"),
        CameraRefused,
        "Server returned 5XX Server Error reply",
    ),
    (
        lambda: av.error.EOFError(541478725, "End of file"),
        CameraError,
        "End of file: the stream ended",
    ),
    (
        lambda: av.error.InvalidDataError(
            1094995529, "Invalid data found when processing input", SECRET_URL
        ),
        CameraError,
        "Invalid data found when processing input: nothing FFmpeg can read, or not in time",
    ),
    (
        lambda: av.error.ConnectionRefusedError(
            errno.ECONNREFUSED, "Connection refused", SECRET_URL
        ),
        CameraError,
        "Connection refused",
    ),
    (
        lambda: av.error.TimeoutError(errno.ETIMEDOUT, "Connection timed out", SECRET_URL),
        CameraError,
        "Connection timed out",
    ),
    (
        lambda: av.error.DecoderNotFoundError(-1128613112, "Decoder not found"),
        CameraError,
        "Decoder not found: this FFmpeg has no such codec, format, protocol or option",
    ),
    (
        lambda: av.error.ExitError(-1414092869, "Immediate exit requested"),
        CameraError,
        "Immediate exit requested",
    ),
]


@pytest.mark.parametrize(
    ("make", "kind", "text"),
    PYAV_CASES,
    ids=[case[1].__name__ + str(i) for i, case in enumerate(PYAV_CASES)],
)
def test_pyav_errors_become_camera_errors_without_the_url(
    make: Callable[[], Exception], kind: type[SourceError], text: str
) -> None:
    err = make()
    error = camera_error(err)
    assert type(error) is kind
    assert str(error) == text
    assert error.retryable
    assert "s3cret" not in str(error)


@pytest.mark.parametrize(
    "err",
    [
        StreamStalled("no frames for 5.1s"),
        RtspRefused("DESCRIBE", 401, "Unauthorized"),
        RtspStalled("no video for 5.0s"),
        RtspError("connect: connection refused"),
    ],
)
def test_a_cameras_own_errors_pass_as_they_are(err: SourceError) -> None:
    assert camera_error(err) is err


def test_anything_else_a_camera_meets_is_named_by_its_type() -> None:
    error = camera_error(RuntimeError("a bug"))
    assert type(error) is CameraError and str(error) == "RuntimeError: a bug"


# ---------------------------------------------------------------------- sockets (RTSP)


@pytest.mark.parametrize(
    ("err", "text"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection refused"),
        (TimeoutError(), "timed out"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "No route to host"),
        (
            ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            "Connection reset by peer",
        ),
    ],
)
def test_the_rtsp_client_describes_socket_errors_through_its_table(err: OSError, text: str) -> None:
    assert rtsp_client._describe(err) == text
