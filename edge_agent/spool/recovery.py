"""Opening the spool file safely: the writer lock, what a crash left in the WAL, the
integrity check, quarantine (and salvage) of a bad file, the suspect marker, and
SQLite's errors as the agent's.

A file that is not a database or fails its check is renamed ``<name>.corrupt-<UTC
time>`` (with its -wal/-shm) and a fresh spool is created in its place, so that a bad
file never makes the agent crash-loop; every record that can still be read from the
moved file is copied into the fresh one (spool/salvage.py). ``<name>.needs-check``
(``mark_suspect``) asks the next open for the full integrity check, which finds what
``quick_check`` cannot.

Before SQLite opens the file, ``check_wal`` reads the WAL and the -shm a crash left:
SQLite's recovery rebuilds the -shm from the WAL, stopping silently at the first frame
that does not check out, and the evidence of a WAL cut short goes with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import struct
import sys
import time
from pathlib import Path
from typing import IO, Literal, NamedTuple

from edge_agent.errors import SpoolBusy, SpoolCorrupt, SpoolError, SpoolFull
from edge_agent.spool.queues import recount
from edge_agent.spool.salvage import Salvaged, salvage_into
from edge_agent.spool.schema import migrate
from edge_agent.spool.stats import insert_event

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
    extended = getattr(err, "sqlite_errorcode", 0) or 0
    code = extended & 0xFF
    if extended == sqlite3.SQLITE_IOERR_SHMSIZE:  # the -shm could not grow: no room
        code = sqlite3.SQLITE_FULL
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
    #: What was copied out of the file moved aside (None: nothing was moved aside).
    salvaged: Salvaged | None = None
    #: What the WAL and -shm a crash left showed before SQLite opened the file.
    wal_warnings: tuple[str, ...] = ()

    def events(self) -> list[tuple[str, str, str]]:
        """The spool events this open calls for, oldest first: (level, kind, message)."""
        events = [("warning", "wal_check", warning) for warning in self.wal_warnings]
        if self.quarantined is not None:
            message = self.quarantined
            if self.salvaged is not None:
                message += f"; {self.salvaged.describe()}"
            events.append(("error", "spool_quarantined", message))
        if self.leases_returned:
            events.append(
                (
                    "warning",
                    "leases_returned",
                    f"{self.leases_returned} records in flight when the agent stopped are "
                    "pending again (they may be sent twice)",
                )
            )
        return events


def open_file(
    path: Path,
    durability: Literal["full", "normal"],
    integrity_check: Literal["quick", "full", "off"],
) -> OpenedFile:
    """Lock, check, migrate and recount the spool at ``path`` (created if missing); a
    corrupt file is moved aside, a fresh one created and what the old one still reads
    copied into it."""
    make_spool_directory(path)
    lock_file = acquire_writer_lock(path)
    try:
        adopt_rebuilt(path)
    except OSError as err:
        lock_file.close()
        raise SpoolError(f"cannot put the rebuilt spool {path}.rebuild in place: {err}") from err
    return open_locked(path, lock_file, durability, integrity_check)


def adopt_rebuilt(path: Path) -> None:
    """A ``<name>.rebuild`` left by an agent that stopped while it rebuilt a lost spool
    (spool/file_watch.py): with no spool at the path, it is the spool (a copy cut short
    fails the integrity check and is salvaged); beside a spool, it is kept aside, never
    deleted unseen."""
    rebuilt = path.with_name(f"{path.name}.rebuild")
    if not rebuilt.exists():
        return
    if path.exists():
        aside = name_aside(rebuilt, "unused")
        rebuilt.rename(aside)
        log.warning("spool %s: a rebuild left beside it was moved to %s", path, aside.name)
        return
    for extra in ("-wal", "-shm"):  # they belonged to the lost file
        Path(f"{path}{extra}").unlink(missing_ok=True)
    os.replace(rebuilt, path)
    log.warning("spool %s: the copy rebuilt before the agent stopped is the spool", path)


def make_spool_directory(path: Path) -> None:
    try:
        # Only the agent's user reads what it spools (a directory that exists keeps its
        # mode: under systemd, StateDirectoryMode= sets it).
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise SpoolError(f"cannot create spool directory {path.parent}: {err}") from err


def open_locked(
    path: Path,
    lock_file: IO[bytes],
    durability: Literal["full", "normal"],
    integrity_check: Literal["quick", "full", "off"],
) -> OpenedFile:
    """``open_file`` once the writer lock is held (closed here if the open fails)."""
    marker = suspect_marker(path)
    if marker.exists():
        # The last run hit corruption that quick_check may not see (an index that no
        # longer matches its table): check everything before trusting the file.
        integrity_check = "full"
    try:
        wal_warnings = tuple(check_wal(path))
        for warning in wal_warnings:
            log.warning("spool %s: %s", path, warning)
        quarantined = None
        salvaged = None
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
            salvaged = salvage_at_quarantine(conn, moved_to)
        marker.unlink(missing_ok=True)
        return OpenedFile(conn, lock_file, quarantined, returned, salvaged, wal_warnings)
    except BaseException:
        lock_file.close()
        raise


def salvage_at_quarantine(conn: sqlite3.Connection, moved_to: Path) -> Salvaged:
    """Copy what the file just moved aside still reads into the fresh spool. Whatever
    goes wrong, the fresh spool opens: a bad file never makes the agent crash-loop."""
    try:
        return salvage_into(conn, moved_to)
    except Exception as err:  # a file damaged in a way salvage did not foresee
        log.exception("salvage of %s failed", moved_to)
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        with contextlib.suppress(sqlite3.Error):
            recount(conn)
        return Salvaged(
            moved_to.name,
            0,
            None,
            stopped=f"{err}; try `edge-agent spool salvage {moved_to.name}` by hand",
        )


def salvage_file(
    path: Path,
    source: Path,
    durability: Literal["full", "normal"],
    integrity_check: Literal["quick", "full", "off"],
) -> Salvaged:
    """``edge-agent spool salvage``: copy what can be read of the damaged spool file
    ``source`` (an older ``*.corrupt-*``) into the spool at ``path``, through the same
    locked open as the agent's (refused while an agent writes it), and record it in the
    spool's events. The records go after those the spool holds."""
    make_spool_directory(path)
    try:
        lock_file = acquire_writer_lock(path)
    except SpoolError as err:
        raise SpoolError(f"{err}: stop the agent before salvaging into its spool") from err
    opened = open_locked(path, lock_file, durability, integrity_check)
    try:
        salvaged = salvage_into(opened.conn, source)
        level = "info" if salvaged.complete else "warning"
        events = [*opened.events(), (level, "spool_salvaged", f"by hand: {salvaged.describe()}")]
        now_ms = int(time.time() * 1000)
        opened.conn.execute("BEGIN IMMEDIATE")
        for event in events:
            insert_event(opened.conn, now_ms, *event)
        opened.conn.execute("COMMIT")
        with contextlib.suppress(sqlite3.Error):
            opened.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as err:
        raise translate_sqlite_error(err, "salvage") from err
    finally:
        opened.conn.close()
        opened.lock_file.close()
    return salvaged


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
    conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
    return conn


#: The spool connection's page cache, KiB (SQLite's default is 2,000). It appends at the
#: end of the table and leases, settles and evicts from the start: what is read again
#: is the tree's inner pages and the few leaves at each end, and the rest of a larger
#: cache held pages read once, 1.5 MiB of them at 2 MB; 256 KiB costs no more CPU than
#: 512 KiB did, and holds 0.26 MiB less (docs/BENCHMARKS.md).
WRITER_CACHE_KIB = 256


#: A read-only connection's page cache, KiB (SQLite's default is 2,000). Its readers scan
#: (an analytics window, status counts): the pages they read once would fill a larger
#: cache and stay there for the connection's life, 2 MiB for each of an analytics
#: query's two connections. The tree's inner pages fit in this (a query's CPU is the
#: same with 128 KiB as with 256 KiB, and 2 MB).
READER_CACHE_KIB = 128


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection for status and inspection while the agent runs (no lock taken), with
    a small page cache (``READER_CACHE_KIB``)."""
    if not path.exists():
        raise SpoolError(f"no spool at {path}")
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version == 0:
            raise SpoolError(f"{path} is not an initialised spool")
    except (sqlite3.Error, SpoolError) as err:
        if conn is not None:
            conn.close()
        if isinstance(err, SpoolError):
            raise
        raise translate_sqlite_error(err, "open") from err
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


#: A WAL file: a 32-byte header (big-endian: magic, format, page size, checkpoint
#: sequence, two salts, two checksums), then frames of a 24-byte header (page number,
#: database size at a commit, the two salts, two checksums) and one page.
WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_HEADER_BYTES = 32
WAL_FRAME_HEADER_BYTES = 24
#: The -shm starts with the wal-index header, 48 bytes stored twice (native byte order):
#: isInit at byte 12, mxFrame (the last committed frame) at 16, the WAL's salts at 32;
#: then the checkpoint info, nBackfill (frames copied into the database) at byte 96.
SHM_HEADER_BYTES = 48
_SHM_VERSION = 3007000
_SHM_BACKFILL_OFFSET = 96


class _WalIndex(NamedTuple):
    """What a trustworthy -shm says of its WAL."""

    committed_frames: int
    backfilled_frames: int
    salts: bytes


def _read_wal_index(shm: Path) -> _WalIndex | None:
    """The -shm's wal-index header, if both copies agree and it was initialised."""
    try:
        with open(shm, "rb") as handle:
            data = handle.read(_SHM_BACKFILL_OFFSET + 4)
    except OSError:
        return None
    if len(data) < _SHM_BACKFILL_OFFSET + 4:
        return None
    first, second = data[:SHM_HEADER_BYTES], data[SHM_HEADER_BYTES : 2 * SHM_HEADER_BYTES]
    order = "<" if sys.byteorder == "little" else ">"
    (version,) = struct.unpack_from(f"{order}I", first, 0)
    if first != second or first[12] != 1 or version != _SHM_VERSION:
        return None
    (committed,) = struct.unpack_from(f"{order}I", first, 16)
    (backfilled,) = struct.unpack_from(f"{order}I", data, _SHM_BACKFILL_OFFSET)
    return _WalIndex(committed, backfilled, first[32:40])


def check_wal(path: Path) -> list[str]:
    """What the WAL and -shm beside ``path`` show that SQLite will not say: a WAL cut in
    the middle of a frame, a WAL holding fewer frames than the -shm says were committed
    (or frames that are not its own where committed ones should be), a -shm without its
    WAL. Read before SQLite opens the file: its recovery rebuilds the -shm from the WAL.
    A clean close leaves neither file (a read-only open may leave both, consistent)."""
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    try:
        index = _read_wal_index(shm) if shm.exists() else None
        if not wal.exists():
            if not shm.exists():
                return []
            message = (
                f"{shm.name} without {wal.name}: the WAL was deleted while the spool was "
                "not closed cleanly (by hand, by a cleanup, or lost with the last writes)"
            )
            if index is None:
                message += "; whether it held transactions not yet in the database is unknown"
            elif index.committed_frames > index.backfilled_frames:
                lost = index.committed_frames - index.backfilled_frames
                message += (
                    f"; {lost} committed frame(s) it held were not yet copied into the "
                    "database: those transactions are lost"
                )
            else:
                message += "; everything it held was in the database already: nothing is lost"
            return [message]
        with open(wal, "rb") as handle:
            return _check_wal_file(wal, handle, shm, index)
    except OSError as err:
        return [f"could not check {wal.name}: {err}"]


def _check_wal_file(wal: Path, handle: IO[bytes], shm: Path, index: _WalIndex | None) -> list[str]:
    warnings = []
    size = os.fstat(handle.fileno()).st_size
    header = handle.read(WAL_HEADER_BYTES)
    frames = frame_bytes = 0
    salts = None
    if 0 < size < WAL_HEADER_BYTES:
        warnings.append(f"{wal.name} is {size} bytes, shorter than a WAL header: it was cut short")
    elif size:
        magic, _, page_size = struct.unpack_from(">III", header, 0)
        if magic not in WAL_MAGIC or page_size < 512 or page_size & (page_size - 1):
            warnings.append(f"{wal.name} does not start with a WAL header: SQLite ignores it")
        else:
            salts = header[16:24]
            frame_bytes = WAL_FRAME_HEADER_BYTES + page_size
            frames, partial = divmod(size - WAL_HEADER_BYTES, frame_bytes)
            if partial:
                warnings.append(
                    f"{wal.name} ends {partial} bytes into frame {frames + 1} (a frame is "
                    f"{frame_bytes} bytes): a write was cut short, by a crash while "
                    "writing or by the file being truncated; the partial frame is ignored"
                )
    if index is None or index.committed_frames == 0:
        return warnings
    if salts is not None and salts != index.salts:
        return warnings  # the -shm describes an earlier generation of the WAL
    if frames < index.committed_frames:
        warnings.append(
            f"{wal.name} holds {frames} frames but {shm.name} says {index.committed_frames} "
            f"were committed: the WAL was cut short; the transactions in the "
            f"{index.committed_frames - frames} missing frame(s) are lost"
        )
    elif salts is not None:
        stray = _first_stray_frame(handle, salts, frame_bytes, index.committed_frames)
        if stray is not None:
            warnings.append(
                f"frame {stray} of the {index.committed_frames} committed frames in "
                f"{wal.name} does not belong to this WAL (overwritten?): SQLite stops "
                "reading there, and the transactions from it on are lost"
            )
    return warnings


def _first_stray_frame(
    handle: IO[bytes], salts: bytes, frame_bytes: int, frames: int
) -> int | None:
    """The first of ``frames`` whose header does not carry the WAL's salts."""
    for number in range(1, frames + 1):
        handle.seek(WAL_HEADER_BYTES + (number - 1) * frame_bytes + 8)
        if handle.read(8) != salts:
            return number
    return None


def name_aside(path: Path, label: str) -> Path:
    """``<name>.<label>-<UTC time>`` beside ``path`` (``-2``, ``-3``... if taken)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.{label}-{stamp}")
    suffix = 1
    while target.exists():
        suffix += 1
        target = path.with_name(f"{path.name}.{label}-{stamp}-{suffix}")
    return target


def quarantine(path: Path) -> Path:
    """Rename a bad spool (and its WAL/SHM) out of the way; returns the new name."""
    target = name_aside(path, "corrupt")
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
