"""The runtime status file: written whole or not at all, read back as written."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edge_agent import runtime_status
from edge_agent.runtime_status import RuntimeStatus
from edge_agent.status import render_storage, render_timeout


def _status() -> RuntimeStatus:
    return {
        "pid": 42,
        "version": "1.0",
        "started_at": 1.0,
        "updated_at": 2.0,
        "running": True,
        "sources": {},
        "uplink": {"max_rate": None},
        "sinks": {"broken": {"state": "failed", "reason": "NoRegionError: no region"}},
        "cameras": {},
    }


def test_the_file_sits_next_to_the_spool_and_reads_back_as_written(tmp_path: Path) -> None:
    path = runtime_status.status_path(tmp_path / "spool.db")
    assert path == tmp_path / "spool.db.status.json"
    runtime_status.write(path, _status())
    assert runtime_status.read(path) == _status()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool.db.status.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the agent's alone


def test_a_torn_or_foreign_file_is_an_error_not_a_status(tmp_path: Path) -> None:
    path = tmp_path / "spool.db.status.json"
    path.write_text('{"pid": 4')
    with pytest.raises(ValueError):
        runtime_status.read(path)
    path.write_text("[]")
    with pytest.raises(ValueError):
        runtime_status.read(path)


def test_a_grown_timeout_is_shown_with_what_may_have_arrived_twice() -> None:
    grown: runtime_status.TimeoutSnapshot = {
        "current_s": 4.0,
        "peak_s": 8.0,
        "timeouts": 3,
        "timed_out_items": 1500,
    }
    assert render_timeout("request", grown, "record") == [
        "  request timeout now 4s (up to 8s): 3 timed out, carrying 1500 records that may "
        "have arrived twice"
    ]
    assert render_timeout("request", {**grown, "timeouts": 0}, "record") == []


def test_storage_shows_the_room_a_paused_intake_and_a_lost_file() -> None:
    storage: runtime_status.StorageSnapshot = {
        "free_bytes": 0,
        "filesystem_bytes": 40 * 1024**2,
        "free_pages_bytes": 4096,
        "reserve_bytes": 2 * 1024**2,
        "ballast_bytes": 512 * 1024,
        "intake_paused": "intake paused: the spool's filesystem has 0 bytes free",
        "paused_since": 0.0,
        "pauses": 2,
        "disk_full_errors": 0,
        "ballast_releases": 1,
        "file_rebuilds": 1,
        "file_lost": "spool file /x was deleted or moved while the agent ran",
    }
    text = "\n".join(render_storage(storage))
    assert "storage: 0 B free of 40.0 MiB, 4.0 KiB free inside the spool" in text
    assert "reserve 2.0 MiB (ballast 512.0 KiB)" in text
    assert "INTAKE PAUSED: disk" in text and "SPOOL FILE LOST: spool file /x" in text
    assert "intake pauses 2, ballast releases 1, spool file rebuilds 1" in text
