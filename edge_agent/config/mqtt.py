"""The ``[mqtt]`` source: the broker, TLS and the subscriptions that feed the sinks."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from edge_agent.config.agent import AgentConfig
from edge_agent.config.options import (
    ANY_STRING,
    BOOLEAN,
    DURATION,
    PATH,
    STRING,
    STRING_LIST,
    Check,
    Kind,
    Table,
    choice,
    integer,
    option,
    read_section,
    section,
    within,
)
from edge_agent.config.sinks import SinkConfig
from edge_agent.sources.partition_keys import PartitionKeyTemplate


@section
class TlsConfig:
    """``[mqtt.tls]``: TLS to the broker (its presence switches TLS on)."""

    ca_file: Path | None = option(
        kind=PATH, default=None, default_doc="the system's CA certificates", doc="CA certificates."
    )
    cert_file: Path | None = option(
        kind=PATH, default=None, doc="Client certificate (goes with key_file)."
    )
    key_file: Path | None = option(kind=PATH, default=None, doc="Client key.")
    insecure: bool = option(
        kind=BOOLEAN, default=False, doc="Skip the host name check (testing only)."
    )


def _topic_filter_problem(topic: str) -> str | None:
    """Why an MQTT topic filter is invalid, or None."""
    if not topic or len(topic.encode()) > 65535 or "\0" in topic:
        return "must be 1 to 65535 bytes of UTF-8 without NUL"
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None


def topic_filter_check(topic: str) -> str | None:
    """Why ``topic`` is not a valid MQTT topic filter, in words; None if it is."""
    reason = _topic_filter_problem(topic)
    return None if reason is None else f"invalid topic filter {topic!r}: {reason}"


def _template(raw: object) -> PartitionKeyTemplate:
    # {device} is filled in once the device name is known (read_subscription).
    return PartitionKeyTemplate.compile(STRING.parse(raw), "")


TOPIC_TEMPLATE = PartitionKeyTemplate.compile("{topic}", "")
TEMPLATE: Kind[PartitionKeyTemplate] = Kind(
    "partition-key template", _template, TOPIC_TEMPLATE, lambda template: f'"{template.source}"'
)


@section
class Subscription:
    """``[[mqtt.subscriptions]]``: one per topic filter. QoS 1 messages are acked only
    after they are committed to the spool."""

    topic: str = option(
        kind=STRING, check=Check("an MQTT topic filter", topic_filter_check), doc="Topic filter."
    )
    qos: int = option(
        kind=integer(0, 1),
        default=1,
        doc="QoS 2 buys nothing here: the client acknowledges on receipt.",
    )
    sinks: tuple[str, ...] = option(
        kind=STRING_LIST,
        default=(),
        default_doc="required",
        doc="Sinks this subscription feeds; a message may go to several.",
    )
    partition_key: PartitionKeyTemplate = option(
        kind=TEMPLATE,
        default=TOPIC_TEMPLATE,
        doc="Per message: literal text with {topic}, {topic[N]} (a level, 0-based, -1 = "
        "last), {device}, {json:field.path}; empty results fall back to the topic.",
    )


@section
class MqttConfig:
    """The MQTT source; leave out the whole ``[mqtt]`` table to run without MQTT."""

    host: str = option(kind=STRING, default="127.0.0.1", doc="The broker.")
    port: int = option(
        kind=integer(1, 65535),
        default=1883,
        default_doc="1883, or 8883 when [mqtt.tls] is present",
        doc="The broker's port.",
    )
    client_id: str = option(
        kind=STRING,
        default="edge-agent",
        default_doc='"edge-agent-<device_name>"',
        doc="Must be stable: the broker keeps un-acked messages for this id while the agent "
        "is down.",
    )
    protocol: Literal["3.1.1", "5"] = option(
        kind=choice("3.1.1", "5"),
        default="3.1.1",
        doc='"3.1.1" (clean session off) or "5" (clean start off + session expiry).',
    )
    session_expiry: float = option(
        kind=DURATION,
        default=7 * 86400.0,
        doc="MQTT 5 only: how long the broker keeps the session while the agent is away.",
    )
    keepalive: float = option(
        kind=DURATION,
        default=30.0,
        check=within(5, 65535, "must be between 5s and 65535s (MQTT's 16-bit field)"),
        doc="MQTT keepalive.",
    )
    username: str | None = option(kind=STRING, default=None, doc="User name.")
    password: str | None = option(
        kind=ANY_STRING, default=None, doc='Password, e.g. "${MQTT_PASSWORD}".'
    )
    tls: TlsConfig | None = None
    reconnect_min: float = option(
        kind=DURATION,
        default=1.0,
        doc="Reconnect backoff while the broker is unreachable (also at start).",
    )
    reconnect_max: float = option(kind=DURATION, default=60.0, doc="The longest backoff.")
    subscriptions: tuple[Subscription, ...] = ()


def read_mqtt(
    table: Table,
    agent: AgentConfig,
    sinks: Mapping[str, SinkConfig],
    others: tuple[Subscription, ...] = (),
) -> MqttConfig:
    """``others``: what the analytics queries and the event triggers subscribe to,
    after the subscriptions."""
    tls_table = table.subtable("tls")
    tls = None
    if tls_table is not None:
        tls = read_section(TlsConfig, tls_table)
        if (tls.cert_file is None) != (tls.key_file is None):
            tls_table.problem("key_file", "cert_file and key_file go together")
        _check_tls_files(tls_table, tls)
        tls_table.finish()
    subscriptions = tuple(
        read_subscription(sub, agent, sinks) for sub in table.table_list("subscriptions")
    )
    if not subscriptions and not others:
        table.problem("subscriptions", "at least one [[mqtt.subscriptions]] is needed")
    subscriptions += others
    mqtt = read_section(
        MqttConfig,
        table,
        given={"tls": tls, "subscriptions": subscriptions},
        defaults={
            "port": 8883 if tls else 1883,
            "client_id": f"edge-agent-{agent.device_name}",
        },
    )
    if mqtt.protocol == "5" and not 1 <= mqtt.session_expiry <= 0xFFFFFFFF:
        table.problem(
            "session_expiry",
            "must be between 1s and 4294967295s: with 0 the broker drops the session, and "
            "the messages queued for it, whenever the agent disconnects",
        )
    if mqtt.reconnect_min <= 0 or mqtt.reconnect_max < mqtt.reconnect_min:
        table.problem("reconnect_max", "needs 0 < reconnect_min <= reconnect_max")
    table.finish()
    return mqtt


def _check_tls_files(table: Table, tls: TlsConfig) -> None:
    """Load the files now, so that a bad certificate is a config error, not a crash loop."""
    missing = False
    for name, value in (
        ("ca_file", tls.ca_file),
        ("cert_file", tls.cert_file),
        ("key_file", tls.key_file),
    ):
        if value is not None and not value.is_file():
            table.problem(name, f"file not found: {value}")
            missing = True
    if missing:
        return
    context = ssl.create_default_context()
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (ssl.SSLError, OSError) as err:
            table.problem("ca_file", f"not a usable CA certificate file: {err}")
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (ssl.SSLError, OSError) as err:
            table.problem("cert_file", f"certificate and key do not load together: {err}")


def read_subscription(
    table: Table, agent: AgentConfig, sinks: Mapping[str, SinkConfig]
) -> Subscription:
    read = read_section(Subscription, table)
    template = PartitionKeyTemplate.compile(read.partition_key.source, agent.device_name)
    if not read.sinks:
        table.problem("sinks", "name at least one sink from [sinks]")
    for target in read.sinks:
        if target not in sinks:
            table.problem("sinks", f"no sink named {target!r} in [sinks]")
    table.finish()
    return Subscription(read.topic, read.qos, read.sinks, template)
