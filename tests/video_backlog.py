"""A video backlog for the bandwidth tests and the replay benchmark: real H.264
fragments (one second each, encoded once with PyAV) spooled as a camera would."""

from __future__ import annotations

import base64
import json
import time
from fractions import Fraction

import av

from edge_agent.media import h264
from edge_agent.media.mkv import H264, Frame, cluster
from edge_agent.records import Record
from edge_agent.spool.store import Spool

FPS = 30


def encode_one_second(
    bitrate: int = 8_000_000,
) -> tuple[h264.ParameterSets, list[bytes]]:
    """One second of noisy 640x360 video at about ``bitrate`` bit/s: AVCC frames."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 640, 360, "yuv420p"
    encoder.time_base, encoder.framerate = Fraction(1, FPS), Fraction(FPS)
    encoder.gop_size, encoder.max_b_frames, encoder.bit_rate = FPS, 0, bitrate
    encoder.options = {"preset": "ultrafast", "x264-params": f"keyint={FPS}:scenecut=0"}
    source = av.open(f"testsrc2=size=640x360:rate={FPS},noise=alls=40:allf=t", format="lavfi")
    units: list[list[h264.NalUnit]] = []
    for index, frame in enumerate(source.decode(video=0)):
        if index == FPS:
            break
        frame.pts = index
        units += [h264.split_annexb(bytes(p)) for p in encoder.encode(frame)]
    units += [h264.split_annexb(bytes(p)) for p in encoder.encode(None)]
    source.close()
    sets = h264.parameter_sets([u for frame in units for u in frame])
    if sets is None:
        raise RuntimeError("libx264 gave no SPS/PPS")
    return sets, [h264.to_avcc(frame) for frame in units]


def fill_backlog(
    spool: Spool,
    video: tuple[h264.ParameterSets, list[bytes]],
    fragments: int,
    queue: str = "video",
    *,
    start_ms: int | None = None,
) -> None:
    """``fragments`` one-second fragments, times increasing, as a camera would spool them
    (the last one a second ago, unless ``start_ms`` says when the first begins)."""
    sets, frames = video
    meta = json.dumps({
        "camera": "cam", "frames": FPS, "duration_ms": 967, "codec_id": H264,
        "codec_private": base64.b64encode(sets.avcc_record()).decode(),
        "width": 640, "height": 360,
    })  # fmt: skip
    start = int(time.time() * 1000) - fragments * 1000 if start_ms is None else start_ms
    for number in range(fragments):
        at = start + number * 1000
        clip = [Frame(at + i * 1000 // FPS, i == 0, data) for i, data in enumerate(frames)]
        spool.append([Record(queue, "cam", at, cluster(clip), meta)])
