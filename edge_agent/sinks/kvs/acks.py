"""PutMedia acknowledgements: the event stream the service writes back on the same
connection while the fragments go up.

    {"EventType":"BUFFERING","FragmentTimecode":1700000000000,"FragmentNumber":"9134..."}
    {"EventType":"RECEIVED", ...}   {"EventType":"PERSISTED", ...}
    {"EventType":"ERROR", ..., "ErrorId":4004}   {"EventType":"IDLE"}

Objects arrive newline-separated, but one may be split across HTTP chunks, and
several may share one; the parser takes the bytes as they come and hands out every
complete object. FragmentNumber is a decimal string (too long for a float); IDLE may
have no timecode; unknown keys are ignored. Text that is not an ack is counted and
skipped, never fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum

BUFFERING = "BUFFERING"
RECEIVED = "RECEIVED"
PERSISTED = "PERSISTED"
ERROR = "ERROR"
IDLE = "IDLE"

#: Beyond this, unparsed bytes are garbage, not an ack still arriving.
MAX_PENDING_BYTES = 64 * 1024


class ErrorAction(Enum):
    """What an uploader does with the fragment an ERROR ack names."""

    RETRY = "retry"  # send it again (on a new connection)
    DEAD_LETTER = "dead_letter"  # it can never be accepted as it is
    REPAIR_TIMESTAMPS = "repair_timestamps"  # its time is not after the previous one
    PAUSE = "pause"  # nothing will be accepted until someone acts (stream, KMS)
    RECONNECT = "reconnect"  # the connection is used up; the fragment goes again


#: ErrorId -> (name, action), from the PutMedia API reference and the producer SDKs.
ERRORS: dict[int, tuple[str, ErrorAction]] = {
    4000: ("STREAM_READ_ERROR", ErrorAction.RETRY),
    4001: ("MAX_FRAGMENT_SIZE_REACHED", ErrorAction.DEAD_LETTER),
    4002: ("MAX_FRAGMENT_DURATION_REACHED", ErrorAction.DEAD_LETTER),
    4003: ("MAX_CONNECTION_DURATION_REACHED", ErrorAction.RECONNECT),
    4004: ("FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS", ErrorAction.REPAIR_TIMESTAMPS),
    4005: ("MORE_THAN_ONE_TRACK_FOUND", ErrorAction.DEAD_LETTER),
    4006: ("INVALID_MKV_DATA", ErrorAction.DEAD_LETTER),
    4007: ("INVALID_PRODUCER_TIMESTAMP", ErrorAction.REPAIR_TIMESTAMPS),
    4008: ("STREAM_NOT_ACTIVE", ErrorAction.PAUSE),
    4009: ("FRAGMENT_METADATA_LIMIT_REACHED", ErrorAction.DEAD_LETTER),
    4010: ("TRACK_NUMBER_MISMATCH", ErrorAction.DEAD_LETTER),
    4011: ("FRAMES_MISSING_FOR_TRACK", ErrorAction.DEAD_LETTER),
    4012: ("MORE_THAN_ALLOWED_TRACKS_FOUND", ErrorAction.DEAD_LETTER),
    4500: ("KMS_KEY_ACCESS_DENIED", ErrorAction.PAUSE),
    4501: ("KMS_KEY_DISABLED", ErrorAction.PAUSE),
    4502: ("KMS_KEY_VALIDATION_ERROR", ErrorAction.PAUSE),
    4503: ("KMS_KEY_UNAVAILABLE", ErrorAction.PAUSE),
    4504: ("KMS_KEY_INVALID_USAGE", ErrorAction.PAUSE),
    4505: ("KMS_KEY_INVALID_STATE", ErrorAction.PAUSE),
    4506: ("KMS_KEY_NOT_FOUND", ErrorAction.PAUSE),
    5000: ("INTERNAL_ERROR", ErrorAction.RETRY),
    5001: ("ARCHIVAL_ERROR", ErrorAction.RETRY),
}


def error_name(error_id: int) -> str:
    return ERRORS.get(error_id, (f"ERROR_{error_id}", ErrorAction.RETRY))[0]


def error_action(error_id: int) -> ErrorAction:
    """Unknown 4xxx codes are the fragment's fault; anything else is worth a retry."""
    known = ERRORS.get(error_id)
    if known is not None:
        return known[1]
    return ErrorAction.DEAD_LETTER if 4000 <= error_id < 4500 else ErrorAction.RETRY


@dataclass(frozen=True)
class Ack:
    event_type: str
    fragment_timecode: int | None = None
    fragment_number: str | None = None
    error_id: int | None = None


class AckParser:
    """Feed it the response body as it arrives; it returns the acks completed so far."""

    def __init__(self) -> None:
        self._pending = b""
        self._decoder = json.JSONDecoder()
        self.skipped = 0  # pieces of text that were not acks

    def feed(self, chunk: bytes) -> list[Ack]:
        data = self._pending + chunk
        self._pending = b""
        acks: list[Ack] = []
        position = 0
        while True:
            start = data.find(b"{", position)
            if start < 0:
                if data[position:].strip():
                    self.skipped += 1
                return acks
            if data[position:start].strip():
                self.skipped += 1
            newline = data.find(b"\n", start)
            text = data[start : newline if newline >= 0 else len(data)].decode(
                errors="surrogateescape"
            )
            try:
                value, length = self._decoder.raw_decode(text)
            except ValueError:
                if newline < 0:  # probably not complete yet
                    if len(data) - start <= MAX_PENDING_BYTES:
                        self._pending = data[start:]
                    else:
                        self.skipped += 1
                    return acks
                self.skipped += 1  # a broken line: go on after it
                position = newline + 1
                continue
            position = start + len(text[:length].encode(errors="surrogateescape"))
            ack = _ack(value)
            if ack is None:
                self.skipped += 1
            else:
                acks.append(ack)


def _ack(value: object) -> Ack | None:
    if not isinstance(value, dict) or not isinstance(value.get("EventType"), str):
        return None
    timecode = value.get("FragmentTimecode")
    number = value.get("FragmentNumber")
    error_id = value.get("ErrorId")
    return Ack(
        value["EventType"],
        int(timecode) if isinstance(timecode, int | float) else None,
        str(number) if number is not None else None,
        int(error_id)
        if isinstance(error_id, int | float | str) and str(error_id).isdigit()
        else None,
    )
