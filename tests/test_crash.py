"""Crash without loss: SIGKILL the agent at random moments during intake."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from tests.support import (
    AgentProcess,
    Mosquitto,
    publish,
    spool_path,
    spooled_count,
    spooled_seqs,
    start_agent,
    wait_until,
    write_config,
)

TOTAL = 20_000
KILLS = 5
COMMIT_MAX_RECORDS = 1000


def redelivered_count(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT sum(redelivered_count) FROM queues").fetchone()[0] or 0)
    finally:
        conn.close()


@pytest.mark.slow
def test_sigkill_during_intake_loses_nothing_and_bounds_duplicates(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    seed = random.randrange(1 << 32)
    chance = random.Random(seed)
    config = write_config(
        tmp_path, broker.port, spool=f"commit_max_records = {COMMIT_MAX_RECORDS}\n"
    )
    path = spool_path(tmp_path)
    agent = start_agent(config, agents)
    publisher = publish(broker.port, TOTAL, extra=("--rate", "3000"))
    try:
        for _ in range(KILLS):
            # Let the agent take some messages, then kill it at a random moment.
            target = spooled_count(path) + chance.randrange(1, 1500)

            def reached(target: int = target) -> bool:
                return spooled_count(path) >= target or publisher.poll() is not None

            wait_until(reached, 30, 0.005, "more intake")
            agent.kill()
            agent = start_agent(config, agents, connected=False)
        _, err = publisher.communicate(timeout=120)
        assert publisher.returncode == 0, err.decode()
        wait_until(lambda: set(range(TOTAL)) <= set(spooled_seqs(path)), 120, 0.1, "all messages")
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait(10)
    assert agent.terminate() == 0
    seqs = spooled_seqs(path)
    duplicates = len(seqs) - TOTAL
    counts = Counter(seqs)
    assert set(counts) == set(range(TOTAL)), f"seed {seed}: lost messages"
    assert duplicates <= KILLS * COMMIT_MAX_RECORDS, f"seed {seed}: {duplicates} duplicates"
    # Every duplicate came back flagged as a redelivery, and status counts those.
    assert redelivered_count(path) >= duplicates
    print(f"seed {seed}: {TOTAL} messages, {KILLS} kills, {duplicates} duplicates")
