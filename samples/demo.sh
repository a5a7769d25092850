#!/usr/bin/env bash
# The local demo: a Mosquitto broker, a local Kinesis endpoint (kinesalite) and a local
# Kinesis Video endpoint (edge-agent kvs-local) on loopback; the sample sensor publishing
# QoS 1 readings and a test-pattern camera; edge-agent spooling both durably and
# forwarding them; `edge-agent status` showing it; the stream read back as a consumer
# would, and the video the endpoint stored as an MKV file to play. No AWS account
# needed. State goes to ./.edge-agent-local/ (delete it to start over).
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
free_port() {
  .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT=$(free_port)
KINESIS_PORT=$(free_port)
KVS_PORT=$(free_port)
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
# kinesalite takes any credentials; boto3 only needs some to sign with.
export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1
export KINESIS_ENDPOINT=http://127.0.0.1:$KINESIS_PORT
export KVS_ENDPOINT=http://127.0.0.1:$KVS_PORT

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

echo "== starting kinesalite (local Kinesis Data Streams) on 127.0.0.1:$KINESIS_PORT"
NODE_PATH=$PWD/.local-tools/node_modules node -e \
  "process.on('uncaughtException', e => { if (e.code !== 'ECONNRESET') throw e }); require('kinesalite')({createStreamMs: 0}).listen($KINESIS_PORT, '127.0.0.1')" &
pids+=($!)
for _ in $(seq 100); do
  (echo > "/dev/tcp/127.0.0.1/$KINESIS_PORT") 2>/dev/null && break
  sleep 0.1
done
.venv/bin/python samples/kinesis_stream.py --endpoint "$KINESIS_ENDPOINT" create edge-telemetry --shards 2

echo "== starting edge-agent kvs-local (local Kinesis Video Streams) on 127.0.0.1:$KVS_PORT"
rm -rf "$STATE/kvs"
.venv/bin/edge-agent kvs-local --port "$KVS_PORT" --dir "$STATE/kvs" --stream edge-camera \
  --access-key local --secret-key local >"$STATE/kvs-local.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  (echo > "/dev/tcp/127.0.0.1/$KVS_PORT") 2>/dev/null && break
  sleep 0.1
done

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

echo "== waiting until the agent has forwarded every reading"
for _ in $(seq 300); do
  sent=$(.venv/bin/edge-agent status -c configs/local.toml --json | .venv/bin/python -c \
    'import json, sys; print(json.load(sys.stdin)["agent"].get("sinks", {}).get("telemetry", {}).get("records_sent", 0))')
  [ "$sent" -ge "$MESSAGES" ] && break
  sleep 0.1
done

echo "== waiting until the camera's first fragments are persisted"
for _ in $(seq 300); do
  acked=$(.venv/bin/edge-agent status -c configs/local.toml --json | .venv/bin/python -c \
    'import json, sys; print(json.load(sys.stdin)["agent"].get("sinks", {}).get("video", {}).get("fragments_acked", 0))')
  [ "$acked" -ge 3 ] && break
  sleep 0.1
done

echo "== edge-agent status"
.venv/bin/edge-agent status -c configs/local.toml

echo "== reading the stream back (samples/kinesis_stream.py read)"
.venv/bin/python samples/kinesis_stream.py --endpoint "$KINESIS_ENDPOINT" read edge-telemetry

echo "== stopping the agent (SIGTERM: commit, ack, exit)"
kill -TERM "$agent"
wait "$agent"
echo "== the video kvs-local received and stored:"
ls -l "$STATE"/kvs/*.mkv
echo "   play it with: ffplay $(ls "$STATE"/kvs/*.mkv | head -1)   (or mpv, VLC)"
echo "== done. The spool is $STATE/spool.db; see what it holds (and the last status) with"
echo "   EDGE_AGENT_STATE=$STATE .venv/bin/edge-agent status -c configs/local.toml"
