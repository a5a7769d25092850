"""RTP -> H.265 pictures (RFC 7798) from a real x265 stream of two slice segments per
picture, packetized here: single NAL unit packets, aggregation packets (AP) for the
VPS, SPS and PPS, fragmentation units (FU) for slices larger than the payload size.
Header options, markers, lost and repeated packets, sequence and timestamp wraps,
PACI and DONL packets."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from edge_agent.media import h265
from edge_agent.sources.camera.rtp_h265 import AP, FU, PACI, AccessUnit, H265Depacketizer
from tests.rtp_packets import Packetizer, SourceFrame
from tests.test_h265 import hevc_file, read_hevc

_PREFIX = (h265.NAL_VPS, h265.NAL_SPS, h265.NAL_PPS, h265.NAL_AUD, h265.NAL_SEI_PREFIX)


@dataclass
class H265Packetizer(Packetizer):
    """RFC 7798 payloads in the RTP packets of ``tests.rtp_packets.Packetizer``."""

    def _payloads(self, units: tuple[bytes, ...]) -> Iterator[bytes]:
        small = [unit for unit in units if h265.nal_type(unit) in _PREFIX]
        rest = [unit for unit in units if unit not in small]
        if len(small) > 1:  # payload header: F, type 48, the first unit's LayerId and TID
            aggregate = bytes(((small[0][0] & 0x81) | AP << 1, small[0][1]))
            aggregate += b"".join(len(unit).to_bytes(2, "big") + unit for unit in small)
            yield aggregate
        else:
            rest = small + rest
        for unit in rest:
            if len(unit) <= self.max_payload:
                yield unit
                continue
            header = bytes(((unit[0] & 0x81) | FU << 1, unit[1]))
            body = unit[2:]
            step = self.max_payload - 3
            for offset in range(0, len(body), step):
                start = 0x80 if offset == 0 else 0
                end = 0x40 if offset + step >= len(body) else 0
                yield (
                    header
                    + bytes((start | end | h265.nal_type(unit),))
                    + body[offset : offset + step]
                )


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[SourceFrame]:
    path = hevc_file(tmp_path_factory.mktemp("rtp265") / "in.mp4", count=25, slices=2)
    return [SourceFrame(f.timestamp, f.keyframe, f.units) for f in read_hevc(path).frames]


def expected(frame: SourceFrame) -> bytes:
    return h265.to_length_prefixed(list(frame.units))


def depacketize(
    packets: list[bytes], depacketizer: H265Depacketizer | None = None
) -> list[AccessUnit]:
    depacketizer = depacketizer or H265Depacketizer()
    units = [unit for packet in packets for unit in depacketizer.push(packet)]
    last = depacketizer.flush()
    return units + ([last] if last else [])


def packetize(frames: list[SourceFrame], packetizer: Packetizer, offset: int = 0) -> list[bytes]:
    return [packet for frame in frames for packet in packetizer.packets(frame, offset)]


def payload_types(packets: list[bytes]) -> set[int]:
    return {(packet[12] >> 1) & 0x3F for packet in packets}


@pytest.mark.parametrize(
    "packetizer",
    [
        H265Packetizer(),
        H265Packetizer(max_payload=100),  # nearly every slice in FU pieces
        H265Packetizer(csrcs=2, extension_words=3, padding=5),
        H265Packetizer(marker=False),  # a camera that never marks the end of a picture
        H265Packetizer(sequence=0xFFF0),  # the sequence number wraps
    ],
    ids=["plain", "small-mtu", "header-options", "no-marker", "sequence-wrap"],
)
def test_every_picture_comes_out_as_sent(
    frames: list[SourceFrame], packetizer: H265Packetizer
) -> None:
    packets = packetize(frames, packetizer)
    assert len(packets) > len(frames)
    depacketizer = H265Depacketizer()
    units = depacketize(packets, depacketizer)
    assert [unit.data for unit in units] == [expected(frame) for frame in frames]
    assert [unit.keyframe for unit in units] == [frame.keyframe for frame in frames]
    assert [unit.timestamp for unit in units] == [frame.timestamp for frame in frames]
    assert depacketizer.lost_packets == depacketizer.dropped_pictures == 0


def test_aggregation_and_fragmentation_units_were_used(frames: list[SourceFrame]) -> None:
    assert {AP, FU} <= payload_types(packetize(frames, H265Packetizer(max_payload=100)))
    assert len(frames[1].units) == 2  # x265 cut this picture into two slice segments


def test_a_picture_is_complete_when_the_next_begins_whatever_the_markers_say(
    frames: list[SourceFrame],
) -> None:
    depacketizer = H265Depacketizer()
    every_packet_marked = [
        packet[:1] + bytes((packet[1] | 0x80,)) + packet[2:]
        for packet in packetize(frames[:3], H265Packetizer(max_payload=100))
    ]
    units = [unit for packet in every_packet_marked for unit in depacketizer.push(packet)]
    assert [unit.data for unit in units] == [expected(frames[0]), expected(frames[1])]
    last = depacketizer.flush()
    assert last is not None and last.data == expected(frames[2])


def test_parameter_sets_stamped_with_the_previous_picture_go_with_the_next(
    frames: list[SourceFrame],
) -> None:
    second_keyframe = next(i for i, frame in enumerate(frames) if frame.keyframe and i)
    before, keyframe = frames[second_keyframe - 1], frames[second_keyframe]
    sets, pictures = keyframe.units[:3], keyframe.units[3:]
    shuffled = [
        before,
        SourceFrame(before.timestamp, False, sets),  # the same time as the picture before
        SourceFrame(keyframe.timestamp, True, pictures),
    ]
    units = depacketize(packetize(shuffled, H265Packetizer()))
    assert [unit.data for unit in units] == [expected(before), expected(keyframe)]
    assert [unit.keyframe for unit in units] == [False, True]


def test_a_suffix_sei_stays_with_the_picture_it_follows(frames: list[SourceFrame]) -> None:
    suffix = bytes((h265.NAL_SEI_SUFFIX << 1, 1, 0x84, 0x01, 0x00, 0x80))  # a stub payload
    tagged = SourceFrame(frames[1].timestamp, False, (*frames[1].units, suffix))
    units = depacketize(packetize([frames[0], tagged, frames[2]], H265Packetizer()))
    assert [unit.data for unit in units] == [
        expected(frames[0]),
        expected(tagged),
        expected(frames[2]),
    ]


def test_parameter_sets_seen_in_band_are_kept_and_counted(frames: list[SourceFrame]) -> None:
    depacketizer = H265Depacketizer()
    depacketize(packetize(frames, H265Packetizer()), depacketizer)
    vps, sps, pps = frames[0].units[:3]
    assert (depacketizer.vps, depacketizer.sps, depacketizer.pps) == (vps, sps, pps)
    assert depacketizer.parameter_changes == 3  # the same sets again are no change


def test_timestamps_keep_increasing_across_the_32_bit_wrap(frames: list[SourceFrame]) -> None:
    offset = (1 << 32) - frames[10].timestamp - 1  # wraps between frame 10 and 11
    units = depacketize(packetize(frames, H265Packetizer(), offset))
    stamps = [unit.timestamp for unit in units]
    assert stamps == [frame.timestamp + offset for frame in frames]
    assert stamps[11] > 1 << 32


def test_a_piece_lost_in_a_fragmented_slice_drops_that_picture_only(
    frames: list[SourceFrame],
) -> None:
    packetizer = H265Packetizer(max_payload=60)
    packets = packetize(frames[:3], packetizer)
    second_start = len(H265Packetizer(max_payload=60).packets(frames[0]))
    assert (packets[second_start + 1][12] >> 1) & 0x3F == FU
    lost = second_start + 1  # a middle FU piece of the second picture's first slice
    depacketizer = H265Depacketizer()
    units = depacketize(packets[:lost] + packets[lost + 1 :], depacketizer)
    assert [unit.data for unit in units] == [expected(frames[0]), expected(frames[2])]
    assert depacketizer.lost_packets == 1
    assert depacketizer.dropped_pictures == 1


@pytest.mark.parametrize("marker", [True, False], ids=["marked", "unmarked"])
def test_a_loss_between_pictures_drops_the_one_it_may_belong_to(
    frames: list[SourceFrame], marker: bool
) -> None:
    """Losing the first packet of a picture: the picture before it is whole if its last
    packet carried the marker; without markers it may have been that one's last."""
    packetizer = H265Packetizer(max_payload=60, marker=marker)
    packets = packetize(frames[:3], packetizer)
    third_start = sum(len(H265Packetizer(max_payload=60).packets(f)) for f in frames[:2])
    depacketizer = H265Depacketizer()
    units = depacketize(packets[:third_start] + packets[third_start + 1 :], depacketizer)
    kept = [expected(frames[0]), expected(frames[1])] if marker else [expected(frames[0])]
    assert [unit.data for unit in units] == kept
    assert depacketizer.lost_packets == 1
    assert depacketizer.dropped_pictures == (1 if marker else 2)


def test_losing_whole_pictures_keeps_the_next_that_begins_cleanly(
    frames: list[SourceFrame],
) -> None:
    packets = [H265Packetizer(sequence=100 + 50 * i).packets(f) for i, f in enumerate(frames[:4])]
    depacketizer = H265Depacketizer()
    units = depacketize([*packets[0], *packets[3]], depacketizer)
    assert [unit.data for unit in units] == [expected(frames[0]), expected(frames[3])]
    assert depacketizer.lost_packets == 150 - len(packets[0])
    assert depacketizer.dropped_pictures == 0


def test_a_repeated_packet_is_skipped_not_counted_as_65535_lost(
    frames: list[SourceFrame],
) -> None:
    packets = packetize(frames[:3], H265Packetizer(max_payload=100))
    depacketizer = H265Depacketizer()
    units = depacketize([*packets[:5], packets[3], *packets[5:]], depacketizer)
    assert depacketizer.lost_packets == 0
    assert [unit.data for unit in units] == [expected(frame) for frame in frames[:3]]


def test_malformed_and_unsupported_packets_are_skipped_and_counted(
    frames: list[SourceFrame],
) -> None:
    good = packetize(frames[:2], H265Packetizer())
    header = good[0][:12]
    before = ((int.from_bytes(header[2:4], "big") - 1) & 0xFFFF).to_bytes(2, "big")
    paci = bytes((header[0], header[1] & 0x7F)) + before + header[4:] + bytes((PACI << 1, 1, 0, 0))
    bad = [
        b"\x80\x60",  # too short
        b"\x40" + good[0][1:],  # RTP version 1
        bytes((good[0][0] | 0x10,)) + good[0][1:12] + b"\x00\x00\xff\xff",  # extension past end
        paci,  # payload content information
    ]
    depacketizer = H265Depacketizer()
    units = depacketize(bad + good, depacketizer)
    assert depacketizer.malformed_packets == 3
    assert depacketizer.unsupported_packets == 1
    assert [unit.data for unit in units] == [expected(frame) for frame in frames[:2]]


def test_decoding_order_numbers_are_not_supported_and_counted(
    frames: list[SourceFrame],
) -> None:
    packets = packetize(frames[:2], H265Packetizer())
    depacketizer = H265Depacketizer(max_don_diff=2)
    assert depacketize(packets, depacketizer) == []
    assert depacketizer.unsupported_packets == len(packets)
