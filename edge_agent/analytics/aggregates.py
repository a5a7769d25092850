"""The aggregate functions analytics SQL has beside SQLite's own: ``percentile(x, p)``,
``median(x)``, ``stddev`` / ``stddev_samp``, ``stddev_pop``, ``variance`` / ``var_samp``
and ``var_pop``. NULLs and values that are not numbers are skipped; no value gives
NULL."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any


def _number(value: object) -> float | None:
    """A value an aggregate takes: a number, or text that is one (``json_extract`` of
    ``"21.5"``). NULL and anything else is skipped: one malformed reading costs only
    itself, as at intake."""
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


class _Percentile:
    """``percentile(x, p)``: the p-th percentile (0-100) of x, interpolated linearly
    between the closest ranks, as ``numpy.percentile``'s default (``"linear"``) and
    ``statistics.quantiles(method="inclusive")``: rank ``p / 100 * (n - 1)``. ``p``
    must be the same in every row."""

    def __init__(self, fail: Callable[[str], None]) -> None:
        self._fail = fail
        self._values: list[float] = []
        self._p: float | None = None

    def step(self, value: object, p: object) -> None:
        number = _number(value)
        if number is None:
            return
        given = _number(p)
        if given is None or not 0 <= given <= 100:
            self._fail(f"percentile: p must be a number from 0 to 100, not {p!r}")
        elif self._p is None:
            self._p = given
        elif given != self._p:
            self._fail("percentile: p must be the same in every row")
        self._values.append(number)

    def finalize(self) -> float | None:
        if not self._values or self._p is None:
            return None
        return _interpolate(sorted(self._values), self._p)


class _Median(_Percentile):
    """``median(x)``: ``percentile(x, 50)``."""

    def step(self, value: object, p: object = 50.0) -> None:  # one argument from SQL
        super().step(value, p)


def _interpolate(ordered: list[float], p: float) -> float:
    rank = p / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class _Variance:
    """Welford's running mean and sum of squared deviations: one pass, and no
    cancellation between two large sums (readings like 1e9 + small changes).
    ``sample``: divide by n - 1 (NULL below two values), else by n; ``root``: the
    standard deviation."""

    def __init__(self, sample: bool, root: bool) -> None:
        self._sample, self._root = sample, root
        self._count = 0
        self._mean = self._m2 = 0.0

    def step(self, value: object) -> None:
        number = _number(value)
        if number is None:
            return
        self._count += 1
        delta = number - self._mean
        self._mean += delta / self._count
        self._m2 += delta * (number - self._mean)

    def finalize(self) -> float | None:
        divisor = self._count - 1 if self._sample else self._count
        if divisor <= 0:
            return None
        variance = self._m2 / divisor
        return math.sqrt(variance) if self._root else variance


# Any: typeshed's protocol of an aggregate class takes only integers.
def aggregates(fail: Callable[[str], None]) -> list[tuple[str, int, Callable[[], Any]]]:
    """(name, arguments, class) of each aggregate; ``fail(reason)`` stops the query."""
    sample, population = partial(_Variance, True), partial(_Variance, False)
    return [
        ("percentile", 2, partial(_Percentile, fail)),
        ("median", 1, partial(_Median, fail)),
        ("stddev", 1, partial(sample, True)),
        ("stddev_samp", 1, partial(sample, True)),
        ("stddev_pop", 1, partial(population, True)),
        ("variance", 1, partial(sample, False)),
        ("var_samp", 1, partial(sample, False)),
        ("var_pop", 1, partial(population, False)),
    ]
