"""The S3 sink: one object per record (a camera's snapshot, an exported clip).

A request is one object. Below ``multipart_threshold`` it is one PutObject; from there
up, a multipart upload of ``part_size`` parts. Its key comes from the record alone
(``keys.py``), so a retry, or the agent after a restart, finds the upload it began:
ListMultipartUploads under the key, ListParts, and every part already there whose size
and ETag (the MD5 of its bytes) match is not sent again. What a dead-lettered or purged
record leaves behind is aborted at the next start once older than ``abandon_after``
(and a bucket lifecycle rule, AbortIncompleteMultipartUpload, is the backstop: see
docs/EVENTS.md).

Errors are the forwarder's (sinks/aws.py): NoSuchBucket and AccessDenied pause the
sink with the reason, throttling (SlowDown) and 5xx back off.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from edge_agent.config.sinks import SinkConfig
from edge_agent.delivery.budget import Budget
from edge_agent.errors import SinkError
from edge_agent.records import LeasedRecord
from edge_agent.runtime_status import SinkFields
from edge_agent.sinks.aws import TimedClients, WireMeter
from edge_agent.sinks.base import Entry, Outcome, Packed, Request, Sent
from edge_agent.sinks.s3.keys import ObjectKey, object_key
from edge_agent.sinks.s3.options import key_prefix

log = logging.getLogger(__name__)


class S3Sink:
    kind = "s3"
    ordered = False
    aggregating = False
    needs_meta = True  # the object's kind, camera, event and content type

    def __init__(
        self, config: SinkConfig, budget: Budget, stop: threading.Event, *, device: str = ""
    ) -> None:
        assert config.s3 is not None and config.aws is not None
        self.name = config.name
        self.options = config.s3
        self.target = config.s3.bucket
        self.max_record_bytes = config.max_record_bytes
        self._device = device
        self.wire = WireMeter()
        self.clients = TimedClients("s3", config.aws, budget, stop, self.wire, name=config.name)
        self._swept = False
        self.objects = 0
        self.multipart_uploads = 0
        self.parts_resumed = 0
        self.orphans_aborted = 0

    # ------------------------------------------------------------------ the contract

    def pack(self, candidates: Sequence[LeasedRecord], now: float) -> Packed:
        packed = Packed(None)
        for record in candidates:
            if len(record.payload) > self.max_record_bytes:
                packed.rejected.append(
                    (
                        record,
                        f"object of {len(record.payload)} bytes; the sink takes at most "
                        f"{self.max_record_bytes} (max_record_bytes)",
                    )
                )
                continue
            packed.request = Request([Entry([record], record.payload)])
            break
        return packed

    def plain_entries(self, records: Sequence[LeasedRecord]) -> list[Entry]:
        return [Entry([record], record.payload) for record in records]

    def rebuild(self, entry: Entry, records: Sequence[LeasedRecord]) -> Entry:
        (record,) = records  # an object's entry keeps its data (its record's payload)
        return Entry([record], record.payload)

    def transmit(self, request: Request) -> Any:
        (entry,) = request.entries
        (record,) = entry.records
        key = object_key(self.options.key, record, self._device)
        if len(entry.data) < self.options.multipart_threshold:
            self.clients.call("put_object", self._put_params(key, entry.data), items=1)
        else:
            self._multipart(key, entry.data)
        return key

    def outcomes(self, request: Request, answer: Any) -> list[Outcome]:
        self.objects += 1
        return [Sent(None, str(answer.key))]

    def ready(self) -> SinkError | None:
        problem = self.clients.ready()
        if problem is None and not self._swept:
            self._swept = True
            self._abort_abandoned()
        return problem

    def snapshot(self) -> SinkFields:
        return {
            "bucket": self.target,
            "objects": self.objects,
            "multipart_uploads": self.multipart_uploads,
            "parts_resumed": self.parts_resumed,
            "orphan_uploads_aborted": self.orphans_aborted,
            "wire_bytes": self.wire.bytes,
            "request_timeout": self.clients.timeout.snapshot(),
        }

    def close(self) -> None:
        self.clients.close()

    # ------------------------------------------------------------------ uploads

    def _put_params(self, key: ObjectKey, data: bytes) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": self.target, "Key": key.key, "Body": data}
        return params | self._object_params(key)

    def _object_params(self, key: ObjectKey) -> dict[str, Any]:
        params: dict[str, Any] = {"ContentType": key.content_type, "Metadata": key.metadata}
        if self.options.storage_class:
            params["StorageClass"] = self.options.storage_class
        return params

    def _multipart(self, key: ObjectKey, data: bytes) -> None:
        """One object in parts, resuming an upload of the same key begun before."""
        bucket, size = self.target, self.options.part_size
        upload_id, done = self._resumable(key.key)
        if upload_id is None:
            created = self.clients.call(
                "create_multipart_upload",
                {"Bucket": bucket, "Key": key.key, **self._object_params(key)},
            )
            upload_id = str(created["UploadId"])
            self.multipart_uploads += 1
        view = memoryview(data)
        parts: list[dict[str, Any]] = []
        for number, start in enumerate(range(0, len(data), size), start=1):
            chunk = view[start : start + size]
            etag = f'"{hashlib.md5(chunk, usedforsecurity=False).hexdigest()}"'
            if done.get(number) == (len(chunk), etag):
                self.parts_resumed += 1
            else:
                answer = self.clients.call(
                    "upload_part",
                    {
                        "Bucket": bucket,
                        "Key": key.key,
                        "UploadId": upload_id,
                        "PartNumber": number,
                        "Body": bytes(chunk),
                    },
                    items=1,
                )
                etag = str(answer["ETag"])
            parts.append({"PartNumber": number, "ETag": etag})
        self.clients.call(
            "complete_multipart_upload",
            {
                "Bucket": bucket,
                "Key": key.key,
                "UploadId": upload_id,
                "MultipartUpload": {"Parts": parts},
            },
        )

    def _resumable(self, key: str) -> tuple[str | None, dict[int, tuple[int, str]]]:
        """An upload of ``key`` begun before (the newest), and its parts: number ->
        (size, ETag)."""
        answer = self.clients.call("list_multipart_uploads", {"Bucket": self.target, "Prefix": key})
        uploads = [u for u in answer.get("Uploads") or [] if u.get("Key") == key]
        if not uploads:
            return None, {}
        upload = max(uploads, key=lambda u: u.get("Initiated") or datetime.min.replace(tzinfo=UTC))
        upload_id = str(upload["UploadId"])
        parts: dict[int, tuple[int, str]] = {}
        marker = 0
        while True:
            listed = self.clients.call(
                "list_parts",
                {
                    "Bucket": self.target,
                    "Key": key,
                    "UploadId": upload_id,
                    "PartNumberMarker": marker,
                },
            )
            for part in listed.get("Parts") or []:
                parts[int(part["PartNumber"])] = (int(part["Size"]), str(part["ETag"]))
            if not listed.get("IsTruncated"):
                break
            marker = int(listed.get("NextPartNumberMarker") or 0)
        log.info("sink %s: resuming the upload of %s (%d parts there)", self.name, key, len(parts))
        return upload_id, parts

    def _abort_abandoned(self) -> None:
        """Abort multipart uploads under the keys' prefix begun more than
        ``abandon_after`` ago: no record resumes them any more."""
        prefix = key_prefix(self.options.key)
        cutoff = datetime.now(UTC) - timedelta(seconds=self.options.abandon_after)
        try:
            answer = self.clients.call(
                "list_multipart_uploads", {"Bucket": self.target, "Prefix": prefix}
            )
            for upload in answer.get("Uploads") or []:
                initiated = upload.get("Initiated")
                if isinstance(initiated, datetime) and initiated < cutoff:
                    self.clients.call(
                        "abort_multipart_upload",
                        {
                            "Bucket": self.target,
                            "Key": upload["Key"],
                            "UploadId": upload["UploadId"],
                        },
                    )
                    self.orphans_aborted += 1
        except SinkError as err:  # the uploads themselves will say more
            log.warning("sink %s: looking for abandoned uploads failed: %s", self.name, err)
