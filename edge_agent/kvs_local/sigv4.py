"""Checking a SigV4 signature on the receiving side, with botocore's own signer.

The request's Authorization names the headers that were signed; the canonical request
is rebuilt from exactly those, and botocore (``SigV4Auth``) computes the string to
sign and the signature with the endpoint's credentials. The payload counts as the
``x-amz-content-sha256`` header says, or as empty (a streamed PutMedia body is signed
that way by the producer SDKs).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from edge_agent.errors import EndpointRefusal

#: AWS refuses signatures more than five minutes off the server's clock.
MAX_SKEW_S = 300
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<headers>[a-z0-9;-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class SignatureRejected(EndpointRefusal):
    """Why a request's signature is not accepted; ``error_type`` as AWS names it. The
    answer's status: 401 for an unknown access key, else 403."""

    def __init__(self, error_type: str, message: str) -> None:
        status = 401 if error_type == "UnrecognizedClientException" else 403
        super().__init__(status, error_type, message)


def check_signature(
    method: str,
    url: str,
    headers: Mapping[str, str],
    credentials: Credentials,
    *,
    region: str,
    service: str,
    payload: bytes | None = None,
    now: float | None = None,
) -> None:
    """Raise SignatureRejected unless the request was signed with ``credentials``;
    ``payload`` is the body when it was signed (not a streamed one)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    match = _AUTHORIZATION.match(lowered.get("authorization", ""))
    if match is None:
        raise SignatureRejected("MissingAuthenticationToken", "no SigV4 Authorization header")
    if match["key"] != credentials.access_key:
        raise SignatureRejected("UnrecognizedClientException", "unknown access key")
    if (match["region"], match["service"]) != (region, service):
        raise SignatureRejected(
            "InvalidSignatureException",
            f"credential scope is {match['region']}/{match['service']}, "
            f"expected {region}/{service}",
        )
    stamp = lowered.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise SignatureRejected("InvalidSignatureException", "no valid X-Amz-Date") from None
    if abs((time.time() if now is None else now) - signed_at) > MAX_SKEW_S:
        raise SignatureRejected("InvalidSignatureException", "Signature expired")
    signed = match["headers"].split(";")
    if "host" not in signed or any(name not in lowered for name in signed):
        raise SignatureRejected("InvalidSignatureException", "signed headers are missing")
    to_sign = HTTPHeaders()
    for name in signed:
        to_sign[name] = lowered[name]
    request = AWSRequest(method=method, url=url, headers=dict(to_sign.items()), data=b"")
    request.context["timestamp"] = stamp
    signer = SigV4Auth(credentials, service, region)
    path = urlsplit(url).path or "/"
    canonical = "\n".join(
        (
            method.upper(),
            signer._normalize_url_path(path),
            signer.canonical_query_string(request),
            signer.canonical_headers(to_sign) + "\n",
            ";".join(signed),
            lowered.get("x-amz-content-sha256")
            or (hashlib.sha256(payload).hexdigest() if payload is not None else EMPTY_SHA256),
        )
    )
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["signature"]):
        raise SignatureRejected(
            "InvalidSignatureException", "the signature does not match the request"
        )
