"""``check-config`` for analytics: every query prepared (not run) against a table of the
shape its ``input`` has, under the same read-only rules as at run time; each problem
names the file, the key and SQLite's words (or the rule the query broke)."""

from __future__ import annotations

from edge_agent.analytics.query import check_query
from edge_agent.config.loading import Config
from edge_agent.errors import ConfigProblem


def check_queries(config: Config) -> list[ConfigProblem]:
    problems = []
    for name, query in config.analytics.items():
        reason = check_query(
            query.sql, event_time=query.event_time, event_time_unit=query.event_time_unit
        )
        if reason is not None:
            problems.append(ConfigProblem(config.source_file, f"analytics.{name}.sql", reason))
    return problems
