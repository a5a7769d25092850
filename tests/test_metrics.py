"""The Prometheus endpoint: metrics made at scrape time from the runtime status and the
spool's counters, served over HTTP in both exposition formats, documented one by one."""

from __future__ import annotations

import contextlib
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from edge_agent import __version__
from edge_agent.config.loading import parse_config
from edge_agent.config.metrics import Listen
from edge_agent.errors import ConfigError, MetricsUnavailable
from edge_agent.metrics.collector import AgentCollector
from edge_agent.metrics.endpoint import MetricsEndpoint
from edge_agent.runtime_status import (
    ForwarderSnapshot,
    KvsSnapshot,
    RuntimeStatus,
    ShareSnapshot,
    TimeoutSnapshot,
)
from edge_agent.spool.stats import QueueStats, SpoolStats
from tests.kinesis_streams import make_stream
from tests.support import (
    REPO,
    AgentProcess,
    Kinesalite,
    Mosquitto,
    free_port,
    run_publisher,
    start_agent,
    wait_until,
    write_config,
)

NOW = 1_700_000_100.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _queue(name: str, **counts: int | None) -> QueueStats:
    queue: QueueStats = {
        "name": name,
        "pending_count": 0,
        "pending_bytes": 0,
        "leased_count": 0,
        "oldest_captured_at_ms": None,
        "acked_count": 0,
        "acked_bytes": 0,
        "retried_count": 0,
        "dropped_count": 0,
        "dropped_bytes": 0,
        "expired_count": 0,
        "rejected_count": 0,
        "rejected_bytes": 0,
        "dead_count": 0,
        "dead_letters": 0,
        "redelivered_count": 0,
        "resent_after_restart_count": 0,
    }
    queue.update(counts)  # type: ignore[typeddict-item]
    return queue


SPOOL = SpoolStats(
    path="/var/lib/edge-agent/spool.db",
    file_bytes=1_048_576,
    schema_version=4,
    queues=[
        _queue(
            "telemetry",
            pending_count=12,
            pending_bytes=3400,
            oldest_captured_at_ms=int((NOW - 90) * 1000),
            acked_count=5000,
            acked_bytes=900_000,
            dropped_count=3,
            expired_count=4,
            rejected_count=5,
            dead_count=6,
            dead_letters=2,
        ),
        _queue("video"),
    ],
    events=[],
)


def _status() -> RuntimeStatus:
    """A status with every part the agent reports: MQTT, a Kinesis, a Kinesis Video and
    a failed sink, a camera, the spool's storage."""
    timeout: TimeoutSnapshot = {
        "current_s": 4.0,
        "peak_s": 8.0,
        "timeouts": 3,
        "timed_out_items": 1500,
    }
    share: ShareSnapshot = {
        "priority": 0,
        "max_rate": 125_000.0,
        "scheduled": "",
        "paused": False,
        "admitted_bytes": 777,
    }
    return {
        "pid": 42,
        "version": "9.9.9",
        "started_at": 1_700_000_000.0,
        "updated_at": NOW,
        "running": True,
        "sources": {
            "mqtt": {
                "state": "connected",
                "since": 1.0,
                "reason": "",
                "received": 5010,
                "committed": 5005,
                "acked": 5000,
                "redelivered": 7,
                "unrouted": 1,
                "dropped_qos0": 0,
                "connects": 2,
                "sessions_lost": 1,
                "last_error": None,
                "last_error_at": None,
                "commit_batches": 40,
                "max_batch": 500,
                "backpressure_waits": 0,
                "inbox": 5,
                "broker": "127.0.0.1:1883",
                "client_id": "edge",
            }
        },
        "uplink": {"max_rate": 250_000.0},
        "sinks": {
            "telemetry": ForwarderSnapshot(
                **{
                    "type": "kinesis",
                    "target": "readings",
                    "state": "backing off",
                    "reason": "ThrottlingException",
                    "since": 1.0,
                    "online": True,
                    "link_since": 1.0,
                    "requests": 11,
                    "records_sent": 5000,
                    "entries_sent": 4990,
                    "bytes_sent": 900_000,
                    "retries": 10,
                    "request_errors": 2,
                    "dead_lettered": 0,
                    "last_error": "",
                    "last_error_at": None,
                    "records_per_s": 0.0,
                    "bytes_per_s": 0.0,
                    "in_window": 12,
                    "shards": {"shardId-000000000001": {"pace": 0.5, "throttled": 9}},
                    "wire_bytes": 950_000,
                    "request_timeout": timeout,
                    "upload": share,
                }
            ),
            "video": KvsSnapshot(
                **{
                    "type": "kvs",
                    "target": "cam-stream",
                    "replay": "live-first",
                    "state": "sending live",
                    "reason": "",
                    "since": 1.0,
                    "online": None,
                    "link_since": None,
                    "connections": 3,
                    "fragments_sent": 20,
                    "fragments_acked": 19,
                    "bytes_sent": 2_000_000,
                    "resent": 1,
                    "dead_lettered": 0,
                    "out_of_order": 0,
                    "last_fragment_number": None,
                    "last_ack_latency_s": 0.25,
                    "capture_latency_s": None,
                    "newest_acked_ms": None,
                    "last_error": "",
                    "in_window": 2,
                    "live_sessions": 1,
                    "backlog_sessions": 0,
                    "backlog_sent": 0,
                    "bytes_per_s": 0.0,
                    "ack_timeout": timeout,
                    "upload": None,
                }
            ),
            "broken": {"state": "failed", "reason": "NoRegionError: no region"},
        },
        "cameras": {
            "door": {
                "state": "capturing",
                "reason": "",
                "since": 1.0,
                "url": "rtsp://cam/stream",
                "mode": "passthrough",
                "connects": 2,
                "reconnects": 1,
                "frames": 1500,
                "fragments": 25,
                "bytes": 2_500_000,
                "last_keyframe_at": 1_700_000_099.0,
                "dropped_frames": 4,
                "repaired_times": 6,
                "time_jumps": 0,
                "lost_packets": 3,
                "unstored_fragments": 0,
                "audio": "AAC 16000 Hz 1 ch",
                "audio_frames": 900,
                "dropped_audio": 2,
                "last_error": "",
            }
        },
        "storage": {
            "free_bytes": 5_000_000_000,
            "filesystem_bytes": 8_000_000_000,
            "free_pages_bytes": 4096,
            "reserve_bytes": 67_108_864,
            "ballast_bytes": 16_777_216,
            "intake_paused": None,
            "paused_since": None,
            "pauses": 1,
            "disk_full_errors": 0,
            "ballast_releases": 0,
            "file_rebuilds": 0,
            "file_lost": None,
        },
    }


def _samples(families: Iterable[Metric]) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
    }


def _scrape_text(status: RuntimeStatus, spool: SpoolStats | None) -> str:
    registry = CollectorRegistry()
    registry.register(AgentCollector(lambda: status, lambda: spool, clock=lambda: NOW))
    return generate_latest(registry).decode()


def _openmetrics(text: str) -> dict[str, Metric]:
    """OpenMetrics text parsed by prometheus-client's own parser, by family name."""
    parse = openmetrics_parser.text_string_to_metric_families
    return {family.name: family for family in parse(text)}  # type: ignore[no-untyped-call]


def _get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# ---------------------------------------------------------------------- the collector


def test_the_collector_maps_every_part_of_the_status_to_its_metrics() -> None:
    samples = _samples(text_string_to_metric_families(_scrape_text(_status(), SPOOL)))

    assert _get(samples, "edge_agent_build_info", version="9.9.9") == 1
    assert _get(samples, "edge_agent_start_time_seconds") == 1_700_000_000.0
    assert _get(samples, "edge_agent_uplink_max_bytes_per_second") == 250_000.0
    # MQTT
    assert _get(samples, "edge_agent_mqtt_connected") == 1
    assert _get(samples, "edge_agent_mqtt_received_messages_total") == 5010
    assert _get(samples, "edge_agent_mqtt_sessions_lost_total") == 1
    assert _get(samples, "edge_agent_mqtt_inbox_messages") == 5
    # queues, from the spool's counters
    queue = {"queue": "telemetry"}
    assert _get(samples, "edge_agent_queue_pending_records", **queue) == 12
    assert _get(samples, "edge_agent_queue_pending_bytes", **queue) == 3400
    assert _get(samples, "edge_agent_queue_oldest_record_age_seconds", **queue) == 90.0
    assert _get(samples, "edge_agent_queue_oldest_record_age_seconds", queue="video") == 0.0
    assert _get(samples, "edge_agent_queue_acked_records_total", **queue) == 5000
    assert _get(samples, "edge_agent_queue_dead_lettered_records_total", **queue) == 6
    assert _get(samples, "edge_agent_queue_dead_letters", **queue) == 2
    assert _get(samples, "edge_agent_queue_dropped_records_total", **queue) == 3
    assert _get(samples, "edge_agent_queue_expired_records_total", **queue) == 4
    assert _get(samples, "edge_agent_queue_rejected_records_total", **queue) == 5
    # the spool's file and filesystem
    assert _get(samples, "edge_agent_spool_file_bytes") == 1_048_576
    assert _get(samples, "edge_agent_spool_filesystem_free_bytes") == 5_000_000_000
    assert _get(samples, "edge_agent_spool_intake_paused") == 0
    assert _get(samples, "edge_agent_spool_intake_pauses_total") == 1
    # sinks: state, link, what went out, the budget share; both kinds under one name
    assert _get(samples, "edge_agent_sink_state", sink="telemetry", state="backing off") == 1
    assert _get(samples, "edge_agent_sink_state", sink="video", state="sending live") == 1
    assert _get(samples, "edge_agent_sink_state", sink="broken", state="failed") == 1
    assert (
        _get(samples, "edge_agent_sink_info", sink="telemetry", type="kinesis", target="readings")
        == 1
    )
    assert _get(samples, "edge_agent_sink_link_up", sink="telemetry") == 1
    assert _get(samples, "edge_agent_sink_sent_records_total", sink="telemetry") == 5000
    assert _get(samples, "edge_agent_sink_sent_records_total", sink="video") == 20
    assert _get(samples, "edge_agent_sink_retried_records_total", sink="telemetry") == 10
    assert _get(samples, "edge_agent_sink_retried_records_total", sink="video") == 1
    assert _get(samples, "edge_agent_sink_request_errors_total", sink="telemetry") == 2
    assert _get(samples, "edge_agent_sink_timeouts_total", sink="video") == 3
    assert _get(samples, "edge_agent_sink_timeout_seconds", sink="telemetry") == 4.0
    assert _get(samples, "edge_agent_sink_upload_max_bytes_per_second", sink="telemetry") == 125_000
    assert _get(samples, "edge_agent_sink_upload_admitted_bytes_total", sink="telemetry") == 777
    assert (
        _get(
            samples,
            "edge_agent_sink_shard_throttles_total",
            sink="telemetry",
            shard="shardId-000000000001",
        )
        == 9
    )
    # cameras
    camera = {"camera": "door"}
    assert _get(samples, "edge_agent_camera_state", state="capturing", **camera) == 1
    assert _get(samples, "edge_agent_camera_frames_total", **camera) == 1500
    assert _get(samples, "edge_agent_camera_fragments_total", **camera) == 25
    assert _get(samples, "edge_agent_camera_reconnects_total", **camera) == 1
    assert _get(samples, "edge_agent_camera_repaired_timestamps_total", **camera) == 6
    assert _get(samples, "edge_agent_camera_dropped_frames_total", **camera) == 4


def test_what_the_status_does_not_have_is_left_out_not_zero() -> None:
    status = _status()
    status["uplink"]["max_rate"] = None
    status["sources"] = {}
    status["cameras"] = {}
    samples = _samples(text_string_to_metric_families(_scrape_text(status, None)))
    names = {name for name, _ in samples}
    assert _get(samples, "edge_agent_sink_link_up", sink="video") is None  # not tried yet
    assert "edge_agent_uplink_max_bytes_per_second" not in names  # no budget
    assert not any(name.startswith("edge_agent_mqtt_") for name in names)
    assert not any(name.startswith("edge_agent_camera_") for name in names)
    # a spool that could not be read: no queue metrics, the rest still there
    assert not any(name.startswith("edge_agent_queue_") for name in names)
    assert _get(samples, "edge_agent_sink_sent_records_total", sink="telemetry") == 5000
    # a sink that could not start has its state and nothing else
    assert {name for name, labels in samples if ("sink", "broken") in labels} == {
        "edge_agent_sink_state"
    }


def test_every_metric_is_in_docs_metrics_md_and_the_doc_names_no_other() -> None:
    served = {
        name for name, _ in _samples(text_string_to_metric_families(_scrape_text(_status(), SPOOL)))
    }
    documented = set(re.findall(r"`(edge_agent_\w+)", (REPO / "docs" / "METRICS.md").read_text()))
    agent_metrics = {name for name in served if name.startswith("edge_agent_")}
    assert agent_metrics - documented == set()
    assert documented - agent_metrics == set()


def test_openmetrics_is_served_when_asked_for_with_units_and_types() -> None:
    with _serving(_status()) as port:
        text, content_type = _scrape(port, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    families = _openmetrics(text)
    assert families["edge_agent_build"].type == "info"
    assert families["edge_agent_queue_acked_records"].type == "counter"
    assert families["edge_agent_queue_pending_bytes"].unit == "bytes"
    assert families["edge_agent_queue_oldest_record_age_seconds"].unit == "seconds"
    assert "process_cpu_seconds_total" in text and "process_resident_memory_bytes" in text


def test_metrics_are_made_only_when_scraped() -> None:
    calls: list[float] = []

    def status() -> RuntimeStatus:
        calls.append(NOW)
        return _status()

    collector = AgentCollector(status, lambda: SPOOL, clock=lambda: NOW)
    endpoint = MetricsEndpoint(Listen("127.0.0.1", 0), collector)
    try:
        assert calls == []  # registering and starting made nothing
        for expected in (1, 2):
            text, content_type = _scrape(endpoint.port)
            assert content_type.startswith("text/plain")
            assert "edge_agent_mqtt_connected 1.0" in text
            assert len(calls) == expected
    finally:
        endpoint.stop()


# ---------------------------------------------------------------------- the endpoint


@contextlib.contextmanager
def _serving(status: RuntimeStatus) -> Iterator[int]:
    """A MetricsEndpoint on a free loopback port serving a fixed status: its port."""
    collector = AgentCollector(lambda: status, lambda: SPOOL, clock=lambda: NOW)
    endpoint = MetricsEndpoint(Listen("127.0.0.1", 0), collector)
    try:
        yield endpoint.port
    finally:
        endpoint.stop()


def _scrape(port: int, accept: str = "") -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read().decode(), str(answer.headers["Content-Type"])


def test_an_address_in_use_is_an_error_naming_it_and_stop_frees_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsUnavailable, match=rf"cannot listen on 127\.0\.0\.1:{port}: "):
            MetricsEndpoint(Listen("127.0.0.1", port), AgentCollector(_status, lambda: None))
    with _serving(_status()) as port:
        _scrape(port)
    with pytest.raises(urllib.error.URLError):
        _scrape(port)  # stopped: the port is closed


# ---------------------------------------------------------------------- configuration


def _metrics_config(**table: object) -> object:
    return parse_config({"metrics": table} if table else {}).metrics.listen


def test_listen_takes_host_and_port_or_off_and_is_off_by_default() -> None:
    assert _metrics_config() is None
    assert _metrics_config(listen="off") is None
    assert _metrics_config(listen="127.0.0.1:9464") == Listen("127.0.0.1", 9464)
    assert _metrics_config(listen="[::1]:9464") == Listen("::1", 9464)
    assert str(Listen("::1", 9464)) == "[::1]:9464"
    assert _metrics_config(listen="localhost:19464") == Listen("localhost", 19464)


@pytest.mark.parametrize("listen", ["9464", "127.0.0.1", "127.0.0.1:0", "host:70000", ":9464"])
def test_listen_without_a_host_and_port_is_a_config_error(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"metrics\.listen: "):
        _metrics_config(listen=listen)


# ---------------------------------------------------------------------- the running agent


def _kinesis_sink(kinesalite: Kinesalite, stream: str) -> str:
    return (
        f'[sinks.telemetry]\ntype = "kinesis"\nstream = "{stream}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{kinesalite.endpoint}"\nretry_max = "1s"\n'
    )


def _running_agent(
    tmp_path: Path, broker: Mosquitto, kinesalite: Kinesalite, agents: list[AgentProcess], port: int
) -> AgentProcess:
    stream = make_stream(kinesalite.client(), 2)
    sinks = _kinesis_sink(kinesalite, stream) + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    return start_agent(write_config(tmp_path, broker.port, sinks=sinks), agents)


def _scraped(port: int) -> Samples:
    text, _ = _scrape(port)
    return _samples(text_string_to_metric_families(text))


def test_a_scrape_of_the_running_agent_shows_what_it_delivered(
    tmp_path: Path, broker: Mosquitto, kinesalite: Kinesalite, agents: list[AgentProcess]
) -> None:
    port = free_port()
    agent = _running_agent(tmp_path, broker, kinesalite, agents, port)
    run_publisher(broker.port, 500)

    def delivered() -> bool:
        samples = _scraped(port)
        return _get(samples, "edge_agent_queue_acked_records_total", queue="telemetry") == 500

    wait_until(delivered, 60, 0.1, "500 records acked, as scraped")
    samples = _scraped(port)
    assert _get(samples, "edge_agent_build_info", version=__version__) == 1
    assert _get(samples, "edge_agent_mqtt_connected") == 1
    assert _get(samples, "edge_agent_mqtt_acked_messages_total") == 500
    assert _get(samples, "edge_agent_queue_pending_records", queue="telemetry") == 0
    assert _get(samples, "edge_agent_sink_sent_records_total", sink="telemetry") == 500
    assert _get(samples, "edge_agent_sink_link_up", sink="telemetry") == 1
    states = {dict(labels)["state"] for name, labels in samples if name == "edge_agent_sink_state"}
    assert states <= {"idle", "sending", "waiting to retry", "pacing"} and len(states) == 1
    assert (_get(samples, "process_resident_memory_bytes") or 0) > 0

    text, content_type = _scrape(port, "application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    families = _openmetrics(text)
    acked = families["edge_agent_queue_acked_records"]
    assert acked.type == "counter"
    assert [(s.labels, s.value) for s in acked.samples] == [({"queue": "telemetry"}, 500)]
    assert families["edge_agent_build"].samples[0].labels == {"version": __version__}

    assert agent.terminate() == 0
    with pytest.raises(urllib.error.URLError):
        _scrape(port)  # the endpoint stopped with the agent


def test_an_address_in_use_is_logged_and_the_agent_forwards_without_metrics(
    tmp_path: Path, broker: Mosquitto, kinesalite: Kinesalite, agents: list[AgentProcess]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = _running_agent(tmp_path, broker, kinesalite, agents, port)
        run_publisher(broker.port, 200)
        wait_until(
            lambda: agent.sink_status("telemetry").get("records_sent", 0) >= 200, 60, 0.05, "sent"
        )
    log = agent.log_text()
    assert f"metrics: cannot listen on 127.0.0.1:{port}: Address already in use" in log
    assert "running without the metrics endpoint" in log
    assert agent.terminate() == 0
