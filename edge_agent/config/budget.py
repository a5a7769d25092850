"""The upload budget: ``[uplink]``, each sink's share of it and its schedule windows."""

from __future__ import annotations

import re
from typing import Literal

from edge_agent.config.options import (
    SIZE,
    STRING,
    Check,
    Kind,
    Table,
    at_least,
    choice,
    integer,
    off,
    option,
    read_section,
    section,
)
from edge_agent.config.units import format_rate, parse_rate

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = r"([01]\d|2[0-3]):[0-5]\d|24:00"


#: Bits or bytes per second: "2Mbit/s", "256kbit/s", "500KiB/s"; "off" for no cap.
RATE: Kind[float | None] = off(
    Kind("rate", parse_rate, 0.0, lambda value: f'"{format_rate(value)}"')
)

_AT_LEAST_1KBIT = "must be at least 1kbit/s (or off)"
AT_LEAST_1KBIT: Check[float | None] = Check(
    _AT_LEAST_1KBIT, lambda rate: _AT_LEAST_1KBIT if rate is not None and rate < 1000 / 8 else None
)


def _clock(raw: object) -> str:
    text = STRING.parse(raw)
    if not re.fullmatch(_CLOCK, text):
        raise ValueError(f"expected a local time 'HH:MM', got {text!r}")
    return text


def _days(raw: object) -> frozenset[int]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise TypeError(f"expected a list of strings, got {raw!r}")
    if any(day not in WEEKDAYS for day in raw):
        raise ValueError(f"days are {', '.join(WEEKDAYS)}")
    return frozenset(WEEKDAYS.index(day) for day in raw)


CLOCK: Kind[str] = Kind("local time HH:MM", _clock, "00:00", lambda value: f'"{value}"')
DAYS: Kind[frozenset[int]] = Kind(
    "list of days (mon-sun)",
    _days,
    frozenset(range(7)),
    lambda days: "[" + ", ".join(f'"{WEEKDAYS[day]}"' for day in sorted(days)) + "]",
)


@section
class ScheduleWindow:
    """A time-of-day window (local time) in a sink's schedule: from ``start`` up to
    ``end`` ("HH:MM"; an end before the start runs past midnight) on ``days``. The first
    window that matches applies; outside every window uploads are allowed."""

    start: str = option(kind=CLOCK, key="from", doc="Start of the window, local time.")
    end: str = option(
        kind=CLOCK, key="to", doc='End of the window; a "to" before "from" runs past midnight.'
    )
    action: Literal["allow", "pause", "cap"] = option(
        kind=choice("allow", "pause", "cap"),
        doc='"allow", "pause" (hold uploads; sources keep spooling) or "cap" (with max_rate).',
    )
    max_rate: float | None = option(
        kind=RATE, default=None, doc='The cap of a window with action = "cap".'
    )
    days: frozenset[int] = option(
        kind=DAYS,
        default=frozenset(range(7)),
        default_doc="every day",
        doc="The days a window starts on.",
    )
    traffic: Literal["all", "backlog"] = option(
        kind=choice("all", "backlog"),
        default="all",
        doc='What it governs: all uploads, or "backlog": only the backlog sessions of a kvs '
        'sink with replay = "live-first" (live video then goes at any time).',
    )

    @property
    def start_minute(self) -> int:
        return _minute_of_day(self.start)

    @property
    def end_minute(self) -> int:
        return _minute_of_day(self.end)


def _minute_of_day(clock: str) -> int:
    hours, _, minutes = clock.partition(":")
    return int(hours) * 60 + int(minutes)


@section
class ShareConfig:
    """A sink's part of the upload budget: its priority (a smaller number goes first),
    an optional cap of its own, and a schedule. These change with a reload (SIGHUP)."""

    priority: int = option(
        kind=integer(0, 100),
        default=0,
        default_doc="0; 10 for kvs sinks (telemetry before video)",
        doc="A smaller number goes first when the budget is short.",
    )
    max_rate: float | None = option(
        kind=RATE,
        default=None,
        check=AT_LEAST_1KBIT,
        doc="This sink's own cap below the budget.",
    )
    schedule: tuple[ScheduleWindow, ...] = ()


@section
class BudgetConfig:
    """The device's upload budget, shared by every forwarding sink. It counts what goes
    on the wire (request bodies and headers); changes apply on reload."""

    max_rate: float | None = option(
        kind=RATE, default=None, check=AT_LEAST_1KBIT, doc="The device's upload rate."
    )
    burst: int = option(
        kind=SIZE,
        default=256 * 1024,
        check=at_least(1024, "must be at least 1KiB"),
        doc="How much may go out at once above the steady rate.",
    )


def read_share(table: Table, default_priority: int) -> ShareConfig:
    """A sink's share, from keys of the sink's own table and its ``[[...schedule]]``."""
    share = read_section(ShareConfig, table, defaults={"priority": default_priority})
    windows = tuple(read_window(sub) for sub in table.table_list("schedule"))
    return ShareConfig(share.priority, share.max_rate, windows)


def read_window(table: Table) -> ScheduleWindow:
    window = read_section(ScheduleWindow, table)
    if window.action == "cap" and not window.max_rate:
        table.problem("max_rate", "a capping window needs max_rate")
    if window.action != "cap" and window.max_rate is not None:
        table.problem("max_rate", 'only a window with action = "cap" takes max_rate')
    table.finish()
    return window


def read_uplink(table: Table | None) -> BudgetConfig:
    if table is None:
        return BudgetConfig()
    uplink = read_section(BudgetConfig, table)
    table.finish()
    return uplink
