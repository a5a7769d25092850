"""A sample sensor: publishes JSON readings over MQTT, as a device on the bus would.

    python samples/sensor_publisher.py --port 1883 --count 100 --rate 20

Each message goes to ``sensors/<sensor>/<metric>`` and carries a sequence number, so a
reader can check that nothing was lost and see duplicates. With QoS 1 the publisher
waits until the broker has acknowledged every message before it exits.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

#: Messages the publisher keeps in flight (sent, not yet acknowledged by the broker).
MAX_INFLIGHT = 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--count", type=int, default=100, help="messages to send (0: forever)")
    parser.add_argument("--rate", type=float, default=0, help="messages/s (0: as fast as possible)")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--sensors", type=int, default=3, help="distinct sensors (topics)")
    parser.add_argument("--payload-size", type=int, default=0, help="pad payloads to N bytes")
    parser.add_argument("--start-seq", type=int, default=0)
    parser.add_argument("--topic-prefix", default="sensors", help="topics: PREFIX/<sensor>/...")
    parser.add_argument("--client-id", default=f"sensor-publisher-{random.randrange(1 << 30)}")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    pending: list[mqtt.MQTTMessageInfo] = []
    started = time.monotonic()
    seq = args.start_seq
    end = args.start_seq + args.count if args.count else None
    try:
        while end is None or seq < end:
            sensor = f"s{seq % args.sensors}"
            reading = {
                "sensor_id": sensor,
                "seq": seq,
                "value": round(random.gauss(21, 2), 2),
                "ts": time.time(),
            }
            body = json.dumps(reading)
            if args.payload_size > len(body):
                reading["pad"] = "x" * (args.payload_size - len(body) - 10)
                body = json.dumps(reading)
            info = client.publish(f"{args.topic_prefix}/{sensor}/temperature", body, qos=args.qos)
            pending.append(info)
            seq += 1
            if len(pending) >= MAX_INFLIGHT:
                pending[0].wait_for_publish(timeout=60)
                pending = [item for item in pending if not item.is_published()]
            if args.rate:
                delay = started + (seq - args.start_seq) / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        for info in pending:
            info.wait_for_publish(timeout=60)
            if not info.is_published():
                print("broker did not acknowledge every message", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    if not args.quiet:
        elapsed = time.monotonic() - started
        print(f"published {seq - args.start_seq} messages in {elapsed:.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
