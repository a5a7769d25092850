"""What a camera read by PyAV meets, as the agent's errors: FFmpeg's errors become
CameraErrors through one table (``pyav_errors``), in FFmpeg's words without the error
number and the URL (which may hold a password)."""

from __future__ import annotations

import functools
import sys

from edge_agent.errors import SourceError


class CameraError(SourceError):
    """PyAV (FFmpeg) could not open or read the camera (``camera_error`` says why)."""


class CameraRefused(CameraError):
    """The camera answered with an error status (401, 403, 404, 5xx), as PyAV reports it."""


class StreamStalled(CameraError):
    """No packet for longer than the stall timeout."""


class PicturesReordered(CameraError):
    """The camera sends B-frames: pictures out of presentation order. Kinesis Video takes
    strictly increasing frame times and no composition offsets, so such a stream cannot
    pass through as it is: the camera decodes and encodes it from then on."""


#: One row of the PyAV table: PyAV's exception types, the camera error they become, and
#: a hint added to FFmpeg's own words (None: none).
PyAvTranslation = tuple[tuple[type[Exception], ...], type[CameraError], str | None]


@functools.cache
def pyav_errors() -> tuple[PyAvTranslation, ...]:
    """The table: PyAV's exceptions -> camera errors, walked in order (the first row
    whose type matches; a subclass comes before its base). Built on first use, when
    PyAV is loaded anyway (a camera read by the built-in RTSP client never loads it)."""
    from av import error

    return (
        (
            (error.HTTPUnauthorizedError,),
            CameraRefused,
            "the camera refused the credentials in the URL",
        ),
        ((error.HTTPClientError, error.HTTPError), CameraRefused, None),
        ((error.EOFError,), CameraError, "the stream ended"),
        # What FFmpeg's RTSP demuxer says, too, when the camera does not answer in time.
        ((error.InvalidDataError,), CameraError, "nothing FFmpeg can read, or not in time"),
        (
            (error.LookupError,),
            CameraError,
            "this FFmpeg has no such codec, format, protocol or option",
        ),
        ((error.FFmpegError,), CameraError, None),
    )


def camera_error(err: Exception) -> SourceError:
    """What a camera met, as a SourceError: the agent's own as they are, PyAV's through
    ``pyav_errors()`` (in FFmpeg's words, without the error number and the URL, which
    may hold a password), anything else (a bug) as a CameraError named by its type."""
    if isinstance(err, SourceError):
        return err
    if "av" in sys.modules:  # PyAV's errors exist once PyAV is loaded
        for types, kind, hint in pyav_errors():
            if isinstance(err, types):
                text = getattr(err, "strerror", None) or type(err).__name__
                return kind(f"{text}: {hint}" if hint else text)
    return CameraError(f"{type(err).__name__}: {err}")
