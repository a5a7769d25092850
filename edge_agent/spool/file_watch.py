"""Is the file at the spool's path still the one the agent writes?

A cleanup script, an operator or a restore may delete, replace or move the spool under
the running agent. SQLite keeps writing to the inode it opened, so a deleted spool goes
on taking records (and the agent on acknowledging them) that vanish at the next start.
``FileWatch`` remembers the identity (device, inode) of the database file and its WAL
when they are opened; the spool compares them with what the path names now after every
append, before the batch is acknowledged, and on every maintenance pass.

When they differ, ``rebuild`` copies the spool out of the open connection, which still
reads the old inode: ``VACUUM INTO`` a file beside the path (every table, ids kept, so
in-memory leases stay valid), fsync'd, then renamed onto the path. A file that took the
path is moved aside as ``<name>.replaced-<UTC time>``, never deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, NamedTuple

from edge_agent.errors import SpoolError, SpoolFileLost
from edge_agent.spool.recovery import acquire_writer_lock, connect, name_aside

log = logging.getLogger(__name__)

#: SQLite virtual machine steps between two looks at the clock during a rebuild.
KEEPALIVE_STEPS = 100_000


def _every_second(keepalive: Callable[[], None]) -> Callable[[], int]:
    """A progress handler that calls ``keepalive`` at most once a second (and never
    stops the statement: it returns 0)."""
    last = time.monotonic()

    def handler() -> int:
        nonlocal last
        now = time.monotonic()
        if now - last >= 1.0:
            last = now
            keepalive()
        return 0

    return handler


class FileIdentity(NamedTuple):
    device: int
    inode: int


def identity(path: Path) -> FileIdentity | None:
    """What ``path`` names now (None: nothing)."""
    try:
        stats = os.stat(path)
    except FileNotFoundError:
        return None
    return FileIdentity(stats.st_dev, stats.st_ino)


def wal_path(path: Path) -> Path:
    return Path(f"{path}-wal")


def shm_path(path: Path) -> Path:
    return Path(f"{path}-shm")


class FileWatch:
    """The identities of an open spool's database file, WAL and -shm, its writer lock,
    and what happened to them."""

    def __init__(self, path: Path, lock_file: IO[bytes] | None) -> None:
        self.path = path
        # Made once: ``changed`` runs on every append, and a Path made from a string
        # interns its parts. The WAL's name, interned and freed a thousand times a
        # second, filled the interpreter's table of interned strings with deleted
        # entries, and every half minute it was rebuilt at its size: 1.8 MiB more,
        # for a moment (docs/BENCHMARKS.md).
        self.wal_path = wal_path(path)
        self.shm_path = shm_path(path)
        self.lock_file = lock_file
        self.database: FileIdentity | None = None
        self.wal: FileIdentity | None = None
        self.shm: FileIdentity | None = None
        #: Times the file was found gone or replaced and rebuilt.
        self.rebuilds = 0
        #: What happened to the file, while it is not rebuilt yet.
        self.lost: str | None = None
        #: The last rebuild, for the spool's events.
        self.last_rebuild = ""
        self.remember()

    def remember(self) -> None:
        """Take the identities of the files just opened (the WAL exists once the
        connection read in WAL mode)."""
        self.database = identity(self.path)
        self.wal = identity(self.wal_path)
        self.shm = identity(self.shm_path)

    def changed(self) -> str | None:
        """What happened to the files, or None while the path still names them."""
        now = identity(self.path)
        if now != self.database:
            return "was deleted or moved" if now is None else "was replaced by another file"
        if self.wal is not None:
            wal_now = identity(self.wal_path)
            if wal_now != self.wal:
                return (
                    "lost its write-ahead log (deleted)"
                    if wal_now is None
                    else "had its write-ahead log replaced"
                )
        return None

    def recover(
        self,
        conn: sqlite3.Connection,
        what: str,
        durability: str,
        keepalive: Callable[[], None] | None = None,
    ) -> sqlite3.Connection:
        """Rebuild the spool at its path from ``conn`` (which still reads the old inode)
        and return the connection to the new file; ``conn`` is closed then. Raises
        SpoolFileLost (retryable) if the copy cannot be made yet (``conn`` untouched),
        or SpoolFileLost with ``fatal`` set once ``conn`` is closed and the new file
        cannot be opened."""
        message = f"spool file {self.path} {what} while the agent ran"
        if self.lost is None:
            log.error(
                "%s: rebuilding it from the open spool; nothing is acknowledged until then",
                message,
            )
        self.lost = message
        if keepalive is not None:  # a copy of a large spool outlasts a watchdog interval
            conn.set_progress_handler(_every_second(keepalive), KEEPALIVE_STEPS)
        try:
            moved = rebuild(conn, self)
        except (sqlite3.Error, OSError) as err:
            raise SpoolFileLost(f"{message}; rebuilding it failed (retrying): {err}") from err
        finally:
            conn.set_progress_handler(None, 0)
        conn.close()
        try:
            swap_in(self)
            fresh = connect(self.path, durability)
        except (sqlite3.Error, OSError, SpoolError) as err:
            lost = SpoolFileLost(f"{message}; the rebuilt spool cannot be opened: {err}")
            lost.retryable = False
            raise lost from err
        self.remember()
        self._relock()
        self.rebuilds += 1
        self.lost = None
        aside = f"; the file found at its path was moved to {moved.name}" if moved else ""
        log.error("spool rebuilt at %s with everything it held%s", self.path, aside)
        self.last_rebuild = f"{message}; rebuilt{aside}"
        return fresh

    def _relock(self) -> None:
        """Take the writer lock again if its file went with the spool's."""
        if self.lock_file is None:
            return
        held = os.fstat(self.lock_file.fileno())
        if identity(Path(f"{self.path}.lock")) == (held.st_dev, held.st_ino):
            return
        try:
            fresh = acquire_writer_lock(self.path)
        except SpoolError as err:
            log.error("cannot take the spool's writer lock again: %s", err)
            return
        self.lock_file.close()
        self.lock_file = fresh

    def release_lock(self) -> None:
        if self.lock_file is not None:
            self.lock_file.close()
            self.lock_file = None


def rebuild(conn: sqlite3.Connection, watch: FileWatch) -> Path | None:
    """Write the open spool to a new file and put it at the spool's path; a file that
    took the path goes aside. Returns where that file went (None: there was none).
    Raises sqlite3.Error or OSError if the copy cannot be made (e.g. no room): the old
    inode is untouched then, and a later call tries again."""
    path = watch.path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = path.with_name(f"{path.name}.rebuild")
    fresh.unlink(missing_ok=True)
    try:
        conn.execute("VACUUM INTO ?", (str(fresh),))
        os.chmod(fresh, 0o600)
        _fsync(fresh)
    except BaseException:
        with contextlib.suppress(OSError):
            fresh.unlink()
        raise
    moved = None
    if identity(path) not in (None, watch.database):
        moved = _move_aside(path)
    for extra, ours in ((wal_path(path), watch.wal), (shm_path(path), watch.shm)):
        # Not ours (SQLite deletes ours at close): they would be read as the new file's.
        if identity(extra) not in (None, ours):
            _move_aside(extra)
    return moved


def swap_in(watch: FileWatch) -> None:
    """Once the old connection is closed: the rebuilt file becomes the spool."""
    path = watch.path
    fresh = path.with_name(f"{path.name}.rebuild")
    for extra in (wal_path(path), shm_path(path)):
        if extra.exists():  # left by the old connection: it belongs to no file now
            extra.unlink()
    os.replace(fresh, path)
    _fsync(path.parent)


def _move_aside(path: Path) -> Path:
    target = name_aside(path, "replaced")
    os.rename(path, target)
    return target


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
