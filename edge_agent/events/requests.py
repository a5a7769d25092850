"""Requests from the command line to the running agent: a manual event
(``edge-agent event CAMERA``), a clip to upload (``edge-agent clip --upload``).

The spool has one writing process, the agent; a command does not open it for writing.
It drops a request file into ``<spool>.requests/`` instead (written beside, synced,
then renamed into place, so the agent never reads half of one), and the agent's event
keeper takes it within a second: it does what the file asks in one spool transaction
that also remembers the request's id, and deletes the file after the commit. A crash
in between leaves the file, and the id keeps the second pass from doing it twice.
Requests wait while the agent is stopped.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_agent.errors import EdgeAgentError

#: Request files larger than this are not read (a request is a few hundred bytes).
MAX_REQUEST_BYTES = 64 * 1024


class RequestError(EdgeAgentError):
    """A request could not be written (no permission, no room)."""

    retryable = True


def directory_for(spool_path: Path) -> Path:
    return spool_path.with_name(spool_path.name + ".requests")


def submit(spool_path: Path, kind: str, body: dict[str, Any]) -> str:
    """Write a request for the agent; returns its id."""
    directory = directory_for(spool_path)
    request_id = uuid.uuid4().hex
    content = json.dumps({"id": request_id, "kind": kind, **body}).encode()
    try:
        directory.mkdir(mode=0o770, exist_ok=True)
        temporary = directory / f".{request_id}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, directory / f"{kind}-{request_id}.json")
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as err:
        raise RequestError(f"cannot write a request into {directory}: {err.strerror}") from err
    return request_id


class Request:
    def __init__(self, path: Path, body: dict[str, Any]) -> None:
        self.path = path
        self.body = body

    @property
    def id(self) -> str:
        return str(self.body.get("id", self.path.stem))

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    def done(self) -> None:
        """Delete the file (after its work committed)."""
        self.path.unlink(missing_ok=True)


def pending(spool_path: Path) -> Iterator[Request | tuple[Path, str]]:
    """The requests waiting, oldest first; a file that cannot be read comes as (path,
    reason), for the caller to report and move aside."""
    directory = directory_for(spool_path)
    try:
        entries = sorted(
            (entry for entry in os.scandir(directory) if entry.name.endswith(".json")),
            key=lambda entry: entry.stat().st_mtime_ns,
        )
    except FileNotFoundError:
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            if entry.stat().st_size > MAX_REQUEST_BYTES:
                raise ValueError(f"larger than {MAX_REQUEST_BYTES} bytes")
            body = json.loads(path.read_bytes())
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            yield path, str(err)
            continue
        yield Request(path, body)


def set_aside(path: Path) -> None:
    """A request that cannot be done: kept as ``*.bad`` for the operator."""
    try:
        os.replace(path, path.with_suffix(".bad"))
    except OSError:
        path.unlink(missing_ok=True)
