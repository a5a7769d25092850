"""What the MQTT intake counts, and the status snapshot of it."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.config.mqtt import MqttConfig
from edge_agent.runtime_status import MqttSnapshot
from edge_agent.worker import WorkerState


@dataclass
class MqttStatus(WorkerState):
    received: int = 0
    committed: int = 0
    acked: int = 0
    redelivered: int = 0
    unrouted: int = 0
    dropped_qos0: int = 0
    connects: int = 0
    #: Reconnects that found no session although this process had one: messages the
    #: broker held for the agent may be gone.
    sessions_lost: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    commit_batches: int = 0
    max_batch: int = 0
    backpressure_waits: int = 0


def snapshot_of(status: MqttStatus, inbox: int, config: MqttConfig) -> MqttSnapshot:
    return {
        "state": status.state,
        "reason": status.reason,
        "since": status.since,
        "received": status.received,
        "committed": status.committed,
        "acked": status.acked,
        "redelivered": status.redelivered,
        "unrouted": status.unrouted,
        "dropped_qos0": status.dropped_qos0,
        "connects": status.connects,
        "sessions_lost": status.sessions_lost,
        "last_error": status.last_error,
        "last_error_at": status.last_error_at,
        "commit_batches": status.commit_batches,
        "max_batch": status.max_batch,
        "backpressure_waits": status.backpressure_waits,
        "inbox": inbox,
        "broker": f"{config.host}:{config.port}",
        "client_id": config.client_id,
    }
