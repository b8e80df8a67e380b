#!/usr/bin/env bash
# The compose topology (deploy/compose.yaml) on this machine, from the built binary and
# Debian's redis-server and nginx on loopback: one Redis, NODES wsgate nodes, and nginx as the
# WebSocket-aware load balancer in front of them (round robin, no stickiness, long timeouts;
# a node that refuses an upgrade while draining is skipped for the next).
#
#   deploy/local-cluster.sh start        start everything, wait until ready, print the URLs
#   deploy/local-cluster.sh status       the cluster as a node sees it (GET /cluster)
#   deploy/local-cluster.sh drain N      SIGTERM node N (1-based): it drains, as a KEDA
#                                        scale-down would, and its clients reconnect through
#                                        the balancer to the others
#   deploy/local-cluster.sh stop         stop everything (nodes drain first)
#
# Settings (environment): NODE_BIN (default target/release/gateway-node), CLUSTER_DIR
# (default target/local-cluster: configs, logs, pid files), NODES (3), LB_PORT (8080),
# NODE_PORTS ("8081 8082 8083"), ADMIN_PORTS ("9091 9092 9093"), REDIS_PORT (6390),
# EXTRA_CONFIG (a TOML file appended to every node's config). Every node retains
# history for rooms `chat:*` and sends presence events there, so clients that reconnect
# after a drain resume with `since` and lose nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${NODE_BIN:-target/release/gateway-node}"
dir="${CLUSTER_DIR:-target/local-cluster}"
nodes="${NODES:-3}"
lb_port="${LB_PORT:-8080}"
read -r -a node_ports <<<"${NODE_PORTS:-8081 8082 8083}"
read -r -a admin_ports <<<"${ADMIN_PORTS:-9091 9092 9093}"
redis_port="${REDIS_PORT:-6390}"

die() {
  echo "local-cluster: $*" >&2
  exit 1
}

need() {
  command -v "$1" >/dev/null 2>&1 ||
    die "$1 is missing: install Debian's $2 (apt-get install $2)"
}

alive() {
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_http() {
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

start() {
  need redis-server redis-server
  need nginx nginx-light
  need curl curl
  [ -x "$bin" ] || die "$bin is not built: cargo build --release -p gateway-node (or set NODE_BIN)"
  [ "${#node_ports[@]}" -ge "$nodes" ] && [ "${#admin_ports[@]}" -ge "$nodes" ] ||
    die "NODE_PORTS and ADMIN_PORTS need $nodes ports each"
  mkdir -p "$dir"
  dir="$(realpath "$dir")"
  for f in "$dir"/*.pid; do
    [ -e "$f" ] && alive "$f" && die "already running ($f): $0 stop first"
  done

  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  for _ in $(seq 1 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done

  local upstreams=""
  for i in $(seq 1 "$nodes"); do
    local port="${node_ports[$((i - 1))]}" admin="${admin_ports[$((i - 1))]}"
    {
      printf '[server]\nlisten = "127.0.0.1:%s"\ndrain_delay = "1s"\ndrain_period = "2s"\n' "$port"
      printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$admin"
      printf '[cluster]\nname = "local"\nnode_id = "node-%s"\nredis_url = "redis://127.0.0.1:%s"\n' "$i" "$redis_port"
      printf '[[history]]\nrooms = ["chat:*"]\nsize = 1000\nttl = "10m"\n'
      printf '[[presence]]\nrooms = ["chat:*"]\nevents = true\n'
      if [ -n "${EXTRA_CONFIG:-}" ]; then cat "$EXTRA_CONFIG"; fi
    } >"$dir/node-$i.toml"
    "$bin" --config "$dir/node-$i.toml" >"$dir/node-$i.log" 2>&1 &
    echo $! >"$dir/node-$i.pid"
    upstreams+="    server 127.0.0.1:$port max_fails=1 fail_timeout=2s;"$'\n'
  done
  for i in $(seq 1 "$nodes"); do
    wait_http "http://127.0.0.1:${admin_ports[$((i - 1))]}/readyz" ||
      { cat "$dir/node-$i.log" >&2; die "node $i did not become ready"; }
  done

  mkdir -p "$dir/nginx"
  cat >"$dir/nginx.conf" <<CONF
daemon off;
master_process off;
worker_rlimit_nofile 16384;
error_log $dir/nginx.log warn;
pid $dir/nginx/nginx.pid;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $dir/nginx; proxy_temp_path $dir/nginx;
  fastcgi_temp_path $dir/nginx; uwsgi_temp_path $dir/nginx; scgi_temp_path $dir/nginx;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream wsgate {
$upstreams  }
  server {
    listen 127.0.0.1:$lb_port;
    location / {
      proxy_pass http://wsgate;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
      # A draining node refuses upgrades with 503: the next node takes the client.
      proxy_next_upstream error timeout http_502 http_503;
    }
  }
}
CONF
  nginx -c "$dir/nginx.conf" -p "$dir/nginx" >"$dir/nginx.out" 2>&1 &
  echo $! >"$dir/nginx.pid"
  for _ in $(seq 1 50); do
    curl -s -o /dev/null "http://127.0.0.1:$lb_port/" && break
    sleep 0.1
  done
  alive "$dir/nginx.pid" || { cat "$dir/nginx.log" "$dir/nginx.out" >&2 2>/dev/null; die "nginx did not start"; }

  echo "local-cluster: $nodes nodes behind ws://127.0.0.1:$lb_port/ws (redis 127.0.0.1:$redis_port)"
  for i in $(seq 1 "$nodes"); do
    echo "  node $i: ws://127.0.0.1:${node_ports[$((i - 1))]}/ws, admin http://127.0.0.1:${admin_ports[$((i - 1))]}"
  done
}

# SIGTERM, then wait (a node's drain takes drain_delay + drain_period + 2 s at most).
stop_pid() {
  local file="$1"
  if alive "$file"; then
    local pid
    pid="$(cat "$file")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

stop() {
  [ -d "$dir" ] || return 0
  local pids=()
  for f in "$dir"/node-*.pid; do
    [ -e "$f" ] || continue
    stop_pid "$f" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do
    wait "$p"
  done
  stop_pid "$dir/nginx.pid"
  if alive "$dir/redis.pid"; then
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || stop_pid "$dir/redis.pid"
  fi
  rm -f "$dir/redis.pid"
  echo "local-cluster: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    for i in $(seq 1 "$nodes"); do
      if answer="$(curl -sf "http://127.0.0.1:${admin_ports[$((i - 1))]}/cluster")"; then
        echo "$answer"
        exit 0
      fi
    done
    die "no node answers"
    ;;
  drain)
    n="${2:?usage: $0 drain N}"
    alive "$dir/node-$n.pid" || die "node $n is not running"
    kill -TERM "$(cat "$dir/node-$n.pid")"
    echo "local-cluster: node $n draining"
    ;;
  *)
    echo "usage: $0 start|status|drain N|stop" >&2
    exit 2
    ;;
esac
