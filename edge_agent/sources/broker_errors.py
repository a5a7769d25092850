"""Why a connection to the MQTT broker failed, in words an operator can act on: a
certificate that failed verification says why in OpenSSL's words, with what to check;
another TLS failure in its own words; anything else is a broker that cannot be reached.
"""

from __future__ import annotations

import ssl

_OTHER_CA = "is mqtt.tls.ca_file the CA that issued the broker's certificate?"
_OTHER_HOST = "the broker's certificate is not for mqtt.host"
#: What to check when the broker's certificate fails verification, by OpenSSL's
#: X509_V_ERR_* code (``verify_code``); OpenSSL's own words (``verify_message``) come first.
TLS_VERIFY_HINTS: dict[int, str] = {
    2: _OTHER_CA,  # unable to get issuer certificate
    9: "the broker's certificate is not valid yet, or this clock is behind",
    10: "the broker's certificate has expired, or this clock is ahead",
    18: "the broker's certificate is self-signed: name it as mqtt.tls.ca_file",
    19: _OTHER_CA,  # self-signed certificate in certificate chain
    20: _OTHER_CA,  # unable to get local issuer certificate
    21: _OTHER_CA,  # unable to verify the first certificate
    62: _OTHER_HOST,  # hostname mismatch
    64: _OTHER_HOST,  # IP address mismatch
}


def connect_failure(err: BaseException | None, host: str, port: int) -> tuple[str, str]:
    """The state and the message for a connect that failed with ``err``: a certificate
    that failed verification says why in OpenSSL's words (with a hint from
    ``TLS_VERIFY_HINTS``), another TLS failure in its own; anything else is a broker that
    cannot be reached (refused, timed out, no such host)."""
    broker = f"{host}:{port}"
    if isinstance(err, ssl.SSLCertVerificationError):
        why = (err.verify_message or err.reason or str(err)).rstrip(".")
        hint = TLS_VERIFY_HINTS.get(err.verify_code)
        detail = f"certificate verify failed: {why}" + (f" ({hint})" if hint else "")
        return "tls error", f"TLS to broker {broker} failed: {detail}"
    if isinstance(err, ssl.SSLError):
        return "tls error", f"TLS to broker {broker} failed: {err.reason or err}"
    if isinstance(err, OSError):
        why = err.strerror or str(err) or type(err).__name__
        return "disconnected", f"cannot reach broker {broker}: {why}"
    return "disconnected", f"cannot reach broker {broker}"
