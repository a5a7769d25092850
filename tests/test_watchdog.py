"""The main loop's watchdog pings: withheld, with the worker named, only when a worker
is really dead; never because one was looked at while it started."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.config.loading import load_config
from edge_agent.sdnotify import SystemdNotifier
from edge_agent.spool.store import Spool
from edge_agent.worker import ThreadWorker
from tests.support import wait_until


class Notifier(SystemdNotifier):
    """Counts watchdog pings (nothing listens on a socket here)."""

    def __init__(self) -> None:
        super().__init__({})
        self.pings = 0

    def watchdog(self) -> None:
        self.pings += 1


def test_a_worker_is_healthy_while_its_thread_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The main loop may look at a worker between the creation of its thread and the
    thread's start: it must not see a dead worker then."""
    worker = ThreadWorker()
    seen: list[bool] = []
    start = threading.Thread.start

    def start_looked_at(thread: threading.Thread) -> None:
        seen.append(worker.thread_ok)  # what the main loop would see right now
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_looked_at)
    release = threading.Event()

    def run() -> None:
        release.wait(5)

    worker._start_thread(run, "starting")
    assert seen == [True]
    assert worker.thread_ok
    release.set()
    worker.join(5)


def test_a_dead_worker_withholds_the_ping_and_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "edge-agent.toml"
    source.write_text(f'[agent]\nstate_dir = "{tmp_path}"\n[sinks.t]\ntype = "hold"\n')
    config = load_config(source)
    notifier = Notifier()
    agent = Agent(config, notifier)
    alive = {"sink t": True, "camera gate": False}
    agent._workers = lambda: list(alive.items())  # type: ignore[method-assign]
    with Spool.open(config.spool.path) as spool, caplog.at_level(logging.ERROR):
        ticks = threading.Thread(target=agent._loop, args=(spool,))
        ticks.start()
        try:
            wait_until(lambda: "camera gate is not alive" in caplog.text, 10, what="the error")
            assert "worker thread camera gate is not alive" in caplog.text
            assert notifier.pings == 0
            alive["camera gate"] = True
            wait_until(lambda: notifier.pings >= 1, 10, what="a ping once it is alive")
        finally:
            agent.request_stop()
            ticks.join(10)
