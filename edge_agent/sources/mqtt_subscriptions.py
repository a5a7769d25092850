"""What the MQTT source subscribes to, which sinks each topic feeds, and what a reload
changes on the broker.

A :class:`Subscriptions` is replaced as a whole by a reload (``replaced``), so the
committer, which takes the current one once per batch, routes a batch by one set of
subscriptions. Filters a reload removed are unsubscribed at once when connected, else
at the next connect: the broker's persistent session would otherwise keep them. A
filter stays to be unsubscribed until the broker's UNSUBACK for it (paho drops packets
not yet sent when the connection goes), and the SUBSCRIBE and UNSUBSCRIBE requests in
flight are shared by a table and the one that replaces it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

import paho.mqtt.client as mqtt

from edge_agent.config.mqtt import Subscription

#: Distinct topics whose routes are cached before the cache starts over.
ROUTE_CACHE_SIZE = 10_000

#: The (sink, subscription) pairs a topic feeds, and the meta JSON of its records.
Route = tuple[tuple[tuple[str, Subscription], ...], str]


class Subscriptions:
    def __init__(self, subscriptions: Sequence[Subscription]) -> None:
        self.current = tuple(subscriptions)
        #: Routes by topic (read without a lock by the committer: a cache).
        self.routes: dict[str, Route] = {}
        #: Filters to unsubscribe from (at the next connect, if not answered yet).
        self.to_unsubscribe: set[str] = set()
        self._subscribing: dict[int, list[Subscription]] = {}
        self._unsubscribing: dict[int, list[str]] = {}
        self._lock = threading.Lock()

    def route(self, topic: str) -> Route:
        """Which sinks a topic feeds (first matching subscription per sink wins)."""
        route = self.routes.get(topic)
        if route is not None:
            return route
        targets: dict[str, Subscription] = {}
        for subscription in self.current:
            if mqtt.topic_matches_sub(subscription.topic, topic):
                for sink in subscription.sinks:
                    targets.setdefault(sink, subscription)
        if len(self.routes) >= ROUTE_CACHE_SIZE:
            self.routes.clear()
        route = (tuple(targets.items()), json.dumps({"topic": topic}))
        self.routes[topic] = route
        return route

    def replaced(
        self, subscriptions: Sequence[Subscription]
    ) -> tuple[Subscriptions, list[str], list[Subscription]]:
        """The table for ``subscriptions`` (what is still to unsubscribe carried over),
        the filters removed, and the subscriptions new or with a new QoS."""
        old = {sub.topic: sub for sub in self.current}
        new = {sub.topic: sub for sub in subscriptions}
        removed = sorted(set(old) - set(new))
        changed = [
            sub for topic, sub in new.items() if topic not in old or old[topic].qos != sub.qos
        ]
        table = Subscriptions(subscriptions)
        with self._lock:
            table.to_unsubscribe = (self.to_unsubscribe | set(removed)) - set(new)
        table._subscribing, table._unsubscribing = self._subscribing, self._unsubscribing
        table._lock = self._lock
        return table, removed, changed

    def subscribing(self, mid: int, subscriptions: list[Subscription]) -> None:
        """A SUBSCRIBE went out as message ``mid``."""
        with self._lock:
            self._subscribing[mid] = subscriptions

    def subscribed(self, mid: int) -> list[Subscription]:
        """What the SUBACK of ``mid`` answers, in order (none: not one of ours)."""
        with self._lock:
            return self._subscribing.pop(mid, [])

    def unsubscribing(self, mid: int, topics: list[str]) -> None:
        """An UNSUBSCRIBE of ``topics`` went out as message ``mid``."""
        with self._lock:
            self._unsubscribing[mid] = topics

    def unsubscribed(self, mid: int) -> None:
        """The broker answered the UNSUBSCRIBE ``mid``: its filters are gone."""
        with self._lock:
            self.to_unsubscribe -= set(self._unsubscribing.pop(mid, ()))
