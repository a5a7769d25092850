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
    A_AAC CodecPrivate not an AudioSpecificConfig: under 2
    bytes, sampling frequency index 13/14 (or 15 without its
    24-bit rate), channel configuration not 1-7 (0, a program
    config element, is refused), an object type without a
    GASpecificConfig (media/audio.py's aac_config)            4006
    A_MS/ACM CodecPrivate not a G.711 WAVEFORMATEX: under 16
    bytes, format tag not 6 (A-law) / 7 (mu-law), channels
    not 1-2, rate not 8000-192000                             4006
    more than 3 track entries                                 4012 MORE_THAN_ALLOWED_TRACKS_FOUND
    a block whose track number is not in TrackInfo            4010 TRACK_NUMBER_MISMATCH
    a fragment whose first block is not a key frame of the
    video track (the first entry of TrackType 1)              4006
    a block earlier than its cluster's Timecode (a negative
    relative timecode)                                        4006 (see below)
    a block of a video track that is not AVCC; an empty block
    of any other track                                        4006
    within a fragment, a block not later than the block before
    it on its own track, or earlier than the block before it
    on any track (equal times across tracks are taken)        4004
    a complete fragment without a frame of every track in
    TrackInfo                                                 4011 FRAMES_MISSING_FOR_TRACK
    a fragment whose producer time is more than MAX_FUTURE_MS
    ahead of this machine's clock, or before EARLIEST_PRODUCER_MS 4007 INVALID_PRODUCER_TIMESTAMP
    a fragment's first frame not later than the previous
    fragment's last frame, of any track (same connection)     4004
    more than 10 tags on a fragment, a name over 128 bytes, a
    value over 256 bytes, a user name starting with "AWS"     4009 FRAGMENT_METADATA_LIMIT_REACHED

Producer times: ABSOLUTE, a fragment's time is its cluster Timecode (ms since the Unix
epoch); RELATIVE, it is x-amzn-producer-start-timestamp + the cluster Timecode. The
reference says only that the service refuses future timestamps and takes past ones
(offline replay); kvs-local allows MAX_FUTURE_MS of clock difference (5 minutes, the
same skew SigV4 tolerates) and refuses anything before 2000-01-01 (a camera whose
clock was never set starts at the 1970 epoch).

Tracks, as the Kinesis Video producer SDK writes them: video is track 1 and audio track
2; the frames of all tracks are interleaved in time order, each track's own times
strictly increase, and a cluster starts with a video key frame. A block before its
cluster's Timecode is refused as INVALID_MKV_DATA rather than 4004: the SDK's MKV
generator treats it as an invalid frame timestamp and never writes one, so it is a
malformed fragment (a frame outside the fragment that carries it), not a fragment or
frame that came after a later one, and re-timing the fragment (what a producer does on
4004) would not make it valid; it needs muxing again.
"""

from __future__ import annotations

import re
import struct

from edge_agent.errors import EndpointRefusal, FormatError
from edge_agent.media import audio, h264
from edge_agent.media.mkv import AAC, END_OF_FRAGMENT, G711, H264, H265

STREAM_READ_ERROR = 4000
MAX_FRAGMENT_SIZE_REACHED = 4001
MAX_FRAGMENT_DURATION_REACHED = 4002
FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS = 4004
INVALID_MKV_DATA = 4006
INVALID_PRODUCER_TIMESTAMP = 4007
FRAGMENT_METADATA_LIMIT_REACHED = 4009
TRACK_NUMBER_MISMATCH = 4010
FRAMES_MISSING_FOR_TRACK = 4011
MORE_THAN_ALLOWED_TRACKS_FOUND = 4012

MAX_TRACKS = 3
#: The G.711 WAVEFORMATEX the producer SDK reads: its first 16 bytes, rates it takes.
WAVEFORMATEX_MIN_BYTES = 16
G711_MIN_HZ = 8000
G711_MAX_HZ = 192_000

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
    parameter sets as Annex-B NAL units; for audio, what the producer SDK writes (an
    AudioSpecificConfig, a G.711 WAVEFORMATEX)."""
    if codec_id in (AAC, G711):
        return _audio_private_problem(codec_id, data)
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


def _audio_private_problem(codec_id: str, data: bytes) -> str | None:
    if codec_id == AAC:
        if len(data) < 2:
            return f"A_AAC CodecPrivate of {len(data)} bytes (an AudioSpecificConfig: at least 2)"
        try:
            audio.aac_config(data)
        except FormatError as err:
            return f"A_AAC CodecPrivate is not an AudioSpecificConfig: {err}"
        return None
    # A_MS/ACM: a WAVEFORMATEX, little-endian; the SDK reads its first 16 bytes.
    if len(data) < WAVEFORMATEX_MIN_BYTES:
        return f"A_MS/ACM CodecPrivate of {len(data)} bytes (a WAVEFORMATEX: at least 16)"
    format_tag, channels, sampling_hz = struct.unpack_from("<HHI", data)
    if format_tag not in (audio.WAVE_FORMAT_ALAW, audio.WAVE_FORMAT_MULAW):
        return f"A_MS/ACM format tag {format_tag} (G.711: 6 A-law, 7 mu-law)"
    if channels not in (1, 2):
        return f"A_MS/ACM with {channels} channels (1 or 2)"
    if not G711_MIN_HZ <= sampling_hz <= G711_MAX_HZ:
        return f"A_MS/ACM sampling rate {sampling_hz} Hz (8000-192000)"
    return None


def tag_problem(name: str, value: str) -> str | None:
    if len(name.encode()) > MAX_TAG_NAME_BYTES:
        return f"tag name of {len(name.encode())} bytes (at most {MAX_TAG_NAME_BYTES})"
    if len(value.encode()) > MAX_TAG_VALUE_BYTES:
        return f"tag value of {len(value.encode())} bytes (at most {MAX_TAG_VALUE_BYTES})"
    if name.startswith("AWS") and not name.startswith(RESERVED_TAGS):
        return f"tag name {name[:40]!r} starts with AWS (reserved)"
    return None
