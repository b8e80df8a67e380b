#!/usr/bin/env bash
# Builds wsgate's image with podman from the host-built binary, runs it, and checks it:
# /healthz answers, a client's publish comes back to it through the container, and SIGTERM
# (`podman stop`) drains the node to a clean exit 0.
#
#   deploy/podman-check.sh
#
# No image registry is reachable here, so the base image is made locally: a Debian root from
# `debootstrap --variant=minbase bookworm` (Debian's package; about 200 MB and a few minutes,
# once), `podman import`ed as localhost/debian-minbase:bookworm and passed to
# deploy/Dockerfile's `prebuilt` target. Containers run with runc (crun fails on this host's
# hybrid cgroups), the host's network, and ulimits within the hard limits here.
set -euo pipefail
cd "$(dirname "$0")/.."

base=localhost/debian-minbase:bookworm
image=wsgate:local
name=wsgate-check
port="${CHECK_PORT:-18480}"
admin="${CHECK_ADMIN_PORT:-19480}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
podman_run=(podman --runtime /usr/sbin/runc)

if ! command -v podman >/dev/null 2>&1 || [ ! -x /usr/sbin/runc ]; then
  echo "podman-check: podman (with runc) is not available here: install Debian's podman and runc" \
    "(apt-get install podman runc), or build with Docker: docker build -f deploy/Dockerfile ." >&2
  exit 2
fi

if ! podman image exists "$base"; then
  command -v debootstrap >/dev/null 2>&1 ||
    { echo "podman-check: debootstrap is missing (apt-get install debootstrap)" >&2; exit 2; }
  root="$(mktemp -d)"
  echo "podman-check: making $base with debootstrap (once; a few minutes)" >&2
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  tar -C "$root" -c . | podman import - "$base" >/dev/null
  rm -rf "$root"
fi

cargo build --release --locked -p gateway-node -p wsgate-loadtest

"${podman_run[@]}" build -q -f deploy/Dockerfile --target prebuilt \
  --build-arg RUNTIME_IMAGE="$base" -t "$image" . >/dev/null
echo "podman-check: built $image"

"${podman_run[@]}" rm -f "$name" >/dev/null 2>&1 || true
"${podman_run[@]}" run -d --name "$name" --network host \
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  -e WSGATE_SERVER__LISTEN="127.0.0.1:$port" -e WSGATE_ADMIN__LISTEN="127.0.0.1:$admin" \
  -e WSGATE_SERVER__DRAIN_DELAY=1s -e WSGATE_SERVER__DRAIN_PERIOD=1s \
  "$image" >/dev/null
cleanup() { "${podman_run[@]}" rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null ||
  { "${podman_run[@]}" logs "$name" >&2; echo "podman-check: /healthz never answered" >&2; exit 1; }
echo "podman-check: /healthz answers"
user="$("${podman_run[@]}" exec "$name" id -u)"
[ "$user" != 0 ] || { echo "podman-check: the node runs as root" >&2; exit 1; }
"${podman_run[@]}" exec "$name" /usr/local/bin/gateway-node healthcheck \
  --url "http://127.0.0.1:$admin/healthz"
echo "podman-check: the image's HEALTHCHECK command passes (uid $user)"

result="$(mktemp)"
target/release/wsgate-loadtest broadcast --url "ws://127.0.0.1:$port/ws" --members 2 \
  --rate 5 --duration 2s --grace 1s --out "$result" >/dev/null
delivered="$(python3 -c 'import json,sys; f=json.load(open(sys.argv[1]))["figures"]; print(f["delivered"], f["lost"])' "$result")"
rm -f "$result"
[ "${delivered% *}" -gt 0 ] && [ "${delivered#* }" = 0 ] ||
  { echo "podman-check: round trip failed (delivered, lost: $delivered)" >&2; exit 1; }
echo "podman-check: client round trip through the container ($delivered delivered, lost)"

"${podman_run[@]}" stop -t 30 "$name" >/dev/null
code="$("${podman_run[@]}" inspect --format '{{.State.ExitCode}}' "$name")"
logs="$("${podman_run[@]}" logs "$name" 2>&1)"
[ "$code" = 0 ] || { echo "$logs" >&2; echo "podman-check: exit code $code after SIGTERM" >&2; exit 1; }
grep -q "drain" <<<"$logs" || { echo "$logs" >&2; echo "podman-check: no drain in the logs" >&2; exit 1; }
echo "podman-check: SIGTERM drained the node, exit 0"
