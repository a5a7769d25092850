"""The ``[agent]`` and ``[spool]`` sections: the device, its state and the spool file."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from edge_agent.config.options import (
    BOOLEAN,
    DURATION,
    PATH,
    SIZE,
    STRING,
    Table,
    choice,
    integer,
    off,
    option,
    read_section,
    section,
    within,
)

DEFAULT_STATE_DIR = "/var/lib/edge-agent"

Durability = Literal["full", "normal"]
IntegrityCheck = Literal["quick", "full", "off"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]


@section
class AgentConfig:
    """The device and where the agent keeps its state."""

    device_name: str = option(
        kind=STRING,
        default_factory=socket.gethostname,
        default_doc="the host name",
        doc="Name of this device; usable in partition keys as {device}.",
    )
    state_dir: Path = option(
        kind=PATH,
        default=Path(DEFAULT_STATE_DIR),
        doc="Where the spool and the runtime status file live (systemd's StateDirectory).",
    )
    status_dir: Path | None = option(
        kind=PATH,
        default=None,
        default_doc="beside the spool",
        doc="Where the running agent writes its status file (<spool name>.status.json). "
        "A tmpfs such as /run/edge-agent (systemd's RuntimeDirectory=) keeps it written "
        "when the spool's filesystem is full and spares the flash a write every "
        "status_interval.",
    )
    log_level: LogLevel = option(
        kind=choice("debug", "info", "warning", "error"),
        default="info",
        doc="Changes apply on reload (systemctl reload edge-agent).",
    )
    log_format: LogFormat = option(
        kind=choice("text", "json"),
        default="text",
        doc='"text": a line per event for people (into the journal: with its priority, '
        'as `<4>`, and without a time stamp, which the journal adds); "json": one JSON '
        "object per line (time, level, logger, message, exception) for a log collector. "
        "Into the journal a traceback or a multi-line message is one entry either way "
        '(its line breaks written as " ⏎ "). Changes apply on reload.',
    )
    status_interval: float = option(
        kind=DURATION,
        default=2.0,
        check=within(0.1, 3600, "must be between 100ms and 1h"),
        doc="How often the running agent refreshes what `edge-agent status` shows.",
    )
    clock_check: bool = option(
        kind=BOOLEAN,
        default=True,
        doc="Ask whether the system clock is synchronized (systemd-timesyncd's flag file, "
        'else timedated): until it is, records are marked "clock": "unsynchronized" and '
        "status says so. A device without a real-time clock boots with a wrong time.",
    )
    clock_wait: float = option(
        kind=DURATION,
        default=120.0,
        check=within(0, 3600, "must be at most 1h"),
        doc="How long cameras hold capture at start for a synchronized clock; after it "
        "they capture anyway, their fragments marked. 0: do not wait.",
    )


@section
class SpoolConfig:
    """The SQLite spool: every record waits here until its sink has delivered it."""

    path: Path = option(
        kind=PATH,
        default=Path(DEFAULT_STATE_DIR) / "spool.db",
        default_doc="<state_dir>/spool.db",
        doc="The SQLite file.",
    )
    durability: Durability = option(
        kind=choice("full", "normal"),
        default="full",
        doc='"full": a committed record survives power loss (fsync per commit); "normal": '
        "survives a crash of the agent, may lose the last commits on power loss.",
    )
    max_bytes: int | None = option(
        kind=off(SIZE),
        default=1024**3,
        doc='Overall cap on spooled bytes; when reached, "drop_oldest" queues lose their '
        'oldest records first. "off" or 0: no cap.',
    )
    max_age: float | None = option(
        kind=off(DURATION),
        default=7 * 86400.0,
        doc="Records older than this are expired (counted as dropped).",
    )
    reserve: int = option(
        kind=SIZE,
        default=64 * 1024**2,
        doc="Free space the spool leaves on its filesystem (as the agent's user may use "
        "it): below it, intake pauses (MQTT messages stay unacknowledged, at the broker) "
        "until delivery frees space. A quarter of it, at most 16 MiB, is held as a "
        "ballast file (<spool>.ballast) that is given back when the filesystem fills "
        "anyway, so that delivered records can always be deleted. Cut to a quarter of "
        "a smaller filesystem. 0: no reserve.",
    )
    commit_max_records: int = option(
        kind=integer(1, 100_000),
        default=1000,
        doc="Most messages committed (and then acked to the broker) in one transaction.",
    )
    commit_linger: float = option(
        kind=DURATION,
        default=0.0,
        check=within(0.0, 1.0, "must be at most 1s: longer delays stall MQTT acks"),
        doc="Wait this long for more messages before committing a batch smaller than "
        "commit_max_records (0: commit as soon as the previous commit is done, or 2ms "
        "later while busy, when the last batch held 16 messages or more).",
    )
    integrity_check: IntegrityCheck = option(
        kind=choice("quick", "full", "off"),
        default="quick",
        doc='Checked at every start: "quick" (PRAGMA quick_check), "full" (integrity_check, '
        'slow on large spools) or "off"; a corrupt file is moved aside.',
    )


def read_agent(table: Table) -> AgentConfig:
    agent = read_section(AgentConfig, table)
    table.finish()
    return agent


def read_spool(table: Table, agent: AgentConfig) -> SpoolConfig:
    spool = read_section(SpoolConfig, table, defaults={"path": agent.state_dir / "spool.db"})
    table.finish()
    return spool
