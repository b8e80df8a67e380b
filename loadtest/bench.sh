#!/usr/bin/env bash
# Reproduces loadtest/RESULTS.md: nodes pinned to CPU 0, the harness (and Redis) pinned to
# CPU 1, fresh nodes per scenario.
#
#   loadtest/bench.sh [idle|floor|broadcast|cluster|stall|tls|proxy|history|resume|batching|storm|direct|peers|all]
#   (default: all)
#
# idle       18,000 idle connections on one embedded node
# floor      the same fan-out as broadcast as bare loopback TCP sends: the machine's floor
# broadcast  5,000 members on one embedded node, 10 publishes/s for 20 s
# cluster    two nodes through one redis-server, 2,000 members split, 50 publishes/s for 20 s
# stall      18,000 members (near one node's file limit), 5 publishes/s for 20 s, while one
#            connection in no room pings every 10 ms and 20 connections join and leave the
#            room: does the fan-out stall the rest of the node? The node gets both CPUs (two
#            runtime threads), since the question is whether it blocks a thread.
# tls        broadcast's load over wss:// and over ws://, alternating twice, one node each:
#            what TLS costs per delivery
# proxy      1,000 clients x 50 messages/s of 100 bytes to an echo upstream (CPU 1, with the
#            harness): straight, through wsgate's [[proxy]] and through nginx (Debian's package,
#            installed when missing; one worker), both proxies on CPU 0, alternating twice:
#            added latency and proxy CPU per relayed message
# history    cluster's load into a plain room and into a retained one ([[history]]),
#            alternating twice: node CPU per delivery and Redis commands per publish
# resume     two nodes through one redis-server; 5,000 members of a retained room on the
#            first, 10 publishes/s on the second for 20 s; at 5 s the first node is drained
#            at once (drain_delay = drain_period = 0): its members reconnect to the second
#            and rejoin with since. Gaps, duplicates, time until all are back
# batching   1,000 members x 400 publishes/s of ~100 bytes (400,000 deliveries/s offered) on
#            one node: the floor at that load, then the node with server.write_delay = 10ms
#            and with 0, alternating twice
# storm      a reconnect storm: 18,000 members of a retained room on the first of two nodes,
#            drained at once at 8 s; time until all are back on the second, refusals,
#            reconnect latency
# direct     two nodes through one redis-server, 10,000 members, 50,000 sends/s to random
#            connection ids for 10 s (nodes allow 5,000 messages/s per connection)
# peers      wsgate and its peers side by side, each as two nodes through one redis-server
#            (nodes on CPU 0, harness and Redis on CPU 1, fresh nodes per scenario): Soketi
#            1.6.1 and Socket.IO 4.8.1 with @socket.io/redis-adapter 8.3.0 (npm, pinned in
#            loadtest/peers/package.json, installed under target/peers/node), Sockudo 5.2.0
#            (cargo install, built once under target/peers/sockudo: about 17 minutes). Per
#            gateway: idle (10,000 connections), broadcast (5,000 members x 10/s for 20 s) and
#            saturation (1,000 members x 400/s of ~100 bytes for 10 s, 400,000 deliveries/s
#            offered); wsgate also with server.write_delay = 10ms (and at 800/s); the floor
#            at both loads.
#            Ends with one table per scenario (wsgate-loadtest table).
#
# ROUNDS=n sets the proxy scenario's rounds (default 2), RATE=n its messages/s per client
# (default 50; at 10 no CPU is saturated, which is where added latency can be read).
# NODE_BIN=path/to/gateway-node compares another build (e.g. an older commit) under the same
# harness; OUT=dir sets where result files go (default loadtest/results).
set -euo pipefail
cd "$(dirname "$0")/.."

scenario="${1:-all}"
case "$scenario" in
  idle | floor | broadcast | cluster | stall | tls | proxy | history | resume | batching | storm | direct | peers | all) ;;
  *) echo "usage: $0 [idle|floor|broadcast|cluster|stall|tls|proxy|history|resume|batching|storm|direct|peers|all]" >&2; exit 2 ;;
esac
out="${OUT:-loadtest/results}"
mkdir -p "$out"
cargo build --release -p gateway-node -p wsgate-loadtest >&2
node_bin="${NODE_BIN:-target/release/gateway-node}"
harness=target/release/wsgate-loadtest
port=18080
admin=19080
node_pid=""
extra_pids=()
redis_port=16390

# Stops processes: SIGTERM to all (a node's drain takes about 5 s + 10 s, SPEC section 8),
# then SIGKILL to any still alive after 30 s, so nothing outlives this script.
stop_pids() {
  for pid in "$@"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

stop_node() {
  if [ -n "$node_pid" ]; then
    stop_pids "$node_pid"
  fi
  node_pid=""
}

# Stops the second node and redis-server of the cluster scenario.
stop_extra() {
  if [ "${#extra_pids[@]}" -gt 0 ]; then
    stop_pids "${extra_pids[@]}"
  fi
  extra_pids=()
}
trap 'stop_node; stop_extra' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits for a node's /readyz; $1 = PID, $2 = admin port, $3 = log.
wait_ready() {
  for _ in $(seq 1 100); do
    if ! kill -0 "$1" 2>/dev/null; then
      break
    fi
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/readyz")" = 200 ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "bench.sh: node did not become ready" >&2
  cat "$3" >&2
  exit 1
}

# Starts a fresh node on CPU 0, or on CPUS when set (extra arguments go to the node); sets
# node_pid.
start_node() {
  stop_node
  port=$((port + 1))
  admin=$((admin + 1))
  # taskset execs the node, so $! is the node's own PID (what --node-pid measures).
  WSGATE_LIMITS__MAX_CONNECTIONS=0 taskset -c "${CPUS:-0}" "$node_bin" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" "$@" 2>"$out/node.log" &
  node_pid=$!
  wait_ready "$node_pid" "$admin" "$out/node.log"
}

run_idle() {
  start_node
  taskset -c 1 "$harness" idle --url "ws://127.0.0.1:$port/ws" --node-pid "$node_pid" \
    --connections 18000 --hold 10s --out "$out/idle.json"
}

run_floor() {
  taskset -c 1 "$harness" floor --members 5000 --rate 10 --duration 20s --size 150 \
    --sender-cpu 0 --receiver-cpu 1 --out "$out/floor.json"
}

# Starts redis-server on CPU 1 and two nodes through it on CPU 0 (extra arguments go to both
# nodes); sets redis, first_port, first_pid, second_port, second_pid.
start_pair() {
  start_pair_redis
  start_node --redis-url "$redis" "$@"
  first_port=$port
  first_pid=$node_pid
  port=$((port + 1))
  admin=$((admin + 1))
  WSGATE_LIMITS__MAX_CONNECTIONS=0 taskset -c 0 "$node_bin" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" --redis-url "$redis" "$@" 2>"$out/node2.log" &
  second_pid=$!
  second_port=$port
  extra_pids+=("$second_pid")
  wait_ready "$second_pid" "$admin" "$out/node2.log"
}

# Starts a fresh redis-server on CPU 1 (stopping the previous pair); sets redis, redis_port.
start_pair_redis() {
  command -v redis-server >/dev/null || { echo "bench.sh: cluster needs redis-server" >&2; exit 1; }
  stop_extra
  redis_port=$((redis_port + 1))
  taskset -c 1 redis-server --port "$redis_port" --save "" --appendonly no \
    --bind 127.0.0.1 >"$out/redis.log" 2>&1 &
  extra_pids+=($!)
  for _ in $(seq 1 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis="redis://127.0.0.1:$redis_port"
}

run_cluster() {
  start_pair
  taskset -c 1 "$harness" broadcast --url "ws://127.0.0.1:$first_port/ws" \
    --url "ws://127.0.0.1:$second_port/ws" --node-pid "$first_pid" --node-pid "$second_pid" \
    --members 2000 --rate 50 --duration 20s --size 100 --redis-url "$redis" \
    --out "$out/cluster.json"
  stop_node
  stop_extra
}

run_history() {
  printf '[[history]]\nrooms = ["kept:*"]\nsize = 100\nttl = "10m"\n' >"$out/history.toml"
  for round in 1 2; do
    for room in bench kept:bench; do
      start_pair --config "$out/history.toml"
      taskset -c 1 "$harness" broadcast --url "ws://127.0.0.1:$first_port/ws" \
        --url "ws://127.0.0.1:$second_port/ws" --node-pid "$first_pid" \
        --node-pid "$second_pid" --members 2000 --rate 50 --duration 20s --size 100 \
        --room "$room" --redis-url "$redis" --out "$out/history-${room%%:*}-$round.json"
      stop_node
      stop_extra
    done
  done
}

run_batching() {
  taskset -c 1 "$harness" floor --members 1000 --rate 400 --duration 10s --size 150 \
    --sender-cpu 0 --receiver-cpu 1 --out "$out/batching-floor.json"
  for round in 1 2; do
    for delay in 10ms 0ms; do
      WSGATE_SERVER__WRITE_DELAY="$delay" start_node
      taskset -c 1 "$harness" broadcast --url "ws://127.0.0.1:$port/ws" --node-pid "$node_pid" \
        --members 1000 --rate 400 --duration 10s --size 100 --grace 3s \
        --out "$out/batching-$delay-$round.json"
    done
  done
  stop_node
}

run_direct() {
  WSGATE_LIMITS__MESSAGES_PER_SECOND=5000 WSGATE_LIMITS__MESSAGES_BURST=10000 start_pair
  taskset -c 1 "$harness" direct --url "ws://127.0.0.1:$first_port/ws" \
    --url "ws://127.0.0.1:$second_port/ws" --node-pid "$first_pid" --node-pid "$second_pid" \
    --members 10000 --rate 50000 --duration 10s --redis-url "$redis" --out "$out/direct.json"
  stop_node
  stop_extra
}

# A drained node's members resume on the other: $1 the result's name, $2 members, $3
# publishes/s, $4 when the first node is drained (further arguments go to the harness).
run_drained_resume() {
  local name=$1 members=$2 rate=$3 drop_at=$4
  shift 4
  printf '[server]\ndrain_delay = "0s"\ndrain_period = "0s"\n[[history]]\nrooms = ["chat:*"]\nsize = 1000\nttl = "10m"\n' \
    >"$out/$name.toml"
  start_pair --config "$out/$name.toml"
  taskset -c 1 "$harness" resume --url "ws://127.0.0.1:$first_port/ws" \
    --url "ws://127.0.0.1:$second_port/ws" --node-pid "$second_pid" --members "$members" \
    --rate "$rate" --duration 20s --drop-at "$drop_at" --drain-pid "$first_pid" \
    --redis-url "$redis" --out "$out/$name.json" "$@"
  stop_node
  stop_extra
}

run_storm() {
  run_drained_resume storm 18000 2 8s --grace 5s
}

run_resume() {
  run_drained_resume resume 5000 10 5s
}

run_broadcast() {
  start_node
  taskset -c 1 "$harness" broadcast --url "ws://127.0.0.1:$port/ws" --node-pid "$node_pid" \
    --members 5000 --rate 10 --duration 20s --size 100 --out "$out/broadcast.json"
}

run_stall() {
  CPUS=0,1 start_node
  "$harness" broadcast --url "ws://127.0.0.1:$port/ws" --node-pid "$node_pid" \
    --members 18000 --rate 5 --duration 20s --size 100 --probe-interval 10ms --churn 20 \
    --out "$out/stall.json"
}

run_tls() {
  "$harness" certs --out "$out/certs" >/dev/null
  for round in 1 2; do
    export WSGATE_SERVER__TLS_CERT_FILE="$out/certs/cert.pem"
    export WSGATE_SERVER__TLS_KEY_FILE="$out/certs/key.pem"
    start_node
    unset WSGATE_SERVER__TLS_CERT_FILE WSGATE_SERVER__TLS_KEY_FILE
    taskset -c 1 "$harness" broadcast --url "wss://127.0.0.1:$port/ws" --ca "$out/certs/ca.pem" \
      --node-pid "$node_pid" --members 5000 --rate 10 --duration 20s --size 100 \
      --out "$out/tls-wss-$round.json"
    start_node
    taskset -c 1 "$harness" broadcast --url "ws://127.0.0.1:$port/ws" --node-pid "$node_pid" \
      --members 5000 --rate 10 --duration 20s --size 100 --out "$out/tls-ws-$round.json"
  done
  stop_node
}

# nginx as a WebSocket reverse proxy of $1 (the upstream's port) on port $2, one process (no
# master) pinned to CPU 0; sets nginx_pid.
start_nginx() {
  if ! command -v nginx >/dev/null; then
    echo "bench.sh: installing nginx-light" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light >/dev/null
  fi
  local dir
  dir="$(realpath "$out")/nginx"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 8192;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  server {
    listen 127.0.0.1:$2;
    location /ws/echo {
      proxy_pass http://127.0.0.1:$1/;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}
CONF
  taskset -c 0 nginx -c "$dir/nginx.conf" -p "$dir" &
  nginx_pid=$!
  for _ in $(seq 1 50); do
    curl -s -o /dev/null "http://127.0.0.1:$2/" && return 0
    sleep 0.1
  done
  echo "bench.sh: nginx did not start" >&2
  cat "$dir/error.log" >&2
  exit 1
}

run_proxy() {
  stop_extra
  local up_port=19500 nginx_port=19501
  taskset -c 1 "$harness" echo-upstream --listen "127.0.0.1:$up_port" 2>"$out/echo.log" &
  extra_pids+=($!)
  sleep 0.5
  local rate="${RATE:-50}"
  local load=(--clients 1000 --rate "$rate" --duration 20s --size 100)
  printf '[[proxy]]\npath = "/ws/echo"\nupstreams = ["ws://127.0.0.1:%s/"]\n' "$up_port" \
    >"$out/proxy.toml"
  for round in $(seq 1 "${ROUNDS:-2}"); do
    taskset -c 1 "$harness" proxy --url "ws://127.0.0.1:$up_port/" "${load[@]}" \
      --out "$out/proxy-direct-$rate-$round.json"
    start_node --config "$out/proxy.toml"
    taskset -c 1 "$harness" proxy --url "ws://127.0.0.1:$port/ws/echo" --node-pid "$node_pid" \
      "${load[@]}" --out "$out/proxy-wsgate-$rate-$round.json"
    stop_node
    start_nginx "$up_port" "$nginx_port"
    taskset -c 1 "$harness" proxy --url "ws://127.0.0.1:$nginx_port/ws/echo" \
      --node-pid "$nginx_pid" "${load[@]}" --out "$out/proxy-nginx-$rate-$round.json"
    stop_pids "$nginx_pid"
  done
  stop_extra
}

# The peers, installed once under target/peers (never committed): npm packages pinned by
# loadtest/peers/package.json, Sockudo built by cargo install.
peers_dir=target/peers
install_peers() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  command -v npm >/dev/null || { echo "bench.sh: peers needs Node.js 20 and npm" >&2; exit 1; }
  mkdir -p "$peers_dir/node"
  if ! cmp -s loadtest/peers/package.json "$peers_dir/node/package.json" ||
    [ ! -e "$peers_dir/node/node_modules/.bin/soketi" ]; then
    cp loadtest/peers/package.json "$peers_dir/node/package.json"
    (cd "$peers_dir/node" && npm install --no-audit --no-fund >&2)
  fi
  cp loadtest/peers/socketio-server.js "$peers_dir/node/"
  if [ ! -x "$peers_dir/sockudo/bin/sockudo" ]; then
    command -v protoc >/dev/null ||
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq protobuf-compiler >/dev/null
    echo "bench.sh: building Sockudo 5.2.0 once (about 17 minutes here)" >&2
    cargo install sockudo --version 5.2.0 --locked --features redis \
      --root "$peers_dir/sockudo" --target-dir "$peers_dir/sockudo-build" >&2
  fi
}

# Waits until something answers HTTP on port $2; $1 = PID, $3 = log.
wait_http() {
  for _ in $(seq 1 150); do
    kill -0 "$1" 2>/dev/null || break
    curl -s -o /dev/null "http://127.0.0.1:$2/" && return 0
    sleep 0.1
  done
  echo "bench.sh: a gateway did not start on port $2" >&2
  cat "$3" >&2
  exit 1
}

# Starts gateway $1 (wsgate, wsgate-batched, soketi, socketio, sockudo) as two nodes on CPU 0
# through a fresh redis-server on CPU 1; sets gw_args (the harness's --dialect, --url and
# --node-pid arguments).
start_gateway() {
  local name=$1
  case "$name" in
    wsgate | wsgate-batched)
      if [ "$name" = wsgate-batched ]; then
        WSGATE_SERVER__WRITE_DELAY=10ms start_pair
      else
        start_pair
      fi
      gw_args=(--url "ws://127.0.0.1:$first_port/ws" --url "ws://127.0.0.1:$second_port/ws"
        --node-pid "$first_pid" --node-pid "$second_pid")
      return
      ;;
  esac
  start_pair_redis
  local dialect=pusher
  [ "$name" = socketio ] && dialect=socket-io
  gw_args=(--dialect "$dialect")
  local i
  for i in 1 2; do
    port=$((port + 1))
    admin=$((admin + 1))
    local log="$out/$name-$i.log"
    case "$name" in
      soketi)
        SOKETI_PORT=$port SOKETI_METRICS_SERVER_PORT=$admin SOKETI_METRICS_ENABLED=false \
          SOKETI_DEFAULT_APP_ID=app-id SOKETI_DEFAULT_APP_KEY=app-key \
          SOKETI_DEFAULT_APP_SECRET=app-secret SOKETI_ADAPTER_DRIVER=redis \
          SOKETI_DB_REDIS_HOST=127.0.0.1 SOKETI_DB_REDIS_PORT=$redis_port \
          taskset -c 0 node "$peers_dir/node/node_modules/@soketi/soketi/bin/server.js" start \
          >"$log" 2>&1 &
        gw_args+=(--url "ws://127.0.0.1:$port/app/app-key?protocol=7&client=js&version=8.4.0")
        ;;
      sockudo)
        PORT=$port HOST=127.0.0.1 METRICS_ENABLED=false METRICS_PORT=$admin \
          ADAPTER_DRIVER=redis CACHE_DRIVER=redis REDIS_URL="$redis" RATE_LIMITER_ENABLED=false \
          SOCKUDO_DEFAULT_APP_ID=app-id SOCKUDO_DEFAULT_APP_KEY=app-key \
          SOCKUDO_DEFAULT_APP_SECRET=app-secret SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS=1000000 \
          SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=1000000 \
          taskset -c 0 "$peers_dir/sockudo/bin/sockudo" >"$log" 2>&1 &
        gw_args+=(--url "ws://127.0.0.1:$port/app/app-key?protocol=7&client=js&version=8.4.0")
        ;;
      socketio)
        PORT=$port REDIS_URL="$redis" taskset -c 0 node "$peers_dir/node/socketio-server.js" \
          >"$log" 2>&1 &
        gw_args+=(--url "ws://127.0.0.1:$port/socket.io/?EIO=4&transport=websocket")
        ;;
    esac
    extra_pids+=($!)
    gw_args+=(--node-pid "$!")
    wait_http "$!" "$port" "$log"
  done
}

# Runs the harness's scenario $2 against a fresh gateway $1 (start_gateway), further
# arguments to the harness.
measure_gateway() {
  local gw=$1 scenario=$2
  shift 2
  start_gateway "$gw"
  taskset -c 1 "$harness" "$scenario" "${gw_args[@]}" "$@"
  stop_node
  stop_extra
}

run_peers() {
  install_peers
  local gw
  taskset -c 1 "$harness" floor --members 5000 --rate 10 --duration 20s --size 150 \
    --sender-cpu 0 --receiver-cpu 1 --out "$out/peers-floor-broadcast.json"
  taskset -c 1 "$harness" floor --members 1000 --rate 400 --duration 10s --size 150 \
    --sender-cpu 0 --receiver-cpu 1 --out "$out/peers-floor-saturation.json"
  for gw in ${PEERS:-wsgate soketi socketio sockudo}; do
    measure_gateway "$gw" idle --connections 10000 --hold 10s --timeout 240s \
      --out "$out/peers-$gw-idle.json"
    measure_gateway "$gw" broadcast --members 5000 --rate 10 --duration 20s --size 100 \
      --out "$out/peers-$gw-broadcast.json"
  done
  for gw in wsgate-batched ${PEERS:-wsgate soketi socketio sockudo}; do
    measure_gateway "$gw" broadcast --members 1000 --rate 400 --duration 10s --size 100 \
      --grace 3s --out "$out/peers-$gw-saturation.json"
  done
  # Twice that load for the batching node: how far past the peers it goes.
  measure_gateway wsgate-batched broadcast --members 1000 --rate 800 --duration 10s \
    --size 100 --grace 3s --out "$out/peers-wsgate-batched-saturation-800.json"
  "$harness" table "$out"/peers-*.json
}

case "$scenario" in
  peers) run_peers ;;
  batching) run_batching ;;
  storm) run_storm ;;
  direct) run_direct ;;
  history) run_history ;;
  resume) run_resume ;;
  proxy) run_proxy ;;
  tls) run_tls ;;
  stall) run_stall ;;
  idle) run_idle ;;
  floor) run_floor ;;
  broadcast) run_broadcast ;;
  cluster) run_cluster ;;
  all) run_idle; run_floor; run_broadcast; run_cluster; run_stall; run_tls; run_proxy; run_history; run_resume; run_batching; run_storm; run_direct ;;
esac
