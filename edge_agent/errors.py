"""The error tree of edge-agent.

Every exception the agent defines derives from :class:`EdgeAgentError` and says
whether trying the same thing again later can succeed (``retryable``)::

    EdgeAgentError                      retryable?
    ├── ConfigError                     no   -- file, key path and reason
    ├── SpoolError                      no   -- the spool cannot be used as asked (closed,
    │   │                                       read-only, not a spool, locked by another)
    │   ├── SpoolCorrupt                no   -- the file is moved aside, a new spool opens
    │   ├── SpoolFull                   yes  -- disk full / write refused; keep, retry later
    │   │   └── IntakePaused            yes  -- the spool's filesystem is below its free-space
    │   │                                       reserve: intake waits for delivery to free
    │   │                                       space (spool/storage.py); already logged
    │   ├── SpoolFileLost               yes  -- the file on disk is no longer the open spool
    │   │                                       (deleted, replaced, moved) and could not be
    │   │                                       rebuilt yet (spool/file_watch.py)
    │   └── SpoolBusy                   yes  -- another writer holds the lock for too long
    ├── FormatError (ValueError)        no   -- bytes or text of a media format that cannot
    │   │                                       be read, or frames that cannot be written
    │   ├── FragmentError               no   -- frames that make no fragment (media/mkv.py)
    │   ├── MkvError                    no   -- not the Matroska stream it should be
    │   │                                       (kvs_local/mkv_reader.py)
    │   ├── SdpError                    no   -- a camera's description without usable
    │   │                                       video (sources/camera/sdp.py)
    │   └── AudioUnsupported            no   -- a camera's audio in a form that is not
    │                                           taken: left out, the video goes on
    │                                           (sources/camera/audio_codecs.py)
    ├── SourceError                     yes  -- a source lost its input (broker, camera)
    │   ├── CameraError                 yes  -- PyAV (FFmpeg) could not open or read a camera;
    │   │   │                                   sources/camera/camera_errors.py, whose
    │   │   │                                   pyav_errors() table translates PyAV's errors
    │   │   ├── CameraRefused           yes  -- the camera answered with an error status
    │   │   ├── StreamStalled           yes  -- no packet for the stall timeout
    │   │   └── PicturesReordered       yes  -- B-frames: the camera is encoded from then on
    │   └── RtspError                   yes  -- the built-in RTSP client: the connection or
    │       │                                   the protocol failed (sources/camera/rtsp_client.py)
    │       ├── RtspRefused             yes  -- the camera answered with an error status
    │       └── RtspStalled             yes  -- no video for the stall timeout
    ├── SinkError                       --   -- a whole request to a destination failed;
    │   │                                       ``code`` is the service's error code
    │   ├── SinkUnavailable             yes  -- throttled, 5xx, network: back off, retry
    │   ├── SinkPaused                  no   -- access denied, stream missing, KMS key
    │   │   │                                   unusable: keep the data, probe slowly
    │   │   └── CredentialsRefused      no   -- the AWS IoT credentials endpoint refused the
    │   │                                       device's certificate (HTTP 400/401/403/404, or
    │   │                                       the TLS handshake): credentials/iot.py
    │   ├── RequestRejected             no   -- the service refused the request as invalid:
    │   │                                       find the bad record, dead-letter it
    │   └── PutMediaRefused             per answer -- the PutMedia endpoint answered an HTTP
    │                                       error: no for 401, 403, a missing stream, else
    │                                       yes (sinks/kvs/putmedia.py)
    ├── MetricsUnavailable              yes  -- the metrics endpoint cannot listen on its
    │                                           address (in use, not this host's): the
    │                                           agent runs without it (metrics/endpoint.py)
    ├── QueryFailed                     per cause -- an analytics query was refused (it may
    │   │                                       only SELECT from ``input``) or SQLite failed
    │   │                                       it; yes only when the spool was busy or
    │   │                                       unreadable for now (analytics/query.py)
    │   └── QueryOverBudget             no   -- the query ran past its work budget of
    │                                           SQLite steps and was stopped
    ├── RequestError                    yes  -- a command could not leave its request for the
    │                                           agent (no permission, no room):
    │                                           events/requests.py
    ├── ClipError                       no   -- no clip can be made of that range (nothing
    │                                           recorded, an unknown format): events/clips.py
    ├── BacklogHeld                     yes  -- a schedule window holds a live-first video
    │                                           sink's backlog; it goes when the window ends
    │                                           (delivery/budget.py)
    └── EndpointRefusal                 no   -- kvs-local refuses a client's request, with an
        │                                       HTTP status and the service's error type
        └── SignatureRejected           no   -- a missing, unknown, expired or wrong SigV4
                                                signature (kvs_local/sigv4.py)

``BacklogHeld`` is a branch of its own, not a ``SinkError``: nothing failed and the
destination said nothing. The sink ends its backlog session and goes back to live video;
no error is counted, the link stays as it was, and no code would mean anything.

Parse errors derive from ``ValueError`` as well: code that reads a format catches
``ValueError`` for any bad input, its own or the standard library's (``int()``,
``base64``). Checks of a caller's arguments (a negative size, a rate of 0) raise plain
``ValueError`` or ``TypeError``: those are bugs, not errors of the tree. Lower libraries'
exceptions are translated where the agent meets them, each through one table:
botocore's by ``sinks.aws.sink_error`` (``botocore_errors()``), PyAV's by
``sources.camera.camera_errors.camera_error`` (``pyav_errors()``), socket errors of the built-in
RTSP client by its ``OS_ERRORS``. The KVS sink's own HTTP code lets ``OSError``
(``ssl.SSLError`` included) through: for its uploader any ``OSError`` means that no answer
came back.

Code that decides whether to try again asks ``err.retryable`` instead of matching on
types. A sink splits a request the service refused as invalid (``RequestRejected``: find
the bad record), backs off and retries any other retryable error, and pauses on the rest
(keeping the data, probing slowly). A source always reconnects, with backoff: every
``SourceError`` is retryable, and a camera reports whatever it met (a spool error, a
bug) and opens its input again. kvs-local answers a refusal with its HTTP status; the
client reads that.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base of every exception edge-agent defines."""

    retryable: bool = False


class ConfigError(EdgeAgentError):
    """One or more problems in a configuration file; each names the file, key and reason."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class ConfigProblem:
    """A single configuration problem: where it is and what is wrong."""

    __slots__ = ("file", "key", "reason")

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.reason}"

    def __repr__(self) -> str:
        return f"ConfigProblem({self.file!r}, {self.key!r}, {self.reason!r})"


class SpoolError(EdgeAgentError):
    """A problem with the spool database."""


class SpoolCorrupt(SpoolError):
    """The spool file failed its integrity check or is not a database."""


class SpoolFull(SpoolError):
    """SQLite refused a write: the disk (or the file system quota) is full."""

    retryable = True


class IntakePaused(SpoolFull):
    """The spool's filesystem is below its free-space reserve: new records wait (the
    broker keeps them) until delivery frees space. The spool logged the pause once."""


class SpoolFileLost(SpoolError):
    """The spool's file on disk is no longer the one the agent writes (deleted, replaced
    or moved) and rebuilding it from the open one failed for now: nothing more may be
    acknowledged until it is rebuilt."""

    retryable = True


class SpoolBusy(SpoolError):
    """Another connection held the write lock longer than the busy timeout."""

    retryable = True


class FormatError(EdgeAgentError, ValueError):
    """Bytes or text of a media format that cannot be read (H.264, Matroska, SDP), or
    frames that cannot be written as one."""


class SourceError(EdgeAgentError):
    """A source lost its input; it reconnects by itself."""

    retryable = True


class SinkError(EdgeAgentError):
    """A whole request to a destination failed; ``code`` is the service's error code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}" if message else code)

    @property
    def unreachable(self) -> bool:
        """No answer came back at all: the link to the destination is down."""
        return False

    @property
    def answered(self) -> bool:
        """The destination answered (a refusal, throttling, a 5xx): the link is up. Not
        so for a failure on this side before anything went out (``UNSENT_ERROR_CODES``)."""
        return not self.unreachable and self.code not in UNSENT_ERROR_CODES


class SinkUnavailable(SinkError):
    """Transient: throttled, a 5xx, a timeout or a network error. Back off and retry.

    A failure where no answer came back has one of the ``NETWORK_ERROR_CODES``
    (``"Timeout"``, ``"ConnectionError"``, ...): that is what ``unreachable`` reads."""

    retryable = True

    @property
    def unreachable(self) -> bool:
        """No answer came back at all (as opposed to a 5xx or throttling answer)."""
        return self.code in NETWORK_ERROR_CODES


#: The codes of failures where no answer came back (``sinks.aws.sink_error`` gives them
#: to botocore's network errors; a sink's own code uses them for the same meaning).
NETWORK_ERROR_CODES = frozenset(
    {"ConnectionRefused", "DnsFailure", "Timeout", "TlsError", "ConnectionError"}
)
#: The codes of failures before a request went out (``sinks.aws.sink_error`` gives them
#: to botocore's errors of credentials, region and parameters; the credentials endpoint's
#: failing answers are ``CredentialsEndpointError``): they say nothing about the link to
#: the destination.
UNSENT_ERROR_CODES = frozenset(
    {
        "NoCredentials",
        "CredentialRetrieval",
        "NoRegion",
        "ParamValidation",
        "CredentialsEndpointError",
    }
)


class SinkPaused(SinkError):
    """Not transient: credentials, permissions, a missing stream or an unusable KMS key.

    Retrying soon cannot help, and the data must not be dropped either: the sink pauses,
    keeps everything spooled and probes again slowly until someone fixes the cause.
    """


class CredentialsRefused(SinkPaused):
    """The AWS IoT credentials endpoint will not give this device credentials: the
    certificate is unknown, revoked, expired or not attached to the thing, the role
    alias does not exist, or the TLS handshake failed. Every AWS sink pauses with the
    reason until someone fixes it (credentials/iot.py)."""

    @property
    def answered(self) -> bool:
        """The credentials endpoint answered, not the destination: no request went out."""
        return False


class RequestRejected(SinkError):
    """The service called the request invalid: some record in it can never be accepted."""


class MetricsUnavailable(EdgeAgentError):
    """The metrics endpoint cannot listen on its configured address (already in use,
    not an address of this host). The agent logs it and runs on without the endpoint:
    monitoring is not worth stopping intake for."""

    retryable = True


class QueryFailed(EdgeAgentError):
    """An analytics query could not give its window's rows: its SQL was refused (the
    reason in words), or SQLite failed it (SQLite's message). ``retryable`` only when
    the spool was busy or could not be read for now: the same SQL over the same rows
    fails the same way."""


class QueryOverBudget(QueryFailed):
    """The query ran past its work budget of SQLite steps and was stopped: a runaway
    costs a bounded amount of CPU, and intake never waited for it."""


class EndpointRefusal(EdgeAgentError):
    """kvs-local refuses a client's request: it answers with ``status`` and
    ``error_type`` (the service's name for the error); the text is the answer's message."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type = status, error_type
