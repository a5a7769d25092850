"""TLS to the broker: a certificate that fails verification is reported as what it is, in
OpenSSL's words (not as a broker that cannot be reached), and retried until the broker
presents one the agent trusts. A real Mosquitto with a TLS listener on 127.0.0.1 only,
certificates made by throw-away CAs with the openssl command."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.sources.broker_errors import connect_failure
from tests.support import (
    AgentProcess,
    Mosquitto,
    cli,
    free_port,
    make_certificates,
    start_agent,
    tls_listener,
    wait_until,
    write_config,
)


@dataclass
class TlsBroker:
    broker: Mosquitto
    port: int  # the TLS listener's
    served: dict[str, Path]  # the files the listener reads (replaced to fix it)

    def serve(self, certificates: dict[str, Path]) -> None:
        """Present another server certificate (a broker whose certificate was fixed)."""
        for name in ("ca", "server", "server_key"):
            shutil.copyfile(certificates[name], self.served[name])
        self.broker.restart()


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    """Mosquitto with a TLS listener whose certificate files are copies in its own
    directory; it starts out serving a certificate no test's CA trusts."""
    served_dir = tmp_path / "served"
    untrusted = make_certificates(tmp_path / "untrusted")
    served_dir.mkdir()
    served = {name: served_dir / f"{name}.pem" for name in ("ca", "server", "server_key")}
    for name, path in served.items():
        shutil.copyfile(untrusted[name], path)
    port = free_port()
    broker = Mosquitto(
        tmp_path / "broker", extra=tls_listener(port, served, client_certificate=False)
    ).start()
    try:
        yield TlsBroker(broker, port, served)
    finally:
        broker.stop()


def tls_agent(tmp_path: Path, port: int, ca_file: Path, agents: list[AgentProcess]) -> AgentProcess:
    config = write_config(tmp_path, port, mqtt_extra=f'[mqtt.tls]\nca_file = "{ca_file}"\n')
    return start_agent(config, agents, connected=False)


def reported_tls_error(agent: AgentProcess) -> str:
    """The MQTT source's last error once its state is "tls error" ("" before)."""
    mqtt = agent.mqtt_status()
    return str(mqtt.get("last_error") or "") if mqtt.get("state") == "tls error" else ""


def test_a_certificate_from_an_untrusted_ca_is_reported_as_such_and_retried_until_fixed(
    tmp_path: Path, tls_broker: TlsBroker, agents: list[AgentProcess]
) -> None:
    trusted = make_certificates(tmp_path / "trusted")
    agent = tls_agent(tmp_path, tls_broker.port, trusted["ca"], agents)
    wait_until(lambda: reported_tls_error(agent), 20, what="the TLS failure in status")
    error = reported_tls_error(agent)
    assert error.startswith(
        f"TLS to broker 127.0.0.1:{tls_broker.port} failed: certificate verify failed: "
    )
    # OpenSSL's words for a chain that ends in a CA not in ca_file (Mosquitto sends its CA
    # along, or only its own certificate).
    assert (
        "self-signed certificate in certificate chain" in error
        or "unable to get local issuer certificate" in error
    )
    assert "is mqtt.tls.ca_file the CA that issued the broker's certificate?" in error
    assert "cannot reach" not in error
    assert "certificate verify failed" in agent.log_text()
    status = cli("status", "-c", str(agent.config)).stdout
    assert "mqtt: tls error since" in status and "certificate verify failed" in status

    tls_broker.serve(trusted)  # the broker gets a certificate the agent trusts
    agent.wait_connected(30)  # retried all along: no restart of the agent needed
    assert agent.terminate() == 0


def test_a_certificate_for_another_host_is_reported_as_such(
    tmp_path: Path, tls_broker: TlsBroker, agents: list[AgentProcess]
) -> None:
    elsewhere = make_certificates(tmp_path / "elsewhere", server_names="DNS:broker.invalid")
    tls_broker.serve(elsewhere)
    agent = tls_agent(tmp_path, tls_broker.port, elsewhere["ca"], agents)
    wait_until(lambda: reported_tls_error(agent), 20, what="the TLS failure in status")
    error = reported_tls_error(agent)
    assert "certificate verify failed: IP address mismatch" in error
    assert "certificate is not valid for '127.0.0.1'" in error
    assert "the broker's certificate is not for mqtt.host" in error
    assert agent.terminate() == 0


def test_an_expired_certificate_and_an_unreachable_broker_are_told_apart() -> None:
    expired = ssl.SSLCertVerificationError(1, "certificate verify failed")
    expired.verify_code, expired.verify_message = 10, "certificate has expired"
    state, message = connect_failure(expired, "broker.lan", 8883)
    assert state == "tls error"
    assert message == (
        "TLS to broker broker.lan:8883 failed: certificate verify failed: certificate has "
        "expired (the broker's certificate has expired, or this clock is ahead)"
    )
    state, message = connect_failure(ConnectionRefusedError(111, "Connection refused"), "b", 1)
    assert (state, message) == ("disconnected", "cannot reach broker b:1: Connection refused")
