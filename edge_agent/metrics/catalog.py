"""Every metric the endpoint serves, declared once: its name, its help text, and the
status keys it reads (docs/METRICS.md lists the same, and a test keeps the two equal).

A name ending in ``_total`` is a counter, any other a gauge; a name ending in ``_bytes``
or ``_seconds`` carries that unit. The few metrics made otherwise (states, flags, info,
ages) are in collector.py, beside the code that derives them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    """One metric: its name, its help text, and the status keys it reads (the first one
    a part has; ``a.b`` reads key ``b`` of the mapping at ``a``)."""

    name: str
    doc: str
    keys: tuple[str, ...]

    @property
    def unit(self) -> str:
        base = self.name.removesuffix("_total")
        return next((unit for unit in ("bytes", "seconds") if base.endswith("_" + unit)), "")


def spec(name: str, doc: str, *keys: str) -> Spec:
    return Spec(name, doc, keys)


#: The MQTT source (runtime_status.MqttSnapshot); no labels: the agent has one.
MQTT = (
    spec(
        "edge_agent_mqtt_received_messages_total", "Messages received from the broker.", "received"
    ),
    spec(
        "edge_agent_mqtt_committed_messages_total", "Messages committed to the spool.", "committed"
    ),
    spec(
        "edge_agent_mqtt_acked_messages_total",
        "QoS 1 messages acknowledged to the broker (after their commit).",
        "acked",
    ),
    spec(
        "edge_agent_mqtt_redelivered_messages_total",
        "Messages the broker sent again (DUP set): possible duplicates.",
        "redelivered",
    ),
    spec(
        "edge_agent_mqtt_unrouted_messages_total",
        "Messages that matched no subscription's sinks.",
        "unrouted",
    ),
    spec(
        "edge_agent_mqtt_dropped_qos0_messages_total",
        "QoS 0 messages dropped because the inbox was full.",
        "dropped_qos0",
    ),
    spec("edge_agent_mqtt_connects_total", "Connections made to the broker.", "connects"),
    spec(
        "edge_agent_mqtt_sessions_lost_total",
        "Reconnects that found the broker had lost the agent's session (and its queue).",
        "sessions_lost",
    ),
    spec("edge_agent_mqtt_commit_batches_total", "Commits of received messages.", "commit_batches"),
    spec(
        "edge_agent_mqtt_backpressure_waits_total",
        "Times intake paused reading from the broker until the spool caught up.",
        "backpressure_waits",
    ),
    spec("edge_agent_mqtt_inbox_messages", "Messages received and not committed yet.", "inbox"),
)

#: Per queue (label ``queue``; a queue is named for its sink): spool.stats.QueueStats.
QUEUES = (
    spec("edge_agent_queue_pending_records", "Records waiting for delivery.", "pending_count"),
    spec("edge_agent_queue_pending_bytes", "Bytes waiting for delivery.", "pending_bytes"),
    spec("edge_agent_queue_acked_records_total", "Records delivered (and deleted).", "acked_count"),
    spec("edge_agent_queue_acked_bytes_total", "Bytes delivered.", "acked_bytes"),
    spec(
        "edge_agent_queue_retried_records_total",
        "Records handed back for a later retry.",
        "retried_count",
    ),
    spec(
        "edge_agent_queue_dead_lettered_records_total",
        "Records moved to the dead letters (refused, or too large).",
        "dead_count",
    ),
    spec("edge_agent_queue_dead_letters", "Dead letters held now.", "dead_letters"),
    spec(
        "edge_agent_queue_dropped_records_total", "Records dropped by a byte cap.", "dropped_count"
    ),
    spec("edge_agent_queue_dropped_bytes_total", "Bytes dropped by a byte cap.", "dropped_bytes"),
    spec(
        "edge_agent_queue_expired_records_total", "Records dropped by an age cap.", "expired_count"
    ),
    spec(
        "edge_agent_queue_rejected_records_total",
        "Records refused at intake (reject_new cap).",
        "rejected_count",
    ),
    spec("edge_agent_queue_rejected_bytes_total", "Bytes refused at intake.", "rejected_bytes"),
    spec(
        "edge_agent_queue_redelivered_records_total",
        "Records stored again from a broker's redelivery: possible duplicates.",
        "redelivered_count",
    ),
    spec(
        "edge_agent_queue_resent_records_total",
        "Records sent again after a restart found them sent but unconfirmed.",
        "resent_after_restart_count",
    ),
)

#: The spool's filesystem and file (runtime_status.StorageSnapshot).
STORAGE = (
    spec(
        "edge_agent_spool_filesystem_free_bytes",
        "Free space on the spool's filesystem (for the agent's user).",
        "free_bytes",
    ),
    spec(
        "edge_agent_spool_filesystem_size_bytes",
        "Size of the spool's filesystem.",
        "filesystem_bytes",
    ),
    spec(
        "edge_agent_spool_free_pages_bytes",
        "Free pages inside the spool file, reused first.",
        "free_pages_bytes",
    ),
    spec(
        "edge_agent_spool_reserve_bytes",
        "Free space intake leaves on the filesystem.",
        "reserve_bytes",
    ),
    spec(
        "edge_agent_spool_ballast_bytes",
        "The ballast file held for deletes on a full disk.",
        "ballast_bytes",
    ),
    spec("edge_agent_spool_intake_pauses_total", "Times intake paused for want of room.", "pauses"),
    spec(
        "edge_agent_spool_disk_full_errors_total",
        "Writes SQLite refused for want of room.",
        "disk_full_errors",
    ),
    spec(
        "edge_agent_spool_ballast_releases_total",
        "Times the ballast was given back.",
        "ballast_releases",
    ),
    spec(
        "edge_agent_spool_file_rebuilds_total",
        "Times the spool file was found gone or replaced and rebuilt.",
        "file_rebuilds",
    ),
)

#: Per sink (label ``sink``): ForwarderSnapshot or KvsSnapshot, with the upload share.
SINKS = (
    spec(
        "edge_agent_sink_link_up",
        "1 while the sink's endpoint answers, 0 while it does not (absent: not tried yet).",
        "online",
    ),
    spec(
        "edge_agent_sink_sent_records_total",
        "Records (Kinesis Video: fragments) sent; retries included.",
        "records_sent",
        "fragments_sent",
    ),
    spec("edge_agent_sink_sent_bytes_total", "Payload bytes sent.", "bytes_sent"),
    spec(
        "edge_agent_sink_sent_entries_total",
        "Entries of requests the service accepted (an aggregate is one).",
        "entries_sent",
    ),
    spec("edge_agent_sink_requests_total", "Requests sent (Kinesis, Firehose).", "requests"),
    spec(
        "edge_agent_sink_connections_total",
        "PutMedia connections opened (Kinesis Video).",
        "connections",
    ),
    spec(
        "edge_agent_sink_retried_records_total",
        "Records the service failed one by one, retried (Kinesis Video: fragments sent again).",
        "retries",
        "resent",
    ),
    spec(
        "edge_agent_sink_request_errors_total",
        "Requests that failed as a whole (throttled, 5xx, network, refused).",
        "request_errors",
    ),
    spec(
        "edge_agent_sink_in_flight_records",
        "Records leased by the sink: on the wire or about to be.",
        "in_window",
    ),
    spec(
        "edge_agent_sink_wire_bytes_total",
        "Bytes of the requests on the wire, headers included (Kinesis).",
        "wire_bytes",
    ),
    spec(
        "edge_agent_sink_timeout_seconds",
        "The request (Kinesis Video: acknowledgement) timeout now; it adapts.",
        "request_timeout.current_s",
        "ack_timeout.current_s",
    ),
    spec(
        "edge_agent_sink_timeouts_total",
        "Requests (acknowledgements) that timed out.",
        "request_timeout.timeouts",
        "ack_timeout.timeouts",
    ),
    spec(
        "edge_agent_sink_timed_out_records_total",
        "Records the timed-out requests carried: possible duplicates.",
        "request_timeout.timed_out_items",
        "ack_timeout.timed_out_items",
    ),
    spec(
        "edge_agent_sink_ack_latency_seconds",
        "From a fragment's last byte sent to its acknowledgement (Kinesis Video, last one).",
        "last_ack_latency_s",
    ),
    spec(
        "edge_agent_sink_upload_priority",
        "The sink's priority for the upload budget (smaller goes first).",
        "upload.priority",
    ),
    spec(
        "edge_agent_sink_upload_max_bytes_per_second",
        "The sink's own cap on its uploads (absent: none).",
        "upload.max_rate",
    ),
    spec(
        "edge_agent_sink_upload_paused",
        "1 while a schedule window pauses the sink's uploads.",
        "upload.paused",
    ),
    spec(
        "edge_agent_sink_upload_admitted_bytes_total",
        "Bytes the upload budget let the sink put on the wire.",
        "upload.admitted_bytes",
    ),
)

#: Per camera (label ``camera``): runtime_status.CameraSnapshot.
CAMERAS = (
    spec("edge_agent_camera_frames_total", "Video frames read.", "frames"),
    spec("edge_agent_camera_fragments_total", "Fragments cut and spooled.", "fragments"),
    spec("edge_agent_camera_captured_bytes_total", "Bytes of the fragments spooled.", "bytes"),
    spec("edge_agent_camera_connects_total", "Connections to the camera.", "connects"),
    spec(
        "edge_agent_camera_reconnects_total", "Reconnects after a failure or a stall.", "reconnects"
    ),
    spec(
        "edge_agent_camera_repaired_timestamps_total",
        "Frame times moved forward because they did not increase.",
        "repaired_times",
    ),
    spec(
        "edge_agent_camera_time_jumps_total",
        "Jumps in the camera's own times, joined.",
        "time_jumps",
    ),
    spec(
        "edge_agent_camera_dropped_frames_total",
        "Frames dropped (unreadable, before a keyframe).",
        "dropped_frames",
    ),
    spec(
        "edge_agent_camera_lost_packets_total",
        "RTP packets lost (built-in RTSP client).",
        "lost_packets",
    ),
    spec(
        "edge_agent_camera_unstored_fragments_total",
        "Fragments a paused intake (full disk) refused.",
        "unstored_fragments",
    ),
    spec("edge_agent_camera_audio_frames_total", "Audio frames taken.", "audio_frames"),
    spec("edge_agent_camera_dropped_audio_frames_total", "Audio frames dropped.", "dropped_audio"),
    spec(
        "edge_agent_camera_last_keyframe_timestamp_seconds",
        "When the last keyframe arrived (Unix time).",
        "last_keyframe_at",
    ),
)
