"""Deleting delivered records in a thread of its own."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edge_agent.delivery.deleter import Deleter
from edge_agent.errors import SpoolError
from edge_agent.records import Record
from edge_agent.spool.store import Spool
from tests.support import wait_until


def test_a_batch_handed_over_is_deleted_from_the_spool(tmp_path: Path) -> None:
    with Spool.open(tmp_path / "spool.db") as spool:
        spool.append([Record("q", "k", n, b"x") for n in range(5)])
        leased = spool.lease("q", max_records=5, max_bytes=1000)
        deleter = Deleter(spool, "q", on_error=lambda err: None)
        assert deleter.alive  # not started yet: nothing to be dead
        deleter.start()
        deleter.put(leased)
        wait_until(lambda: spool.pending("q") == (0, 0), 5, 0.01, "deleted")
        deleter.close(5)
        assert not deleter.alive


def test_a_failing_spool_is_reported_once_and_tried_until_the_deleter_closes(
    tmp_path: Path,
) -> None:
    spool = Spool.open(tmp_path / "spool.db")
    spool.append([Record("q", "k", 1, b"x")])
    leased = spool.lease("q", max_records=1, max_bytes=1000)
    spool.close()  # every delete now fails
    attempts: list[int] = []
    ack_ids = spool.ack_ids

    def counted_ack(queue: str, ids: list[int]) -> int:
        attempts.append(len(ids))
        return ack_ids(queue, ids)

    spool.ack_ids = counted_ack  # type: ignore[method-assign]
    errors: list[SpoolError] = []
    reported = threading.Event()

    def on_error(err: SpoolError) -> None:
        errors.append(err)
        reported.set()

    deleter = Deleter(spool, "q", on_error=on_error)
    deleter.start()
    deleter.put(leased)
    assert reported.wait(5)
    started = time.monotonic()
    deleter.close(1.5)  # the retries go on until the timeout, then end
    wait_until(lambda: not deleter.alive, 3, 0.01, "the deleter ended")
    assert time.monotonic() - started < 4
    assert len(attempts) >= 2  # tried again (every second) while it waited
    assert len(errors) == 1  # one report per episode, not one per attempt
    assert "closed" in str(errors[0])
