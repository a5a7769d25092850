"""Lists of record ids as SQL parameters, in a few shapes.

Each distinct SQL text is a statement of its own: the sqlite3 module prepares it and
keeps it in the connection's cache (128 statements). Written with one marker per id, a
list of n ids made one text per n, and settling requests of every size from 1 to 500
records filled the cache with statements of hundreds of parameters: tens of KiB each,
16 MiB for 256 of them (measured). ``id_list`` rounds a list up to a power of two,
repeating its last id (``IN`` ignores repeats), so a query has at most ten texts.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence


def id_list(ids: Sequence[int]) -> tuple[str, tuple[int, ...]]:
    """The markers for ``ids`` inside ``IN (...)`` and the parameters that go with them:
    ``ids`` with its last id repeated up to the next power of two. No ids: ``NULL``,
    which matches nothing."""
    count = len(ids)
    if count == 0:
        return "NULL", ()
    size = 1 << (count - 1).bit_length()  # callers pass at most ID_CHUNK ids
    return _marks(size), (*ids, *itertools.repeat(ids[-1], size - count))


@functools.lru_cache(maxsize=16)
def _marks(size: int) -> str:
    return ",".join("?" * size)
