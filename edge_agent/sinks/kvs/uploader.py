"""The Kinesis Video sink: a video queue's fragments, in order, over PutMedia.

    GetDataEndpoint (cached; asked again after a failure)
    -> one PutMedia connection: the stream header, then each fragment's Cluster as it
       is leased (at most ``max_in_flight`` unacknowledged, at most 5 a second)
    -> acknowledgements: PERSISTED (or RECEIVED) deletes the fragment from the spool
       and records its fragment number; ERROR by ErrorId:
         the fragment can never be taken (4001, 4002, 4006, ...)  dead letter, reason
         its time is not after the previous one (4004, 4007)      dead letter, counted
         the stream or its key is not usable (4008, 45xx)         pause, probe slowly
         anything else (4000, 5xxx, 4003)                          reconnect, resend
    -> a new connection when the tracks change (new SPS/PPS, audio that comes or goes),
       before 40 minutes, when the credentials it was signed with are due for renewal,
       when acknowledgements stop coming (``ack_timeout``), or after any error.

Credentials are resolved once as the uploader starts, before any fragment: missing or
refused ones pause the sink with the reason in status from the start.

What was on the wire without its acknowledgement goes back to the spool and is sent
again on the next connection: a crash or an outage re-sends at most ``max_in_flight``
fragments, and loses none.

The order of a backlog (``replay``: oldest-first, or live-first) is replay.py's.
Sessions take turns on the one connection a stream may have; within each, times
increase (the service's rule is per PutMedia call). Where the stream takes PutMedia,
and the credentials, are endpoint.py's.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import NoReturn

from botocore.credentials import ReadOnlyCredentials

from edge_agent.config.sinks import SinkConfig
from edge_agent.delivery.adaptive_timeout import AdaptiveTimeout
from edge_agent.delivery.backoff import Backoff
from edge_agent.delivery.budget import BacklogHeld, Budget, SinkBudget
from edge_agent.delivery.send_log import SendLog
from edge_agent.errors import SinkError, SinkPaused, SinkUnavailable, SpoolCorrupt, SpoolError
from edge_agent.media.fragment_meta import FragmentMeta, tags_of
from edge_agent.media.fragment_tags import after_fragment
from edge_agent.media.mkv import AudioTrack, VideoTrack, stream_header
from edge_agent.records import LeasedRecord
from edge_agent.runtime_status import KvsSnapshot, LatencySummary
from edge_agent.sinks.kvs.acks import ERROR, Ack, ErrorAction, error_action, error_name
from edge_agent.sinks.kvs.endpoint import KvsEndpoint
from edge_agent.sinks.kvs.putmedia import PutMediaConnection, PutMediaRefused
from edge_agent.sinks.kvs.replay import SessionKind, SessionOrder
from edge_agent.sinks.kvs.spooled_payload import send_spooled
from edge_agent.spool.store import Spool
from edge_agent.worker import LinkState, ThreadWorker, WorkerState

log = logging.getLogger(__name__)

#: What a connection's stream header names: the video track, and the audio's if any.
Tracks = tuple[VideoTrack, AudioTrack | None]

#: A connection signed with credentials already due for renewal is replaced after this
#: (botocore's mandatory refresh comes minutes before they expire).
RENEW_AGAIN_S = 60.0
#: At stop, how long to wait for the acknowledgements of what is on the wire.
STOP_ACK_WAIT_S = 5.0
#: Once every fragment of an ended session is acknowledged, how long to wait for the
#: endpoint to end its answer before the next session opens.
END_OF_ANSWER_WAIT_S = 2.0
#: The longest the uploader sleeps with nothing to do (it checks its deadlines then).
IDLE_WAKE_S = 1.0


@dataclass
class KvsStats(WorkerState):
    connections: int = 0
    fragments_sent: int = 0
    fragments_acked: int = 0
    bytes_sent: int = 0
    resent: int = 0
    dead_lettered: int = 0
    out_of_order: int = 0
    last_fragment_number: str | None = None
    last_ack_latency_s: float | None = None
    #: Capture of each recent fragment's first frame to its acknowledgement, seconds
    #: (not those of live-first backlog sessions).
    capture_latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    last_error: str = ""
    #: Capture time (ms) of the newest fragment acknowledged: how current the stream is.
    newest_acked_ms: int | None = None
    live_sessions: int = 0
    backlog_sessions: int = 0
    backlog_sent: int = 0  # fragments sent in backlog sessions


class KvsUploader(ThreadWorker):
    def __init__(
        self,
        config: SinkConfig,
        spool: Spool,
        budget: SinkBudget,
        stop: threading.Event,
    ) -> None:
        assert config.kvs is not None and config.aws is not None
        self.name = config.name
        self.options = config.kvs
        self.spool = spool
        self._budget = budget
        self._stop = stop
        self.link = LinkState()
        self._endpoint = KvsEndpoint(config.aws, self.options.stream, budget, stop, self.link)
        self._replay = SessionOrder(spool, config.name, self.options.replay, budget)
        self._backoff = Backoff(self.options.retry_min, self.options.retry_max)
        # A fragment not acknowledged in time is sent again on the next connection:
        # on a slow link the wait grows instead (delivery/adaptive_timeout.py).
        self.ack_timeout = AdaptiveTimeout(self.options.ack_timeout)
        #: What a fragment waits for (``_acknowledgement``), set at each connection.
        self._wanted_ack = "PERSISTED"
        self.write_timeout = AdaptiveTimeout(config.aws.connect_timeout)
        #: Fragments on the wire by time: (fragment, when sent, sent as backlog).
        self._in_flight: OrderedDict[int, tuple[LeasedRecord, float, bool]] = OrderedDict()
        #: The fragments sent lately: the fragments-per-second limit and the send rate
        #: in status both read it.
        self._sent = SendLog()
        self.stats = KvsStats()
        self.spool_corrupt = False
        self._ready = False  # credentials were had once (at start)
        #: When (epoch seconds) the open connection's credentials are due for renewal.
        self._renew_at: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._start_thread(self.run, f"kvs-{self.name}")

    @property
    def healthy(self) -> bool:
        return self.thread_ok

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self._ready:
                    self._endpoint.credentials()  # missing credentials show at start
                    self._ready = True
                self._connection_once()
                self._backoff.reset()
                continue
            except BacklogHeld as held:  # a schedule window began: back to live video
                log.info("sink %s: backlog %s", self.name, held)
                self._release_in_flight()
                self._stop.wait(self.options.retry_min)  # the endpoint ends the old one
                continue
            except (SinkError, OSError) as err:
                if isinstance(err, SinkError) and not err.retryable:
                    delay = self.options.pause_probe
                    self._set_state("paused", str(err))
                else:
                    if self._stop.is_set():
                        break  # the agent is stopping (a write gave up): not an outage
                    if isinstance(err, OSError):
                        self.link.down()
                        self._endpoint.forget()
                    elif err.unreachable:
                        self.link.down()
                    delay = self._backoff.next_delay()
                    self._set_state("backing off", str(err))
            except SpoolError as err:
                self.spool_corrupt = isinstance(err, SpoolCorrupt)
                delay = 1.0
                self._set_state("backing off", f"spool: {err}")
            except Exception as err:  # the control plane, credentials
                delay = self._backoff.next_delay()
                self._endpoint.forget()
                self._set_state("backing off", f"{type(err).__name__}: {err}")
            finally:
                self._release_in_flight()
            self.stats.last_error = self.stats.reason
            log.warning("sink %s: %s; again in %.1fs", self.name, self.stats.reason, delay)
            self._stop.wait(delay)
        self._set_state("stopped")

    # ------------------------------------------------------------------ one connection

    def _connection_once(self) -> None:
        kind, first = self._first_fragment()
        if first is None:
            return
        tracks = self._tracks(first)
        if tracks is None:
            return
        budget: Budget = self._budget.backlog() if kind == "backlog" else self._budget
        connection: PutMediaConnection | None = None
        try:
            credentials = self._endpoint.credentials()
            renew_at = self._endpoint.renew_at
            # Already due (a renewal failed or is under way elsewhere; botocore signs with
            # the old ones meanwhile): replaced again soon, never past their expiry.
            if renew_at is not None and renew_at <= time.time():
                renew_at = time.time() + RENEW_AGAIN_S
            self._renew_at = renew_at
            self._wanted_ack = self._acknowledgement(credentials)
            connection = PutMediaConnection(
                self._endpoint.data_endpoint(credentials),
                self.options.stream,
                credentials,
                region=self._endpoint.region(),
                budget=budget,
                stop=self._stop,
                timeout=self._endpoint.connect_timeout,
                write_timeout=self.write_timeout,
                on_answer=self.spool.wake_waiters,  # an acknowledgement ends the wait below
            )
            connection.open()
            connection.send(stream_header(*tracks))
        except BaseException:
            if connection is not None:
                connection.close()
            self.spool.release([first])  # not on the wire: it goes first next time
            raise
        try:
            self.stats.connections += 1
            if kind == "live":
                self.stats.live_sessions += 1
            elif kind == "backlog":
                self.stats.backlog_sessions += 1
            self._set_state("sending" if kind == "all" else f"sending {kind}")
            log.debug("sink %s: %s session from fragment %d", self.name, kind, first.id)
            if not self._send(connection, first, kind):
                return
            del first  # sent: the session, which may last an hour, does not hold it
            self._stream(connection, tracks, kind)
        except BacklogHeld:
            # Mid-fragment: the session cannot be ended cleanly. Take what was
            # acknowledged of the fragments written whole, then drop the connection.
            self._take_arrived_acks(connection)
            raise
        finally:
            connection.close()

    def _first_fragment(self) -> tuple[SessionKind, LeasedRecord | None]:
        """What the next session sends, and its first fragment (waiting for one)."""
        while not self._stop.is_set():
            generation = self.spool.append_generation
            kind = self._replay.next_session()
            record = self._replay.lease(kind)
            if record is not None:
                return kind, record
            self._set_state("idle")
            self.spool.wait_for_append(generation, IDLE_WAKE_S)
        return "all", None

    def _stream(self, connection: PutMediaConnection, tracks: Tracks, kind: SessionKind) -> None:
        """Send fragments as the window and the rate allow; take acknowledgements. The
        thread sleeps until a fragment is appended or an acknowledgement arrives (both
        wake the spool's waiters), and reads the spool only when something changed.
        Live-first sessions end when it is the other kind's turn."""
        options = self.options
        last_ack = time.monotonic()
        drained_at: int | None = None  # the spool generation at which nothing was left
        while not self._stop.is_set():
            now = time.monotonic()
            if now - connection.opened_at > options.connection_max_age or (
                self._renew_at is not None and time.time() >= self._renew_at
            ):
                self._finish(connection)
                return
            ack_timeout = self.ack_timeout.current
            if self._in_flight and now - last_ack > ack_timeout:
                self.ack_timeout.timed_out(ack_timeout, len(self._in_flight))
                raise SinkUnavailable("Timeout", f"no acknowledgement for {ack_timeout:g}s")
            generation = self.spool.append_generation
            window_open = len(self._in_flight) < self.ack_timeout.max_entries(options.max_in_flight)
            rate_wait = self._rate_wait(now)
            if kind == "backlog" and self._replay.live_waiting():
                self._finish(connection)  # a new fragment: live goes first
                return
            if window_open and rate_wait == 0 and generation != drained_at:
                record = self._replay.lease(kind)
                if record is not None:
                    record_tracks = self._tracks(record)
                    if record_tracks is None:
                        continue
                    if record_tracks != tracks:  # new parameter sets, audio: a new header
                        self.spool.release([record])
                        self._finish(connection)
                        return
                    if not self._send(connection, record, kind):
                        return
                    del record  # sent: not held while the next one is read
                    continue
                drained_at = generation
            if drained_at == generation and not self._in_flight and self._replay.turn_over(kind):
                self._finish(connection)
                return
            try:
                item = connection.acks.get_nowait()
            except queue.Empty:
                wait = rate_wait if window_open and rate_wait else IDLE_WAKE_S
                self.spool.wait_for_append(generation, wait)
                continue
            if item is None:
                raise SinkUnavailable("ConnectionError", "the endpoint closed the connection")
            self.link.up()  # an answer: acknowledgement or refusal
            if isinstance(item, PutMediaRefused):
                self._refused(item)
            last_ack = time.monotonic()
            self._on_ack(item)
        self._finish(connection, STOP_ACK_WAIT_S)  # stopping

    def _finish(self, connection: PutMediaConnection, timeout: float | None = None) -> None:
        """End the request and take the acknowledgements still due (also at stop, for
        a while: a fragment acknowledged now is not sent again after a restart)."""
        try:
            connection.finish()
        except OSError:
            return
        wait = self.ack_timeout.current if timeout is None else timeout
        deadline = time.monotonic() + wait
        # Then until the endpoint ends its answer (briefly once nothing is due): the
        # stream's next connection opens only when this one is over.
        while True:
            if not self._in_flight:
                deadline = min(deadline, time.monotonic() + END_OF_ANSWER_WAIT_S)
            ack = _next_ack(connection, deadline)
            if ack is None:
                return
            self._on_ack(ack)

    def _send(
        self, connection: PutMediaConnection, record: LeasedRecord, kind: SessionKind
    ) -> bool:
        """Write a fragment: its payload, or, leased without it, read from the spool as
        it is written. False if the spool let go of it meanwhile (evicted, expired):
        part of it is on the wire, and the connection cannot go on."""
        # In flight before the write: if the write fails, the fragment is given back
        # with the others (a fragment leased and in no list would wait for a restart).
        now = time.monotonic()
        self._in_flight[record.captured_at_ms] = (record.on_the_wire(), now, kind == "backlog")
        self.spool.mark_sent([record])  # a restart counts it if it goes out again
        if record.payload:
            connection.send(record.payload)
            size: int | None = len(record.payload)
        else:
            size = send_spooled(self.spool, record, connection.send)
        if size is None:
            log.warning("sink %s: fragment %d left the spool as it was sent", self.name, record.id)
            self._take_arrived_acks(connection)  # of the fragments before it, written whole
            return False
        # The fragment's tags, then the end-of-fragment tag: the service acknowledges the
        # fragment now rather than when the next one begins (a fragment duration later).
        connection.send(after_fragment(tags_of(record.meta)))  # no copy of the payload
        self._sent.add(now, 1, size)
        self.stats.fragments_sent += 1
        self.stats.bytes_sent += size
        if record.attempts:
            self.stats.resent += 1
        self._replay.sent(record, kind)
        if kind == "backlog":
            self.stats.backlog_sent += 1
        return True

    def _rate_wait(self, now: float) -> float:
        """0 if a fragment may go now, else how long until one may (fragments_per_second)."""
        last_second = self._sent.times_after(now - 1.0)
        if len(last_second) < self.options.fragments_per_second:
            return 0.0
        return max(0.001, last_second[0] + 1.0 - now)

    # ------------------------------------------------------------------ acknowledgements

    def _acknowledgement(self, credentials: ReadOnlyCredentials) -> str:
        """The acknowledgement that lets a fragment leave the spool (``ack_on``); a stream
        that keeps no data never sends PERSISTED."""
        if self.options.ack_on == "received":
            return "RECEIVED"
        if self._endpoint.retention_hours(credentials) != 0:
            return "PERSISTED"  # kept, or unknown: as configured
        if self.options.ack_on == "persisted":
            raise SinkPaused(
                "NoRetention",
                "the stream keeps no data (DataRetentionInHours = 0), so PERSISTED never "
                'comes: set ack_on = "auto" or "received", or give the stream a retention',
            )
        if self._wanted_ack != "RECEIVED":
            log.warning(
                "sink %s: stream %s keeps no data (DataRetentionInHours = 0): fragments "
                "leave the spool once RECEIVED",
                self.name,
                self.options.stream,
            )
        return "RECEIVED"

    def _on_ack(self, ack: Ack) -> None:
        wanted = self._wanted_ack
        if ack.event_type == ERROR:
            self._on_error(ack)
            return
        if ack.event_type != wanted or ack.fragment_timecode is None:
            return
        entry = self._in_flight.get(ack.fragment_timecode)
        if entry is None:
            return
        record, sent_at, backlog = entry
        self.ack_timeout.answered(time.monotonic() - sent_at)
        self.spool.ack([record])  # if this fails, the fragment is given back with the rest
        del self._in_flight[ack.fragment_timecode]
        self.stats.fragments_acked += 1
        self.stats.last_fragment_number = ack.fragment_number
        self.stats.last_ack_latency_s = round(time.monotonic() - sent_at, 3)
        if not backlog:  # how current the video is (a backlog session's is old by design)
            self.stats.capture_latencies_s.append(time.time() - record.captured_at_ms / 1000)
        newest = self.stats.newest_acked_ms
        if newest is None or record.captured_at_ms > newest:
            self.stats.newest_acked_ms = record.captured_at_ms

    def _on_error(self, ack: Ack) -> None:
        error_id = ack.error_id if ack.error_id is not None else 5000
        name = f"{error_name(error_id)} ({error_id})"
        action = error_action(error_id)
        timecode = ack.fragment_timecode
        entry = self._in_flight.get(timecode) if timecode is not None else None
        if entry is not None and action in (
            ErrorAction.DEAD_LETTER,
            ErrorAction.REPAIR_TIMESTAMPS,
        ):
            record = entry[0]
            if action is ErrorAction.REPAIR_TIMESTAMPS:
                self.stats.out_of_order += 1
            self.spool.dead_letter([record], f"Kinesis Video refused the fragment: {name}")
            del self._in_flight[record.captured_at_ms]
            self.stats.dead_lettered += 1
            self.stats.last_error = name
            return
        # Anything else: the fragment stays in flight and is sent again after reconnecting.
        if action is ErrorAction.PAUSE:
            raise SinkPaused("KinesisVideo", name)
        raise SinkUnavailable("KinesisVideo", name)

    def _refused(self, refused: PutMediaRefused) -> NoReturn:
        if refused.error_type == "InvalidEndpointException":
            self._endpoint.forget()
        raise refused

    def _take_arrived_acks(self, connection: PutMediaConnection) -> None:
        """Acknowledgements due for fragments written whole (all in flight but the last),
        for a moment: what the service has is not sent again."""
        deadline = time.monotonic() + END_OF_ANSWER_WAIT_S
        while len(self._in_flight) > 1:
            ack = _next_ack(connection, deadline)
            if ack is None:
                return
            try:
                self._on_ack(ack)
            except SinkError:
                return

    def _tracks(self, record: LeasedRecord) -> Tracks | None:
        """A fragment's tracks, from what the camera stored with it; a fragment whose
        tracks cannot be read can never be sent: dead letter."""
        try:
            return FragmentMeta.from_json(record.meta).tracks
        except ValueError as err:
            self.spool.dead_letter([record], f"the fragment's track (meta) is unreadable: {err}")
            self.stats.dead_lettered += 1
            return None

    def _release_in_flight(self) -> None:
        if self._in_flight:
            self.spool.release([entry[0] for entry in self._in_flight.values()])
            self._in_flight.clear()

    def _set_state(self, state: str, reason: str = "") -> None:
        self.stats.set(state, reason)

    def snapshot(self) -> KvsSnapshot:
        stats, link = self.stats, self.link
        return {
            "type": "kvs",
            "target": self.options.stream,
            "replay": self.options.replay,
            "state": stats.state,
            "reason": stats.reason,
            "since": stats.since,
            "connections": stats.connections,
            "fragments_sent": stats.fragments_sent,
            "fragments_acked": stats.fragments_acked,
            "bytes_sent": stats.bytes_sent,
            "resent": stats.resent,
            "dead_lettered": stats.dead_lettered,
            "out_of_order": stats.out_of_order,
            "last_fragment_number": stats.last_fragment_number,
            "last_ack_latency_s": stats.last_ack_latency_s,
            "capture_latency_s": _median_and_max(stats.capture_latencies_s),
            "newest_acked_ms": stats.newest_acked_ms,
            "last_error": stats.last_error,
            "in_window": len(self._in_flight),
            "live_sessions": stats.live_sessions,
            "backlog_sessions": stats.backlog_sessions,
            "backlog_sent": stats.backlog_sent,
            "bytes_per_s": self._sent.rates(time.monotonic())[1],
            "ack_timeout": self.ack_timeout.snapshot(),
            "acknowledged_on": self._wanted_ack,
            "online": link.online,
            "link_since": link.since,
        }


def _next_ack(connection: PutMediaConnection, deadline: float) -> Ack | None:
    """The connection's next acknowledgement; None at the end of the answer, at a
    refusal, or when the deadline (monotonic) passes first."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            item = connection.acks.get(timeout=min(left, 0.1))
        except queue.Empty:
            continue
        return None if item is None or isinstance(item, PutMediaRefused) else item
    return None


def _median_and_max(values: deque[float]) -> LatencySummary | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"p50": round(ordered[len(ordered) // 2], 3), "max": round(ordered[-1], 3)}
