"""RTP -> H.264 access units: single NAL units, STAP-A and FU-A from a real x264 stream
(packetized by tests/rtp_packets.py), header options, missing markers, lost packets,
timestamp wrap and malformed packets. The integration with a real RTSP server's
packetizer (GStreamer's rtph264pay) is in tests/test_rtsp_client.py."""

from __future__ import annotations

import pytest

from edge_agent.sources.camera.rtp_h264 import AccessUnit, H264Depacketizer
from tests.rtp_packets import Packetizer, SourceFrame, frames_of
from tests.test_camera import h264_file


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[SourceFrame]:
    return frames_of(h264_file(tmp_path_factory.mktemp("rtp") / "in.mp4", seconds=2))


def depacketize(
    packets: list[bytes], depacketizer: H264Depacketizer | None = None
) -> list[AccessUnit]:
    depacketizer = depacketizer or H264Depacketizer()
    units = [unit for packet in packets for unit in depacketizer.push(packet)]
    last = depacketizer.flush()
    return units + ([last] if last else [])


def packetize(frames: list[SourceFrame], packetizer: Packetizer, offset: int = 0) -> list[bytes]:
    return [packet for frame in frames for packet in packetizer.packets(frame, offset)]


@pytest.mark.parametrize(
    "packetizer",
    [
        Packetizer(),
        Packetizer(max_payload=200),  # nearly every slice in FU-A pieces
        Packetizer(csrcs=2, extension_words=3, padding=5),
        Packetizer(marker=False),  # a camera that never marks the end of a picture
        Packetizer(sequence=0xFFF0),  # the sequence number wraps
    ],
    ids=["plain", "small-mtu", "header-options", "no-marker", "sequence-wrap"],
)
def test_every_access_unit_comes_out_as_sent(
    frames: list[SourceFrame], packetizer: Packetizer
) -> None:
    packets = packetize(frames, packetizer)
    assert len(packets) > len(frames)  # STAP-A and FU-A really were used
    units = depacketize(packets)
    assert [unit.data for unit in units] == [frame.avcc for frame in frames]
    assert [unit.keyframe for unit in units] == [frame.keyframe for frame in frames]
    assert [unit.timestamp for unit in units] == [frame.timestamp for frame in frames]


def test_a_picture_is_complete_when_the_next_begins_whatever_the_markers_say(
    frames: list[SourceFrame],
) -> None:
    """Cameras set the marker on every slice, or on parameter sets of their own: a
    picture is everything with its timestamp, complete when the next picture starts."""
    depacketizer = H264Depacketizer()
    every_packet_marked = [
        packet[:1] + bytes((packet[1] | 0x80,)) + packet[2:]
        for packet in packetize(frames[:3], Packetizer())
    ]
    units = [unit for packet in every_packet_marked for unit in depacketizer.push(packet)]
    assert [unit.data for unit in units] == [frames[0].avcc, frames[1].avcc]
    last = depacketizer.flush()
    assert last is not None and last.data == frames[2].avcc


def test_parameter_sets_stamped_with_the_previous_picture_go_with_the_next(
    frames: list[SourceFrame],
) -> None:
    """Some cameras send the SPS and PPS before a keyframe with the time of the picture
    before it: they belong to the keyframe, and a unit of parameter sets alone is no
    frame."""
    second_keyframe = next(i for i, frame in enumerate(frames) if frame.keyframe and i)
    before, keyframe = frames[second_keyframe - 1], frames[second_keyframe]
    sets, pictures = keyframe.units[:2], keyframe.units[2:]
    shuffled = [
        before,
        SourceFrame(before.timestamp, False, sets),  # the same time as the picture before
        SourceFrame(keyframe.timestamp, True, pictures),
    ]
    units = depacketize(packetize(shuffled, Packetizer()))
    assert [unit.data for unit in units] == [before.avcc, keyframe.avcc]
    assert [unit.keyframe for unit in units] == [False, True]


def test_parameter_sets_seen_in_band_are_kept_and_counted(frames: list[SourceFrame]) -> None:
    depacketizer = H264Depacketizer()
    depacketize(packetize(frames, Packetizer()), depacketizer)
    keyframe = frames[0]
    assert depacketizer.sps == keyframe.units[0]
    assert depacketizer.pps == keyframe.units[1]
    assert depacketizer.parameter_changes == 2  # the same sets again are no change


def test_timestamps_keep_increasing_across_the_32_bit_wrap(frames: list[SourceFrame]) -> None:
    offset = (1 << 32) - frames[10].timestamp - 1  # wraps between frame 10 and 11
    units = depacketize(packetize(frames, Packetizer(), offset))
    stamps = [unit.timestamp for unit in units]
    assert stamps == [frame.timestamp + offset for frame in frames]
    assert stamps[11] > 1 << 32


def test_a_lost_piece_loses_its_unit_only_and_is_counted(frames: list[SourceFrame]) -> None:
    packets = packetize(frames[:3], Packetizer(max_payload=200))
    second_frame_start = len(Packetizer(max_payload=200).packets(frames[0]))
    lost = second_frame_start + 1  # a middle FU-A piece of the second picture
    depacketizer = H264Depacketizer()
    units = depacketize(packets[:lost] + packets[lost + 1 :], depacketizer)
    assert depacketizer.lost_packets == 1
    assert len(frames[1].units) == 2  # x264 cut this picture into two slices
    damaged = SourceFrame(frames[1].timestamp, False, frames[1].units[1:])
    assert [unit.data for unit in units] == [frames[0].avcc, damaged.avcc, frames[2].avcc]


def test_a_repeated_packet_is_skipped_not_counted_as_65535_lost(
    frames: list[SourceFrame],
) -> None:
    packets = packetize(frames[:3], Packetizer())
    depacketizer = H264Depacketizer()
    units = depacketize([*packets[:5], packets[3], *packets[5:]], depacketizer)
    assert depacketizer.lost_packets == 0
    assert [unit.data for unit in units] == [frame.avcc for frame in frames[:3]]


def test_malformed_and_unsupported_packets_are_skipped_and_counted(
    frames: list[SourceFrame],
) -> None:
    packetizer = Packetizer()
    good = packetize(frames[:2], packetizer)
    header = good[0][:12]
    before = ((int.from_bytes(header[2:4], "big") - 1) & 0xFFFF).to_bytes(2, "big")
    fu_b = bytes((header[0], header[1] & 0x7F)) + before + header[4:] + bytes((29, 0x85, 0))
    bad = [
        b"\x80\x60",  # too short
        b"\x40" + good[0][1:],  # RTP version 1
        bytes((good[0][0] | 0x10,)) + good[0][1:12] + b"\x00\x00\xff\xff",  # extension past end
        fu_b,  # FU-B (interleaved mode only)
    ]
    depacketizer = H264Depacketizer()
    units = depacketize(bad + good, depacketizer)
    assert depacketizer.malformed_packets == 3
    assert depacketizer.unsupported_packets == 1
    assert [unit.data for unit in units] == [frame.avcc for frame in frames[:2]]
