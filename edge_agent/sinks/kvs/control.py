"""GetDataEndpoint and DescribeStream, the Kinesis Video control-plane calls the KVS sink
makes, each a single SigV4-signed JSON request: botocore signs it and supplies the
credentials, as for PutMedia. A generated boto3 client for this one call would load the kinesisvideo
service model and its endpoint rules: 8 MiB resident on a device (docs/BENCHMARKS.md,
video). Refusals are raised as botocore's own ``ClientError``, so ``sinks.aws.sink_error``
classifies them like every other AWS answer; network failures stay ``OSError``.

The default endpoint is ``https://kinesisvideo.REGION.amazonaws.com`` (``.com.cn`` in the
China regions); FIPS or other endpoints are set with the sink's ``endpoint_url``.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError

from edge_agent.delivery.budget import Budget
from edge_agent.sinks.aws import wire_bytes
from edge_agent.sinks.kvs.http import open_connection

MAX_ANSWER_BYTES = 64 * 1024


def control_endpoint(region: str, endpoint_url: str | None) -> str:
    """Where the control plane of ``region`` answers (``endpoint_url`` if set)."""
    if endpoint_url:
        return endpoint_url.rstrip("/")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://kinesisvideo.{region}.{domain}"


def get_data_endpoint(
    endpoint: str,
    stream: str,
    credentials: ReadOnlyCredentials,
    *,
    region: str,
    timeout: float,
    budget: Budget,
    stop: threading.Event,
) -> str:
    """The PUT_MEDIA data endpoint of ``stream``; ClientError if the service refuses."""
    request = {"StreamName": stream, "APIName": "PUT_MEDIA"}
    document = _call(
        endpoint,
        "GetDataEndpoint",
        request,
        credentials,
        region=region,
        timeout=timeout,
        budget=budget,
        stop=stop,
    )
    if isinstance(document.get("DataEndpoint"), str):
        return str(document["DataEndpoint"])
    raise _refusal("GetDataEndpoint", 200, "InvalidResponse", "no DataEndpoint in the answer")


def describe_stream(
    endpoint: str,
    stream: str,
    credentials: ReadOnlyCredentials,
    *,
    region: str,
    timeout: float,
    budget: Budget,
    stop: threading.Event,
) -> dict[str, Any]:
    """The stream's StreamInfo (``DataRetentionInHours``, ``Status``...); ClientError if
    the service refuses (e.g. an IAM policy without kinesisvideo:DescribeStream)."""
    document = _call(
        endpoint,
        "DescribeStream",
        {"StreamName": stream},
        credentials,
        region=region,
        timeout=timeout,
        budget=budget,
        stop=stop,
    )
    info = document.get("StreamInfo")
    if isinstance(info, dict):
        return info
    raise _refusal("DescribeStream", 200, "InvalidResponse", "no StreamInfo in the answer")


def _call(
    endpoint: str,
    operation: str,
    request_document: dict[str, str],
    credentials: ReadOnlyCredentials,
    *,
    region: str,
    timeout: float,
    budget: Budget,
    stop: threading.Event,
) -> dict[str, Any]:
    """One signed control-plane call; its JSON answer, or ClientError."""
    body = json.dumps(request_document).encode()
    url = f"{endpoint}/{operation[0].lower()}{operation[1:]}"
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(credentials, "kinesisvideo", region).add_auth(request)
    headers = dict(request.headers.items())
    if not budget.acquire(wire_bytes("POST", url, headers.items(), body), stop):
        raise ConnectionAbortedError("the agent is stopping")
    connection = open_connection(url, timeout)
    try:
        connection.request("POST", urlsplit(url).path, body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read(MAX_ANSWER_BYTES)
        error_type = response.getheader("x-amzn-ErrorType", "")
    finally:
        connection.close()
    try:
        document = json.loads(answer or b"{}")
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    if response.status == 200:
        return document
    code = error_type.split(":")[0] or str(document.get("__type", "")).rpartition("#")[2]
    message = (
        document.get("Message") or document.get("message") or answer[:200].decode(errors="replace")
    )
    raise _refusal(operation, response.status, code or f"HTTP{response.status}", str(message))


def _refusal(operation: str, status: int, code: str, message: str) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )
