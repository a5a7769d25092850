"""Opening the spool file safely: the writer lock, the integrity check, quarantine of a
bad file, the suspect marker, and SQLite's errors as the agent's.

A file that is not a database or fails its check is renamed ``<name>.corrupt-<UTC
time>`` (with its -wal/-shm) and a fresh spool is created in its place, so that a bad
file never makes the agent crash-loop. ``<name>.needs-check`` (``mark_suspect``) asks
the next open for the full integrity check, which finds what ``quick_check`` cannot.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import IO, Literal, NamedTuple

from edge_agent.errors import SpoolBusy, SpoolCorrupt, SpoolError, SpoolFull
from edge_agent.spool.queues import recount
from edge_agent.spool.schema import migrate

log = logging.getLogger(__name__)

#: How long a writer waits for another connection's write lock.
BUSY_TIMEOUT_MS = 5000

#: SQLite's primary result code -> the agent's error, and whether retrying can succeed
#: (an I/O error may be passing; it has no class of its own). Other codes: SpoolError.
_SQLITE_ERRORS: dict[int, tuple[type[SpoolError], bool]] = {
    sqlite3.SQLITE_FULL: (SpoolFull, True),
    sqlite3.SQLITE_BUSY: (SpoolBusy, True),
    sqlite3.SQLITE_LOCKED: (SpoolBusy, True),
    sqlite3.SQLITE_CORRUPT: (SpoolCorrupt, False),
    sqlite3.SQLITE_NOTADB: (SpoolCorrupt, False),
    sqlite3.SQLITE_IOERR: (SpoolError, True),
}


def translate_sqlite_error(err: sqlite3.Error, doing: str) -> SpoolError:
    """Map a sqlite3 error onto the agent's error tree (retryable or not)."""
    code = (getattr(err, "sqlite_errorcode", 0) or 0) & 0xFF
    kind, retryable = _SQLITE_ERRORS.get(code, (SpoolError, False))
    error = kind(f"spool {doing} failed: {err}")
    if retryable and not kind.retryable:
        error.retryable = True
    return error


class OpenedFile(NamedTuple):
    """What ``open_file`` found and did."""

    conn: sqlite3.Connection
    lock_file: IO[bytes]
    #: Why the file was moved aside and where to, if it was.
    quarantined: str | None
    #: Records an older agent had marked as leased when it stopped.
    leases_returned: int


def open_file(
    path: Path,
    durability: Literal["full", "normal"],
    integrity_check: Literal["quick", "full", "off"],
) -> OpenedFile:
    """Lock, check, migrate and recount the spool at ``path`` (created if missing); a
    corrupt file is moved aside and a fresh one created."""
    try:
        # Only the agent's user reads what it spools (a directory that exists keeps its
        # mode: under systemd, StateDirectoryMode= sets it).
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise SpoolError(f"cannot create spool directory {path.parent}: {err}") from err
    lock_file = acquire_writer_lock(path)
    marker = suspect_marker(path)
    if marker.exists():
        # The last run hit corruption that quick_check may not see (an index that no
        # longer matches its table): check everything before trusting the file.
        integrity_check = "full"
    try:
        quarantined = None
        returned = 0
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(path, durability)
            check_integrity(conn, integrity_check)
            returned = count_legacy_leases(conn)
            migrate(conn)
            recount(conn)
        except (sqlite3.DatabaseError, SpoolCorrupt) as err:
            if isinstance(err, sqlite3.DatabaseError):
                translated = translate_sqlite_error(err, "open")
                if not isinstance(translated, SpoolCorrupt):
                    raise translated from err
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            moved_to = quarantine(path)
            log.error(
                "spool %s is corrupt (%s); moved aside to %s, starting a fresh spool",
                path,
                err,
                moved_to,
            )
            quarantined = f"corrupt spool moved aside to {moved_to.name}: {err}"
            returned = 0
            conn = connect(path, durability)
            migrate(conn)
        marker.unlink(missing_ok=True)
        return OpenedFile(conn, lock_file, quarantined, returned)
    except BaseException:
        lock_file.close()
        raise


def connect(path: Path, durability: str) -> sqlite3.Connection:
    # A new file is the agent's alone (0600); SQLite gives its -wal and -shm the same mode.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise SpoolError(f"cannot switch {path} to WAL mode (got {mode})")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys = OFF")
    # Some builds (Debian's) zero every deleted record, which made deleting delivered
    # records 40 % dearer; FAST zeroes only what costs no extra I/O (SQLite's default).
    conn.execute("PRAGMA secure_delete = FAST")
    return conn


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection for status and inspection while the agent runs (no lock taken)."""
    if not path.exists():
        raise SpoolError(f"no spool at {path}")
    try:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as err:
        raise translate_sqlite_error(err, "open") from err
    if version == 0:
        raise SpoolError(f"{path} is not an initialised spool")
    return conn


def count_legacy_leases(conn: sqlite3.Connection) -> int:
    """Records marked as leased by an agent that wrote its leases to the file (schema
    version 1): what it had in flight when it stopped. The migration to version 2 drops
    the mark; the records are pending like all others. 0 for a newer or a new file."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(records)").fetchall()}
    if "leased" not in columns:
        return 0
    return int(conn.execute("SELECT count(*) FROM records WHERE leased = 1").fetchone()[0])


def suspect_marker(path: Path) -> Path:
    return Path(f"{path}.needs-check")


def mark_suspect(path: Path) -> None:
    """Ask the next open for a full integrity check (after SQLite reported corruption)."""
    with contextlib.suppress(OSError):
        suspect_marker(path).touch()


def check_integrity(conn: sqlite3.Connection, how: str) -> None:
    if how == "off":
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return
    pragma = "quick_check" if how == "quick" else "integrity_check"
    problems = [row[0] for row in conn.execute(f"PRAGMA {pragma}(5)").fetchall()]
    if problems != ["ok"]:
        raise SpoolCorrupt(f"integrity check failed: {'; '.join(map(str, problems))}")


def quarantine(path: Path) -> Path:
    """Rename a bad spool (and its WAL/SHM) out of the way; returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    suffix = 1
    while target.exists():
        suffix += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{suffix}")
    for extra in ("", "-wal", "-shm"):
        source = Path(f"{path}{extra}")
        if source.exists():
            source.rename(Path(f"{target}{extra}"))
    return target


def acquire_writer_lock(path: Path) -> IO[bytes]:
    """``<path>.lock``, held with flock while the spool is open; names its holder."""
    lock_path = Path(f"{path}.lock")
    # held open for the spool's lifetime
    handle = os.fdopen(os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+b")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().decode(errors="replace").strip() or "another process"
        handle.close()
        raise SpoolError(f"spool {path} is in use by {owner}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}".encode())
    handle.flush()
    return handle
