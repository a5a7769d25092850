"""The aggregate functions analytics SQL has beside SQLite's own: ``percentile(x, p)``,
``median(x)``, ``stddev`` / ``stddev_samp``, ``stddev_pop``, ``variance`` / ``var_samp``
and ``var_pop``. NULLs and values that are not numbers (or text that is one) are
skipped; no value gives NULL.

How they run. A Python aggregate would be called once per row, and each call takes the
GIL from the intake threads: at 10,000 readings a second a minute's window is 600,000
calls, which slowed both sides severalfold. So a call is rewritten in the query's text
before it is prepared (``rewrite``): ``percentile(x, 95)`` becomes
``edge_agent_percentile(json_group_array(x), min(95), max(95))``. SQLite's own
``json_group_array`` collects the group's values (in C, without the GIL), and one Python
call per group computes the result from them. A FILTER or OVER clause after the call
goes with the collection. What this costs: a group's values are held as JSON text,
within the runner's limit on a value's length (16 MiB: some two million readings in one
group; past it the window fails with "string or blob too big"), and they pass through
JSON with SQLite's 15 significant digits.

``percentile``'s p must be a number from 0 to 100 and the same in every row of the group
(``min(p)`` and ``max(p)`` are compared, in C too).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Sequence

from edge_agent.errors import QueryFailed

#: The prefix of the functions the calls are rewritten into (and back, in messages).
PREFIX = "edge_agent_"
#: A call's name, in any case, as the user writes it.
NAMES = (
    "percentile",
    "median",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "variance",
    "var_samp",
    "var_pop",
)


#: What JSON gives for a number (``type``: not bool, which is an int).
_NUMBERS = (int, float)


def _numbers(collected: str | None) -> list[float]:
    """The values ``json_group_array`` collected that an aggregate takes: numbers, and
    text that is one (``json_extract`` of ``"21.5"``). NULL and anything else is
    skipped: one malformed reading costs only itself, as at intake."""
    values = json.loads(collected or "[]")
    numbers = [float(value) for value in values if type(value) in _NUMBERS]
    if len(numbers) < len(values):  # the rest: NULLs, text, objects (a group at a time)
        for value in values:
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    numbers.append(float(value))
    if numbers and not (-math.inf < min(numbers) and max(numbers) < math.inf):
        numbers = [number for number in numbers if math.isfinite(number)]
    return numbers


def _percentile_of(collected: str | None, low: object, high: object) -> float | None:
    """The p-th percentile (0-100), interpolated linearly between the closest ranks, as
    ``numpy.percentile``'s default (``"linear"``) and ``statistics.quantiles(method=
    "inclusive")``: rank ``p / 100 * (n - 1)``."""
    values = _numbers(collected)
    if not values:
        return None
    p = _p(low)
    if p != _p(high):
        raise QueryFailed("percentile: p must be the same in every row")
    return _interpolate(sorted(values), p)


def _p(given: object) -> float:
    number = given if isinstance(given, int | float) else None
    if isinstance(given, str):
        try:
            number = float(given)
        except ValueError:
            number = None
    if number is None or not 0 <= number <= 100:
        raise QueryFailed(f"percentile: p must be a number from 0 to 100, not {given!r}")
    return float(number)


def _median_of(collected: str | None) -> float | None:
    values = _numbers(collected)
    return _interpolate(sorted(values), 50.0) if values else None


def _interpolate(ordered: list[float], p: float) -> float:
    rank = p / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _variance(sample: bool, root: bool) -> Callable[[str | None], float | None]:
    """Two passes (the mean, then the squared deviations, each summed exactly by
    ``math.fsum``): no cancellation between two large sums (readings like 1e9 + small
    changes). ``sample``: divide by n - 1 (NULL below two values), else by n; ``root``:
    the standard deviation."""

    def of(collected: str | None) -> float | None:
        values = _numbers(collected)
        divisor = len(values) - 1 if sample else len(values)
        if divisor <= 0:
            return None
        mean = math.fsum(values) / len(values)
        variance = math.fsum((value - mean) ** 2 for value in values) / divisor
        return math.sqrt(variance) if root else variance

    return of


#: Each user-facing name: its function over the collected values, and how many of the
#: call's arguments after the first are the extra arguments it takes.
FUNCTIONS: dict[str, tuple[Callable[..., float | None], int]] = {
    "percentile": (_percentile_of, 1),
    "median": (_median_of, 0),
    "stddev": (_variance(True, True), 0),
    "stddev_samp": (_variance(True, True), 0),
    "stddev_pop": (_variance(False, True), 0),
    "variance": (_variance(True, False), 0),
    "var_samp": (_variance(True, False), 0),
    "var_pop": (_variance(False, False), 0),
}


def functions(fail: Callable[[str], None]) -> list[tuple[str, int, Callable[..., float | None]]]:
    """(name, number of arguments, function) of each rewritten call's function, for
    ``create_function``; ``fail(reason)`` records why one stopped the query, then raises."""

    def guarded(function: Callable[..., float | None]) -> Callable[..., float | None]:
        def call(*args: object) -> float | None:
            try:
                return function(*args)
            except QueryFailed as err:
                fail(str(err))
                raise
            except (ValueError, TypeError) as err:  # not a JSON array: the user's own call
                fail(f"not values collected by a call of {', '.join(NAMES)}: {err}")
                raise

        return call

    return [
        # percentile takes p twice: its least and greatest value in the group.
        (PREFIX + name, 1 + 2 * extra, guarded(function))
        for name, (function, extra) in FUNCTIONS.items()
    ]


# ---------------------------------------------------------------------- the rewrite

_TOKEN = re.compile(
    r"""(?P<blank>\s+|--[^\n]*(?:\n|\Z)|/\*.*?(?:\*/|\Z))
    |(?P<string>'(?:[^']|'')*(?:'|\Z))
    |(?P<name>"(?:[^"]|"")*(?:"|\Z)|`(?:[^`]|``)*(?:`|\Z)|\[[^\]]*(?:\]|\Z)
        |[A-Za-z_\x80-\U0010ffff][\w$\x80-\U0010ffff]*)
    |(?P<other>.)""",
    re.DOTALL | re.VERBOSE,
)


class _Token:
    __slots__ = ("kind", "text")

    def __init__(self, kind: str, text: str) -> None:
        self.kind, self.text = kind, text

    @property
    def word(self) -> str:
        """A name as SQLite compares it: unquoted, case-folded."""
        if self.kind != "name":
            return ""
        text = self.text
        if text[:1] in ('"', "`", "["):
            text = text[1:-1]
        return text.casefold()


def rewrite(sql: str) -> str:
    """``sql`` with every call of the aggregates above made into SQLite's
    ``json_group_array`` and one call of ours per group (see the module's docstring).
    Strings, comments and quoted names are left as they are; anything this does not
    recognise as such a call is left for SQLite to judge."""
    tokens = [_Token(str(m.lastgroup), m.group()) for m in _TOKEN.finditer(sql)]
    return _rewritten(tokens)


def _rewritten(tokens: Sequence[_Token]) -> str:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        call = _call_at(tokens, i)
        if call is None:
            out.append(tokens[i].text)
            i += 1
            continue
        name, args, clauses, i = call
        out.append(_replacement(name, args, clauses))
    return "".join(out)


def _call_at(tokens: Sequence[_Token], i: int) -> tuple[str, list[str], str, int] | None:
    """At ``tokens[i]``, a call of one of NAMES: its name, its arguments, the FILTER and
    OVER clauses after it (rewritten), and where it ends; else None."""
    name = tokens[i].word
    if name not in FUNCTIONS or _previous(tokens, i) == ".":
        return None
    opening = _next(tokens, i + 1)
    if opening is None or tokens[opening].text != "(":
        return None
    closing = _closing(tokens, opening)
    if closing is None:
        return None
    args = [_rewritten(arg).strip() for arg in _split(tokens[opening + 1 : closing])]
    clauses, end = "", closing + 1
    for keyword in ("filter", "over"):
        at = _next(tokens, end)
        if at is None or tokens[at].word != keyword:
            continue
        group = _next(tokens, at + 1)
        if group is None:
            break
        if tokens[group].text == "(":
            group_end = _closing(tokens, group)
            if group_end is None:
                break
        elif keyword == "over" and tokens[group].kind == "name":
            group_end = group  # a named window
        else:
            break
        clauses += " " + _rewritten(tokens[at : group_end + 1]).strip()
        end = group_end + 1
    return name, args, clauses, end


def _replacement(name: str, args: list[str], clauses: str) -> str:
    extra = FUNCTIONS[name][1]
    if not args or args == [""]:
        return f"{PREFIX}{name}()"  # SQLite then says it takes arguments
    collected = f"json_group_array({args[0]}){clauses}"
    if extra and len(args) == 2:
        p = args[1]
        return f"{PREFIX}{name}({collected}, min({p}){clauses}, max({p}){clauses})"
    rest = "".join(f", {arg}" for arg in args[1:])
    return f"{PREFIX}{name}({collected}{rest})"  # a wrong count: SQLite says so


def _next(tokens: Sequence[_Token], i: int) -> int | None:
    while i < len(tokens) and tokens[i].kind == "blank":
        i += 1
    return i if i < len(tokens) else None


def _previous(tokens: Sequence[_Token], i: int) -> str:
    i -= 1
    while i >= 0 and tokens[i].kind == "blank":
        i -= 1
    return tokens[i].text if i >= 0 else ""


def _closing(tokens: Sequence[_Token], opening: int) -> int | None:
    depth = 0
    for i in range(opening, len(tokens)):
        text = tokens[i].text if tokens[i].kind == "other" else ""
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if depth == 0:
                return i
    return None


def _split(tokens: Sequence[_Token]) -> list[Sequence[_Token]]:
    """A call's arguments: split at the commas outside parentheses."""
    parts: list[Sequence[_Token]] = []
    depth, start = 0, 0
    for i, token in enumerate(tokens):
        text = token.text if token.kind == "other" else ""
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif text == "," and depth == 0:
            parts.append(tokens[start:i])
            start = i + 1
    parts.append(tokens[start:])
    return parts


def plain_names(message: str) -> str:
    """A message of SQLite's about a rewritten call, with the names the user wrote."""
    return re.sub(rf"\b{PREFIX}({'|'.join(NAMES)})\b", r"\1", message)
