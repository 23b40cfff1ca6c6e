#!/usr/bin/env bash
# Soak test for `make test`: 20 s of warm-up and then 60 s of chaotic load
# through the AddressSanitizer build of the gateway (build/asan), built
# here first. $1, the build folder of the test run, is not used: the soak
# always runs the ASan build. See tests/soak/soak.sh for what fails it.
set -u
cd "$(dirname "$0")/../.."

if ! make --no-print-directory -s SANITIZER=address soak-build; then
    echo "test_soak: cannot build the ASan gateway and soak-load" >&2
    exit 1
fi
exec tests/soak/soak.sh --build build/asan --seconds 80 --warmup 20
