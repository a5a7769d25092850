"""Log lines: one line per event, for the journal, a terminal or a log collector.

Under systemd the agent's stderr is a stream into the journal, which takes each line
as one entry, stamps it with its own time and reads a leading ``<N>`` as the entry's
syslog priority. So there, each line starts with the record's priority (``journalctl -p
warning`` then shows warnings and worse) and carries no time stamp of its own; and since
the journal splits on newlines, the line breaks of a multi-line message or a traceback
are written as `` ⏎ `` (U+23CE, with a space each side): one event stays one entry, its
lines stay readable in order, and ``sed 's/ ⏎ /\\n/g'`` restores them. A marker rather
than a ``\\n`` escape, because a message may hold a backslash followed by an n of its
own (a Windows path, a regular expression).

Whether stderr is the journal is decided as sd_journal does it: systemd sets
``$JOURNAL_STREAM`` to ``<device>:<inode>`` of the stream it connected, and only if
stderr still is that file (not redirected by a wrapper script) is it the journal.

``log_format = "json"`` writes one JSON object per line instead (time in UTC ISO 8601
with milliseconds, level, logger, message, the traceback as ``exception``, and the
fields a caller passed with ``extra=``), for a collector that parses lines; into the
journal it gets the priority prefix too, which the journal strips.

:func:`configure` sets all of this up at start and again on reload (level and format
can change; the handler stays the same).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from edge_agent.config.agent import LogFormat

#: Libraries whose DEBUG logging would carry credentials: kept at INFO whatever the
#: agent's log level. At DEBUG, botocore logs each signed request whole: the access
#: key id in its Authorization header and the session token.
QUIET_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer")

#: The syslog priority of each level, as the journal reads it from a ``<N>`` prefix.
JOURNAL_PRIORITIES = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}

#: What a line break inside one event becomes in the journal.
LINE_BREAK_MARK = " ⏎ "

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
TIMED_TEXT_FORMAT = "%(asctime)s " + TEXT_FORMAT

_LINE_BREAKS = re.compile(r"\r\n|\r|\n")

#: The attributes every LogRecord has; any other attribute came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def journal_priority(levelno: int) -> int:
    """The syslog priority of a level; levels between the standard ones take the
    priority of the standard level below them."""
    for level in sorted(JOURNAL_PRIORITIES, reverse=True):
        if levelno >= level:
            return JOURNAL_PRIORITIES[level]
    return JOURNAL_PRIORITIES[logging.DEBUG]


def stderr_is_journal(environ: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """True when ``fd`` is the stream systemd connected to the journal."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        expected = (int(device), int(inode))
        status = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (status.st_dev, status.st_ino) == expected


def one_line(text: str) -> str:
    """``text`` with its line breaks written as :data:`LINE_BREAK_MARK`."""
    return _LINE_BREAKS.sub(LINE_BREAK_MARK, text)


class JournalFormatter(logging.Formatter):
    """Wraps another formatter: its output as one line, after the ``<N>`` priority."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{journal_priority(record.levelno)}>{one_line(self.inner.format(record))}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (JSON escapes the line breaks)."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            key: value for key, value in record.__dict__.items() if key not in _RECORD_ATTRIBUTES
        }
        event["time"] = _utc_time(record.created)
        event["level"] = record.levelname
        event["logger"] = record.name
        event["message"] = record.getMessage()
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            event["exception"] = record.exc_text
        if record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        return json.dumps(event, default=str)


def _utc_time(created: float) -> str:
    seconds = int(created)
    milliseconds = min(int((created - seconds) * 1000), 999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{milliseconds:03d}Z"


def formatter(log_format: LogFormat, *, journal: bool) -> logging.Formatter:
    """The formatter for a format, into the journal or elsewhere."""
    if log_format == "json":
        inner: logging.Formatter = JsonFormatter()
    else:
        inner = logging.Formatter(TEXT_FORMAT if journal else TIMED_TEXT_FORMAT)
    return JournalFormatter(inner) if journal else inner


class _AgentHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The agent's handler on the root logger: found again by its type on reload."""


def configure(level: str, log_format: LogFormat = "text") -> None:
    """Log at ``level`` in ``log_format`` to stderr; at start and on every reload."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _AgentHandler)), None)
    if handler is None:
        handler = _AgentHandler(sys.stderr)
        root.addHandler(handler)
    handler.setFormatter(formatter(log_format, journal=stderr_is_journal()))
    root.setLevel(level.upper())
    for library in QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(logging.INFO)
