"""What the benchmark scripts share: process and /proc helpers, child I/O, payloads, a
minimal MQTT publisher's packets, report formatting.

The scripts run as ``.venv/bin/python bench/<name>.py``, which puts this directory first on
``sys.path``: they import this module as ``common``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The benchmark itself could not run (a process died, a wait timed out)."""


# ---------------------------------------------------------------------- processes, ports


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, *, interval: float
) -> None:
    """Check ``condition`` every ``interval`` seconds; BenchError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; for processes this script started."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class LoopbackServer:
    """A server process (a broker, an endpoint) this script runs on a free loopback port."""

    #: What messages call it.
    name = "the server"

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        #: Its log (where ``start`` sends stderr, or the server writes on its own).
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def launch(
        self,
        command: Sequence[str],
        *,
        timeout: float,
        interval: float,
        env: dict[str, str] | None = None,
        stderr_to_log: bool = False,
    ) -> None:
        """Start ``command`` and wait until the port takes connections; BenchError (with
        the end of the log) if the process exits first."""
        if stderr_to_log:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "ab") as handle:
                self.process = subprocess.Popen(
                    command, env=env, stdout=subprocess.DEVNULL, stderr=handle
                )
        else:
            self.process = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        process = self.process
        wait_until(
            lambda: port_open(self.port) or process.poll() is not None,
            timeout,
            f"{self.name} to listen",
            interval=interval,
        )
        if process.poll() is not None:
            raise BenchError(f"{self.name} exited: {tail(self.log)}")

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


def tail(path: Path, size: int = 2000) -> str:
    """The last ``size`` characters of a (log) file, "" if there is none."""
    return path.read_text(errors="replace")[-size:] if path.exists() else ""


def command_output(command: Sequence[str]) -> str | None:
    """What ``command`` printed on stdout (None if it could not run or took over 10 s)."""
    try:
        result = subprocess.run(command, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.decode(errors="replace")


@contextlib.contextmanager
def work_directory(parent: str | None, *, keep: bool) -> Iterator[Path]:
    """A new temporary directory (in ``parent`` if given), removed afterwards unless
    ``keep``."""
    workdir = Path(
        tempfile.mkdtemp(prefix="edge-agent-bench-", dir=Path(parent) if parent else None)
    )
    try:
        yield workdir
    finally:
        if keep:
            print(f"work files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def write_json(path: str, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=1))


def wait_for_agent_exit(
    process: subprocess.Popen[bytes], timeout: int, log: Path | None = None
) -> None:
    """Wait for the agent, already sent SIGTERM, to exit with status 0; BenchError (with
    the end of ``log``, if given) if it does not."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the agent did not stop within {timeout}s of SIGTERM") from None
    if process.returncode != 0:
        detail = f":\n{tail(log)}" if log is not None else ""
        raise BenchError(f"the agent exited with {process.returncode}{detail}")


class LineReader:
    """Reads lines from a child's stdout with a timeout."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
        self._buffer = b""

    def readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")


def read_status(path: Path) -> dict[str, Any] | None:
    """The agent's status file (None while it is missing or half written)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


# ---------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class ProcTimes:
    """CPU time of a process (all its threads) and how often its threads waited."""

    user: float
    system: float
    #: Voluntary context switches: a thread blocked (I/O, a lock, the GIL, a condition).
    switches: int

    @property
    def cpu(self) -> float:
        return self.user + self.system

    def __sub__(self, other: ProcTimes) -> ProcTimes:
        return ProcTimes(
            self.user - other.user, self.system - other.system, self.switches - other.switches
        )


ZERO_TIMES = ProcTimes(0.0, 0.0, 0)


def proc_times(pid: int) -> ProcTimes:
    """From /proc/PID/stat (utime, stime) and /proc/PID/task/*/status."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    switches = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as handle:
            for line in handle:
                if line.startswith("voluntary_ctxt_switches:"):
                    switches += int(line.split()[1])
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return ProcTimes(int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK, switches)


def _status_kib(pid: int, field_name: str) -> int:
    """A size field (in kB) of /proc/PID/status, in bytes."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field_name):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no {field_name} for pid {pid}")


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the highest resident set size the process has had."""
    return _status_kib(pid, "VmHWM:")


def rss_bytes(pid: int) -> int:
    """VmRSS: the resident set size now."""
    return _status_kib(pid, "VmRSS:")


# ---------------------------------------------------------------------- payloads


def make_payload(seq: int, size: int, sent: float | None = None) -> bytes:
    """JSON of exactly ``size`` bytes carrying the sequence number (and the send time
    ``sent``, when given)."""
    ts = "" if sent is None else f'"ts":{sent:.6f},'
    head = f'{{"seq":{seq},{ts}"pad":"'
    pad = size - len(head) - 2
    if pad < 0:
        raise BenchError(f"payload size {size} is too small (at least {len(head) + 2} bytes)")
    return (head + "x" * pad + '"}').encode()


# ---------------------------------------------------------------------- minimal MQTT 3.1.1

#: MQTT DISCONNECT.
DISCONNECT = b"\xe0\x00"


def remaining_length(length: int) -> bytes:
    """MQTT's variable-length integer (a packet's remaining length)."""
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def mqtt_string(text: str) -> bytes:
    """A UTF-8 string as MQTT encodes it (two bytes of length first)."""
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise BenchError("broker closed the connection")
        data += chunk
    return data


def mqtt_connect(port: int, client_id: str, *, clean: bool = True) -> socket.socket:
    """Open an MQTT 3.1.1 connection (no paho: the publisher must not be the bottleneck)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = (
        mqtt_string("MQTT")
        + bytes([4, 0x02 if clean else 0x00])
        + struct.pack("!H", 60)
        + mqtt_string(client_id)
    )
    sock.sendall(b"\x10" + remaining_length(len(body)) + body)
    connack = _recv_exactly(sock, 4)
    if connack[0] != 0x20 or connack[3] != 0:
        sock.close()
        raise BenchError(f"broker refused {client_id!r}: CONNACK {connack.hex()}")
    return sock


def drop_session(port: int, client_id: str) -> None:
    """Delete a persistent session (a clean connect does), so the broker stops queueing."""
    sock = mqtt_connect(port, client_id, clean=True)
    with contextlib.closing(sock):
        sock.sendall(DISCONNECT)


class AckCounter(threading.Thread):
    """Counts the broker's PUBACKs (the only packets a publisher gets: 4 bytes each)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(name="puback-counter", daemon=True)
        self._sock = sock
        self._cond = threading.Condition()
        self.acked = 0
        self.closed = False
        self.error: str | None = None

    def run(self) -> None:
        total = 0
        try:
            while True:
                data = self._sock.recv(1 << 16)
                if not data:
                    break
                first = (-total) % 4  # where the next packet starts in this chunk
                heads = data[first::4]
                if heads.count(0x40) != len(heads):
                    self.error = "unexpected packet from the broker"
                    break
                total += len(data)
                with self._cond:
                    self.acked = total // 4
                    self._cond.notify_all()
        except OSError as err:
            self.error = str(err)
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.acked < count and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self.acked >= count


#: Messages a publisher keeps unacknowledged by the broker (below 65535 packet ids).
PUBLISH_WINDOW = 20_000
#: Messages per write of an unpaced publisher.
PUBLISH_CHUNK = 32


class BrokerStalled(Exception):
    """The broker stopped acknowledging a publisher's messages."""


def paced(count: int, rate: float, acks: AckCounter) -> Iterator[range]:
    """The message numbers to send now, in turns, until ``count``: at ``rate`` a second
    (0: as fast as the broker acknowledges), never more than PUBLISH_WINDOW ahead of its
    acknowledgements (BrokerStalled when they stop for a minute)."""
    started = time.monotonic()
    seq = 0
    while seq < count:
        if rate:
            delay = started + seq / rate - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 0.01))
                continue
            upto = min(count, int((time.monotonic() - started) * rate) + 1)
        else:
            upto = min(count, seq + PUBLISH_CHUNK)
        if upto - acks.acked > PUBLISH_WINDOW and not acks.wait_for(upto - PUBLISH_WINDOW, 60):
            raise BrokerStalled(f"broker stopped acknowledging ({acks.error})")
        yield range(seq, upto)
        seq = upto


def publish_packet(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH of ``payload`` to ``topic`` (already ``mqtt_string`` encoded)."""
    return (
        b"\x32"
        + remaining_length(len(topic) + 2 + len(payload))
        + topic
        + struct.pack("!H", packet_id)
        + payload
    )


# ---------------------------------------------------------------------- numbers, report


def per(amount: float, count: float) -> float:
    """``amount / count``, NaN unless ``count`` is positive."""
    return amount / count if count > 0 else float("nan")


def median(values: Sequence[float], *, skip_nan: bool = True) -> float:
    """The median (NaN for no values); NaN values are left out unless ``skip_nan`` is off."""
    if skip_nan:
        values = [value for value in values if not math.isnan(value)]
    return statistics.median(values) if values else float("nan")


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


# ---------------------------------------------------------------------- command line


def add_work_arguments(parser: argparse.ArgumentParser, *, kept: str) -> None:
    """--workdir, --keep (``kept``: what it keeps) and --json."""
    parser.add_argument("--workdir", help="where the temporary work directory goes")
    parser.add_argument("--keep", action="store_true", help=f"keep {kept}")
    parser.add_argument("--json", help="also write the results to this file")


def run_or_fail(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``run(args)``; if the benchmark breaks (BenchError), says so and returns 1."""
    try:
        return run(args)
    except BenchError as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
        return 1
