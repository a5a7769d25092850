"""Credentials for the device's X.509 certificate: the AWS IoT credentials provider.

    GET https://<id>.credentials.iot.<region>.amazonaws.com/role-aliases/<alias>/credentials
    x-amzn-iot-thingname: <thing>          (mutual TLS: the device certificate and key)
    -> 200 {"credentials": {"accessKeyId", "secretAccessKey", "sessionToken", "expiration"}}

The answer is temporary credentials of the IAM role the role alias names, valid for the
alias's credential duration (15 minutes to 12 hours; one hour by default). They are
handed to botocore as ``RefreshableCredentials``, which fetches new ones before the old
expire: from its advisory lead on (15 minutes before expiry) one thread fetches while
the others go on signing with the old keys; from its mandatory lead on (10 minutes)
every signer waits for the new ones. Those leads suit one-hour credentials; shorter ones
get leads in proportion to their lifetime (a 15-minute alias renews 3.75 minutes before
expiry, not at every request), so a role alias of any duration is renewed before
expiry and only then.

The TLS context is built from the files at each fetch, so a certificate renewed on disk
is used from the next renewal on. The request is small and rare (once per credential
lifetime) and does not pass the upload budget.

What a failed fetch means for the sinks (they pause or back off with the reason in
status, and keep every record in the spool):

    HTTP 400, 401, 403, 404   the certificate is unknown, inactive or revoked, not
                              attached to the thing, the policy does not allow
                              iot:AssumeRoleWithCertificate, or the alias does not
                              exist                              CredentialsRefused
    the TLS handshake fails   an expired certificate, one from a CA AWS IoT does not
                              know, or an endpoint the ``ca`` does not vouch for
                                                                 CredentialsRefused
    HTTP 429, 5xx             throttled or failing: back off     SinkUnavailable
    no answer                 refused, timeout, DNS: the link    SinkUnavailable
                              is down, as for any network fault  (NETWORK_ERROR_CODES)

No secret is ever logged: the fetch logs the thing, the alias and the expiry only.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from botocore.credentials import CredentialProvider, RefreshableCredentials

from edge_agent.config.aws import AwsIdentity
from edge_agent.errors import CredentialsRefused, SinkError, SinkUnavailable

log = logging.getLogger(__name__)

#: botocore's refresh leads (credentials.py), meant for credentials of an hour.
BOTOCORE_ADVISORY_S = 15 * 60
BOTOCORE_MANDATORY_S = 10 * 60
#: The lifetime botocore's leads are meant for; shorter lifetimes get shorter leads.
REFERENCE_LIFETIME_S = 3600.0
#: The answer is a few hundred bytes; anything this long is not the provider's.
MAX_ANSWER_BYTES = 64 * 1024
#: The HTTP answers that mean "not this certificate / alias / thing".
REFUSAL_STATUSES = frozenset({400, 401, 403, 404})
#: What the endpoint's TLS alerts say about the device certificate, in words.
TLS_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "the endpoint does not know the certificate's CA",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the endpoint says the certificate has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the endpoint says the certificate is revoked",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the endpoint refused the certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the endpoint refused the certificate",
    "TLSV1_ALERT_DECRYPT_ERROR": "the endpoint refused the certificate (its signature "
    "does not verify: signed by another CA of the same name?)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the endpoint wants a certificate and got none",
}
#: OpenSSL's verify codes for a certificate not yet valid / expired (X509_V_ERR_CERT_
#: NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED): about the endpoint's certificate, so
#: about this device's clock.
CLOCK_CODES = frozenset({9, 10})
#: TLS failures that are the transport ending, not the handshake refusing.
_TRANSPORT_SSL_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _alert_behind(connection: object) -> ssl.SSLError | None:
    """The endpoint's TLS alert waiting behind a request that could not be sent, if any.

    In TLS 1.3 the endpoint checks the device certificate after the device's side of the
    handshake is done: a refusal (alert, then close) can reach the device after it has
    started writing the request, whose write then fails on the closed connection while
    the alert sits unread. Reading it gives the refusal its reason instead of "EOF"."""
    if not isinstance(connection, ssl.SSLSocket):
        return None
    try:
        connection.recv(1)
    except ssl.SSLError as err:
        return None if isinstance(err, _TRANSPORT_SSL_ERRORS) else err
    except OSError:
        return None
    return None


class Issued(NamedTuple):
    """Temporary credentials as the provider issued them."""

    access_key: str
    secret_key: str
    token: str
    expiry: datetime


def refresh_leads(lifetime_s: float) -> tuple[float, float]:
    """(advisory, mandatory) seconds before expiry for credentials that live this long:
    botocore's for an hour or more, in proportion below."""
    share = min(1.0, max(0.0, lifetime_s) / REFERENCE_LIFETIME_S)
    return BOTOCORE_ADVISORY_S * share, BOTOCORE_MANDATORY_S * share


class IotCredentialsEndpoint:
    """The account's credentials endpoint, asked for the role alias's credentials with
    the device certificate."""

    def __init__(self, identity: AwsIdentity) -> None:
        assert identity.endpoint and identity.role_alias and identity.cert and identity.key
        self.identity = identity
        url = identity.endpoint if "://" in identity.endpoint else f"https://{identity.endpoint}"
        parts = urlsplit(url)
        assert parts.hostname is not None
        self.host, self.port = parts.hostname, parts.port or 443
        self.path = f"/role-aliases/{quote(identity.role_alias, safe='')}/credentials"

    @property
    def where(self) -> str:
        """The endpoint, for messages."""
        return self.host if self.port == 443 else f"{self.host}:{self.port}"

    def fetch(self) -> Issued:
        """New credentials; the agent's errors (module docstring) when there are none."""
        identity = self.identity
        try:
            context = self._context()
            connection = http.client.HTTPSConnection(
                self.host, self.port, timeout=identity.timeout, context=context
            )
            try:
                try:
                    connection.request(
                        "GET", self.path, headers={"x-amzn-iot-thingname": identity.thing_name}
                    )
                except OSError as err:
                    raise _alert_behind(connection.sock) or err from err
                response = connection.getresponse()
                body = response.read(MAX_ANSWER_BYTES)
            finally:
                connection.close()
        except (OSError, http.client.HTTPException) as err:
            raise self._failure(err) from err
        if response.status != 200:
            raise self._refusal(response.status, body)
        return self._issued(body)

    def _context(self) -> ssl.SSLContext:
        identity = self.identity
        assert identity.cert is not None and identity.key is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_cert_chain(str(identity.cert), str(identity.key))
            if identity.ca is not None:
                context.load_verify_locations(cafile=str(identity.ca))
            else:
                context.load_default_certs()
        except (OSError, ssl.SSLError) as err:
            raise CredentialsRefused(
                "CertificateUnusable",
                f"[aws] cert {identity.cert}, key {identity.key} or ca {identity.ca} "
                f"cannot be loaded: {err}",
            ) from err
        return context

    def _failure(self, err: BaseException) -> SinkError:
        """No answer: a refused handshake pauses, anything else is the network."""
        if isinstance(err, CredentialsRefused):
            return err
        where = f"the credentials endpoint {self.where}"
        if isinstance(err, ssl.SSLError) and not isinstance(err, _TRANSPORT_SSL_ERRORS):
            if isinstance(err, ssl.SSLCertVerificationError) and err.verify_code in CLOCK_CODES:
                # The endpoint's certificate "not yet valid" or "expired": this device's
                # clock, most likely (no RTC, no NTP yet): retried, not a refusal.
                return SinkUnavailable(
                    "CertificateTime",
                    f"TLS with {where}: {err.verify_message}: check this device's clock (NTP)",
                )
            if isinstance(err, ssl.SSLCertVerificationError):
                reason = f"the endpoint's certificate is not trusted ({err.verify_message})"
            else:
                reason = err.reason or str(err)
                reason = f"{TLS_ALERTS[reason]} ({reason})" if reason in TLS_ALERTS else reason
            return CredentialsRefused(
                "TlsHandshakeFailed",
                f"TLS with {where} failed: {reason}; check [aws] cert, key and ca (AWS IoT "
                "refuses an expired certificate, or one it does not know or has revoked)",
            )
        if isinstance(err, TimeoutError | socket.timeout):
            return SinkUnavailable("Timeout", f"{where}: no answer in {self.identity.timeout:g}s")
        if isinstance(err, ConnectionRefusedError):
            return SinkUnavailable("ConnectionRefused", f"{where}: connection refused")
        if isinstance(err, socket.gaierror):
            return SinkUnavailable("DnsFailure", f"{where}: {err.strerror or err}")
        return SinkUnavailable("ConnectionError", f"{where}: {type(err).__name__}: {err}")

    def _refusal(self, status: int, body: bytes) -> SinkError:
        identity = self.identity
        try:
            document = json.loads(body)
            message = str(document.get("message") or document.get("Message") or "")
        except (ValueError, AttributeError):
            message = body[:200].decode(errors="replace").strip()
        answer = f"HTTP {status}" + (f" {message}" if message else "")
        if status in REFUSAL_STATUSES:
            return CredentialsRefused(
                "CertificateRefused",
                f"the credentials endpoint {self.where} refused the certificate ({answer}) "
                f"for role alias {identity.role_alias!r}, thing {identity.thing_name!r}: "
                "the certificate must be active, attached to the thing and to a policy "
                "allowing iot:AssumeRoleWithCertificate on the role alias",
            )
        return SinkUnavailable("CredentialsEndpointError", f"{self.where}: {answer}")

    def _issued(self, body: bytes) -> Issued:
        try:
            given = json.loads(body)["credentials"]
            expiry = datetime.fromisoformat(str(given["expiration"]))
            issued = Issued(
                str(given["accessKeyId"]),
                str(given["secretAccessKey"]),
                str(given["sessionToken"]),
                expiry if expiry.tzinfo else expiry.replace(tzinfo=UTC),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise SinkUnavailable(
                "InvalidResponse", f"{self.where}: not credentials ({type(err).__name__})"
            ) from err
        until = f"{issued.expiry.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
        if issued.expiry.timestamp() <= time.time():
            raise CredentialsRefused(
                "CredentialsExpired",
                f"{self.where} issued credentials that expired at {until} by this "
                "device's clock: check the clock (NTP)",
            )
        log.info(
            "credentials for thing %s from role alias %s, valid until %s",
            self.identity.thing_name,
            self.identity.role_alias,
            until,
        )
        return issued


class CertificateProvider(CredentialProvider):  # type: ignore[misc]  # botocore is untyped
    """A botocore credential provider (the documented extension point of its resolver)
    that gives the one refreshable credentials object of the device certificate."""

    METHOD = "iot-certificate"
    CANONICAL_NAME = "custom-iot-certificate"

    def __init__(self, identity: AwsIdentity) -> None:
        super().__init__()
        self.endpoint = IotCredentialsEndpoint(identity)
        self._lock = threading.Lock()
        self._credentials: RefreshableCredentials | None = None
        self._advisory_s = float(BOTOCORE_ADVISORY_S)
        self._mandatory_s = float(BOTOCORE_MANDATORY_S)
        self._expiry: float | None = None  # of the latest credentials, epoch seconds
        _quiet_botocore_refresh_failures()

    def load(self) -> RefreshableCredentials:
        """The credentials (fetched the first time; raises the agent's error if that
        fails, and the next call tries again)."""
        with self._lock:
            if self._credentials is None:
                first = self._refresh()
                self._credentials = RefreshableCredentials.create_from_metadata(
                    first,
                    refresh_using=self._refresh,
                    method=self.METHOD,
                    advisory_timeout=self._advisory_s,
                    mandatory_timeout=self._mandatory_s,
                )
            return self._credentials

    @property
    def renew_at(self) -> float | None:
        """When (epoch seconds) the current credentials enter botocore's refresh window:
        something signed once for a long time (a PutMedia connection) should be signed
        again after this. None before the first fetch."""
        return None if self._expiry is None else self._expiry - self._advisory_s

    def _refresh(self) -> dict[str, Any]:
        issued = self.endpoint.fetch()
        self._expiry = issued.expiry.timestamp()
        # The leads follow each issue's lifetime: a role alias's duration may be cut
        # while the agent runs, and leads longer than the lifetime would refresh at
        # every signing. botocore takes them only at construction (no public setter).
        self._advisory_s, self._mandatory_s = refresh_leads(self._expiry - time.time())
        if self._credentials is not None:
            self._credentials._advisory_refresh_timeout = self._advisory_s
            self._credentials._mandatory_refresh_timeout = self._mandatory_s
        return {
            "access_key": issued.access_key,
            "secret_key": issued.secret_key,
            "token": issued.token,
            "expiry_time": issued.expiry.isoformat(),
        }


class _OwnErrorsReported(logging.Filter):
    """botocore logs each failed refresh with its traceback; the sinks report the
    agent's own errors (with the reason) themselves, once, not at every probe."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, SinkError)


_FILTER = _OwnErrorsReported()


def _quiet_botocore_refresh_failures() -> None:
    logger = logging.getLogger("botocore.credentials")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
