"""The ``edge-agent`` command line (thin: parsing and printing only).

    edge-agent run          -c FILE            run the agent (systemd's ExecStart)
    edge-agent status       -c FILE [--json]   queues, sources, recent events
    edge-agent check-config -c FILE [--online] validate; exit 0 or print every problem
                                               (--online: ask AWS about each sink too)
    edge-agent kvs-local [--host H] [--port P] [--dir D] [--stream S ...]
                                               a local Kinesis Video PutMedia endpoint
    edge-agent spool dead-letters -c FILE [--queue Q] [--limit N]
    edge-agent spool export       -c FILE [--queue Q] [-o FILE]   dead letters as JSON lines
    edge-agent spool purge        -c FILE [--queue Q] [--id N ...] --yes
    edge-agent spool requeue      -c FILE [--queue Q] [--id N ...]
    edge-agent spool salvage      -c FILE DAMAGED   what a damaged spool file still reads,
                                               into the spool (the agent stopped)

The config file defaults to $EDGE_AGENT_CONFIG, then /etc/edge-agent/edge-agent.toml.
Exit codes: 0 ok, 1 runtime error, 2 usage or configuration error; ``status`` also
3 when the agent is not running (LSB's "program is not running", as systemctl uses).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from edge_agent import __version__, logs
from edge_agent.analytics.command import add_parser as analytics_parser
from edge_agent.config.agent import LogFormat
from edge_agent.config.loading import DEFAULT_CONFIG_PATH, Config, load_config
from edge_agent.config.paths import check_paths
from edge_agent.config.units import plural
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.events.command import add_parsers as event_parsers
from edge_agent.spool.dead_letters import DeadLetter
from edge_agent.spool.store import Spool
from edge_agent.status import STALE_INTERVALS

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
#: ``status``: the agent is not running (LSB's code, the one ``systemctl status`` gives).
EXIT_NOT_RUNNING = 3


def _parser() -> argparse.ArgumentParser:
    default_config = os.environ.get("EDGE_AGENT_CONFIG", DEFAULT_CONFIG_PATH)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default=default_config,
        help=f"config file (default: $EDGE_AGENT_CONFIG, else {DEFAULT_CONFIG_PATH}; "
        f"now {default_config})",
    )
    parser = argparse.ArgumentParser(
        prog="edge-agent", description="Store-and-forward agent for cameras and sensors."
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        parents=[common],
        help="run the agent",
        description="Run the agent in the foreground until SIGTERM or SIGINT (SIGHUP "
        "reloads the upload budget); what systemd's unit starts.",
    )
    run.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="what is logged (default: the config's agent.log_level)",
    )
    status = commands.add_parser(
        "status",
        parents=[common],
        help="show queues and sources",
        description="The spool's queues (read directly, always current) and what the "
        "running agent last wrote to its status file (marked stale when the agent is not "
        "running). Prints all it can read whatever the exit code.",
        epilog="Exit codes: 0 the agent is running (its status file was rewritten within "
        f"the last {STALE_INTERVALS} status intervals and its process is alive); "
        f"{EXIT_NOT_RUNNING} it is not running (stopped, dead, or its status file is "
        "stale: LSB's code, as systemctl status gives; also before its first start, when "
        "there is no spool yet); 1 the spool cannot be read; 2 the config is not valid.",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    check = commands.add_parser(
        "check-config",
        parents=[common],
        help="validate the config file",
        description="Read the config file and report every problem with its key and "
        "reason, directories the agent could not create or write (the spool's, "
        "status_dir) and spool files it could not open included, checked as the user "
        "running this; exits 0 when it is valid, 2 when it is not.",
    )
    check.add_argument(
        "--online",
        action="store_true",
        help="also resolve the AWS credentials and ask each AWS sink's stream (read "
        "only): one line per sink, ok or the problem; exits 2 if any",
    )

    local = commands.add_parser(
        "kvs-local",
        help="run a local Kinesis Video PutMedia endpoint (no AWS account needed)",
        description="A PutMedia-compatible endpoint on this machine: checks SigV4 "
        "signatures against the given test credentials, enforces the ingestion rules, "
        "acknowledges fragments as the service does, and writes what it accepted to "
        "playable MKV files.",
    )
    local.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    local.add_argument("--port", type=int, default=8090, help="port (default 8090)")
    local.add_argument("--dir", default="kvs-local", help="where MKV files go (./kvs-local)")
    local.add_argument("--stream", action="append", help="accept only these streams (default: any)")
    local.add_argument(
        "--region", default="us-east-1", help="the region signatures name (default us-east-1)"
    )
    local.add_argument(
        "--access-key",
        default=os.environ.get("KVS_LOCAL_ACCESS_KEY", "AKIDLOCALTEST"),
        help="the test credentials requests must be signed with "
        "(KVS_LOCAL_ACCESS_KEY / KVS_LOCAL_SECRET_KEY)",
    )
    local.add_argument(
        "--secret-key",
        default=os.environ.get("KVS_LOCAL_SECRET_KEY", "local-test-secret"),
        help="the secret key of the test credentials",
    )
    local.add_argument(
        "--no-retention", action="store_true", help="a stream without retention: no PERSISTED"
    )

    analytics_parser(commands, common)
    event_parsers(commands, common)

    spool = commands.add_parser(
        "spool",
        help="inspect and manage the spool",
        description="Dead letters (records a destination refused, with the reason): list, "
        "export, requeue or purge them; salvage a damaged spool file.",
    )
    spool_commands = spool.add_subparsers(dest="spool_command", required=True)
    listing = spool_commands.add_parser(
        "dead-letters",
        parents=[common],
        help="list dead letters with their reasons",
        description="List dead letters, oldest first: id, queue, when and why each was refused.",
    )
    listing.add_argument("--queue", help="only this queue's (a sink's name)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    export = spool_commands.add_parser(
        "export",
        parents=[common],
        help="write dead letters as JSON lines",
        description="Write dead letters as JSON lines (id, queue, times, attempts, "
        "reason, and the payload as text, or base64 when it is not UTF-8), one a line, to "
        "a file or standard output.",
    )
    export.add_argument("--queue", help="only this queue's (a sink's name)")
    export.add_argument("-o", "--output", default="-", help="file (default: stdout)")
    for name, help_text in (
        ("purge", "delete dead letters (for good: needs --yes)"),
        ("requeue", "move dead letters back to their queues, to be sent again"),
    ):
        sub = spool_commands.add_parser(
            name, parents=[common], help=help_text, description=help_text.capitalize() + "."
        )
        sub.add_argument("--queue", help="only this queue's (a sink's name)")
        sub.add_argument(
            "--id",
            dest="ids",
            type=int,
            action="append",
            default=[],
            help="only this dead letter (repeat for more; default: all)",
        )
        if name == "purge":
            sub.add_argument("--yes", action="store_true", help="really delete")
    salvage = spool_commands.add_parser(
        "salvage",
        parents=[common],
        help="copy what a damaged spool file still reads into the spool",
        description="Copy every record that can still be read from a damaged spool file "
        "(an older spool.db.corrupt-*; the open salvages the file it moves aside by "
        "itself) into the configured spool, after the records it holds. The agent must "
        "be stopped: the spool's writer lock is taken as the agent takes it. Running it "
        "twice on one file copies its records twice.",
    )
    salvage.add_argument("file", help="the damaged spool file (its -wal beside it is read too)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "kvs-local":
        return _kvs_local(args)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"edge-agent: configuration error:\n{err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "check-config":
            from edge_agent.analytics.checks import check_queries

            # Where it writes (as this user), and every analytics query prepared.
            if unusable := check_paths(config) + check_queries(config):
                print(f"edge-agent: configuration error:\n{ConfigError(unusable)}", file=sys.stderr)
                return EXIT_USAGE
            print(f"{args.config}: ok")
            if args.online:
                from edge_agent.online_check import check_online

                return EXIT_USAGE if check_online(config, sys.stdout) else EXIT_OK
            return EXIT_OK
        if args.command == "run":
            return _run(config, args.log_level)
        if args.command == "status":
            return _status(config, as_json=args.json)
        if args.command == "analytics":
            from edge_agent.analytics.command import run_command

            return run_command(config, args)
        if args.command in ("event", "events", "clip"):
            from edge_agent.events import command

            return command.COMMANDS[args.command](config, args)
        return _spool_command(config, args)
    except EdgeAgentError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        _reader_gone()
        return EXIT_OK


def _reader_gone() -> None:
    """The reader went away (``edge-agent status | head``): nothing more to say. Point
    stdout at /dev/null so that the flush at exit does not complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _configure_logging(level: str, log_format: LogFormat = "text") -> None:
    # One line per event; into the journal with its priority and without a time stamp
    # (edge_agent/logs.py). Credential-carrying libraries stay at INFO.
    logs.configure(level, log_format)


def _run(config: Config, log_level: str | None) -> int:
    from edge_agent.agent import Agent

    if unusable := check_paths(config):  # before the spool's open fails on it
        print(f"edge-agent: cannot start:\n{ConfigError(unusable)}", file=sys.stderr)
        return EXIT_ERROR
    _configure_logging(log_level or config.agent.log_level, config.agent.log_format)
    agent = Agent(config)
    agent.install_signal_handlers()
    return agent.run()


def _kvs_local(args: argparse.Namespace) -> int:
    import signal
    import threading
    from pathlib import Path

    from botocore.credentials import Credentials

    from edge_agent.kvs_local.server import PutMediaServer

    _configure_logging("info")
    try:
        server = PutMediaServer(
            Path(args.dir),
            host=args.host,
            port=args.port,
            credentials=Credentials(args.access_key, args.secret_key),
            region=args.region,
            streams=args.stream,
            retention=not args.no_retention,
        ).start()
    except OSError as err:
        print(
            f"edge-agent kvs-local: cannot listen on {args.host}:{args.port}: {err}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"kvs-local: PutMedia endpoint at {server.url}, MKV files in {args.dir}", flush=True)
    stop.wait()
    server.stop()
    return EXIT_OK


def _status(config: Config, *, as_json: bool) -> int:
    from edge_agent.status import collect_status, render_status

    status = collect_status(config)
    running = status["agent"]["running"]
    # No spool before the agent's first start is no failure to read one.
    if "error" in status["spool"] and (running or os.path.exists(config.spool.path)):
        code = EXIT_ERROR
    else:
        code = EXIT_OK if running else EXIT_NOT_RUNNING
    try:
        print(json.dumps(status, indent=2) if as_json else render_status(status))
    except BrokenPipeError:  # ``edge-agent status | head -1``: the code still tells
        _reader_gone()
    return code


def _spool_command(config: Config, args: argparse.Namespace) -> int:
    if args.spool_command == "salvage":
        return _salvage(config, args.file)
    if args.spool_command in ("dead-letters", "export"):
        with Spool.open_read_only(config.spool.path) as spool:
            if args.spool_command == "dead-letters":
                _print_dead_letters(spool.dead_letters(queue=args.queue, limit=args.limit))
                return EXIT_OK
            if args.output == "-":
                count = _export(spool, args.queue, sys.stdout)
            else:
                with open(args.output, "w", encoding="utf-8") as handle:
                    count = _export(spool, args.queue, handle)
            print(f"exported {plural(count, 'dead letter')}", file=sys.stderr)
            return EXIT_OK
    if args.spool_command == "purge" and not args.yes:
        print("edge-agent: purge deletes dead letters for good; add --yes", file=sys.stderr)
        return EXIT_USAGE
    # Writes go through the spool's own connection; the running agent holds the writer
    # lock, so these only run while it is stopped.
    from edge_agent.assembly import open_spool

    with open_spool(config) as spool:
        if args.spool_command == "purge":
            count = spool.purge_dead_letters(queue=args.queue, ids=args.ids)
            print(f"purged {plural(count, 'dead letter')}")
        else:
            count = spool.requeue_dead_letters(queue=args.queue, ids=args.ids)
            print(f"requeued {plural(count, 'dead letter')}")
    return EXIT_OK


def _salvage(config: Config, file: str) -> int:
    from pathlib import Path

    from edge_agent.spool.recovery import salvage_file

    source = Path(file)
    if not source.is_file():
        print(f"edge-agent: no file {source}", file=sys.stderr)
        return EXIT_USAGE
    if source.resolve() == Path(config.spool.path).resolve():
        print(f"edge-agent: {source} is the configured spool itself", file=sys.stderr)
        return EXIT_USAGE
    salvaged = salvage_file(
        Path(config.spool.path), source, config.spool.durability, config.spool.integrity_check
    )
    print(f"{salvaged.describe()}, into {config.spool.path}")
    return EXIT_OK if salvaged.stopped is None else EXIT_ERROR


def _print_dead_letters(letters: list[DeadLetter]) -> None:
    if not letters:
        print("no dead letters")
        return
    for letter in letters:
        print(
            f"#{letter.id} {letter.queue} key={letter.partition_key!r} "
            f"{plural(letter.size, 'byte')}, {plural(letter.attempts, 'attempt')}: {letter.reason}"
        )


def _export(spool: Spool, queue: str | None, out: TextIO) -> int:
    count = 0
    after = 0
    while True:
        page = spool.dead_letters(queue=queue, after_id=after, limit=1000)
        if not page:
            return count
        for letter in page:
            try:
                payload: dict[str, str] = {"payload": letter.payload.decode("utf-8")}
            except UnicodeDecodeError:
                payload = {"payload_base64": base64.b64encode(letter.payload).decode()}
            out.write(
                json.dumps(
                    {
                        "id": letter.id,
                        "queue": letter.queue,
                        "partition_key": letter.partition_key,
                        "captured_at_ms": letter.captured_at_ms,
                        "dead_at_ms": letter.dead_at_ms,
                        "attempts": letter.attempts,
                        "reason": letter.reason,
                        "meta": json.loads(letter.meta) if letter.meta else None,
                        **payload,
                    }
                )
                + "\n"
            )
            count += 1
        after = page[-1].id
