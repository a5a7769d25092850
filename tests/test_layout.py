"""The shape of the package: layers that import one way, light read-only commands,
small modules, and no old import paths left working."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edge_agent"
#: A module past this many lines owns more than one idea.
MAX_MODULE_LINES = 540

#: Which parts of the package a part may import (besides itself, the standard library,
#: third-party libraries and the shared leaf modules below).
ALLOWED = {
    "media": set(),
    "spool": set(),
    # The loader reads each sink type's options, declared beside the sink (pure
    # declarations that import only config): sinks/<type>/options.py.
    "config": {
        "sources.partition_keys",
        "media.fragment_tags",
        *(f"sinks.{t}.options" for t in ("kinesis", "firehose", "kvs", "s3")),
    },
    "sources": {
        "events",
        "spool",
        "media",
        "config",
        "delivery.backoff",
        "worker",
        "runtime_status",
        "clock_sync",
    },
    "delivery": {"spool", "config", "sinks.base", "worker", "runtime_status"},
    "sinks": {"spool", "media", "config", "credentials", "delivery", "worker", "runtime_status"},
    "credentials": {"config"},
    "analytics": {"config", "spool", "runtime_status", "worker"},
    # The endpoint reads the agent's status and the spool's counters, nothing running.
    "metrics": {"config", "spool", "runtime_status"},
    "kvs_local": {"media"},
    # Event video: the ring, events, motion, snapshots, clips (camera and MQTT use it).
    "events": {"spool", "media", "config", "worker", "runtime_status"},
}
#: Leaf modules every part may use: the shared types, the error tree, redaction.
SHARED = {"records", "errors", "redact", "__init__"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name.removeprefix("edge_agent.") for name in names if name.startswith("edge_agent")}


def _allowed(imported: str, part: str) -> bool:
    if imported in ("edge_agent", *SHARED) or imported.split(".", maxsplit=1)[0] == part:
        return True
    return any(imported == a or imported.startswith(a + ".") for a in ALLOWED[part])


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_the_layers_below_it(part: str) -> None:
    wrong = [
        f"{path.relative_to(PACKAGE)} imports edge_agent.{name}"
        for path in sorted((PACKAGE / part).rglob("*.py"))
        for name in sorted(_imports(path))
        if not _allowed(name, part)
    ]
    assert wrong == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _loaded_at_import(path: Path) -> set[str]:
    """The package's modules that importing ``path`` loads: top-level imports only
    (an import inside a function or under TYPE_CHECKING loads nothing at import)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("edge_agent.")}


def test_no_module_imports_itself_through_others() -> None:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {
        name: {other for other in _loaded_at_import(path) if other in modules and other != name}
        for name, path in modules.items()
    }
    cycles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycles.append([*trail[trail.index(name) :], name])
            return
        for other in sorted(graph[name]):
            if other not in done:
                visit(other, [*trail, name])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        visit(name, [])
    assert cycles == []


def test_sink_options_import_only_the_config_package() -> None:
    wrong = [
        f"{path.relative_to(PACKAGE)} imports edge_agent.{name}"
        for path in sorted((PACKAGE / "sinks").glob("*/options.py"))
        for name in sorted(_imports(path))
        if not (name.startswith("config") or name in SHARED)
    ]
    assert wrong == []


def test_no_module_is_longer_than_one_idea_needs() -> None:
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


@pytest.mark.parametrize(
    "old",
    [
        "edge_agent.video",
        "edge_agent.forwarder",
        "edge_agent.governor",
        "edge_agent.sender",
        "edge_agent.spool_schema",
        "edge_agent.units",
        "edge_agent.keys",
        "edge_agent.backoff",
        "edge_agent.token_bucket",
        "edge_agent.sinks.factory",
        "edge_agent.sinks.kpl",
        "edge_agent.sinks.shards",
        "edge_agent.sinks.shard_pacing",
    ],
)
def test_old_module_paths_are_gone(old: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


@pytest.mark.parametrize(
    ("package", "name"),
    [("edge_agent.spool", "Spool"), ("edge_agent.config", "load_config")],
)
def test_packages_re_export_nothing(package: str, name: str) -> None:
    assert not hasattr(importlib.import_module(package), name)


#: What a read-only command must not load: the network, video, and the running parts.
RUNNING_MACHINERY = (
    "paho",
    "boto3",
    "botocore",
    "av",
    "numpy",
    "edge_agent.agent",
    "edge_agent.delivery.forwarder",
    "edge_agent.sources.mqtt",
    "edge_agent.sources.camera.camera",
    "edge_agent.sinks.kvs.uploader",
)


@pytest.mark.parametrize("module", ["edge_agent.status", "edge_agent.assembly", "edge_agent.cli"])
def test_read_only_commands_load_no_running_machinery(module: str) -> None:
    probe = (
        f"import sys, {module}; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {RUNNING_MACHINERY!r} "
        f"or m in {RUNNING_MACHINERY!r}))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
