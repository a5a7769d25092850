"""The paho-mqtt client of the MQTT source: a persistent session (MQTT 3.1.1 clean
session off, or MQTT 5 clean start off), manual acks (sent after the commit), the
credentials and TLS of ``[mqtt]``, and paho's reconnect backoff."""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.config.mqtt import MqttConfig


def paho_client(config: MqttConfig) -> mqtt.Client:
    """A client set up from ``config``, without callbacks."""
    v5 = config.protocol == "5"
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=config.client_id,
        clean_session=None if v5 else False,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        manual_ack=True,
    )
    if config.username is not None:
        client.username_pw_set(config.username, config.password)
    if config.tls is not None:
        client.tls_set(
            ca_certs=str(config.tls.ca_file) if config.tls.ca_file else None,
            certfile=str(config.tls.cert_file) if config.tls.cert_file else None,
            keyfile=str(config.tls.key_file) if config.tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(config.tls.insecure)
    client.reconnect_delay_set(
        max(1, round(config.reconnect_min)), max(1, round(config.reconnect_max))
    )
    paho_log = logging.getLogger("edge_agent.sources.mqtt.paho")
    if paho_log.isEnabledFor(logging.DEBUG):
        client.enable_logger(paho_log)  # a log call per packet: only when asked for
    return client
