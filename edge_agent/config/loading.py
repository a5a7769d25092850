"""Loading the configuration: a TOML file turned into frozen, validated dataclasses.

Each option is declared once, in the section that holds it (see
:mod:`edge_agent.config.options`); docs/CONFIG.md is generated from the declarations.
Loading collects every problem before failing, and each problem names the file, the
key path (``mqtt.subscriptions[2].qos``) and the reason. Unknown keys are errors, so a
typo never silently falls back to a default. String values may use ``${NAME}`` or
``${NAME:-default}`` to take secrets from the environment; a problem names such a
value by its reference, never shows it (``edge-agent check-config`` prints problems).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.config.agent import AgentConfig, SpoolConfig, read_agent, read_spool
from edge_agent.config.analytics import AnalyticsConfig, analytics_subscriptions, read_analytics
from edge_agent.config.aws import AwsIdentity, read_identity, with_identity
from edge_agent.config.budget import BudgetConfig, read_uplink
from edge_agent.config.cameras import CameraConfig, read_cameras
from edge_agent.config.events import TriggerConfig, read_triggers, trigger_subscriptions
from edge_agent.config.metrics import MetricsConfig, read_metrics
from edge_agent.config.mqtt import MqttConfig, read_mqtt
from edge_agent.config.options import Table
from edge_agent.config.sinks import SinkConfig, read_sinks
from edge_agent.errors import ConfigError, ConfigProblem

DEFAULT_CONFIG_PATH = "/etc/edge-agent/edge-agent.toml"


@dataclass(frozen=True)
class Config:
    source_file: str
    agent: AgentConfig
    spool: SpoolConfig
    mqtt: MqttConfig | None
    sinks: Mapping[str, SinkConfig] = field(default_factory=dict)
    uplink: BudgetConfig = field(default_factory=BudgetConfig)
    cameras: Mapping[str, CameraConfig] = field(default_factory=dict)
    aws: AwsIdentity = field(default_factory=AwsIdentity)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    analytics: Mapping[str, AnalyticsConfig] = field(default_factory=dict)
    triggers: Mapping[str, TriggerConfig] = field(default_factory=dict)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raises ConfigError naming every problem."""
    file = str(path)
    try:
        with open(file, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(file, "", "file not found")]) from None
    except OSError as err:
        raise ConfigError([ConfigProblem(file, "", f"cannot read: {err.strerror}")]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([ConfigProblem(file, "", f"not valid TOML: {err}")]) from None
    return parse_config(document, file)


def parse_config(document: Mapping[str, Any], file: str = "<config>") -> Config:
    """Validate an already-parsed TOML document."""
    problems: list[ConfigProblem] = []
    root = Table(file, "", dict(document), problems)
    agent = read_agent(root.subtable("agent") or Table(file, "agent", {}, problems))
    spool = read_spool(root.subtable("spool") or Table(file, "spool", {}, problems), agent)
    aws = read_identity(root.subtable("aws"), agent)
    sinks = with_identity(read_sinks(root.subtable("sinks")), aws, file, problems)
    uplink = read_uplink(root.subtable("uplink"))
    analytics_table = root.subtable("analytics")
    analytics = read_analytics(analytics_table, sinks, agent)
    cameras = read_cameras(root.subtable("cameras"), sinks)
    triggers_table = root.subtable("triggers")
    triggers = read_triggers(triggers_table, cameras)
    mqtt_table = root.subtable("mqtt")
    mqtt = None
    if mqtt_table is not None:
        extra = analytics_subscriptions(analytics) + trigger_subscriptions(triggers)
        mqtt = read_mqtt(mqtt_table, agent, sinks, extra)
    else:
        for needs_mqtt, what in ((analytics_table, "analytics"), (triggers_table, "triggers")):
            if needs_mqtt is not None:
                needs_mqtt.problem("", f"{what} read MQTT: an [mqtt] section is needed")
    metrics = read_metrics(root.subtable("metrics"))
    root.finish()
    if problems:
        raise ConfigError(problems)
    return Config(
        source_file=file,
        agent=agent,
        spool=spool,
        mqtt=mqtt,
        sinks=sinks,
        uplink=uplink,
        cameras=cameras,
        metrics=metrics,
        aws=aws,
        analytics=analytics,
        triggers=triggers,
    )
