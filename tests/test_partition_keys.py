"""Partition-key templates render every payload, including hostile ones."""

from __future__ import annotations

import pytest

from edge_agent.sources.partition_keys import PartitionKeyTemplate


def render(template: str, payload: bytes, topic: str = "sensors/line1/temp") -> str:
    return PartitionKeyTemplate.compile(template, "gw-7").render(topic, payload)


@pytest.mark.parametrize(
    ("template", "payload", "expected"),
    [
        ("{topic}", b"", "sensors/line1/temp"),
        ("{topic[1]}", b"", "line1"),
        ("{topic[-1]}", b"", "temp"),
        ("{device}/{topic[0]}", b"", "gw-7/sensors"),
        ("{json:id}", b'{"id": "abc"}', "abc"),
        ("{json:a.b}", b'{"a": {"b": 42}}', "42"),
        ("{json:missing}", b'{"id": 1}', "sensors/line1/temp"),
        ("{json:id}", b"not json", "sensors/line1/temp"),
        ("{topic[9]}", b"", "sensors/line1/temp"),
    ],
)
def test_templates(template: str, payload: bytes, expected: str) -> None:
    assert render(template, payload) == expected


def test_lone_surrogate_becomes_an_escape_that_sqlite_can_store() -> None:
    key = render("{json:id}", b'{"id": "\\ud800x"}')
    assert key == "\\ud800x"
    key.encode("utf-8")  # storable


def test_deeply_nested_payload_falls_back_to_the_topic() -> None:
    assert render("{json:id}", b"[" * 200_000) == "sensors/line1/temp"


def test_keys_are_cut_to_the_kinesis_limit() -> None:
    assert len(render("{json:id}", b'{"id": "' + b"x" * 1000 + b'"}')) == 256


@pytest.mark.parametrize("bad", ["{nope}", "{topic[x]}", "{json:}", "a}b", "{", ""])
def test_bad_templates_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        PartitionKeyTemplate.compile(bad, "gw")
