"""An unsynchronized clock at boot: records are marked, cameras wait, status says so."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from edge_agent.clock_sync import TIMESYNCD_FLAG, ClockSync
from tests.support import (
    AgentProcess,
    Mosquitto,
    cli,
    run_publisher,
    spool_path,
    start_agent,
    wait_until,
    write_config,
)


class Answers:
    """A stand-in for timedated's answer, and how often it was asked."""

    def __init__(self, answer: bool | None) -> None:
        self.answer = answer
        self.asked = 0

    def __call__(self) -> bool | None:
        self.asked += 1
        return self.answer


def test_timesyncds_flag_file_means_synchronized(tmp_path: Path) -> None:
    flag = tmp_path / "timesync" / "synchronized"
    flag.parent.mkdir()
    asked = Answers(False)
    sync = ClockSync(flag=flag, timedated=asked)
    assert sync.state == "unsynchronized" and not sync.synchronized
    flag.touch()
    assert sync.check() == "synchronized" and sync.synchronized


def test_timedated_is_asked_at_most_every_few_seconds(tmp_path: Path) -> None:
    now = [100.0]
    asked = Answers(False)
    sync = ClockSync(flag=tmp_path / "absent", timedated=asked, clock=lambda: now[0])
    assert sync.state == "unsynchronized" and asked.asked == 1
    sync.check()
    assert asked.asked == 1, "asked again too soon"
    asked.answer, now[0] = True, 106.0
    assert sync.check() == "synchronized" and asked.asked == 2
    now[0] = 200.0
    sync.check()
    assert asked.asked == 2, "a synchronized clock is not asked about again"


def test_without_any_way_to_ask_the_clock_is_trusted(tmp_path: Path) -> None:
    sync = ClockSync(flag=tmp_path / "no-timesyncd" / "synchronized", timedated=Answers(None))
    assert sync.state == "unknown" and sync.synchronized
    assert sync.mark('{"topic": "t"}') == '{"topic": "t"}'


def test_where_timesyncd_runs_no_flag_means_unsynchronized(tmp_path: Path) -> None:
    (tmp_path / "timesync").mkdir()
    sync = ClockSync(flag=tmp_path / "timesync" / "synchronized", timedated=Answers(None))
    assert sync.state == "unsynchronized"
    assert json.loads(sync.mark('{"topic": "t"}')) == {"topic": "t", "clock": "unsynchronized"}
    assert sync.marked == 1


def test_switched_off_it_asks_nothing(tmp_path: Path) -> None:
    asked = Answers(False)
    sync = ClockSync(enabled=False, flag=tmp_path / "x", timedated=asked)
    assert sync.synchronized and asked.asked == 0


def test_switched_off_by_a_reload_it_trusts_the_clock_from_then_on(tmp_path: Path) -> None:
    sync = ClockSync(flag=tmp_path / "absent", timedated=Answers(False))
    assert sync.state == "unsynchronized"
    sync.set_enabled(False)
    assert sync.synchronized and sync.mark("{}") == "{}"


def fake_timedatectl(directory: Path, answer: str) -> Path:
    """A ``timedatectl`` on PATH answering NTPSynchronized from a file the test writes."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "timedatectl"
    script.write_text(f'#!/bin/sh\ncat "{directory / "answer"}"\n')
    script.chmod(0o755)
    (directory / "answer").write_text(answer + "\n")
    return bin_dir


def spooled_meta(path: Path, queue: str) -> list[dict[str, object]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT r.meta FROM records r JOIN queues q ON q.id = r.queue_id WHERE q.name = ?"
            " ORDER BY r.id",
            (queue,),
        ).fetchall()
    return [json.loads(meta) for (meta,) in rows]


@pytest.mark.skipif(TIMESYNCD_FLAG.exists(), reason="this machine's clock is synchronized")
def test_records_before_the_clock_is_synchronized_are_marked_and_cameras_wait(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    bin_dir = fake_timedatectl(tmp_path, "no")
    sinks = (
        '[sinks.telemetry]\ntype = "hold"\n'
        '[sinks.video]\ntype = "hold"\nmax_record_bytes = "8MiB"\n'
        '[cameras.pattern]\nsource = "lavfi"\nurl = "testsrc2=size=160x120:rate=15"\n'
        'sink = "video"\nfragment = "1s"\n'
    )
    config = write_config(tmp_path, broker.port, sinks=sinks, agent_extra='clock_wait = "5m"')
    agent = AgentProcess(config, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}).start()
    agents.append(agent)
    agent.wait_connected()
    wait_until(
        lambda: agent.status()["cameras"]["pattern"]["state"] == "waiting for the clock",
        20,
        what="the camera to wait",
    )
    run_publisher(broker.port, 5)
    path = spool_path(tmp_path)
    wait_until(lambda: len(spooled_meta(path, "telemetry")) == 5, 20, what="5 readings")
    assert all(meta["clock"] == "unsynchronized" for meta in spooled_meta(path, "telemetry"))
    text = cli("status", "-c", str(config), check=False).stdout
    assert "CLOCK NOT SYNCHRONIZED" in text and "5 records marked" in text

    (tmp_path / "answer").write_text("yes\n")
    wait_until(lambda: agent.status()["clock"]["state"] == "synchronized", 20, what="sync")
    wait_until(lambda: len(spooled_meta(path, "video")) >= 2, 30, what="fragments")
    assert all("clock" not in meta for meta in spooled_meta(path, "video"))
    run_publisher(broker.port, 5, start_seq=5)
    wait_until(lambda: len(spooled_meta(path, "telemetry")) == 10, 20, what="5 more readings")
    assert all("clock" not in meta for meta in spooled_meta(path, "telemetry")[5:])
    assert agent.terminate() == 0


def test_the_agent_reports_the_clock_in_status(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    config = write_config(tmp_path, broker.port, agent_extra="clock_check = false")
    agent = start_agent(config, agents)
    agent.wait_connected()
    assert agent.status()["clock"] == {
        "state": "unknown",
        "since": agent.status()["clock"]["since"],
        "marked": 0,
    }
    assert agent.terminate() == 0
