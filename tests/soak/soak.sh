#!/usr/bin/env bash
# Soak test: runs the gateway of one build in front of test-upstream in
# chaos mode and drives load through it with soak-load for N seconds.
#
#   tests/soak/soak.sh [--build DIR] [--seconds N] [--warmup S]
#                      [--concurrency C] [--chaos PCT] [--seed S]
#
# DIR (default build) must hold workshop-gateway, test-upstream and
# soak/soak-load (`make soak-build`, or `make SANITIZER=address soak-build`
# for build/asan). soak-load fails the run when a request gets no HTTP
# response or a wrong one, or when the gateway's VmRSS grows by more than
# 5 % after the warm-up. This script fails it when the gateway dies, or
# when it does not exit 0 after SIGTERM, which is also how a sanitizer
# build reports memory errors and leaks. The logs of a failed run are kept
# in a temporary folder.
#
# An AddressSanitizer build gets quarantine_size_mb=16 unless ASAN_OPTIONS
# sets another. With the default 256 MiB quarantine, VmRSS keeps growing
# while the quarantine fills (by 19 % between the 10th and the 60th second
# of one 700 requests/s run), and the growth check would take that for a
# leak.
set -u
cd "$(dirname "$0")/../.."

build=build
seconds=300
warmup=
concurrency=64
chaos=20
seed=1
while [ $# -gt 0 ]; do
    case "$1" in
    --build) build=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --chaos) chaos=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "soak.sh: unknown argument '$1'; see the header of $0" >&2; exit 2 ;;
    esac
done

for bin in workshop-gateway test-upstream soak/soak-load; do
    if [ ! -x "$build/$bin" ]; then
        echo "soak.sh: $build/$bin is missing; run 'make soak-build' first" >&2
        exit 2
    fi
done

export ASAN_OPTIONS="quarantine_size_mb=16${ASAN_OPTIONS:+:$ASAN_OPTIONS}"

work=$(mktemp -d "${TMPDIR:-/tmp}/wk-soak-XXXXXX")
upstream_pid=
gateway_pid=
result=1

# Stops the children this script started, by pid, and keeps the logs of a
# failed run.
cleanup() {
    for pid in $gateway_pid $upstream_pid; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
        fi
    done
    if [ "$result" -eq 0 ]; then
        rm -rf "$work"
    else
        echo "soak.sh: logs kept in $work"
    fi
}
trap cleanup EXIT

# wait_for_line FILE REGEX PID SECONDS: polls FILE until a line matches,
# the process exits or the time is up. Prints the line.
wait_for_line() {
    local file=$1 regex=$2 pid=$3 limit=$(($4 * 10)) i=0
    while [ "$i" -lt "$limit" ]; do
        if grep -m1 -E "$regex" "$file" 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# stop_child PID NAME SECONDS: sends SIGTERM and waits for the exit.
# Returns the exit status, or 124 when the child does not exit in time.
stop_child() {
    local pid=$1 name=$2 limit=$(($3 * 10)) i=0
    kill -TERM "$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt "$limit" ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "soak.sh: $name (pid $pid) did not exit within $3 s of SIGTERM" >&2
        return 124
    fi
    wait "$pid"
}

"$build/test-upstream" --listen 127.0.0.1:0 --quiet >"$work/upstream.log" 2>&1 &
upstream_pid=$!
if ! line=$(wait_for_line "$work/upstream.log" '^port=[0-9]+' "$upstream_pid" 30); then
    echo "soak.sh: test-upstream did not start:" >&2
    cat "$work/upstream.log" >&2
    exit 1
fi
upstream_port=${line#port=}

cat >"$work/gateway.json" <<EOF
{
  "listen": "127.0.0.1:0",
  "admin": { "listen": "127.0.0.1:0" },
  "limits": { "max_connections": 1024, "max_header_bytes": 16384,
              "max_body_bytes": 1048576, "max_response_bytes": 1048576,
              "client_timeout_ms": 30000 },
  "drain_timeout_ms": 5000,
  "routes": [
    {
      "name": "soak",
      "match": { "prefix": "/soak", "methods": ["GET", "POST"] },
      "upstream": { "url": "http://127.0.0.1:$upstream_port",
                    "connect_timeout_ms": 250, "timeout_ms": 1000 }
    }
  ]
}
EOF

"$build/workshop-gateway" --config "$work/gateway.json" >"$work/gateway.log" 2>&1 &
gateway_pid=$!
if ! line=$(wait_for_line "$work/gateway.log" 'ready traffic=' "$gateway_pid" 60); then
    echo "soak.sh: the gateway did not start:" >&2
    cat "$work/gateway.log" >&2
    exit 1
fi
traffic=$(echo "$line" | sed -E 's/.*ready traffic=([^ ]+).*/\1/')

command=("$build/soak/soak-load" --url "http://$traffic" --pid "$gateway_pid"
    --seconds "$seconds" --concurrency "$concurrency" --chaos "$chaos"
    --seed "$seed" ${warmup:+--warmup "$warmup"})
echo "soak.sh: ${command[*]}"
"${command[@]}"
load_status=$?

failures=()
[ "$load_status" -eq 0 ] || failures+=("soak-load exited $load_status")
if ! kill -0 "$gateway_pid" 2>/dev/null; then
    wait "$gateway_pid"
    failures+=("the gateway died during the run (status $?)")
    gateway_pid=
else
    stop_child "$gateway_pid" gateway 30
    status=$?
    gateway_pid=
    [ "$status" -eq 0 ] || failures+=("the gateway exited $status after SIGTERM")
fi
stop_child "$upstream_pid" test-upstream 10 >/dev/null 2>&1
upstream_pid=

if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$work/gateway.log"; then
    failures+=("a sanitizer reported an error in the gateway")
fi

if [ "${#failures[@]}" -gt 0 ]; then
    message=$(printf '%s; ' "${failures[@]}")
    echo "soak.sh: FAIL: ${message%; }"
    echo "soak.sh: last lines of the gateway log, access log lines left out:"
    grep -vE '^[^ ]+ access ' "$work/gateway.log" | tail -n 40 | sed 's/^/    /'
    exit 1
fi
result=0
echo "soak.sh: PASS"
