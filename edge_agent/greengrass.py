"""The agent as an AWS IoT Greengrass v2 component: the component's configuration, a JSON
object in the deployment, rendered to the TOML file the agent reads.

    python -m edge_agent.greengrass render --out FILE [--state-dir DIR] [--device-name NAME]

reads the JSON from ``$EDGE_AGENT_GREENGRASS_CONFIG`` (packaging/greengrass/recipe.yaml).
Why an environment variable: the nucleus interpolates ``{configuration:/agentConfig}``,
an object, as its JSON text into the lifecycle, and JSON placed in a shell command line
breaks on the first quote of a value; an environment variable (``Setenv``) carries it
as it is. The nucleus restarts a component whose interpolated lifecycle changed, so a
deployment that changes the configuration restarts the agent on the new file: a clean
stop (SIGTERM) that loses and duplicates nothing.

JSON maps onto TOML directly, with two exceptions: ``null`` has no TOML form, so a key
whose value is null is left out (a deployment's merge can set a default key to null to
drop it, which its reset could not), and a null inside an array is an error. What the
object holds is checked afterwards, by ``edge-agent check-config``, with every problem
named.

The TOML writer is written here rather than taken from PyPI (tomli-w): about eighty
lines cover all that JSON can express (tables, arrays of tables, strings, numbers,
booleans, arrays), and a runtime dependency for what runs once at start is not worth
its upkeep. The tests read its output back with the standard library's ``tomllib``, for
the default configuration and for generated JSON objects of every shape.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError, ConfigProblem

#: The environment variable the recipe's Run step puts the configuration's JSON in.
CONFIG_ENV = "EDGE_AGENT_GREENGRASS_CONFIG"
#: How a problem with the JSON names where it came from.
SOURCE = "the component configuration (agentConfig)"

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
#: What TOML's basic strings must escape: the quote, the backslash, control characters.
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def render(text: str, *, state_dir: Path | None = None, device_name: str | None = None) -> str:
    """The TOML file for the configuration's JSON ``text``. ``state_dir`` and
    ``device_name`` fill ``[agent]`` where the JSON leaves them out: the component's
    work folder (the default, /var/lib/edge-agent, is not the component user's) and the
    core device's thing name."""
    try:
        document = json.loads(text)
    except ValueError as err:
        raise ConfigError([ConfigProblem(SOURCE, "", f"not valid JSON: {err}")]) from None
    if not isinstance(document, dict):
        raise ConfigError([ConfigProblem(SOURCE, "", "must be a JSON object")])
    agent = document.get("agent")
    if agent is None:
        agent = document["agent"] = {}
    if isinstance(agent, dict):
        if state_dir is not None and agent.get("state_dir") is None:
            agent["state_dir"] = str(state_dir)
        if device_name and agent.get("device_name") is None:
            agent["device_name"] = device_name
    return to_toml(document)


def to_toml(document: Mapping[str, Any]) -> str:
    """``document`` (JSON's types) as a TOML document; keys whose value is None are
    left out. Raises ConfigError naming the key of a value TOML cannot hold."""
    lines: list[str] = []
    _table(lines, (), document, header=None)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(value: object) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_table(item) for item in value)


def _table(
    lines: list[str], path: tuple[str, ...], table: Mapping[str, Any], header: str | None
) -> None:
    """A table's header, its values, then its sub-tables and arrays of tables (a TOML
    table's values must come before the tables inside it)."""
    present = {key: value for key, value in table.items() if value is not None}
    values = {
        key: value
        for key, value in present.items()
        if not _is_table(value) and not _is_table_array(value)
    }
    # A table holding only tables needs no header of its own ([sinks] before
    # [sinks.telemetry]); an element of an array of tables always does.
    if header is not None and (values or len(values) == len(present) or header[1] == "["):
        lines += ["", header]
    for key, value in values.items():
        lines.append(f"{_key(key)} = {_value(value, (*path, key))}")
    for key, value in present.items():
        child = (*path, key)
        if _is_table(value):
            _table(lines, child, value, f"[{_dotted(child)}]")
        elif _is_table_array(value):
            for item in value:
                _table(lines, child, item, f"[[{_dotted(child)}]]")


def _value(value: object, path: tuple[str, ...]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _string(value, path)
    if isinstance(value, Mapping):
        items = (
            f"{_key(key)} = {_value(item, (*path, key))}"
            for key, item in value.items()
            if item is not None
        )
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        if any(item is None for item in value):
            raise _problem(path, "null in an array has no TOML form")
        return "[" + ", ".join(_value(item, path) for item in value) + "]"
    raise _problem(path, f"a {type(value).__name__} has no TOML form")


def _string(text: str, path: tuple[str, ...]) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        elif 0xD800 <= ord(char) <= 0xDFFF:
            raise _problem(path, "a lone surrogate (\\ud800-\\udfff) is not text")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key, (key,))


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(_key(key) for key in path)


def _problem(path: tuple[str, ...], reason: str) -> ConfigError:
    return ConfigError([ConfigProblem(SOURCE, ".".join(path), reason)])


def write_file(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once, readable by its owner only (a
    configuration may name credentials)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge_agent.greengrass",
        description="The Greengrass component's configuration (JSON) as the agent's TOML.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    render_command = commands.add_parser(
        "render",
        help="write the TOML file for the configuration in $" + CONFIG_ENV,
        description=f"Read the component configuration's JSON from ${CONFIG_ENV} and "
        "write it as the agent's TOML configuration file (mode 0600).",
    )
    render_command.add_argument("--out", required=True, type=Path, help="the TOML file")
    render_command.add_argument(
        "--state-dir", type=Path, help="agent.state_dir unless the configuration sets it"
    )
    render_command.add_argument(
        "--device-name", help="agent.device_name unless the configuration sets it"
    )
    args = parser.parse_args(argv)
    text = os.environ.get(CONFIG_ENV)
    if text is None:
        print(f"edge-agent greengrass: ${CONFIG_ENV} is not set", file=sys.stderr)
        return 2
    try:
        toml = render(text, state_dir=args.state_dir, device_name=args.device_name)
        write_file(args.out, toml)
    except ConfigError as err:
        print(f"edge-agent greengrass: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"edge-agent greengrass: cannot write {args.out}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
