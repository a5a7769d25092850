"""The ``[analytics.NAME]`` tables: SQL over windows of MQTT readings (docs/ANALYTICS.md).

Each query takes the readings of its topic filters into a queue in the spool, shared by
the queries over the same filters (``analytics:<filters>``: kept as long as their
windows and grace need them, under the spool's caps like any queue), and sends each
result row as a record to its sinks. The MQTT
source subscribes to the topics of every query as it does to ``[[mqtt.subscriptions]]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Literal

from edge_agent.config.agent import AgentConfig
from edge_agent.config.mqtt import TEMPLATE, TOPIC_TEMPLATE, Subscription, topic_filter_check
from edge_agent.config.options import (
    ANY_STRING,
    MILLISECONDS,
    SIZE,
    STRING,
    STRING_LIST,
    Table,
    choice,
    integer,
    off,
    option,
    read_section,
    section,
)
from edge_agent.config.sinks import SinkConfig, named_tables
from edge_agent.sources.partition_keys import PartitionKeyTemplate

WindowKind = Literal["tumbling", "hopping", "sliding", "session", "count", "none"]
#: The spool queue of a query's raw rows: a name no sink can have (':' is not allowed).
QUEUE_PREFIX = "analytics:"
#: Default work budget of one run of a query, in SQLite virtual machine steps: about a
#: second of a typical query on a 2-core x86 device (15-40 million steps a second).
DEFAULT_MAX_STEPS = 20_000_000


@section
class AnalyticsConfig:
    """One query: its input, its window, its SQL, and where its result rows go."""

    name: str
    window: WindowKind = option(
        kind=choice("tumbling", "hopping", "sliding", "session", "count", "none"),
        doc='"tumbling" (size), "hopping" (size, hop), "sliding" (size, period), "session" '
        '(gap), "count" (count) or "none": a continuous filter, the query run over each '
        "new batch of readings and its rows emitted at once.",
    )
    sql: str = option(
        kind=ANY_STRING,
        doc="One SELECT over the table `input` (time_ms, captured_at_ms, topic, key, "
        "payload); json_extract, GROUP BY, ORDER BY ... LIMIT, count(DISTINCT ...), and "
        "percentile(x, p), median, stddev, variance are there. Read-only.",
    )
    topics: tuple[str, ...] = option(
        kind=STRING_LIST,
        default=(),
        default_doc="required",
        doc="MQTT topic filters whose readings the query sees (its table `input`).",
    )
    size_ms: int = option(
        kind=MILLISECONDS,
        key="size",
        default=0,
        default_doc="required by tumbling, hopping and sliding windows",
        doc="The window's length; for session windows the longest a session may last "
        "(0: no limit).",
    )
    hop_ms: int = option(
        kind=MILLISECONDS,
        key="hop",
        default=0,
        default_doc="required by hopping windows",
        doc="Hopping windows: a new window starts every hop (at most size).",
    )
    period_ms: int = option(
        kind=MILLISECONDS,
        key="period",
        default=0,
        doc="Sliding windows: emit the last `size` every period; 0: whenever readings "
        "arrived since the last emit.",
    )
    gap_ms: int = option(
        kind=MILLISECONDS,
        key="gap",
        default=0,
        default_doc="required by session windows",
        doc="Session windows: a session ends after this long without a reading.",
    )
    count: int = option(
        kind=integer(1, 1_000_000),
        default=0,
        default_doc="required by count windows",
        doc="Count windows: this many readings each.",
    )
    grace_ms: int = option(
        kind=MILLISECONDS,
        key="grace",
        default=0,
        doc="A window is evaluated this long after it ends, so that readings that come a "
        "little late (by event time) still count in it.",
    )
    late: Literal["count", "revise"] = option(
        kind=choice("count", "revise"),
        default="count",
        doc='Readings later than the grace: "count" them (status), or "revise": evaluate '
        "their window again and emit its rows once more, with the next revision number "
        "(tumbling, hopping and sliding windows).",
    )
    revise_for_ms: int = option(
        kind=MILLISECONDS,
        key="revise_for",
        default=600_000,
        doc='With late = "revise": how long after its close a window may still be '
        "revised; its raw readings are kept that long.",
    )
    event_time: str | None = option(
        kind=STRING,
        default=None,
        default_doc="the capture time (when the agent received the reading)",
        doc='A JSON path into the payload ("$.ts") giving each reading\'s own time, so '
        "that readings a broker held during an outage land in their own windows.",
    )
    event_time_unit: Literal["s", "ms"] = option(
        kind=choice("s", "ms"),
        default="ms",
        doc="The unit of event_time: seconds or milliseconds since the epoch.",
    )
    sinks: tuple[str, ...] = option(
        kind=STRING_LIST,
        default=(),
        default_doc="required",
        doc="Sinks each result row goes to, as one record (a JSON object of its columns "
        "plus query, window_id, window_start, window_end and revision).",
    )
    partition_key: PartitionKeyTemplate = option(
        kind=TEMPLATE,
        default=TOPIC_TEMPLATE,
        default_doc='"{topic}", which is the query\'s name here',
        doc="Per result row, as for MQTT subscriptions: {topic} is the query's name, "
        "{json:column} a column of the row, {device} the device.",
    )
    max_bytes: int | None = option(
        kind=off(SIZE),
        default=None,
        default_doc='"off": only the spool\'s caps',
        doc="Cap on the raw readings kept for the query's windows; readings evicted before "
        "their window was evaluated are counted in status.",
    )
    max_steps: int = option(
        kind=integer(1000, 10_000_000_000),
        default=DEFAULT_MAX_STEPS,
        doc="Work budget of one run of the query, in SQLite steps: a query past it is "
        "stopped and reported, and intake goes on.",
    )

    @property
    def queue(self) -> str:
        """The spool queue of its readings: shared by the queries over the same topic
        filters, so that a reading is stored once for all of them."""
        return QUEUE_PREFIX + ",".join(sorted(set(self.topics)))


def read_analytics(
    table: Table | None, sinks: Mapping[str, SinkConfig], agent: AgentConfig
) -> dict[str, AnalyticsConfig]:
    queries: dict[str, AnalyticsConfig] = {}
    for name, sub in named_tables(table, "query"):
        query = read_section(AnalyticsConfig, sub, given={"name": name})
        _check(sub, query, sinks)
        template = PartitionKeyTemplate.compile(query.partition_key.source, agent.device_name)
        sub.finish()
        queries[name] = replace(query, partition_key=template)
    return queries


def _check(table: Table, query: AnalyticsConfig, sinks: Mapping[str, SinkConfig]) -> None:
    if not query.topics:
        table.problem("topics", "name at least one MQTT topic filter")
    for topic in query.topics:
        problem = topic_filter_check(topic)
        if problem is not None:
            table.problem("topics", problem)
    if not query.sinks:
        table.problem("sinks", "name at least one sink from [sinks]")
    for target in query.sinks:
        if target not in sinks:
            table.problem("sinks", f"no sink named {target!r} in [sinks]")
    kind = query.window
    if kind in ("tumbling", "hopping", "sliding") and query.size_ms <= 0:
        table.problem("size", f"a {kind} window needs a size")
    if kind == "hopping" and not 0 < query.hop_ms <= query.size_ms:
        table.problem("hop", "a hopping window needs 0 < hop <= size")
    if kind == "session" and query.gap_ms <= 0:
        table.problem("gap", "a session window needs a gap")
    if kind == "count" and query.count <= 0:
        table.problem("count", "a count window needs a count")
    if query.event_time is not None and not query.event_time.startswith("$"):
        table.problem("event_time", 'expected a JSON path such as "$.ts"')


def analytics_subscriptions(queries: Mapping[str, AnalyticsConfig]) -> tuple[Subscription, ...]:
    """What the MQTT source subscribes to for the queries: each topic filter, feeding
    the queue of the queries over it (its raw rows are keyed by topic)."""
    pairs = {(topic, query.queue) for query in queries.values() for topic in query.topics}
    return tuple(Subscription(topic, 1, (queue,), TOPIC_TEMPLATE) for topic, queue in sorted(pairs))
