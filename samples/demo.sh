#!/usr/bin/env bash
# The local demo: a Mosquitto broker on loopback, the sample sensor publishing QoS 1
# readings, edge-agent spooling them durably, and `edge-agent status` showing the result.
# No AWS account needed. State goes to ./.edge-agent-local/ (delete it to start over).
#
#   bash samples/demo.sh            # about 15 seconds, then stops everything
#   MESSAGES=2000 RATE=200 bash samples/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup

MESSAGES=${MESSAGES:-300}
RATE=${RATE:-50}
STATE=.edge-agent-local
mkdir -p "$STATE/broker"
PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

{
  echo "listener $PORT 127.0.0.1"
  echo "allow_anonymous true"
  echo "persistence true"
  echo "persistence_location $PWD/$STATE/broker/"
  echo "max_queued_messages 0"
  echo "log_dest file $PWD/$STATE/broker/mosquitto.log"
  [ "$(id -u)" -eq 0 ] && echo "user root"
} > "$STATE/broker/mosquitto.conf"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== starting Mosquitto on 127.0.0.1:$PORT"
"$MOSQUITTO" -c "$STATE/broker/mosquitto.conf" &
pids+=($!)

export MQTT_PORT=$PORT EDGE_AGENT_STATE=$STATE
echo "== starting edge-agent (configs/local.toml), log in $STATE/agent.log"
.venv/bin/edge-agent run -c configs/local.toml >"$STATE/agent.log" 2>&1 &
agent=$!
pids+=("$agent")
for _ in $(seq 100); do
  grep -q "mqtt: connected" "$STATE/agent.log" 2>/dev/null && break
  kill -0 "$agent" 2>/dev/null || { cat "$STATE/agent.log"; exit 1; }
  sleep 0.1
done

echo "== publishing $MESSAGES sensor readings at $RATE/s (samples/sensor_publisher.py)"
.venv/bin/python samples/sensor_publisher.py --port "$PORT" --count "$MESSAGES" --rate "$RATE"

echo "== edge-agent status"
sleep 1  # the running agent refreshes its status twice a second
.venv/bin/edge-agent status -c configs/local.toml

echo "== stopping the agent (SIGTERM: commit, ack, exit)"
kill -TERM "$agent"
wait "$agent"
echo "== spool: $STATE/spool.db — inspect it with"
echo "   MQTT_PORT=$PORT EDGE_AGENT_STATE=$STATE .venv/bin/edge-agent status -c configs/local.toml"
echo "   .venv/bin/python -c \"import sqlite3; [print(r) for r in sqlite3.connect('$STATE/spool.db').execute('select partition_key, payload from records limit 5')]\""
