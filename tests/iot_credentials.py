"""Loopback stand-ins for the credential services a device meets, and a proxy that shows
which access key signed each request.

    IotCredentialsServer   the AWS IoT credentials provider: mutual TLS with a test CA,
                           GET /role-aliases/<alias>/credentials, the documented answer
    TokenExchangeServer    Greengrass's token exchange service (the container provider
                           shape: Authorization token in, AccessKeyId/... out)
    SigningProxy           HTTP between the agent and kinesalite: records the access key
                           id of every request's SigV4 Authorization header
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support import JsonHandler

_CREDENTIAL = re.compile(r"Credential=([^/]+)/")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class IotCredentialsServer(_Server):
    """The credentials provider on 127.0.0.1: it trusts device certificates of
    ``certificates["ca"]`` and answers with its own server certificate. ``refuse`` (an
    HTTP status) makes it answer as for a revoked certificate; each issue is recorded
    (thing-name header, client certificate's CN, the key id, when, expiry) and handed to
    ``on_issue``."""

    def __init__(self, certificates: dict[str, Path], *, lifetime: float = 3600.0) -> None:
        super().__init__(("127.0.0.1", 0), _IotHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certificates["server"]), str(certificates["server_key"]))
        context.load_verify_locations(cafile=str(certificates["ca"]))
        context.verify_mode = ssl.CERT_REQUIRED
        self.context = context
        self.lifetime = lifetime
        self.refuse: int | None = None
        #: (path, thing-name header, client CN, access key id or None, time, expiry).
        self.requests: list[tuple[str, str | None, str, str | None, float, float]] = []
        self.handshake_failures: list[str] = []
        self.on_issue: Callable[[str, str, str], None] = lambda key, secret, token: None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_port}"

    @property
    def issued(self) -> list[str]:
        return [key for _, _, _, key, _, _ in self.requests if key is not None]

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            wrapped = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            self.handshake_failures.append(str(err))
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


class _IotHandler(JsonHandler):
    server: IotCredentialsServer

    def do_GET(self) -> None:
        server = self.server
        certificate = self.request.getpeercert() or {}
        subject = dict(item[0] for item in certificate.get("subject", ()))
        thing = self.headers.get("x-amzn-iot-thingname")
        now = time.time()
        if server.refuse is not None:
            server.requests.append((self.path, thing, subject.get("commonName", ""), None, now, 0))
            self.answer(server.refuse, {"message": "Access Denied"})
            return
        number = len(server.issued)
        key, secret, token = f"ASIAIOT{number:04d}", f"iot-secret-{number}", f"iot-token-{number}"
        expiry = datetime.now(UTC) + timedelta(seconds=server.lifetime)
        server.on_issue(key, secret, token)
        server.requests.append(
            (self.path, thing, subject.get("commonName", ""), key, now, expiry.timestamp())
        )
        self.answer(
            200,
            {
                "credentials": {
                    "accessKeyId": key,
                    "secretAccessKey": secret,
                    "sessionToken": token,
                    "expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            },
        )


class TokenExchangeServer(_Server):
    """Greengrass's token exchange service on 127.0.0.1 (plain HTTP, as on the device):
    it answers only requests carrying ``token`` in Authorization."""

    def __init__(self, token: str, key: str) -> None:
        super().__init__(("127.0.0.1", 0), _TokenExchangeHandler)
        self.token, self.key = token, key
        self.authorizations: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/2016-11-01/credentialprovider/"


class _TokenExchangeHandler(JsonHandler):
    server: TokenExchangeServer

    def do_GET(self) -> None:
        given = self.headers.get("Authorization")
        self.server.authorizations.append(given)
        if given != self.server.token:
            self.answer(401, {"message": "not authorized"})
            return
        expiry = datetime.now(UTC) + timedelta(hours=1)
        self.answer(
            200,
            {
                "AccessKeyId": self.server.key,
                "SecretAccessKey": "tes-secret",
                "Token": "tes-token",
                "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        )


class SigningProxy(_Server):
    """Forwards POSTs to ``target_port`` and keeps the access key id each was signed
    with (kinesalite does not check signatures)."""

    def __init__(self, target_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.target_port = target_port
        self.signed_with: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _ProxyHandler(JsonHandler):
    server: SigningProxy
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        match = _CREDENTIAL.search(self.headers.get("Authorization", ""))
        self.server.signed_with.append(match.group(1) if match else "")
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.target_port, timeout=30)
        try:
            headers = {name: value for name, value in self.headers.items()}
            upstream.request("POST", self.path, body=body, headers=headers)
            response = upstream.getresponse()
            answer = response.read()
        finally:
            upstream.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
