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
stop() {
    trap - INT TERM EXIT
    echo
    [ -n "$gateway_pid" ] && kill -TERM "$gateway_pid" 2>/dev/null && wait "$gateway_pid"
    [ -n "$upstream_pid" ] && kill -TERM "$upstream_pid" 2>/dev/null && wait "$upstream_pid"
    echo "run-demo: stopped the gateway and the demo upstream"
    exit 0
}
trap stop INT TERM EXIT

"$build/workshop-gateway" --check-config "$config" || exit 2

"$build/test-upstream" --listen 127.0.0.1:9000 --quiet >/dev/null &
upstream_pid=$!
"$build/workshop-gateway" --config "$config" &
gateway_pid=$!

# Wait (up to 5 s) until the admin listener reports ready.
for _ in $(seq 50); do
    if curl -fsS -o /dev/null http://127.0.0.1:9901/readyz 2>/dev/null; then
        break
    fi
    if ! kill -0 "$gateway_pid" 2>/dev/null || ! kill -0 "$upstream_pid" 2>/dev/null; then
        echo "run-demo: the gateway or the demo upstream exited; is port 8080, 9000 or 9901 in use?" >&2
        exit 1
    fi
    sleep 0.1
done

cat <<'MSG'

Workshop Gateway is running on http://127.0.0.1:8080 (admin on 127.0.0.1:9901),
in front of a demo upstream on 127.0.0.1:9000. The demo upstream takes
?status=N, ?delay_ms=N and ?echo=1. Try:

  curl -i http://127.0.0.1:8080/api/users/42              proxied to the upstream
  curl -i 'http://127.0.0.1:8080/echo/hello?echo=1'       the request as the upstream saw it
  curl -i -X PATCH http://127.0.0.1:8080/api/users/42     405 with Allow
  curl -i http://127.0.0.1:8080/nowhere                   404 from the gateway

A breaker that opens, and its fallback:
  for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code}\n' 'http://127.0.0.1:8080/flaky?status=500'; done
  curl -i http://127.0.0.1:8080/flaky                     200 from the fallback, X-Workshop-Fallback: breaker_open
                                                          (the breaker closes again after 15 s)
The rate limiter (3 at once, then 1 per second):
  for i in 1 2 3 4; do curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:8080/limited; done
A stale response while the upstream fails:
  curl -i http://127.0.0.1:8080/catalog/books             200, now cached
  curl -i -H 'X-Test-Status: 503' http://127.0.0.1:8080/catalog/books   the cached copy, with Age
An upstream slower than its timeout_ms (1000), then one that is down
(nothing listens on 127.0.0.1:9009) answered by an alternate upstream:
  curl -i 'http://127.0.0.1:8080/slow?delay_ms=1500'      504 from the gateway
  curl -i 'http://127.0.0.1:8080/backup/x?echo=1'         X-Workshop-Fallback: upstream_error

  curl http://127.0.0.1:9901/metrics                      Prometheus metrics
  curl http://127.0.0.1:9901/readyz                       readiness

Press Ctrl-C to stop both.
MSG
wait "$gateway_pid"
