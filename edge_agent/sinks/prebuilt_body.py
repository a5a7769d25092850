"""Put requests whose JSON body the sink writes itself, sent through boto3.

botocore serializes a PutRecords of 500 records by walking them as Python objects,
base64-encoding each blob and then JSON-encoding the whole, which scans megabytes of
base64 text for characters to escape: about a tenth of the agent's CPU when it forwards
aggregated records. A sink knows the exact shape of its put bodies (records of base64
data and ASCII-safe keys), so it writes the bytes directly; boto3 still does the rest:
endpoint, headers, SigV4 signing, the budget's metering on ``before-sign``, error
handling and parsing the answer.

How: the call carries the body in the extra parameter ``PrebuiltBody``. A
``before-parameter-build`` handler moves it from the parameters into the request context
(so botocore serializes only the small parameters left), and a ``before-call`` handler
puts it in place of the serialized body before the request is signed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from typing import Any

#: The extra parameter that carries a prebuilt body into a client call.
PREBUILT_BODY = "PrebuiltBody"
_CONTEXT_KEY = "edge_agent_prebuilt_body"


def install(client: Any, operation: str) -> None:
    """Let ``operation`` calls on ``client`` take a ``PrebuiltBody``."""
    service_id = client.meta.service_model.service_id.hyphenize()

    def take(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        body = params.pop(PREBUILT_BODY, None)
        if body is not None:
            context[_CONTEXT_KEY] = body

    def put(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        body = context.pop(_CONTEXT_KEY, None)
        if body is not None:
            params["body"] = body

    client.meta.events.register(f"before-parameter-build.{service_id}.{operation}", take)
    client.meta.events.register(f"before-call.{service_id}.{operation}", put)


def json_string(text: str) -> bytes:
    """A JSON string literal (non-ASCII escaped), as bytes."""
    return json.dumps(text).encode()


def records_body(head: dict[str, str], records: Iterable[Sequence[bytes]]) -> bytearray:
    """``{<head>, "Records": [<records>]}``: each record a JSON object given as the
    pieces of its text. The body grows in place as the records' pieces come (they are
    made one record at a time), so building it holds the body and one record's base64,
    not every piece and then their join: twice a 1 MiB request's 1.4 MiB. botocore
    signs and urllib3 sends a bytearray as it is (a bytes-like body)."""
    body = bytearray(b"{")
    for name, value in head.items():
        body += b"%b:%b," % (json_string(name), json_string(value))
    body += b'"Records":['
    separator = b""
    join = b"".join
    for record in records:
        body += separator
        body += join(record)
        separator = b","
    body += b"]}"
    return body


def data_record(data: bytes, *fields: bytes) -> tuple[bytes, ...]:
    """The pieces of ``{"Data":"<base64>"<fields>}``; each field starts with a comma."""
    return (b'{"Data":"', base64.b64encode(data), b'"', *fields, b"}")
