"""The forwarder: one thread per sink that moves records from the spool to the service.

    lease (a bounded window)  ->  choose due records (per-key prefixes in ordered mode)
    ->  sink.pack (limits, pacing, aggregation)  ->  budget (inside the sink's client)
    ->  sink.send  ->  settle each record:
            accepted          delete from the spool (the position goes to status)
            failed            back to the spool, due again after full-jitter backoff on
                              its attempt count (ordered mode: stays in the window and
                              blocks its key until it is through)
            rejected          dead letter with the reason (too large, refused as invalid;
                              a refused request is split in halves, an aggregate into
                              its records, to find the record to blame)
        a whole request failing:
            SinkUnavailable   nothing settled; the sink backs off (full jitter, capped)
            SinkPaused        nothing settled; the sink pauses and probes every
                              ``pause_probe`` by trying again

Up to ``requests_in_flight`` requests are on the wire at once, transmitted by the
transmit pool's threads while this thread leases and packs the next; answers are landed (settled) in
the order the requests went out. Records in flight are not candidates, and in ordered
mode they block their keys like records waiting for a retry, so two requests in flight
never carry the same key.

Records never leave the spool before the service confirms them, so a crash at any
point re-sends at most what was in flight. In ordered mode a failed record blocks the
later records of its key until it is through, and at most one entry per key goes into
a request, so a partial failure can never let a later record overtake an earlier one.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, cast

from edge_agent.config.sink_kinds import DeliveryConfig
from edge_agent.delivery.backoff import Backoff, full_jitter
from edge_agent.delivery.deleter import Deleter
from edge_agent.delivery.exception_frames import attempt
from edge_agent.delivery.send_log import SendLog
from edge_agent.delivery.transmit_pool import TransmitPool
from edge_agent.delivery.window import LeaseWindow
from edge_agent.errors import (
    RequestRejected,
    SinkError,
    SinkPaused,
    SinkUnavailable,
    SpoolCorrupt,
    SpoolError,
)
from edge_agent.records import LeasedRecord
from edge_agent.runtime_status import ForwarderSnapshot
from edge_agent.sinks.base import Outcome, Request, Sent, Sink, rebuilt
from edge_agent.spool.store import Spool
from edge_agent.worker import LinkState, ThreadWorker, WorkerState

log = logging.getLogger(__name__)

#: Longest idle wait between looks at the spool (new data also wakes the forwarder).
IDLE_WAIT_S = 1.0
#: Shortest pause when nothing could be packed (never spin).
MIN_WAIT_S = 0.005
#: A failing spool (full disk, busy) is retried after this long.
SPOOL_RETRY_S = 1.0
#: At stop, how long to wait for the answer to the request on the wire.
LANDING_AT_STOP_S = 10.0


#: Records refused as invalid, and the refusal.
_Blamed = tuple[list[LeasedRecord], str]
#: A request on the wire, the ids of its records, and its answer to come.
_Flight = tuple[Request, list[int], "Future[Any]"]


@dataclass
class ForwarderStats(WorkerState):
    requests: int = 0
    records_sent: int = 0
    entries_sent: int = 0
    bytes_sent: int = 0
    retries: int = 0
    request_errors: int = 0
    dead_lettered: int = 0
    last_error: str = ""
    last_error_at: float | None = None


class Forwarder(ThreadWorker):
    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        delivery: DeliveryConfig,
        stop: threading.Event,
        *,
        window_records: int,
        window_bytes: int,
        requests_in_flight: int = 1,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.sink = sink
        self.spool = spool
        self.delivery = delivery
        self._stop = stop
        self._clock = clock
        self._rng = rng or random.Random()
        self._window = LeaseWindow(
            spool,
            sink.name,
            max_records=window_records,
            max_bytes=window_bytes,
            with_meta=sink.needs_meta,
        )
        self._deleter = Deleter(
            spool, sink.name, lambda err: self._spool_failed(err, "deleting delivered records")
        )
        self._transmit_pool: TransmitPool | None = None
        self._requests_in_flight = requests_in_flight
        self._flights: collections.deque[_Flight] = collections.deque()
        self._backoff = Backoff(delivery.retry_min, delivery.retry_max, self._rng)
        self._hold_until = 0.0
        self._retry_at: float | None = None  # earliest retry handed back to the spool
        self._answered = 0  # requests the service answered (accepted, or per record)
        self._last_ok = False  # whether the latest request was answered
        self._sent = SendLog()
        self.stats = ForwarderStats()
        self.link = LinkState()
        self.spool_corrupt = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._start_thread(self.run, f"forward-{self.sink.name}")

    @property
    def healthy(self) -> bool:
        helpers_ok = self._stop.is_set() or (
            self._deleter.alive and (self._transmit_pool is None or self._transmit_pool.alive)
        )
        return helpers_ok and self.thread_ok

    def run(self) -> None:
        """The loop, once the sink can send (``sink.ready()``, e.g. credentials: a sink
        without them shows paused from the start); returns when the stop event is set."""
        self._deleter.start()
        self._transmit_pool = TransmitPool(
            self.sink.transmit, f"send-{self.sink.name}", threads=self._requests_in_flight
        )
        try:
            while not self._stop.is_set() and (error := self.sink.ready()):
                self._request_failed(error, paused=not error.retryable)
                self._stop.wait(self._hold_until - self._clock())
            while not self._stop.is_set():
                try:
                    self._step()
                except SpoolError as err:
                    self._spool_failed(err)
                    self._stop.wait(SPOOL_RETRY_S)
        finally:
            self._shut_down()

    def _spool_failed(self, err: SpoolError, doing: str = "") -> None:
        """Reported; a corrupt spool also tells the agent (it restarts to check it)."""
        self._set_error(f"spool: {doing} failed: {err}" if doing else f"spool: {err}")
        if isinstance(err, SpoolCorrupt):
            self.spool_corrupt = True

    def _shut_down(self) -> None:
        deadline = time.monotonic() + LANDING_AT_STOP_S
        while self._flights:
            try:
                self._land(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # whatever it was, the records are released below
                log.exception("sink %s: settling the last requests failed", self.sink.name)
        if self._transmit_pool is not None:
            self._transmit_pool.close(SPOOL_RETRY_S)
        self._deleter.close(SPOOL_RETRY_S * 5)
        try:
            self.spool.release(list(self._window.records.values()))
        except SpoolError as err:  # leases are cleared at the next open anyway
            log.warning("sink %s: releasing leased records at stop failed: %s", self.sink.name, err)
        self._window.clear()
        self.sink.close()
        self._set_state("stopped")

    # ------------------------------------------------------------------ one step

    def _step(self) -> None:
        now = self._clock()
        if now < self._hold_until:
            self._stop.wait(min(self._hold_until - now, IDLE_WAIT_S))
            return
        generation = self.spool.append_generation
        window, shares, ordered = self._window, self._requests_in_flight + 1, self.sink.ordered
        window.refill(shares)
        candidates, next_due = window.candidates(now, ordered=ordered)
        if len(candidates) < self.delivery.max_request_records and window.refill(
            shares, any_room=True
        ):
            # records waiting for a retry hold part of the window: let new ones in
            candidates, next_due = window.candidates(now, ordered=ordered)
        linger = self._linger_time(candidates)
        if (linger > 0 or not candidates) and self._flights:
            self._land()  # nothing to pack for now: take the answer first
            return
        if linger > 0:
            self.spool.wait_for_append(generation, linger)
            return
        if not candidates:
            if self._retry_at is not None and self._retry_at <= now:
                self._retry_at = None  # records handed back to the spool are due again
            waiting = len(window) > 0 or self._retry_at is not None
            self._set_state("waiting to retry" if waiting else "idle")
            wait = min(
                [IDLE_WAIT_S, *(due - now for due in (next_due, self._retry_at) if due is not None)]
            )
            if len(window) < window.max_records:
                self.spool.wait_for_append(generation, max(wait, 0.001))
            else:
                self._stop.wait(max(wait, 0.001))
            return
        packed = self.sink.pack(candidates, now)
        if packed.rejected:
            self._reject(packed.rejected)
        if packed.request is None:
            if self._flights:
                self._land()
                return
            if packed.wait is not None:
                self._set_state("pacing")
            self._stop.wait(min(max(packed.wait or MIN_WAIT_S, MIN_WAIT_S), IDLE_WAIT_S))
            return
        if len(self._flights) >= self._requests_in_flight:
            self._land()
            if self._clock() < self._hold_until or self._stop.is_set():
                return  # a request before failed as a whole: this one waits too
        self._launch(packed.request)

    def _linger_time(self, candidates: list[LeasedRecord]) -> float:
        """How long to wait for more records rather than send a small request now (each
        request costs headers, a signature and a round trip on the uplink): until the
        oldest candidate has been in the spool for ``linger``. A backlog is old and goes
        at once; so does a full request."""
        linger = self.delivery.linger
        if not candidates or linger <= 0 or self._stop.is_set():
            return 0.0
        age = time.time() - candidates[0].captured_at_ms / 1000  # spool order: the oldest
        if not 0 <= age < linger:  # old enough, or the clock stepped back: send
            return 0.0
        if len(candidates) >= self.delivery.max_request_records and not self.sink.aggregating:
            return 0.0
        size = 0
        for record in candidates:
            size += record.size
            if size >= self.delivery.max_request_bytes:
                return 0.0
        if self._window.full:
            return 0.0
        return linger - age

    # ------------------------------------------------------------------ sending

    def _launch(self, request: Request) -> None:
        """Put a request on the wire in the transmit pool; its records are in flight."""
        assert self._transmit_pool is not None
        records = [record for entry in request.entries for record in entry.records]
        ids = [record.id for record in records]
        self._window.in_flight.update(ids)
        self.spool.mark_sent(records)  # a restart counts them if they go out again
        self._elide_payloads(request)
        self._set_state("sending")
        self.stats.requests += 1
        self._flights.append((request, ids, self._transmit_pool.launch(request)))

    def _elide_payloads(self, request: Request) -> None:
        """Records whose entry carries their bytes in another form (an aggregate, a line
        with its delimiter) are held without their payloads while on the wire: the bytes
        are not held twice (the window reads them again if it has to pack them again)."""
        entries = [entry for entry in request.entries if entry.data is not entry.records[0].payload]
        bare = iter(self._window.elide([record for entry in entries for record in entry.records]))
        for entry in entries:
            entry.records = list(itertools.islice(bare, len(entry.records)))

    def _land(self, timeout: float | None = None) -> None:
        """Wait for the answer to the oldest request on the wire and settle it; whatever
        the answer did not settle (a whole-request failure) is due again."""
        request, ids, future = self._flights.popleft()
        try:
            error = future.exception(timeout)  # not raised here (see ``attempt``)
        except TimeoutError:
            return  # at stop: the records are released with the window
        finally:
            self._window.in_flight.difference_update(ids)
        if error is None:
            self._settle(request, future.result(), None)
        elif isinstance(error, Exception):
            self._settle(request, None, error)
        else:
            raise error

    def _deliver(self, request: Request, blamed: list[_Blamed]) -> None:
        """Send one part of a refused request in this thread and settle the answer."""
        self._set_state("sending")
        self.stats.requests += 1
        self.spool.mark_sent([record for entry in request.entries for record in entry.records])
        answer, error = attempt(self.sink.transmit, request)
        self._settle(request, answer, error, blamed)

    def _settle(
        self,
        request: Request,
        answer: Any,
        error: Exception | None,
        blamed: list[_Blamed] | None = None,
    ) -> None:
        """Settle what the service answered. ``blamed`` collects records refused as
        invalid while a refused request is being split up."""
        outcomes: list[Outcome] | None = None
        if error is None:
            outcomes, error = attempt(self.sink.outcomes, request, answer)
        if isinstance(error, RequestRejected):
            if blamed is None:
                self._split(request, error)
            else:
                self._bisect(request, error, blamed)
            return
        if isinstance(error, SinkError):  # whole request: back off, or pause if hopeless
            self._request_failed(error, paused=not error.retryable)
            return
        if error is not None:  # a bug or an unexpected answer: treat as transient
            log.error("sink %s: sending failed unexpectedly", self.sink.name, exc_info=error)
            self._request_failed(SinkUnavailable(type(error).__name__, str(error)), paused=False)
            return
        assert outcomes is not None  # answered, and read without an error
        self._delivered()
        self._answered += 1
        self._last_ok = True
        now = self._clock()
        accepted: list[LeasedRecord] = []
        accepted_bytes = 0
        failed: list[LeasedRecord] = []
        for entry, outcome in zip(request.entries, outcomes, strict=True):
            if isinstance(outcome, Sent):
                accepted += entry.records
                accepted_bytes += self._window.size_of(entry.records)
                self.stats.entries_sent += 1
                continue
            self.stats.retries += len(entry.records)
            self._set_error(f"{outcome.code}: {outcome.message}", quiet=True)
            if self.sink.ordered:
                self._retry_in_window(entry.records, now)
            else:
                failed += entry.records
        self._window.drop(accepted)
        self.stats.records_sent += len(accepted)
        self.stats.bytes_sent += accepted_bytes
        self._sent.add(now, len(accepted), accepted_bytes)
        if accepted:
            self._deleter.put(accepted)
        if failed:
            self._retry_in_spool(failed, now)

    def _retry_in_window(self, records: list[LeasedRecord], now: float) -> None:
        """Ordered mode: failed records stay leased, so that they block their keys; the
        records of one entry fall due together (one wake-up, one entry again)."""
        held = self._window.failures
        failures = max(held.get(record.id, 0) + record.attempts for record in records)
        due = now + full_jitter(
            failures, self.delivery.retry_min, self.delivery.retry_max, self._rng
        )
        self._window.hold_for_retry(records, due)

    def _retry_in_spool(self, records: list[LeasedRecord], now: float) -> None:
        """Unordered: failed records go back to the spool, due again after full jitter
        on their attempt count (kept in the spool), and free the window for others."""
        attempts = max(record.attempts for record in records)
        delay = full_jitter(attempts, self.delivery.retry_min, self.delivery.retry_max, self._rng)
        self.spool.retry(records, at_ms=int((time.time() + delay) * 1000))
        self._window.drop(records)
        due = now + delay
        self._retry_at = due if self._retry_at is None else min(self._retry_at, due)

    def _split(self, request: Request, err: SinkError) -> None:
        """The service refused the request as invalid: find the records to blame.

        If nothing gets through while splitting, and the request before did not either,
        the refusal is probably not about the records (a stream the service will not
        take direct puts for, say): the sink pauses and keeps them instead of
        dead-lettering a whole queue one record at a time."""
        answered = self._answered
        blamed: list[_Blamed] = []
        self._bisect(request, err, blamed)
        trusted = self._last_ok or self._answered > answered
        self._last_ok = self._answered > answered
        if not blamed:
            return
        if not trusted:
            self._request_failed(
                SinkPaused(err.code, f"every record was refused: {err.message}"), paused=True
            )
            return
        self._reject(
            [
                (record, f"refused by {self.sink.kind} {self.sink.target}: {error}")
                for records, error in blamed
                for record in records
            ]
        )

    def _bisect(self, request: Request, err: SinkError, blamed: list[_Blamed]) -> None:
        if len(request.entries) == 1:
            (entry,) = request.entries
            if len(entry.records) > 1:  # an aggregate: its records may each be fine alone
                records = self._window.restore(entry.records)  # evicted ones are gone
                if records:
                    self._deliver(Request(self.sink.plain_entries(records)), blamed)
            else:
                blamed.append((entry.records, str(err)))
            return
        half = len(request.entries) // 2
        for part in (request.entries[:half], request.entries[half:]):
            if self._clock() < self._hold_until or self._stop.is_set():
                return  # a part failed as a whole: the rest waits for the next round
            entries = rebuilt(self.sink, part, self._window.restore)
            if entries:
                self._deliver(Request(entries), blamed)

    def _request_failed(self, err: SinkError, *, paused: bool) -> None:
        self.stats.request_errors += 1
        if err.unreachable:
            self.link.down()
        elif err.answered:
            self.link.up()  # refused, throttled or a 5xx: an answer came back
        now = self._clock()
        if paused:
            delay = self.delivery.pause_probe
            if self.stats.state != "paused":
                log.error(
                    "sink %s: paused, %s %s refuses: %s; keeping the data, trying again "
                    "every %.0fs",
                    self.sink.name,
                    self.sink.kind,
                    self.sink.target,
                    err,
                    delay,
                )
            self._set_state("paused", str(err))
        else:
            delay = self._backoff.next_delay()
            if self._backoff.failures in (1, 5, 20) or self._backoff.failures % 100 == 0:
                log.warning(
                    "sink %s: %s (failure %d in a row); retrying in %.1fs",
                    self.sink.name,
                    err,
                    self._backoff.failures,
                    delay,
                )
            self._set_state("backing off", str(err))
        self._set_error(str(err), quiet=True)
        self._hold_until = now + delay

    def _reject(self, rejected: list[tuple[LeasedRecord, str]]) -> None:
        by_reason: dict[str, list[LeasedRecord]] = collections.defaultdict(list)
        for record, reason in rejected:
            by_reason[reason].append(record)
        for reason, records in by_reason.items():
            self.spool.dead_letter(records, reason)
            self._window.drop(records)
            self.stats.dead_lettered += len(records)
            self._set_error(f"dead-lettered {len(records)}: {reason}", quiet=True)

    # ------------------------------------------------------------------ status

    def _set_state(self, state: str, reason: str = "") -> None:
        stats = self.stats
        if stats.state in ("paused", "backing off") and state in (
            "sending",
            "pacing",
            "waiting to retry",
        ):
            return  # probing: paused or backing off until a request gets through
        stats.set(state, reason)

    def _delivered(self) -> None:
        """A request got an answer: the sink is reachable (again)."""
        self._backoff.reset()
        self.link.up()
        stats = self.stats
        if stats.state in ("paused", "backing off"):
            log.info(
                "sink %s: delivering again (%s for %.0fs: %s)",
                self.sink.name,
                stats.state,
                time.time() - stats.since,
                stats.reason,
            )
            stats.set("sending")

    def _set_error(self, message: str, *, quiet: bool = False) -> None:
        self.stats.last_error = message
        self.stats.last_error_at = time.time()
        if not quiet:
            log.error("sink %s: %s", self.sink.name, message)

    def snapshot(self) -> ForwarderSnapshot:
        records_per_s, bytes_per_s = self._sent.rates(self._clock())
        stats, link = self.stats, self.link
        snapshot: ForwarderSnapshot = {
            "type": self.sink.kind,
            "target": self.sink.target,
            "state": stats.state,
            "reason": stats.reason,
            "since": stats.since,
            "requests": stats.requests,
            "records_sent": stats.records_sent,
            "entries_sent": stats.entries_sent,
            "bytes_sent": stats.bytes_sent,
            "retries": stats.retries,
            "request_errors": stats.request_errors,
            "dead_lettered": stats.dead_lettered,
            "last_error": stats.last_error,
            "last_error_at": stats.last_error_at,
            "records_per_s": records_per_s,
            "bytes_per_s": bytes_per_s,
            "in_window": len(self._window),
            "online": link.online,
            "link_since": link.since,
        }
        # The sink's own keys (SinkFields: a part of ForwarderSnapshot's optional keys).
        snapshot.update(cast(ForwarderSnapshot, self.sink.snapshot()))
        return snapshot
