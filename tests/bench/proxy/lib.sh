# shellcheck shell=bash disable=SC2034
# (HAPROXY_BIN, GATEWAY_PORT and the other globals are read by the callers.)
#
# Shell functions shared by bench-proxy.sh and proxy/profile.sh: tools,
# ports, starting and stopping servers by PID, and reading /proc.
#
# Callers set BUILD (the gateway's build folder), WORK (a scratch folder for
# configs and logs), PROXY_CPU and LOAD_CPU before they start servers.
# Every server started here is a direct child of the calling shell, and its
# PID goes into SERVER_PIDS, so stop_all_servers stops each one by PID.

HERE_PROXY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Soft open-file limit for every server and for wrk: the hard limit. At
# 2,000 clients a proxy needs about 4,100 descriptors (client and upstream
# connections), so a lower hard limit fails that scenario.
NOFILE=${NOFILE:-$(ulimit -Hn)}
[ "$NOFILE" = unlimited ] && NOFILE=65536

SERVER_PIDS=()
LAST_PID=

log() {
    echo "bench-proxy: $*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# Installs the Debian packages whose commands are missing; root only.
ensure_tools() {
    local missing=() cmd pkg
    for pair in nginx:nginx-light haproxy:haproxy wrk:wrk curl:curl \
        python3:python3 taskset:util-linux "$@"; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        if ! command -v "$cmd" >/dev/null 2>&1 &&
            ! [ -x "/usr/sbin/$cmd" ]; then
            missing+=("$pkg")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        die "missing packages: ${missing[*]}; install them or run as root"
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}

NGINX_BIN=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)
HAPROXY_BIN=$(command -v haproxy 2>/dev/null || echo /usr/sbin/haproxy)

# Prints a loopback TCP port that is free now. Another process may take it
# before the caller binds it, and then the server fails to start.
free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# Copies template $1 to $2, replacing each @KEY@ by the value of KEY=VALUE
# in the remaining arguments.
render() {
    local template=$1 out=$2
    shift 2
    local args=() kv
    for kv in "$@"; do
        args+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
    done
    sed "${args[@]}" "$template" >"$out"
    if grep -q '@[A-Z_]*@' "$out"; then
        die "unreplaced placeholder in $out: $(grep -o '@[A-Z_]*@' "$out" | head -1)"
    fi
}

# Starts "$@" in the background, pinned to CPU $1, with the raised open-file
# limit and its output in log file $2. The subshell execs the command, so
# LAST_PID is the server's own PID.
start_server() {
    local cpu=$1 logfile=$2
    shift 2
    (
        ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
        exec taskset -c "$cpu" "$@"
    ) >"$logfile" 2>&1 </dev/null &
    LAST_PID=$!
    SERVER_PIDS+=("$LAST_PID")
}

# Direct children of PID $1 (nginx's workers).
child_pids() {
    ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true
}

# Stops PID $1 and its children: SIGTERM, then SIGKILL after 10 s.
stop_server() {
    local pid=$1 children i
    kill -0 "$pid" 2>/dev/null || {
        wait "$pid" 2>/dev/null || true
        return 0
    }
    children=$(child_pids "$pid")
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "PID $pid did not stop within 10 s of SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null || true
    for child in $children; do
        if kill -0 "$child" 2>/dev/null; then
            kill -KILL "$child" 2>/dev/null
        fi
    done
    local kept=() p
    for p in "${SERVER_PIDS[@]}"; do
        [ "$p" != "$pid" ] && kept+=("$p")
    done
    SERVER_PIDS=("${kept[@]}")
    return 0
}

stop_all_servers() {
    local pids=("${SERVER_PIDS[@]}") i
    # Newest first: proxies before their upstreams.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        stop_server "${pids[$i]}"
    done
}

# Waits up to 10 s until URL $1 returns a response; fails if PID $2 exits
# first.
wait_http() {
    local url=$1 pid=$2 i
    for ((i = 0; i < 100; i++)); do
        if curl -s -o /dev/null --max-time 1 "$url" 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Starts the gateway on config $1 pinned to CPU $2, with its log in $3, and
# sets GATEWAY_PORT from its "ready traffic=HOST:PORT" line.
start_gateway() {
    local config=$1 cpu=$2 logfile=$3 i line
    # The previous run's log names its port: it must be gone before the
    # loop below reads the file, which may happen before the new process
    # has truncated it.
    rm -f "$logfile"
    start_server "$cpu" "$logfile" "$BUILD/workshop-gateway" --config "$config"
    GATEWAY_PORT=
    for ((i = 0; i < 100; i++)); do
        line=$(grep -o 'ready traffic=[^ ]*' "$logfile" 2>/dev/null |
            head -1 || true)
        if [ -n "$line" ]; then
            GATEWAY_PORT=${line##*:}
            return 0
        fi
        kill -0 "$LAST_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "the gateway did not print its ready line; see $logfile"
}

# Starts the test upstream pinned to CPU $1 and sets SLOW_PORT.
start_test_upstream() {
    local cpu=$1 i
    start_server "$cpu" "$WORK/test-upstream.log" "$BUILD/test-upstream" \
        --listen 127.0.0.1:0 --quiet
    SLOW_PID=$LAST_PID
    SLOW_PORT=
    for ((i = 0; i < 100; i++)); do
        SLOW_PORT=$(sed -n 's/^port=\([0-9]*\)$/\1/p' "$WORK/test-upstream.log")
        [ -n "$SLOW_PORT" ] && return 0
        kill -0 "$SLOW_PID" 2>/dev/null || break
        sleep 0.1
    done
    die "build/test-upstream did not print its port; see $WORK/test-upstream.log"
}

# Writes the static bodies and starts the upstream nginx pinned to CPU $1;
# sets STATIC_PORT. /static/ and /policy/ hold the same files, so the route
# with policies and the one without proxy identical responses.
start_static_upstream() {
    local cpu=$1 dir
    for dir in static policy; do
        mkdir -p "$WORK/root/$dir"
        head -c 128 /dev/zero | tr '\0' 's' >"$WORK/root/$dir/small.bin"
        head -c 65536 /dev/zero | tr '\0' 'L' >"$WORK/root/$dir/large.bin"
    done
    chmod -R a+rX "$WORK/root"
    mkdir -p "$WORK/upstream-nginx-tmp"
    STATIC_PORT=$(free_port)
    render "$HERE_PROXY/upstream-nginx.conf.in" "$WORK/upstream-nginx.conf" \
        WORK="$WORK" ROOT="$WORK/root" PORT="$STATIC_PORT"
    start_server "$cpu" "$WORK/upstream-nginx.log" "$NGINX_BIN" \
        -p "$WORK" -c "$WORK/upstream-nginx.conf"
    STATIC_PID=$LAST_PID
    wait_http "http://127.0.0.1:$STATIC_PORT/static/small.bin" "$STATIC_PID" ||
        die "the upstream nginx did not start; see $WORK/upstream-nginx.log"
}

# Writes the gateway's config to $1: routes /static and /slow without
# policies and, when $2 is "yes", /policy with a rate limiter, breaker and
# bulkhead that never reject at these rates. When $3 is "yes" the access
# log is off, as it is for nginx and HAProxy.
write_gateway_config() {
    local out=$1 with_policies=$2 log_off=${3:-no} policy_route='' log=''
    if [ "$with_policies" = yes ]; then
        policy_route=$(
            cat <<EOF
,
    {
      "name": "policy",
      "match": { "prefix": "/policy" },
      "upstream": { "url": "http://127.0.0.1:$STATIC_PORT",
                    "connect_timeout_ms": 1000, "timeout_ms": 30000 },
      "rate_limit": { "rate": 1000000, "burst": 1000000 },
      "breaker": {},
      "bulkhead": { "max_concurrent": 100000 }
    }
EOF
        )
    fi
    if [ "$log_off" = yes ]; then
        log='
  "log": { "access": "off" },'
    fi
    cat >"$out" <<EOF
{$log
  "listen": "127.0.0.1:0",
  "admin": { "listen": "127.0.0.1:0" },
  "limits": { "max_connections": 10000 },
  "drain_timeout_ms": 1000,
  "routes": [
    {
      "name": "static",
      "match": { "prefix": "/static" },
      "upstream": { "url": "http://127.0.0.1:$STATIC_PORT",
                    "connect_timeout_ms": 1000, "timeout_ms": 30000 }
    },
    {
      "name": "slow",
      "match": { "prefix": "/slow" },
      "upstream": { "url": "http://127.0.0.1:$SLOW_PORT",
                    "connect_timeout_ms": 1000, "timeout_ms": 30000 }
    }$policy_route
  ]
}
EOF
}

# PID $1 and its direct children, one a line.
process_tree() {
    echo "$1"
    child_pids "$1"
}

# Sums field $1 (VmHWM, VmRSS: kB; Threads) of /proc/PID/status over PIDs.
sum_status() {
    local field=$1 pid total=0 v
    shift
    for pid in "$@"; do
        v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" \
            2>/dev/null)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# Sums utime + stime, in clock ticks, over PIDs. The fields are read after
# the last ')' because the command name may hold spaces.
sum_cpu_ticks() {
    local pid total=0 v
    for pid in "$@"; do
        v=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null |
            awk '{ print $12 + $13 }')
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# Sums the voluntary and involuntary context switches of every thread of
# PIDs, from /proc/PID/task/*/status.
sum_context_switches() {
    local pid
    for pid in "$@"; do
        cat /proc/"$pid"/task/*/status 2>/dev/null || true
    done | awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 }
        END { print n + 0 }'
}

# Prints "busy steal total" in clock ticks for CPU $1 from /proc/stat:
# busy is user + nice + system + irq + softirq.
cpu_times() {
    awk -v cpu="cpu$1" '$1 == cpu {
        print $2 + $3 + $4 + $7 + $8, $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9
    }' /proc/stat
}
