"""What starts a camera's events: ``[cameras.NAME.motion]`` and ``[triggers.NAME]``
(docs/EVENTS.md). The recording ring, the upload mode and the rolls are camera options
(config/cameras.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field

from edge_agent.config.mqtt import TOPIC_TEMPLATE, Subscription, topic_filter_check
from edge_agent.config.options import (
    BOOLEAN,
    DURATION,
    STRING,
    STRING_LIST,
    Kind,
    Table,
    integer,
    option,
    read_section,
    section,
    within,
)
from edge_agent.config.sinks import named_tables

#: A polygon in fractions of the picture: (x, y) corners, 0 to 1 from the top left.
Polygon = tuple[tuple[float, float], ...]


def _polygons(raw: object) -> tuple[Polygon, ...]:
    if not isinstance(raw, list):
        raise TypeError("expected an array of polygons, each an array of [x, y] corners")
    polygons = []
    for number, polygon in enumerate(raw, start=1):
        if not isinstance(polygon, list) or len(polygon) < 3:
            raise ValueError(f"polygon {number}: expected at least 3 [x, y] corners")
        corners = []
        for corner in polygon:
            if (
                not isinstance(corner, list)
                or len(corner) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in corner)
            ):
                raise ValueError(f"polygon {number}: a corner is not [x, y]: {corner!r}")
            x, y = float(corner[0]), float(corner[1])
            if not (0 <= x <= 1 and 0 <= y <= 1):
                raise ValueError(
                    f"polygon {number}: corner [{x:g}, {y:g}] is outside the picture "
                    "(fractions from 0 to 1)"
                )
            corners.append((x, y))
        polygons.append(tuple(corners))
    return tuple(polygons)


def _show_polygons(value: tuple[Polygon, ...]) -> str:
    return (
        "["
        + ", ".join(
            "[" + ", ".join(f"[{x:g}, {y:g}]" for x, y in polygon) + "]" for polygon in value
        )
        + "]"
    )


POLYGONS: Kind[tuple[Polygon, ...]] = Kind(
    "array of polygons ([[x, y], ...] in fractions of the picture)",
    _polygons,
    (),
    _show_polygons,
)


def _number(raw: object) -> float:
    if not isinstance(raw, int | float) or isinstance(raw, bool):
        raise TypeError(f"expected a number, got {raw!r}")
    return float(raw)


NUMBER: Kind[float] = Kind("number", _number, 0.0, lambda value: f"{value:g}")


@section
class MotionConfig:
    """Motion detection on the camera's pictures (``[cameras.NAME.motion]``): the luma
    of a downscaled picture against a running background. A passthrough camera decodes
    only its keyframes (one per fragment), so it stays cheap; an encoded one looks at
    ``sample_fps`` of the pictures it decodes anyway."""

    threshold: int = option(
        kind=integer(1, 255),
        default=25,
        doc="How far a cell's brightness (0-255) must differ from the background to count "
        "as changed.",
    )
    min_area: float = option(
        kind=NUMBER,
        default=0.005,
        check=within(0.0001, 1, "from 0.0001 to 1"),
        doc="The least part of the watched picture that must change for motion.",
    )
    cooldown: float = option(
        kind=DURATION,
        default=10.0,
        doc="An event ends this long after the last motion; motion within it extends it.",
    )
    sample_fps: float = option(
        kind=NUMBER,
        default=2.0,
        check=within(0.1, 30, "from 0.1 to 30"),
        doc="Encoded cameras: pictures looked at per second (a passthrough camera looks "
        "at its keyframes).",
    )
    width: int = option(
        kind=integer(32, 640),
        default=160,
        doc="The width the picture is scaled down to before comparing (the height keeps "
        "the picture's shape).",
    )
    zones: tuple[Polygon, ...] = option(
        kind=POLYGONS,
        default=(),
        default_doc="the whole picture",
        doc="Only motion inside these polygons counts.",
    )
    masks: tuple[Polygon, ...] = option(
        kind=POLYGONS,
        default=(),
        doc="Motion inside these polygons never counts (a tree, a road, a clock).",
    )
    snapshot: bool = option(
        kind=BOOLEAN,
        default=True,
        doc="Take a snapshot when motion starts an event (with the camera's snapshot_sink).",
    )


@section
class TriggerConfig:
    """MQTT messages that start, or start and end, events on cameras (``[triggers.NAME]``).
    Without ``state`` every message is an event of its own: the camera's pre-roll before
    it and post-roll after it. ``[triggers.NAME.fields]`` takes event fields from the
    payload, each a JSON path (``door = "$.door"``): they go out with the event and
    into the fragments' tags."""

    name: str
    topics: tuple[str, ...] = option(
        kind=STRING_LIST, default=(), default_doc="required", doc="MQTT topic filters."
    )
    cameras: tuple[str, ...] = option(
        kind=STRING_LIST,
        default=(),
        default_doc="required",
        doc="The cameras whose video the event is about.",
    )
    state: str | None = option(
        kind=STRING,
        default=None,
        doc='A JSON path into the payload ("$.state") whose value starts or ends the event.',
    )
    start: tuple[str, ...] = option(
        kind=STRING_LIST,
        default=("open", "on", "true", "1", "start", "detected"),
        doc="With state: values that start an event (compared as text, any case).",
    )
    end: tuple[str, ...] = option(
        kind=STRING_LIST,
        default=("closed", "off", "false", "0", "end", "clear"),
        doc="With state: values that end it; other values are ignored.",
    )
    fields: Mapping[str, str] = field(default_factory=dict)

    def trigger_name(self) -> str:
        return f"mqtt:{self.name}"


def read_motion(table: Table | None) -> MotionConfig | None:
    if table is None:
        return None
    motion = read_section(MotionConfig, table)
    table.finish()
    return motion


def read_triggers(table: Table | None, cameras: Mapping[str, object]) -> dict[str, TriggerConfig]:
    """``[triggers.NAME]``; ``[triggers.NAME.fields]`` names each event field's JSON path."""
    triggers: dict[str, TriggerConfig] = {}
    for name, sub in named_tables(table, "trigger"):
        fields_table = sub.subtable("fields")
        fields: dict[str, str] = {}
        if fields_table is not None:
            for key, path in list(fields_table.raw.items()):
                if not isinstance(path, str) or not path.startswith("$"):
                    fields_table.problem(key, 'expected a JSON path such as "$.door"')
                else:
                    fields[key] = path
            fields_table.raw.clear()
        trigger = read_section(TriggerConfig, sub, given={"name": name, "fields": fields})
        if not trigger.topics:
            sub.problem("topics", "name at least one MQTT topic filter")
        for topic in trigger.topics:
            if (problem := topic_filter_check(topic)) is not None:
                sub.problem("topics", problem)
        if not trigger.cameras:
            sub.problem("cameras", "name at least one camera from [cameras]")
        for camera in trigger.cameras:
            if camera not in cameras:
                sub.problem("cameras", f"no camera named {camera!r} in [cameras]")
        if trigger.state is not None and not trigger.state.startswith("$"):
            sub.problem("state", 'expected a JSON path such as "$.state"')
        sub.finish()
        triggers[name] = trigger
    return triggers


#: The pseudo-queue a trigger's messages are routed to: the MQTT committer turns them
#: into events in the batch's transaction (no sink has a name with ':').
TRIGGER_PREFIX = "trigger:"


def trigger_subscriptions(triggers: Mapping[str, TriggerConfig]) -> tuple[Subscription, ...]:
    """What the MQTT source subscribes to for the triggers (QoS 1)."""
    pairs = {
        (topic, TRIGGER_PREFIX + name)
        for name, trigger in triggers.items()
        for topic in trigger.topics
    }
    return tuple(Subscription(topic, 1, (queue,), TOPIC_TEMPLATE) for topic, queue in sorted(pairs))
