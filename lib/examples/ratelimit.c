/*
 * The rate limit example of the Go library, in C: a rate limiter middleware
 * of 6 calls a second with bursts of 6 (like NewRateMiddle(6, 6)), guarding
 * promises run on a pool of 4 threads.
 *
 * Seven promises start at the same instant: six run, the seventh fails with
 * WK_ERR_RATE_LIMITED, and the limiter reports the next token in 1/6 s,
 * a Retry-After of 1 second. After that sixth of a second one more call
 * gets through. The promises read a manual clock, so the run does not
 * depend on how fast this machine is. The program exits with status 1 when
 * any of these outcomes differs.
 */
#include <stdio.h>

#include "workshop/clock.h"
#include "workshop/error.h"
#include "workshop/pool.h"
#include "workshop/promise.h"
#include "workshop/ratelimit.h"

static int
work(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
     struct wk_value *out)
{
    (void)ctx;
    (void)arg;
    (void)last;
    (void)out;
    return WK_OK;
}

/* Runs one promise through mw on pool and returns its error. */
static int
run_promise(struct wk_pool *pool, const struct wk_clock *clock,
            const struct wk_middleware *mw)
{
    struct wk_promise_opts opts = {
        .pool = pool,
        .clock = clock,
        .key = "1", /* the Go example's EventKey */
        .middlewares = mw,
        .middleware_count = 1,
    };
    struct wk_step step = {.run = work};
    struct wk_promise *p = wk_promise_new(&opts, &step);

    if (p == NULL)
        return WK_ERR_NOMEM;

    int err = wk_promise_start(p);

    if (err == WK_OK)
        err = wk_promise_wait(p, WK_TIME_NEVER);
    wk_promise_free(&p);
    return err;
}

int
main(void)
{
    struct wk_ratelimit_config config = WK_RATELIMIT_CONFIG_INIT;
    struct wk_ratelimit *limiter = NULL;
    struct wk_manual_clock clock;
    struct wk_pool *pool = wk_pool_new(4, 64);
    int admitted = 0, limited = 0, other = 0;

    config.rate = 6;
    config.burst = 6;
    wk_manual_clock_init(&clock, WK_SEC(1));
    if (pool == NULL || wk_ratelimit_new(&config, &limiter) != WK_OK) {
        fprintf(stderr, "rate limit example: setup failed\n");
        return 1;
    }

    struct wk_middleware mw = wk_ratelimit_middleware(limiter);

    for (int i = 0; i < 7; i++) {
        int err = run_promise(pool, &clock.clock, &mw);

        if (err == WK_OK)
            admitted++;
        else if (err == WK_ERR_RATE_LIMITED)
            limited++;
        else
            other++;
    }
    if (limited > 0)
        printf("rate limit occurred: %d of 7 calls\n", limited);

    /* A rejected take returns the wait, for a Retry-After header. */
    wk_time now = wk_clock_now(&clock.clock);
    wk_duration wait = 0;
    int err = wk_ratelimit_take(limiter, NULL, now, &wait);
    int wrong = admitted != 6 || limited != 1 || other != 0 ||
                err != WK_ERR_RATE_LIMITED || wait < WK_MSEC(166) ||
                wait > WK_MSEC(167) || wk_retry_after_seconds(wait) != 1;

    printf("next token in %lld ns, Retry-After: %lld\n", (long long)wait,
           (long long)wk_retry_after_seconds(wait));

    wk_manual_clock_advance(&clock, wait);
    if (run_promise(pool, &clock.clock, &mw) != WK_OK)
        wrong = 1;
    if (wrong)
        fprintf(stderr,
                "rate limit example: %d admitted, %d limited, %d other, "
                "wait %lld ns; expected 6, 1, 0 and a sixth of a second\n",
                admitted, limited, other, (long long)wait);

    wk_pool_destroy(&pool);
    wk_ratelimit_destroy(&limiter);
    return wrong ? 1 : 0;
}
