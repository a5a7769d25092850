"""The declaration mechanism: typed sections, defaults, problems naming file, key, reason."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from edge_agent.config.options import (
    DURATION,
    SIZE,
    STRING,
    Table,
    choice,
    declared,
    integer,
    off,
    option,
    read_section,
    section,
    within,
)
from edge_agent.config.reference import DOC_PATH, Part, layout, render
from edge_agent.errors import ConfigProblem
from tests.support import REPO


@section
class Example:
    """A section for the tests."""

    name: str = option(kind=STRING, doc="Required.")
    port: int = option(kind=integer(1, 65535), default=1883, doc="A port.")
    timeout: float = option(
        kind=DURATION, default=5.0, check=within(1, 60, "must be between 1s and 1m"), doc="."
    )
    cap: int | None = option(kind=off(SIZE), default=None, doc="A cap.")
    mode: str = option(kind=choice("a", "b"), key="the-mode", default="a", doc="Renamed key.")


def read(raw: dict[str, object]) -> tuple[Example, list[tuple[str, str]], Table]:
    problems: list[ConfigProblem] = []
    table = Table("f.toml", "example", raw, problems)
    example = read_section(Example, table)
    table.finish()
    for problem in problems:
        assert str(problem).startswith(f"f.toml: {problem.key}: ")
    return example, [(p.key, p.reason) for p in problems], table


def test_a_section_reads_typed_values_and_defaults() -> None:
    example, found, _ = read({"name": "x", "timeout": "30s", "cap": "1KiB", "the-mode": "b"})
    assert found == []
    assert example == Example(name="x", port=1883, timeout=30.0, cap=1024, mode="b")
    assert read({"name": "x", "cap": "off"})[0].cap is None


def test_a_bad_value_names_file_key_and_reason() -> None:
    example, found, table = read({"name": "x", "port": 70000, "timeout": "2m"})
    assert found == [
        ("example.port", "must be between 1 and 65535, got 70000"),
        ("example.timeout", "must be between 1s and 1m"),
    ]
    assert example.port == 1883  # a value that does not parse stands in as its default
    assert not table.ok("port") and table.ok("timeout")


def test_an_unknown_key_is_reported_with_the_closest_declared_key() -> None:
    _, found, _ = read({"name": "x", "mode": "b", "prot": 1, "zzz": 1})
    assert found == [
        ("example.mode", 'unknown key (did you mean "the-mode"?)'),
        ("example.prot", 'unknown key (did you mean "port"?)'),
        ("example.zzz", "unknown key"),
    ]


def test_a_missing_required_key_is_reported() -> None:
    example, found, table = read({})
    assert found == [("example.name", "is required")]
    assert example.name == "" and not table.ok("name")


def test_declarations_carry_key_default_and_doc() -> None:
    options = dict(declared(Example))
    assert options["mode"].key == "the-mode"
    assert options["name"].default_text() == "required"
    assert options["timeout"].default_text() == '"5s"'
    assert options["cap"].default_text() == '"off"'


def test_the_reference_is_up_to_date() -> None:
    assert DOC_PATH == REPO / "docs" / "CONFIG.md"
    assert DOC_PATH.read_text() == render(), (
        "docs/CONFIG.md is out of date: run python -m edge_agent.config.reference"
    )


@pytest.mark.parametrize("part", layout(), ids=lambda part: part.header)
def test_every_declared_key_is_in_the_example_config(part: Part) -> None:
    text = (REPO / "configs" / "edge-agent.toml").read_text()
    missing = [
        declaration.key
        for _, declaration in declared(part.section)
        if not re.search(rf"^#?\s*{re.escape(declaration.key)}\b", text, re.MULTILINE)
    ]
    assert missing == []


def test_the_config_package_imports_nothing_heavy() -> None:
    code = (
        "import sys, edge_agent.config.loading, edge_agent.config.reference\n"
        "heavy = {'boto3', 'botocore', 'paho', 'av', 'numpy', 'sqlite_utils'}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "    or m.startswith(('edge_agent.delivery', 'edge_agent.spool', 'edge_agent.agent')))\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
