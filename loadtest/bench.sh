#!/usr/bin/env bash
# Reproduces loadtest/RESULTS.md: one embedded node pinned to CPU 0, the harness pinned to
# CPU 1, a fresh node per scenario.
#
#   loadtest/bench.sh [idle|broadcast|all]        (default: all)
#
# NODE_BIN=path/to/gateway-node compares another build (e.g. an older commit) under the same
# harness; OUT=dir sets where result files go (default loadtest/results).
set -euo pipefail
cd "$(dirname "$0")/.."

scenario="${1:-all}"
case "$scenario" in
  idle | broadcast | all) ;;
  *) echo "usage: $0 [idle|broadcast|all]" >&2; exit 2 ;;
esac
out="${OUT:-loadtest/results}"
mkdir -p "$out"
cargo build --release -p gateway-node -p wsgate-loadtest >&2
node_bin="${NODE_BIN:-target/release/gateway-node}"
harness=target/release/wsgate-loadtest
port=18080
admin=19080
node_pid=""

# SIGTERM starts the node's drain (SPEC section 8: about 5 s + 10 s, then exit); it gets 30 s
# before SIGKILL, so the node never outlives this script.
stop_node() {
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
      kill -0 "$node_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
  fi
  node_pid=""
}
trap stop_node EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_node() {
  stop_node
  port=$((port + 1))
  admin=$((admin + 1))
  # taskset execs the node, so $! is the node's own PID (what --node-pid measures).
  WSGATE_LIMITS__MAX_CONNECTIONS=0 taskset -c 0 "$node_bin" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" 2>"$out/node.log" &
  node_pid=$!
  for _ in $(seq 1 100); do
    if ! kill -0 "$node_pid" 2>/dev/null; then
      break
    fi
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/readyz")" = 200 ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "bench.sh: node did not become ready" >&2
  cat "$out/node.log" >&2
  exit 1
}

run_idle() {
  start_node
  taskset -c 1 "$harness" idle --url "ws://127.0.0.1:$port/ws" --node-pid "$node_pid" \
    --connections 18000 --hold 10s --out "$out/idle.json"
}

run_broadcast() {
  start_node
  taskset -c 1 "$harness" broadcast --url "ws://127.0.0.1:$port/ws" --node-pid "$node_pid" \
    --members 5000 --rate 10 --duration 20s --size 100 --out "$out/broadcast.json"
}

case "$scenario" in
  idle) run_idle ;;
  broadcast) run_broadcast ;;
  all) run_idle; run_broadcast ;;
esac
