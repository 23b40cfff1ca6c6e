#!/usr/bin/env bash
# Runs the test binaries of one or more builds and prints one summary line,
# "N passed, N failed", for CI to read. Exits non-zero on any failure.
#
#   tests/run-tests.sh --build DIR --unit|--integration|--examples|--scripts
#   tests/run-tests.sh --build DIR --all
#
# --all runs the plain build's suites, then rebuilds with AddressSanitizer and
# ThreadSanitizer and runs the suites under them, then the integration tests
# under valgrind memcheck.
set -u
cd "$(dirname "$0")/.."

build=build
what=()
while [ $# -gt 0 ]; do
    case "$1" in
    --build) build=$2; shift 2 ;;
    --unit | --integration | --examples | --scripts | --all) what+=("${1#--}"); shift ;;
    *) echo "run-tests.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

passed=0
failed=0
failures=()
logdir=build/test-logs
mkdir -p "$logdir"

# run NAME COMMAND...: runs one test, logs its output, counts the result.
run() {
    local name=$1; shift
    local log="$logdir/$(echo "$name" | tr '/ ' '__').log"
    local start=$SECONDS
    if "$@" >"$log" 2>&1; then
        passed=$((passed + 1))
        printf 'PASS %-50s %3ds\n' "$name" $((SECONDS - start))
    else
        failed=$((failed + 1))
        failures+=("$name")
        printf 'FAIL %-50s %3ds (log: %s)\n' "$name" $((SECONDS - start)) "$log"
        tail -n 40 "$log" | sed 's/^/    /'
    fi
}

run_unit() {
    local dir=$1 label=$2
    for t in "$dir"/tests/test_*; do
        [ -x "$t" ] || continue
        run "$label unit/$(basename "$t")" "$t"
    done
}

run_examples() {
    local dir=$1 label=$2
    for t in "$dir"/examples/*; do
        [ -x "$t" ] || continue
        run "$label example/$(basename "$t")" "$t"
    done
}

run_integration() {
    local dir=$1 label=$2
    for t in "$dir"/tests/itest_*; do
        [ -x "$t" ] || continue
        run "$label integration/$(basename "$t")" env WK_BUILD="$dir" "$t"
    done
}

# Shell-driven tests (install, promtool, ...): tests/scripts/test_*.sh BUILD.
run_scripts() {
    local dir=$1 label=$2
    for t in tests/scripts/test_*.sh; do
        [ -f "$t" ] || continue
        run "$label script/$(basename "$t" .sh)" bash "$t" "$dir"
    done
}

run_valgrind() {
    local dir=$1
    local vg="valgrind --quiet --error-exitcode=99 --leak-check=full"
    vg="$vg --errors-for-leak-kinds=definite --show-leak-kinds=definite"
    vg="$vg --track-fds=no --child-silent-after-fork=yes"
    for t in "$dir"/tests/itest_*; do
        [ -x "$t" ] || continue
        # The harness runs the gateway under this wrapper and fails the test
        # when valgrind reports an error (exit 99).
        run "valgrind integration/$(basename "$t")" \
            env WK_BUILD="$dir" WK_VALGRIND=1 WK_GATEWAY_WRAPPER="$vg" "$t"
    done
}

# Builds everything with clang as well, so its warnings count too.
clang_build() {
    if ! make --no-print-directory -s test-clang >"$logdir/build-clang.log" 2>&1; then
        failed=$((failed + 1))
        failures+=("build CC=clang")
        echo "FAIL build CC=clang (log: $logdir/build-clang.log)"
        tail -n 40 "$logdir/build-clang.log"
        return 1
    fi
    passed=$((passed + 1))
    echo "PASS build CC=clang"
}

sanitizer_build() {
    local san=$1
    if ! make --no-print-directory -s SANITIZER="$san" all tests >"$logdir/build-$san.log" 2>&1; then
        failed=$((failed + 1))
        failures+=("build SANITIZER=$san")
        echo "FAIL build SANITIZER=$san (log: $logdir/build-$san.log)"
        tail -n 40 "$logdir/build-$san.log"
        return 1
    fi
}

for w in "${what[@]}"; do
    case "$w" in
    unit) run_unit "$build" plain ;;
    examples) run_examples "$build" plain ;;
    integration) run_integration "$build" plain ;;
    scripts) run_scripts "$build" plain ;;
    all)
        clang_build
        run_unit "$build" plain
        run_examples "$build" plain
        run_integration "$build" plain
        run_scripts "$build" plain
        if sanitizer_build address; then
            export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
            export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
            run_unit build/asan asan
            run_examples build/asan asan
            run_integration build/asan asan
        fi
        if sanitizer_build thread; then
            export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
            run_unit build/tsan tsan
            run_examples build/tsan tsan
            run_integration build/tsan tsan
        fi
        run_valgrind "$build"
        ;;
    esac
done

echo
if [ "$failed" -gt 0 ]; then
    echo "failed tests:"
    printf '  %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
