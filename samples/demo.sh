#!/usr/bin/env bash
# The local demo: a Mosquitto broker, a local Kinesis endpoint (kinesalite) and a local
# Kinesis Video endpoint (edge-agent kvs-local) on loopback, each behind a flaky uplink
# (samples/uplink.py); the sample sensor publishing QoS 1 readings and a test-pattern
# camera; edge-agent spooling both durably and forwarding them within an upload budget;
# then the uplink goes down while readings and video keep coming (the backlog grows in
# `edge-agent status`), comes back, and the backlog drains; the stream is read back as a
# consumer would (nothing missing), with the result rows of an edge analytics query
# (per-sensor statistics every 10 seconds) beside the raw readings, and the video the
# endpoint stored is an MKV file to play. No AWS account needed. State goes to
# ./.edge-agent-local/ (delete it to start over).
#
#   bash samples/demo.sh            # about 30 seconds, then stops everything
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
KINESIS_LINK=$(free_port)  # the agent reaches each endpoint through samples/uplink.py
KVS_LINK=$(free_port)
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
# kinesalite takes any credentials; boto3 only needs some to sign with.
export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1
export KINESIS_ENDPOINT=http://127.0.0.1:$KINESIS_LINK
export KVS_ENDPOINT=http://127.0.0.1:$KVS_LINK

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
.venv/bin/python samples/kinesis_stream.py --endpoint "http://127.0.0.1:$KINESIS_PORT" create edge-telemetry --shards 2

echo "== starting edge-agent kvs-local (local Kinesis Video Streams) on 127.0.0.1:$KVS_PORT"
rm -rf "$STATE/kvs"
.venv/bin/edge-agent kvs-local --port "$KVS_PORT" --dir "$STATE/kvs" --stream edge-camera \
  --access-key local --secret-key local >"$STATE/kvs-local.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  (echo > "/dev/tcp/127.0.0.1/$KVS_PORT") 2>/dev/null && break
  sleep 0.1
done

echo "== starting the uplink (samples/uplink.py) in front of both endpoints"
.venv/bin/python samples/uplink.py --listen "$KINESIS_LINK" --to "$KINESIS_PORT" &
links=($!)
.venv/bin/python samples/uplink.py --listen "$KVS_LINK" --to "$KVS_PORT" &
links+=($!)
pids+=("${links[@]}")

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

status_value() {  # a number from `edge-agent status --json`: a Python expression on it
  .venv/bin/edge-agent status -c configs/local.toml --json | .venv/bin/python -c \
    "import json, sys; s = json.load(sys.stdin); sinks = s['agent'].get('sinks', {}); \
queues = {q['name']: q for q in s['spool']['queues']}; print(int($1))"
}
wait_for() {  # wait_for WHAT EXPRESSION: until the expression (on the status) is true
  for _ in $(seq 600); do
    [ "$(status_value "$2")" -ge 1 ] && return 0
    sleep 0.1
  done
  echo "   (gave up waiting for $1)"
}

echo "== publishing $MESSAGES sensor readings at $RATE/s (samples/sensor_publisher.py)"
.venv/bin/python samples/sensor_publisher.py --port "$PORT" --count "$MESSAGES" --rate "$RATE"
wait_for "the readings" "sinks.get('telemetry', {}).get('records_sent', 0) >= $MESSAGES"
wait_for "the first fragments" "sinks.get('video', {}).get('fragments_acked', 0) >= 2"

echo "== edge-agent status"
.venv/bin/edge-agent status -c configs/local.toml

echo "== the uplink goes DOWN; $MESSAGES more readings arrive and the camera keeps recording"
kill -USR1 "${links[@]}"
.venv/bin/python samples/sensor_publisher.py --port "$PORT" --count "$MESSAGES" --rate "$RATE" \
  --start-seq "$MESSAGES"
wait_for "the outage to show" "not sinks.get('telemetry', {}).get('online', True)"
echo "== edge-agent status during the outage"
.venv/bin/edge-agent status -c configs/local.toml

echo "== the uplink comes BACK: the backlog drains within the upload budget ([uplink] max_rate)"
kill -USR2 "${links[@]}"
wait_for "the readings" "queues.get('telemetry', {}).get('pending_count', 1) == 0"
wait_for "the video backlog" "queues.get('video', {}).get('pending_count', 9) <= 1"
# The query's windows end every 10 s: wait until two were emitted and their rows sent.
wait_for "the analytics results" "s['agent'].get('analytics', {}).get('sensor_stats', \
{}).get('emitted', 0) >= 2 and queues.get('telemetry', {}).get('pending_count', 1) == 0"
echo "== edge-agent status after the outage"
.venv/bin/edge-agent status -c configs/local.toml

echo "== reading the stream back (samples/kinesis_stream.py read): nothing may be missing;"
echo "   the result rows of [analytics.sensor_stats] travel in the same stream"
.venv/bin/python samples/kinesis_stream.py --endpoint "http://127.0.0.1:$KINESIS_PORT" read edge-telemetry

echo "== stopping the agent (SIGTERM: commit, ack, exit)"
kill -TERM "$agent"
wait "$agent"
echo "== the video kvs-local received and stored:"
ls -l "$STATE"/kvs/*.mkv
echo "   play it with: ffplay $(ls "$STATE"/kvs/*.mkv | head -1)   (or mpv, VLC)"
echo "== done. The spool is $STATE/spool.db; see what it holds (and the last status) with"
echo "   EDGE_AGENT_STATE=$STATE .venv/bin/edge-agent status -c configs/local.toml"
