#!/usr/bin/env bash
# Installs libworkshop into a temporary root with `make install` and checks
# that a program builds against the installed copy through pkg-config, and
# runs.
#
#   tests/scripts/test_install.sh BUILD_DIR
#
# BUILD_DIR is the build folder (build, build/asan, build/tsan, ...); a
# sanitizer build's library is linked with the same sanitizer. Each public
# header is also compiled on its own. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

build=${1:?usage: test_install.sh BUILD_DIR}
cc=${CC:-cc}
san_make=()
san_flags=()
case "$build" in
*asan*)
    san_make=(SANITIZER=address)
    san_flags=("-fsanitize=address,undefined")
    ;;
*tsan*)
    san_make=(SANITIZER=thread)
    san_flags=(-fsanitize=thread)
    ;;
esac

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

fail() {
    echo "test_install: $*" >&2
    exit 1
}

make --no-print-directory -s "${san_make[@]}" B="$build" PREFIX=/usr \
    DESTDIR="$root" install || fail "make install into $root failed"

for f in usr/lib/libworkshop.a usr/lib/pkgconfig/libworkshop.pc \
    usr/include/workshop/promise.h; do
    [ -f "$root/$f" ] || fail "missing after install: /$f"
done

# The .pc in the build folder keeps the PREFIX it was generated with, and
# that may differ from the one given to install. Point it at /usr, where the
# files went.
pc="$root/usr/lib/pkgconfig/libworkshop.pc"
if ! grep -qx 'prefix=/usr' "$pc"; then
    echo "test_install: note: installed .pc has '$(grep '^prefix=' "$pc")'," \
        "not prefix=/usr; rewriting it" >&2
    sed -i 's|^prefix=.*|prefix=/usr|' "$pc"
fi

# Look only at the temporary root, and keep the /usr paths that pkg-config
# would otherwise drop as system directories before adding the root.
export PKG_CONFIG_LIBDIR="$root/usr/lib/pkgconfig"
export PKG_CONFIG_PATH=
export PKG_CONFIG_SYSROOT_DIR="$root"
export PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1
export PKG_CONFIG_ALLOW_SYSTEM_LIBS=1

cflags=$(pkg-config --cflags libworkshop) || fail "pkg-config --cflags failed"
libs=$(pkg-config --libs libworkshop) || fail "pkg-config --libs failed"
case "$cflags" in
*"$root"*) ;;
*) fail "pkg-config cflags '$cflags' do not point into $root" ;;
esac

# Every installed header compiles on its own.
for h in "$root"/usr/include/workshop/*.h; do
    name=workshop/$(basename "$h")
    # shellcheck disable=SC2086
    echo "#include <$name>" | "$cc" -std=c11 -Wall -Wextra -Werror $cflags \
        -fsyntax-only -x c - || fail "$name does not compile on its own"
done

cat >"$root/prog.c" <<'PROG'
#include <stdio.h>

#include <workshop/error.h>
#include <workshop/pool.h>
#include <workshop/promise.h>

static int
answer(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
       struct wk_value *out)
{
    static int value = 42;

    (void)ctx;
    (void)arg;
    (void)last;
    *out = (struct wk_value){.ptr = &value};
    return WK_OK;
}

int
main(void)
{
    struct wk_pool *pool = wk_pool_new(2, 8);
    struct wk_promise_opts opts = {.pool = pool};
    struct wk_step step = {.run = answer};
    struct wk_promise *p = wk_promise_new(&opts, &step);
    const struct wk_value *v = NULL;

    if (pool == NULL || p == NULL || wk_promise_start(p) != WK_OK)
        return 1;
    int err = wk_promise_get(p, WK_TIME_NEVER, &v);

    if (err != WK_OK || *(int *)v->ptr != 42) {
        fprintf(stderr, "prog: %s\n", wk_strerror(err));
        return 1;
    }
    wk_promise_free(&p);
    wk_pool_destroy(&pool);
    puts("installed libworkshop works");
    return 0;
}
PROG

# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -Werror "${san_flags[@]}" $cflags \
    -o "$root/prog" "$root/prog.c" $libs ||
    fail "build against the install failed"
"$root/prog" || fail "the program built against the install failed"
