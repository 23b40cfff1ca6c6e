#!/usr/bin/env bash
# Profiles the gateway under the small-body load (128-byte body from an
# nginx upstream, wrk on the other CPU) and writes the evidence under
# OUT (default BUILD_DIR/bench/proxy/profile):
#
#   strace-gateway.txt, strace-nginx.txt   strace -c -f over every thread
#                                          during a wrk run, and the same
#                                          for nginx as the reference
#   syscalls.txt                           both, as calls per request
#   perf-report.txt                        perf record -g, self time by
#                                          symbol (if perf works here)
#   NAME.callgrind, NAME-inclusive.txt,    callgrind over a zeroed window
#   NAME-ir.txt                            of steady load, NAME gateway,
#                                          gateway-policies (the route with
#                                          policies), gateway-slow2000 (at
#                                          2,000 slow requests) or nginx
#   NAME-summary.txt                       per request: top functions by
#                                          self cost with their callers, and
#                                          allocator calls with their callers
#   memory-slow2000.txt, perf-slow2000.txt resident memory by mapping and
#                                          perf at 2,000 slow requests
#   summary.txt                            the figures above in one page
#
#   tests/bench/proxy/profile.sh [BUILD_DIR]     (or: make bench-proxy-profile)
#
# Environment: DURATION [5] seconds of each traced wrk run, CONNS [64]
# wrk connections (callgrind uses CALLGRIND_CONNS [16], because the gateway
# serves only 100 to 200 requests/s under it), PROXY_CPU [0], LOAD_CPU [1].
set -euo pipefail

cd "$(dirname "$0")/../../.."
BUILD=${1:-build}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
CALLGRIND_CONNS=${CALLGRIND_CONNS:-16}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-$BUILD/bench/proxy/profile}

# shellcheck source=tests/bench/proxy/lib.sh
. tests/bench/proxy/lib.sh

if [ "$(nproc)" -lt 2 ]; then
    PROXY_CPU=0
    LOAD_CPU=0
fi
for bin in "$BUILD/workshop-gateway" "$BUILD/test-upstream"; do
    [ -x "$bin" ] || die "$bin is missing; run make first"
done
ensure_tools strace:strace valgrind:valgrind

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
# Files of an earlier run would mix with this one's.
rm -rf "$WORK" "$OUT"/*.txt "$OUT"/*.callgrind
mkdir -p "$WORK"
TRACER_PID=
cleanup() {
    # Stop everything even if one step fails.
    set +e
    if [ -n "$TRACER_PID" ]; then
        kill -INT "$TRACER_PID" 2>/dev/null || true
        wait "$TRACER_PID" 2>/dev/null || true
    fi
    stop_all_servers
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs wrk for $1 seconds with $2 connections against URL $3, output in $4;
# prints the number of requests it completed.
drive() {
    (
        ulimit -n "$NOFILE" 2>/dev/null || true
        exec taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d"$1s" --timeout 30s "$3"
    ) >"$4" 2>&1
    awk '/requests in/ { print $1 }' "$4"
}

# Traces PID $1 with strace -c during a wrk run against URL $2; writes the
# table to $3 and the request count to $3.requests.
strace_run() {
    local pid=$1 url=$2 table=$3 requests
    drive 1 "$CONNS" "$url" "$WORK/warmup.txt" >/dev/null
    # With -f, -p attaches to every thread of the process.
    strace -c -f -q -o "$table" -p "$pid" &
    TRACER_PID=$!
    sleep 1
    requests=$(drive "$DURATION" "$CONNS" "$url" "$table.wrk")
    kill -INT "$TRACER_PID"
    wait "$TRACER_PID" || true
    TRACER_PID=
    echo "$requests" >"$table.requests"
}

# Prints strace -c table $1 as calls per request, busiest first.
per_request() {
    local table=$1 requests
    requests=$(cat "$table.requests")
    echo "$requests requests under strace"
    echo "  syscall               calls   errors (per request)"
    awk -v n="$requests" '
        $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
            errors = NF == 6 ? $5 : 0
            printf "  %-20s %7.2f  %7.2f\n", $NF, $4 / n, errors / n
            total += $4
        }
        END { printf "  %-20s %7.2f\n", "total", total / n }' "$table" |
        sort -k2 -rn
}

log "starting the upstreams on CPU $LOAD_CPU"
start_static_upstream "$LOAD_CPU"
start_test_upstream "$LOAD_CPU"
# Turn the access log off, as nginx's is, and add the policy route, when
# this build accepts those keys.
LOG_OFF=no
POLICIES=no
write_gateway_config "$WORK/gateway.json" no yes
if "$BUILD/workshop-gateway" --check-config "$WORK/gateway.json" \
    >/dev/null 2>&1; then
    LOG_OFF=yes
fi
write_gateway_config "$WORK/gateway.json" yes "$LOG_OFF"
if "$BUILD/workshop-gateway" --check-config "$WORK/gateway.json" \
    >/dev/null 2>&1; then
    POLICIES=yes
fi
write_gateway_config "$WORK/gateway.json" "$POLICIES" "$LOG_OFF"
log "gateway access log off: $LOG_OFF; policy route: $POLICIES"
path=/static/small.bin

# --- strace: syscalls per request, the gateway and nginx --------------------

log "strace -c on the gateway"
start_gateway "$WORK/gateway.json" "$PROXY_CPU" "$WORK/gateway.log"
gateway_pid=$LAST_PID
strace_run "$gateway_pid" "http://127.0.0.1:$GATEWAY_PORT$path" \
    "$OUT/strace-gateway.txt"

# --- perf: where the CPU time goes -------------------------------------------

log "perf record on the gateway"
: >"$OUT/perf-report.txt"
perf record -q -F 999 -g -o "$WORK/perf.data" -p "$gateway_pid" \
    -- sleep "$DURATION" >"$WORK/perf.log" 2>&1 &
perf_pid=$!
drive "$DURATION" "$CONNS" "http://127.0.0.1:$GATEWAY_PORT$path" \
    "$WORK/perf.wrk" >/dev/null
if wait "$perf_pid" && [ -s "$WORK/perf.data" ]; then
    for sort in comm dso dso,symbol; do
        echo "## self time by $sort"
        perf report -i "$WORK/perf.data" --stdio --no-children \
            --sort "$sort" --percent-limit 0.5 -g none 2>>"$WORK/perf.log" |
            grep -v '^#' | grep -v '^$' || true
    done >"$OUT/perf-report.txt"
fi
if ! [ -s "$OUT/perf-report.txt" ]; then
    echo "perf record did not work here: $(tail -1 "$WORK/perf.log")" \
        >"$OUT/perf-report.txt"
fi
stop_server "$gateway_pid"

# --- 2,000 slow requests: where the memory and the CPU go -------------------

# Prints where PID $1's resident memory is: file mappings together, and
# the heap, each thread's malloc arena and other anonymous mappings grouped
# by size, largest first.
memory_by_mapping() {
    awk '
        /^[0-9a-f]+-[0-9a-f]+ / { name = $6 }
        /^Size:/ { size = $2 }
        /^Rss:/ {
            if (name ~ /^\//)
                key = "files"
            else
                key = size " kB " (name == "" ? "anonymous" : name)
            rss[key] += $2
            count[key]++
            total += $2
        }
        END {
            for (k in rss) printf "%9d kB resident in %5d mappings of %s\n", rss[k], count[k], k
            printf "%9d kB resident in total\n", total
        }' "/proc/$1/smaps" | sort -rn | head -13
}

log "the gateway under 2,000 slow requests: perf and memory"
start_gateway "$WORK/gateway.json" "$PROXY_CPU" "$WORK/gateway-slow.log"
gateway_pid=$LAST_PID
slow_url="http://127.0.0.1:$GATEWAY_PORT/slow?delay_ms=200&body_size=128"
drive 2 2000 "$slow_url" "$WORK/slow-warmup.txt" >/dev/null
perf record -q -F 999 -g -o "$WORK/perf-slow.data" -p "$gateway_pid" \
    -- sleep "$DURATION" >"$WORK/perf-slow.log" 2>&1 &
perf_pid=$!
(
    sleep $((DURATION / 2 + 1))
    memory_by_mapping "$gateway_pid" >"$OUT/memory-slow2000.txt"
    grep -E '^(VmHWM|VmRSS|Threads)' /proc/"$gateway_pid"/status \
        >>"$OUT/memory-slow2000.txt"
) &
memory_pid=$!
requests=$(drive "$DURATION" 2000 "$slow_url" "$WORK/slow.wrk")
wait "$memory_pid" || true
if wait "$perf_pid" && [ -s "$WORK/perf-slow.data" ]; then
    for sort in comm dso dso,symbol; do
        echo "## self time by $sort"
        perf report -i "$WORK/perf-slow.data" --stdio --no-children \
            --sort "$sort" --percent-limit 0.5 -g none \
            2>>"$WORK/perf-slow.log" | grep -v '^#' | grep -v '^$' || true
    done >"$OUT/perf-slow2000.txt"
else
    echo "perf record did not work here: $(tail -1 "$WORK/perf-slow.log")" \
        >"$OUT/perf-slow2000.txt"
fi
echo "$requests requests in ${DURATION}s at 2,000 connections" \
    >>"$OUT/memory-slow2000.txt"
stop_server "$gateway_pid"

log "strace -c on nginx as the reference"
mkdir -p "$WORK/proxy-nginx-tmp"
nginx_port=$(free_port)
render tests/bench/proxy/proxy-nginx.conf.in "$WORK/proxy-nginx.conf" \
    WORK="$WORK" PORT="$nginx_port" STATIC_PORT="$STATIC_PORT" \
    SLOW_PORT="$SLOW_PORT"
start_server "$PROXY_CPU" "$WORK/proxy-nginx.log" "$NGINX_BIN" \
    -p "$WORK" -c "$WORK/proxy-nginx.conf"
nginx_pid=$LAST_PID
wait_http "http://127.0.0.1:$nginx_port/" "$nginx_pid" ||
    die "nginx did not start; see $WORK/proxy-nginx.error.log"
sleep 0.2
worker=$(child_pids "$nginx_pid" | head -1)
strace_run "$worker" "http://127.0.0.1:$nginx_port$path" \
    "$OUT/strace-nginx.txt"
stop_server "$nginx_pid"

{
    echo "gateway: system calls per request"
    per_request "$OUT/strace-gateway.txt"
    echo
    echo "nginx (1 worker): system calls per request"
    per_request "$OUT/strace-nginx.txt"
} >"$OUT/syscalls.txt"

# --- callgrind: instructions and allocations per request ----------------------

# Starts "$@" under callgrind on PROXY_CPU as NAME ($1) and sets
# CALLGRIND_PID and CALLGRIND_URL once URL $2 returns a response. A URL
# that is a path alone is taken on the gateway's port, from its ready line.
callgrind_start() {
    local name=$1 url=$2 target='' line i
    shift 2
    if [ "${url#/}" != "$url" ]; then
        target=$url
        url=
    fi
    start_server "$PROXY_CPU" "$WORK/$name-callgrind.log" valgrind \
        --tool=callgrind --separate-threads=no --compress-strings=no \
        --compress-pos=no --callgrind-out-file="$WORK/$name.callgrind.%p" \
        "$@"
    CALLGRIND_PID=$LAST_PID

    for ((i = 0; i < 300; i++)); do
        if [ -z "$url" ]; then
            line=$(grep -o 'ready traffic=[^ ]*' "$WORK/$name-callgrind.log" \
                2>/dev/null | head -1 || true)
            [ -n "$line" ] && url="http://127.0.0.1:${line##*:}$target"
        fi
        if [ -n "$url" ] &&
            curl -s -o /dev/null --max-time 5 "$url" 2>/dev/null; then
            CALLGRIND_URL=$url
            return 0
        fi
        kill -0 "$CALLGRIND_PID" 2>/dev/null ||
            die "$name exited under callgrind; see $WORK/$name-callgrind.log"
        sleep 0.1
    done
    die "$name did not serve $url within 30 s under callgrind"
}

# Runs "$@" under callgrind as NAME ($1) and drives URL $2 (see
# callgrind_start) with CONNECTIONS (default CALLGRIND_CONNS) connections
# for SECONDS_RUN (default DURATION) seconds. COUNT_CALLS_TO names a
# function called once per request that counts the requests instead of
# wrk (see callgrind_summary.py). Counters are zeroed
# after a warm-up and dumped after the measured run, so the files cover
# steady load only: OUT/NAME.callgrind, NAME-inclusive.txt,
# NAME-summary.txt, and the instructions per request in NAME-ir.txt.
callgrind_profile() {
    local name=$1 requests dump
    callgrind_start "$@"
    local conns=${CONNECTIONS:-$CALLGRIND_CONNS}
    drive 3 "$conns" "$CALLGRIND_URL" "$WORK/$name-callgrind-warmup.txt" \
        >/dev/null
    callgrind_control -z "$CALLGRIND_PID" >/dev/null
    requests=$(drive "${SECONDS_RUN:-$DURATION}" "$conns" "$CALLGRIND_URL" \
        "$WORK/$name-callgrind.wrk")
    [ "${requests:-0}" -gt 0 ] ||
        die "no request completed under callgrind; see $WORK/$name-callgrind.wrk"
    callgrind_control -d "$CALLGRIND_PID" >/dev/null
    stop_server "$CALLGRIND_PID"

    dump=$(ls "$WORK/$name.callgrind.$CALLGRIND_PID".* 2>/dev/null |
        head -1 || true)
    [ -n "$dump" ] || die "callgrind wrote no dump for $name in $WORK"
    cp "$dump" "$OUT/$name.callgrind"
    callgrind_annotate --inclusive=yes "$OUT/$name.callgrind" \
        >"$OUT/$name-inclusive.txt" 2>&1
    python3 tests/bench/proxy/callgrind_summary.py "$OUT/$name.callgrind" \
        "$requests" 25 ${COUNT_CALLS_TO:+"$COUNT_CALLS_TO"} \
        >"$OUT/$name-summary.txt"
    echo "$name: $(grep -m1 ' Ir over ' "$OUT/$name-summary.txt")" \
        >"$OUT/$name-ir.txt"
}

log "callgrind on the gateway ($CALLGRIND_CONNS connections)"
# Each request makes one upstream call, and each call ends with one
# curl_multi_remove_handle.
export COUNT_CALLS_TO=curl_multi_remove_handle
callgrind_profile gateway "$path" "$BUILD/workshop-gateway" \
    --config "$WORK/gateway.json"
if [ "$POLICIES" = yes ]; then
    log "callgrind on the gateway's route with policies"
    callgrind_profile gateway-policies /policy/small.bin \
        "$BUILD/workshop-gateway" --config "$WORK/gateway.json"
fi
log "callgrind on the gateway at 2,000 slow requests"
CONNECTIONS=2000 SECONDS_RUN=20 callgrind_profile gateway-slow2000 \
    "/slow?delay_ms=200&body_size=128" "$BUILD/workshop-gateway" \
    --config "$WORK/gateway.json"
unset COUNT_CALLS_TO
log "callgrind on nginx ($CALLGRIND_CONNS connections)"
nginx_port=$(free_port)
render tests/bench/proxy/proxy-nginx.conf.in "$WORK/proxy-nginx.conf" \
    WORK="$WORK" PORT="$nginx_port" STATIC_PORT="$STATIC_PORT" \
    SLOW_PORT="$SLOW_PORT"
callgrind_profile nginx "http://127.0.0.1:$nginx_port$path" "$NGINX_BIN" \
    -p "$WORK" -c "$WORK/proxy-nginx.conf" -g "master_process off;"

stop_all_servers
trap - EXIT

{
    echo "== instructions per request"
    cat "$OUT"/*-ir.txt
    echo
    echo "== gateway (callgrind)"
    cat "$OUT/gateway-summary.txt"
    echo
    echo "== gateway at 2,000 slow requests (callgrind)"
    head -40 "$OUT/gateway-slow2000-summary.txt"
    echo
    echo "== nginx (callgrind)"
    head -12 "$OUT/nginx-summary.txt"
    sed -n '/^allocator calls/,$p' "$OUT/nginx-summary.txt"
    echo
    cat "$OUT/syscalls.txt"
    echo
    echo "== perf (self time over 0.5 %)"
    head -60 "$OUT/perf-report.txt"
    echo
    echo "== memory at 2,000 slow requests"
    cat "$OUT/memory-slow2000.txt"
    echo
    echo "== perf at 2,000 slow requests"
    head -40 "$OUT/perf-slow2000.txt"
} | tee "$OUT/summary.txt"
log "profile written to $OUT"
