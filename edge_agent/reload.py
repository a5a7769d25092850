"""What a configuration reload changes, worked out before anything is touched.

``plan_reload(running, new)`` compares two validated configurations and says which parts
of the agent must be restarted, which change in place, and which changes are refused:

- refused (the whole reload; the running configuration stays): the spool's path (the
  queues, their leases and sent marks live in that file), and the MQTT broker or client
  id, or the whole ``[mqtt]`` section taken out (the broker keeps a persistent session
  per client id, with every message it holds for the agent: a new broker or id would
  leave that session behind). These need a restart, which the operator asks for
  knowingly;
- in place: the upload budget and each sink's share of it, the spool's caps and reserve,
  the log level and format, the status interval, and MQTT subscriptions (subscribed and
  unsubscribed on the open connection);
- restarted: each sink whose own options changed (its uploader stops the way it stops
  at shutdown: requests on the wire are answered and settled, the rest of its window is
  released, and a new uploader leases from the spool), each camera whose options changed
  (it spools the fragment in progress first), and the MQTT connection when its other
  options changed (same client id, clean session off: the broker keeps what arrives
  meanwhile). Added parts start, removed parts stop; a removed sink's records stay in the
  spool until a sink of that name comes back or their age cap expires them.

Parts that did not change are not touched: their threads and connections go on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from edge_agent.config.budget import ShareConfig
from edge_agent.config.loading import Config
from edge_agent.config.mqtt import MqttConfig
from edge_agent.config.sinks import SinkConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Changes:
    """Names added, removed and changed between two tables of parts (sinks, cameras)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self, what: str) -> list[str]:
        parts = []
        for verb, names in (("added", self.added), ("removed", self.removed)):
            parts += [f"{what} {name} {verb}" for name in names]
        parts += [f"{what} {name} restarted" for name in self.changed]
        return parts


@dataclass(frozen=True)
class ReloadPlan:
    """What applying ``new`` over the running configuration does."""

    #: Why the reload cannot be applied (empty: it can).
    refused: tuple[str, ...] = ()
    sinks: Changes = Changes()
    #: Sinks whose share of the upload budget changed (and nothing else of theirs).
    shares: tuple[str, ...] = ()
    cameras: Changes = Changes()
    #: "none", "subscriptions" (changed on the open connection) or "restart".
    mqtt: str = "none"
    #: The [mqtt] section appears (taking it out is refused).
    mqtt_added: bool = False
    uplink: bool = False
    spool_caps: bool = False
    #: The metrics endpoint's address changed (it is started again there).
    metrics: bool = False
    #: An analytics query was added, removed or changed: their thread starts again (the
    #: windows' state is in the spool).
    analytics: bool = False
    #: Settings read only at start (noted, applied by the next start).
    at_next_start: tuple[str, ...] = ()
    other: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """One line: what the reload did ("no changes" when nothing)."""
        parts = self.sinks.describe("sink") + self.cameras.describe("camera")
        parts += [f"sink {name} upload share" for name in self.shares]
        if self.mqtt_added:
            parts.append("mqtt started")
        elif self.mqtt != "none":
            parts.append(
                "mqtt subscriptions" if self.mqtt == "subscriptions" else "mqtt reconnected"
            )
        if self.uplink:
            parts.append("upload budget")
        if self.spool_caps:
            parts.append("spool caps")
        if self.metrics:
            parts.append("metrics endpoint")
        if self.analytics:
            parts.append("analytics")
        parts += list(self.other)
        parts += [f"{name} (at the next start)" for name in self.at_next_start]
        return ", ".join(parts) or "no changes"


def _uploader_part(sink: SinkConfig) -> SinkConfig:
    """What the sink's uploader is built from: not its share of the budget nor its
    queue's caps (both change in place)."""
    return replace(sink, upload=ShareConfig(), max_bytes=None, max_age=None, overflow="drop_oldest")


def _compare(
    old: Mapping[str, T], new: Mapping[str, T], same: Mapping[str, bool] | None = None
) -> Changes:
    """``same`` overrides equality per name (e.g. ignoring a sink's share)."""
    changed = tuple(
        name
        for name in new
        if name in old and not (same[name] if same is not None else old[name] == new[name])
    )
    return Changes(
        added=tuple(name for name in new if name not in old),
        removed=tuple(name for name in old if name not in new),
        changed=changed,
    )


def _mqtt_change(old: MqttConfig, new: MqttConfig, spool_intake_changed: bool) -> str:
    if old == new and not spool_intake_changed:
        return "none"
    if replace(old, subscriptions=new.subscriptions) == new and not spool_intake_changed:
        return "subscriptions"
    return "restart"


def plan_reload(running: Config, new: Config) -> ReloadPlan:
    refused: list[str] = []
    if new.spool.path != running.spool.path:
        refused.append(
            f"spool.path changed ({running.spool.path} -> {new.spool.path}): the queues "
            "live in the running spool's file"
        )
    old_mqtt, new_mqtt = running.mqtt, new.mqtt
    if old_mqtt is not None and new_mqtt is not None:
        if (old_mqtt.host, old_mqtt.port) != (new_mqtt.host, new_mqtt.port):
            refused.append(
                f"mqtt broker changed ({old_mqtt.host}:{old_mqtt.port} -> "
                f"{new_mqtt.host}:{new_mqtt.port}): the broker holds the agent's session "
                "and the messages queued in it"
            )
        if old_mqtt.client_id != new_mqtt.client_id:
            refused.append(
                f"mqtt client_id changed ({old_mqtt.client_id!r} -> {new_mqtt.client_id!r}): "
                "the broker keeps the session, and the messages queued in it, by client id"
            )
    if old_mqtt is not None and new_mqtt is None:
        refused.append(
            "the [mqtt] section was removed: the broker holds the agent's session and the "
            "messages queued in it (take the subscriptions out instead)"
        )
    if refused:
        return ReloadPlan(refused=tuple(refused))

    # A sink's config carries the [aws] identity: changed credentials change every AWS sink.
    same_sinks = {
        name: _uploader_part(running.sinks[name]) == _uploader_part(sink)
        for name, sink in new.sinks.items()
        if name in running.sinks
    }
    shares = tuple(
        name
        for name, sink in new.sinks.items()
        if name in running.sinks and same_sinks[name] and running.sinks[name].upload != sink.upload
    )
    old_spool, new_spool = running.spool, new.spool
    intake_changed = (old_spool.commit_max_records, old_spool.commit_linger) != (
        new_spool.commit_max_records,
        new_spool.commit_linger,
    )
    mqtt = "none"
    if old_mqtt is not None and new_mqtt is not None:
        mqtt = _mqtt_change(old_mqtt, new_mqtt, intake_changed)
    caps_changed = (
        (old_spool.max_bytes, old_spool.max_age, old_spool.reserve, old_spool.durability)
        != (new_spool.max_bytes, new_spool.max_age, new_spool.reserve, new_spool.durability)
    ) or any(
        (sink.max_bytes, sink.max_age, sink.overflow, sink.max_record_bytes)
        != (old.max_bytes, old.max_age, old.overflow, old.max_record_bytes)
        for name, sink in new.sinks.items()
        if (old := running.sinks.get(name)) is not None
    )
    at_next_start = []
    if old_spool.integrity_check != new_spool.integrity_check:
        at_next_start.append("spool.integrity_check")
    other = []
    if running.agent.log_level != new.agent.log_level:
        other.append(f"log level {new.agent.log_level}")
    if running.agent.log_format != new.agent.log_format:
        other.append(f"log format {new.agent.log_format}")
    return ReloadPlan(
        sinks=_compare(running.sinks, new.sinks, same_sinks),
        shares=shares,
        cameras=_compare(running.cameras, new.cameras),
        mqtt=mqtt,
        mqtt_added=old_mqtt is None and new_mqtt is not None,
        uplink=running.uplink != new.uplink,
        spool_caps=caps_changed or set(running.sinks) != set(new.sinks),
        metrics=running.metrics != new.metrics,
        analytics=running.analytics != new.analytics,
        at_next_start=tuple(at_next_start),
        other=tuple(other),
    )
