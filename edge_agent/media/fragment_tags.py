"""Fragment tags: Kinesis Video fragment metadata, written after a fragment's Cluster.

Like the producer SDK, each tag is a Tags element of its own, and the end-of-fragment
tag comes last; the service allows 10 tags a fragment, that one included, so a
fragment carries at most 9 of ours. A name is at most 128 bytes and may not start
with "AWS"; a value at most 256 bytes. These are the producer's rules, written here
from the service's documentation; kvs-local checks what arrives with its own
(kvs_local/rules.py), so a mistake on one side shows against the other.

Which tags a fragment gets (``fit``): the camera's static tags first, then each event's
(``event_id``, ``event_trigger`` and its fields, prefixed ``event_``), as long as there
is room; values longer than the limit are cut at a character boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from edge_agent.media.ebml import master, string
from edge_agent.media.mkv import (
    SIMPLE_TAG,
    TAG,
    TAG_NAME,
    TAG_STRING,
    TAGS,
    TARGETS,
    end_of_fragment,
)

MAX_USER_TAGS = 9
MAX_NAME_BYTES = 128
MAX_VALUE_BYTES = 256

Tags = tuple[tuple[str, str], ...]

END_ONLY = end_of_fragment()


def tag_problem(name: str, value: str) -> str | None:
    """Why the service would refuse this tag of ours, or None."""
    if not name:
        return "a tag name must not be empty"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"tag name of {len(name.encode())} bytes (at most {MAX_NAME_BYTES})"
    if name.upper().startswith("AWS"):
        return f"tag name {name[:40]!r} starts with AWS (reserved for the service)"
    if len(value.encode()) > MAX_VALUE_BYTES:
        return f"tag value of {len(value.encode())} bytes (at most {MAX_VALUE_BYTES})"
    return None


def cut(value: str, limit: int = MAX_VALUE_BYTES) -> str:
    """``value`` within ``limit`` bytes of UTF-8, cut at a character boundary."""
    data = value.encode()
    if len(data) <= limit:
        return value
    return data[:limit].decode(errors="ignore")


def fit(static: Mapping[str, str], events: Iterable[Mapping[str, object]]) -> tuple[Tags, int]:
    """The tags of one fragment, and how many were left out for want of room. Each
    event is ``{"id": .., "trigger": .., "fields": {..}}``; several events on one
    fragment join their ids and triggers with commas."""
    tags: dict[str, str] = dict(static)
    extra: dict[str, str] = {}
    for event in events:
        for name, value in (("event_id", event.get("id")), ("event_trigger", event.get("trigger"))):
            text = str(value)
            extra[name] = f"{extra[name]},{text}" if name in extra else text
        fields = event.get("fields")
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                extra.setdefault(f"event_{key}", str(value))
    left_out = 0
    for name, value in extra.items():
        if len(tags) >= MAX_USER_TAGS or tag_problem(name, "") is not None:
            left_out += 1
            continue
        tags.setdefault(name, cut(value))
    return tuple(tags.items()), left_out


def tags_element(name: str, value: str) -> bytes:
    return master(
        TAGS,
        master(
            TAG,
            master(TARGETS),
            master(SIMPLE_TAG, string(TAG_NAME, name), string(TAG_STRING, value)),
        ),
    )


def after_fragment(tags: Tags) -> bytes:
    """What follows a fragment's Cluster on the wire: its tags, then the end-of-fragment
    tag (alone, when it has none)."""
    if not tags:
        return END_ONLY
    return b"".join(tags_element(name, value) for name, value in tags) + END_ONLY
