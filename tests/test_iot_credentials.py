"""The device's identity by X.509 certificate (``[aws] credentials = "iot"``): the
config section's problems, the credentials provider's answers and failures against a
loopback mutual-TLS server, the agent forwarding with those credentials (kinesalite,
kvs-local), renewal during a PutMedia session, and Greengrass's token exchange service
through the default chain."""

from __future__ import annotations

import http.client
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.credentials import Credentials

from edge_agent.config.loading import parse_config
from edge_agent.credentials.iot import CertificateProvider, IotCredentialsEndpoint, refresh_leads
from edge_agent.credentials.shared import shared_session
from edge_agent.errors import ConfigError, CredentialsRefused, SinkUnavailable
from edge_agent.kvs_local.server import PutMediaServer
from tests.iot_credentials import IotCredentialsServer, SigningProxy, TokenExchangeServer
from tests.kinesis_streams import make_stream, read_stream
from tests.support import (
    AgentProcess,
    Kinesalite,
    Mosquitto,
    free_port,
    make_certificates,
    run_publisher,
    spool_path,
    spooled_count,
    start_agent,
    wait_until,
    write_config,
)
from tests.test_kvs_uploader import make, run_until


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    """A test CA, the endpoint's certificate (127.0.0.1) and a device certificate."""
    return make_certificates(tmp_path / "pki")


@pytest.fixture
def provider(certificates: dict[str, Path]) -> Iterator[IotCredentialsServer]:
    server = IotCredentialsServer(certificates)
    server.start()
    yield server
    server.stop()


def iot_section(
    certificates: dict[str, Path], url: str, *, cert: str = "client", **extra: str
) -> dict[str, str]:
    return {
        "credentials": "iot",
        "endpoint": url,
        "role_alias": "edge-agent-role",
        "thing_name": "gateway-7",
        "cert": str(certificates[cert]),
        "key": str(certificates[f"{cert}_key"]),
        "ca": str(certificates["ca"]),
        **extra,
    }


def identity(section: dict[str, str]) -> Any:
    return parse_config({"aws": section}).aws


# ---------------------------------------------------------------------- config


def problems(document: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(document)
    return {problem.key: problem.reason for problem in raised.value.problems}


def test_iot_credentials_need_endpoint_role_alias_cert_and_key() -> None:
    found = problems({"aws": {"credentials": "iot"}})
    assert found == {
        f"aws.{name}": 'is required with credentials = "iot"'
        for name in ("endpoint", "role_alias", "cert", "key")
    }


def test_unreadable_or_mismatched_certificate_files_are_config_problems(
    certificates: dict[str, Path], tmp_path: Path
) -> None:
    missing = iot_section(certificates, "https://127.0.0.1:1", key=str(tmp_path / "nope.key"))
    assert problems({"aws": missing}) == {
        "aws.key": f"cannot read {tmp_path / 'nope.key'}: No such file or directory"
    }
    crossed = iot_section(certificates, "https://127.0.0.1:1", key=str(certificates["ca_key"]))
    (reason,) = problems({"aws": crossed}).values()
    assert "do not load together" in reason and str(certificates["client"]) in reason


def test_a_sink_profile_or_a_data_endpoint_do_not_go_with_iot(
    certificates: dict[str, Path],
) -> None:
    sink = {"type": "kinesis", "stream": "s", "region": "us-east-1", "profile": "dev"}
    section = iot_section(certificates, "abc123-ats.iot.eu-west-1.amazonaws.com")
    found = problems({"aws": section, "sinks": {"telemetry": sink}})
    assert set(found) == {"aws.endpoint", "sinks.telemetry.profile"}
    assert "iot:CredentialProvider" in found["aws.endpoint"]
    assert "not with [aws]" in found["sinks.telemetry.profile"]


def test_iot_keys_without_iot_credentials_and_a_bad_default_thing_name(
    certificates: dict[str, Path],
) -> None:
    assert problems({"aws": {"role_alias": "r"}}) == {
        "aws.role_alias": 'is used only with credentials = "iot"'
    }
    section = iot_section(certificates, "https://127.0.0.1:1")
    del section["thing_name"]
    found = problems({"agent": {"device_name": "gate way"}, "aws": section})
    assert list(found) == ["aws.thing_name"]


def test_every_aws_sink_gets_the_identity_and_thing_name_defaults_to_the_device(
    certificates: dict[str, Path],
) -> None:
    section = iot_section(certificates, "x.credentials.iot.eu-west-1.amazonaws.com")
    del section["thing_name"]
    config = parse_config(
        {
            "agent": {"device_name": "gateway-9"},
            "aws": section,
            "sinks": {
                "t": {"type": "kinesis", "stream": "s", "region": "eu-west-1"},
                "v": {"type": "kvs", "stream": "cam", "region": "eu-west-1"},
            },
        }
    )
    assert config.aws.thing_name == "gateway-9"
    assert {sink.aws.identity for sink in config.sinks.values() if sink.aws} == {config.aws}


# ---------------------------------------------------------------------- the provider


def test_refresh_leads_are_botocores_for_an_hour_and_proportional_below() -> None:
    assert refresh_leads(3600) == (900, 600)
    assert refresh_leads(12 * 3600) == (900, 600)
    assert refresh_leads(900) == (225, 150)
    advisory, mandatory = refresh_leads(4)
    assert advisory == pytest.approx(1.0) and mandatory == pytest.approx(4 / 6)


def test_the_refresh_leads_follow_each_issues_lifetime(
    certificates: dict[str, Path], provider: IotCredentialsServer
) -> None:
    """A role alias's duration cut while the agent runs: the leads shrink with it, so
    botocore does not refresh at every signing."""
    certificate = CertificateProvider(identity(iot_section(certificates, provider.url)))
    credentials = certificate.load()
    assert credentials._advisory_refresh_timeout == pytest.approx(refresh_leads(3600)[0], abs=1)
    provider.lifetime = 900.0
    credentials.get_frozen_credentials()  # not due yet: the first lifetime's leads hold
    assert len(provider.issued) == 1
    credentials._refresh_using()  # what botocore calls once it is due
    assert credentials._advisory_refresh_timeout == pytest.approx(225, abs=1)
    assert credentials._mandatory_refresh_timeout == pytest.approx(150, abs=1)


def test_the_provider_is_asked_with_the_thing_name_and_the_device_certificate(
    certificates: dict[str, Path], provider: IotCredentialsServer
) -> None:
    issued = IotCredentialsEndpoint(identity(iot_section(certificates, provider.url))).fetch()
    assert issued.access_key == "ASIAIOT0000" and issued.token == "iot-token-0"
    ((path, thing, subject, *_),) = provider.requests
    assert path == "/role-aliases/edge-agent-role/credentials"
    assert (thing, subject) == ("gateway-7", "edge-agent-test")


def test_a_refused_certificate_names_thing_and_alias(
    certificates: dict[str, Path], provider: IotCredentialsServer
) -> None:
    provider.refuse = 403
    endpoint = IotCredentialsEndpoint(identity(iot_section(certificates, provider.url)))
    with pytest.raises(CredentialsRefused) as raised:
        endpoint.fetch()
    assert not raised.value.retryable
    assert "HTTP 403 Access Denied" in str(raised.value)
    assert "'edge-agent-role'" in str(raised.value) and "'gateway-7'" in str(raised.value)


def test_a_certificate_of_an_unknown_ca_fails_the_handshake_with_a_clear_reason(
    certificates: dict[str, Path], provider: IotCredentialsServer, tmp_path: Path
) -> None:
    stranger = make_certificates(tmp_path / "other-pki")
    section = iot_section(stranger, provider.url)
    section["ca"] = str(certificates["ca"])  # trusts the endpoint; the endpoint does not
    with pytest.raises(CredentialsRefused) as raised:
        IotCredentialsEndpoint(identity(section)).fetch()
    assert raised.value.code == "TlsHandshakeFailed"
    assert "TLS with the credentials endpoint 127.0.0.1" in str(raised.value)
    assert "the endpoint refused the certificate" in str(raised.value)
    assert provider.issued == []


def test_a_refusal_that_lands_while_the_request_is_being_sent_keeps_its_reason(
    certificates: dict[str, Path],
    provider: IotCredentialsServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TLS 1.3: the endpoint checks the device certificate after the device's handshake is
    done, so its alert and close can come before the device writes the request. The
    write then fails on the closed connection; the refusal is still a refusal, with its
    reason. (The device's connect is held until the endpoint has refused, which makes the
    order certain; everything else is the real TLS on both sides.)"""
    stranger = make_certificates(tmp_path / "other-pki")
    section = iot_section(stranger, provider.url)
    section["ca"] = str(certificates["ca"])
    connect = http.client.HTTPSConnection.connect

    def connect_then_wait_for_the_refusal(connection: http.client.HTTPSConnection) -> None:
        refusals = len(provider.handshake_failures)
        connect(connection)
        wait_until(lambda: len(provider.handshake_failures) > refusals, timeout=10)

    monkeypatch.setattr(http.client.HTTPSConnection, "connect", connect_then_wait_for_the_refusal)
    for _ in range(3):
        with pytest.raises(CredentialsRefused) as raised:
            IotCredentialsEndpoint(identity(section)).fetch()
        assert raised.value.code == "TlsHandshakeFailed"
        assert "the endpoint refused the certificate" in str(raised.value)
    assert provider.issued == []


def test_an_endpoint_the_ca_does_not_vouch_for_is_refused(
    certificates: dict[str, Path], provider: IotCredentialsServer, tmp_path: Path
) -> None:
    section = iot_section(certificates, provider.url)
    section["ca"] = str(make_certificates(tmp_path / "other-pki")["ca"])
    with pytest.raises(CredentialsRefused) as raised:
        IotCredentialsEndpoint(identity(section)).fetch()
    assert "the endpoint's certificate is not trusted" in str(raised.value)


def test_an_unreachable_endpoint_is_a_network_fault(certificates: dict[str, Path]) -> None:
    section = iot_section(certificates, f"https://127.0.0.1:{free_port()}")
    with pytest.raises(SinkUnavailable) as raised:
        IotCredentialsEndpoint(identity(section)).fetch()
    assert raised.value.code == "ConnectionRefused" and raised.value.unreachable


def test_every_sink_shares_one_credentials_object(
    certificates: dict[str, Path], provider: IotCredentialsServer
) -> None:
    aws = identity(iot_section(certificates, provider.url))
    first, second = shared_session(aws), shared_session(aws)
    assert first is second
    assert first.credentials().access_key == second.credentials().access_key == "ASIAIOT0000"
    assert len(provider.issued) == 1


# ---------------------------------------------------------------------- the agent


def sinks_toml(section: dict[str, str], sinks: str) -> str:
    aws = "".join(f'{key} = "{value}"\n' for key, value in section.items())
    return f"[aws]\n{aws}\n{sinks}"


def kinesis_sink(stream: str, url: str) -> str:
    return (
        f'[sinks.telemetry]\ntype = "kinesis"\nstream = "{stream}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{url}"\nretry_min = "50ms"\nretry_max = "500ms"\n'
        'pause_probe = "1s"\nlinger = "0s"\n'
    )


@pytest.fixture
def proxy(kinesalite: Kinesalite) -> Iterator[SigningProxy]:
    server = SigningProxy(kinesalite.port)
    server.start()
    yield server
    server.stop()


def test_a_revoked_certificate_pauses_from_the_start_keeps_records_and_resumes(  # noqa: PLR0917
    tmp_path: Path,
    broker: Mosquitto,
    agents: list[AgentProcess],
    kinesalite: Kinesalite,
    proxy: SigningProxy,
    certificates: dict[str, Path],
    provider: IotCredentialsServer,
) -> None:
    """The provider refuses the certificate (403): the sink shows paused with the reason
    as soon as the agent runs, before any record; records are kept; once the provider
    answers again the sink delivers all of them, signed with the key it issued, asked
    with the thing name and the device certificate."""
    client = kinesalite.client()
    stream = make_stream(client, 1)
    provider.refuse = 403
    section = iot_section(certificates, provider.url)
    config = write_config(
        tmp_path, broker.port, sinks=sinks_toml(section, kinesis_sink(stream, proxy.url))
    )
    agent = start_agent(config, agents)
    wait_until(lambda: agent.sink_status("telemetry").get("state") == "paused", 20)
    assert "CertificateRefused" in agent.sink_status("telemetry")["reason"]
    assert "HTTP 403" in agent.sink_status("telemetry")["reason"]
    run_publisher(broker.port, 50)
    wait_until(lambda: spooled_count(spool_path(tmp_path), "telemetry") == 50, 20)
    assert agent.sink_status("telemetry")["state"] == "paused" and proxy.signed_with == []
    provider.refuse = None
    wait_until(lambda: spooled_count(spool_path(tmp_path), "telemetry") == 0, 30)
    assert len(read_stream(client, stream)) == 50
    assert set(proxy.signed_with) == set(provider.issued) == {"ASIAIOT0000"}
    assert {(thing, subject) for _, thing, subject, *_ in provider.requests} == {
        ("gateway-7", "edge-agent-test")
    }
    assert "iot-secret" not in agent.log_text() and "iot-token" not in agent.log_text()
    assert agent.terminate() == 0
    client.close()


def test_greengrass_token_exchange_service_through_the_default_chain(  # noqa: PLR0917
    tmp_path: Path,
    broker: Mosquitto,
    agents: list[AgentProcess],
    kinesalite: Kinesalite,
    proxy: SigningProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Greengrass hands a component AWS_CONTAINER_CREDENTIALS_FULL_URI and
    AWS_CONTAINER_AUTHORIZATION_TOKEN; the default chain's container provider fetches
    with the token, and the agent signs with what it got."""
    tes = TokenExchangeServer("tes-authorization-token", "ASIATES0001")
    tes.start()
    try:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", tes.url)
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "tes-authorization-token")
        client = kinesalite.client()
        stream = make_stream(client, 1)
        config = write_config(tmp_path, broker.port, sinks=kinesis_sink(stream, proxy.url))
        agent = start_agent(config, agents)
        run_publisher(broker.port, 20)
        wait_until(lambda: len(read_stream(client, stream)) == 20, 30)
        assert set(proxy.signed_with) == {"ASIATES0001"}
        assert set(tes.authorizations) == {"tes-authorization-token"}
        assert agent.terminate() == 0
        client.close()
    finally:
        tes.stop()


def test_putmedia_sessions_are_signed_with_credentials_renewed_before_they_expire(
    tmp_path: Path, certificates: dict[str, Path]
) -> None:
    """Credentials that live 4 s: the uploader ends its PutMedia connection when they
    are due for renewal, the provider is asked again before they expire, and the next
    connection is signed with the new key; every fragment sent is acknowledged."""
    provider = IotCredentialsServer(certificates, lifetime=4.0)
    server = PutMediaServer(tmp_path / "received", credentials=[], streams=["cam"])
    provider.on_issue = lambda key, secret, token: server.credentials.append(  # type: ignore[union-attr]
        Credentials(key, secret, token)
    )
    provider.start()
    server.start()
    try:
        parts = make(server, tmp_path, realtime=True, aws=iot_section(certificates, provider.url))
        spool, _, uploader, _ = parts
        with spool:
            run_until(
                parts,
                lambda: len(provider.issued) >= 3 and uploader.stats.connections >= 3,
                "three issues and three connections",
            )
            dead = spool.dead_letters(limit=10)
    finally:
        server.stop()
        provider.stop()
    assert dead == [] and uploader.stats.dead_lettered == 0
    assert uploader.stats.fragments_acked == uploader.stats.fragments_sent
    issues = [(key, at, expiry) for _, _, _, key, at, expiry in provider.requests if key]
    for (_, _, expiry), (_, at, _) in itertools.pairwise(issues):
        assert at < expiry, "asked again before the credentials expired"
    used = [key for path, key in server.signed_with if path == "/putMedia"]
    assert len(set(used)) >= 2 and set(used) <= set(provider.issued)
    assert used == sorted(used), "each connection signed with the newest key"
