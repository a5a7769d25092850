"""Keep large buffers from pinning memory: a fixed mmap threshold for glibc's malloc.

A forwarder builds multi-megabyte buffers for every request (the aggregated records,
their base64, the JSON body) in several threads. glibc serves allocations above its
mmap threshold with mmap and gives them back on free, but raises that threshold to the
size of every such buffer freed (up to 32 MiB): from then on multi-megabyte buffers come
from the per-thread heaps, whose free space is seldom returned, and the resident size
creeps up over a long drain. Setting the threshold explicitly turns that adjustment
off. Does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: mallopt's parameter number for the mmap threshold (malloc.h: M_MMAP_THRESHOLD).
_M_MMAP_THRESHOLD = -3
#: Allocations from this size up are mmapped, and returned to the system when freed.
MMAP_THRESHOLD_BYTES = 256 * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """True if glibc took the setting."""
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
    taken = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    if not taken:
        log.debug("mallopt(M_MMAP_THRESHOLD) was refused")
    return taken
