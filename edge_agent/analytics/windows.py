"""The arithmetic of a query's windows: which windows a reading belongs to, which are
complete and due now, the little state that survives a restart, and which raw rows no
window can need any more.

Pure functions over small frozen values, no I/O: the engine asks on each pass (about
once a second) with the clock and what it knows of the query's rows, evaluates what is
due, and stores the state that ``advance`` returns.

Invariants:

- Time is integer milliseconds since the epoch; a window is ``[start_ms, end_ms)``.
- A time window is complete once ``now_ms >= end_ms + grace_ms``: the agent's clock is
  the watermark (processing time), so a device that is offline for a while does not hold
  its windows open for ever.
- Each window is due once, in order: ``due_windows`` names a window only past the state,
  ``advance`` moves the state past it. ``window_id`` is the exactly-once key: the engine
  writes a window's result rows and the state ``advance`` returns in one transaction, so
  a crash re-evaluates at most the window it was in, under the same id.
- Empty windows emit nothing (as eKuiper and Azure Stream Analytics do). The engine says
  where its oldest waiting reading is (``oldest_time_ms``), so a gap without readings
  costs nothing; a window inside a stretch of readings that turns out empty is evaluated,
  yields no rows, and the engine advances past it.
- Bounded: one call names at most ``limit`` windows (``MAX_DUE_WINDOWS``). After a day
  down, a 1 s tumbling window is emitted a thousand windows a call, and the engine calls
  again until nothing is due.
- The state is two numbers (``WindowState``): for time windows every window ending at or
  before ``closed_through_ms`` is done (emitted, or complete and empty); sessions close
  through the time their last session closed; count windows, continuous filters and
  sliding windows "on each change" consume readings by id, through ``last_id``.

The kinds:

============  ==========================================================================
tumbling      ``[k*size, (k+1)*size)``, aligned to the epoch
hopping       a window of ``size`` starting at every multiple of ``hop`` (hop <= size)
sliding       every ``period`` (aligned to the epoch) the ``size`` before it,
              ``[t - size, t)``; with period 0, "on each change": when readings came since
              the last emit, the ``size`` up to just after the newest reading
session       readings closer than ``gap`` to the one before; it closes after ``gap`` +
              grace without one, or when it is ``size`` long (0: no maximum)
count         every ``count`` readings in id order, as the id range ``(after_id, until_id]``
none          a continuous filter: the readings since the last evaluation, as an id range
============  ==========================================================================

Late readings: a reading whose window was already closed is late (``is_late``). With
revisions the engine evaluates again the closed windows it names (``late_windows``) for
``revise_ms`` past their close; ``keep_from`` keeps their raw rows that long. Sessions,
count windows and filters take no revisions: a late reading would change a session's
bounds, and readings by id are never late.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import total_ordering
from typing import Literal, NamedTuple

WindowKind = Literal["tumbling", "hopping", "sliding", "session", "count", "none"]

#: Windows one ``due_windows`` call names at most; the engine calls again for the rest.
MAX_DUE_WINDOWS = 1000
#: Windows a reading may belong to at most (hopping: size / hop; sliding: size / period),
#: which bounds the work a late reading can ask for.
MAX_WINDOWS_PER_READING = 10_000
#: The bounds of SQLite's integers, for ``Keep``: a row older than EARLIEST does not exist,
#: an id above LATEST cannot.
EARLIEST = -(2**63)
LATEST = 2**63 - 1


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A query's window. ``size_ms`` is the length of tumbling, hopping and sliding
    windows and a session's maximum (0: none); ``period_ms`` 0 makes sliding windows
    "on each change". Fields a kind does not use are ignored."""

    kind: WindowKind
    size_ms: int = 0
    hop_ms: int = 0
    gap_ms: int = 0
    period_ms: int = 0
    count: int = 0
    grace_ms: int = 0

    def __post_init__(self) -> None:
        kind = self.kind
        if self.grace_ms < 0 or self.size_ms < 0 or self.period_ms < 0:
            raise ValueError("grace, size and period cannot be negative")
        if kind in ("tumbling", "hopping", "sliding") and self.size_ms <= 0:
            raise ValueError(f"a {kind} window needs a size")
        if kind == "hopping" and not 0 < self.hop_ms <= self.size_ms:
            raise ValueError("a hopping window needs 0 < hop <= size")
        if kind == "session" and self.gap_ms <= 0:
            raise ValueError("a session window needs a gap")
        if kind == "count" and self.count <= 0:
            raise ValueError("a count window needs a count")
        if kind not in ("tumbling", "hopping", "sliding", "session", "count", "none"):
            raise ValueError(f"no window kind {kind!r}")
        grid = _grid(self)
        if grid is not None and -(-self.size_ms // grid[0]) > MAX_WINDOWS_PER_READING:
            raise ValueError(f"a reading would be in more than {MAX_WINDOWS_PER_READING} windows")

    @property
    def on_change(self) -> bool:
        """A sliding window emitted whenever readings arrived, not on a period."""
        return self.kind == "sliding" and self.period_ms == 0


@total_ordering
@dataclass(frozen=True, slots=True)
class Window:
    """``[start_ms, end_ms)``; windows chosen by id (count, filter, sliding on change)
    also carry the ids ``(after_id, until_id]`` they consumed, and their times are those
    of their oldest and newest reading (+ 1). Ordered by end, then start (then ids):
    the order of emission of time windows. Id windows are emitted in id order, which is
    this order too unless readings came out of time order."""

    start_ms: int
    end_ms: int
    after_id: int | None = None
    until_id: int | None = None

    def _key(self) -> tuple[int, int, int]:
        return (self.end_ms, self.start_ms, -1 if self.until_id is None else self.until_id)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Window):
            return NotImplemented
        return self._key() < other._key()

    def __contains__(self, time_ms: int) -> bool:
        return self.start_ms <= time_ms < self.end_ms


@dataclass(frozen=True, slots=True)
class WindowState:
    """What the engine stores per query; ``WindowState()`` before the first window.

    ``closed_through_ms``: time windows: every window ending at or before it is done;
    sessions: the close of the last session (readings before it are late); sliding on
    change: the end of the last window. ``last_id``: the last reading consumed by id."""

    closed_through_ms: int | None = None
    last_id: int = 0


class Keep(NamedTuple):
    """Raw rows that no window can need any more: ``time_ms < before_ms AND id <=
    through_id`` (EARLIEST keeps every time, LATEST lets every id go)."""

    before_ms: int
    through_id: int


#: Readings as the engine passes them: (id, time_ms).
Reading = tuple[int, int]


def window_id(query: str, spec: WindowSpec, window: Window) -> str:
    """The exactly-once key of a window, stable across restarts: ``query@start`` for
    tumbling and session windows (their starts never repeat), ``query@start-end`` for
    hopping and sliding ones, ``query#until_id`` for windows of readings by id."""
    if window.until_id is not None:
        return f"{query}#{window.until_id}"
    if spec.kind in ("hopping", "sliding"):
        return f"{query}@{window.start_ms}-{window.end_ms}"
    return f"{query}@{window.start_ms}"


def windows_of(spec: WindowSpec, time_ms: int) -> list[Window]:
    """The windows a reading at ``time_ms`` belongs to, oldest first: one for tumbling,
    size / hop for hopping, none or more for sliding (nothing between windows when the
    period is longer than the size). Only for windows fixed in time."""
    grid = _grid(spec)
    if grid is None:
        raise ValueError(f"{_name(spec)} windows are not fixed in time")
    return list(_windows_ending(spec, grid, time_ms, time_ms + spec.size_ms))


def due_windows(
    spec: WindowSpec,
    state: WindowState,
    now_ms: int,
    *,
    oldest_time_ms: int | None = None,
    newest_time_ms: int | None = None,
    pending: Sequence[Reading] = (),
    limit: int = MAX_DUE_WINDOWS,
) -> list[Window]:
    """The windows to evaluate and emit now, in order, at most ``limit`` of them.

    What the engine passes, by kind:

    - tumbling, hopping, sliding on a period: ``oldest_time_ms``, the oldest time among
      the readings at or after ``open_from_ms(spec, state)``; None when there are none
      (then nothing is due: empty windows emit nothing).
    - session: ``pending``, the readings at or after ``open_from_ms`` (late ones before
      it are left out).
    - count, none, sliding on change: ``pending``, the readings with ids above
      ``state.last_id``; for sliding on change also ``newest_time_ms``, the newest time
      of any reading, if it can be newer than those pending.
    """
    if limit <= 0:
        return []
    grid = _grid(spec)
    if grid is not None:
        if oldest_time_ms is None:
            return []
        after = oldest_time_ms
        if state.closed_through_ms is not None:
            after = max(after, state.closed_through_ms)
        ends = range(_next_end(grid, after), now_ms - spec.grace_ms + 1, grid[0])
        return [Window(end - spec.size_ms, end) for end in ends[:limit]]
    if spec.kind == "session":
        return _due_sessions(spec, state, now_ms, pending, limit)
    readings = [r for r in pending if r[0] > state.last_id]
    if spec.kind == "count":
        return _due_counts(spec, state, readings, limit)
    if not readings:
        return []
    until_id = max(r[0] for r in readings)
    if spec.kind == "none":
        times = [r[1] for r in readings]
        return [Window(min(times), max(times) + 1, state.last_id, until_id)]
    # Sliding on change: the size up to just after the newest reading.
    newest = max(r[1] for r in readings)
    if newest_time_ms is not None:
        newest = max(newest, newest_time_ms)
    if state.closed_through_ms is not None:
        newest = max(newest, state.closed_through_ms - 1)
    return [Window(newest + 1 - spec.size_ms, newest + 1, state.last_id, until_id)]


def next_time_window(spec: WindowSpec, state: WindowState) -> Window | None:
    """Time windows: the first window ending after ``closed_through_ms``, the next to
    close (the first one due, if it holds a reading); None before the first window or
    for the other kinds."""
    grid = _grid(spec)
    if grid is None or state.closed_through_ms is None:
        return None
    end = _next_end(grid, state.closed_through_ms)
    return Window(end - spec.size_ms, end)


def advance(spec: WindowSpec, state: WindowState, window: Window) -> WindowState:
    """The state once ``window`` (named by ``due_windows``) was emitted."""
    if spec.kind == "session":
        close = _session_close(spec, window.start_ms, window.end_ms - 1)
        return replace(state, closed_through_ms=_later(state.closed_through_ms, close))
    if window.until_id is not None:
        state = replace(state, last_id=max(state.last_id, window.until_id))
    if spec.kind in ("count", "none"):
        return state
    return replace(state, closed_through_ms=_later(state.closed_through_ms, window.end_ms))


def skip_empty(
    spec: WindowSpec, state: WindowState, now_ms: int, *, oldest_time_ms: int | None
) -> WindowState:
    """Time windows: the state past every complete window before the oldest waiting
    reading (``oldest_time_ms`` as for ``due_windows``; None: there is none). Those
    windows are empty and emit nothing, but they are closed: a reading that comes for
    one of them later is late. Called on each pass, it keeps an idle query's state at
    the watermark. Other kinds: ``state`` unchanged."""
    grid = _grid(spec)
    if grid is None:
        return state
    through = now_ms - spec.grace_ms
    if oldest_time_ms is not None:
        through = min(through, oldest_time_ms)
    closed = _prev_end(grid, through)
    if state.closed_through_ms is not None and closed <= state.closed_through_ms:
        return state
    return replace(state, closed_through_ms=closed)


def open_from_ms(spec: WindowSpec, state: WindowState) -> int | None:
    """The oldest time a window not yet emitted can hold (None: any time, or readings are
    chosen by id): where the engine looks for ``oldest_time_ms`` and session readings."""
    grid = _grid(spec)
    closed = state.closed_through_ms
    if closed is None or spec.kind in ("count", "none") or spec.on_change:
        return None
    if grid is None:  # session
        return closed
    return _next_end(grid, closed) - spec.size_ms


def keep_from(spec: WindowSpec, state: WindowState, *, revise_ms: int = 0) -> Keep:
    """The raw rows that can go: none is needed by a window not yet emitted (grace
    included: a window is not emitted before its grace is over), nor, with revisions,
    by a window closed less than ``revise_ms`` ago (by ``closed_through_ms``)."""
    closed = state.closed_through_ms
    if spec.kind in ("count", "none"):
        return Keep(LATEST, state.last_id)
    if closed is None:
        return Keep(EARLIEST, LATEST)
    if spec.on_change:
        # The next window ends after the newest reading, so it starts at or after this.
        return Keep(closed - spec.size_ms, state.last_id)
    grid = _grid(spec)
    if grid is None:  # session
        return Keep(closed, LATEST)
    return Keep(_next_end(grid, closed - max(0, revise_ms)) - spec.size_ms, LATEST)


def is_late(spec: WindowSpec, state: WindowState, time_ms: int) -> bool:
    """Whether a reading arriving now at ``time_ms`` is too late for a window it belongs
    to: that window is already closed. (Hopping: its later windows still take it.)"""
    closed = state.closed_through_ms
    if closed is None or spec.kind in ("count", "none") or spec.on_change:
        return False
    grid = _grid(spec)
    if grid is None:  # session
        return time_ms < closed
    first_end = _next_end(grid, time_ms)
    return first_end <= time_ms + spec.size_ms and first_end <= closed


def late_windows(
    spec: WindowSpec, state: WindowState, times: Iterable[int], *, revise_ms: int
) -> list[Window]:
    """The closed windows that late readings at ``times`` belong to and that may still be
    revised (closed less than ``revise_ms`` ago), each once, in order. Readings later
    than that are only counted; sessions and windows by id take no revisions."""
    grid = _grid(spec)
    closed = state.closed_through_ms
    if grid is None or closed is None or revise_ms <= 0:
        return []
    windows: set[Window] = set()
    for time_ms in times:
        lowest = max(time_ms, closed - revise_ms)
        windows.update(_windows_ending(spec, grid, lowest, min(closed, time_ms + spec.size_ms)))
    return sorted(windows)


def _due_sessions(
    spec: WindowSpec, state: WindowState, now_ms: int, pending: Sequence[Reading], limit: int
) -> list[Window]:
    closed = state.closed_through_ms
    times = sorted(t for _, t in pending if closed is None or t >= closed)
    due: list[Window] = []
    if not times:
        return due
    start = last = times[0]
    for time_ms in [*times[1:], None]:
        if time_ms is not None and time_ms < _session_close(spec, start, last):
            last = time_ms
            continue
        if now_ms < _session_close(spec, start, last) + spec.grace_ms or len(due) >= limit:
            break
        due.append(Window(start, last + 1))
        if time_ms is not None:
            start = last = time_ms
    return due


def _session_close(spec: WindowSpec, start_ms: int, last_ms: int) -> int:
    """The time from which a reading no longer joins the session: the gap after its last
    reading, or its maximum length."""
    close = last_ms + spec.gap_ms
    return min(close, start_ms + spec.size_ms) if spec.size_ms else close


def _due_counts(
    spec: WindowSpec, state: WindowState, readings: list[Reading], limit: int
) -> list[Window]:
    readings.sort()
    due: list[Window] = []
    after = state.last_id
    for first in range(0, len(readings) - spec.count + 1, spec.count):
        if len(due) >= limit:
            break
        chunk = readings[first : first + spec.count]
        times = [t for _, t in chunk]
        due.append(Window(min(times), max(times) + 1, after, chunk[-1][0]))
        after = chunk[-1][0]
    return due


def _grid(spec: WindowSpec) -> tuple[int, int] | None:
    """Windows fixed in time end on a grid: every ``step`` ms, at ``phase`` modulo it.
    None for the kinds whose windows depend on the readings."""
    if spec.kind == "tumbling":
        return spec.size_ms, 0
    if spec.kind == "hopping":
        return spec.hop_ms, spec.size_ms % spec.hop_ms
    if spec.kind == "sliding" and spec.period_ms > 0:
        return spec.period_ms, 0
    return None


def _next_end(grid: tuple[int, int], after_ms: int) -> int:
    """The first window end after ``after_ms``."""
    step, phase = grid
    return after_ms + 1 + (phase - after_ms - 1) % step


def _prev_end(grid: tuple[int, int], through_ms: int) -> int:
    """The last window end at or before ``through_ms``."""
    step, phase = grid
    return through_ms - (through_ms - phase) % step


def _windows_ending(
    spec: WindowSpec, grid: tuple[int, int], after_ms: int, through_ms: int
) -> Iterable[Window]:
    """The windows that end after ``after_ms`` and at or before ``through_ms``."""
    for end in range(_next_end(grid, after_ms), through_ms + 1, grid[0]):
        yield Window(end - spec.size_ms, end)


def _later(closed: int | None, time_ms: int) -> int:
    return time_ms if closed is None else max(closed, time_ms)


def _name(spec: WindowSpec) -> str:
    return "sliding (on change)" if spec.on_change else spec.kind
