"""The options of an "s3" sink (objects in an S3 bucket: snapshots, clips): declarations
only."""

from __future__ import annotations

import re
import string

from edge_agent.config.options import DURATION, SIZE, STRING, Check, Table, option, section
from edge_agent.config.sink_kinds import DeliveryConfig, SinkKind

#: S3's part sizes: at least 5 MiB (but the last), at most 5 GiB; at most 10,000 parts.
MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PART_BYTES = 5 * 1024**3
MAX_PARTS = 10_000
#: What a key template may name (sinks/s3/keys.py fills them in).
KEY_FIELDS = ("device", "camera", "kind", "event", "date", "time", "id", "extension")
DEFAULT_KEY = "{device}/{camera}/{kind}/{date}/{time}-{event}-{id}.{extension}"

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _bucket(name: str) -> str | None:
    if _BUCKET.match(name) and ".." not in name:
        return None
    return f"{name!r} is not a bucket name (3-63 of a-z 0-9 . -, starting and ending alnum)"


def _key_template(template: str) -> str | None:
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        return f"not a key template: {err}"
    unknown = sorted(set(fields) - set(KEY_FIELDS))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)} (one of {', '.join(KEY_FIELDS)})"
    if "id" not in fields:
        return "must contain {id}, so that every object has a key of its own"
    return None


@section
class S3Options:
    """Objects in an S3 bucket: one per record (a snapshot, a clip)."""

    bucket: str = option(kind=STRING, check=Check("an S3 bucket name", _bucket), doc="The bucket.")
    key: str = option(
        kind=STRING,
        default=DEFAULT_KEY,
        check=Check("a key template", _key_template),
        doc="Each object's key: {device}, {camera}, {kind} (snapshot, clip), {event} (the "
        'event id, or "none"), {date} (YYYY-MM-DD, UTC), {time} (HHMMSS.mmmZ of its '
        "capture), {id} (the record's, required: keys never collide), {extension}.",
    )
    multipart_threshold: int = option(
        kind=SIZE,
        default=16 * 1024 * 1024,
        doc="Objects from this size up go as multipart uploads (resumed part by part "
        "after a failure or a restart).",
    )
    part_size: int = option(
        kind=SIZE, default=8 * 1024 * 1024, doc="The parts of a multipart upload (at least 5MiB)."
    )
    abandon_after: float = option(
        kind=DURATION,
        default=86_400.0,
        doc="Multipart uploads under the key's fixed prefix that were started longer ago "
        "than this and never finished (their record was dead-lettered or purged) are "
        "aborted when the sink starts, so no orphan parts are stored for longer.",
    )
    storage_class: str | None = option(
        kind=STRING,
        default=None,
        default_doc="the bucket's default (STANDARD)",
        doc='The objects\' storage class ("STANDARD_IA", "INTELLIGENT_TIERING", ...).',
    )


def _check(
    table: Table, options: S3Options, max_record_bytes: int, delivery: DeliveryConfig | None
) -> None:
    if not MIN_PART_BYTES <= options.part_size <= MAX_PART_BYTES:
        table.problem("part_size", "must be between 5MiB and 5GiB")
    elif max_record_bytes > options.part_size * MAX_PARTS:
        table.problem(
            "part_size", "too small for max_record_bytes: an upload has at most 10,000 parts"
        )
    if options.multipart_threshold < MIN_PART_BYTES:
        table.problem("multipart_threshold", "must be at least 5MiB (S3's smallest part)")


def key_prefix(template: str) -> str:
    """The part of every key before its first field (where orphan uploads are looked
    for)."""
    return template.split("{", 1)[0]


S3 = SinkKind(
    doc="Amazon S3 (PutObject; multipart upload for large objects): snapshots and clips.",
    options=S3Options,
    max_record_bytes=64 * 1024 * 1024,
    # A request is one object; the forwarder leases one object per request in flight.
    max_request_bytes=64 * 1024 * 1024,
    request_bytes_limit=5 * 1024**3,
    aws=True,
    priority=5,
    check=_check,
)
