"""The malloc settings (edge_agent/malloc_tuning.py) on this machine's C library."""

from __future__ import annotations

import platform
import re
import subprocess
import sys

import pytest

from edge_agent.malloc_tuning import ARENA_MAX, tune_malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_takes_the_mmap_threshold_and_the_arena_limit() -> None:
    assert tune_malloc() is True


#: Threads that each allocate through malloc, then glibc's per-arena statistics.
_THREADS_ALLOCATE = """
import ctypes, ctypes.util, sys, threading
from edge_agent.malloc_tuning import ARENA_MAX, tune_malloc
assert tune_malloc(arenas=int(sys.argv[1]))
def allocate():
    held = [bytearray(4096) for _ in range(256)]
    del held
threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(ctypes.util.find_library("c")).malloc_stats()
"""


def _arenas_used(limit: int) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _THREADS_ALLOCATE, str(limit)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return len(re.findall(r"^Arena \d+:", result.stderr, re.MULTILINE))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_every_thread_allocates_from_the_one_arena() -> None:
    assert _arenas_used(ARENA_MAX) == 1
    # The check can tell: allowed more, the threads take arenas of their own.
    assert _arenas_used(4) > 1
