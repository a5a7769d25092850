"""The agent's lifecycle: build the spool and sources from config, run, stop cleanly.

``Agent.run()`` is the main loop of ``edge-agent run``:

1. open the spool (quarantining a corrupt file), start the sources;
2. tell systemd READY=1;
3. every tick: ping the watchdog while every worker is alive, check that the spool's
   file is still the one on disk (rebuilding it if not) and its filesystem's room, write
   the runtime status file that ``edge-agent status`` reads, expire records past their
   age cap;
   each forwarding sink runs its own forwarder thread (spool -> service);
4. SIGHUP re-reads the config and applies it by restarting only the parts that changed
   (reload.py says what changes and what is refused); status shows the last reload;
5. SIGTERM/SIGINT: stop intake and forwarding (in-flight requests finish, what they
   carried is settled), commit and ack what was received, close the spool, exit 0.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

from edge_agent import __version__, logs, runtime_status
from edge_agent.assembly import FORWARDING_TYPES, make_uploader, open_spool, queue_policies
from edge_agent.clock_sync import ClockGate, ClockSync
from edge_agent.config.cameras import CameraConfig
from edge_agent.config.loading import Config, load_config
from edge_agent.config.sinks import SinkConfig
from edge_agent.delivery.budget import UploadBudget
from edge_agent.errors import ConfigError, EdgeAgentError, SpoolError, SpoolFileLost
from edge_agent.events.keeper import EventKeeper, start_event_keeper
from edge_agent.events.triggers import TriggerRouter
from edge_agent.malloc_tuning import tune_malloc
from edge_agent.metrics import Endpoint, start_metrics
from edge_agent.reload import ReloadPlan, plan_reload
from edge_agent.runtime_status import (
    ReloadSnapshot,
    RuntimeStatus,
    ShareSnapshot,
    StorageSnapshot,
    UploaderSnapshot,
)
from edge_agent.sdnotify import SystemdNotifier
from edge_agent.sinks.base import Uploader
from edge_agent.sources.camera.camera import Camera
from edge_agent.sources.mqtt import MqttSource
from edge_agent.spool.recovery import mark_suspect
from edge_agent.spool.storage import Storage
from edge_agent.spool.store import Spool

if TYPE_CHECKING:
    from edge_agent.analytics.threads import AnalyticsWorker

log = logging.getLogger(__name__)

#: Seconds between expiry passes over the spool's age caps.
EXPIRE_INTERVAL_S = 60.0
#: Upper bound of one main-loop tick.
MAX_TICK_S = 1.0
#: Time the sources get to commit and ack what they hold at shutdown.
STOP_TIMEOUT_S = 8.0


def _rate_text(max_rate: float | None) -> str:
    return "unlimited" if max_rate is None else f"{max_rate * 8 / 1000:.0f} kbit/s"


class Agent:
    def __init__(self, config: Config, notifier: SystemdNotifier | None = None) -> None:
        self.config = config
        self._notifier = notifier or SystemdNotifier()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._started_at = time.time()
        self._spool: Spool | None = None
        self._mqtt: MqttSource | None = None
        # Replaced, not changed in place, by a reload (a status read iterates its own).
        self._uploaders: dict[str, Uploader] = {}
        self._failed_sinks: dict[str, str] = {}
        #: Cameras a reload could not start, and why (status; tried at the next reload).
        self._failed_cameras: dict[str, str] = {}
        self._cameras: dict[str, Camera] = {}
        #: Each sink's and camera's own stop event (a reload stops one of them), and
        #: when it was started, by "sink NAME" and "camera NAME".
        self._stops: dict[str, threading.Event] = {}
        self._started: dict[str, float] = {}
        self._last_reload: ReloadSnapshot | None = None
        self._analytics: AnalyticsWorker | None = None
        self._events: EventKeeper | None = None
        self._clock = ClockSync(enabled=config.agent.clock_check)
        self._budget = UploadBudget(config.uplink.max_rate, config.uplink.burst)
        self._storage: StorageSnapshot | None = None
        #: The status file could not be written (logged once until it can again).
        self._status_failing = False
        self._metrics: Endpoint | None = None

    # ------------------------------------------------------------------ signals

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop()

    def _on_reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self._reload.set()

    def request_stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        config = self.config
        tune_malloc()
        self._spool = spool = open_spool(config)
        spool.keepalive = self._notifier.watchdog  # while it rebuilds a lost file
        log.info("spool open at %s", config.spool.path)
        try:
            if config.mqtt is not None:
                self._mqtt = self._make_mqtt(config, spool)
                self._mqtt.start()
            for name, camera_config in config.cameras.items():
                self._cameras[name] = self._start_camera(
                    camera_config, spool, config.agent.clock_wait
                )
            for name, sink in config.sinks.items():
                self._start_uploader(name, sink, spool)
            self._start_analytics(config, spool)
            self._events = start_event_keeper(config, spool, self._stops)
            self._metrics = start_metrics(config.metrics, self.status_snapshot, config.spool.path)
            # Start-up made most objects the agent will ever hold (modules, AWS models,
            # clients): no later garbage collection walks them again (as records pile up).
            gc.freeze()
            self._notifier.ready(
                f"spool open, {int(self._mqtt is not None)} sources, {len(self._cameras)} "
                f"cameras and {len(self._uploaders)} uploaders started"
            )
            log.info("edge-agent %s running (pid %d)", __version__, os.getpid())
            exit_code = self._loop(spool)
        finally:
            self._notifier.stopping()
            log.info("stopping: committing and acking what was received")
            for stop in self._stops.values():  # cameras spool the fragment in progress
                stop.set()
            spool.wake_waiters()
            if self._mqtt is not None:
                self._mqtt.stop(STOP_TIMEOUT_S)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for camera in self._cameras.values():
                camera.join(max(0.0, deadline - time.monotonic()))
            for uploader in self._uploaders.values():
                uploader.join(max(0.0, deadline - time.monotonic()))
            for worker in (self._analytics, self._events):  # a query ends at its next check
                if worker is not None:
                    worker.join(max(0.0, deadline - time.monotonic()))
            self._write_status(stopped=True)
            busy = [name for name, uploader in self._uploaders.items() if uploader.running]
            busy += [f"camera {name}" for name, cam in self._cameras.items() if cam.running]
            if self._analytics is not None and self._analytics.running:
                busy.append("analytics")
            if busy:
                # Leave the spool open under a thread that may still settle its request;
                # the process exit releases it, and what was in flight is sent again.
                log.warning("stopping with a request still in flight for sinks %s", busy)
            else:
                spool.close()
            if self._metrics is not None:
                self._metrics.stop()
            log.info("stopped")
        return exit_code

    def _loop(self, spool: Spool) -> int:
        """Run until asked to stop (0) or until the spool turns out corrupt (1: systemd
        restarts the agent, and opening the spool quarantines the bad file)."""
        next_status = 0.0
        next_expire = time.monotonic() + EXPIRE_INTERVAL_S
        while not self._stop.is_set():
            now = time.monotonic()
            dead = [name for name, worker_ok in self._workers() if not worker_ok]
            if not dead:
                self._notifier.watchdog()
            else:
                log.error(
                    "worker thread %s is not alive; withholding watchdog pings so that "
                    "systemd restarts the agent",
                    ", ".join(dead),
                )
            try:
                self._storage = storage_snapshot(spool.maintain(), spool)
            except SpoolFileLost as err:
                if spool.broken is not None:
                    log.error("%s; exiting for a restart", err)
                    return 1
            except SpoolError as err:
                log.error("spool maintenance failed: %s", err)
            self._clock.check()
            if now >= next_status:
                self._write_status()
                next_status = now + self.config.agent.status_interval
            if now >= next_expire:
                self._expire(spool)
                next_expire = now + EXPIRE_INTERVAL_S
            if self._reload.is_set():
                self._reload.clear()
                self._reload_config(spool)
            if any(
                worker.spool_corrupt
                for worker in (self._mqtt, *self._uploaders.values())
                if worker is not None
            ):
                log.error("the spool is corrupt; restarting to check it and move it aside")
                mark_suspect(spool.path)
                return 1
            self._stop.wait(self._tick())
        return 0

    def _tick(self) -> float:
        """The main loop's pause: within the status interval (a reload may change it)
        and half the watchdog's."""
        tick = min(MAX_TICK_S, self.config.agent.status_interval)
        if self._notifier.watchdog_interval:
            tick = min(tick, self._notifier.watchdog_interval / 2)
        return tick

    def _start_uploader(self, name: str, sink: SinkConfig, spool: Spool) -> None:
        """Start forwarding ``sink`` (if its type sends); a sink that cannot start is
        reported in status and the rest of the agent goes on."""
        if sink.type not in FORWARDING_TYPES:
            return
        stop = self._stops[f"sink {name}"] = threading.Event()
        self._started[f"sink {name}"] = time.time()
        try:
            share = self._budget.share(name, sink.upload)
            device = self.config.agent.device_name
            uploader = make_uploader(sink, spool, share, stop, device=device)
        except Exception as err:  # e.g. a profile that does not exist: intake goes on
            log.error("sink %s: cannot start forwarding: %s", name, err)
            self._failed_sinks = {**self._failed_sinks, name: f"{type(err).__name__}: {err}"}
            return
        self._uploaders = {**self._uploaders, name: uploader}
        uploader.start()

    def _make_mqtt(self, config: Config, spool: Spool) -> MqttSource:
        assert config.mqtt is not None
        source = MqttSource(config.mqtt, spool, config.spool)
        source.clock_sync = self._clock
        source.triggers = _trigger_router(config)
        return source

    def _start_camera(self, config: CameraConfig, spool: Spool, clock_wait: float) -> Camera:
        stop = self._stops[f"camera {config.name}"] = threading.Event()
        self._started[f"camera {config.name}"] = time.time()
        camera = Camera(config, spool, stop)
        camera.clock_gate = ClockGate(self._clock, clock_wait)
        camera.start()
        return camera

    def _start_analytics(self, config: Config, spool: Spool) -> None:
        """One thread for every analytics query (none without queries)."""
        if not config.analytics:
            self._analytics = None
            return
        from edge_agent.analytics.threads import AnalyticsWorker

        stop = self._stops["analytics"] = threading.Event()
        self._started["analytics"] = time.time()
        self._analytics = AnalyticsWorker(config.analytics, spool, stop)
        self._analytics.start()

    def _workers(self) -> list[tuple[str, bool]]:
        workers = []
        if self._mqtt is not None:
            workers.append(("mqtt", self._mqtt.healthy))
        if self._analytics is not None:
            workers.append(("analytics", self._analytics.healthy))
        if self._events is not None:
            workers.append(("events", self._events.thread_ok))
        for name, uploader in self._uploaders.items():
            workers.append((f"sink {name}", uploader.healthy))
        for name, camera in self._cameras.items():
            workers.append((f"camera {name}", camera.running))
        return workers

    def _expire(self, spool: Spool) -> None:
        try:
            spool.expire()
        except EdgeAgentError as err:
            log.error("expiring old records failed: %s", err)

    # ------------------------------------------------------------------ reload

    def _reload_config(self, spool: Spool) -> None:
        """Re-read the configuration and apply it (see reload.py); a config with errors
        or a refused change leaves the running configuration as it was."""
        self._notifier.reloading()
        try:
            outcome, message = self._read_and_apply(spool)
        except Exception as err:  # a part that failed to stop or start: reported
            log.exception("reload: applying the configuration failed")
            outcome, message = "failed", f"applying failed: {err}"
        finally:
            self._notifier.ready()
        self._last_reload = {"at": time.time(), "outcome": outcome, "message": message}

    def _read_and_apply(self, spool: Spool) -> tuple[str, str]:
        file = self.config.source_file
        try:
            new = load_config(file)
        except ConfigError as err:
            log.error("reload: %s has errors; the running configuration stays:\n%s", file, err)
            return (
                "failed",
                f"{len(err.problems)} problems in {file}; the running configuration stays",
            )
        plan = plan_reload(self.config, new)
        if plan.refused:
            reasons = "; ".join(plan.refused)
            log.error(
                "reload refused, the running configuration stays: %s. Restart the agent "
                "to apply it (systemctl restart edge-agent).",
                reasons,
            )
            return "refused", f"{reasons}: needs a restart"
        problems = self._apply(plan, new, spool)
        self.config = new
        summary = plan.summary()
        log.info("reload: configuration re-read from %s: %s", file, summary)
        if problems:
            return "incomplete", f"{summary}; " + "; ".join(problems)
        return "applied", summary

    def _apply(self, plan: ReloadPlan, new: Config, spool: Spool) -> list[str]:
        """Apply ``plan``; returns what could not be done (the rest is applied)."""
        logs.configure(new.agent.log_level, new.agent.log_format)
        self._clock.set_enabled(new.agent.clock_check)
        if plan.uplink:
            self._budget.configure(new.uplink.max_rate, new.uplink.burst)
            log.info("reload: upload budget now %s", _rate_text(new.uplink.max_rate))
        if plan.spool_caps:  # before new sinks and subscriptions bring records
            spool.configure(
                durability=new.spool.durability,
                policies=queue_policies(new),
                max_bytes=new.spool.max_bytes,
                max_age_s=new.spool.max_age,
                reserve=new.spool.reserve,
            )
        for name in plan.shares:
            self._budget.share(name, new.sinks[name].upload)
            log.info("reload: sink %s: priority, max_rate and schedule updated", name)
        sinks, cameras = plan.sinks, plan.cameras
        self._stop_parts(
            [f"sink {name}" for name in (*sinks.removed, *sinks.changed)]
            + [f"camera {name}" for name in (*cameras.removed, *cameras.changed)],
            spool,
        )
        if plan.analytics:  # its windows' state is in the spool: it goes on where it was
            old = self._analytics
            if old is not None:
                self._stops.pop("analytics").set()
                old.join(STOP_TIMEOUT_S)
            self._start_analytics(new, spool)
        for name in (*sinks.changed, *sinks.added):
            self._start_uploader(name, new.sinks[name], spool)
        if self._events is not None:  # replaced whole: read once a pass
            self._events.cameras = new.cameras
        self._between_steps()
        self._reload_mqtt(plan, new, spool)
        self._between_steps()
        if plan.metrics:
            if self._metrics is not None:
                self._metrics.stop()
            self._metrics = start_metrics(new.metrics, self.status_snapshot, new.spool.path)
        # Cameras that could not start at an earlier reload are tried again.
        retry = [name for name in self._failed_cameras if name in new.cameras]
        self._failed_cameras = {}
        for name in dict.fromkeys((*cameras.changed, *cameras.added, *retry)):
            try:
                camera = self._start_camera(new.cameras[name], spool, new.agent.clock_wait)
            except EdgeAgentError as err:  # the spool could not be read: the others go on
                log.error("reload: camera %s cannot start: %s", name, err)
                self._failed_cameras[name] = str(err)
            else:
                self._cameras = {**self._cameras, name: camera}
        return [f"camera {name} cannot start: {why}" for name, why in self._failed_cameras.items()]

    def _between_steps(self) -> None:
        """A reload stops parts and waits for them: the watchdog and the status file
        must not go quiet meanwhile (status would call the agent not running)."""
        self._notifier.watchdog()
        self._write_status()

    def _stop_parts(self, parts: list[str], spool: Spool) -> None:
        """Stop these sinks' uploaders and cameras as at shutdown (in-flight requests
        answered and settled, the fragment in progress spooled), all at once."""
        if not parts:
            return
        for part in parts:
            stop = self._stops.pop(part, None)  # a "hold" sink has nothing to stop
            if stop is not None:
                stop.set()
        spool.wake_waiters()
        uploaders, cameras = dict(self._uploaders), dict(self._cameras)
        failed = dict(self._failed_sinks)
        stopping: list[tuple[str, Uploader | Camera]] = []
        for part in parts:
            kind, name = part.split(" ", 1)
            worker: Uploader | Camera | None
            if kind == "sink":
                worker = uploaders.pop(name, None)
                failed.pop(name, None)
            else:
                worker = cameras.pop(name, None)
            if worker is not None:
                stopping.append((part, worker))
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for part, worker in stopping:
            self._between_steps()
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.running:
                log.warning("reload: %s is still stopping; its successor starts anyway", part)
            if part.startswith("sink "):
                spool.count_resent(part.removeprefix("sink "))
        self._uploaders, self._cameras, self._failed_sinks = uploaders, cameras, failed

    def _reload_mqtt(self, plan: ReloadPlan, new: Config, spool: Spool) -> None:
        old = self._mqtt
        if plan.mqtt == "subscriptions" and old is not None and new.mqtt is not None:
            old.resubscribe(new.mqtt)
        elif (plan.mqtt_added or plan.mqtt == "restart") and new.mqtt is not None:
            source = self._make_mqtt(new, spool)
            if old is not None:
                old.stop(STOP_TIMEOUT_S)  # commits and acks what it received
                source.carry_over(old)
            source.start()
            self._mqtt = source
        if self._mqtt is not None:  # replaced whole: the committer reads it once a batch
            self._mqtt.triggers = _trigger_router(new)

    # ------------------------------------------------------------------ status

    def status_snapshot(self, *, stopped: bool = False) -> RuntimeStatus:
        """What the agent reports about itself now: the status file's content, and what
        the metrics endpoint serves. Called from the metrics thread as well as the main
        one: the parts' snapshot() methods only read (copies, or counters under their
        own locks), and a reload replaces the tables of parts rather than changing them."""
        status: RuntimeStatus = {
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self._started_at,
            "updated_at": time.time(),
            "running": not stopped,
            "sources": {},
            "uplink": {"max_rate": self._budget.max_rate},
            "sinks": {},
            "cameras": {},
        }
        mqtt = self._mqtt  # a reload may replace it meanwhile
        if mqtt is not None:
            status["sources"]["mqtt"] = mqtt.snapshot()
        try:
            for name, uploader in self._uploaders.items():
                sink = sink_with_upload(uploader.snapshot(), self._budget.share_snapshot(name))
                sink["started_at"] = self._started.get(f"sink {name}", self._started_at)
                status["sinks"][name] = sink
        except Exception:  # status must never take the agent down
            log.exception("collecting sink status failed")
        for name, reason in self._failed_sinks.items():
            status["sinks"][name] = {"state": "failed", "reason": reason}
        status["cameras"] = {name: camera.snapshot() for name, camera in self._cameras.items()}
        for name, camera in status["cameras"].items():
            camera["started_at"] = self._started.get(f"camera {name}", self._started_at)
        analytics, events = self._analytics, self._events
        if analytics is not None:
            status["analytics"] = analytics.snapshot()
        if events is not None:
            status["events"] = events.snapshot()
        if self._last_reload is not None:
            status["reload"] = self._last_reload
        clock = self._clock
        status["clock"] = {"state": clock.state, "since": clock.since, "marked": clock.marked}
        if self._storage is not None:
            status["storage"] = self._storage
        return status

    def _write_status(self, *, stopped: bool = False) -> None:
        status = self.status_snapshot(stopped=stopped)
        path = runtime_status.status_path(self.config.spool.path, self.config.agent.status_dir)
        try:
            runtime_status.write(path, status)
        except OSError as err:
            if not self._status_failing:
                log.warning("cannot write status file %s: %s (retrying quietly)", path, err)
            self._status_failing = True
        else:
            if self._status_failing:
                log.info("status file %s written again", path)
            self._status_failing = False


def storage_snapshot(storage: Storage, spool: Spool) -> StorageSnapshot:
    """The spool's filesystem and file as status shows them."""
    room = storage.last_room
    return {
        "free_bytes": room.free if room else None,
        "filesystem_bytes": room.size if room else None,
        "free_pages_bytes": room.free_pages if room else None,
        "reserve_bytes": storage.reserve,
        "ballast_bytes": room.ballast if room else 0,
        "intake_paused": storage.paused,
        "paused_since": storage.paused_since,
        "pauses": storage.pauses,
        "disk_full_errors": storage.refused_by_sqlite,
        "ballast_releases": storage.ballast_releases,
        "file_rebuilds": spool.file.rebuilds,
        "file_lost": spool.file.lost or spool.broken,
    }


def sink_with_upload(sink: UploaderSnapshot, upload: ShareSnapshot | None) -> UploaderSnapshot:
    """A sink's status with its share of the budget; a sink whose uploads a schedule
    window pauses says so, rather than that it is sending."""
    sink = sink.copy()
    if upload and upload["paused"] and sink["state"].startswith("sending"):
        sink["state"] = "paused by the schedule"
        sink["reason"] = upload["scheduled"]
    sink["upload"] = upload
    return sink


def _trigger_router(config: Config) -> TriggerRouter | None:
    return TriggerRouter(config.triggers, config.cameras) if config.triggers else None
