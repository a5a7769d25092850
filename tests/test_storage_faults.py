"""Storage faults against the whole agent: real filesystems that fill up (a tmpfs, a
loop-mounted ext4 image with blocks reserved for root), the spool deleted under the
running agent, a power cut while requests are on the wire. Real Mosquitto and
kinesalite behind the fault proxy; the agent runs as a process, once as an unprivileged
user. Mounting needs root: CI runs the suite as root, elsewhere these tests skip."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fault_proxy import FaultProxy
from tests.kinesis_streams import make_stream, read_stream, sequence_numbers_by_key, user_records
from tests.support import (
    AgentProcess,
    Kinesalite,
    Mosquitto,
    cli,
    publish,
    run_publisher,
    spool_path,
    spooled_count,
    start_agent,
    wait_until,
    write_config,
)

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a filesystem that fills up needs root (CI runs as root)"
)

#: The unprivileged user the agent runs as in the ext4 test ("nobody"), keeping only
#: the capability to read the source tree (which may sit under root's home): not the
#: one that lets root use the filesystem's reserved blocks.
NOBODY = 65534
AS_NOBODY = (
    "setpriv",
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
)
MIB = 1024**2


@contextlib.contextmanager
def mounted(
    kind: str, directory: Path, size_mib: int, agents: list[AgentProcess]
) -> Iterator[Path]:
    """A filesystem of ``size_mib`` at ``directory``: "tmpfs", or "ext4" on a loop image
    with 5 % of its blocks reserved for root. Unmounted (and the image removed) after,
    once the agents that use it stopped."""
    directory.mkdir()
    image = directory.with_name(directory.name + ".img")
    tmpfs = ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs"]
    if kind == "tmpfs":
        subprocess.run([*tmpfs, str(directory)], check=True)
    else:
        with open(image, "wb") as out:
            out.truncate(size_mib * MIB)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "5", str(image)], check=True)
        loop = subprocess.run(
            ["mount", "-o", "loop", str(image), str(directory)], capture_output=True, check=False
        )
        if loop.returncode != 0:  # a container without loop devices: no reserved blocks
            reason = loop.stderr.decode().strip()
            print(f"no loop mount ({reason}): a tmpfs instead", file=sys.stderr)
            subprocess.run([*tmpfs, str(directory)], check=True)
    try:
        yield directory
    finally:
        for agent in agents:
            agent.ensure_stopped()
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)
        image.unlink(missing_ok=True)


#: Writes a file until the filesystem refuses even one more byte (run as "nobody").
FILLER = """
import errno, os, sys
with open(sys.argv[1], "wb", buffering=0) as out:
    for chunk in (1 << 20, 1 << 16, 4096, 512, 1):
        block = b"\\xa5" * chunk
        for _ in range(1_000_000):  # bounded; ENOSPC ends it long before
            try:
                out.write(block)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                break
    os.fsync(out.fileno())
"""


def fill(directory: Path) -> Path:
    """Fill the filesystem as another unprivileged user would: up to the blocks kept for
    root, until not one more byte fits; then check that nothing is left for the agent's
    user: no slack left by accident."""
    other = directory / "other"
    other.mkdir()
    os.chown(other, NOBODY, NOBODY)
    filler = other / "filler"
    subprocess.run([*AS_NOBODY, sys.executable, "-c", FILLER, str(filler)], check=True)
    stats = os.statvfs(directory)
    assert stats.f_bavail == 0, f"{stats.f_bavail} blocks still free"
    return filler


def kinesis_sink(stream: str, link: FaultProxy) -> str:
    return (
        f'[sinks.telemetry]\ntype = "kinesis"\nstream = "{stream}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{link.url}"\nretry_max = "500ms"\n'
        'connect_timeout = "1s"\nrequest_timeout = "2s"\n'
    )


def storage(agent: AgentProcess) -> dict[str, Any]:
    return dict(agent.status().get("storage") or {})


def delivered_seqs(kinesalite: Kinesalite, stream: str) -> list[int]:
    by_key = sequence_numbers_by_key(user_records(read_stream(kinesalite.client(), stream)))
    return [seq for seqs in by_key.values() for seq in seqs]


@needs_root
def test_the_spools_own_growth_pauses_intake_before_the_disk_fills_and_all_arrives(
    tmp_path: Path, broker: Mosquitto, kinesalite: Kinesalite, agents: list[AgentProcess]
) -> None:
    """A 24 MiB tmpfs, an outage, 8,000 readings of 3 kB (more than the filesystem
    holds): intake pauses at the reserve, SQLite never finds the disk full, and when
    the uplink heals every reading the broker accepted reaches the stream."""
    total = 8000
    stream = make_stream(kinesalite.client(), 1)
    with mounted("tmpfs", tmp_path / "fs", 24, agents) as fs, FaultProxy(kinesalite.port) as link:
        link.set_mode("cut")
        spool = fs / "spool.db"
        config = write_config(
            tmp_path,
            broker.port,
            sinks=kinesis_sink(stream, link),
            spool=f'path = "{spool}"\nreserve = "4MiB"\n',
            agent_extra=f'status_dir = "{tmp_path / "state"}"\n',
        )
        agent = start_agent(config, agents)
        run_publisher(broker.port, total, extra=("--payload-size", "3000"))
        wait_until(lambda: storage(agent).get("intake_paused"), 60, 0.1, "intake to pause")
        held = spooled_count(spool)
        assert 0 < held < total
        assert os.statvfs(fs).f_bavail > 0, "the spool's growth alone filled the disk"
        assert "INTAKE PAUSED: disk" in cli("status", "-c", str(config)).stdout

        link.set_mode("pass")
        wait_until(
            lambda: agent.mqtt_status().get("committed", 0) >= total and spooled_count(spool) == 0,
            180,
            0.2,
            "every reading spooled and delivered",
        )
        assert storage(agent)["disk_full_errors"] == 0, "SQLite found the disk full"
        assert agent.terminate() == 0
    assert set(delivered_seqs(kinesalite, stream)) == set(range(total))
    log = agent.log_text()
    assert "disk is full" not in log and "No space left" not in log
    assert_one_line_per_pause(log)


@needs_root
def test_a_cameras_ring_gives_room_on_a_full_disk_and_the_camera_records_on(
    tmp_path: Path, broker: Mosquitto, agents: list[AgentProcess]
) -> None:
    """A 24 MiB tmpfs and a camera recording to a ring far larger than it: when the
    spool's growth reaches the reserve, the ring drops its oldest fragments to make room
    and every new fragment is stored (none refused), and the disk never fills."""
    with mounted("tmpfs", tmp_path / "fs", 24, agents) as fs:
        spool = fs / "spool.db"
        camera = (
            '[sinks.telemetry]\ntype = "hold"\n'
            '[cameras.door]\nsource = "lavfi"\n'
            'url = "testsrc2=size=640x360:rate=30,noise=alls=30:allf=t"\nfragment = "1s"\n'
            'preset = "ultrafast"\nbitrate = "16Mbit/s"\nupload = "off"\n'
            'record_max_bytes = "1GiB"\n'
        )
        config = write_config(
            tmp_path,
            broker.port,
            sinks=camera,
            spool=f'path = "{spool}"\nreserve = "4MiB"\n',
            agent_extra=f'status_dir = "{tmp_path / "state"}"\n',
        )
        agent = start_agent(config, agents)

        def door() -> dict[str, Any]:
            return dict(agent.status().get("cameras", {}).get("door", {}))

        wait_until(
            lambda: door().get("events", {}).get("ring_yielded", 0) >= 5,
            120,
            0.2,
            "the ring to give room five times",
        )
        stored = door()["fragments"]
        wait_until(lambda: door()["fragments"] >= stored + 5, 30, 0.2, "five more fragments")
        assert door().get("unstored_fragments", 0) == 0
        assert os.statvfs(fs).f_bavail > 0, "the disk filled"
        assert agent.terminate() == 0
    log = agent.log_text()
    assert "disk is full" not in log and "No space left" not in log


def assert_one_line_per_pause(log: str) -> None:
    """Each pause is logged once when it starts and once when it ends."""
    paused = log.count("spool.storage: intake paused:")
    assert paused >= 1 and paused - log.count("spool.storage: intake resumed") in (0, 1)


@needs_root
def test_a_disk_filled_by_another_process_still_lets_the_agent_deliver_and_delete(
    tmp_path: Path, broker: Mosquitto, kinesalite: Kinesalite, agents: list[AgentProcess]
) -> None:
    """ext4 with root's reserved blocks, the agent as an unprivileged user, another
    process fills the filesystem to the last block: the agent's status stays current,
    it delivers and deletes what it holds, and resumes intake once the file is gone."""
    stream = make_stream(kinesalite.client(), 1)
    with mounted("ext4", tmp_path / "fs", 48, agents) as fs, FaultProxy(kinesalite.port) as link:
        state = fs / "state"
        state.mkdir()
        os.chown(state, NOBODY, NOBODY)
        spool = state / "spool.db"
        status_file = state / "spool.db.status.json"
        link.set_mode("cut")
        config = write_config(
            tmp_path,
            broker.port,
            sinks=kinesis_sink(stream, link),
            spool=f'path = "{spool}"\nreserve = "2MiB"\n',
        )
        agent = AgentProcess(config, prefix=AS_NOBODY, status_file=status_file).start()
        agents.append(agent)
        agent.wait_connected()
        assert os.stat(spool).st_uid == NOBODY
        run_publisher(broker.port, 2000, extra=("--payload-size", "500"))
        wait_until(lambda: spooled_count(spool) == 2000, 60, 0.1, "2,000 readings spooled")

        # Free space is what the agent's user may use, not root's reserved blocks. The
        # status shows the room at the agent's last measure; the spool's last commits
        # and checkpoints may follow it, so wait for a measure taken after them.
        def user_room_reported() -> bool:
            free = storage(agent).get("free_bytes")
            bavail = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
            return free is not None and free <= bavail + MIB

        wait_until(user_room_reported, 20, 0.1, "the user's free space in status")
        stats = os.statvfs(fs)
        reported = storage(agent)["free_bytes"]
        if stats.f_bfree > stats.f_bavail:  # ext4 (a tmpfs keeps nothing for root)
            assert reported < stats.f_bfree * stats.f_frsize - MIB  # 2.4 MiB kept for root

        filler = fill(fs)
        run_publisher(broker.port, 3000, start_seq=2000, extra=("--payload-size", "500"))
        wait_until(lambda: storage(agent).get("intake_paused"), 60, 0.1, "intake to pause")
        # The status file is still written (in place) on the full filesystem.
        seen = agent.status()["updated_at"]
        wait_until(lambda: agent.status()["updated_at"] > seen, 10, 0.05, "a fresh status")
        text = cli("status", "-c", str(config)).stdout
        assert "running (pid" in text and "INTAKE PAUSED: disk" in text

        # The uplink heals with the filesystem still full: what the spool holds is
        # delivered and deleted, and while the ballast is in place the space delivery
        # frees inside the spool file takes the readings the broker kept, round after
        # round, without a byte more (once the ballast was needed for deletes, what WAL
        # room is left is theirs, and the readings wait at the broker).
        link.set_mode("pass")
        wait_until(
            lambda: (
                spooled_count(spool) == 0
                and (
                    agent.mqtt_status().get("acked", 0) >= 5000
                    or storage(agent).get("ballast_releases", 0) >= 1
                )
            ),
            120,
            0.1,
            "the held readings delivered (and the broker's taken in)",
        )
        assert agent.mqtt_status()["acked"] >= 2000
        free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
        assert free <= MIB // 2, "the spool took no byte more (but for a released ballast)"

        # Another outage: the spool fills its own free pages, then pauses, and resumes
        # only once the other process's file is gone.
        link.set_mode("cut")
        run_publisher(broker.port, 8000, start_seq=5000, extra=("--payload-size", "500"))
        wait_until(lambda: storage(agent).get("intake_paused"), 60, 0.1, "intake to pause")
        assert agent.mqtt_status()["acked"] < 13000
        filler.unlink()
        wait_until(lambda: agent.mqtt_status().get("acked", 0) >= 13000, 90, 0.1, "intake back")
        assert not storage(agent)["intake_paused"]
        link.set_mode("pass")
        wait_until(lambda: spooled_count(spool) == 0, 90, 0.1, "all delivered")
        assert agent.terminate() == 0
    assert set(delivered_seqs(kinesalite, stream)) == set(range(13000))
    log = agent.log_text()
    assert "deleting delivered records failed" not in log
    assert "cannot write status file" not in log
    assert_one_line_per_pause(log)


def test_a_spool_deleted_under_the_running_agent_loses_no_acknowledged_message(
    tmp_path: Path, broker: Mosquitto, kinesalite: Kinesalite, agents: list[AgentProcess]
) -> None:
    total = 6000
    stream = make_stream(kinesalite.client(), 1)
    with FaultProxy(kinesalite.port) as link:
        link.set_mode("cut")
        config = write_config(tmp_path, broker.port, sinks=kinesis_sink(stream, link))
        spool = spool_path(tmp_path)
        agent = start_agent(config, agents)
        publisher = publish(broker.port, total, extra=("--rate", "2000"))
        wait_until(lambda: spooled_count(spool) >= 1500, 30, 0.02, "1,500 readings spooled")
        for extra in ("", "-wal", "-shm"):
            Path(f"{spool}{extra}").unlink()
        publisher.communicate(timeout=60)
        assert publisher.returncode == 0
        wait_until(lambda: storage(agent).get("file_rebuilds", 0) >= 1, 30, 0.05, "a rebuild")
        wait_until(
            lambda: agent.mqtt_status().get("acked", 0) >= total, 60, 0.1, "every reading acked"
        )
        link.set_mode("pass")
        wait_until(lambda: spooled_count(spool) == 0, 90, 0.1, "all delivered")
        assert agent.terminate() == 0
    seqs = delivered_seqs(kinesalite, stream)
    assert set(seqs) == set(range(total)), f"{total - len(set(seqs))} acknowledged readings lost"
    log = agent.log_text()
    assert "was deleted or moved while the agent ran" in log
    stopped = cli("status", "-c", str(config), "--json", check=False)
    assert stopped.returncode == 3  # the agent is not running
    events = json.loads(stopped.stdout)["spool"]["events"]
    assert any(event["kind"] == "spool_file_rebuilt" for event in events)


def test_a_power_cut_with_requests_on_the_wire_counts_what_is_sent_again(
    tmp_path: Path, broker: Mosquitto, kinesalite: Kinesalite, agents: list[AgentProcess]
) -> None:
    stream = make_stream(kinesalite.client(), 1)
    with FaultProxy(kinesalite.port) as link:
        link.set_mode("blackhole")
        config = write_config(tmp_path, broker.port, sinks=kinesis_sink(stream, link))
        agent = start_agent(config, agents)
        run_publisher(broker.port, 1000)
        wait_until(
            lambda: agent.sink_status("telemetry").get("requests", 0) >= 1, 30, 0.05, "a request"
        )
        agent.kill()
        link.set_mode("pass")
        agent = start_agent(config, agents)
        wait_until(lambda: spooled_count(spool_path(tmp_path)) == 0, 60, 0.1, "all delivered")
        assert agent.terminate() == 0
    assert set(delivered_seqs(kinesalite, stream)) == set(range(1000))
    stopped = cli("status", "-c", str(config), "--json", check=False)
    assert stopped.returncode == 3  # the agent is not running
    (queue,) = json.loads(stopped.stdout)["spool"]["queues"]
    assert 0 < queue["resent_after_restart_count"] <= 1000
    assert "RESENT" in cli("status", "-c", str(config), check=False).stdout
