/*
 * The promise example of the Go library, in C: one step on a pool of 3
 * threads, read with get() and a deadline, then freed (which closes a
 * promise that has not settled).
 *
 * A second promise shows what closing does. Its step runs until its context
 * is cancelled, so get() times out first. wk_promise_close() then cancels
 * the step's context, the step stops, and the promise settles with
 * WK_ERR_CANCELLED. The program exits with status 1 when an outcome differs.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "workshop/error.h"
#include "workshop/pool.h"
#include "workshop/promise.h"

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "promise example: check failed: %s\n", #cond);     \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

static bool yes = true;

static int
do_task(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
        struct wk_value *out)
{
    (void)ctx;
    (void)arg;
    (void)last;
    /* A static value: nothing to free. */
    *out = (struct wk_value){.ptr = &yes};
    return WK_OK;
}

/* Works until the promise is closed, checking its context every 1 ms. */
static int
work_until_cancelled(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
                     struct wk_value *out)
{
    const struct timespec tick = {.tv_nsec = 1000 * 1000};

    (void)arg;
    (void)last;
    (void)out;
    while (!wk_ctx_cancelled(ctx))
        nanosleep(&tick, NULL);
    return wk_ctx_err(ctx);
}

/*
 * The Go example waits 100 ms; a second leaves room for slow sanitizer
 * builds without changing what the example shows.
 */
static wk_time
in_a_second(void)
{
    return wk_clock_now(NULL) + WK_SEC(1);
}

static wk_time
in_100ms(void)
{
    return wk_clock_now(NULL) + WK_MSEC(100);
}

int
main(void)
{
    struct wk_pool *pool = wk_pool_new(3, 16);

    CHECK(pool != NULL);

    struct wk_promise_opts opts = {.pool = pool};
    struct wk_step task = {.run = do_task};
    struct wk_promise *p = wk_promise_new(&opts, &task);
    const struct wk_value *value = NULL;

    CHECK(p != NULL);
    CHECK(wk_promise_start(p) == WK_OK);

    int err = wk_promise_get(p, in_a_second(), &value);

    printf("get: %s, value %s\n", wk_strerror(err),
           err == WK_OK && *(bool *)value->ptr ? "true" : "-");
    CHECK(err == WK_OK);
    CHECK(*(bool *)value->ptr);
    wk_promise_free(&p);

    struct wk_step slow = {.run = work_until_cancelled};

    p = wk_promise_new(&opts, &slow);
    CHECK(p != NULL);
    CHECK(wk_promise_start(p) == WK_OK);
    err = wk_promise_get(p, in_100ms(), NULL);
    printf("get on a step that never ends: %s\n", wk_strerror(err));
    CHECK(err == WK_ERR_TIMED_OUT);

    wk_promise_close(p);
    err = wk_promise_wait(p, WK_TIME_NEVER);
    printf("after close: %s\n", wk_strerror(err));
    CHECK(err == WK_ERR_CANCELLED);
    wk_promise_free(&p);

    /* Waits for the cancelled step to return, then stops the threads. */
    wk_pool_destroy(&pool);
    return 0;
}
