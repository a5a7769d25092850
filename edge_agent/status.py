"""``edge-agent status``: what the spool holds and what the running agent reports.

Reads the spool read-only (safe while the agent runs) and the runtime status file the
agent rewrites every ``agent.status_interval``. Works when the agent is stopped too: the
spool part is always current, the runtime part is then marked stale.
"""

from __future__ import annotations

import os
import time
from typing import NotRequired, TypedDict, cast

from edge_agent import runtime_status
from edge_agent.config.loading import Config
from edge_agent.config.units import plural
from edge_agent.errors import SpoolError
from edge_agent.spool.stats import QueueStats, SpoolEvent
from edge_agent.spool.store import Spool

#: A status file older than this many status intervals means the agent is not running.
STALE_INTERVALS = 5


class AgentState(runtime_status.RuntimeStatus, total=False):
    """The runtime status file as ``status`` shows it: ``running`` corrected for a dead
    process or a stale file, and how old the file is."""

    status_age_s: float


class AgentAbsent(TypedDict):
    """No status file to read."""

    running: bool
    detail: str


class QueueView(QueueStats):
    """A queue's counters from the spool, with what status adds."""

    oldest_age_s: float | None
    max_bytes: int | None
    overflow: str | None


class SpoolView(TypedDict):
    path: str
    file_bytes: int
    schema_version: int
    pending_count: int
    pending_bytes: int
    max_bytes: int | None
    queues: list[QueueView]
    events: list[SpoolEvent]


class SpoolUnreadable(TypedDict):
    path: str
    error: str


class Status(TypedDict):
    """What ``edge-agent status --json`` prints."""

    config: str
    agent: AgentState | AgentAbsent
    spool: NotRequired[SpoolView | SpoolUnreadable]


def _running(agent: AgentState | AgentAbsent) -> AgentState | None:
    """The agent's runtime status if it is running, else None."""
    return cast(AgentState, agent) if agent.get("running") else None


def collect_status(config: Config) -> Status:
    result: Status = {"config": config.source_file, "agent": _agent_state(config)}
    try:
        with Spool.open_read_only(config.spool.path) as spool:
            stats = spool.stats(events=10)
    except SpoolError as err:
        result["spool"] = {"path": str(config.spool.path), "error": str(err)}
        return result
    now_ms = int(time.time() * 1000)
    # Leases live in the agent's memory: what each sink holds is in its status.
    running = _running(result["agent"])
    sinks = running.get("sinks", {}) if running else {}
    queues: list[QueueView] = []
    for queue in stats.queues:
        sink = config.sinks.get(queue["name"])
        oldest = queue["oldest_captured_at_ms"]
        queues.append(
            {
                **queue,
                "leased_count": _in_window(sinks.get(queue["name"])),
                "oldest_age_s": None if oldest is None else max(0.0, (now_ms - oldest) / 1000),
                "max_bytes": sink.max_bytes if sink else None,
                "overflow": sink.overflow if sink else None,
            }
        )
    result["spool"] = {
        "path": stats.path,
        "file_bytes": stats.file_bytes,
        "schema_version": stats.schema_version,
        "pending_count": stats.pending_count,
        "pending_bytes": stats.pending_bytes,
        "max_bytes": config.spool.max_bytes,
        "queues": queues,
        "events": stats.events,
    }
    return result


def _in_window(sink: runtime_status.SinkSnapshot | None) -> int:
    """What an uploader holds leased (its window; 0 for a sink that could not start)."""
    if sink is None or sink["state"] == "failed":
        return 0
    return cast(runtime_status.UploaderSnapshot, sink)["in_window"]


def _agent_state(config: Config) -> AgentState | AgentAbsent:
    path = runtime_status.status_path(config.spool.path, config.agent.status_dir)
    try:
        data = cast(AgentState, runtime_status.read(path))
    except (OSError, ValueError):
        return {"running": False, "detail": "no status file: the agent has not run here yet"}
    age = time.time() - float(data.get("updated_at", 0))
    alive = bool(data.get("running")) and _pid_alive(int(data.get("pid", 0)))
    stale = age > STALE_INTERVALS * config.agent.status_interval
    data["running"] = alive and not stale
    data["status_age_s"] = round(age, 1)
    return data


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------- rendering


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def human_rate(bytes_per_s: float) -> str:
    """A rate in the units the config gives it (``max_rate = "2Mbit/s"``): bits per
    second, to three digits: '2 Mbit/s', '244 kbit/s', '0 bit/s'. (``--json`` keeps every
    rate in bytes per second: ``bytes_per_s``, ``max_rate``; see runtime_status.py.)"""
    bits = float(f"{bytes_per_s * 8:.3g}")  # rounded first: 999.96 kbit/s is 1 Mbit/s
    for unit, factor in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if abs(bits) >= factor:
            return f"{bits / factor:g} {unit}"
    return f"{bits:g} bit/s"


def human_duration(seconds: float | None) -> str:
    """'45s', '12m05s', '3h07m', '2d04h'."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    for big, big_len, small, small_len in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if whole >= big_len:
            return f"{whole // big_len}{big}{(whole % big_len) // small_len:02d}{small}"
    return f"{whole}s"


def _clock_time(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def render_sink(name: str, snapshot: runtime_status.SinkSnapshot) -> list[str]:
    if snapshot["state"] == "failed":
        return [f"sink {name}: not forwarding, it could not start ({snapshot['reason']})"]
    reason = snapshot.get("reason") or ""
    if snapshot["state"] == "idle" and snapshot.get("online") is None:
        # Nothing sent and nothing to send: plain "idle" would read as connected.
        reason = "not connected yet: nothing sent so far"
    state = snapshot["state"] + (f" ({reason})" if reason else "")
    if snapshot.get("type") == "kvs":
        return _render_kvs(name, cast(runtime_status.KvsSnapshot, snapshot), state)
    sink = cast(runtime_status.ForwarderSnapshot, snapshot)
    lines = [
        f"sink {name} -> {sink['type']} {sink['target']}: {state} since "
        f"{_clock_time(sink['since'])}",
        f"  sent {plural(sink['records_sent'], 'record')} ({human_bytes(sink['bytes_sent'])}) "
        f"in {plural(sink['requests'], 'request')}, now {sink['records_per_s']:.0f} records/s "
        f"({human_rate(sink['bytes_per_s'])}); retries {sink['retries']}, "
        f"request errors {sink['request_errors']}, dead-lettered {sink['dead_lettered']}",
    ]
    if sink.get("last_error"):
        at = sink.get("last_error_at")
        lines.append(f"  last error{f' at {_clock_time(at)}' if at else ''}: {sink['last_error']}")
    if "request_timeout" in sink:
        lines += render_timeout("request", sink["request_timeout"], "record")
    for shard, info in sorted(sink.get("shards", {}).items()):
        details = []
        if "last_sequence_number" in info:
            details.append(f"last sequence number {info['last_sequence_number']}")
        if "pace" in info:
            details.append(
                f"paced at {info['pace']:.0%} after {plural(info['throttled'], 'throttle')}"
            )
        lines.append(f"  {shard}: " + ", ".join(details))
    return lines


def render_link(
    sink: runtime_status.UploaderSnapshot, queue: QueueView | None, budget: float | None
) -> str:
    """Reachability since when, the sink's backlog, and how long it takes to drain."""
    online, since = sink.get("online"), sink.get("link_since")
    if online is None:
        link = "no request answered yet"
    else:
        when = (
            f" since {_clock_time(since)} ({human_duration(time.time() - since)})" if since else ""
        )
        link = f"{'online' if online else 'OFFLINE'}{when}"
    upload = sink.get("upload")
    if upload:
        link += f"; upload priority {upload['priority']}"
        if cap := upload.get("max_rate"):
            link += f", cap {human_rate(cap)}"
        if scheduled := upload.get("scheduled"):
            link += f", {scheduled}"
    if queue is None or not queue["pending_count"]:
        return f"  {link}; no backlog"
    backlog_bytes = int(queue["pending_bytes"])
    backlog = (
        f"backlog {plural(queue['pending_count'], 'record')} ({human_bytes(backlog_bytes)}), "
        f"oldest {human_duration(queue['oldest_age_s'])}"
    )
    rate = float(sink.get("bytes_per_s") or 0)
    if online is None:
        drain = "drains once connected"
    elif not online:
        drain = "drains once the link is back"
    elif budget:
        eta = human_duration(backlog_bytes / budget)
        drain = f"drains in ~{eta} at the {human_rate(budget)} budget"
    elif rate > 0:
        drain = f"drains in ~{human_duration(backlog_bytes / rate)} at the current rate"
    else:
        drain = "drain time unknown until it sends"
    return f"  {link}; {backlog}; {drain}"


def render_status(status: Status) -> str:
    lines: list[str] = []
    agent = _running(status["agent"])
    if agent is not None:
        up = time.time() - float(agent.get("started_at", time.time()))
        lines.append(
            f"edge-agent {agent.get('version', '?')}: running (pid {agent['pid']}, "
            f"up {human_duration(up)}, status {agent['status_age_s']}s old)"
        )
        clock = agent.get("clock")
        if clock is not None and clock["state"] == "unsynchronized":
            lines.append(
                f"CLOCK NOT SYNCHRONIZED since {_clock_time(clock['since'])}: "
                f"{plural(clock['marked'], 'record')} marked so far"
            )
        elif clock is not None and clock["marked"]:
            lines.append(f"clock: synchronized; {plural(clock['marked'], 'record')} marked before")
        if "reload" in agent:
            reload = agent["reload"]
            lines.append(
                f"last reload {_clock_time(reload['at'])}: {reload['outcome']}: {reload['message']}"
            )
    else:
        detail = cast(AgentAbsent, status["agent"]).get("detail", "last status is stale")
        lines.append(f"edge-agent: not running ({detail})")
    if "error" in status["spool"]:
        unreadable = cast(SpoolUnreadable, status["spool"])
        lines.append(f"spool {unreadable['path']}: {unreadable['error']}")
        return "\n".join(lines)
    spool = status["spool"]
    cap = f" of {human_bytes(spool['max_bytes'])} cap" if spool["max_bytes"] else ""
    lines.append(
        f"spool {spool['path']}: file {human_bytes(spool['file_bytes'])}, "
        f"{spool['pending_count']} pending ({human_bytes(spool['pending_bytes'])}{cap}), "
        f"schema v{spool['schema_version']}"
    )
    header = (
        "QUEUE",
        "PENDING",
        "BYTES",
        "OF CAP",
        "OLDEST",
        "LEASED",
        "ACKED",
        "DEAD",
        "DROPPED",
        "REJECTED",
        "REDELIVERED",
        "RESENT",
    )
    rows = [header]
    for queue in spool["queues"]:
        rows.append(
            (
                queue["name"],
                str(queue["pending_count"]),
                human_bytes(queue["pending_bytes"]),
                f"{queue['pending_bytes'] / queue['max_bytes']:.0%}" if queue["max_bytes"] else "-",
                human_duration(queue["oldest_age_s"]),
                str(queue["leased_count"]),
                str(queue["acked_count"]),
                str(queue["dead_letters"]),
                str(queue["dropped_count"] + queue["expired_count"]),
                str(queue["rejected_count"]),
                str(queue["redelivered_count"]),
                str(queue.get("resent_after_restart_count", 0)),
            )
        )
    if agent is not None and "storage" in agent:
        lines += render_storage(agent["storage"])
    if len(rows) > 1:
        widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
        for row in rows:
            lines.append(
                "  "
                + "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )
    else:
        lines.append("  (no queues yet)")
    if agent is not None:
        lines += _render_workers(agent, {queue["name"]: queue for queue in spool["queues"]})
    if spool["events"]:
        lines.append("recent events:")
        for event in spool["events"]:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["at_ms"] / 1000))
            lines.append(f"  {stamp} {event['level']:<7} {event['kind']}: {event['message']}")
    return "\n".join(lines)


def render_storage(storage: runtime_status.StorageSnapshot) -> list[str]:
    """The spool's filesystem: room, reserve, ballast; a paused intake or a lost file
    stand out."""
    lines = []
    free = storage["free_bytes"]
    if free is not None:
        ballast = storage["ballast_bytes"]
        lines.append(
            f"storage: {human_bytes(free)} free of {human_bytes(storage['filesystem_bytes'] or 0)}"
            f", {human_bytes(storage['free_pages_bytes'] or 0)} free inside the spool"
            f", reserve {human_bytes(storage['reserve_bytes'])}"
            + (f" (ballast {human_bytes(ballast)})" if ballast else "")
        )
    if storage["intake_paused"]:
        since = storage["paused_since"]
        lines.append(
            f"  INTAKE PAUSED: disk, since {_clock_time(since) if since else '?'}: "
            f"{storage['intake_paused']}"
        )
    if storage["file_lost"]:
        lines.append(f"  SPOOL FILE LOST: {storage['file_lost']}")
    counts = [
        (storage["pauses"], "intake pauses"),
        (storage.get("disk_full_errors", 0), "writes refused by a full disk"),
        (storage["ballast_releases"], "ballast releases"),
        (storage["file_rebuilds"], "spool file rebuilds"),
    ]
    happened = ", ".join(f"{label} {count}" for count, label in counts if count)
    if happened:
        lines.append(f"  since start: {happened}")
    return lines


def _render_workers(agent: AgentState, queues: dict[str, QueueView]) -> list[str]:
    """The running agent's sources, cameras and sinks."""
    lines: list[str] = []
    # .get: a file written by another version of the agent may lack a part.
    for name, source in agent.get("sources", {}).items():
        lost = source.get("sessions_lost", 0)  # sessions the broker lost: messages, too
        lines.append(
            f"{name}: {source['state']} since {_clock_time(source['since'])}"
            f" ({source.get('broker', '')}), received {source['received']}, committed "
            f"{source['committed']}, acked {source['acked']}, redelivered {source['redelivered']}"
            + (f", sessions lost {lost}" if lost else "")
        )
        if source.get("last_error"):
            lines.append(f"  last error: {source['last_error']}")
    for name, camera in agent.get("cameras", {}).items():
        lines += render_camera(name, camera)
    for name, query in agent.get("analytics", {}).items():
        lines += render_query(name, query)
    budget = agent.get("uplink", {}).get("max_rate")
    for name, sink in agent.get("sinks", {}).items():
        lines += render_sink(name, sink)
        if sink["state"] != "failed":
            uploader = cast(runtime_status.UploaderSnapshot, sink)
            lines.append(render_link(uploader, queues.get(name), budget))
    return lines


def render_query(name: str, query: runtime_status.AnalyticsSnapshot) -> list[str]:
    """One analytics query: what it emitted, late readings, how long it runs."""
    last = query["last_emit_ms"]
    emitted = f", last at {_clock_time(last / 1000)}" if last is not None else ""
    lines = [
        f"analytics {name} ({query['window']}): {plural(query['emitted'], 'window')} emitted"
        f"{emitted}, {plural(query['rows_out'], 'row')} out, "
        f"{plural(query['late'], 'late reading')} ({plural(query['revisions'], 'revision')}); "
        f"query ran {query['run_seconds']:.3f}s "
        f"(at most {query['max_run_seconds']:.3f}s)"
    ]
    gone = {"windows skipped": query.get("skipped", 0), "untimed": query.get("untimed", 0)}
    if any(gone.values()):
        lines.append("  " + ", ".join(f"{what} {count}" for what, count in gone.items()))
    if query["last_error"]:
        at = query["last_error_at"]
        lines.append(
            f"  FAILING ({plural(query['failures'], 'time')})"
            f"{f' last at {_clock_time(at)}' if at else ''}: {query['last_error']}"
        )
    return lines


def _render_kvs(name: str, sink: runtime_status.KvsSnapshot, state: str) -> list[str]:
    latency = sink.get("last_ack_latency_s")
    captured = sink.get("capture_latency_s")
    lines = [
        f"sink {name} -> kvs {sink['target']}: {state} since {_clock_time(sink['since'])}",
        f"  fragments sent {sink['fragments_sent']} ({human_bytes(sink['bytes_sent'])}), "
        f"acknowledged {sink['fragments_acked']}, resent {sink['resent']}, dead-lettered "
        f"{sink['dead_lettered']} (out of order {sink['out_of_order']}); connections "
        f"{sink['connections']}; now {human_rate(sink.get('bytes_per_s') or 0)}; "
        f"ack latency {'-' if latency is None else f'{latency:.2f}s'}; "
        f"last fragment {sink.get('last_fragment_number') or '-'}",
    ]
    if captured:
        lines.append(
            f"  capture to acknowledgement: median {captured['p50']:.2f}s, "
            f"max {captured['max']:.2f}s (last 100 fragments)"
        )
    newest_acked_ms = sink.get("newest_acked_ms")
    if newest_acked_ms:
        behind = max(0.0, time.time() - newest_acked_ms / 1000)
        lines.append(f"  newest fragment acknowledged: captured {human_duration(behind)} ago")
    if sink.get("replay") == "live-first":
        lines.append(
            f"  live first: {plural(sink['live_sessions'], 'live session')} and "
            f"{plural(sink['backlog_sessions'], 'backlog session')}, "
            f"{plural(sink['backlog_sent'], 'fragment')} sent behind live video"
        )
    if sink.get("last_error"):
        lines.append(f"  last error: {sink['last_error']}")
    if "ack_timeout" in sink:
        lines += render_timeout("acknowledgement", sink["ack_timeout"], "fragment")
    return lines


def render_timeout(what: str, timeout: runtime_status.TimeoutSnapshot, item: str) -> list[str]:
    """A sink's adaptive timeout, once it had to wait longer than configured (``item``:
    what its requests carry, "record" or "fragment")."""
    if not timeout["timeouts"]:
        return []
    return [
        f"  {what} timeout now {timeout['current_s']:g}s (up to {timeout['peak_s']:g}s): "
        f"{timeout['timeouts']} timed out, carrying {plural(timeout['timed_out_items'], item)} "
        "that may have arrived twice"
    ]


def render_camera(name: str, camera: runtime_status.CameraSnapshot) -> list[str]:
    keyframe = camera.get("last_keyframe_at")
    lines = [
        f"camera {name} ({camera.get('url', '')}): {camera['state']} since "
        f"{_clock_time(camera['since'])}"
        + (f" ({camera['reason']})" if camera.get("reason") else ""),
        f"  {camera.get('mode') or '-'}: {plural(camera['frames'], 'frame')}, "
        f"{plural(camera['fragments'], 'fragment')} ({human_bytes(camera['bytes'])}), "
        f"last keyframe {_clock_time(keyframe) if keyframe else '-'}, "
        f"reconnects {camera['reconnects']}, frames dropped {camera['dropped_frames']}, "
        f"times repaired {camera['repaired_times']}"
        + (f", RTP packets lost {camera['lost_packets']}" if camera.get("lost_packets") else "")
        + (
            f", fragments not stored (disk) {camera.get('unstored_fragments')}"
            if camera.get("unstored_fragments")
            else ""
        )
        + (", sends B-frames: encoded without them" if camera.get("b_frames") else "")
        + (f", jumps in its times {camera['time_jumps']}" if camera.get("time_jumps") else ""),
    ]
    if camera.get("audio", "off") != "off":
        lines.append(
            f"  audio: {camera.get('audio')}, {plural(camera.get('audio_frames', 0), 'frame')}, "
            f"dropped {camera.get('dropped_audio', 0)}"
        )
    events = camera.get("events") or {}
    if events.get("ring_fragments") or events.get("upload", "continuous") != "continuous":
        ring = plural(events.get("ring_fragments", 0), "fragment")
        lines.append(
            f"  upload {events.get('upload')}: ring {ring}"
            f" ({human_bytes(events.get('ring_bytes', 0))}), queued for events "
            f"{events.get('queued_for_events', 0)}, not uploaded {events.get('not_uploaded', 0)}"
        )
    if "motion_samples" in events or events.get("snapshots"):
        lines.append(
            f"  motion: {events.get('motion_events', 0)} events in "
            f"{plural(events.get('motion_samples', 0), 'picture')}; snapshots "
            f"{events.get('snapshots', 0)}"
        )
    if camera.get("last_error"):
        lines.append(f"  last error: {camera['last_error']}")
    return lines
