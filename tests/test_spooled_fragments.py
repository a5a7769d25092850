"""A video sink writes a large fragment straight from the spool, a piece at a time: the
lease leaves the payload in the spool (counted at its size), the pieces make the
fragment whole, the sink never holds all of it, and a fragment that leaves the spool
while it is written ends that connection, not the sink (kvs-local, read back with PyAV)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from edge_agent.kvs_local.server import PutMediaServer
from edge_agent.records import LeasedRecord, Record
from edge_agent.sinks.kvs import uploader as uploader_module
from edge_agent.sinks.kvs.spooled_payload import PIECE_BYTES, send_spooled
from edge_agent.spool.blobs import BLOB_IO_BYTES
from edge_agent.spool.store import Spool
from tests.putmedia_client import CREDENTIALS
from tests.support import traced_peak, wait_until
from tests.test_kvs_uploader import make
from tests.test_spool_blobs import fragment
from tests.video_backlog import encode_one_second, fill_backlog

MIB = 1024**2


def test_a_large_payload_leased_unread_is_empty_and_counted_at_its_size(tmp_path: Path) -> None:
    """Left in the spool, a payload still counts: a lease within 2 MiB takes one 1.5 MiB
    fragment, not all three (with each counted as empty, it took them all)."""
    large = [fragment(n, 3 * MIB // 2) for n in range(3)]
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([Record("video", "k", n, data) for n, data in enumerate(large)])
        spool.append([Record("video", "k", 9, b"small")])
        first = spool.lease("video", max_records=10, max_bytes=2 * MIB, read_large=False)
        rest = spool.lease("video", max_records=10, max_bytes=10 * MIB, read_large=False)
        newest = spool.lease_newest("video", read_large=False)
    assert [record.payload for record in first] == [b""]
    assert [record.payload for record in rest] == [b"", b"", b"small"]
    assert newest is None  # all are held


@pytest.mark.parametrize("size", [BLOB_IO_BYTES, 4 * PIECE_BYTES, 4 * MIB + 17])
def test_the_pieces_of_a_spooled_fragment_make_it_whole(tmp_path: Path, size: int) -> None:
    data = fragment(size, size)
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([Record("video", "k", 1, data)])
        (record,) = spool.lease("video", max_records=1, max_bytes=MIB, read_large=False)
        pieces: list[bytes] = []
        written = send_spooled(spool, record, pieces.append)
    assert written == size
    assert b"".join(pieces) == data
    assert all(0 < len(piece) <= PIECE_BYTES for piece in pieces)


def test_writing_a_spooled_fragment_holds_a_piece_of_it_not_all_of_it(tmp_path: Path) -> None:
    size = 4 * MIB
    with Spool.open(tmp_path / "s.db") as spool:
        spool.append([Record("video", "k", n, fragment(n, size)) for n in range(2)])
        (unread,) = spool.lease("video", max_records=1, max_bytes=MIB, read_large=False)
        streaming = traced_peak(lambda: send_spooled(spool, unread, lambda piece: None))
        reading = traced_peak(
            lambda: spool.lease("video", max_records=1, max_bytes=MIB, read_large=True)
        )
    assert reading >= size  # the measurement sees a whole fragment when there is one
    assert streaming < 2 * PIECE_BYTES + 64 * 1024, f"{streaming:,} bytes while writing"


def test_a_fragment_deleted_while_it_is_written_ends_the_write(tmp_path: Path) -> None:
    data = fragment(5, 4 * PIECE_BYTES)
    path = tmp_path / "s.db"
    with Spool.open(path) as spool:
        spool.append([Record("video", "k", 1, data)])
        (record,) = spool.lease("video", max_records=1, max_bytes=MIB, read_large=False)
        pieces: list[bytes] = []

        def send_then_delete(piece: bytes) -> None:
            pieces.append(piece)
            if len(pieces) == 1:  # another process (the command line) deletes it
                other = sqlite3.connect(path, isolation_level=None)
                other.execute("DELETE FROM records WHERE id = ?", (record.id,))
                other.close()

        written = send_spooled(spool, record, send_then_delete)
    assert written is None
    assert pieces == [data[:PIECE_BYTES]]


def test_a_fragment_that_leaves_the_spool_as_it_is_sent_ends_the_connection_not_the_sink(
    server: PutMediaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second of four 1 MB fragments is deleted after its first piece went out:
    the sink takes the acknowledgement of the one before, drops the connection
    mid-fragment, and goes on with the next one on a new connection. kvs-local keeps
    the other three, once each, whole, and PyAV plays them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS.secret_key)
    spool, _, uploader, stop = make(server, tmp_path)
    video = encode_one_second()
    victims: list[LeasedRecord] = []

    def send_and_lose_the_second(
        spool: Spool, record: LeasedRecord, send: Callable[[bytes], None]
    ) -> int | None:
        if uploader.stats.fragments_sent != 1 or victims:
            return send_spooled(spool, record, send)
        victims.append(record)

        def then_delete(piece: bytes) -> None:
            send(piece)
            other = sqlite3.connect(tmp_path / "spool.db", isolation_level=None)
            other.execute("DELETE FROM records WHERE id = ?", (record.id,))
            other.close()

        return send_spooled(spool, record, then_delete)

    monkeypatch.setattr(uploader_module, "send_spooled", send_and_lose_the_second)
    with spool:
        fill_backlog(spool, video, 4)
        uploader.start()
        try:
            wait_until(lambda: uploader.stats.fragments_acked >= 3, 60, 0.02, "3 acknowledged")
            connections = uploader.stats.connections
        finally:
            stop.set()
            uploader.join(10)
    (victim,) = victims
    # Ended on purpose: no write into a connection the endpoint gave up on, nothing the
    # service had acknowledged sent again (continuing after the cut-off piece made the
    # endpoint drop the connection, and the first fragment was stored twice).
    assert uploader.stats.last_error == ""
    assert connections == 2
    assert uploader.stats.fragments_sent == uploader.stats.fragments_acked == 3
    stored = server.streams["cam"]
    assert len(stored.timecodes) == 3 and victim.captured_at_ms not in stored.timecodes
    frames = 0
    for path in stored.files:
        with av.open(str(path)) as container:
            frames += sum(1 for _ in container.decode(video=0))
    assert frames == 30 * 3
