"""``edge-agent analytics run NAME``: a query over the readings the spool holds now, to
develop it on the device. Read-only (the running agent is not disturbed); by default over
the query's own queue, which holds the readings of its open windows (and grace), or over
another queue with ``--queue`` (a sink's queue keeps raw readings until they are sent)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TextIO

from edge_agent.config.loading import Config
from edge_agent.config.units import parse_time, plural
from edge_agent.errors import EdgeAgentError


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    analytics = commands.add_parser(
        "analytics",
        help="try an analytics query on the readings the spool holds",
        description="Evaluate an [analytics.NAME] query over spooled readings and print "
        "its rows (one JSON object per line); nothing is emitted.",
    )
    analytics_commands = analytics.add_subparsers(dest="analytics_command", required=True)
    run = analytics_commands.add_parser(
        "run",
        parents=[common],
        help="evaluate a query over a time range",
        description="Evaluate the query NAME over the readings whose time (the capture "
        "time, or the query's event_time) is in [--from, --to).",
    )
    run.add_argument("name", help="the query: a [analytics.NAME] of the config")
    run.add_argument(
        "--from",
        dest="start",
        default="1h",
        help='start: a duration before now ("10m"), an ISO time, or epoch ms (default 1h)',
    )
    run.add_argument("--to", dest="end", default=None, help="end, as --from (default: now)")
    run.add_argument(
        "--queue",
        default=None,
        help="read the readings of this queue instead of the query's own (e.g. a sink's)",
    )


def run_command(config: Config, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from edge_agent.analytics.query import QueryRunner

    query = config.analytics.get(args.name)
    if query is None:
        names = ", ".join(config.analytics) or "none"
        raise EdgeAgentError(
            f"no [analytics.{args.name}] in {config.source_file} (queries: {names})"
        )
    now_ms = int(time.time() * 1000)
    start = parse_time(args.start, now_ms)
    end = now_ms if args.end is None else parse_time(args.end, now_ms)
    runner = QueryRunner(
        config.spool.path,
        args.queue or query.queue,
        query.sql,
        event_time=query.event_time,
        event_time_unit=query.event_time_unit,
        max_steps=query.max_steps,
    )
    try:
        result = runner.run(start, end, count_input=True)
    finally:
        runner.close()
    for row in result.rows:
        print(json.dumps(dict(zip(result.columns, row, strict=True))), file=out)
    print(
        f"{plural(len(result.rows), 'row')} from {plural(result.input_rows or 0, 'reading')} "
        f"in {result.seconds:.3f}s",
        file=sys.stderr,
    )
    return 0
