"""The runtime status file: written whole or not at all, read back as written."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edge_agent import runtime_status
from edge_agent.runtime_status import RuntimeStatus


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
