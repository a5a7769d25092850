"""Test helpers: free ports, bounded waits, a real Mosquitto, the agent as a process."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import sqlite_utils
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def terminate(process: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM a process a test started (if it still runs); SIGKILL after ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], object], timeout: float = 20.0, interval: float = 0.02, what: str = ""
) -> None:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """A real broker on a loopback port, with persistence in its own directory
    (``persistence=False``: sessions live only as long as the process)."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        extra: str = "",
        *,
        allow_anonymous: bool = True,
        persistence: bool = True,
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if allow_anonymous else 'false'}\n"
            f"persistence {'true' if persistence else 'false'}\n"
            f"persistence_location {directory}/\n"
            "max_queued_messages 0\n"
            f"log_dest file {directory}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            # As root, Mosquitto would switch to user 'mosquitto', which cannot write
            # to the test's directory (no persistence file, no log).
            + ("user root\n" if os.geteuid() == 0 else "")
            + extra
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: port_open(self.port) or self.process is None or self.process.poll() is not None,
            10,
            what="mosquitto to listen",
        )
        if self.process.poll() is not None:
            log = (self.directory / "mosquitto.log").read_text(errors="replace")
            raise RuntimeError(f"mosquitto exited: {log[-2000:]}")
        return self

    def stop(self) -> None:
        """Graceful stop: Mosquitto writes its persistence file on SIGTERM."""
        terminate(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def password_file(directory: Path, user: str, password: str) -> Path:
    """A Mosquitto password file (``password_file``) with one user."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(path), user, password],
        check=True,
        capture_output=True,
    )
    path.chmod(0o600)
    return path


def make_certificates(directory: Path, *, server_names: str = "IP:127.0.0.1") -> dict[str, Path]:
    """A throw-away CA, a server certificate for ``server_names`` (its subjectAltName)
    and a client certificate, made with the openssl command."""
    directory.mkdir(parents=True)
    paths = {
        name: directory / f"{name}.pem"
        for name in ("ca", "ca_key", "server", "server_key", "client", "client_key")
    }

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=edge-agent test CA",
        "-keyout", str(paths["ca_key"]), "-out", str(paths["ca"]),
    )  # fmt: skip
    for name, subject in (("server", "edge-agent test broker"), ("client", "edge-agent-test")):
        csr = directory / f"{name}.csr"
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={subject}",
            "-keyout", str(paths[f"{name}_key"]), "-out", str(csr),
        )  # fmt: skip
        extensions = directory / f"{name}.ext"
        extensions.write_text(f"subjectAltName = {server_names}\n" if name == "server" else "\n")
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(paths["ca"]),
            "-CAkey", str(paths["ca_key"]), "-CAcreateserial", "-days", "2",
            "-extfile", str(extensions), "-out", str(paths[name]),
        )  # fmt: skip
    return paths


def tls_listener(port: int, certificates: dict[str, Path], *, client_certificate: bool) -> str:
    """Mosquitto configuration for a TLS listener on 127.0.0.1 only."""
    return (
        f"listener {port} 127.0.0.1\n"
        f"cafile {certificates['ca']}\ncertfile {certificates['server']}\n"
        f"keyfile {certificates['server_key']}\n"
        f"require_certificate {'true' if client_certificate else 'false'}\n"
    )


def write_config(
    directory: Path,
    mqtt_port: int,
    *,
    client_id: str = "edge-agent-test",
    sinks: str = '[sinks.telemetry]\ntype = "hold"\n',
    spool: str = "",
    subscriptions: str = "",
    mqtt_extra: str = "",
    agent_extra: str = "",
) -> Path:
    subscriptions = subscriptions or (
        '[[mqtt.subscriptions]]\ntopic = "sensors/#"\nqos = 1\nsinks = ["telemetry"]\n'
    )
    path = directory / "edge-agent.toml"
    path.write_text(
        f'[agent]\ndevice_name = "test-device"\nstate_dir = "{directory / "state"}"\n'
        f'status_interval = "200ms"\n{agent_extra}\n'
        f"[spool]\n{spool}\n"
        f"{sinks}\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\nclient_id = "{client_id}"\n'
        f'reconnect_min = "1s"\nreconnect_max = "2s"\n{mqtt_extra}\n'
        f"{subscriptions}"
    )
    return path


def spool_path(config_dir: Path) -> Path:
    return config_dir / "state" / "spool.db"


class AgentProcess:
    """``edge-agent run`` in a child process, as systemd would run it."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        *,
        prefix: Sequence[str] = (),
        status_file: Path | None = None,
    ) -> None:
        """``prefix``: a command the agent runs under (e.g. setpriv, to drop privileges);
        ``status_file``: where it writes its status, if not beside the default spool."""
        self.config = config
        self.status_file = status_file or Path(f"{spool_path(config.parent)}.status.json")
        self.env = {**os.environ, **(env or {})}
        self.prefix = tuple(prefix)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = config.parent / "agent.log"

    def start(self) -> AgentProcess:
        handle = open(self.log, "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "edge_agent", "run", "-c", str(self.config)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
        )
        handle.close()
        return self

    def wait_connected(self, timeout: float = 20.0) -> None:
        status_file = self.status_file

        def connected() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited early:\n{self.log_text()}")
            try:
                data = json.loads(status_file.read_text())
            except (OSError, ValueError):
                return False
            return bool(
                data.get("pid") == self.process.pid
                and data["sources"].get("mqtt", {}).get("state") == "connected"
            )

        wait_until(connected, timeout, what="agent to connect to the broker")

    def mqtt_status(self) -> dict[str, Any]:
        """The MQTT part of the status file the agent writes ({} until it exists)."""
        try:
            return dict(self.status()["sources"]["mqtt"])
        except KeyError:
            return {}

    def sink_status(self, name: str) -> dict[str, Any]:
        """One sink's part of the status file ({} until it exists)."""
        try:
            return dict(self.status()["sinks"][name])
        except KeyError:
            return {}

    def status(self) -> dict[str, Any]:
        """The status file the running agent writes ({} until it exists)."""
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {}

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def ensure_stopped(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``edge-agent ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        capture_output=True,
        text=True,
        check=check,
        cwd=REPO,
        timeout=60,
    )


def start_agent(
    config: Path, started: list[AgentProcess], *, connected: bool = True
) -> AgentProcess:
    """Start an agent, register it for cleanup, and (by default) wait until it connected."""
    agent = AgentProcess(config).start()
    started.append(agent)
    if connected:
        agent.wait_connected()
    return agent


def publish(
    port: int, count: int, *, start_seq: int = 0, qos: int = 1, extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Run the sample publisher in its own process."""
    return subprocess.Popen(
        [
            sys.executable,
            str(REPO / "samples" / "sensor_publisher.py"),
            "--port",
            str(port),
            "--count",
            str(count),
            "--start-seq",
            str(start_seq),
            "--qos",
            str(qos),
            "--quiet",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def publish_one(port: int, topic: str, payload: bytes, *, qos: int = 1) -> None:
    """One message, published and acknowledged by the broker before this returns."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{time.monotonic_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=qos).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def run_publisher(port: int, count: int, start_seq: int = 0, extra: tuple[str, ...] = ()) -> None:
    """Publish and wait until the broker acknowledged every message."""
    process = publish(port, count, start_seq=start_seq, extra=extra)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()


def sqlite_memory_used() -> int:
    """Bytes SQLite has allocated in this process, all connections together: its own
    count, from the library the sqlite3 module uses."""
    import _sqlite3

    used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    used.restype = ctypes.c_int64
    return int(used())


def spooled_payloads(path: Path, queue: str = "telemetry") -> list[dict[str, Any]]:
    """Read payloads straight from the SQLite file, independently of the Spool class."""
    if not path.exists():
        return []
    db = sqlite_utils.Database(sqlite3.connect(f"file:{path}?mode=ro", uri=True))
    try:
        rows = list(
            db.query(
                "SELECT r.payload FROM records r JOIN queues q ON q.id = r.queue_id"
                " WHERE q.name = ? ORDER BY r.id",
                [queue],
            )
        )
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
    return [json.loads(row["payload"]) for row in rows]


def spooled_seqs(path: Path, queue: str = "telemetry") -> list[int]:
    return [int(item["seq"]) for item in spooled_payloads(path, queue)]


def spooled_count(
    path: Path, queue: str | None = None, *, captured_before_ms: int | None = None
) -> int:
    """Rows in the spool's records table, of ``queue`` or all, and only those captured
    before ``captured_before_ms`` if given (cheap enough to poll)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    before = 2**63 - 1 if captured_before_ms is None else captured_before_ms
    try:
        if queue is None:
            return int(
                conn.execute(
                    "SELECT count(*) FROM records WHERE captured_at_ms < ?", (before,)
                ).fetchone()[0]
            )
        return int(
            conn.execute(
                "SELECT count(*) FROM records r JOIN queues q ON q.id = r.queue_id"
                " WHERE q.name = ? AND r.captured_at_ms < ?",
                (queue, before),
            ).fetchone()[0]
        )
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


KINESALITE_MODULES = REPO / ".local-tools" / "node_modules"


class Kinesalite:
    """kinesalite (installed by .ci/setup) on a loopback port, in memory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Kinesalite:
        if not (KINESALITE_MODULES / "kinesalite").is_dir():
            raise RuntimeError("kinesalite is not installed: run bash .ci/setup")
        # kinesalite throws (and dies) when a client vanishes mid-request, which is what
        # the SIGKILL tests do to the agent; a real endpoint just drops the request.
        script = (
            "process.on('uncaughtException', e => { if (e.code !== 'ECONNRESET') throw e });"
            "require('kinesalite')({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0,"
            f" shardLimit: 100}}).listen({self.port}, '127.0.0.1')"
        )
        self.process = subprocess.Popen(
            ["node", "-e", script],
            env={**os.environ, "NODE_PATH": str(KINESALITE_MODULES)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(self.port), 20, what="kinesalite to listen")
        return self

    def stop(self) -> None:
        terminate(self.process)
        self.process = None

    def client(self, service: str = "kinesis") -> Any:
        return local_client(self.endpoint, service)


def local_client(endpoint: str, service: str, config: Any = None) -> Any:
    """A boto3 client for a local endpoint: dummy keys, us-east-1, no proxy.

    ``config`` (a ``botocore.config.Config``) is merged over the defaults; the caller
    closes the client (``close()``).
    """
    import boto3
    from botocore.config import Config

    direct = Config(proxies={})
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=direct if config is None else direct.merge(config),
    )


class JsonHandler(BaseHTTPRequestHandler):
    """A loopback HTTP server's handler that answers JSON and logs nothing."""

    def answer(self, status: int, document: object, headers: dict[str, str] | None = None) -> None:
        """``document``: JSON bytes as they are, or an object to encode."""
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def traced_peak(action: Callable[[], object]) -> int:
    """How far Python's traced memory (tracemalloc) rose above where it was while
    ``action`` ran, bytes."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
