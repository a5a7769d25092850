"""Log lines: the journal's priority prefix when stderr really is the journal's stream,
one line per event (tracebacks included), JSON lines, and plain text otherwise.

``edge-agent run`` runs as a process with ``$JOURNAL_STREAM`` set to the device and
inode of its real stderr (the file it writes to), as systemd sets it; the levels and
tracebacks the running agent does not produce on demand come from a small process that
logs through the same setup into a real pipe. No journalctl needed."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent import logs
from tests.support import REPO, AgentProcess, Mosquitto, free_port, wait_until, write_config

TIME_STAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")
PRIORITY = re.compile(r"^<([0-7])>")
ISO_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

#: Logs one record per level, a two-line message, a traceback and an extra field.
LOGGING_PROCESS = """
import logging, sys
from edge_agent import logs
logs.configure("debug", sys.argv[1])
log = logging.getLogger("edge_agent.example")
log.debug("debug line")
log.info("info line")
log.warning("warning line")
log.error("error line")
log.critical("critical line")
log.info("first line\\nsecond line")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("it failed", extra={"sink": "telemetry"})
logging.getLogger("botocore.endpoint").debug("a signed request")
"""


def stream_id(path: Path) -> str:
    """``$JOURNAL_STREAM`` for a file: its device and inode, as systemd writes them."""
    status = path.stat()
    return f"{status.st_dev}:{status.st_ino}"


def logging_process(log_format: str, *, journal: bool) -> list[str]:
    """Run LOGGING_PROCESS with its stderr a pipe (named in $JOURNAL_STREAM if
    ``journal``, else a stream id that does not match); its stderr lines."""
    read_end, write_end = os.pipe()
    status = os.fstat(write_end)
    env = {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
    if not journal:
        env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino + 1}"
    with open(read_end, "rb") as reader:
        process = subprocess.Popen(
            [sys.executable, "-c", LOGGING_PROCESS, log_format],
            stderr=write_end,
            env=env,
            cwd=REPO,
        )
        os.close(write_end)
        output = reader.read().decode()
    assert process.wait(30) == 0, output
    return output.splitlines()


def run_agent_until(
    tmp_path: Path,
    agents: list[AgentProcess],
    *,
    mqtt_port: int,
    journal_stream: str | None,
    condition: str,
    agent_extra: str = "",
) -> list[str]:
    """Run ``edge-agent run`` until its log shows ``condition`` (a regex), stop it, and
    return its log lines."""
    config = write_config(tmp_path, mqtt_port, agent_extra=agent_extra)
    log_file = config.parent / "agent.log"
    log_file.touch()
    env = {} if journal_stream is None else {"JOURNAL_STREAM": journal_stream}
    if journal_stream == "this file":
        env["JOURNAL_STREAM"] = stream_id(log_file)
    agent = AgentProcess(config, env=env).start()
    agents.append(agent)
    pattern = re.compile(condition, re.MULTILINE)
    wait_until(lambda: pattern.search(agent.log_text()), 20, what=f"{condition} in the log")
    assert agent.terminate() == 0
    return agent.log_text().splitlines()


def test_into_the_journal_lines_carry_their_priority_and_no_time_stamp(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    # No broker on the port: the agent warns that it cannot connect.
    lines = run_agent_until(
        tmp_path,
        agents,
        mqtt_port=free_port(),
        journal_stream="this file",
        condition=r"^<4>WARNING edge_agent\.sources\.mqtt: mqtt: ",
    )
    assert lines
    assert all(PRIORITY.match(line) for line in lines), lines
    assert not [line for line in lines if TIME_STAMP.search(line.split(">", 1)[1])]
    assert any(line.startswith("<6>INFO edge_agent.agent: ") for line in lines)


def test_a_journal_stream_that_is_not_stderr_leaves_plain_timed_text(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    elsewhere = tmp_path / "other-stream"
    elsewhere.touch()
    lines = run_agent_until(
        tmp_path,
        agents,
        mqtt_port=free_port(),
        journal_stream=stream_id(elsewhere),
        condition=r"WARNING edge_agent\.sources\.mqtt: mqtt: ",
    )
    assert lines
    assert all(TIME_STAMP.match(line) for line in lines), lines
    assert not [line for line in lines if PRIORITY.match(line)]


def test_json_format_writes_one_object_per_line(
    tmp_path: Path, agents: list[AgentProcess], broker: Mosquitto
) -> None:
    lines = run_agent_until(
        tmp_path,
        agents,
        mqtt_port=broker.port,
        journal_stream=None,
        condition=r'"message": "edge-agent \S+ running',
        agent_extra='log_format = "json"\n',
    )
    events = [json.loads(line) for line in lines]
    assert events
    for event in events:
        assert ISO_UTC_MS.match(event["time"]), event
        assert event["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert event["logger"].startswith("edge_agent")
        assert isinstance(event["message"], str)
    assert any(event["message"] == "stopped" for event in events)


def test_every_level_has_its_journal_priority_and_an_event_stays_one_line() -> None:
    lines = logging_process("text", journal=True)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>", "<6>", "<3>"]
    assert lines[0] == "<7>DEBUG edge_agent.example: debug line"
    assert lines[5] == "<6>INFO edge_agent.example: first line ⏎ second line"
    traceback = lines[6]
    assert traceback.startswith("<3>ERROR edge_agent.example: it failed ⏎ Traceback (most")
    assert ' ⏎   File "<string>", line ' in traceback
    assert traceback.endswith(" ⏎ ValueError: boom")


def test_a_traceback_is_one_json_record_with_the_extra_fields() -> None:
    lines = logging_process("json", journal=False)
    events = [json.loads(line) for line in lines]
    assert [event["level"] for event in events] == [
        "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "INFO", "ERROR",
    ]  # fmt: skip
    assert events[5]["message"] == "first line\nsecond line"
    failure = events[6]
    assert failure["message"] == "it failed"
    assert failure["sink"] == "telemetry"
    assert failure["logger"] == "edge_agent.example"
    assert failure["exception"].startswith("Traceback (most recent call last):\n")
    assert failure["exception"].endswith("ValueError: boom")
    assert all(ISO_UTC_MS.match(event["time"]) for event in events)


def test_json_into_the_journal_gets_the_priority_prefix_the_journal_strips() -> None:
    lines = logging_process("json", journal=True)
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>", "<6>", "<3>"]
    failure = json.loads(lines[6][3:])
    assert failure["exception"].endswith("ValueError: boom")


def test_plain_text_keeps_the_time_and_the_tracebacks_lines() -> None:
    lines = logging_process("text", journal=False)
    assert TIME_STAMP.match(lines[0]) and lines[0].endswith(" DEBUG edge_agent.example: debug line")
    assert "Traceback (most recent call last):" in lines
    assert lines[-1] == "ValueError: boom"


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, with the agent's handler taken off and the levels put back."""
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", *logs.QUIET_LIBRARIES)}
    try:
        yield root
    finally:
        for handler in [h for h in root.handlers if isinstance(h, logs._AgentHandler)]:
            root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_reconfiguring_changes_level_and_format_on_the_same_handler(
    root_logger: logging.Logger,
) -> None:
    logs.configure("debug", "text")
    logs.configure("warning", "json")
    handlers = [h for h in root_logger.handlers if isinstance(h, logs._AgentHandler)]
    assert len(handlers) == 1
    assert isinstance(handlers[0].formatter, logs.JsonFormatter)
    assert root_logger.level == logging.WARNING
    logs.configure("debug", "text")
    # Credential-carrying libraries stay at INFO even when the agent logs at DEBUG.
    assert all(logging.getLogger(name).level == logging.INFO for name in logs.QUIET_LIBRARIES)


@pytest.mark.parametrize("value", ["", "12", "x:y", "1:2:3", ":", "-1:"])
def test_a_malformed_journal_stream_is_not_the_journal(value: str) -> None:
    assert not logs.stderr_is_journal({"JOURNAL_STREAM": value})


def test_levels_between_the_standard_ones_take_the_priority_below() -> None:
    assert logs.journal_priority(logging.WARNING + 5) == 4
    assert logs.journal_priority(5) == 7
    assert logs.journal_priority(logging.CRITICAL + 10) == 2
