"""Keep large buffers from pinning memory: glibc's malloc told two things at start-up.

A forwarder builds multi-megabyte buffers for every request (the aggregated records,
their base64, the JSON body) in several threads.

* A fixed mmap threshold. glibc serves allocations above its mmap threshold with mmap
  and gives them back on free, but raises that threshold to the size of every such
  buffer freed (up to 32 MiB): from then on multi-megabyte buffers come from the heaps,
  whose free space is seldom returned, and the resident size creeps up over a long
  drain. Setting the threshold explicitly turns that adjustment off.
* One arena. glibc gives threads that allocate at the same time arenas of their own
  (up to eight per core), each keeping its own free space: what one thread frees is
  not there for the others, and each arena holds on to its own high-water mark. The
  agent's threads mostly take turns on the GIL, so sharing the main heap costs no
  measurable waiting, and with a second arena the device profile's peak was 4 MiB
  higher (docs/BENCHMARKS.md).

Does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: mallopt's parameter numbers (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Allocations from this size up are mmapped, and returned to the system when freed.
MMAP_THRESHOLD_BYTES = 256 * 1024
#: Arenas malloc may use, the main one included.
ARENA_MAX = 1


def tune_malloc(threshold: int = MMAP_THRESHOLD_BYTES, arenas: int = ARENA_MAX) -> bool:
    """True if glibc took both settings. Called before the agent starts its threads."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    taken = bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_ARENA_MAX, arenas))
    if not taken:
        log.debug("mallopt(M_MMAP_THRESHOLD / M_ARENA_MAX) was refused")
    return taken
