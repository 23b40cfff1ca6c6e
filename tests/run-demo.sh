#!/usr/bin/env bash
# Starts the test upstream on 127.0.0.1:9000 and the gateway on
# config/gateway.json, prints URLs to try, and stops both on Ctrl-C.
#   tests/run-demo.sh BUILD_DIR
set -u
cd "$(dirname "$0")/.."
build=${1:-build}
config=config/gateway.json

upstream_pid=
gateway_pid=
status=0
# Stops the gateway first, so it can drain requests in flight to the
# upstream, then the upstream; keeps the exit status.
stop() {
    trap - INT TERM EXIT
    echo
    if [ -n "$gateway_pid" ] && kill -0 "$gateway_pid" 2>/dev/null; then
        kill -TERM "$gateway_pid" 2>/dev/null
    fi
    if [ -n "$gateway_pid" ]; then
        wait "$gateway_pid"
        gateway_status=$?
        [ "$status" = 0 ] && status=$gateway_status
        echo "run-demo: the gateway exited with status $gateway_status"
    fi
    gateway_pid=
    [ -n "$upstream_pid" ] && kill -TERM "$upstream_pid" 2>/dev/null && wait "$upstream_pid"
    echo "run-demo: stopped the gateway and the demo upstream"
    exit "$status"
}
trap stop INT TERM EXIT

fail() {
    echo "run-demo: $*" >&2
    status=1
    exit 1
}

"$build/workshop-gateway" --check-config "$config" || { status=2; exit 2; }

# The upstream runs in its own session, so a Ctrl-C in the terminal reaches
# the gateway (which then drains) but not the upstream it drains to.
setsid "$build/test-upstream" --listen 127.0.0.1:9000 --quiet >/dev/null &
upstream_pid=$!
"$build/workshop-gateway" --config "$config" &
gateway_pid=$!

# Wait (up to 5 s) until the gateway's own admin listener reports ready.
ready=no
for _ in $(seq 50); do
    kill -0 "$upstream_pid" 2>/dev/null ||
        fail "the demo upstream exited: is port 9000 in use? (see its error above)"
    kill -0 "$gateway_pid" 2>/dev/null ||
        fail "the gateway exited: is port 8080 or 9901 in use? (see its error above)"
    if curl -fsS -o /dev/null http://127.0.0.1:9901/readyz 2>/dev/null; then
        ready=yes
        break
    fi
    sleep 0.1
done
sleep 0.2
kill -0 "$gateway_pid" 2>/dev/null ||
    fail "the gateway exited: is port 8080 or 9901 in use? (see its error above)"
kill -0 "$upstream_pid" 2>/dev/null ||
    fail "the demo upstream exited: is port 9000 in use? (see its error above)"
[ "$ready" = yes ] || fail "the gateway did not report ready within 5 s"

cat <<'MSG'

Workshop Gateway is running on http://127.0.0.1:8080 (admin on 127.0.0.1:9901),
in front of a demo upstream on 127.0.0.1:9000. The demo upstream takes
?status=N, ?delay_ms=N and ?echo=1, or the same as headers (X-Test-Status: N),
which leave the URL, and so the stale cache's key, unchanged. Try:

  curl -i http://127.0.0.1:8080/api/users/42              proxied to the upstream
  curl -i 'http://127.0.0.1:8080/echo/hello?echo=1'       the request as the upstream saw it
  curl -i -X PATCH http://127.0.0.1:8080/api/users/42     405 with Allow
  curl -i http://127.0.0.1:8080/nowhere                   404 from the gateway

A breaker that opens, and its fallback:
  for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code}\n' 'http://127.0.0.1:8080/flaky?status=500'; done
  curl -i http://127.0.0.1:8080/flaky                     200 from the fallback, X-Workshop-Fallback: breaker_open
                                                          (after 15 s the next request is a probe
                                                          that closes it again)
The rate limiter (3 at once, then 1 per second):
  for i in 1 2 3 4; do curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:8080/limited; done
A stale response while the upstream fails:
  curl -i http://127.0.0.1:8080/catalog/books             200, now cached
  curl -i -H 'X-Test-Status: 503' http://127.0.0.1:8080/catalog/books   the cached copy, with Age
An upstream slower than its timeout_ms (1000), then one that is down
(nothing listens on 127.0.0.1:9009) answered by an alternate upstream:
  curl -i 'http://127.0.0.1:8080/slow?delay_ms=1500'      504 from the gateway
  curl -i 'http://127.0.0.1:8080/backup/x?echo=1'         X-Workshop-Fallback: upstream_error

A large body: over limits.response_buffer_bytes (64 KiB) it streams
(the upstream also takes ?body_size=N, ?chunked=1 and ?action=close_mid_body):
  curl -s -o /dev/null -w '%{http_code} %{size_download}\n' 'http://127.0.0.1:8080/api/users/big?body_size=20000000'

  curl http://127.0.0.1:9901/metrics                      Prometheus metrics
  curl http://127.0.0.1:9901/readyz                       readiness

Press Ctrl-C to stop both.
MSG
echo "run-demo: gateway PID $gateway_pid, demo upstream PID $upstream_pid"
wait "$gateway_pid"
status=$?
echo "run-demo: the gateway exited with status $status"
gateway_pid=
