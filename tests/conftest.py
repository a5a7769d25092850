from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.kvs_local.server import PutMediaServer
from tests.faulty_kinesis import FaultyKinesis
from tests.forwarding import Harness, MakeHarness
from tests.moto_server import MotoServer
from tests.putmedia_client import CREDENTIALS
from tests.support import AgentProcess, Kinesalite, Mosquitto


@pytest.fixture(autouse=True)
def no_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and no AWS config files: no test can reach a real account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto on a free loopback port, stopped after the test."""
    mosquitto = Mosquitto(tmp_path / "broker").start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agent processes started by a test; any still running are killed afterwards."""
    started: list[AgentProcess] = []
    try:
        yield started
    finally:
        for agent in started:
            agent.ensure_stopped()


@pytest.fixture(scope="session")
def kinesalite() -> Iterator[Kinesalite]:
    """One kinesalite for the session (streams are per test), stopped at the end."""
    server = Kinesalite().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def endpoint() -> Iterator[FaultyKinesis]:
    """Our fault-injecting Kinesis/Firehose endpoint on a free loopback port."""
    server = FaultyKinesis(seed=11).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def harnesses() -> Iterator[list[Harness]]:
    """Forwarding harnesses made by a test; closed (threads stopped) afterwards."""
    made: list[Harness] = []
    try:
        yield made
    finally:
        for harness in made:
            harness.close()


@pytest.fixture
def kinesis(endpoint: FaultyKinesis, tmp_path: Path, harnesses: list[Harness]) -> MakeHarness:
    """Makes Kinesis harnesses (spool + forwarder) against the fault-injecting endpoint."""

    def make(**options: Any) -> Harness:
        harness = Harness(endpoint, "kinesis", tmp_path, **options)
        harnesses.append(harness)
        return harness

    return make


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A moto server (S3, Firehose) for a test module; ``MotoServer.reset`` empties it."""
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PutMediaServer]:
    """kvs-local on a free loopback port with one stream, "cam" (tests/putmedia_client.py
    signs for it); a test module may have a server of its own."""
    endpoint = PutMediaServer(
        tmp_path / "received", credentials=CREDENTIALS, streams=["cam"], idle_timeout=5
    ).start()
    yield endpoint
    endpoint.stop()
