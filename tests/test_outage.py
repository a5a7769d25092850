"""Outages of the uplink, compressed: the agent runs as a process, telemetry goes to
kinesalite and video to kvs-local, each through our fault-injecting proxy
(tests/fault_proxy.py). The link is cut while sensors and a camera keep producing; the
backlog is replayed when it heals, and a power cut (SIGKILL) in the middle of the
replay does not lose the place."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from botocore.credentials import Credentials

from edge_agent.delivery import deleter
from edge_agent.kvs_local.server import PutMediaServer
from edge_agent.spool.store import Spool
from tests.fault_proxy import FaultProxy
from tests.kinesis_streams import (
    first_occurrence_order_kept,
    make_stream,
    read_stream,
    sequence_numbers_by_key,
    user_records,
)
from tests.support import (
    AgentProcess,
    Kinesalite,
    Mosquitto,
    cli,
    run_publisher,
    spool_path,
    spooled_count,
    start_agent,
    wait_until,
    write_config,
)

#: The credentials conftest gives every test (and so the agent's environment).
CREDENTIALS = Credentials("test", "test")


@pytest.fixture
def kvs_local(tmp_path: Path) -> Iterator[PutMediaServer]:
    server = PutMediaServer(tmp_path / "received", credentials=CREDENTIALS, streams=["cam"])
    yield server.start()
    server.stop()


def pending(config: Path, queue: str) -> int:
    """Records of ``queue`` still in the spool file (read with sqlite3 directly)."""
    return spooled_count(spool_path(config.parent), queue)


@pytest.mark.parametrize("video_outage", ["blackhole", "cut"])
def test_an_outage_loses_nothing_and_a_power_cut_during_replay_keeps_the_place(  # noqa: PLR0917
    video_outage: str,
    tmp_path: Path,
    broker: Mosquitto,
    kinesalite: Kinesalite,
    kvs_local: PutMediaServer,
    agents: list[AgentProcess],
) -> None:
    client = kinesalite.client()
    stream = make_stream(client, 2)
    with (
        FaultProxy(kinesalite.port) as telemetry_link,
        FaultProxy(int(kvs_local.url.rpartition(":")[2])) as video_link,
    ):
        sinks = (
            f'[sinks.telemetry]\ntype = "kinesis"\nstream = "{stream}"\nregion = "us-east-1"\n'
            f'endpoint_url = "{telemetry_link.url}"\nordered = true\nretry_max = "500ms"\n'
            'connect_timeout = "1s"\nrequest_timeout = "2s"\n'
            f'[sinks.video]\ntype = "kvs"\nstream = "cam"\nregion = "us-east-1"\n'
            f'endpoint_url = "{video_link.url}"\nretry_min = "100ms"\nretry_max = "500ms"\n'
            'ack_timeout = "2s"\nconnect_timeout = "1s"\n'
            '[cameras.pattern]\nsource = "lavfi"\n'
            'url = "testsrc2=size=320x240:rate=30,realtime"\nsink = "video"\n'
            'fragment = "500ms"\n'
            'preset = "ultrafast"\n'
        )
        subscriptions = (
            '[[mqtt.subscriptions]]\ntopic = "sensors/#"\nqos = 1\nsinks = ["telemetry"]\n'
            'partition_key = "{topic[1]}"\n'
        )
        config = write_config(tmp_path, broker.port, sinks=sinks, subscriptions=subscriptions)
        agent = start_agent(config, agents)
        run_publisher(broker.port, 1000, extra=("--sensors", "5"))
        stored = kvs_local.streams["cam"]
        wait_until(lambda: stored.fragments >= 2, 60, 0.05, "video flowing")
        wait_until(
            lambda: agent.sink_status("telemetry").get("records_sent", 0) >= 1000, 60, 0.05, "sent"
        )

        # The outage: the Kinesis endpoint refuses connections; the Kinesis Video route
        # goes dead (connections accepted, nothing answered) or is cut as well (open
        # connections closed mid-fragment, new ones refused).
        telemetry_link.set_mode("cut")
        video_link.set_mode(video_outage)
        run_publisher(broker.port, 4000, extra=("--sensors", "5", "--start-seq", "1000"))
        wait_until(lambda: pending(config, "video") >= 20, 60, 0.1, "20 fragments held")
        wait_until(lambda: pending(config, "telemetry") >= 4000, 60, 0.05, "the backlog held")
        wait_until(
            lambda: agent.sink_status("video").get("online") is False, 30, 0.05, "video offline"
        )
        during = agent.status()["sinks"]
        assert during["telemetry"]["state"] == "backing off"
        assert "ConnectionRefused" in during["telemetry"]["reason"]
        assert during["telemetry"]["online"] is False
        text = cli("status", "-c", str(config)).stdout
        assert "OFFLINE since" in text and "drains once the link is back" in text
        assert f"backlog {pending(config, 'telemetry')} records" in text
        fragments_before = stored.fragments

        # The link heals, slowly (50 kB/s up for telemetry); the agent loses power in
        # the middle of the replay and starts again.
        telemetry_link.set_rate(50_000)
        telemetry_link.set_mode("pass")
        video_link.set_mode("pass")
        wait_until(
            lambda: 0 < pending(config, "telemetry") < 3500, 60, 0.02, "the replay under way"
        )
        agent.kill()
        agent = start_agent(config, agents, connected=False)
        telemetry_link.set_rate(None)
        wait_until(lambda: pending(config, "telemetry") == 0, 90, 0.1, "telemetry drained")
        wait_until(lambda: pending(config, "video") <= 1, 90, 0.1, "video drained")
        after = agent.status()["sinks"]
        assert after["telemetry"]["online"] is True and after["video"]["online"] is True
        assert "online since" in cli("status", "-c", str(config)).stdout
        assert agent.terminate() == 0

    by_key = sequence_numbers_by_key(user_records(read_stream(client, stream)))
    seqs = [seq for key_seqs in by_key.values() for seq in key_seqs]
    assert set(Counter(seqs)) == set(range(5000)), "every reading arrived"
    assert all(first_occurrence_order_kept(s) for s in by_key.values()), "per-key order"
    # The kill re-sends at most what was on the wire and what waited to be deleted.
    assert len(seqs) - 5000 <= (1 + deleter.BACKLOG) * 500
    # Video: what the camera captured during the outage was stored after it, in order,
    # and all of it plays.
    assert stored.fragments >= fragments_before + 20
    frames = 0
    for path in stored.files:
        with av.open(str(path)) as container:
            frames += sum(1 for _ in container.decode(video=0))
    assert frames >= 15 * stored.fragments - 1  # 15 frames in each 0.5 s fragment
    with Spool.open_read_only(spool_path(tmp_path)) as spool:
        assert spool.dead_letters(limit=100) == []
    # At most the fragments on the wire at the kill, and at each cut, were sent again.
    timecodes = stored.timecodes
    assert len(timecodes) - len(set(timecodes)) <= 2 * 10
    assert sorted(set(timecodes)) == list(dict.fromkeys(timecodes)), "capture order kept"
