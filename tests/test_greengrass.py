"""The Greengrass component: its recipe against the recipe format, the configuration's
JSON rendered to the TOML the agent reads, and the recipe's lifecycle run here the way
the nucleus runs it.

The nucleus is not run (it is a Java service that wants an AWS account); what it does to
a recipe is done here as its source does it (KernelConfigResolver, GenericExternalService):
``{namespace:key}`` placeholders in the lifecycle are replaced, a configuration value
that is an object or an array as its JSON text (keys sorted, no spaces), each step
runs with ``sh -c`` in the work folder, with its ``Setenv``. A deployment's merge is
applied to the default configuration as the nucleus merges: objects key by key, any
other value replaced."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.publish as single_shot
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config.loading import load_config
from edge_agent.errors import ConfigError
from edge_agent.greengrass import CONFIG_ENV, render, to_toml
from tests.faulty_kinesis import FaultyKinesis
from tests.support import REPO, AgentProcess, Mosquitto, cli, wait_until

RECIPE = REPO / "packaging" / "greengrass" / "recipe.yaml"
THING_NAME = "edge-gateway-17"

#: The recipe format (2020-01-25), as the Greengrass developer guide's recipe
#: reference documents it: required and allowed keys at each level.
TOP_LEVEL_REQUIRED = {"RecipeFormatVersion", "ComponentName", "ComponentVersion", "Manifests"}
TOP_LEVEL_ALLOWED = TOP_LEVEL_REQUIRED | {
    "ComponentDescription",
    "ComponentPublisher",
    "ComponentConfiguration",
    "ComponentDependencies",
    "ComponentSource",
}
MANIFEST_ALLOWED = {"Name", "Platform", "Lifecycle", "Selections", "Artifacts"}
#: Lifecycle keys; the nucleus reads them without regard to case.
LIFECYCLE_ALLOWED = {"setenv", "bootstrap", "install", "startup", "run", "shutdown", "recover"}
STEP_ALLOWED = {"script", "requiresprivilege", "setenv", "timeout", "skipif"}
ARTIFACT_ALLOWED = {"URI", "Unarchive", "Permission", "Digest", "Algorithm"}
DEPENDENCY_ALLOWED = {"VersionRequirement", "DependencyType"}
#: What ``{namespace:key}`` may name besides ``configuration``.
SYSTEM_PLACEHOLDERS = {
    "artifacts": {"path", "decompressedPath"},
    "work": {"path"},
    "kernel": {"rootPath"},
    "iot": {"thingName"},
}
PLACEHOLDER = re.compile(r"\{([.\w]+):([^:}]+)}")


def load_recipe() -> dict[str, Any]:
    recipe = yaml.safe_load(RECIPE.read_text())
    assert isinstance(recipe, dict)
    return recipe


def pointer(document: object, path: str) -> object:
    """RFC 6901: the value at ``path`` in ``document``; KeyError if there is none."""
    if path == "":
        return document
    for token in path.removeprefix("/").split("/"):
        key = token.replace("~1", "/").replace("~0", "~")
        if isinstance(document, Mapping) and key in document:
            document = document[key]
        elif isinstance(document, list) and key.isdigit() and int(key) < len(document):
            document = document[int(key)]
        else:
            raise KeyError(path)
    return document


def lifecycle_strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [text for item in value.values() for text in lifecycle_strings(item)]
    return []


def recipe_problems(recipe: Mapping[str, Any]) -> list[str]:
    """Every way ``recipe`` departs from the recipe format (and from this project)."""
    problems = [f"missing {key}" for key in sorted(TOP_LEVEL_REQUIRED - set(recipe))]
    problems += [f"unknown top-level key {key}" for key in sorted(set(recipe) - TOP_LEVEL_ALLOWED)]
    if recipe.get("RecipeFormatVersion") != "2020-01-25":
        problems.append("RecipeFormatVersion must be the string 2020-01-25")
    name = recipe.get("ComponentName")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,127}", name):
        problems.append(f"ComponentName {name!r} is not a component name")
    elif name.startswith("aws.greengrass."):
        problems.append("ComponentName: the aws.greengrass. prefix is reserved")
    version = recipe.get("ComponentVersion")
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        problems.append(f"ComponentVersion {version!r} is not MAJOR.MINOR.PATCH")
    defaults = (recipe.get("ComponentConfiguration") or {}).get("DefaultConfiguration")
    if not isinstance(defaults, dict):
        problems.append("ComponentConfiguration.DefaultConfiguration must be an object")
        defaults = {}
    dependencies = recipe.get("ComponentDependencies") or {}
    for dependency, properties in dependencies.items():
        if not isinstance(properties, dict) or set(properties) - DEPENDENCY_ALLOWED:
            problems.append(f"dependency {dependency}: unknown keys")
        elif properties.get("DependencyType", "HARD") not in ("HARD", "SOFT"):
            problems.append(f"dependency {dependency}: DependencyType is HARD or SOFT")
        elif not isinstance(properties.get("VersionRequirement"), str):
            problems.append(f"dependency {dependency}: VersionRequirement must be a string")
    if "aws.greengrass.TokenExchangeService" not in dependencies:
        problems.append("the AWS sinks need the aws.greengrass.TokenExchangeService dependency")
    manifests = recipe.get("Manifests")
    if not isinstance(manifests, list) or not manifests:
        return [*problems, "Manifests must be a non-empty list"]
    for index, manifest in enumerate(manifests):
        where = f"Manifests[{index}]"
        problems += [f"{where}: unknown key {key}" for key in set(manifest) - MANIFEST_ALLOWED]
        if not isinstance(manifest.get("Platform", {}).get("os"), str):
            problems.append(f"{where}.Platform.os must be a string")
        problems += lifecycle_problems(manifest.get("Lifecycle"), defaults, where)
        for artifact in manifest.get("Artifacts", []):
            if set(artifact) - ARTIFACT_ALLOWED or not isinstance(artifact.get("URI"), str):
                problems.append(f"{where}: artifact {artifact} is not URI, Unarchive, ...")
            if artifact.get("Unarchive", "NONE") not in ("NONE", "ZIP"):
                problems.append(f"{where}: Unarchive is NONE or ZIP")
    return problems


def lifecycle_problems(lifecycle: object, defaults: Mapping[str, Any], where: str) -> list[str]:
    if not isinstance(lifecycle, dict):
        return [f"{where}.Lifecycle must be an object"]
    problems = []
    keys = {key.lower(): key for key in lifecycle}
    problems += [
        f"{where}.Lifecycle: unknown step {keys[key]}" for key in keys.keys() - LIFECYCLE_ALLOWED
    ]
    if {"startup", "run"} <= keys.keys():
        problems.append(f"{where}.Lifecycle: Startup and Run exclude each other")
    for lower, key in keys.items():
        step = lifecycle[key]
        if lower == "setenv" or isinstance(step, str):
            continue
        if not isinstance(step, dict):
            problems.append(f"{where}.Lifecycle.{key} must be a script or an object")
            continue
        fields = {field.lower(): value for field, value in step.items()}
        problems += [
            f"{where}.Lifecycle.{key}: unknown key {f}" for f in fields.keys() - STEP_ALLOWED
        ]
        if not isinstance(fields.get("script"), str):
            problems.append(f"{where}.Lifecycle.{key}.Script must be a string")
        if not isinstance(fields.get("requiresprivilege", False), bool):
            problems.append(f"{where}.Lifecycle.{key}.RequiresPrivilege must be a boolean")
        if not isinstance(fields.get("timeout", 0), int):
            problems.append(f"{where}.Lifecycle.{key}.Timeout must be whole seconds")
        setenv = fields.get("setenv", {})
        if not isinstance(setenv, dict) or not all(isinstance(v, str) for v in setenv.values()):
            problems.append(f"{where}.Lifecycle.{key}.Setenv must map names to strings")
    for text in lifecycle_strings(lifecycle):
        for namespace, key in PLACEHOLDER.findall(text):
            if namespace == "configuration":
                try:
                    pointer(defaults, key)
                except KeyError:
                    problems.append(f"{{configuration:{key}}} is not in DefaultConfiguration")
            elif key not in SYSTEM_PLACEHOLDERS.get(namespace, ()):
                problems.append(f"{{{namespace}:{key}}} is no recipe variable")
    return problems


def interpolate(text: str, configuration: Mapping[str, Any], system: Mapping[str, str]) -> str:
    """``text`` with its placeholders replaced as the nucleus replaces them."""

    def value(match: re.Match[str]) -> str:
        namespace, key = match.groups()
        if namespace != "configuration":
            return system[f"{namespace}:{key}"]
        found = pointer(configuration, key)
        if isinstance(found, dict | list):
            return json.dumps(found, sort_keys=True, separators=(",", ":"))
        if isinstance(found, bool):
            return "true" if found else "false"
        return str(found)

    return PLACEHOLDER.sub(value, text)


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A deployment's merge: objects merged key by key, any other value replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def step(lifecycle: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A lifecycle step by its name in any case, as an object."""
    found = next(value for key, value in lifecycle.items() if key.lower() == name)
    return {"Script": found} if isinstance(found, str) else dict(found)


# ---------------------------------------------------------------------- the recipe


def test_the_recipe_follows_the_recipe_format() -> None:
    assert recipe_problems(load_recipe()) == []


def test_the_format_check_finds_what_is_wrong() -> None:
    recipe = load_recipe()
    recipe["ComponentDependencies"] = {}
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    lifecycle["Runn"] = lifecycle.pop("Run")
    lifecycle["Runn"]["Setenv"]["X"] = "{configuration:/nowhere}"
    lifecycle["Install"]["RequiresPrivilege"] = "yes"
    problems = recipe_problems(recipe)
    assert "the AWS sinks need the aws.greengrass.TokenExchangeService dependency" in problems
    assert "Manifests[0].Lifecycle: unknown step Runn" in problems
    assert "{configuration:/nowhere} is not in DefaultConfiguration" in problems
    assert "Manifests[0].Lifecycle.Install.RequiresPrivilege must be a boolean" in problems


def test_the_component_version_is_the_packages_and_names_its_wheel() -> None:
    recipe = load_recipe()
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert recipe["ComponentVersion"] == version
    wheel = f"edge_agent-{version}-py3-none-any.whl"
    manifest = recipe["Manifests"][0]
    assert [Path(a["URI"]).name for a in manifest["Artifacts"]] == [wheel]
    install = step(manifest["Lifecycle"], "install")["Script"]
    assert f"{{artifacts:path}}/{wheel}" in install
    assert f'= "edge-agent {version}" ]' in install  # the installed-already check


# ------------------------------------------------------------------ configuration


def test_the_default_configuration_renders_to_toml_that_loads_and_round_trips(
    tmp_path: Path,
) -> None:
    defaults = load_recipe()["ComponentConfiguration"]["DefaultConfiguration"]["agentConfig"]
    text = render(json.dumps(defaults), state_dir=tmp_path / "state", device_name=THING_NAME)
    expected = merge(
        defaults, {"agent": {"state_dir": str(tmp_path / "state"), "device_name": THING_NAME}}
    )
    assert tomllib.loads(text) == expected
    path = tmp_path / "edge-agent.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.agent.device_name == THING_NAME
    assert config.agent.state_dir == tmp_path / "state"
    assert config.spool.path == tmp_path / "state" / "spool.db"
    assert config.mqtt is not None and config.mqtt.port == defaults["mqtt"]["port"]
    assert [s.topic for s in config.mqtt.subscriptions] == ["sensors/#"]
    assert config.sinks["telemetry"].type == "kinesis"


def test_the_configuration_decides_over_the_command_line_defaults(tmp_path: Path) -> None:
    text = render(
        json.dumps({"agent": {"state_dir": "/data/edge", "device_name": "named"}}),
        state_dir=tmp_path,
        device_name=THING_NAME,
    )
    assert tomllib.loads(text) == {"agent": {"state_dir": "/data/edge", "device_name": "named"}}


def test_null_leaves_a_key_out_and_bad_json_is_a_config_error() -> None:
    assert tomllib.loads(to_toml({"spool": {"max_bytes": None, "durability": "normal"}})) == {
        "spool": {"durability": "normal"}
    }
    with pytest.raises(ConfigError, match="not valid JSON"):
        render("{configuration:/agentConfig}")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        render("[1, 2]")
    with pytest.raises(ConfigError, match=r"mqtt\.subscriptions: null in an array"):
        to_toml({"mqtt": {"subscriptions": [None]}})


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
SCALARS = st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | TEXT
JSON_VALUES = st.recursive(
    SCALARS | st.none(),
    lambda inner: (
        st.lists(inner.filter(lambda v: v is not None), max_size=4)
        | st.dictionaries(TEXT, inner, max_size=4)
    ),
    max_leaves=25,
)


@given(st.dictionaries(TEXT, JSON_VALUES, max_size=5))
def test_any_json_object_reads_back_from_its_toml(document: dict[str, Any]) -> None:
    read = tomllib.loads(to_toml(document))
    assert read == without_nulls(document)
    assert not any(isinstance(v, float) and math.isnan(v) for v in read.values())


def test_a_missing_environment_variable_and_a_bad_configuration_fail_the_run_step(
    tmp_path: Path,
) -> None:
    out = tmp_path / "edge-agent.toml"
    command = [sys.executable, "-m", "edge_agent.greengrass", "render", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 2 and CONFIG_ENV in result.stderr
    env[CONFIG_ENV] = json.dumps({"spool": {"max_bytes": "huge"}})
    assert subprocess.run(command, env=env, cwd=REPO, check=False).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    checked = cli("check-config", "-c", str(out), check=False)
    assert checked.returncode == 2 and "spool.max_bytes" in checked.stderr


# ------------------------------------------------------------ the lifecycle, run


def build_wheel(directory: Path) -> Path:
    """The component's artifact, built from a copy of the package (a build in the
    working tree would leave build/ and egg-info there)."""
    source = directory / "source"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "edge_agent", source / "edge_agent", ignore=shutil.ignore_patterns("__pycache__")
    )
    artifacts = directory / "artifacts"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(artifacts),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return artifacts


def installed_dependencies(directory: Path) -> Path:
    """A folder with this environment's installed packages except edge-agent (and the
    packaging tools), for PYTHONPATH: pip in the component's new venv finds the
    dependencies installed and installs the wheel alone, so the test needs no index."""
    directory.mkdir()
    skip = re.compile(r"(edge_agent|__editable__|pip|setuptools|_distutils_hack|pkg_resources)")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not skip.match(entry.name) and entry.suffix != ".pth":
            (directory / entry.name).symlink_to(entry)
    return directory


def run_step(script: str, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", script],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_the_lifecycle_installs_the_wheel_and_runs_the_agent_on_the_deployed_configuration(
    tmp_path: Path,
    broker: Mosquitto,
    endpoint: FaultyKinesis,
    agents: list[AgentProcess],
) -> None:
    recipe = load_recipe()
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    work = tmp_path / "work" / recipe["ComponentName"]
    work.mkdir(parents=True)
    system = {
        "artifacts:path": str(build_wheel(tmp_path)),
        "work:path": str(work),
        "kernel:rootPath": str(tmp_path),
        "iot:thingName": THING_NAME,
    }
    env = {
        **os.environ,
        # The venv is made by this interpreter; the dependencies are found installed.
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(installed_dependencies(tmp_path / "dependencies")),
        "AWS_REGION": "us-east-1",  # the nucleus sets it for every component
    }
    defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    # A deployment's merge: this broker, this endpoint.
    configuration = merge(
        defaults,
        {
            "agentConfig": {
                "agent": {"status_interval": "200ms"},
                "mqtt": {"port": broker.port, "client_id": "greengrass-test"},
                "sinks": {"telemetry": {"endpoint_url": endpoint.endpoint}},
            }
        },
    )

    install = step(lifecycle, "install")
    started = time.monotonic()
    result = run_step(interpolate(install["Script"], configuration, system), env, work)
    assert result.returncode == 0, result.stderr
    assert (work / "venv" / "lib").exists()
    first_venv = (work / "venv" / "pyvenv.cfg").stat().st_mtime_ns
    # Installed already (a restart of the nucleus runs Install again): left as it is.
    result = run_step(interpolate(install["Script"], configuration, system), env, work)
    assert result.returncode == 0, result.stderr
    assert (work / "venv" / "pyvenv.cfg").stat().st_mtime_ns == first_venv
    assert time.monotonic() - started < 120

    run = step(lifecycle, "run")
    run_env = {
        **env,
        **{k: interpolate(v, configuration, system) for k, v in run["Setenv"].items()},
    }
    json.loads(run_env["EDGE_AGENT_GREENGRASS_CONFIG"])  # the nucleus hands over JSON
    endpoint.create_stream("edge-telemetry", 1)
    config = work / "edge-agent.toml"
    agent = AgentProcess(config, status_file=work / "state" / "spool.db.status.json")
    with open(agent.log, "ab") as log:
        agent.process = subprocess.Popen(
            ["sh", "-c", interpolate(run["Script"], configuration, system)],
            env=run_env,
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    agents.append(agent)
    agent.wait_connected(30)
    loaded = load_config(config)
    assert loaded.agent.device_name == THING_NAME
    assert loaded.mqtt is not None and loaded.mqtt.client_id == "greengrass-test"
    # The agent runs from the component's venv, not from this checkout.
    assert f"{work}/venv/" in Path(f"/proc/{agent.process.pid}/cmdline").read_text()

    single_shot.single("sensors/room1", '{"t": 21.5}', qos=1, port=broker.port)
    wait_until(
        lambda: [r.data for r in endpoint.records("edge-telemetry")] == [b'{"t": 21.5}'],
        20,
        what="the reading at the Kinesis endpoint",
    )
    assert agent.terminate() == 0, agent.log_text()
