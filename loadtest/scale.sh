#!/usr/bin/env bash
# 200,000 connections on one machine: as many wsgate nodes as it takes (one process may hold
# only 20,000 open files here) through one redis-server, every connection a member of one
# room spanning every node, held idle (node CPU, RSS per connection, Redis commands/s and
# memory for affinity upkeep), then three broadcasts (one a second, 200,000 deliveries each)
# that must reach every member.
#
#   loadtest/scale.sh [check|start|run|stop]   (default: run = check, start, measure, stop)
#
# CONNECTIONS (default 200000), NODES (default: one per 17,000 connections), HOLD (idle hold,
# default 30s), OUT (default loadtest/results). start leaves the topology running (its PIDs in
# $OUT/scale/pids) until stop.
set -euo pipefail
cd "$(dirname "$0")/.."

connections="${CONNECTIONS:-200000}"
per_node=17000
nodes="${NODES:-$(((connections + per_node - 1) / per_node))}"
hold="${HOLD:-30s}"
out="${OUT:-loadtest/results}"
dir="$out/scale"
redis_port=16600
base_port=18600
base_admin=19600
node_bin=target/release/gateway-node
harness=target/release/wsgate-loadtest

fail() {
  echo "scale.sh: $*" >&2
  exit 1
}

# The limits the topology needs, each with what to do when it is missing.
check() {
  local need_files=$(((connections + nodes - 1) / nodes + 512))
  local hard
  hard=$(ulimit -Hn)
  [ "$hard" = unlimited ] || [ "$hard" -ge "$need_files" ] ||
    fail "each node needs $need_files open files and the hard limit is $hard: use more nodes (NODES=$(((connections + hard - 600) / (hard - 512))))"
  ulimit -n "$hard"
  local lo hi
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
  # The harness binds to 249 loopback source addresses, each with the whole port range.
  [ $(((hi - lo) * 249)) -ge "$connections" ] ||
    fail "ephemeral ports $lo-$hi x 249 source addresses < $connections: widen net.ipv4.ip_local_port_range"
  if [ -r /proc/sys/net/netfilter/nf_conntrack_max ]; then
    local ct
    ct=$(cat /proc/sys/net/netfilter/nf_conntrack_max)
    [ "$ct" -ge $((connections + 10000)) ] ||
      fail "nf_conntrack_max is $ct, under $connections connections: sysctl -w net.netfilter.nf_conntrack_max=$((connections * 2))"
  fi
  local somax
  somax=$(cat /proc/sys/net/core/somaxconn)
  [ "$somax" -ge 1024 ] || fail "net.core.somaxconn is $somax: sysctl -w net.core.somaxconn=4096"
  local avail_kib
  avail_kib=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
  # Nodes ~4 KiB, harness ~10 KiB, kernel socket buffers ~10 KiB per connection, generously.
  [ "$avail_kib" -ge $((connections * 40)) ] ||
    fail "$((avail_kib / 1024)) MiB available, $((connections * 40 / 1024)) MiB wanted"
  command -v redis-server >/dev/null || fail "needs redis-server (scripts/test installs it)"
  [ -x "$node_bin" ] && [ -x "$harness" ] ||
    fail "build first: cargo build --release -p gateway-node -p wsgate-loadtest"
  echo "scale.sh: limits fine for $connections connections over $nodes nodes (files $hard per process, ports $lo-$hi, conntrack ${ct:-off})" >&2
}

start() {
  mkdir -p "$dir"
  : >"$dir/pids"
  redis-server --port "$redis_port" --save "" --appendonly no --bind 127.0.0.1 \
    >"$dir/redis.log" 2>&1 &
  echo "$! redis" >>"$dir/pids"
  for _ in $(seq 1 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  local i
  for i in $(seq 1 "$nodes"); do
    WSGATE_LIMITS__MAX_CONNECTIONS=0 "$node_bin" --listen "127.0.0.1:$((base_port + i))" \
      --admin-listen "127.0.0.1:$((base_admin + i))" \
      --redis-url "redis://127.0.0.1:$redis_port" 2>"$dir/node$i.log" &
    echo "$! node" >>"$dir/pids"
  done
  for i in $(seq 1 "$nodes"); do
    for _ in $(seq 1 100); do
      curl -sf -o /dev/null "http://127.0.0.1:$((base_admin + i))/readyz" && continue 2
      sleep 0.1
    done
    fail "node $i did not become ready: $(tail -5 "$dir/node$i.log")"
  done
  echo "scale.sh: redis on $redis_port, $nodes nodes on $((base_port + 1))-$((base_port + nodes))" >&2
}

stop() {
  [ -f "$dir/pids" ] || return 0
  local pid what
  while read -r pid what; do
    kill -TERM "$pid" 2>/dev/null || true
  done <"$dir/pids"
  while read -r pid what; do
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done <"$dir/pids"
  rm -f "$dir/pids"
}

measure() {
  local args=() pid what i=0
  while read -r pid what; do
    [ "$what" = node ] || continue
    i=$((i + 1))
    args+=(--url "ws://127.0.0.1:$((base_port + i))/ws" --node-pid "$pid")
  done <"$dir/pids"
  "$harness" broadcast "${args[@]}" --members "$connections" --workers "$nodes" \
    --connect-concurrency 100 --hold-idle "$hold" --rate 1 --duration 3s --grace 30s \
    --redis-url "redis://127.0.0.1:$redis_port" --timeout 900s --out "$out/scale.json"
}

case "${1:-run}" in
  check) check ;;
  start) check; start ;;
  stop) stop ;;
  run)
    check
    trap stop EXIT
    start
    measure
    ;;
  *) fail "usage: $0 [check|start|run|stop]" ;;
esac
