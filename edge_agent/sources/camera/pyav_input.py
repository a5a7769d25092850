"""Opening a camera with PyAV (FFmpeg): the options each kind of source takes, and how
a file read faster than real time is placed in time."""

from __future__ import annotations

from typing import Any

from edge_agent.config.cameras import CameraConfig


def backdate_ms(settings: CameraConfig, container: Any) -> int | None:
    """A file read faster than real time: its duration (0 if unknown: the frames then
    start now and are paced); None for every other source."""
    if settings.source != "file" or settings.realtime:
        return None
    duration = container.duration  # microseconds, or None
    return int(duration // 1000) if duration else 0


def open_with_pyav(settings: CameraConfig) -> Any:
    import av

    options = dict(settings.extra_options)
    fmt: str | None = None
    if settings.source == "rtsp":
        options.setdefault("rtsp_transport", "tcp")
    elif settings.source == "v4l2":
        fmt = "v4l2"
        if settings.video_size:
            options["video_size"] = settings.video_size
        if settings.framerate:
            options["framerate"] = str(settings.framerate)
        if settings.input_format:
            options["input_format"] = settings.input_format
    elif settings.source == "lavfi":
        fmt = "lavfi"
    return av.open(
        settings.url,
        format=fmt,
        options=options,
        timeout=(settings.connect_timeout, settings.stall_timeout),
    )
