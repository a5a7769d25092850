"""Recordings with sound for the audio tests, and an independent check of what came out:
the video flashes white and the audio beeps at the same, irregular instants, so a
decoder (PyAV: FFmpeg's) can tell how far apart the two tracks play."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np

#: When the picture flashes and the sound beeps (s from the start), for 0.1 s each:
#: irregular, so tracks shifted by a whole interval cannot look aligned.
EVENTS_S = (0.5, 1.3, 2.6, 3.2, 4.5, 5.1, 6.4, 7.0)
FPS = 30
#: ffmpeg's encoder and sampling rate per kind of audio, and the container.
AUDIO = {
    "aac": ("aac", 48_000, ".mp4"),
    "pcma": ("pcm_alaw", 8_000, ".mov"),
    "pcmu": ("pcm_mulaw", 8_000, ".mov"),
    "opus": ("libopus", 48_000, ".mkv"),
    "adts": ("aac", 48_000, ".ts"),
}


def flash_beep_file(directory: Path, audio: str, seconds: float = 8.0) -> Path:
    """H.264 (one keyframe a second, no B-frames) with ``audio`` (a key of AUDIO)."""
    encoder, rate, suffix = AUDIO[audio]
    path = directory / f"flash-beep-{audio}{suffix}"
    on = "+".join(f"between(t,{at},{at + 0.1})" for at in EVENTS_S)
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"color=c=black:s=320x240:r={FPS}:d={seconds}",
            "-f", "lavfi", "-i", f"aevalsrc='({on})*0.8*sin(2*PI*1000*t)':s={rate}:d={seconds}",
            "-vf", f"drawbox=c=white:t=fill:enable='{on}'",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-bf", "0",
            "-x264-params", f"keyint={FPS}:min-keyint={FPS}:scenecut=0",
            "-c:a", encoder, "-ac", "1", "-ar", str(rate), str(path),
        ],
        check=True,
        timeout=120,
    )  # fmt: skip
    return path


def video_onsets_ms(path: Path) -> list[float]:
    """When the picture turns white (ms, on the file's timeline)."""
    onsets, lit = [], False
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            bright = frame.to_ndarray(format="gray").mean() > 128
            if bright and not lit and frame.time is not None:
                onsets.append(frame.time * 1000)
            lit = bright
    return onsets


def audio_onsets_ms(path: Path) -> list[float]:
    """When a beep begins (ms): the first loud sample after 50 ms of quiet."""
    onsets: list[float] = []
    last_loud: float | None = None
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            if frame.time is None:
                continue
            samples = frame.to_ndarray().astype(np.float64).reshape(-1)
            if frame.format.name.startswith("s16"):
                samples /= 32768
            loud = np.flatnonzero(np.abs(samples) > 0.2)
            for index in loud:
                at = (frame.time + index / frame.sample_rate) * 1000
                if last_loud is None or at - last_loud > 50:
                    onsets.append(at)
                last_loud = at
    return onsets


def assert_aligned(path: Path, tolerance_ms: float = 100, at_least: int = 3) -> None:
    """Every flash in ``path`` has its beep within ``tolerance_ms``, at least
    ``at_least`` times (the first and last events may fall outside what was stored)."""
    flashes, beeps = video_onsets_ms(path), audio_onsets_ms(path)
    matched = 0
    for flash in flashes:
        nearest = min((abs(beep - flash) for beep in beeps), default=float("inf"))
        assert nearest <= tolerance_ms, f"flash at {flash:.0f} ms: no beep within {nearest:.0f}"
        matched += 1
    assert matched >= at_least, f"only {matched} flashes ({flashes}) against beeps {beeps}"
