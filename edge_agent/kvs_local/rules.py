"""The rules kvs-local holds a PutMedia request and its MKV to, with the service's
answers (the facts in /work/shared/reference/kvs-putmedia.md; where the reference gives
no number, the tolerance chosen here is stated and is a setting of the server).

Request-level refusals (HTTP status, ``x-amzn-ErrorType``), before any MKV is read:

    stream name not [a-zA-Z0-9_.-]{1,256}, or "." / ".."   400 InvalidArgumentException
    timecode type neither ABSOLUTE nor RELATIVE               400 InvalidArgumentException
    x-amzn-producer-start-timestamp unparsable (or missing
    with RELATIVE)                                            400 InvalidArgumentException

Fragment-level refusals (an ERROR acknowledgement with the service's ErrorId):

    EBML DocType other than "matroska", laced blocks,
    CodecPrivate that is not avcC / hvcC (Annex-B start codes) 4006 INVALID_MKV_DATA
    a fragment whose producer time is more than MAX_FUTURE_MS
    ahead of this machine's clock, or before EARLIEST_PRODUCER_MS 4007 INVALID_PRODUCER_TIMESTAMP
    a fragment's first frame not later than the previous
    fragment's last frame (same connection)                   4004
    more than 10 tags on a fragment, a name over 128 bytes, a
    value over 256 bytes, a user name starting with "AWS"     4009 FRAGMENT_METADATA_LIMIT_REACHED

Producer times: ABSOLUTE, a fragment's time is its cluster Timecode (ms since the Unix
epoch); RELATIVE, it is x-amzn-producer-start-timestamp + the cluster Timecode. The
reference says only that the service refuses future timestamps and takes past ones
(offline replay); kvs-local allows MAX_FUTURE_MS of clock difference (5 minutes, the
same skew SigV4 tolerates) and refuses anything before 2000-01-01 (a camera whose
clock was never set starts at the 1970 epoch).
"""

from __future__ import annotations

import re

from edge_agent.errors import EndpointRefusal, FormatError
from edge_agent.media import h264
from edge_agent.media.mkv import END_OF_FRAGMENT, H264, H265

STREAM_READ_ERROR = 4000
MAX_FRAGMENT_SIZE_REACHED = 4001
MAX_FRAGMENT_DURATION_REACHED = 4002
FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS = 4004
INVALID_MKV_DATA = 4006
INVALID_PRODUCER_TIMESTAMP = 4007
FRAGMENT_METADATA_LIMIT_REACHED = 4009
TRACK_NUMBER_MISMATCH = 4010
MORE_THAN_ALLOWED_TRACKS_FOUND = 4012

MAX_TRACKS = 3

STREAM_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,256}")
TIMECODE_TYPES = ("ABSOLUTE", "RELATIVE")
DOC_TYPE = "matroska"
#: A producer clock may run this far ahead of ours (ms).
MAX_FUTURE_MS = 5 * 60 * 1000
#: 2000-01-01T00:00:00Z in ms: anything earlier is a clock that was never set.
EARLIEST_PRODUCER_MS = 946_684_800_000
MAX_TAGS_PER_FRAGMENT = 10
MAX_TAG_NAME_BYTES = 128
MAX_TAG_VALUE_BYTES = 256
#: The names producers may write although they start with "AWS" (prefixes).
RESERVED_TAGS = (
    END_OF_FRAGMENT,
    "AWS_KINESISVIDEO_IMAGE_GENERATION",
    "AWS_KINESISVIDEO_IMAGE_PREFIX",
    "AWS_KINESISVIDEO_NOTIFICATION",
)
_TIMESTAMP = re.compile(r"(\d{1,12})(?:\.(\d{1,9}))?")


def _invalid(message: str) -> EndpointRefusal:
    return EndpointRefusal(400, "InvalidArgumentException", message)


def check_stream_name(name: str) -> None:
    """The service's pattern; "." and ".." match it but would name directories here."""
    if not STREAM_NAME.fullmatch(name) or name in (".", ".."):
        raise _invalid(f"stream name {name[:300]!r} does not match [a-zA-Z0-9_.-]{{1,256}}")


def timecode_offset_ms(timecode_type: str, start_timestamp: str | None) -> int:
    """What to add to a cluster Timecode for the fragment's producer time (ms): 0 for
    ABSOLUTE, the start timestamp for RELATIVE. The timestamp is "<seconds>.<ms>"; the C
    producer does not zero-pad the ms (".89" is 89 ms), so up to three digits are ms,
    and a longer fraction is a decimal fraction of a second."""
    if timecode_type not in TIMECODE_TYPES:
        raise _invalid(
            f"x-amzn-fragment-timecode-type {timecode_type[:40]!r} is not ABSOLUTE/RELATIVE"
        )
    if start_timestamp is None:
        if timecode_type == "RELATIVE":
            raise _invalid("RELATIVE timecodes need x-amzn-producer-start-timestamp")
        return 0
    match = _TIMESTAMP.fullmatch(start_timestamp.strip())
    if match is None:
        raise _invalid(f"x-amzn-producer-start-timestamp {start_timestamp[:40]!r} is not a time")
    seconds, fraction = match.group(1), match.group(2) or "0"
    ms = int(fraction) if len(fraction) <= 3 else round(int(fraction) / 10 ** (len(fraction) - 3))
    return int(seconds) * 1000 + ms if timecode_type == "RELATIVE" else 0


def producer_time_problem(time_ms: int, now_ms: int, max_future_ms: int) -> str | None:
    if time_ms < EARLIEST_PRODUCER_MS:
        return f"producer time {time_ms} ms is before 2000-01-01"
    if time_ms > now_ms + max_future_ms:
        return f"producer time {time_ms} ms is {time_ms - now_ms} ms in the future"
    return None


def codec_private_problem(codec_id: str, data: bytes) -> str | None:
    """CodecPrivate must be the decoder configuration record (avcC, hvcC), not the
    parameter sets as Annex-B NAL units."""
    if not data:
        return None
    if data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return "CodecPrivate is Annex-B (start codes), not a decoder configuration record"
    if codec_id == H264:
        try:
            h264.parameter_sets_from_avcc_record(data)
        except FormatError as err:
            return f"CodecPrivate is not avcC: {err}"
    elif codec_id == H265 and (len(data) < 23 or data[0] != 1):
        return "CodecPrivate is not hvcC"
    return None


def tag_problem(name: str, value: str) -> str | None:
    if len(name.encode()) > MAX_TAG_NAME_BYTES:
        return f"tag name of {len(name.encode())} bytes (at most {MAX_TAG_NAME_BYTES})"
    if len(value.encode()) > MAX_TAG_VALUE_BYTES:
        return f"tag value of {len(value.encode())} bytes (at most {MAX_TAG_VALUE_BYTES})"
    if name.startswith("AWS") and not name.startswith(RESERVED_TAGS):
        return f"tag name {name[:40]!r} starts with AWS (reserved)"
    return None
