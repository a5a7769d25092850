"""The malloc settings (edge_agent/malloc_tuning.py) on this machine's C library."""

from __future__ import annotations

import platform

import pytest

from edge_agent.malloc_tuning import tune_malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_mmap_threshold_and_the_arena_limit() -> None:
    assert tune_malloc() is True
