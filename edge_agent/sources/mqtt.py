"""MQTT intake: paho-mqtt 2.x with a persistent session and ack-after-commit.

Two threads:

* paho's network thread receives messages; ``_on_message`` only appends what the
  committer needs of each (``_Inbound``: topic, payload, ids, receive time) to an inbox
  and wakes the committer.
* the committer thread takes everything in the inbox (up to ``commit_max_records``),
  turns it into spool records in one pass, appends them in **one transaction**, and only
  then PUBACKs each QoS 1 message, in arrival order (MQTT requires that order).

If the process dies between commit and PUBACK, the broker re-sends those messages (same
client id, clean session off) and they are stored twice: duplicates are bounded by one
commit batch and counted (the broker marks re-sends with DUP). If the spool refuses a
write (disk full), nothing is acked and the committer retries with backoff (a paused
intake: with half the batch first, down to one message, as a smaller batch may fit in
the space the spool already holds); the broker keeps the messages meanwhile. On stop,
new messages are no longer taken (the broker will re-send them), the inbox is committed
and acked, then the client disconnects.

A connection that fails is retried forever (a broker, or its certificate, may be fixed
later), and reported by its cause: unreachable, or a TLS failure in OpenSSL's words (the
broker's certificate not issued by ``tls.ca_file``, not for ``host``, expired). A
reconnect that finds no session where there was one is a warning and counted
(``sessions_lost``): the broker lost what it had queued for the agent.

A reload changes the subscriptions on the open connection (``resubscribe``): new ones are
subscribed, removed ones unsubscribed (also at the next connect, if the connection is
down: the broker's session would keep them), and the routing changes at a batch boundary.
"""

from __future__ import annotations

import logging
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.clock_sync import ClockSync
from edge_agent.config.agent import SpoolConfig
from edge_agent.config.analytics import QUEUE_PREFIX
from edge_agent.config.mqtt import MqttConfig, Subscription
from edge_agent.errors import IntakePaused, SpoolCorrupt, SpoolError
from edge_agent.events.triggers import TriggerRouter
from edge_agent.records import Record
from edge_agent.runtime_status import MqttSnapshot
from edge_agent.sources.broker_errors import connect_failure
from edge_agent.sources.mqtt_client import paho_client
from edge_agent.sources.mqtt_status import MqttStatus, snapshot_of
from edge_agent.sources.mqtt_subscriptions import Subscriptions
from edge_agent.spool.store import Spool

log = logging.getLogger(__name__)

#: QoS 0 messages held in memory while the spool refuses writes; beyond, they are dropped
#: (and counted). QoS 1 messages are never dropped: see INBOX_HIGH_WATER.
MAX_INBOX = 200_000
#: Brokers do not reliably bound what they send ahead of our PUBACKs (Mosquitto 2.0 sent
#: 20,000 messages with max_inflight_messages 1000). Above this many commit batches
#: waiting in the inbox, the network thread stops reading until the committer catches up,
#: and TCP pushes back on the broker. Bounds memory during a burst or a slow disk.
INBOX_HIGH_WATER_BATCHES = 2
#: Longest the network thread pauses at once (it re-checks, and keeps sending PUBACKs).
BACKPRESSURE_WAIT_S = 0.5
#: Backoff while the spool refuses writes.
SPOOL_RETRY_MIN_S = 0.05
SPOOL_RETRY_MAX_S = 5.0
#: How long stop() waits for the broker to confirm the last PUBACKs, then the DISCONNECT.
DISCONNECT_TIMEOUT_S = 2.0
#: Unsubscribed from (never subscribed) at shutdown: its UNSUBACK proves the acks arrived.
FLUSH_TOPIC = "$edge-agent/flush"
#: Under load (the last batch this big), the committer waits this long for more before
#: it commits (unless commit_linger is set): larger batches, fewer commits, and the
#: network thread has the interpreter to itself meanwhile.
BUSY_BATCH = 16
BUSY_LINGER_S = 0.002

PUBACK = 0x40
_PUBACK = struct.Struct("!BBH")

#: A message received: (topic, payload, QoS, packet id, DUP flag, receive time in ms,
#: connection generation it arrived on). What the committer needs of paho's message, not
#: the message itself: that holds a ``threading.Condition`` of its own, and a message
#: held in the inbox would cost 1.8 KiB besides its payload instead of 0.3 (thousands
#: are held while the committer catches up with a burst).
_Inbound = tuple[str, bytes | bytearray, int, int, bool, int, int]


class MqttSource:
    """Subscribes, spools, acks after commit. ``start()`` returns at once; paho reconnects."""

    def __init__(
        self,
        config: MqttConfig,
        spool: Spool,
        spool_config: SpoolConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._spool = spool
        self._max_batch = spool_config.commit_max_records
        self._linger = spool_config.commit_linger
        self._clock = clock
        self._inbox: deque[_Inbound] = deque()
        self._wake = threading.Event()
        self._drained = threading.Event()
        self._high_water = INBOX_HIGH_WATER_BATCHES * self._max_batch
        self._closing = threading.Event()
        self._disconnected = threading.Event()
        self._flushed = threading.Event()
        self._flush_lock = threading.Lock()
        self._flush_mid: int | None = None
        self._ack_lock = threading.Lock()
        self._generation = 0
        #: Whether the broker holds a session of ours (set once subscribed or resumed).
        self._session_held = False
        self._network_thread: threading.Thread | None = None
        self._committer_failed = False
        #: Set when SQLite reports corruption mid-run: the agent restarts to quarantine it.
        self.spool_corrupt = False
        #: Replaced as a whole by a reload (under the lock, with what it sends).
        self._subscriptions = Subscriptions(config.subscriptions)
        self._subscribe_lock = threading.Lock()
        #: Whether the system clock is synchronized (records are marked until it is).
        self.clock_sync: ClockSync | None = None
        #: Event triggers: their messages become camera events in the batch's transaction.
        self.triggers: TriggerRouter | None = None
        self.status = MqttStatus(since=clock())
        self._client = self._make_client()
        self._committer = threading.Thread(
            target=self._commit_loop, name="mqtt-commit", daemon=True
        )

    # ------------------------------------------------------------------ lifecycle

    def _make_client(self) -> mqtt.Client:
        client = paho_client(self._config)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        return client

    def start(self) -> None:
        config = self._config
        properties = None
        if config.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = int(config.session_expiry)
        self._set_state("connecting")
        log.info("mqtt: connecting to %s:%d as %r", config.host, config.port, config.client_id)
        self._client.connect_async(
            config.host,
            config.port,
            keepalive=max(5, int(config.keepalive)),
            clean_start=False if config.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._committer.start()
        self._client.loop_start()
        # paho keeps its thread privately; watched so that a crash in it is noticed.
        thread = getattr(self._client, "_thread", None)
        self._network_thread = thread if isinstance(thread, threading.Thread) else None

    def stop(self, timeout: float = 8.0) -> None:
        """Stop taking messages, commit and ack what was received, disconnect."""
        self._closing.set()
        self._wake.set()
        self._committer.join(timeout)
        if self._committer.is_alive():
            log.error("mqtt: committer did not finish within %.1fs", timeout)
        self._flush_acks()
        self._client.disconnect()
        if not self._disconnected.wait(DISCONNECT_TIMEOUT_S):
            log.warning("mqtt: broker did not see a clean disconnect; unacked messages return")
        self._client.loop_stop()
        self._set_state("stopped")

    def _flush_acks(self) -> None:
        """Make sure the broker has processed our PUBACKs before the socket closes.

        Closing a socket with unread data in it (the broker keeps sending) makes TCP send a
        reset, and the broker then discards what it had not read yet: our last PUBACKs. The
        broker handles packets in order: once it answers an UNSUBSCRIBE (of a topic never
        subscribed to), every PUBACK before it has been processed."""
        with self._flush_lock:  # the UNSUBACK may be handled before unsubscribe returns
            result, mid = self._client.unsubscribe(FLUSH_TOPIC)
            self._flush_mid = mid
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            return  # not connected: nothing can be flushed, the broker re-sends
        if not self._flushed.wait(DISCONNECT_TIMEOUT_S):
            log.warning("mqtt: broker did not confirm the last acks; it may re-send them")

    def _on_unsubscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[Any],
        properties: Properties | None,
    ) -> None:
        with self._flush_lock:
            if mid == self._flush_mid:
                self._flushed.set()
        with self._subscribe_lock:  # the UNSUBACK may come before unsubscribe returned
            self._subscriptions.unsubscribed(mid)

    @property
    def healthy(self) -> bool:
        """False if the committer or paho's network thread died (no more watchdog pings,
        so systemd restarts the agent)."""
        if self._closing.is_set():
            return True
        network = self._network_thread
        return (
            self._committer.is_alive()
            and not self._committer_failed
            and (network is None or network.is_alive())
        )

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: Any,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._set_state("refused")
            self._error(f"broker refused the connection: {reason_code}; retrying")
            return
        self.status.connects += 1
        self._set_state("connected")
        self._note_session(bool(flags.session_present))
        with self._subscribe_lock:  # not interleaved with a reload's changes
            subscriptions = self._subscriptions
            self._unsubscribe(sorted(subscriptions.to_unsubscribe))
            self._subscribe(list(subscriptions.current))

    def _subscribe(self, subscriptions: list[Subscription]) -> None:
        if subscriptions:
            result, mid = self._client.subscribe([(sub.topic, sub.qos) for sub in subscriptions])
            if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._subscriptions.subscribing(mid, subscriptions)

    def _unsubscribe(self, topics: list[str]) -> None:
        if topics:
            result, mid = self._client.unsubscribe(topics)
            if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._subscriptions.unsubscribing(mid, topics)

    def resubscribe(self, config: MqttConfig) -> None:
        """Take the subscriptions of ``config`` (a reload; its other options are the
        running ones): subscribe what is new or has a new QoS, unsubscribe what went
        (now, or at the next connect)."""
        with self._subscribe_lock:
            table, removed, changed = self._subscriptions.replaced(config.subscriptions)
            self._config, self._subscriptions = config, table
            if self._client.is_connected():
                self._unsubscribe(removed)
                self._subscribe(changed)
        log.info("mqtt: subscriptions now %s", ", ".join(s.topic for s in table.current) or "none")

    def carry_over(self, previous: MqttSource) -> None:
        """Go on from ``previous`` (stopped; the same broker and client id, reconnected
        for new options): its counters, whether the broker holds our session, and the
        filters still to unsubscribe from."""
        self.status = previous.status
        self._session_held = previous._session_held
        self._subscriptions = previous._subscriptions.replaced(self._config.subscriptions)[0]

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[Any],
        properties: Properties | None,
    ) -> None:
        with self._subscribe_lock:  # the SUBACK may come before subscribe returned
            subscriptions = self._subscriptions.subscribed(mid)
        for sub, code in zip(subscriptions, reason_codes, strict=False):
            if code.is_failure:
                self._error(f"subscription to {sub.topic!r} refused: {code}")
            else:
                self._session_held = True  # the broker keeps it (clean session off)

    def _note_session(self, present: bool) -> None:
        """Log the connect; a session gone that this process had is a warning and counted
        (the broker restarted without persistence, or the session expired): what the
        broker had queued for the agent is lost. A first connect without one is normal."""
        config = self._config
        if present or not self._session_held:
            log.info(
                "mqtt: connected to %s:%d (session present: %s)", config.host, config.port, present
            )
        else:
            self.status.sessions_lost += 1
            log.warning(
                "mqtt: connected to %s:%d, but the broker has lost the session of %r: the "
                "messages it held for the agent may be gone (sessions lost: %d)",
                config.host,
                config.port,
                config.client_id,
                self.status.sessions_lost,
            )
        self._session_held = self._session_held or present

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from the ``except OSError`` around its connect and hands over no
        # exception: the one being handled is the cause.
        state, message = connect_failure(sys.exception(), self._config.host, self._config.port)
        self._set_state(state)
        self._error(f"{message}; retrying (backoff up to {self._config.reconnect_max:.0f}s)")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: Any,
        properties: Properties | None,
    ) -> None:
        with self._ack_lock:
            self._generation += 1
        if self._closing.is_set():
            self._disconnected.set()
            return
        if self.status.state == "refused":
            return  # the refusal said why; paho closes the socket after it
        self._set_state("disconnected")
        self._error(f"disconnected from broker: {reason_code}; reconnecting")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._closing.is_set():
            return  # not acked: the broker re-sends it to the next session
        if message.qos == 0 and len(self._inbox) >= MAX_INBOX:
            self.status.dropped_qos0 += 1
            return
        self._inbox.append((
            message.topic, message.payload, message.qos, message.mid, message.dup,
            int(self._clock() * 1000), self._generation,
        ))  # fmt: skip
        if not self._wake.is_set():  # set() takes a lock: once per wake-up, not per message
            self._wake.set()
        if len(self._inbox) >= self._high_water:
            self._drained.clear()
            if len(self._inbox) >= self._high_water:
                self.status.backpressure_waits += 1
                self._drained.wait(BACKPRESSURE_WAIT_S)

    # ------------------------------------------------------------------ committing

    def _commit_loop(self) -> None:
        backoff = SPOOL_RETRY_MIN_S
        held: list[_Inbound] = []
        busy = False
        try:
            while True:
                if not held:
                    if not self._inbox:
                        if self._closing.is_set():
                            break
                        self._wake.wait(0.5)
                        self._wake.clear()
                        continue
                    if len(self._inbox) < self._max_batch and (self._linger or busy):
                        self._closing.wait(self._linger or BUSY_LINGER_S)
                    held = self._take_batch()
                    busy = len(held) >= BUSY_BATCH
                try:
                    self._commit(held)
                except Exception as err:  # the committer must not die: retry, report
                    if isinstance(err, IntakePaused) and len(held) > 1:
                        # A smaller batch may fit in the space the spool already holds
                        # (a full disk): the rest goes back to the front of the inbox.
                        half = len(held) // 2
                        self._inbox.extendleft(reversed(held[half:]))
                        held = held[:half]
                        continue
                    if isinstance(err, IntakePaused):  # the spool logs a pause once
                        self.status.last_error = f"not acked, waiting: {err}"
                        self.status.last_error_at = self._clock()
                    elif isinstance(err, SpoolError):
                        self._error(f"spool refused {len(held)} messages (not acked): {err}")
                    else:
                        log.exception("mqtt: committing %d messages failed", len(held))
                        self._error(f"committing failed (not acked): {err!r}")
                    if isinstance(err, SpoolCorrupt):
                        self.spool_corrupt = True
                    if self._closing.wait(backoff):
                        break  # not acked: the broker re-sends them to the next session
                    backoff = min(backoff * 2, SPOOL_RETRY_MAX_S)
                    continue
                backoff = SPOOL_RETRY_MIN_S
                held = []
        except BaseException:
            self._committer_failed = True
            log.exception("mqtt: committer failed")
            raise

    def _take_batch(self) -> list[_Inbound]:
        inbox = self._inbox
        count = min(len(inbox), self._max_batch)
        batch = [inbox.popleft() for _ in range(count)]
        if len(inbox) < self._high_water:
            self._drained.set()
        return batch

    def _commit(self, batch: list[_Inbound]) -> None:
        records: list[Record] = []
        redelivered = 0
        unrouted = 0
        subscriptions = self._subscriptions
        routes = subscriptions.routes
        sync = self.clock_sync
        unsynchronized = sync is not None and not sync.synchronized
        for topic, received, _, _, dup, received_ms, _ in batch:
            route = routes.get(topic)
            if route is None:
                route = subscriptions.route(topic)
            targets, meta = route
            if not targets:
                unrouted += 1
                continue
            payload = bytes(received)
            if unsynchronized and sync is not None:
                meta = sync.mark(meta)
            redelivered += dup
            for sink, subscription in targets:
                template = subscription.partition_key
                key = topic if template.is_plain_topic else template.render(topic, payload)
                records.append(Record(sink, key, received_ms, payload, meta, dup))
        if redelivered:  # an analytics query counts each reading once (a sink may twice)
            records = self._spool.without_repeats(records, analytics_queue)
        also = None
        if self.triggers is not None:  # MQTT triggers: events written with the batch
            records, also = self.triggers.split(records)
        self._spool.append(records, also=also)
        status = self.status
        status.received += len(batch)
        status.committed += len(batch) - unrouted
        status.redelivered += redelivered
        status.unrouted += unrouted
        status.commit_batches += 1
        status.max_batch = max(status.max_batch, len(batch))
        status.acked += self._send_acks(batch)

    def _send_acks(self, batch: list[_Inbound]) -> int:
        """PUBACK each message, in arrival order, as one write.

        paho's public ``ack()`` queues and wakes its thread once per message, a third of
        the agent's per-message cost at high rates. The PUBACK packet is four fixed bytes
        (valid in MQTT 3.1.1 and, meaning success, in 5), so the batch is queued as one
        packet through paho's queue; if that internal ever goes away, fall back.

        Only messages of the current connection are acked: after a reconnect the broker
        re-sends the others (same packet ids, possibly reused), and a PUBACK queued while
        paho reconnects would otherwise go out before CONNECT.
        """
        with self._ack_lock:
            if not self._client.is_connected():
                return 0
            generation = self._generation
            mids = [
                mid
                for _, _, qos, mid, _, _, arrived_on in batch
                if qos == 1 and arrived_on == generation
            ]
            if not mids:
                return 0
            queue_packet = getattr(self._client, "_packet_queue", None)
            if queue_packet is None:
                for mid in mids:
                    self._client.ack(mid, 1)
            else:
                queue_packet(PUBACK, b"".join(_PUBACK.pack(PUBACK, 2, mid) for mid in mids), 0, 0)
        return len(mids)

    # ------------------------------------------------------------------ status

    def _set_state(self, state: str) -> None:
        self.status.set(state, at=self._clock())

    def _error(self, message: str) -> None:
        now = self._clock()
        last_at = self.status.last_error_at
        if message != self.status.last_error or last_at is None or now - last_at >= 30:
            log.warning("mqtt: %s", message)
            self.status.last_error_at = now
        self.status.last_error = message

    def snapshot(self) -> MqttSnapshot:
        return snapshot_of(self.status, len(self._inbox), self._config)


def analytics_queue(queue: str) -> bool:
    return queue.startswith(QUEUE_PREFIX)
