"""The mmap threshold fix (edge_agent/malloc_tuning.py) on this machine's C library."""

from __future__ import annotations

import platform

import pytest

from edge_agent.malloc_tuning import fix_mmap_threshold


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_mmap_threshold() -> None:
    assert fix_mmap_threshold() is True
