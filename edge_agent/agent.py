"""The agent's lifecycle: build the spool and sources from config, run, stop cleanly.

``Agent.run()`` is the main loop of ``edge-agent run``:

1. open the spool (quarantining a corrupt file), start the sources;
2. tell systemd READY=1;
3. every tick: ping the watchdog while every worker is alive, check that the spool's
   file is still the one on disk (rebuilding it if not) and its filesystem's room, write
   the runtime status file that ``edge-agent status`` reads, expire records past their
   age cap;
   each forwarding sink runs its own forwarder thread (spool -> service);
4. SIGHUP re-reads the config: the upload budget changes live, other changes are
   reported as needing a restart;
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
from collections.abc import Mapping
from dataclasses import replace
from types import FrameType

from edge_agent import __version__, runtime_status
from edge_agent.assembly import FORWARDING_TYPES, make_uploader, open_spool
from edge_agent.config.budget import ShareConfig
from edge_agent.config.loading import Config, load_config
from edge_agent.config.sinks import SinkConfig
from edge_agent.delivery.budget import UploadBudget
from edge_agent.errors import ConfigError, EdgeAgentError, SpoolError, SpoolFileLost
from edge_agent.malloc_tuning import tune_malloc
from edge_agent.runtime_status import (
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

log = logging.getLogger(__name__)

#: Seconds between expiry passes over the spool's age caps.
EXPIRE_INTERVAL_S = 60.0
#: Upper bound of one main-loop tick.
MAX_TICK_S = 1.0
#: Time the sources get to commit and ack what they hold at shutdown.
STOP_TIMEOUT_S = 8.0


def _without_upload(section: object) -> object:
    """A config section with the sinks' upload shares left out (they apply live)."""
    if isinstance(section, Mapping):
        return {
            name: replace(value, upload=ShareConfig()) if isinstance(value, SinkConfig) else value
            for name, value in section.items()
        }
    return section


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
        self._uploaders: dict[str, Uploader] = {}
        self._failed_sinks: dict[str, str] = {}
        self._cameras: dict[str, Camera] = {}
        self._stop_capture = threading.Event()
        self._stop_uploads = threading.Event()
        self._budget = UploadBudget(config.uplink.max_rate, config.uplink.burst)
        self._storage: StorageSnapshot | None = None
        #: The status file could not be written (logged once until it can again).
        self._status_failing = False

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
                self._mqtt = MqttSource(config.mqtt, spool, config.spool)
                self._mqtt.start()
            for name, camera_config in config.cameras.items():
                camera = self._cameras[name] = Camera(camera_config, spool, self._stop_capture)
                camera.start()
            for name, sink in config.sinks.items():
                if sink.type in FORWARDING_TYPES:
                    self._start_uploader(name, sink, spool)
            # Start-up made most objects the agent will ever hold (modules, the AWS
            # service models, clients): leave them out of every later garbage
            # collection, which otherwise walks them each time records pile up.
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
            self._stop_capture.set()  # cameras spool the fragment in progress, then end
            self._stop_uploads.set()
            spool.wake_waiters()
            if self._mqtt is not None:
                self._mqtt.stop(STOP_TIMEOUT_S)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for camera in self._cameras.values():
                camera.join(max(0.0, deadline - time.monotonic()))
            for uploader in self._uploaders.values():
                uploader.join(max(0.0, deadline - time.monotonic()))
            self._write_status(stopped=True)
            busy = [name for name, uploader in self._uploaders.items() if uploader.running]
            busy += [f"camera {name}" for name, cam in self._cameras.items() if cam.running]
            if busy:
                # Leave the spool open under a thread that may still settle its request;
                # the process exit releases it, and what was in flight is sent again.
                log.warning("stopping with a request still in flight for sinks %s", busy)
            else:
                spool.close()
            log.info("stopped")
        return exit_code

    def _loop(self, spool: Spool) -> int:
        """Run until asked to stop (0) or until the spool turns out corrupt (1: systemd
        restarts the agent, and opening the spool quarantines the bad file)."""
        tick = min(MAX_TICK_S, self.config.agent.status_interval)
        if self._notifier.watchdog_interval:
            tick = min(tick, self._notifier.watchdog_interval / 2)
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
            if now >= next_status:
                self._write_status()
                next_status = now + self.config.agent.status_interval
            if now >= next_expire:
                self._expire(spool)
                next_expire = now + EXPIRE_INTERVAL_S
            if self._reload.is_set():
                self._reload.clear()
                self._reload_config()
            if any(
                worker.spool_corrupt
                for worker in (self._mqtt, *self._uploaders.values())
                if worker is not None
            ):
                log.error("the spool is corrupt; restarting to check it and move it aside")
                mark_suspect(spool.path)
                return 1
            self._stop.wait(tick)
        return 0

    def _start_uploader(self, name: str, sink: SinkConfig, spool: Spool) -> None:
        try:
            share = self._budget.share(name, sink.upload)
            uploader = make_uploader(sink, spool, share, self._stop_uploads)
        except Exception as err:  # e.g. a profile that does not exist: intake goes on
            log.error("sink %s: cannot start forwarding: %s", name, err)
            self._failed_sinks[name] = f"{type(err).__name__}: {err}"
            return
        self._uploaders[name] = uploader
        uploader.start()

    def _workers(self) -> list[tuple[str, bool]]:
        workers = []
        if self._mqtt is not None:
            workers.append(("mqtt", self._mqtt.healthy))
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

    def _reload_config(self) -> None:
        self._notifier.reloading()
        try:
            new = load_config(self.config.source_file)
        except ConfigError as err:
            log.error("reload: config has errors, keeping the running one:\n%s", err)
            self._notifier.ready()
            return
        logging.getLogger().setLevel(new.agent.log_level.upper())
        if new.uplink != self.config.uplink:
            self._budget.configure(new.uplink.max_rate, new.uplink.burst)
            log.info("reload: upload budget now %s", _rate_text(new.uplink.max_rate))
        for name, sink in new.sinks.items():
            old = self.config.sinks.get(name)
            if old is not None and old.upload != sink.upload:
                self._budget.share(name, sink.upload)
                log.info("reload: sink %s: priority, max_rate and schedule updated", name)
        needs_restart = [
            section
            for section in ("spool", "mqtt", "sinks", "cameras")
            if _without_upload(getattr(new, section))
            != _without_upload(getattr(self.config, section))
        ]
        if needs_restart:
            log.warning(
                "reload: changes to [%s] take effect after a restart", "], [".join(needs_restart)
            )
        self.config = new
        log.info("reload: configuration re-read from %s", new.source_file)
        self._notifier.ready()

    # ------------------------------------------------------------------ status

    def _write_status(self, *, stopped: bool = False) -> None:
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
        if self._mqtt is not None:
            status["sources"]["mqtt"] = self._mqtt.snapshot()
        try:
            status["sinks"] = {
                name: sink_with_upload(uploader.snapshot(), self._budget.share_snapshot(name))
                for name, uploader in self._uploaders.items()
            }
        except Exception:  # status must never take the agent down
            log.exception("collecting sink status failed")
        for name, reason in self._failed_sinks.items():
            status["sinks"][name] = {"state": "failed", "reason": reason}
        status["cameras"] = {name: camera.snapshot() for name, camera in self._cameras.items()}
        if self._storage is not None:
            status["storage"] = self._storage
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
