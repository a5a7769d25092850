"""Where a Kinesis Video stream takes PutMedia, and the credentials to sign it with.

The data endpoint comes from GetDataEndpoint (signed by the sink itself, through the
upload budget) and is cached until a connection fails for want of a network or the
service says the endpoint is no longer valid. The stream's retention comes from
DescribeStream, cached the same way: a stream that keeps no data never sends PERSISTED
acknowledgements. An IAM policy without kinesisvideo:DescribeStream leaves it unknown
(one warning), and the configured acknowledgement stands. Credentials come fresh from the
session all AWS sinks share (credentials/shared.py) for each connection, so temporary
ones are renewed before they expire; a connection signed with certificate credentials
(``[aws] credentials = "iot"``) is replaced once they are due for renewal
(``renew_at``), as the producer SDKs replace theirs before their token expires.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError

from edge_agent.config.sink_kinds import AwsEndpoint
from edge_agent.credentials.shared import shared_session
from edge_agent.delivery.budget import Budget
from edge_agent.errors import SinkPaused, SinkUnavailable
from edge_agent.sinks.aws import sink_error
from edge_agent.sinks.kvs.control import control_endpoint, describe_stream, get_data_endpoint
from edge_agent.worker import LinkState

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class KvsEndpoint:
    def __init__(
        self,
        aws: AwsEndpoint,
        stream: str,
        budget: Budget,
        stop: threading.Event,
        link: LinkState,
    ) -> None:
        self._aws = aws
        self._stream = stream
        self._budget = budget
        self._stop = stop
        self._link = link
        self._session = shared_session(aws.identity, aws.profile)
        #: When (epoch seconds) the credentials last handed out are due for renewal.
        self.renew_at: float | None = None
        self._data_endpoint: str | None = None
        self._retention: int | None = None  # hours; None: not asked yet, or unknown
        self._retention_asked = False
        self._retention_warned = False

    @property
    def connect_timeout(self) -> float:
        return self._aws.connect_timeout

    def forget(self) -> None:
        """Ask GetDataEndpoint (and DescribeStream) again before the next connection."""
        self._data_endpoint = None
        self._retention_asked = False

    def credentials(self) -> ReadOnlyCredentials:
        """Fresh from the shared session for each connection (temporary ones are fetched
        again before they expire); the agent's error if there are none."""
        try:
            credentials = self._session.credentials()
        except Exception as err:
            raise sink_error(err) from err
        self.renew_at = self._session.renew_at()
        return credentials

    def region(self) -> str:
        region = self._aws.region or self._session.region_name
        if not region:
            raise SinkPaused("NoRegion", "no region: set region in the sink's config")
        return str(region)

    def _control(self, call: Callable[..., _T], credentials: ReadOnlyCredentials) -> _T:
        """A control-plane call for this stream (control.py), signed and budgeted."""
        region = self.region()
        return call(
            control_endpoint(region, self._aws.endpoint_url),
            self._stream,
            credentials,
            region=region,
            timeout=self._aws.connect_timeout,
            budget=self._budget,
            stop=self._stop,
        )

    def retention_hours(self, credentials: ReadOnlyCredentials) -> int | None:
        """The stream's DataRetentionInHours (cached); None if it cannot be read."""
        if self._retention_asked:
            return self._retention
        try:
            info = self._control(describe_stream, credentials)
        except ClientError as err:
            error = sink_error(err)
            if not isinstance(error, SinkPaused):
                raise SinkUnavailable(error.code, f"DescribeStream: {error.message}") from err
            if not self._retention_warned:
                log.warning(
                    "KVS stream %s: cannot read its retention (DescribeStream: %s): "
                    "acknowledgements as configured",
                    self._stream,
                    error.message,
                )
                self._retention_warned = True
            self._retention = None
        else:
            hours = info.get("DataRetentionInHours")
            self._retention = int(hours) if isinstance(hours, int) else None
        self._retention_asked = True
        return self._retention

    def data_endpoint(self, credentials: ReadOnlyCredentials) -> str:
        """The stream's PutMedia endpoint (cached)."""
        if self._data_endpoint is None:
            try:
                self._data_endpoint = self._control(get_data_endpoint, credentials)
                self._link.up()
            except ClientError as err:  # the same classification as the record sinks
                self._link.up()  # refused, but it answered
                error = sink_error(err)
                if isinstance(error, SinkPaused):  # else reconnect with backoff
                    raise SinkPaused(error.code, f"GetDataEndpoint: {error.message}") from err
                raise SinkUnavailable(error.code, f"GetDataEndpoint: {error.message}") from err
        return self._data_endpoint
