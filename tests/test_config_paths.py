"""Where the agent writes, checked by check-config and before run: each problem names
the file, the key and the reason, as the user who asked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config.loading import load_config
from edge_agent.config.paths import check_paths, directory_problem
from tests.support import REPO

NOBODY = 65534
#: As root, the checks run as nobody (root may write anywhere but a read-only
#: filesystem); as anyone else, as that user, in directories they may not write.
AS_OTHER = (
    ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    if os.geteuid() == 0
    else ()
)


def config_file(tmp_path: Path, agent: str, spool: str = "") -> Path:
    path = tmp_path / "edge-agent.toml"
    path.write_text(f'[agent]\n{agent}\n[spool]\n{spool}\n[sinks.telemetry]\ntype = "hold"\n')
    path.chmod(0o644)
    return path


def found(config: Path) -> list[tuple[str, str]]:
    return [(problem.key, problem.reason) for problem in check_paths(load_config(config))]


def as_other(*args: str) -> subprocess.CompletedProcess[str]:
    """``edge-agent ARGS`` as a user who may not write where root does."""
    return subprocess.run(
        [*AS_OTHER, sys.executable, "-m", "edge_agent", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory the other user may enter (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="edge-agent-paths-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for directory in path.rglob("*"):
            if directory.is_dir():
                directory.chmod(0o755)  # a non-root user's 0o555 directory, to remove
        shutil.rmtree(path)


def not_writable_by_others(directory: Path) -> Path:
    directory.mkdir(parents=True)
    directory.chmod(0o555 if not AS_OTHER else 0o755)  # root owns it when AS_OTHER
    return directory


def test_directories_that_exist_or_can_be_created_are_fine(tmp_path: Path) -> None:
    (tmp_path / "status").mkdir()
    config = config_file(
        tmp_path, f'state_dir = "{tmp_path / "a" / "b"}"\nstatus_dir = "{tmp_path / "status"}"'
    )
    assert found(config) == []
    assert directory_problem(tmp_path) is None
    assert not (tmp_path / "a").exists(), "checking creates nothing"


def test_a_state_dir_that_is_a_file_or_lies_under_one(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    config = config_file(tmp_path, f'state_dir = "{tmp_path / "file"}"')
    assert found(config) == [("agent.state_dir", f"{tmp_path / 'file'} is not a directory")]
    config = config_file(tmp_path, f'state_dir = "{tmp_path / "file" / "state"}"')
    assert found(config) == [
        (
            "agent.state_dir",
            f"{tmp_path / 'file' / 'state'} cannot be created: "
            f"{tmp_path / 'file'} is not a directory",
        )
    ]


def test_the_key_is_the_one_that_names_the_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    config = config_file(
        tmp_path,
        f'state_dir = "{tmp_path}"\nstatus_dir = "{tmp_path / "file"}"',
        f'path = "{tmp_path / "file" / "spool.db"}"',
    )
    assert [key for key, _ in found(config)] == ["spool.path", "agent.status_dir"]


def test_check_config_and_run_name_a_directory_this_user_cannot_write(
    shared_tmp: Path,
) -> None:
    tmp_path = shared_tmp
    locked = not_writable_by_others(tmp_path / "locked")
    config = config_file(tmp_path, f'state_dir = "{locked / "state"}"')
    checked = as_other("check-config", "-c", str(config))
    assert checked.returncode == 2
    user = "nobody" if AS_OTHER else checked.stderr.split("by user ")[-1].split()[0]
    assert checked.stderr == (
        f"edge-agent: configuration error:\n{config}: agent.state_dir: {locked / 'state'} "
        f"does not exist and cannot be created: {locked} is not writable by user {user}\n"
    )
    started = as_other("run", "-c", str(config))
    assert started.returncode == 1
    assert started.stderr.startswith("edge-agent: cannot start:\n")
    assert "Traceback" not in started.stderr and f"{locked} is not writable" in started.stderr


@pytest.mark.skipif(not AS_OTHER, reason="files of another user need root to make")
def test_spool_files_another_user_made_are_named_with_their_owner(shared_tmp: Path) -> None:
    """The agent run by hand as root once, then as the service's user."""
    tmp_path = shared_tmp
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    for name in ("spool.db", "spool.db.lock"):
        (state / name).write_bytes(b"")
        (state / name).chmod(0o600)
    config = config_file(tmp_path, f'state_dir = "{state}"')
    checked = as_other("check-config", "-c", str(config))
    assert checked.returncode == 2
    assert checked.stderr.splitlines()[1:] == [
        f"{config}: spool.path: {state / name} is not readable and writable by user nobody "
        "(its owner is root)"
        for name in ("spool.db", "spool.db.lock")
    ]
