"""Room on the spool's filesystem: the reserve that the spool's growth never eats into,
the ballast that lets deletes finish on a filesystem something else filled, and the
intake pause in between.

*Free space* is the filesystem's free blocks as the agent's (unprivileged) user may use
them (``f_bavail``, not the blocks kept for root). The spool reuses space it already
holds first: the free pages inside its file (deleted records leave them) and its WAL,
which SQLite writes again from its start once a checkpoint has copied it into the file.
A batch is admitted if what it takes from the filesystem beyond that space
(``Room.growth``) leaves at least the reserve free; otherwise intake pauses, and resumes
once a batch fits with a margin to spare. A busy intake does not measure for every
commit: a measurement admits the batches that follow it for ``ROOM_TRUSTED_S``, up to
the room it found above the reserve and at most the resume margin (an eighth of the
reserve), each batch charged twice its size (the file and the WAL). Should another
process fill the filesystem meanwhile, the spool takes at most that margin out of the
reserve before it measures again (or SQLite refuses the write). During a pause, a batch
that fits entirely in the space the spool holds is still stored (the spool goes on
cycling through its own pages while delivery works), as long as the ballast is in place.
A write SQLite still finds no room for (the estimate is close, not exact) starts a pause
too.

The *ballast* (``<spool>.ballast``, a quarter of the reserve, at most 16 MiB, allocated
with ``posix_fallocate``) is what the agent keeps for itself. A delete or a checkpoint
still needs to write (its pages go through the WAL, and a checkpoint may have to extend
the file with pages appended before); when another process fills the filesystem to the
last block, the spool gives the ballast back and retries, so that delivered records can
always be deleted. It is allocated again once the free space is back above the reserve.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edge_agent.errors import IntakePaused, SpoolFull

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: The largest ballast file.
BALLAST_MAX = 16 * 1024**2
#: The share of the reserve kept as ballast.
BALLAST_SHARE = 4
#: A reserve larger than this share of the filesystem is cut down to it (a small tmpfs
#: or test image would otherwise never admit a record).
RESERVE_MAX_SHARE = 4
#: Intake resumes once a batch fits with this share of the reserve to spare (no flapping).
RESUME_MARGIN_SHARE = 8
#: What a record takes in the file beside its payload (row header, index entry), bytes.
RECORD_OVERHEAD = 64
#: How long a measured room admits batches without measuring again (while they fit
#: in what it left above the reserve).
ROOM_TRUSTED_S = 0.25
#: SQLite's default WAL size, in pages, at which a commit checkpoints it.
SQLITE_CHECKPOINT_PAGES = 1000
#: The least of it: each checkpoint costs an fsync of the file.
CHECKPOINT_MIN_PAGES = 16


@dataclass
class Room:
    """One look at the spool's filesystem and file, in bytes."""

    free: int
    size: int
    free_pages: int
    wal: int
    ballast: int

    def growth(self, incoming: int) -> int:
        """What a batch that takes ``incoming`` bytes in the file may take from the
        filesystem: the file's growth beyond its free pages, and the WAL's beyond its
        size."""
        return max(0, incoming - self.free_pages) + max(0, incoming - self.wal)


def make_room_at_open(path: Path) -> None:
    """Before the open writes (its -shm, the recount, the migrations): on a filesystem
    with less room than the ballast, give the ballast back (an agent that cannot open
    its spool cannot delete what it delivered either)."""
    ballast = Path(f"{path}.ballast")
    try:
        size = ballast.stat().st_size
        stats = os.statvfs(path.parent)
    except OSError:
        return
    if stats.f_bavail * stats.f_frsize < size:
        with contextlib.suppress(OSError):
            ballast.unlink()
            log.warning("the spool's filesystem is full: released its ballast to open it")


class Storage:
    """The reserve, the ballast and the intake pause of one spool (the spool calls it
    under its lock)."""

    def __init__(self, path: Path, reserve: int) -> None:
        self.path = path
        self.ballast_path = Path(f"{path}.ballast")
        self.reserve = 0
        self.ballast_size = 0
        #: Why intake is refused (and since when), None while it is admitted.
        self.paused: str | None = None
        self.paused_since: float | None = None
        self.pauses = 0
        #: Appends SQLite refused for want of room (the estimate fell short, or the
        #: filesystem filled from elsewhere).
        self.refused_by_sqlite = 0
        self.ballast_releases = 0
        self.last_room: Room | None = None
        #: Whether the ballast is on disk: known from what this object did to it (no stat
        #: per append); the maintenance pass looks at the file itself.
        self._ballast_held = False
        #: Bytes the last measurement left above the reserve, less what was admitted
        #: since, and until when (monotonic) it is trusted.
        self._headroom = 0
        self._trusted_until = 0.0
        self.set_reserve(reserve)

    def set_reserve(self, reserve: int) -> None:
        """Take ``reserve`` (at start, and on a reload): cut to a quarter of the
        filesystem, a quarter of it as ballast; a ballast no longer wanted is given back."""
        self.reserve = reserve
        self._headroom = 0
        if reserve:
            size = self._filesystem_size()
            if size and reserve > size // RESERVE_MAX_SHARE:
                self.reserve = size // RESERVE_MAX_SHARE
                log.warning(
                    "spool reserve of %d bytes is more than a quarter of the spool's "
                    "filesystem (%d bytes): keeping %d bytes free instead",
                    reserve,
                    size,
                    self.reserve,
                )
        self.ballast_size = min(BALLAST_MAX, self.reserve // BALLAST_SHARE)
        if not self.ballast_size and self._ballast_held:
            with contextlib.suppress(OSError):
                self.ballast_path.unlink()
        self._ballast_held = bool(self.ballast_size) and self._ballast_exists()

    # ------------------------------------------------------------------ measuring

    def _filesystem_size(self) -> int:
        try:
            stats = os.statvfs(self.path.parent)
        except OSError:
            return 0
        return stats.f_blocks * stats.f_frsize

    def measure(self, conn: sqlite3.Connection) -> Room:
        """The room now (one statvfs and one header read)."""
        stats = os.statvfs(self.path.parent)
        free_pages, page_size = conn.execute(
            "SELECT * FROM pragma_freelist_count, pragma_page_size"
        ).fetchone()
        ballast = self.ballast_size if self._ballast_held else 0
        try:
            wal = os.stat(f"{self.path}-wal").st_size
        except OSError:
            wal = 0
        room = Room(
            free=stats.f_bavail * stats.f_frsize,
            size=stats.f_blocks * stats.f_frsize,
            free_pages=int(free_pages) * int(page_size),
            wal=wal,
            ballast=ballast,
        )
        self.last_room = room
        return room

    def _ballast_exists(self) -> bool:
        try:
            return self.ballast_path.stat().st_size >= self.ballast_size
        except OSError:
            return False

    # ------------------------------------------------------------------ intake

    def admit(self, conn: sqlite3.Connection, incoming: int, records: int) -> None:
        """Before an append of ``records`` records of ``incoming`` payload bytes
        (outside its transaction): IntakePaused unless it fits (see the module's
        docstring). A pause is logged once when it starts and once when it ends."""
        if not self.reserve:
            return
        taken = incoming + RECORD_OVERHEAD * records
        trusted = time.monotonic() < self._trusted_until
        if self.paused is None and trusted and 2 * taken <= self._headroom:
            self._headroom -= 2 * taken
            return
        self._headroom = 0
        room = self.measure(conn)
        growth = room.growth(taken)
        need = self.reserve + (self.reserve // RESUME_MARGIN_SHARE if self.paused else 0)
        if room.free - growth >= need:
            self.resume(room)
            self._headroom = min(room.free - growth - need, self.reserve // RESUME_MARGIN_SHARE)
            self._trusted_until = time.monotonic() + ROOM_TRUSTED_S
            return
        if growth == 0 and room.ballast:
            # It fits in space the spool holds: stored, while the pause (if any) goes
            # on. Not once the ballast went: what WAL room is left is for deletes.
            return
        raise self.pause(
            f"the spool's filesystem has {room.free} bytes free, and a batch of {incoming} "
            f"bytes would leave less than the reserve of {self.reserve} bytes"
        )

    def pause(self, why: str) -> IntakePaused:
        """Start (or go on with) a pause, logged once per episode; returns the error
        for the caller to raise."""
        if self.paused is None:
            self.paused = f"intake paused: {why}; waiting for delivery to free space"
            self.paused_since = time.time()
            self.pauses += 1
            log.warning("%s (the broker keeps what is not acknowledged)", self.paused)
        return IntakePaused(
            f"intake paused: the spool's filesystem is below its free-space reserve "
            f"({self.reserve} bytes); waiting for delivery to free space"
        )

    def resume(self, room: Room) -> None:
        if self.paused is not None:
            log.info(
                "intake resumed: %d bytes free on the spool's filesystem, %d free in the "
                "spool (reserve %d)",
                room.free,
                room.free_pages,
                self.reserve,
            )
            self.paused = None
            self.paused_since = None

    def bound_checkpoints(self, conn: sqlite3.Connection) -> None:
        """Checkpoint the WAL often enough that what a checkpoint still has to add to
        the file stays within a quarter of the ballast: on a filesystem something else
        filled, the ballast then covers it and the deletes' own WAL frames."""
        if not self.ballast_size:
            return
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = max(
            CHECKPOINT_MIN_PAGES, min(SQLITE_CHECKPOINT_PAGES, self.ballast_size // 4 // page_size)
        )
        conn.execute(f"PRAGMA wal_autocheckpoint = {pages}")

    # ------------------------------------------------------------------ ballast

    def keep_ballast(self, conn: sqlite3.Connection) -> None:
        """Allocate the ballast if it is missing and the room allows it (at open, and on
        every maintenance pass)."""
        self._ballast_held = bool(self.ballast_size) and self._ballast_exists()
        if not self.ballast_size or self._ballast_held:
            return
        room = self.measure(conn)
        if room.free < self.reserve + self.ballast_size:
            return
        try:
            fd = os.open(self.ballast_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.ballast_size)
            finally:
                os.close(fd)
            self._ballast_held = True
            self._headroom = 0  # the ballast took its room
        except OSError as err:
            with contextlib.suppress(OSError):
                self.ballast_path.unlink()
            log.warning("cannot allocate the spool's ballast %s: %s", self.ballast_path, err)

    def with_room(self, write: Callable[[], _T]) -> _T:
        """Run a write that frees space or keeps state (never intake); if the filesystem
        is full, give the ballast back and try once more."""
        try:
            return write()
        except SpoolFull:
            if not self.release_ballast():
                raise
        return write()

    def release_ballast(self) -> bool:
        """Give the ballast back to the filesystem (a write failed for want of space);
        returns whether there was one to give."""
        try:
            self.ballast_path.unlink()
        except FileNotFoundError:
            self._ballast_held = False
            return False
        except OSError as err:
            log.error("cannot release the spool's ballast %s: %s", self.ballast_path, err)
            return False
        self._ballast_held = False
        self.ballast_releases += 1
        log.warning(
            "the spool's filesystem is full: released its %d-byte ballast so that "
            "delivered records can still be deleted",
            self.ballast_size,
        )
        return True
