#!/usr/bin/env bash
# Memory of the gateway while large bodies stream through it to slow
# clients: the body is never held whole, so the gateway's peak resident
# memory stays far below the bytes in flight.
#
#   tests/bench/bench-stream.sh BUILD_DIR
#
# Environment:
#   CLIENTS [8]        clients at once, each reading one body
#   BODY_MB [64]       MiB per body
#   RATE [16M]         curl --limit-rate of each client
#
# Starts build/test-upstream and the gateway on free loopback ports, reads
# the gateway's VmRSS when idle, runs the clients, checks that each got
# every byte, and prints the gateway's peak resident memory (VmHWM) against
# the bytes it passed on. Every server is stopped by PID at the end.
set -euo pipefail

BUILD=${1:?usage: bench-stream.sh BUILD_DIR}
BUILD=$(cd "$BUILD" && pwd)
CLIENTS=${CLIENTS:-8}
BODY_MB=${BODY_MB:-64}
RATE=${RATE:-16M}
WORK=$(mktemp -d /tmp/wk-bench-stream.XXXXXX)

# shellcheck source=tests/bench/proxy/lib.sh
. "$(dirname "$0")/proxy/lib.sh"

cleanup() {
    stop_all_servers
}
trap cleanup EXIT
ensure_tools

up_port=$(free_port)
gw_port=$(free_port)
admin_port=$(free_port)
body=$((BODY_MB * 1024 * 1024))
cat >"$WORK/gateway.json" <<EOF
{"listen": "127.0.0.1:$gw_port", "admin": {"listen": "127.0.0.1:$admin_port"},
 "log": {"access": "off"},
 "limits": {"max_response_bytes": $((body + 1))},
 "routes": [{"name": "big", "match": {"prefix": "/"},
             "upstream": {"url": "http://127.0.0.1:$up_port",
                          "timeout_ms": 600000}}]}
EOF

start_server 1 "$WORK/upstream.log" "$BUILD/test-upstream" \
    --listen "127.0.0.1:$up_port" --quiet
start_server 0 "$WORK/gateway.log" "$BUILD/workshop-gateway" \
    --config "$WORK/gateway.json"
gw_pid=$LAST_PID
for _ in $(seq 50); do
    curl -sf -o /dev/null "http://127.0.0.1:$admin_port/readyz" && break
    sleep 0.1
done
idle_kb=$(awk '/^VmRSS/ {print $2}' "/proc/$gw_pid/status")

log "$CLIENTS clients, ${BODY_MB} MiB each at $RATE/s"
start=$(date +%s%N)
pids=()
for i in $(seq "$CLIENTS"); do
    curl -s -o /dev/null --limit-rate "$RATE" -w '%{http_code} %{size_download}\n' \
        "http://127.0.0.1:$gw_port/big/$i?body_size=$body" >"$WORK/client-$i.txt" &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid"
done
seconds=$((($(date +%s%N) - start) / 1000000000))
peak_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$gw_pid/status")

for i in $(seq "$CLIENTS"); do
    read -r status bytes <"$WORK/client-$i.txt"
    [ "$status" = 200 ] && [ "$bytes" = "$body" ] ||
        die "client $i got status $status and $bytes bytes, expected 200 and $body"
done

passed_mb=$((CLIENTS * BODY_MB))
echo "bodies: $CLIENTS x $BODY_MB MiB = $passed_mb MiB in $seconds s, every byte checked"
echo "gateway resident memory: idle $((idle_kb / 1024)) MiB, peak $((peak_kb / 1024)) MiB"
echo "peak above idle per stream: $(((peak_kb - idle_kb) / CLIENTS)) KiB"
rm -rf "$WORK"
