/*
 * The retry example of the Go library, in C: a step followed by
 * recover_and_retry, whose recovery passes the last value on unchanged.
 *
 * Here the step calls a remote system that fails its first call, so the
 * retry has work to do: the recovery runs once and the second attempt
 * succeeds. A second promise calls a remote system that always fails and
 * shows that attempts are bounded: 3 runs, 2 recoveries, then the chain
 * fails with the step's error. The program exits with status 1 when an
 * outcome differs.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "workshop/error.h"
#include "workshop/pool.h"
#include "workshop/promise.h"

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "retry example: check failed: %s\n", #cond);       \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

/*
 * The Go example waits 100 ms; a second leaves room for slow sanitizer
 * builds without changing what the example shows.
 */
#define GET_TIMEOUT WK_SEC(1)

/* A stand-in for a remote system that fails its first `failures` calls. */
struct remote {
    atomic_int calls;
    atomic_int recoveries;
    int failures;
};

static int
call_remote(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
            struct wk_value *out)
{
    struct remote *r = arg;
    int call = atomic_fetch_add(&r->calls, 1) + 1;

    (void)ctx;
    (void)last;
    printf("do task one: call %d\n", call);
    if (call <= r->failures)
        return WK_ERR_UPSTREAM;
    static char reply[] = "reply";

    *out = (struct wk_value){.ptr = reply};
    return WK_OK;
}

/* Recovers by passing `last` on unchanged, as `return last, nil` in Go. */
static int
try_recover(struct wk_ctx *ctx, void *arg, int err, const struct wk_value *last,
            struct wk_value *out)
{
    struct remote *r = arg;

    (void)ctx;
    printf("try recover from \"%s\"\n", wk_strerror(err));
    atomic_fetch_add(&r->recoveries, 1);
    *out = *last;
    return WK_OK;
}

/* Runs one promise against r with up to 3 attempts; returns its error. */
static int
run(struct wk_pool *pool, struct remote *r, const char **reply)
{
    struct wk_promise_opts opts = {.pool = pool};
    struct wk_step task = {.run = call_remote, .arg = r};
    struct wk_promise *p = wk_promise_new(&opts, &task);

    CHECK(p != NULL);
    CHECK(wk_promise_recover_and_retry(p, try_recover, r, 3) == WK_OK);
    CHECK(wk_promise_start(p) == WK_OK);

    const struct wk_value *value = NULL;
    int err = wk_promise_get(p, wk_clock_now(NULL) + GET_TIMEOUT, &value);

    *reply = err == WK_OK ? value->ptr : NULL;
    wk_promise_free(&p);
    return err;
}

int
main(void)
{
    struct wk_pool *pool = wk_pool_new(3, 16);
    const char *reply = NULL;

    CHECK(pool != NULL);

    struct remote flaky = {.failures = 1};
    int err = run(pool, &flaky, &reply);

    printf("flaky remote: %s after %d calls\n", wk_strerror(err),
           atomic_load(&flaky.calls));
    CHECK(err == WK_OK);
    CHECK(atomic_load(&flaky.calls) == 2);
    CHECK(atomic_load(&flaky.recoveries) == 1);

    struct remote down = {.failures = 1000};

    err = run(pool, &down, &reply);
    printf("remote down: %s after %d calls\n", wk_strerror(err),
           atomic_load(&down.calls));
    CHECK(err == WK_ERR_UPSTREAM);
    CHECK(reply == NULL);
    CHECK(atomic_load(&down.calls) == 3);
    CHECK(atomic_load(&down.recoveries) == 2);

    wk_pool_destroy(&pool);
    return 0;
}
