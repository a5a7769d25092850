"""What a type of sink declares: its options, its limits, and the option groups it uses.

A type of sink is a folder under ``edge_agent/sinks/`` whose ``options.py`` declares its
options (a :func:`~edge_agent.config.options.section`) and one :class:`SinkKind`; the
registry in :mod:`edge_agent.config.sinks` lists the kinds. The option groups that AWS
sinks share, :class:`AwsEndpoint` and :class:`DeliveryConfig`, are declared here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from edge_agent.config.aws import AwsIdentity
from edge_agent.config.options import (
    DURATION,
    SIZE,
    STRING,
    Check,
    Table,
    integer,
    option,
    read_section,
    section,
    within,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Opts = TypeVar("Opts", bound="DataclassInstance")

#: Records per PutRecords / PutRecordBatch call, for both services.
MAX_REQUEST_RECORDS = 500


_STREAM_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")


def _stream_name(name: str) -> str | None:
    if _STREAM_NAME.match(name):
        return None
    return f"{name!r} is not a stream name (1-128 of a-z A-Z 0-9 _ . -; not an ARN)"


#: The name of a stream or delivery stream (not its ARN).
STREAM_NAME: Check[str] = Check("1-128 of a-z A-Z 0-9 _ . -", _stream_name)


@dataclass(frozen=True)
class SinkKind(Generic[Opts]):
    """A type of sink, as the loader sees it."""

    #: One line for the reference.
    doc: str
    #: Sends its queue somewhere (an uploader is started for it); False: only keeps it.
    sends: bool = True
    #: Its own options (read from the sink's table), or None.
    options: type[Opts] | None = None
    #: The largest record it takes when the config does not say (``max_record_bytes``).
    max_record_bytes: int = 1024 * 1024
    #: Sends records in requests (PutRecords and the like): the default and the largest
    #: ``max_request_bytes``; None: no [delivery] options.
    max_request_bytes: int | None = None
    request_bytes_limit: int = 0
    #: Talks to AWS: the [aws] options apply.
    aws: bool = False
    #: Its default place in the upload budget (``priority``).
    priority: int = 0
    #: Defaults of its options that depend on the sink's ``max_record_bytes``.
    defaults: Callable[[int], Mapping[str, object]] | None = None
    #: Checks across its options and the sink's: (table, options, max_record_bytes,
    #: delivery); problems go to the table.
    check: Callable[[Table, Opts, int, DeliveryConfig | None], None] | None = None
    #: Whether, with these options, it has live traffic apart from its backlog.
    live: Callable[[Opts], bool] | None = None
    #: The default ``max_request_bytes`` when it depends on the options (else
    #: ``max_request_bytes``).
    request_bytes: Callable[[Opts], int] | None = None

    def read_options(self, table: Table, max_record_bytes: int) -> Opts | None:
        if self.options is None:
            return None
        defaults = self.defaults(max_record_bytes) if self.defaults else None
        return read_section(self.options, table, defaults=defaults)

    def check_options(
        self,
        table: Table,
        options: object,
        max_record_bytes: int,
        delivery: DeliveryConfig | None,
    ) -> None:
        if self.check is not None and self.options and isinstance(options, self.options):
            self.check(table, options, max_record_bytes, delivery)

    def default_request_bytes(self, options: object) -> int:
        assert self.max_request_bytes is not None
        if self.request_bytes is None or not self.options or not isinstance(options, self.options):
            return self.max_request_bytes
        return self.request_bytes(options)

    def has_live_traffic(self, options: object) -> bool:
        if self.live is None or not self.options or not isinstance(options, self.options):
            return False
        return self.live(options)


def _endpoint_url(url: str) -> str | None:
    return None if re.match(r"^https?://[^/]+", url) else "must be an http:// or https:// URL"


_TIMEOUT = within(0.1, 600, "must be between 100ms and 10m")


@section
class AwsEndpoint:
    """How to reach an AWS service: region, an optional endpoint override, credentials."""

    region: str | None = option(
        kind=STRING,
        default=None,
        default_doc="AWS_REGION / AWS_DEFAULT_REGION (required if neither is set)",
        doc="AWS region.",
    )
    endpoint_url: str | None = option(
        kind=STRING,
        default=None,
        check=Check("an http:// or https:// URL", _endpoint_url),
        doc="Another endpoint (VPC endpoint, FIPS, a local test service).",
    )
    profile: str | None = option(
        kind=STRING,
        default=None,
        default_doc="the standard credential chain",
        doc="A profile of ~/.aws/config (default: environment, profile, instance or "
        'container role). Only with [aws] credentials = "default".',
    )
    connect_timeout: float = option(
        kind=DURATION, default=5.0, check=_TIMEOUT, doc="Opening a connection."
    )
    request_timeout: float = option(
        kind=DURATION, default=30.0, check=_TIMEOUT, doc="Waiting for an answer."
    )
    request_timeout_max: float | None = option(
        kind=DURATION,
        default=None,
        check=_TIMEOUT,
        default_doc="8 x request_timeout, at most 2m (never below request_timeout)",
        doc="A request that times out doubles the timeout of the next ones, up to this "
        "(a slow link is not sent the same request again and again); quick answers bring "
        "it back to request_timeout step by step. Equal to request_timeout: fixed.",
    )
    #: Where its credentials come from: the ``[aws]`` section, the same for every sink.
    identity: AwsIdentity = AwsIdentity()


@section
class DeliveryConfig:
    """How a forwarding sink batches and retries."""

    max_request_records: int = option(
        kind=integer(1, MAX_REQUEST_RECORDS),
        default=MAX_REQUEST_RECORDS,
        doc="Records per request.",
    )
    max_request_bytes: int = option(
        kind=SIZE,
        default=5 * 1024 * 1024,
        default_doc="kinesis 5MiB (up to 10MiB for streams set to larger records), with "
        "aggregate 512KiB or 4 x aggregate_max_bytes (at most 5MiB); firehose 4MiB",
        doc="Bytes per request (the sum of its records); a record larger than this goes "
        "in a request of its own.",
    )
    retry_min: float = option(
        kind=DURATION,
        default=0.1,
        doc="Backoff for failed records and requests: full jitter, doubling from "
        "retry_min up to retry_max.",
    )
    retry_max: float = option(kind=DURATION, default=30.0, doc="The longest backoff.")
    pause_probe: float = option(
        kind=DURATION,
        default=60.0,
        check=within(1, 86400, "must be between 1s and 1d"),
        doc="After access denied / stream not found / KMS key unusable the sink pauses, "
        "keeps everything and tries again this often.",
    )
    linger: float = option(
        kind=DURATION,
        default=0.5,
        check=within(0, 60, "must be between 0s and 1m"),
        doc="Wait up to this long for more records before sending a request that is not "
        "full (0s sends at once).",
    )


def read_aws(table: Table) -> AwsEndpoint:
    aws = read_section(AwsEndpoint, table)
    if aws.region is None and not (
        os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    ):
        table.problem("region", "is required (or set AWS_REGION in the environment)")
    if aws.request_timeout_max is not None and aws.request_timeout_max < aws.request_timeout:
        table.problem("request_timeout_max", "must not be below request_timeout")
    return aws


def read_delivery(
    table: Table, kind: SinkKind[Opts], max_record_bytes: int, options: object
) -> DeliveryConfig:
    limit = kind.request_bytes_limit
    delivery = read_section(
        DeliveryConfig,
        table,
        defaults={"max_request_bytes": kind.default_request_bytes(options)},
    )
    if not 1 <= delivery.max_request_bytes <= limit:
        table.problem("max_request_bytes", f"must be between 1 byte and {limit} bytes")
    if not 1 <= max_record_bytes <= limit:
        table.problem("max_record_bytes", f"must be between 1 byte and {limit} bytes")
    if not 0.001 <= delivery.retry_min <= delivery.retry_max <= 3600:
        table.problem("retry_max", "needs 1ms <= retry_min <= retry_max <= 1h")
    return delivery
