#!/usr/bin/env bash
# Builds the gateway's container image with podman and checks it end to end.
# The checks cover the image size and metadata, traffic through a container on
# the host network to a test upstream on the host, /readyz and /metrics on the
# admin port, the HEALTHCHECK, and a graceful stop on SIGTERM.
#
#   docker/test-container.sh [--build-only] [--upstream PATH]
#
# --build-only  builds the images (and the base image if missing) and stops.
# --upstream    the test-upstream binary to run on the host (build/test-upstream).
#
# Podman keeps its state under build/container/ (CONTAINERS_CONF and
# CONTAINERS_STORAGE_CONF point at generated files there), so images built
# here do not show up in the system's podman. Missing podman, runc, debootstrap
# and curl are installed with apt-get when running as root. The script exits 0
# with a SKIP line only when podman cannot run on this machine at all.
set -Eeuo pipefail

repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"

state_dir="$repo_root/build/container"
base_image=docker.io/library/debian:bookworm-slim
image=localhost/workshop-gateway:test
upstream_image=localhost/workshop-gateway-demo-upstream:test
max_image_bytes=100000000 # 100 MB, as podman and docker count megabytes
stop_timeout_s=10         # podman stop sends SIGKILL after this many seconds
drain_timeout_ms=5000     # the gateway's drain limit in the test configuration
# Allowance for podman stop itself (conmon, runc and the exit bookkeeping).
stop_overhead_ms=1500
ready_timeout_s=15

build_only=false
upstream_bin=build/test-upstream
while [ $# -gt 0 ]; do
    case "$1" in
    --build-only) build_only=true; shift ;;
    --upstream) upstream_bin=$2; shift 2 ;;
    *) echo "test-container.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

passed=0
run_dir=""
container=""
upstream_container=""
upstream_pid=""

say() { printf 'test-container: %s\n' "$*"; }
skip() {
    say "SKIP: $*"
    exit 0
}
# Records one passed check.
pass() {
    passed=$((passed + 1))
    say "ok   $*"
}
# Records a failed check, prints what helps to find the cause and exits 1.
fail() {
    say "FAIL $*" >&2
    if [ -n "$container" ] && podman container exists "$container" 2>/dev/null; then
        say "gateway container log (last 30 lines):" >&2
        podman logs "$container" 2>&1 | tail -n 30 >&2 || true
    fi
    if [ -n "$run_dir" ]; then
        say "files of this run kept in $run_dir" >&2
    fi
    say "$passed passed, 1 failed"
    exit 1
}

# Removes the containers and stops the upstream this run started.
cleanup() {
    local status=$?
    if [ -n "$container" ]; then
        podman rm --force --time 0 "$container" >/dev/null 2>&1 || true
    fi
    if [ -n "$upstream_container" ]; then
        podman rm --force --time 0 "$upstream_container" >/dev/null 2>&1 || true
    fi
    if [ -n "$upstream_pid" ]; then
        kill "$upstream_pid" 2>/dev/null || true
        wait "$upstream_pid" 2>/dev/null || true
    fi
    if [ "$status" = 0 ] && [ -n "$run_dir" ]; then
        rm -rf "$run_dir"
    fi
}
trap cleanup EXIT
# A command that fails outside the checks ends the script through set -e.
# This trap prints its line, so the script never exits without a message.
trap 'say "FAIL command failed at line $LINENO: $BASH_COMMAND" >&2; say "$passed passed, 1 failed"' ERR

# --- podman --------------------------------------------------------------

install_missing_packages() {
    # Each of these Debian packages installs a command of the same name.
    local missing=() pkg
    for pkg in podman runc debootstrap curl; do
        command -v "$pkg" >/dev/null || missing+=("$pkg")
    done
    [ ${#missing[@]} = 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        if [[ " ${missing[*]} " == *" podman "* ]]; then
            skip "podman is not installed and installing it needs root (apt-get install podman runc)"
        fi
        fail "missing ${missing[*]}; install with 'apt-get install ${missing[*]}'"
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get update -qq >/dev/null ||
        ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        fail "apt-get install ${missing[*]} failed"
    fi
    for pkg in "${missing[@]}"; do
        command -v "$pkg" >/dev/null || fail "$pkg is still missing after apt-get install"
    done
}

# Writes the podman configuration with this checkout's state folder and
# exports the variables that make podman read it.
configure_podman() {
    local name tmp
    mkdir -p "$state_dir"
    for name in containers storage; do
        tmp=$(mktemp "$state_dir/$name.conf.XXXXXX")
        sed "s|@STATE_DIR@|$state_dir|g" "docker/$name.conf" >"$tmp"
        mv -f "$tmp" "$state_dir/$name.conf" # atomic for runs side by side
    done
    export CONTAINERS_CONF="$state_dir/containers.conf"
    export CONTAINERS_STORAGE_CONF="$state_dir/storage.conf"
    local err
    if ! err=$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>&1 >/dev/null); then
        skip "podman cannot run here: $(printf '%s' "$err" | tail -n 1)"
    fi
}

# Imports the base image with debootstrap unless this storage has it. The lock
# makes a second run side by side wait instead of bootstrapping again.
ensure_base_image() {
    exec {lock_fd}>"$state_dir/base-image.lock"
    flock "$lock_fd"
    if ! podman image exists "$base_image"; then
        say "no $base_image in build/container, making it with debootstrap"
        docker/make-base-image.sh "$base_image" || fail "making the base image failed"
    fi
    flock --unlock "$lock_fd"
    exec {lock_fd}>&-
}

# build_image TARGET TAG: builds one target of docker/Dockerfile.
build_image() {
    local target=$1 tag=$2 log="$state_dir/build-$1.log" start=$SECONDS
    # --format docker keeps HEALTHCHECK, which the OCI image format has no
    # field for. --pull=never builds on the local base image and never
    # contacts a registry.
    if ! podman build --format docker --network host --pull=never \
        --file docker/Dockerfile --target "$target" --tag "$tag" . >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        fail "podman build --target $target failed; full output in $log"
    fi
    pass "built $tag in $((SECONDS - start)) s"
}

# --- helpers for the run -------------------------------------------------

# free_ports N: prints N distinct TCP ports that were free on 127.0.0.1. The
# sockets stay bound until all N are picked, so the ports differ.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# http_status URL [CURL_ARGS...]: prints the HTTP status code, 000 when no
# response came.
http_status() {
    local url=$1
    shift
    curl --silent --output /dev/null --write-out '%{http_code}' --max-time 5 "$@" "$url" || true
}

# wait_for_status URL STATUS: polls until URL returns STATUS or the container
# has exited or ready_timeout_s passed.
wait_for_status() {
    local url=$1 want=$2 deadline=$((SECONDS + ready_timeout_s)) got
    while :; do
        got=$(http_status "$url")
        [ "$got" = "$want" ] && return 0
        if [ "$(podman inspect --format '{{.State.Running}}' "$container")" != true ]; then
            fail "gateway container exited before $url returned $want"
        fi
        [ $SECONDS -ge $deadline ] && fail "$url returned $got, not $want, for ${ready_timeout_s} s"
        sleep 0.2
    done
}

# start_host_upstream: starts test-upstream on a port the kernel picks and sets
# upstream_port from the "port=N" line it prints first.
start_host_upstream() {
    [ -x "$upstream_bin" ] || fail "$upstream_bin not found; build it with 'make $upstream_bin'"
    "$upstream_bin" --listen 127.0.0.1:0 >"$run_dir/upstream.out" 2>"$run_dir/upstream.err" &
    upstream_pid=$!
    local deadline=$((SECONDS + 5)) line=""
    while [ $SECONDS -lt $deadline ]; do
        # The file appears only once the background shell has opened it.
        line=$(head -n 1 "$run_dir/upstream.out" 2>/dev/null || true)
        [[ "$line" == port=* ]] && break
        kill -0 "$upstream_pid" 2>/dev/null || fail "test-upstream exited: $(cat "$run_dir/upstream.err")"
        sleep 0.1
    done
    [[ "$line" == port=* ]] || fail "test-upstream printed no port=N line within 5 s"
    upstream_port=${line#port=}
}

# --- the checks ----------------------------------------------------------

check_image() {
    local size user healthcheck
    size=$(podman image inspect --format '{{.Size}}' "$image")
    if [ "$size" -ge "$max_image_bytes" ]; then
        fail "image $image is $size bytes, over the limit of $max_image_bytes"
    fi
    pass "image size $size bytes ($((size / 1000000)) MB, limit $((max_image_bytes / 1000000)) MB)"

    user=$(podman image inspect --format '{{.Config.User}}' "$image")
    case "$user" in
    "" | root | 0 | 0:*) fail "image runs as root (User '$user')" ;;
    esac
    healthcheck=$(podman image inspect --format '{{.Config.Healthcheck.Test}}' "$image")
    [[ "$healthcheck" == *"--health"* ]] || fail "image has no --health HEALTHCHECK ($healthcheck)"
    pass "image runs as user $user with HEALTHCHECK $healthcheck"
}

# Checks that the demo upstream image of docker/compose.yaml serves HTTP.
check_demo_upstream_image() {
    local port status
    port=$(free_ports 1)
    upstream_container="workshop-demo-upstream-test-$$"
    podman run --detach --name "$upstream_container" --network host \
        "$upstream_image" --listen "127.0.0.1:$port" >/dev/null ||
        fail "podman run $upstream_image failed"
    local deadline=$((SECONDS + ready_timeout_s))
    while status=$(http_status "http://127.0.0.1:$port/"); [ "$status" = 000 ]; do
        [ $SECONDS -ge $deadline ] && fail "demo upstream container did not answer on port $port"
        sleep 0.2
    done
    podman rm --force --time 0 "$upstream_container" >/dev/null
    upstream_container=""
    pass "demo upstream image serves HTTP (status $status)"
}

write_config() {
    cat >"$run_dir/gateway.json" <<EOF
{
  "listen": "127.0.0.1:$gateway_port",
  "admin": { "listen": "127.0.0.1:$admin_port" },
  "drain_timeout_ms": $drain_timeout_ms,
  "routes": [
    {
      "name": "demo",
      "match": { "prefix": "/demo", "methods": ["GET", "POST"] },
      "upstream": { "url": "http://127.0.0.1:$upstream_port", "strip_prefix": true,
                    "connect_timeout_ms": 250, "timeout_ms": 2000 }
    }
  ]
}
EOF
    # The container's user (uid 10001) reads it through the bind mount.
    chmod 0644 "$run_dir/gateway.json"
}

run_gateway() {
    container="workshop-gateway-test-$$"
    # Without systemd, podman cannot schedule periodic health checks, so
    # --health-interval disable turns them off and the test runs one below.
    # The hardening options are those of docker/compose.yaml.
    podman run --detach --name "$container" --network host \
        --health-interval disable \
        --read-only --cap-drop all --security-opt no-new-privileges \
        --volume "$run_dir/gateway.json:/etc/workshop-gateway/gateway.json:ro" \
        "$image" >/dev/null 2>"$run_dir/podman-run.err" ||
        fail "podman run $image failed: $(cat "$run_dir/podman-run.err")"
    wait_for_status "http://127.0.0.1:$admin_port/readyz" 200
    pass "container started and /readyz returned 200"

    local uid
    uid=$(podman exec "$container" id -u) || fail "podman exec id -u failed"
    [ "$uid" != 0 ] || fail "gateway runs as root inside the container"
    pass "gateway runs as uid $uid"
}

check_traffic() {
    local base="http://127.0.0.1:$gateway_port" i status body
    for i in 1 2 3 4 5; do
        status=$(http_status "$base/demo/hello-$i")
        [ "$status" = 200 ] || fail "GET /demo/hello-$i through the gateway returned $status, not 200"
    done
    # mirror=1 makes the upstream send the request body back.
    body=$(curl --silent --fail --max-time 5 --data 'ping' "$base/demo/echo?mirror=1") ||
        fail "POST /demo/echo?mirror=1 through the gateway failed"
    [ "$body" = ping ] || fail "POST /demo/echo?mirror=1 returned body '$body', not 'ping'"
    pass "5 GET and 1 POST went through the gateway to the upstream"

    status=$(http_status "$base/no-such-route")
    [ "$status" = 404 ] || fail "GET /no-such-route returned $status, not 404"
    pass "unrouted path returned 404"
}

check_admin() {
    local admin="http://127.0.0.1:$admin_port" metrics
    [ "$(http_status "$admin/readyz")" = 200 ] || fail "/readyz did not return 200"
    [ "$(http_status "$admin/healthz")" = 200 ] || fail "/healthz did not return 200"
    metrics=$(curl --silent --fail --max-time 5 "$admin/metrics") || fail "GET /metrics failed"
    printf '%s\n' "$metrics" >"$run_dir/metrics.txt"
    grep -q '^workshop_' <<<"$metrics" || fail "/metrics has no workshop_ series (see $run_dir/metrics.txt)"
    grep -q 'route="demo"' <<<"$metrics" || fail "/metrics has no series with route=\"demo\" (see $run_dir/metrics.txt)"
    pass "/healthz and /readyz returned 200, /metrics has workshop_ series for route demo"
}

check_healthcheck() {
    podman healthcheck run "$container" >"$run_dir/healthcheck.out" 2>&1 ||
        fail "podman healthcheck run failed: $(cat "$run_dir/healthcheck.out")"
    local health
    health=$(podman inspect --format '{{.State.Health.Status}}' "$container")
    [ "$health" = healthy ] || fail "health status is '$health' after a passing check"
    pass "podman healthcheck run passed (status $health)"
}

# Prints how many requests the host upstream has received.
upstream_request_count() {
    curl --silent --max-time 5 "http://127.0.0.1:$upstream_port/__stats" |
        sed -n 's/^{"requests":\([0-9]*\).*/\1/p'
}

# Stops the container with SIGTERM while a slow request is in flight, which
# must still get its response before the gateway exits with status 0.
check_graceful_stop() {
    local before count deadline start_ms elapsed_ms exit_code inflight_pid status
    before=$(upstream_request_count)
    [ -n "$before" ] || fail "GET /__stats on the upstream returned no request count"
    http_status "http://127.0.0.1:$gateway_port/demo/slow?delay_ms=1000" \
        >"$run_dir/inflight.status" &
    inflight_pid=$!
    deadline=$((SECONDS + 5))
    while count=$(upstream_request_count); [ "${count:-0}" -le "$before" ]; do
        [ $SECONDS -ge $deadline ] && fail "the slow request did not reach the upstream within 5 s"
        sleep 0.05
    done

    start_ms=$(date +%s%3N)
    # Without systemd, podman logs an error about the health check timer on
    # stop and rm, so their stderr goes to a file that a failure shows.
    podman stop --time "$stop_timeout_s" "$container" >/dev/null 2>"$run_dir/podman-stop.err" ||
        fail "podman stop failed: $(cat "$run_dir/podman-stop.err")"
    elapsed_ms=$(($(date +%s%3N) - start_ms))
    wait "$inflight_pid" || true
    status=$(cat "$run_dir/inflight.status")
    exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
    podman logs "$container" >"$run_dir/gateway.log" 2>&1 || true

    # 137 is 128 + SIGKILL: the gateway ignored SIGTERM and podman killed it.
    [ "$exit_code" = 0 ] || fail "gateway exited with status $exit_code after SIGTERM, not 0"
    [ "$elapsed_ms" -lt $((drain_timeout_ms + stop_overhead_ms)) ] ||
        fail "gateway took $elapsed_ms ms to stop, over its $drain_timeout_ms ms drain timeout"
    [ "$status" = 200 ] || fail "the request in flight at SIGTERM got status $status, not 200"
    [ -s "$run_dir/gateway.log" ] || fail "gateway wrote nothing to stdout or stderr"
    pass "SIGTERM drained 1 in-flight request and stopped the gateway with status 0 in $elapsed_ms ms"
    podman rm "$container" >/dev/null 2>"$run_dir/podman-rm.err" ||
        fail "podman rm failed: $(cat "$run_dir/podman-rm.err")"
    container=""
}

# --- main ----------------------------------------------------------------

install_missing_packages
configure_podman
ensure_base_image
build_image runtime "$image"
build_image demo-upstream "$upstream_image"
check_image
if $build_only; then
    say "$passed passed, 0 failed"
    exit 0
fi

command -v python3 >/dev/null || fail "python3 is needed to pick free ports"
mkdir -p "$state_dir/runs"
run_dir=$(mktemp -d "$state_dir/runs/run.XXXXXX")
check_demo_upstream_image
start_host_upstream
read -r gateway_port admin_port < <(free_ports 2)
write_config
run_gateway
check_traffic
check_admin
check_healthcheck
check_graceful_stop
say "$passed passed, 0 failed"
