#!/usr/bin/env bash
# Proxy benchmark: the gateway against nginx and HAProxy in front of the
# same upstreams, driven by wrk in interleaved rounds.
#
#   tests/bench/bench-proxy.sh [BUILD_DIR]        (or: make bench-proxy)
#
# Environment (defaults in brackets):
#   ROUNDS [3]      rounds; each round runs every scenario for every proxy
#   DURATION [3]    seconds of each measured wrk run
#   WARMUP [1]      seconds of the unmeasured wrk run before it
#   SCENARIOS       [small64 small256 large64 slow2000]
#   PROXY_CPU [0]   CPU the proxy under test is pinned to
#   LOAD_CPU [1]    CPU wrk and the upstreams are pinned to
#   QUIET_WAIT [0]  seconds to wait before each run until other processes
#                   keep both CPUs under QUIET_MAX [10] % busy (0: no wait)
#   RETRIES [0]     times a run is repeated when other processes used more
#                   than RETRY_ABOVE [15] % of both CPUs during it
#   OUT             [BUILD_DIR/bench/proxy] results.tsv, report.md, logs
#
# Scenarios: a 128-byte body at 64 and at 256 connections, a 64 KiB body at
# 64, and an upstream that replies after 200 ms at 2,000 connections. The
# contenders are the gateway, nginx, HAProxy (each on one CPU, one worker or
# thread, keep-alive to the upstream, no access logs) and "direct", wrk
# against the upstream itself. In small64 a gateway route with a rate
# limiter, breaker and bulkhead is a fifth contender when the gateway's
# --check-config accepts those keys.
#
# Each measurement starts its proxy afresh, checks one response, runs wrk
# for WARMUP and then DURATION seconds, reads /proc/PID/stat and status,
# and stops the proxy by PID. On a 2-core machine the quick default (3
# rounds of 3 s) takes about 5 minutes, and ROUNDS=5 DURATION=10 about 25
# when no other load makes QUIET_WAIT wait.
set -euo pipefail

cd "$(dirname "$0")/../.."
BUILD=${1:-build}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
SCENARIOS=${SCENARIOS:-small64 small256 large64 slow2000}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
QUIET_WAIT=${QUIET_WAIT:-0}
QUIET_MAX=${QUIET_MAX:-10}
RETRIES=${RETRIES:-0}
RETRY_ABOVE=${RETRY_ABOVE:-15}
OUT=${OUT:-$BUILD/bench/proxy}

# shellcheck source=tests/bench/proxy/lib.sh
. tests/bench/proxy/lib.sh

if [ "$(nproc)" -lt 2 ]; then
    log "only one CPU: the proxy, wrk and the upstreams all share CPU 0"
    PROXY_CPU=0
    LOAD_CPU=0
fi
for bin in "$BUILD/workshop-gateway" "$BUILD/test-upstream"; do
    [ -x "$bin" ] || die "$bin is missing; run make first"
done
ensure_tools

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT/wrk"
RESULTS=$OUT/results.tsv
CLK_TCK=$(getconf CLK_TCK)

SAMPLER_PID=
cleanup() {
    # Stop everything even if one step fails.
    set +e
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
    fi
    stop_all_servers
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- scenarios ------------------------------------------------------------

scenario_path() {
    case $1 in
    small*) echo /static/small.bin ;;
    large*) echo /static/large.bin ;;
    slow*) echo '/slow?delay_ms=200&body_size=128' ;;
    *) die "unknown scenario '$1'; use small64, small256, large64, slow2000" ;;
    esac
}

scenario_conns() {
    case $1 in
    small64 | large64) echo 64 ;;
    small256) echo 256 ;;
    slow2000) echo 2000 ;;
    *) die "unknown scenario '$1'; use small64, small256, large64, slow2000" ;;
    esac
}

scenario_body_bytes() {
    case $1 in
    large*) echo 65536 ;;
    *) echo 128 ;;
    esac
}

# --- the upstreams and the gateway's configs -------------------------------

log "starting the upstreams on CPU $LOAD_CPU"
start_static_upstream "$LOAD_CPU"
start_test_upstream "$LOAD_CPU"
log "upstream nginx on 127.0.0.1:$STATIC_PORT (PID $STATIC_PID)," \
    "test-upstream on 127.0.0.1:$SLOW_PORT (PID $SLOW_PID)"
sleep 0.2
mapfile -t UPSTREAM_PIDS < <(process_tree "$STATIC_PID")
UPSTREAM_PIDS+=("$SLOW_PID")

# Turn the gateway's access log off, as nginx's and HAProxy's are, if this
# build has the "log" key. Then check whether it takes the policy keys.
LOG_OFF=no
write_gateway_config "$WORK/gateway-check.json" no yes
if "$BUILD/workshop-gateway" --check-config "$WORK/gateway-check.json" \
    >/dev/null 2>&1; then
    LOG_OFF=yes
else
    log "this gateway build has no \"log\": {\"access\": \"off\"}; its" \
        "access log (if any) stays on"
fi
POLICIES=no
write_gateway_config "$WORK/gateway-check.json" yes "$LOG_OFF"
if policy_error=$("$BUILD/workshop-gateway" --check-config \
    "$WORK/gateway-check.json" 2>&1); then
    POLICIES=yes
    log "the gateway accepts rate_limit, breaker and bulkhead: measuring" \
        "the policies' overhead"
else
    log "policies' overhead not measured: --check-config rejected the" \
        "policy route: $policy_error"
fi
write_gateway_config "$WORK/gateway.json" "$POLICIES" "$LOG_OFF"
"$BUILD/workshop-gateway" --check-config "$WORK/gateway.json" >/dev/null ||
    die "the gateway rejected $WORK/gateway.json"

mkdir -p "$WORK/proxy-nginx-tmp"
nginx_port=$(free_port)
haproxy_port=$(free_port)
render tests/bench/proxy/proxy-nginx.conf.in "$WORK/proxy-nginx.conf" \
    WORK="$WORK" PORT="$nginx_port" STATIC_PORT="$STATIC_PORT" \
    SLOW_PORT="$SLOW_PORT"
render tests/bench/proxy/haproxy.cfg.in "$WORK/haproxy.cfg" \
    PORT="$haproxy_port" STATIC_PORT="$STATIC_PORT" SLOW_PORT="$SLOW_PORT"
"$NGINX_BIN" -t -q -p "$WORK" -c "$WORK/proxy-nginx.conf" ||
    die "nginx rejected $WORK/proxy-nginx.conf"
"$HAPROXY_BIN" -c -q -f "$WORK/haproxy.cfg" ||
    die "haproxy rejected $WORK/haproxy.cfg"

# --- contenders -------------------------------------------------------------

# Starts contender $1 and sets PROXY_PID (empty for direct) and BASE_URL
# for scenario $2.
start_contender() {
    local contender=$1 scenario=$2
    PROXY_PID=
    case $contender in
    gateway | gateway-policies)
        start_gateway "$WORK/gateway.json" "$PROXY_CPU" "$WORK/gateway.log"
        PROXY_PID=$LAST_PID
        BASE_URL=http://127.0.0.1:$GATEWAY_PORT
        ;;
    nginx)
        start_server "$PROXY_CPU" "$WORK/proxy-nginx.log" "$NGINX_BIN" \
            -p "$WORK" -c "$WORK/proxy-nginx.conf"
        PROXY_PID=$LAST_PID
        BASE_URL=http://127.0.0.1:$nginx_port
        ;;
    haproxy)
        start_server "$PROXY_CPU" "$WORK/haproxy.log" "$HAPROXY_BIN" -db \
            -f "$WORK/haproxy.cfg"
        PROXY_PID=$LAST_PID
        BASE_URL=http://127.0.0.1:$haproxy_port
        ;;
    direct)
        case $scenario in
        slow*) BASE_URL=http://127.0.0.1:$SLOW_PORT ;;
        *) BASE_URL=http://127.0.0.1:$STATIC_PORT ;;
        esac
        ;;
    *) die "unknown contender '$contender'" ;;
    esac
    if [ -n "$PROXY_PID" ]; then
        wait_http "$BASE_URL/" "$PROXY_PID" ||
            die "$contender did not start; see the logs in $WORK"
        # Let nginx's master fork its worker before reading the tree.
        sleep 0.2
    fi
}

# Prints "requests rps p50_ms p99_ms errors" from wrk's output in file $1.
parse_wrk() {
    awk '
    function ms(text,    v) {
        v = text + 0
        if (text ~ /us$/) return v / 1000
        if (text ~ /ms$/) return v
        if (text ~ /m$/) return v * 60000
        if (text ~ /s$/) return v * 1000
        return v
    }
    /requests in/ { requests = $1 }
    /Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Socket errors:/ { gsub(",", ""); errors += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { errors += $5 }
    END {
        if (requests == "" || rps == "") exit 1
        printf "%d %.1f %.3f %.3f %d\n", requests, rps, p50, p99, errors
    }' "$1"
}

# Records the highest thread count of PIDs in file $1 every 0.2 s until
# the file $1.stop exists.
sample_threads() {
    local file=$1 max=0 n
    shift
    while [ ! -e "$file.stop" ]; do
        n=$(sum_status Threads "$@")
        [ "$n" -gt "$max" ] && max=$n && echo "$max" >"$file"
        sleep 0.2
    done
}

# Runs wrk for $1 seconds with $2 connections against URL $3, output in
# file $4, and prints the CPU time wrk used, in clock ticks.
run_wrk() {
    local seconds=$1 conns=$2 url=$3 out=$4
    (
        ulimit -n "$NOFILE" 2>/dev/null || true
        taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${seconds}s" \
            --timeout 10s --latency "$url" >"$out" 2>&1
        times
    ) | awk -v hz="$CLK_TCK" '
        function seconds(t,    m) {
            m = t; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", t); sub(/s$/, "", t)
            return m * 60 + t
        }
        NR == 2 { printf "%d\n", (seconds($1) + seconds($2)) * hz }'
}

# Prints the busy clock ticks of all CPUs together (user, nice and system)
# and their total. Interrupt and softirq time is left out of busy because
# the kernel charges loopback TCP work there to no process, so it would
# count the benchmark's own traffic as other load.
all_cpu_times() {
    awk '$1 == "cpu" {
        print $2 + $3 + $4, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9
    }' /proc/stat
}

# Waits up to QUIET_WAIT seconds until other processes leave both CPUs
# below QUIET_MAX % busy over one second. The benchmark's own servers are
# idle at that point, so all busy time counts as other load.
wait_quiet() {
    local waited=0 before after busy
    [ "$QUIET_WAIT" -gt 0 ] || return 0
    while :; do
        before=$(all_cpu_times)
        sleep 1
        after=$(all_cpu_times)
        busy=$(echo "$before $after" |
            awk '{ printf "%d\n", 100 * ($3 - $1) / ($4 - $2) }')
        [ "$busy" -lt "$QUIET_MAX" ] && return 0
        waited=$((waited + 1))
        if [ "$waited" -ge "$QUIET_WAIT" ]; then
            log "other processes still keep the CPUs $busy % busy after" \
                "${QUIET_WAIT}s; measuring anyway"
            return 0
        fi
        [ $((waited % 15)) = 1 ] &&
            log "waiting for other processes to leave the CPUs ($busy % busy)"
        sleep 1
    done
}

# Checks that URL $1 returns status 200 and $2 bytes.
check_response() {
    local code size
    read -r code size < <(curl -s -o /dev/null --max-time 5 \
        -w '%{http_code} %{size_download}\n' "$1" || echo "000 0")
    if [ "$code" != 200 ] || [ "$size" != "$2" ]; then
        die "status $code and $size bytes for $1; expected 200 and $2 bytes"
    fi
}

# Measures contender $2 in scenario $1 once and sets ROW (a results.tsv
# line without the round) and FOREIGN_PCT, the share of both CPUs that
# processes outside the benchmark used during the run.
measure_once() {
    local scenario=$1 contender=$2 tag=$3
    local path conns body url pids=()
    path=$(scenario_path "$scenario")
    conns=$(scenario_conns "$scenario")
    body=$(scenario_body_bytes "$scenario")
    [ "$contender" = gateway-policies ] && path=${path/\/static\//\/policy\/}

    wait_quiet
    start_contender "$contender" "$scenario"
    url=$BASE_URL$path
    check_response "$url" "$body"

    local idle_rss=NA idle_threads=NA
    if [ -n "$PROXY_PID" ]; then
        mapfile -t pids < <(process_tree "$PROXY_PID")
        idle_rss=$(sum_status VmRSS "${pids[@]}")
        idle_threads=$(sum_status Threads "${pids[@]}")
    fi
    run_wrk "$WARMUP" "$conns" "$url" "$OUT/wrk/$tag.warmup.txt" \
        >/dev/null || die "wrk failed; see $OUT/wrk/$tag.warmup.txt"

    # Counters before the run. The proxy's are zero for "direct".
    local threads_file=$WORK/threads.$tag ticks0=0 switches0=0
    if [ -n "$PROXY_PID" ]; then
        echo "$idle_threads" >"$threads_file"
        sample_threads "$threads_file" "${pids[@]}" &
        SAMPLER_PID=$!
        ticks0=$(sum_cpu_ticks "${pids[@]}")
        switches0=$(sum_context_switches "${pids[@]}")
    fi
    local upstream0 proxy_cpu0 all_cpu0
    upstream0=$(sum_cpu_ticks "${UPSTREAM_PIDS[@]}")
    proxy_cpu0=$(cpu_times "$PROXY_CPU")
    all_cpu0=$(all_cpu_times)

    local wrk_ticks
    wrk_ticks=$(run_wrk "$DURATION" "$conns" "$url" "$OUT/wrk/$tag.txt") ||
        die "wrk failed; see $OUT/wrk/$tag.txt"

    # Counters after the run.
    local upstream1 proxy_cpu1 all_cpu1 ticks1=0 switches1=0
    local hwm=NA max_threads=NA
    all_cpu1=$(all_cpu_times)
    proxy_cpu1=$(cpu_times "$PROXY_CPU")
    upstream1=$(sum_cpu_ticks "${UPSTREAM_PIDS[@]}")
    if [ -n "$PROXY_PID" ]; then
        ticks1=$(sum_cpu_ticks "${pids[@]}")
        switches1=$(sum_context_switches "${pids[@]}")
        hwm=$(sum_status VmHWM "${pids[@]}")
        touch "$threads_file.stop"
        wait "$SAMPLER_PID" 2>/dev/null || true
        SAMPLER_PID=
        max_threads=$(cat "$threads_file")
        stop_server "$PROXY_PID"
    fi

    local requests rps p50 p99 errors
    read -r requests rps p50 p99 errors < <(parse_wrk "$OUT/wrk/$tag.txt") ||
        die "failed to parse wrk's output in $OUT/wrk/$tag.txt"
    [ "$errors" -gt 0 ] &&
        log "warning: $errors errors or non-2xx responses in $tag"

    local cpu_us=NA switches=NA
    if [ -n "$PROXY_PID" ] && [ "$requests" -gt 0 ]; then
        cpu_us=$(awk -v t=$((ticks1 - ticks0)) -v hz="$CLK_TCK" \
            -v n="$requests" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
        switches=$(awk -v s=$((switches1 - switches0)) -v n="$requests" \
            'BEGIN { printf "%.3f", s / n }')
    fi

    # Shares of the CPUs during the run, in percent. Whatever the proxy,
    # the upstreams and wrk did not use of the busy time was other load.
    local proxy_busy steal
    read -r proxy_busy steal < <(echo "$proxy_cpu0 $proxy_cpu1" | awk '{
        t = $6 - $3
        printf "%.0f %.1f\n", 100 * ($4 - $1) / t, 100 * ($5 - $2) / t }')
    FOREIGN_PCT=$(echo "$all_cpu0 $all_cpu1" | awk \
        -v ours=$((ticks1 - ticks0 + upstream1 - upstream0 + wrk_ticks)) '{
        other = ($3 - $1) - ours
        if (other < 0)
            other = 0
        printf "%.0f\n", 100 * other / ($4 - $2) }')

    ROW=$(printf '%s\t' "$scenario" "$contender" "$conns" "$requests" \
        "$rps" "$p50" "$p99" "$errors" "$cpu_us" "$switches" "$idle_rss" \
        "$hwm" "$idle_threads" "$max_threads" "$proxy_busy" "$steal" \
        "$FOREIGN_PCT")
    log "$(printf '%-9s %-16s %9s req/s  p50 %7s ms  p99 %7s ms  cpu %6s us/req  hwm %6s kB  threads %s  other load %s%%' \
        "$scenario" "$contender" "$rps" "$p50" "$p99" "$cpu_us" "$hwm" \
        "$max_threads" "$FOREIGN_PCT")"
}

# Measures contender $2 in scenario $1 for round $3 and appends a row to
# RESULTS. A run during which other processes used more than RETRY_ABOVE %
# of the CPUs is repeated, up to RETRIES times, and the attempt with the
# least such load counts.
measure() {
    local scenario=$1 contender=$2 round=$3 attempt best_row='' best_pct=101
    for ((attempt = 0; ; attempt++)); do
        measure_once "$scenario" "$contender" \
            "$scenario-$contender-r$round-a$attempt"
        if [ "$FOREIGN_PCT" -lt "$best_pct" ]; then
            best_pct=$FOREIGN_PCT
            best_row=$ROW
        fi
        if [ "$FOREIGN_PCT" -le "$RETRY_ABOVE" ] ||
            [ "$attempt" -ge "$RETRIES" ]; then
            break
        fi
        log "other processes used $FOREIGN_PCT % of the CPUs; measuring again"
    done
    printf '%s\t%s%s\n' "$round" "$best_row" "$attempt" >>"$RESULTS"
}

# --- rounds -----------------------------------------------------------------

printf 'round\tscenario\tcontender\tconns\trequests\trps\tp50_ms\tp99_ms\terrors\tcpu_us_per_req\tswitches_per_req\tidle_rss_kb\thwm_kb\tthreads_idle\tthreads_max\tproxy_cpu_busy_pct\tproxy_cpu_steal_pct\tother_load_pct\tretries\n' \
    >"$RESULTS"
log "$ROUNDS rounds of ${DURATION}s runs after ${WARMUP}s of warm-up;" \
    "proxies on CPU $PROXY_CPU, wrk and upstreams on CPU $LOAD_CPU"
for ((round = 1; round <= ROUNDS; round++)); do
    for scenario in $SCENARIOS; do
        contenders=(gateway nginx haproxy direct)
        if [ "$scenario" = small64 ] && [ "$POLICIES" = yes ]; then
            contenders+=(gateway-policies)
        fi
        # Rotate the order each round so no contender always runs first.
        n=${#contenders[@]}
        for ((i = 0; i < n; i++)); do
            measure "$scenario" "${contenders[$(((i + round - 1) % n))]}" \
                "$round"
        done
    done
done

stop_all_servers
trap - EXIT

# --- report ------------------------------------------------------------------

{
    echo "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), kernel $(uname -r)"
    echo "versions: $("$NGINX_BIN" -v 2>&1 | sed 's/.*version: //'), $("$HAPROXY_BIN" -v | head -1 | awk '{ print "HAProxy " $3 }'), $(wrk -v 2>&1 | head -1 | awk '{ print "wrk " $2 }'), $("$BUILD/workshop-gateway" --version | sed 's/.*(\(libmicrohttpd [^,]*\), \(libcurl\/[^ ]*\).*/\1, \2/')"
    echo "command: ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP QUIET_WAIT=$QUIET_WAIT RETRIES=$RETRIES make bench-proxy"
    echo "pinning: proxy on CPU $PROXY_CPU; wrk (1 thread), upstream nginx (1 worker) and test-upstream on CPU $LOAD_CPU"
    echo "policies: $([ "$POLICIES" = yes ] && echo measured || echo "not measured: the gateway rejects rate_limit, breaker and bulkhead")"
    echo "gateway access log: $([ "$LOG_OFF" = yes ] && echo off || echo "on (this build cannot turn it off)")"
} >"$OUT/environment.txt"
python3 tests/bench/proxy/report.py "$RESULTS" "$OUT/environment.txt" \
    "$OUT/report.md"
log "raw results in $RESULTS, report in $OUT/report.md"
