from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import AgentProcess, Kinesalite, Mosquitto


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
