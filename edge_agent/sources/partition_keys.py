"""Partition-key templates: how a subscription names the partition key of each message.

A template is literal text with placeholders::

    {topic}          the whole topic                      sensors/line1/temp
    {topic[1]}       one topic level (0-based; -1 last)   line1
    {device}         the agent's device_name              gw-07
    {json:a.b}       a field of a JSON payload            {"a": {"b": "x"}} -> x

A key that renders empty (a missing JSON field, a payload that is not JSON or nested too
deep to parse) falls back to the topic; characters that cannot be stored as UTF-8 (a lone
surrogate from a JSON escape) are written as backslash escapes; keys are cut to 256
characters, the Kinesis limit. Rendering never raises: one device's odd payload must not
stop intake.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_PARTITION_KEY_CHARS = 256

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TOPIC_LEVEL = re.compile(r"^topic\[(-?\d+)\]$")

Part = Callable[[str, bytes, list[object]], str]


def _json_field(path: tuple[str, ...]) -> Part:
    def render(topic: str, payload: bytes, cache: list[object]) -> str:
        if not cache:
            try:
                cache.append(json.loads(payload))
            except (ValueError, UnicodeDecodeError, RecursionError):
                cache.append(None)
        value = cache[0]
        for step in path:
            if not isinstance(value, dict) or step not in value:
                return ""
            value = value[step]
        if value is None or isinstance(value, dict | list):
            return ""
        return str(value)

    return render


def _topic_level(index: int) -> Part:
    def render(topic: str, payload: bytes, cache: list[object]) -> str:
        levels = topic.split("/")
        return levels[index] if -len(levels) <= index < len(levels) else ""

    return render


def _literal(text: str) -> Part:
    return lambda topic, payload, cache: text


@dataclass(frozen=True)
class PartitionKeyTemplate:
    """A compiled template; ``render(topic, payload)`` gives the partition key."""

    source: str
    parts: tuple[Part, ...] = field(compare=False, repr=False)
    is_plain_topic: bool = field(compare=False, repr=False)

    @classmethod
    def compile(cls, source: str, device_name: str) -> PartitionKeyTemplate:
        parts: list[Part] = []
        position = 0
        for match in _PLACEHOLDER.finditer(source):
            if match.start() > position:
                parts.append(_literal(source[position : match.start()]))
            parts.append(cls._placeholder(match.group(1), device_name))
            position = match.end()
        tail = source[position:]
        if "{" in tail or "}" in tail:
            raise ValueError(f"unbalanced brace in template {source!r}")
        if tail:
            parts.append(_literal(tail))
        if not parts:
            raise ValueError("template must not be empty")
        return cls(source=source, parts=tuple(parts), is_plain_topic=source == "{topic}")

    @staticmethod
    def _placeholder(name: str, device_name: str) -> Part:
        if name == "topic":
            return lambda topic, payload, cache: topic
        if name == "device":
            return _literal(device_name)
        level = _TOPIC_LEVEL.match(name)
        if level:
            return _topic_level(int(level.group(1)))
        if name.startswith("json:") and len(name) > 5:
            return _json_field(tuple(name[5:].split(".")))
        raise ValueError(
            f"unknown placeholder {{{name}}}: use {{topic}}, {{topic[N]}}, {{device}} "
            "or {json:field.path}"
        )

    def render(self, topic: str, payload: bytes) -> str:
        if self.is_plain_topic:
            key = topic
        else:
            cache: list[object] = []
            try:
                key = "".join(part(topic, payload, cache) for part in self.parts) or topic
                key = key.encode("utf-8", "backslashreplace").decode("utf-8")
            except Exception:  # e.g. a value whose str() fails: fall back, never stop intake
                key = topic
        return key[:MAX_PARTITION_KEY_CHARS]
