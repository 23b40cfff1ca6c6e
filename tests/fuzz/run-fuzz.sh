#!/usr/bin/env bash
# Runs each libFuzzer target for N seconds from its seed corpus.
#
#   tests/fuzz/run-fuzz.sh [--build DIR] [--seconds N] [TARGET...]
#
# DIR (default build/fuzz) contains the targets (`make fuzz-build`); TARGET
# defaults to every target, fuzz_config and fuzz_request. The seeds in
# tests/fuzz/corpus/KIND/ are only read; new inputs that reach new code go
# to DIR/corpus/KIND/, so later runs start from them. A crash, a sanitizer
# report, a timeout or a broken check stops the target and writes the input
# to DIR/artifacts/TARGET-crash-... (or -timeout-, -leak-, -oom-), and the
# script exits 1. To replay one:  DIR/TARGET DIR/artifacts/FILE
set -u
cd "$(dirname "$0")/../.."

build=build/fuzz
seconds=60
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
    --build) build=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    -*) echo "run-fuzz.sh: unknown option '$1'; see the header of $0" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
    esac
done
[ "${#targets[@]}" -gt 0 ] || targets=(fuzz_config fuzz_request)

export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p "$build/artifacts"
failed=()

for target in "${targets[@]}"; do
    kind=${target#fuzz_}
    bin=$build/$target
    seeds=tests/fuzz/corpus/$kind
    corpus=$build/corpus/$kind
    log=$build/$target.log
    if [ ! -x "$bin" ] || [ ! -d "$seeds" ]; then
        echo "run-fuzz.sh: $bin or $seeds is missing; run 'make fuzz-build'" >&2
        failed+=("$target")
        continue
    fi
    mkdir -p "$corpus"
    args=(-max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048
        -max_len=8192 -print_final_stats=1
        -artifact_prefix="$build/artifacts/$target-")
    [ -f "tests/fuzz/$kind.dict" ] && args+=(-dict="tests/fuzz/$kind.dict")

    marker=$(mktemp)
    echo "run-fuzz.sh: $target for $seconds s (log: $log)"
    # fuzz_request's gateway writes a JSON access log line per request to
    # stderr; the log keeps libFuzzer's lines and any error report. stdin
    # is /dev/null, so a config whose fallback body_file names /dev/stdin
    # cannot block fuzz_config.
    "$bin" "${args[@]}" "$corpus" "$seeds" </dev/null 2>&1 |
        grep -v '^{"time":' >"$log"
    status=${PIPESTATUS[0]}
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    found=$(find "$corpus" -type f | wc -l)
    echo "run-fuzz.sh: $target: exit $status, ${runs:-?} inputs run," \
        "$found in $corpus"
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        tail -n 60 "$log" | sed 's/^/    /'
        find "$build/artifacts" -name "$target-*" -newer "$marker" \
            -exec echo "run-fuzz.sh: reproducer: {}; replay: $bin {}" \;
    fi
    rm -f "$marker"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "run-fuzz.sh: FAIL: ${failed[*]}"
    exit 1
fi
echo "run-fuzz.sh: PASS"
