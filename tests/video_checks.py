"""Independent readers of MKV files for the tests: ffprobe (Debian's FFmpeg) and mkvinfo
(mkvtoolnix)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def ffprobe_video(path: Path) -> dict[str, Any]:
    """The first video stream as ffprobe sees it, with every frame counted."""
    out = subprocess.run(
        [
            "ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
            "-show_entries", "stream=codec_name,width,height,nb_read_frames",
            "-of", "json", str(path),
        ],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    (stream,) = json.loads(out)["streams"]
    return dict(stream)


def ffprobe_streams(path: Path) -> list[dict[str, object]]:
    """Every stream of a file as ffprobe sees it."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    streams: list[dict[str, object]] = json.loads(out)["streams"]
    return streams


def mkvinfo_lines(path: Path) -> list[str]:
    """mkvinfo's verbose listing (every cluster and block)."""
    return subprocess.run(
        ["mkvinfo", "-v", str(path)], check=True, capture_output=True, text=True, timeout=60
    ).stdout.splitlines()


def ffprobe_duration(path: Path) -> float:
    """The file's duration in seconds as ffprobe's format reader states it."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return float(json.loads(out)["format"]["duration"])
