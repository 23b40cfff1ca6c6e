#!/usr/bin/env bash
# Checks the gateway's /metrics with `promtool check metrics` (Debian's
# prometheus package, which `make deps` installs) after traffic through
# routes with a breaker, a rate limiter, a bulkhead, retries and fallbacks.
# promtool does not check that histogram buckets are cumulative and end at
# le="+Inf" with the _count, nor that no series appears twice, so a Python
# checker below does, and it also reads the values the traffic must have
# produced (the breaker open, 429s counted, fallbacks by reason).
#
#   tests/scripts/test_promtool.sh [BUILD]    (default: build)
#
# Starts BUILD/test-upstream and BUILD/workshop-gateway on 127.0.0.1 with
# ports the kernel picks, and stops both by PID on exit.
set -u
cd "$(dirname "$0")/../.."

build=${1:-build}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/wk-promtool-XXXXXX")
pids=()

cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [ "$status" -eq 0 ]; then
        rm -rf "$tmp"
    else
        echo "test_promtool: kept logs and the scrape in $tmp" >&2
    fi
}
trap cleanup EXIT

fail() {
    echo "test_promtool: $*" >&2
    exit 1
}

for tool in promtool curl python3; do
    command -v "$tool" >/dev/null || fail "$tool not found; run 'make deps'"
done
for bin in test-upstream workshop-gateway; do
    [ -x "$build/$bin" ] || fail "$build/$bin missing; run 'make'"
done

# wait_for_line PID FILE REGEX: waits up to 30 s for a line of FILE (the
# log of process PID) to match. Fails at once if the process exits.
wait_for_line() {
    for _ in $(seq 600); do
        grep -qE "$3" "$2" 2>/dev/null && return 0
        if ! kill -0 "$1" 2>/dev/null; then
            cat "$2" >&2
            fail "process $1 exited before logging '$3'"
        fi
        sleep 0.05
    done
    cat "$2" >&2
    fail "no line matching '$3' in $2 after 30 s"
}

"$build/test-upstream" >"$tmp/upstream.log" 2>&1 &
pids+=($!)
wait_for_line "$!" "$tmp/upstream.log" '^port=[0-9]+$'
up=$(sed -n 's/^port=\([0-9]*\)$/\1/p' "$tmp/upstream.log" | head -n 1)

cat >"$tmp/gateway.json" <<EOF
{
  "listen": "127.0.0.1:0",
  "admin": { "listen": "127.0.0.1:0" },
  "routes": [
    { "name": "flaky", "match": { "prefix": "/flaky" },
      "upstream": { "url": "http://127.0.0.1:$up" },
      "breaker": { "trip": "consecutive_failures", "consecutive_failures": 3,
                   "open_ms": 60000 },
      "fallback": { "on": ["breaker_open"], "status": 503, "body": "open" } },
    { "name": "limited", "match": { "prefix": "/limited" },
      "upstream": { "url": "http://127.0.0.1:$up" },
      "rate_limit": { "rate": 0.01, "burst": 2 } },
    { "name": "keyed", "match": { "prefix": "/keyed" },
      "upstream": { "url": "http://127.0.0.1:$up" },
      "rate_limit": { "rate": 0.01, "burst": 1, "key": "client_ip" } },
    { "name": "bulk", "match": { "prefix": "/bulk" },
      "upstream": { "url": "http://127.0.0.1:$up" },
      "bulkhead": { "max_concurrent": 1 },
      "fallback": { "on": ["bulkhead_full"], "status": 503, "body": "busy" } },
    { "name": "retried", "match": { "prefix": "/retried" },
      "upstream": { "url": "http://127.0.0.1:$up" },
      "retry": { "attempts": 3, "on": ["5xx"], "backoff_ms": 1,
                 "max_backoff_ms": 5 },
      "fallback": { "on": ["status_5xx"], "status": 200, "body": "cached" } }
  ]
}
EOF
"$build/workshop-gateway" --config "$tmp/gateway.json" >"$tmp/gateway.log" 2>&1 &
pids+=($!)
wait_for_line "$!" "$tmp/gateway.log" 'ready traffic=[0-9.]+:[0-9]+ admin=[0-9.]+:[0-9]+'
traffic=$(sed -n 's/.*ready traffic=[0-9.]*:\([0-9]*\) .*/\1/p' "$tmp/gateway.log")
admin=$(sed -n 's/.* admin=[0-9.]*:\([0-9]*\) .*/\1/p' "$tmp/gateway.log")

get() {
    curl -s --noproxy '*' --max-time 10 -o /dev/null -w '%{http_code}' \
        "http://127.0.0.1:$traffic$1"
}

for _ in 1 2 3 4 5; do get '/flaky?status=503' >/dev/null; done
for _ in 1 2 3 4; do get /limited >/dev/null; done
for _ in 1 2; do get /keyed >/dev/null; done
get '/retried?status=503' >/dev/null
get /nowhere >/dev/null
# Two at once on a bulkhead of one: the second is rejected while the
# first waits on the upstream.
get '/bulk?delay_ms=1000' >/dev/null &
slow=$!
for _ in $(seq 100); do
    [ "$(get /bulk)" = 503 ] && break
    sleep 0.02
done
wait "$slow"

curl -s --noproxy '*' --max-time 10 -D "$tmp/headers" \
    "http://127.0.0.1:$admin/metrics" >"$tmp/metrics.txt" ||
    fail "GET /metrics failed"
grep -qi '^content-type: text/plain; version=0.0.4; charset=utf-8' \
    "$tmp/headers" || fail "wrong Content-Type: $(grep -i content-type "$tmp/headers")"

if ! promtool check metrics <"$tmp/metrics.txt" >"$tmp/promtool.out" 2>&1; then
    cat "$tmp/promtool.out" >&2
    fail "promtool check metrics failed (exit 1: parse error, 3: lint findings)"
fi

curl -s --noproxy '*' --max-time 10 "http://127.0.0.1:$admin/metrics?format=json" \
    >"$tmp/metrics.json" || fail "GET /metrics?format=json failed"

python3 - "$tmp/metrics.txt" "$tmp/metrics.json" <<'PYTHON' || fail "exposition checks failed"
import json
import math
import re
import sys

text = open(sys.argv[1], encoding="utf-8").read()
errors = []
help_seen, types, series, values = set(), {}, set(), {}
histograms = {}  # (family, labels without le) -> list of (le, count)
counts = {}      # (family, labels) -> _count value
sample_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
last_family = None

def family_of(name):
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and types.get(base) == "histogram":
            return base
    return None

for line in text.splitlines():
    if line.startswith("# HELP "):
        help_seen.add(line.split()[2])
        continue
    if line.startswith("# TYPE "):
        _, _, name, kind = line.split()
        if name not in help_seen:
            errors.append(f"{name}: TYPE without HELP")
        if name in types:
            errors.append(f"{name}: family appears twice")
        types[name] = kind
        last_family = name
        continue
    m = sample_re.match(line)
    if not m:
        errors.append(f"unparsable line: {line}")
        continue
    name, labels_text, value = m.group(1), m.group(3) or "", float(m.group(4))
    labels = dict((k, v) for k, v, _ in label_re.findall(labels_text))
    key = (name, tuple(sorted(labels.items())))
    if key in series:
        errors.append(f"duplicate series: {line}")
    series.add(key)
    values[key] = value
    family = family_of(name)
    if family is None or family != last_family:
        errors.append(f"{name}: outside its family's block")
        continue
    if types[family] == "histogram":
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        if name.endswith("_bucket"):
            le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            histograms.setdefault((family, rest), []).append((le, value))
        elif name.endswith("_count"):
            counts[(family, rest)] = value

for key, buckets in histograms.items():
    les = [le for le, _ in buckets]
    if les != sorted(les):
        errors.append(f"{key}: le values out of order")
    if not les or les[-1] != math.inf:
        errors.append(f"{key}: no le=\"+Inf\" bucket")
    cumulative = [c for _, c in buckets]
    if any(b < a for a, b in zip(cumulative, cumulative[1:])):
        errors.append(f"{key}: buckets not cumulative")
    if counts.get(key) != cumulative[-1]:
        errors.append(f"{key}: _count {counts.get(key)} != +Inf {cumulative[-1]}")
if len(counts) != len(histograms):
    errors.append("a histogram has a _count but no buckets")

def value(name, **labels):
    return values.get((name, tuple(sorted(labels.items()))))

expected = [
    ("the breaker of flaky is open", value("workshop_breaker_state", route="flaky"), 1),
    ("the breaker opened once", value("workshop_breaker_transitions_total", route="flaky", to="open"), 1),
    ("the open breaker rejected the last calls", value("workshop_fallbacks_total", route="flaky", reason="breaker_open"), 2),
    ("limited answered 429 twice", value("workshop_requests_total", route="limited", code="429"), 2),
    ("limited counted its rejections", value("workshop_ratelimit_rejections_total", route="limited"), 2),
    ("keyed tracks one client", value("workshop_ratelimit_keys", route="keyed"), 1),
    ("the bulkhead rejected at least once", (value("workshop_bulkhead_rejections_total", route="bulk") or 0) >= 1, True),
    ("retried retried twice", value("workshop_retries_total", route="retried"), 2),
    ("retried served its fallback", value("workshop_fallbacks_total", route="retried", reason="status_5xx"), 1),
    ("the unmatched request counted", value("workshop_requests_total", route="(none)", code="404"), 1),
    ("build info", value("workshop_build_info", version=re.search(r'version="([^"]*)"', text).group(1)), 1),
]
for what, got, want in expected:
    if got != want:
        errors.append(f"{what}: got {got}, expected {want}")

view = json.load(open(sys.argv[2], encoding="utf-8"))
flaky = [r for r in view["routes"] if r["name"] == "flaky"][0]
if flaky["breaker"]["state"] != "open" or len(flaky["breaker"]["buckets"]) != 10:
    errors.append(f"JSON view of flaky's breaker: {flaky['breaker']}")

for e in errors:
    print("  " + e, file=sys.stderr)
print(f"{len(series)} series in {len(types)} families, "
      f"{len(histograms)} histograms checked, {len(errors)} errors")
sys.exit(1 if errors else 0)
PYTHON

echo "test_promtool: promtool and the exposition checks passed"
