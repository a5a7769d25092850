"""Running one analytics query's SQL over a window of its raw rows, safely.

A query is one SELECT over the table ``input`` (``time_ms``, ``captured_at_ms``,
``topic``, ``key``, ``payload``). ``input`` is a TEMP VIEW over the rows of the query's
spool queue (``analytics:<topic filters>``) on a read-only connection of the runner's own:
SQLite keeps TEMP objects in a separate database, which a read-only connection may
write, so nothing is copied and the spool file is never written. WAL mode lets the
query read while intake appends: neither waits for the other.

What the SQL may do is enforced by SQLite rather than by reading the text:

- An authorizer (``_Authorizer``) allows SELECT, functions and recursive CTEs, and
  reads of ``input`` only. The view's own reads of ``main.records`` and ``main.queues``
  are allowed because SQLite names the innermost view in each read it authorizes; that
  inner view has a random name per connection, because a read inside a user's CTE
  carries the CTE's name, and a CTE called ``input`` could otherwise read any table.
  Every other action (writes, schema changes, ATTACH, PRAGMA, transactions) is denied.
  The runner's own statements run with no authorizer; the user's SQL never does. The
  query is prepared (``EXPLAIN``) before its first run, so a refusal comes before
  anything ran; a statement that asks the authorizer nothing then (``VACUUM INTO``
  attaches its target only when it runs) is refused by its first word: the SQL must
  start with SELECT, WITH or VALUES.
- A work budget: a progress handler stops the query after ``max_steps`` SQLite
  virtual-machine steps (``QueryOverBudget``), so a runaway query costs a bounded
  amount of CPU and holds its read snapshot for a bounded time.
- Strings and BLOBs are capped at ``MAX_VALUE_BYTES``: ``randomblob(1e9)`` is one step.

The window is given as bounds written to a TEMP table the view joins (a view cannot
hold parameters): ``start_ms <= time_ms < end_ms`` and ``after_id < id <= until_id``,
each ``None`` for "no bound". ``time_ms`` is the capture time or, with ``event_time``,
the reading's own time from its payload (``row_time_sql``); a reading whose payload is
not JSON or has no number there has no time and is in no window: one bad payload costs
only itself, not every window it falls in.

SQLite lacks the aggregates analytics needs most: ``percentile(x, p)``, ``median(x)``,
``stddev(x)`` = ``stddev_samp(x)``, ``stddev_pop(x)``, ``variance(x)`` = ``var_samp(x)``,
``var_pop(x)``. Their calls are rewritten before the SQL is prepared, into SQLite's own
``json_group_array`` and one Python call per group (aggregates.py: no Python call, and
so no GIL, per row); SQLite's messages name them as the user wrote them.
"""

from __future__ import annotations

import base64
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal, NamedTuple

from edge_agent.analytics.aggregates import functions, plain_names, rewrite
from edge_agent.config.analytics import DEFAULT_MAX_STEPS
from edge_agent.errors import QueryFailed, QueryOverBudget
from edge_agent.spool.recovery import connect_read_only
from edge_agent.spool.schema import migrate

#: SQLite calls the budget's progress handler every this many virtual-machine steps: a
#: Python call per 10,000 steps costs nothing measurable (per 1,000: up to a tenth of a
#: short query's time), and an overrun is stopped within 10,000 steps (under a ms).
PROGRESS_INTERVAL = 10_000
#: Default work budget of one run, in SQLite virtual-machine steps: about a second of
#: one core. Measured on the 2-core Xeon VM the tests run on, over 100,000 spooled
#: readings: a GROUP BY with json_extract and avg runs 15-20 million steps a second
#: (31 steps a reading: 20 million is some 650,000 readings), count(DISTINCT key)
#: 40 million, a recursive CTE 30-55 million.
#: The longest string or BLOB a query may make or read (SQLite's length limit on the
#: runner's connection): a telemetry reading is far smaller, and a query cannot allocate
#: the agent's memory away in one step (``randomblob(1e9)``, ``zeroblob``, ``printf``).
MAX_VALUE_BYTES = 16 * 1024 * 1024

#: The name the user's SQL reads.
INPUT = "input"
#: The window's bounds (one row), joined by the view.
_BOUNDS = "input_bounds"
#: SQLite's INTEGER range: a bound of ``None`` is the far end of it.
_MIN, _MAX = -(2**63), 2**63 - 1
#: Eponymous virtual tables that read only their arguments (JSON arrays in payloads).
_TABLE_FUNCTIONS = frozenset({"json_each", "json_tree"})

_WRITES = (
    sqlite3.SQLITE_INSERT,
    sqlite3.SQLITE_UPDATE,
    sqlite3.SQLITE_DELETE,
    sqlite3.SQLITE_CREATE_INDEX,
    sqlite3.SQLITE_CREATE_TABLE,
    sqlite3.SQLITE_CREATE_TEMP_INDEX,
    sqlite3.SQLITE_CREATE_TEMP_TABLE,
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
    sqlite3.SQLITE_CREATE_TEMP_VIEW,
    sqlite3.SQLITE_CREATE_TRIGGER,
    sqlite3.SQLITE_CREATE_VIEW,
    sqlite3.SQLITE_CREATE_VTABLE,
    sqlite3.SQLITE_DROP_INDEX,
    sqlite3.SQLITE_DROP_TABLE,
    sqlite3.SQLITE_DROP_TEMP_INDEX,
    sqlite3.SQLITE_DROP_TEMP_TABLE,
    sqlite3.SQLITE_DROP_TEMP_TRIGGER,
    sqlite3.SQLITE_DROP_TEMP_VIEW,
    sqlite3.SQLITE_DROP_TRIGGER,
    sqlite3.SQLITE_DROP_VIEW,
    sqlite3.SQLITE_DROP_VTABLE,
    sqlite3.SQLITE_ALTER_TABLE,
    sqlite3.SQLITE_REINDEX,
    sqlite3.SQLITE_ANALYZE,
)
#: What the authorizer says when it denies an action: the words check_query returns.
REFUSALS: dict[int, str] = {
    **dict.fromkeys(_WRITES, "writes are not allowed"),
    sqlite3.SQLITE_ATTACH: "ATTACH is not allowed",
    sqlite3.SQLITE_DETACH: "DETACH is not allowed",
    sqlite3.SQLITE_PRAGMA: "PRAGMA is not allowed",
    sqlite3.SQLITE_TRANSACTION: "transactions are not allowed",
    sqlite3.SQLITE_SAVEPOINT: "transactions are not allowed",
}
NOT_INPUT = f"only the table {INPUT} can be read"
NOT_A_SELECT = "only a SELECT is allowed (one statement starting with SELECT, WITH or VALUES)"
ONE_STATEMENT = "only one statement is allowed: remove what follows the first ';'"

#: Leading blanks and comments, then the statement's first word.
_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*(\w*)", re.DOTALL)
#: SQLite result codes after which the same query can succeed later.
_PASSING = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR})

Value = int | float | str | None


class QueryResult(NamedTuple):
    """The rows of one run, as plain Python values; ``seconds``: how long the query ran;
    ``input_rows``: the rows of the window, counted when ``run`` was asked to."""

    columns: tuple[str, ...]
    rows: list[tuple[Value, ...]]
    seconds: float
    input_rows: int | None = None


def row_time_sql(
    event_time: str | None, unit: Literal["s", "ms"] = "ms", *, table: str = ""
) -> str:
    """The SQL of a spooled record's window time over the records table's columns
    (``table``: an alias to qualify them with): the capture time, or the number at
    ``event_time`` (a JSON path) in the payload, in milliseconds rounded to the nearest
    (an event time in seconds is a float; rounding gives back the millisecond that was
    written). NULL when the payload is not JSON or holds no number there. The engine
    uses the same expression to find the rows a window no longer needs."""
    prefix = f"{table}." if table else ""
    if event_time is None:
        return f"{prefix}captured_at_ms"
    text = f"CAST({prefix}payload AS TEXT)"
    path = "'" + event_time.replace("'", "''") + "'"
    scale = " * 1000" if unit == "s" else ""
    return (
        f"CASE WHEN json_valid({text}) AND json_type({text}, {path}) IN ('integer', 'real')"
        f" THEN CAST(round(json_extract({text}, {path}){scale}) AS INTEGER) END"
    )


class QueryRunner:
    """One analytics query over its queue in the spool at ``spool_path``: ``run`` gives
    the result rows of a window. Used by one thread at a time (runs are serialized)."""

    def __init__(
        self,
        spool_path: Path,
        queue: str,
        sql: str,
        *,
        event_time: str | None = None,
        event_time_unit: Literal["s", "ms"] = "ms",
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        """Opens a read-only connection (``SpoolError`` if there is no spool there). The
        queue need not exist yet: until it does, every window is empty. A bad
        ``event_time`` path is a ``QueryFailed`` (``check_query`` finds it first)."""
        if max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        problem = _check_event_time(event_time)
        if problem is not None:
            raise QueryFailed(problem)
        self._sql = sql
        self._rewritten = rewrite(sql)
        self._verdict: str | None = None
        self._checked = False
        self.max_steps = max_steps
        self._lock = threading.Lock()
        self._closed = False
        #: SQLite steps of the run in progress or the last one (to within PROGRESS_INTERVAL).
        self.steps = 0
        self._conn = connect_read_only(spool_path)
        try:
            self._authorizer = _prepare(self._conn, queue, event_time, event_time_unit)
        except sqlite3.Error as err:
            self._conn.close()
            raise _failure(err, None) from err

    @property
    def sql(self) -> str:
        return self._sql

    def run(
        self,
        start_ms: int | None,
        end_ms: int | None,
        *,
        after_id: int | None = None,
        until_id: int | None = None,
        count_input: bool = False,
        if_any: bool = False,
    ) -> QueryResult:
        """The query over the rows with ``start_ms <= time_ms < end_ms`` and
        ``after_id < id <= until_id`` (``None``: no bound). ``count_input`` also counts
        the window's rows, in the same snapshot as the query (a second pass over them).
        ``if_any``: a window without rows gives no rows, whatever the query (an
        aggregate over no rows would give one row of NULLs). Raises ``QueryFailed``
        (``QueryOverBudget`` past ``max_steps``)."""
        with self._lock:
            if self._closed:
                raise QueryFailed("the query runner is closed")
            conn = self._conn
            try:
                self._bind(start_ms, end_ms, after_id, until_id)
                if not count_input and not if_any:
                    return self._run_user_sql()
                conn.execute("BEGIN")  # one snapshot for the count and the query
                try:
                    rows = (
                        f"SELECT count(*) FROM temp.{INPUT}"
                        if count_input
                        else f"SELECT EXISTS (SELECT 1 FROM temp.{INPUT})"
                    )
                    counted = conn.execute(rows).fetchone()[0]
                    if not counted:
                        return QueryResult((), [], 0.0, 0)
                    result = self._run_user_sql()
                finally:
                    conn.execute("COMMIT")  # read only: ends the snapshot
                return result._replace(input_rows=int(counted))
            except sqlite3.Error as err:
                raise _failure(err, None) from err

    def has_rows(
        self,
        start_ms: int | None,
        end_ms: int | None,
        *,
        after_id: int | None = None,
        until_id: int | None = None,
    ) -> bool:
        """Whether the window (bounds as for ``run``) has a row; the runner's own
        statement, not the user's SQL."""
        with self._lock:
            if self._closed:
                raise QueryFailed("the query runner is closed")
            try:
                self._bind(start_ms, end_ms, after_id, until_id)
                row = self._conn.execute(f"SELECT EXISTS (SELECT 1 FROM temp.{INPUT})")
                return bool(row.fetchone()[0])
            except sqlite3.Error as err:
                raise _failure(err, None) from err

    def _bind(
        self, start_ms: int | None, end_ms: int | None, after_id: int | None, until_id: int | None
    ) -> None:
        self._conn.execute(
            f"UPDATE temp.{_BOUNDS} SET start_ms = ?, end_ms = ?, after_id = ?, until_id = ?",
            (
                _MIN if start_ms is None else start_ms,
                _MAX if end_ms is None else end_ms,
                _MIN if after_id is None else after_id,
                _MAX if until_id is None else until_id,
            ),
        )

    def _run_user_sql(self) -> QueryResult:
        """The user's SQL, under the authorizer and the budget, and only so."""
        conn, authorizer = self._conn, self._authorizer
        if not self._checked:  # the same SQL over the same schema: checked once
            self._verdict, self._checked = _verdict(conn, self._rewritten, authorizer), True
        if self._verdict is not None:
            raise QueryFailed(self._verdict)
        authorizer.reset(conn)
        self.steps = 0
        conn.set_authorizer(authorizer)
        conn.set_progress_handler(self._progress, PROGRESS_INTERVAL)
        started = time.perf_counter()
        cursor = conn.cursor()
        try:
            cursor.execute(self._rewritten)
            columns = tuple(str(column[0]) for column in cursor.description or ())
            rows = [tuple(map(_plain, row)) for row in cursor]
        except sqlite3.Error as err:
            if _interrupted(err) and self.steps > self.max_steps:
                raise QueryOverBudget(
                    f"ran past its work budget of {self.max_steps} steps"
                ) from err
            if _interrupted(err) and self._closed:
                raise QueryFailed("stopped: the query runner was closed") from err
            raise _failure(err, authorizer.refusal or authorizer.callback_error) from err
        finally:
            cursor.close()
            conn.set_progress_handler(None, 0)
            conn.set_authorizer(None)
        return QueryResult(columns, rows, time.perf_counter() - started)

    def _progress(self) -> int:
        self.steps += PROGRESS_INTERVAL
        return 1 if self.steps > self.max_steps else 0

    def close(self) -> None:
        """Close the connection; a run in progress is interrupted first."""
        if self._closed:
            return
        self._closed = True
        self._conn.interrupt()
        with self._lock:
            self._conn.close()


def check_query(
    sql: str, *, event_time: str | None = None, event_time_unit: Literal["s", "ms"] = "ms"
) -> str | None:
    """Why ``sql`` cannot run as an analytics query, or None: SQLite's message (syntax,
    an unknown column or function) or what the authorizer refused, in words. The query
    is prepared against an empty spool of the same shape, never run: finding what it
    does over data (a runaway) is the work budget's job."""
    problem = _check_event_time(event_time)
    if problem is not None:
        return problem
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        migrate(conn)
        authorizer = _prepare(conn, "analytics:check", event_time, event_time_unit)
        return _verdict(conn, rewrite(sql), authorizer)
    finally:
        conn.close()


def _verdict(conn: sqlite3.Connection, sql: str, authorizer: _Authorizer) -> str | None:
    """Why ``sql`` cannot run on ``conn``, or None: prepared under the authorizer as
    ``EXPLAIN`` (listed, not run), so a refusal or SQLite's message comes before
    anything ran; then what the authorizer cannot see (``_not_a_select``)."""
    if not sql.strip():
        return NOT_A_SELECT
    authorizer.reset(conn)
    conn.set_authorizer(authorizer)
    try:
        conn.execute(f"EXPLAIN {sql}").fetchall()
    except sqlite3.Error as err:
        return str(_failure(err, authorizer.refusal))
    finally:
        conn.set_authorizer(None)
    return _not_a_select(sql)


# ---------------------------------------------------------------------- the connection


def _prepare(
    conn: sqlite3.Connection, queue: str, event_time: str | None, unit: Literal["s", "ms"]
) -> _Authorizer:
    """The bounds table, the views and the aggregates on ``conn``; the authorizer that
    lets the user's SQL read ``input`` and nothing else."""
    conn.text_factory = _text  # a payload that is not UTF-8 is read, not a failed window
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    rows = f"input_rows_{secrets.token_hex(16)}"
    conn.execute(
        f"CREATE TEMP TABLE {_BOUNDS} (queue TEXT NOT NULL, start_ms INTEGER NOT NULL,"
        " end_ms INTEGER NOT NULL, after_id INTEGER NOT NULL, until_id INTEGER NOT NULL)"
    )
    conn.execute(
        f"INSERT INTO temp.{_BOUNDS} VALUES (?, ?, ?, ?, ?)", (queue, _MIN, _MAX, _MIN, _MAX)
    )
    # The queue is joined by name: it may be created after the runner, and the view
    # follows it. The id range walks the records_by_queue index.
    conn.execute(
        f"CREATE TEMP VIEW {rows} AS SELECT {row_time_sql(event_time, unit, table='r')}"
        " AS time_ms, r.captured_at_ms AS captured_at_ms,"
        " json_extract(r.meta, '$.topic') AS topic, r.partition_key AS key,"
        " CAST(r.payload AS TEXT) AS payload"
        f" FROM temp.{_BOUNDS} AS b JOIN main.queues AS q ON q.name = b.queue"
        " JOIN main.records AS r ON r.queue_id = q.id AND r.id > b.after_id"
        " AND r.id <= b.until_id"
        " WHERE time_ms >= b.start_ms AND time_ms < b.end_ms"
    )
    conn.execute(
        f"CREATE TEMP VIEW {INPUT} AS SELECT time_ms, captured_at_ms, topic, key, payload"
        f" FROM temp.{rows}"
    )
    for table_function in _TABLE_FUNCTIONS:  # their first use writes the schema
        conn.execute(f"SELECT * FROM {table_function}('[]')").fetchall()
    authorizer = _Authorizer(rows)
    for name, n_args, function in functions(authorizer.fail):
        conn.create_function(name, n_args, function, deterministic=True)
    return authorizer


class _Authorizer:
    """SQLite's authorizer callback for the user's SQL; remembers its first refusal (and
    the first error an aggregate's function met) in words, for the error SQLite then raises."""

    def __init__(self, rows_view: str) -> None:
        self.rows_view = rows_view
        #: The databases' tables and views (casefolded), as of the last ``reset``, and
        #: the schemas' versions they were read at.
        self.tables: frozenset[str] = frozenset()
        self._schemas: tuple[int, int] | None = None
        self.refusal: str | None = None
        self.callback_error: str | None = None

    def reset(self, conn: sqlite3.Connection) -> None:
        """Before the user's SQL is prepared (with no authorizer yet). The names are
        read again only when a schema changed (a filter runs several times a second)."""
        self.refusal = self.callback_error = None
        schemas = (
            int(conn.execute("PRAGMA main.schema_version").fetchone()[0]),
            int(conn.execute("PRAGMA temp.schema_version").fetchone()[0]),
        )
        if schemas == self._schemas:
            return
        names = conn.execute(
            "SELECT name FROM main.sqlite_master UNION ALL SELECT name FROM temp.sqlite_master"
        )
        self.tables = frozenset(str(name).casefold() for (name,) in names)
        self._schemas = schemas

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None, view: str | None
    ) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            if self._readable(arg1, arg2, db, view):
                return sqlite3.SQLITE_OK
            return self._deny(NOT_INPUT)
        if action == sqlite3.SQLITE_UPDATE and arg1 in ("sqlite_master", "sqlite_temp_master"):
            # The first use of a table-valued function (pragma_table_info) registers it:
            # the user's SQL meant to read it.
            return self._deny(NOT_INPUT)
        return self._deny(REFUSALS.get(action, NOT_A_SELECT))

    def _readable(
        self, table: str | None, column: str | None, db: str | None, view: str | None
    ) -> bool:
        if column == "":
            # A table none of whose columns is read (count(*)): SQLite names it as the
            # SQL wrote it, unqualified for a CTE or a subquery of the user's own.
            name = (table or "").casefold()
            if name == INPUT or name in _TABLE_FUNCTIONS:
                return True
            return db is None and name not in self.tables
        if db == "temp":
            if table == INPUT:
                return True
            if table == self.rows_view:
                return view == INPUT
            return table == _BOUNDS and view == self.rows_view
        if db == "main" and table in ("records", "queues"):
            return view == self.rows_view
        return db == "main" and table in _TABLE_FUNCTIONS

    def _deny(self, reason: str) -> int:
        if self.refusal is None:
            self.refusal = reason
        return sqlite3.SQLITE_DENY

    def fail(self, reason: str) -> None:
        """An aggregate's reason to stop the query (raised as SQLite's generic error)."""
        if self.callback_error is None:
            self.callback_error = reason
        raise ValueError(reason)


def _failure(err: sqlite3.Error, reason: str | None) -> QueryFailed:
    """A sqlite3 error as the agent's, with the reason in words when there is one."""
    if isinstance(err, sqlite3.ProgrammingError) and "one statement" in str(err):
        return QueryFailed(ONE_STATEMENT)
    code = (getattr(err, "sqlite_errorcode", 0) or 0) & 0xFF
    failed = QueryFailed(reason or plain_names(str(err)))
    failed.retryable = code in _PASSING
    return failed


def _interrupted(err: sqlite3.Error) -> bool:
    return ((getattr(err, "sqlite_errorcode", 0) or 0) & 0xFF) == sqlite3.SQLITE_INTERRUPT


def _not_a_select(sql: str) -> str | None:
    """A statement that is not a query: the authorizer denies every action a write
    needs, but a few statements ask it nothing when prepared (``VACUUM INTO``)."""
    match = _FIRST_WORD.match(sql)
    word = match.group(1).upper() if match else ""
    return None if word in ("SELECT", "WITH", "VALUES") else NOT_A_SELECT


def _check_event_time(event_time: str | None) -> str | None:
    if event_time is None:
        return None
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("SELECT json_extract('{}', ?)", (event_time,)).fetchone()
    except sqlite3.Error as err:
        return f"event_time {event_time!r}: {err}"
    finally:
        conn.close()
    return None


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _plain(value: object) -> Value:
    """A result value as JSON takes it. A BLOB is binary by the query's own choice (CAST
    AS BLOB, randomblob): always base64, so a column's type never depends on its bytes
    (decoding as UTF-8 where it happens to work would)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    assert value is None or isinstance(value, int | float | str)
    return value
