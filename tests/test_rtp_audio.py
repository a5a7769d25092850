"""RTP -> audio units: G.711, RFC 3640 (AAC-hbr, AAC-lbr) and RFC 6416 (MP4A-LATM)
from packets built by hand (several AUs a packet, fragments, losses, the timestamp
wrap, malformed packets), and from real streams: what Debian's ffmpeg sends with its
RTP muxer, depacketized back into the packets of the same encode in an MP4."""

from __future__ import annotations

import socket
import struct
import subprocess
from pathlib import Path

import av
import pytest

from edge_agent.errors import FormatError
from edge_agent.media.audio import latm_config
from edge_agent.sources.camera.rtp_audio import (
    AudioUnit,
    G711Depacketizer,
    LatmDepacketizer,
    Mpeg4GenericDepacketizer,
)

Depacketizer = G711Depacketizer | Mpeg4GenericDepacketizer | LatmDepacketizer


def rtp(payload: bytes, sequence: int, timestamp: int, marker: bool = False) -> bytes:
    first = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 96, sequence & 0xFFFF, 0, 7)
    return first[:4] + struct.pack("!I", timestamp & 0xFFFFFFFF) + first[8:] + payload


def au_headers(sizes: list[int], size_length: int = 13, index_length: int = 3) -> bytes:
    """AU-headers-length and AU headers: each AU-size, AU-Index(-delta) 0."""
    value, bits = 0, 0
    for size in sizes:
        value = (value << (size_length + index_length)) | (size << index_length)
        bits += size_length + index_length
    pad = -bits % 8
    return bits.to_bytes(2, "big") + (value << pad).to_bytes((bits + pad) // 8, "big")


def latm_element(*units: bytes) -> bytes:
    """An AudioMuxElement (cpresent=0): per unit its PayloadLengthInfo, then the unit."""
    out = b""
    for unit in units:
        out += b"\xff" * (len(unit) // 255) + bytes((len(unit) % 255,)) + unit
    return out


def push_all(depacketizer: Depacketizer, packets: list[bytes]) -> list[AudioUnit]:
    units = [unit for packet in packets for unit in depacketizer.push(packet)]
    return units + depacketizer.flush()


def test_g711_one_unit_per_packet_across_the_wrap() -> None:
    depacketizer = G711Depacketizer()
    start = 0xFFFFFF00
    packets = [rtp(bytes([n]) * 160, 0xFFFE + n, start + 160 * n) for n in range(4)]
    packets.insert(2, packets[1])  # a repeat: skipped
    units = push_all(depacketizer, packets)
    assert units == [AudioUnit(start + 160 * n, bytes([n]) * 160) for n in range(4)]
    assert units[-1].timestamp > 1 << 32
    assert depacketizer.push(rtp(b"x" * 160, 0xFFFE + 5, start + 960)) == [
        AudioUnit(start + 960, b"x" * 160)
    ]
    assert (depacketizer.lost_packets, depacketizer.unsupported_packets) == (1, 0)


def test_rfc3640_several_aus_per_packet() -> None:
    depacketizer = Mpeg4GenericDepacketizer()
    aus = [b"a" * 100, b"b" * 300, b"c" * 7]
    units = push_all(depacketizer, [rtp(au_headers([100, 300, 7]) + b"".join(aus), 1, 5000)])
    assert units == [AudioUnit(5000 + 1024 * n, au) for n, au in enumerate(aus)]
    single = depacketizer.push(rtp(au_headers([5]) + b"12345", 2, 5000 + 3072, marker=True))
    assert single == [AudioUnit(5000 + 3072, b"12345")]


def fragments(au: bytes, sequence: int, timestamp: int, piece: int = 1000) -> list[bytes]:
    pieces = [au[offset : offset + piece] for offset in range(0, len(au), piece)]
    header = au_headers([len(au)])
    return [
        rtp(header + part, sequence + n, timestamp, marker=n == len(pieces) - 1)
        for n, part in enumerate(pieces)
    ]


def test_rfc3640_fragmented_au() -> None:
    depacketizer = Mpeg4GenericDepacketizer()
    au = bytes(range(256)) * 10
    packets = fragments(au, 10, 90_000)
    assert len(packets) == 3
    assert [depacketizer.push(packet) for packet in packets] == [
        [],
        [],
        [AudioUnit(90_000, au)],
    ]


def test_rfc3640_loss_inside_a_fragmented_au() -> None:
    depacketizer = Mpeg4GenericDepacketizer()
    au = b"z" * 2500
    packets = fragments(au, 10, 0) + fragments(au, 13, 1024) + fragments(au, 16, 2048)
    del packets[1]  # the middle of the first AU
    del packets[2]  # the start of the second
    units = push_all(depacketizer, packets)
    assert units == [AudioUnit(2048, au)]
    assert (depacketizer.lost_packets, depacketizer.unsupported_packets) == (2, 0)


def test_aac_lbr_headers() -> None:
    depacketizer = Mpeg4GenericDepacketizer.from_fmtp({"mode": "AAC-lbr", "streamtype": "5"})
    aus = [b"q" * 63, b"r" * 1, b"s" * 20]
    packet = rtp(au_headers([63, 1, 20], size_length=6, index_length=2) + b"".join(aus), 1, 0)
    assert au_headers([63, 1, 20], 6, 2)[:2] == b"\x00\x18"  # 3 headers of 8 bits
    assert push_all(depacketizer, [packet]) == [AudioUnit(n * 1024, au) for n, au in enumerate(aus)]


def test_from_fmtp() -> None:
    hbr = Mpeg4GenericDepacketizer.from_fmtp(
        {"streamtype": "5", "mode": "AAC-hbr", "sizelength": "13", "indexlength": "3"}
    )
    assert hbr.push(rtp(au_headers([2]) + b"ok", 1, 0)) == [AudioUnit(0, b"ok")]
    refused = [
        ({"streamtype": "4", "mode": "AAC-hbr"}, "streamtype=4"),
        ({"mode": "CELP-vbr"}, "mode='CELP-vbr'"),
        ({}, "mode=''"),
        ({"mode": "AAC-hbr", "ctsdeltalength": "3"}, "ctsdeltalength"),
        ({"mode": "AAC-hbr", "dtsdeltalength": "3"}, "dtsdeltalength"),
        ({"mode": "AAC-hbr", "auxiliarydatasizelength": "8"}, "auxiliarydatasizelength"),
        ({"mode": "AAC-hbr", "sizelength": "thirteen"}, "not a number"),
    ]
    for parameters, message in refused:
        with pytest.raises(FormatError, match=message):
            Mpeg4GenericDepacketizer.from_fmtp(parameters)
    zero = {"mode": "aac-hbr", "ctsdeltalength": "0", "dtsdeltalength": "0"}
    assert Mpeg4GenericDepacketizer.from_fmtp(zero) is not None


def test_latm_payload_length_info() -> None:
    depacketizer = LatmDepacketizer()
    small, large, exact = b"s" * 20, bytes(range(150)) * 2, b"e" * 255
    assert latm_element(large)[:2] == b"\xff\x2d"  # 300 = 255 + 45
    assert latm_element(exact)[:2] == b"\xff\x00"
    packets = [
        rtp(latm_element(unit), n, 1024 * n, marker=True) for n, unit in enumerate([small, large])
    ]
    element = latm_element(exact)  # an element over two packets, the same timestamp
    packets += [rtp(element[:100], 2, 2048), rtp(element[100:], 3, 2048, marker=True)]
    assert push_all(depacketizer, packets) == [
        AudioUnit(0, small),
        AudioUnit(1024, large),
        AudioUnit(2048, exact),
    ]


def test_latm_subframes() -> None:
    depacketizer = LatmDepacketizer(subframes=2, frame_samples=960)
    packet = rtp(latm_element(b"one", b"two" * 100), 1, 7, marker=True)
    assert depacketizer.push(packet) == [AudioUnit(7, b"one"), AudioUnit(967, b"two" * 100)]
    assert depacketizer.push(rtp(latm_element(b"only one"), 2, 1927, marker=True)) == []
    assert depacketizer.unsupported_packets == 1


def test_latm_loss_drops_the_element_being_built() -> None:
    depacketizer = LatmDepacketizer()
    element = latm_element(b"x" * 600)
    assert len(element) == 603
    packets = [rtp(element[i : i + 201], 1 + i // 201, 0, marker=i == 402) for i in (0, 201, 402)]
    packets += [rtp(latm_element(b"next"), 4, 1024, marker=True)]
    del packets[1]
    assert push_all(depacketizer, packets) == [AudioUnit(1024, b"next")]
    assert (depacketizer.lost_packets, depacketizer.unsupported_packets) == (1, 0)
    # Whole elements lost: the next one is complete and kept.
    assert depacketizer.push(rtp(latm_element(b"later"), 9, 6144, marker=True)) == [
        AudioUnit(6144, b"later")
    ]
    # No marker: a new timestamp completes the element before it.
    assert depacketizer.push(rtp(latm_element(b"unmarked"), 10, 7168)) == []
    assert depacketizer.push(rtp(latm_element(b"n"), 11, 8192)) == [AudioUnit(7168, b"unmarked")]
    assert depacketizer.flush() == [AudioUnit(8192, b"n")]


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x10\x00",  # AU headers longer than the payload
        b"\x00\x00abc",  # no AU header
        b"\x00\x10\x00\x21abc",  # AU-Index 1: interleaved
        b"\x00\x20\x00\x50\x00\x50abc",  # two AUs of 10 bytes, 3 there
        b"\x00\x0d\x00\x00",  # 13 bits: no room for the index
        b"\x00",
    ],
)
def test_rfc3640_malformed(payload: bytes) -> None:
    depacketizer = Mpeg4GenericDepacketizer()
    assert depacketizer.push(rtp(payload, 1, 0, marker=True)) == []
    assert depacketizer.unsupported_packets == 1
    assert depacketizer.push(rtp(au_headers([1]) + b"!", 2, 1024)) == [AudioUnit(1024, b"!")]


@pytest.mark.parametrize("depacketizer", [G711Depacketizer(), LatmDepacketizer()])
def test_malformed_packets_are_counted(depacketizer: Depacketizer) -> None:
    bad = [b"", b"\x80\x60", b"\x40" + bytes(15), rtp(b"", 1, 0)]  # short, version 1, empty
    assert push_all(depacketizer, bad) == []
    assert depacketizer.unsupported_packets == 4
    assert depacketizer.lost_packets == 0
    if isinstance(depacketizer, LatmDepacketizer):
        elements = (b"\x05ab", b"\xff\xff", b"\x00", b"\x02ab!")  # short, zero, extra
        for sequence, element in enumerate(elements):
            assert depacketizer.push(rtp(element, sequence, 0, marker=True)) == []
        assert depacketizer.unsupported_packets == 8


def capture_ffmpeg_rtp(tmp_path: Path, *options: str) -> tuple[list[bytes], dict[str, str]]:
    """The RTP packets and the SDP's fmtp of a second of 44.1 kHz mono sent by ffmpeg."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(0.5)
        port = receiver.getsockname()[1]
        command = ["ffmpeg", "-v", "error", "-f", "lavfi"]
        command += ["-i", "sine=frequency=440:duration=1:sample_rate=44100", "-ac", "1"]
        command += [*options, "-f", "rtp", "-sdp_file", str(tmp_path / "a.sdp")]
        subprocess.run([*command, f"rtp://127.0.0.1:{port}"], check=True)
        packets = []
        try:
            while True:
                packets.append(receiver.recv(65536))
        except TimeoutError:
            pass
    fmtp: dict[str, str] = {}
    for line in (tmp_path / "a.sdp").read_text().splitlines():
        if line.startswith("a=fmtp:"):
            for item in line.split(" ", 1)[1].split(";"):
                key, _, value = item.strip().partition("=")
                if key:
                    fmtp[key.lower()] = value
    return packets, fmtp


def mp4_packets(tmp_path: Path) -> list[bytes]:
    """The same encode as ``capture_ffmpeg_rtp``'s, in an MP4 (the encoder is
    deterministic)."""
    path = tmp_path / "a.m4a"
    command = ["ffmpeg", "-v", "error", "-f", "lavfi"]
    command += ["-i", "sine=frequency=440:duration=1:sample_rate=44100", "-ac", "1"]
    subprocess.run([*command, "-c:a", "aac", str(path)], check=True)
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


@pytest.mark.parametrize("packet_size", [1400, 120])  # 120: every AU in fragments
def test_ffmpeg_mpeg4_generic(tmp_path: Path, packet_size: int) -> None:
    options = ["-c:a", "aac", "-pkt_size", str(packet_size)]
    packets, fmtp = capture_ffmpeg_rtp(tmp_path, *options)
    assert fmtp["mode"] == "AAC-hbr"
    depacketizer = Mpeg4GenericDepacketizer.from_fmtp(fmtp)
    units = push_all(depacketizer, packets)
    # ffmpeg's AAC packetizer does not send the AUs it still buffers when the input ends.
    expected = mp4_packets(tmp_path)
    assert len(expected) - 8 < len(units) <= len(expected)
    assert [unit.data for unit in units] == expected[: len(units)]
    assert [unit.timestamp - units[0].timestamp for unit in units] == [
        1024 * n for n in range(len(units))
    ]
    assert (depacketizer.lost_packets, depacketizer.unsupported_packets) == (0, 0)
    if packet_size == 1400:
        assert len(packets) < len(expected)  # several AUs a packet
    else:
        assert len(packets) > len(expected)  # AUs in fragments


@pytest.mark.parametrize("packet_size", [1400, 120])
def test_ffmpeg_latm(tmp_path: Path, packet_size: int) -> None:
    options = ["-c:a", "aac", "-rtpflags", "latm", "-pkt_size", str(packet_size)]
    packets, fmtp = capture_ffmpeg_rtp(tmp_path, *options)
    config = latm_config(bytes.fromhex(fmtp["config"]))
    assert config.asc == bytes.fromhex("1208")  # AAC-LC, 44.1 kHz, mono
    depacketizer = LatmDepacketizer(config.subframes)
    units = push_all(depacketizer, packets)
    expected = mp4_packets(tmp_path)
    assert [unit.data for unit in units] == expected
    assert [unit.timestamp - units[0].timestamp for unit in units] == [
        1024 * n for n in range(len(expected))
    ]
    assert (depacketizer.lost_packets, depacketizer.unsupported_packets) == (0, 0)


@pytest.mark.parametrize("make", [G711Depacketizer, Mpeg4GenericDepacketizer])
def test_packets_taken_together_give_what_they_give_one_by_one(
    make: type[G711Depacketizer | Mpeg4GenericDepacketizer],
) -> None:
    """push_many reads the usual packet inline; whatever it meets (a loss, a repeat,
    several AUs, a fragment, a malformed packet, the wrap) gives what push gives."""
    au = bytes(range(40))
    if make is G711Depacketizer:
        packets = [rtp(bytes([n]) * 160, n, 2**32 - 480 + 160 * n) for n in range(6)]
        packets += [packets[3], rtp(b"x" * 160, 9, 1600), b"\x80"]
    else:
        packets = [rtp(au_headers([40]) + au, n, 1024 * n) for n in range(4)]
        packets += [
            rtp(au_headers([40, 40]) + au + au, 4, 4096),
            rtp(au_headers([40]) + au[:10], 5, 6144),
            rtp(au_headers([40]) + au[10:], 6, 6144, marker=True),
            rtp(au_headers([40]) + au, 8, 8192),
            packets[1],
            b"\x80\x61",
        ]
    one_by_one, together = make(), make()
    expected = [unit for packet in packets for unit in one_by_one.push(packet)]
    assert together.push_many(packets) == expected
    assert len(expected) >= 6
    assert (together.lost_packets, together.unsupported_packets) == (
        one_by_one.lost_packets,
        one_by_one.unsupported_packets,
    )
