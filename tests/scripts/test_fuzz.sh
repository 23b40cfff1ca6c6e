#!/usr/bin/env bash
# Fuzzing for `make test`: builds the libFuzzer targets into build/fuzz and
# runs each for 30 s from its seed corpus. A crash, a sanitizer report or a
# broken check fails the test and leaves the input under
# build/fuzz/artifacts/. $1, the build folder of the test run, is not used:
# the fuzz targets have their own build.
set -u
cd "$(dirname "$0")/../.."

if ! make --no-print-directory -s fuzz-build; then
    echo "test_fuzz: cannot build the fuzz targets (clang with libFuzzer," \
        "Debian packages clang and libclang-rt-14-dev)" >&2
    exit 1
fi
exec tests/fuzz/run-fuzz.sh --build build/fuzz --seconds 30
