"""An object's key, content type and metadata, from its record alone: the same record
always has the same key, which is what lets a multipart upload resume.

The record's meta (what the camera wrote with a snapshot, or the clip command) names
its kind, camera, event, content type and extension; the key template of the sink
takes those, the device, the capture time and the record's id.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import NamedTuple

from edge_agent.records import LeasedRecord


class ObjectKey(NamedTuple):
    key: str
    content_type: str
    metadata: dict[str, str]


def object_key(template: str, record: LeasedRecord, device: str) -> ObjectKey:
    try:
        meta = json.loads(record.meta or "{}")
    except ValueError:
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    at = datetime.fromtimestamp(record.captured_at_ms / 1000, UTC)
    event = meta.get("event")
    fields = {
        "device": _safe(device or "device"),
        "camera": _safe(str(meta.get("camera") or record.partition_key or "none")),
        "kind": _safe(str(meta.get("kind") or "object")),
        "event": "none" if event is None else _safe(str(event)),
        "date": at.strftime("%Y-%m-%d"),
        "time": at.strftime("%H%M%S.") + f"{at.microsecond // 1000:03d}Z",
        "id": str(record.id),
        "extension": _safe(str(meta.get("extension") or "bin")),
    }
    metadata = {
        name: str(value)
        for name, value in meta.items()
        if name in ("camera", "kind", "event", "width", "height", "from_ms", "to_ms")
        and value is not None
    }
    metadata["captured-at"] = at.isoformat(timespec="milliseconds")
    content_type = str(meta.get("content_type") or "application/octet-stream")
    return ObjectKey(template.format_map(fields), content_type, metadata)


def _safe(text: str) -> str:
    """A key segment: no '/' of its own, nothing S3 or a shell would trip on."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)[:100] or "_"
