"""The error tree of edge-agent.

Every error the agent raises on purpose derives from :class:`EdgeAgentError` and says
whether retrying the same operation later can succeed::

    EdgeAgentError                      retryable?
    ├── ConfigError                     no   -- file, key path and reason
    ├── SpoolError                      --
    │   ├── SpoolCorrupt                no   -- the file is moved aside, a new spool opens
    │   ├── SpoolFull                   yes  -- disk full / write refused; keep, retry later
    │   └── SpoolBusy                   yes  -- another writer holds the lock for too long
    ├── SourceError                     yes  -- a source lost its input (broker, camera)
    │   └── RtspError                   yes  -- the built-in RTSP client; its subtree
    │                                           (refused, stalled) in sources/camera/rtsp_client.py
    └── SinkError                       --   -- a whole request to a destination failed
        ├── SinkUnavailable             yes  -- throttled, 5xx, network: back off, retry
        ├── SinkPaused                  no   -- access denied, stream missing, KMS key
        │                                       unusable: keep the data, probe slowly
        └── RequestRejected             no   -- the service refused the request as invalid:
                                                find the bad record, dead-letter it

Code that catches errors asks ``err.retryable`` instead of matching on types.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base of every error edge-agent raises on purpose."""

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


class SpoolBusy(SpoolError):
    """Another connection held the write lock longer than the busy timeout."""

    retryable = True


class SourceError(EdgeAgentError):
    """A source lost its input; it reconnects by itself."""

    retryable = True


class SinkError(EdgeAgentError):
    """A whole request to a destination failed; ``code`` is the service's error code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}" if message else code)


class SinkUnavailable(SinkError):
    """Transient: throttled, a 5xx, a timeout or a network error. Back off and retry."""

    retryable = True

    @property
    def unreachable(self) -> bool:
        """No answer came back at all (as opposed to a 5xx or throttling answer)."""
        return self.code in NETWORK_ERROR_CODES


#: The codes ``sinks.aws.sink_error`` gives failures where no answer came back.
NETWORK_ERROR_CODES = frozenset(
    {"ConnectionRefused", "DnsFailure", "Timeout", "TlsError", "ConnectionError"}
)


class SinkPaused(SinkError):
    """Not transient: credentials, permissions, a missing stream or an unusable KMS key.

    Retrying soon cannot help, and the data must not be dropped either: the sink pauses,
    keeps everything spooled and probes again slowly until someone fixes the cause.
    """


class RequestRejected(SinkError):
    """The service called the request invalid: some record in it can never be accepted."""
