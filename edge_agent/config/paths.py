"""Whether the places the configuration names can be used on this machine.

Loading checks what the file says; this checks the filesystem, as the user who runs the
command: the directory that holds the spool (``agent.state_dir``, or the directory of
``spool.path``) and ``agent.status_dir`` each exist or can be created, are directories
and are writable, and the spool's files that exist already can be read and written (a
spool created by root once, then run as the service's user, is the classic case).
``edge-agent check-config`` reports these as configuration problems, and ``edge-agent
run`` checks them before it opens the spool, so that a start that cannot work says why
in one line per place instead of a traceback.

It is not part of ``load_config``: ``status`` and the spool commands read the same
file as other users (an operator looking at the service's agent), and a reload must not
fail over a directory. Checked as another user than the service's, the answer can
differ (systemd's ``StateDirectory=`` creates /var/lib/edge-agent for the service's
user only): each reason names the user it was checked as.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from edge_agent.config.loading import Config
from edge_agent.errors import ConfigProblem

#: What the spool keeps beside its file (spool/recovery.py, spool/storage.py).
SPOOL_FILE_SUFFIXES = ("", "-wal", "-shm", ".lock", ".ballast")


def check_paths(config: Config) -> list[ConfigProblem]:
    """Every reason the agent could not write where the configuration says, each with
    the key to look at ([] when all is usable)."""
    spool = Path(config.spool.path)
    # The spool's place comes from state_dir unless spool.path names another.
    spool_key = "agent.state_dir" if spool == config.agent.state_dir / "spool.db" else "spool.path"
    problems: list[ConfigProblem] = []

    def check(key: str, reason: str | None) -> None:
        if reason is not None:
            problems.append(ConfigProblem(config.source_file, key, reason))

    check(spool_key, directory_problem(spool.parent))
    status_dir = config.agent.status_dir
    if status_dir is not None:
        check("agent.status_dir", directory_problem(status_dir))
    for suffix in SPOOL_FILE_SUFFIXES:
        check("spool.path", file_problem(Path(f"{spool}{suffix}")))
    status_file = (status_dir or spool.parent) / f"{spool.name}.status.json"
    check("agent.status_dir" if status_dir else spool_key, file_problem(status_file))
    return problems


def directory_problem(directory: Path) -> str | None:
    """Why the agent could not write in ``directory`` (None: it can), creating it and
    its parents if they are missing, as the spool does at open."""
    found = _mode(directory)
    if isinstance(found, str):
        return found
    if found is not None:
        return _unwritable(directory) if stat.S_ISDIR(found) else f"{directory} is not a directory"
    ancestor = directory.parent
    while (found := _mode(ancestor)) is None and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if isinstance(found, str):
        return f"{directory} does not exist and cannot be created: {found}"
    if found is not None and not stat.S_ISDIR(found):
        return f"{directory} cannot be created: {ancestor} is not a directory"
    if reason := _unwritable(ancestor):
        return f"{directory} does not exist and cannot be created: {reason}"
    return None


def file_problem(file: Path) -> str | None:
    """Why the agent could not read and write ``file``, if it is there (None: it can,
    or there is no such file)."""
    found = _mode(file)
    if found is None:
        return None
    if isinstance(found, str):
        return found
    if os.access(file, os.R_OK | os.W_OK, effective_ids=_EFFECTIVE_IDS):
        return None
    owner = _user_name(file.stat().st_uid)
    return f"{file} is not readable and writable {_checked_as()} (its owner is {owner})"


def _unwritable(directory: Path) -> str | None:
    if os.access(directory, os.W_OK | os.X_OK, effective_ids=_EFFECTIVE_IDS):
        return None
    if os.statvfs(directory).f_flag & os.ST_RDONLY:
        return f"{directory} is on a read-only filesystem"
    return f"{directory} is not writable {_checked_as()}"


#: os.access asks about the real user unless told to ask about the effective one.
_EFFECTIVE_IDS = os.access in os.supports_effective_ids


def _mode(path: Path) -> int | str | None:
    """The mode of ``path``; None if nothing is there; why, if it cannot be looked at."""
    try:
        return path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        return f"{path} cannot be looked at {_checked_as()}: {err.strerror}"


def _checked_as() -> str:
    return f"by user {_user_name(os.geteuid())}"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
