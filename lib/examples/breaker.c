/*
 * The circuit breaker example of the Go library, in C: a breaker middleware
 * that trips on a failure rate (6 failures a second, bursts of 6, like
 * NewBreakerMiddle(time.Second, 6, 6)), guarding promises run on a pool of
 * 4 threads.
 *
 * A first promise succeeds. Then failing calls drain the failure bucket:
 * the 7th failure within the same instant opens the breaker, and the next
 * promise fails with WK_ERR_BREAKER_OPEN without its step running. Five
 * seconds later one probe call is let through; it succeeds and the breaker
 * closes. The promises read a manual clock, so the run does not depend on
 * how fast this machine is. The program exits with status 1 when any of
 * these outcomes differs.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "workshop/breaker.h"
#include "workshop/clock.h"
#include "workshop/error.h"
#include "workshop/pool.h"
#include "workshop/promise.h"

static atomic_int step_runs;

static int
succeed(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
        struct wk_value *out)
{
    (void)ctx;
    (void)arg;
    (void)last;
    (void)out;
    atomic_fetch_add(&step_runs, 1);
    return WK_OK;
}

static int
fail(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
     struct wk_value *out)
{
    (void)ctx;
    (void)arg;
    (void)last;
    (void)out;
    atomic_fetch_add(&step_runs, 1);
    return WK_ERR_UPSTREAM;
}

static void
log_transition(void *arg, const struct wk_breaker_transition *t)
{
    (void)arg;
    printf("breaker %s: %s -> %s (%s)\n", t->key,
           wk_breaker_state_name(t->from), wk_breaker_state_name(t->to),
           wk_breaker_reason_name(t->reason));
}

/* Runs one promise of step fn through mw on pool and returns its error. */
static int
run_promise(struct wk_pool *pool, const struct wk_clock *clock,
            const struct wk_middleware *mw, wk_step_fn *fn)
{
    struct wk_promise_opts opts = {
        .pool = pool,
        .clock = clock,
        .key = "1", /* the Go example's EventKey */
        .middlewares = mw,
        .middleware_count = 1,
    };
    struct wk_step step = {.run = fn};
    struct wk_promise *p = wk_promise_new(&opts, &step);

    if (p == NULL)
        return WK_ERR_NOMEM;

    int err = wk_promise_start(p);

    if (err == WK_OK)
        err = wk_promise_wait(p, WK_TIME_NEVER);
    wk_promise_free(&p);
    return err;
}

static int
expect(const char *what, int got, int want)
{
    if (got == want)
        return 0;
    fprintf(stderr, "breaker example: %s: got %s, expected %s\n", what,
            wk_strerror(got), wk_strerror(want));
    return 1;
}

int
main(void)
{
    struct wk_breaker_config config = WK_BREAKER_CONFIG_INIT;
    struct wk_manual_clock clock;
    struct wk_breaker *breaker = NULL;
    struct wk_pool *pool = wk_pool_new(4, 64);
    int wrong = 0;

    config.name = "example";
    config.trip = WK_BREAKER_TRIP_FAILURE_RATE;
    config.failures_per_second = 6;
    config.burst = 6;
    config.on_transition = log_transition;
    wk_manual_clock_init(&clock, WK_SEC(1));
    if (pool == NULL || wk_breaker_new(&config, &breaker) != WK_OK) {
        fprintf(stderr, "breaker example: setup failed\n");
        return 1;
    }

    struct wk_middleware mw = wk_breaker_middleware(breaker);

    wrong |= expect("a working call",
                    run_promise(pool, &clock.clock, &mw, succeed), WK_OK);
    for (int i = 1; i <= 7; i++)
        wrong |=
            expect("a failing call", run_promise(pool, &clock.clock, &mw, fail),
                   WK_ERR_UPSTREAM);

    int runs = atomic_load(&step_runs);
    int err = run_promise(pool, &clock.clock, &mw, succeed);

    if (err == WK_ERR_BREAKER_OPEN)
        printf("breaker open\n");
    wrong |= expect("a call while open", err, WK_ERR_BREAKER_OPEN);
    if (atomic_load(&step_runs) != runs) {
        fprintf(stderr, "breaker example: a rejected step ran\n");
        wrong = 1;
    }

    wk_manual_clock_advance(&clock, WK_MSEC(config.open_ms));
    wrong |= expect("the probe call",
                    run_promise(pool, &clock.clock, &mw, succeed), WK_OK);

    struct wk_breaker_snapshot snap;

    wk_breaker_snapshot(breaker, wk_clock_now(&clock.clock), &snap);
    if (snap.state != WK_BREAKER_CLOSED) {
        fprintf(stderr, "breaker example: the breaker is %s after the probe\n",
                wk_breaker_state_name(snap.state));
        wrong = 1;
    }

    wk_pool_destroy(&pool);
    wk_breaker_destroy(&breaker);
    return wrong ? 1 : 0;
}
