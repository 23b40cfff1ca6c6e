/*
 * Cost of the promise machinery and throughput of the pool.
 *
 *   build/bench/bench_promise [scale]
 *
 * scale (default 1) multiplies every iteration count; 0.1 gives a quick
 * run. Each row runs three times and prints the fastest, in nanoseconds per
 * operation on the monotonic clock, with the operations it counted.
 *
 * Rows:
 *   - promise, sync inline: new, one synchronous step without a pool,
 *     start (which runs it and settles), free;
 *   - promise, async settled inline: one asynchronous step that settles
 *     inside run_async();
 *   - promise, async settled after start: the step keeps its handle and the
 *     bench settles it once wk_promise_start() has returned, as an event
 *     loop would (the gateway's path, less the hop to another thread);
 *   - middleware before/after pair: the extra cost per no-op middleware,
 *     from promises with 4 middlewares against promises with none;
 *   - pool task, N threads: submit from one thread until the queue is full,
 *     then drain; per task, submit and run included;
 *   - promise on pool, 2 threads: a synchronous step handed to the pool,
 *     waited for with wk_promise_wait().
 */
#include <stdio.h>
#include <stdlib.h>

#include "workshop/clock.h"
#include "workshop/error.h"
#include "workshop/pool.h"
#include "workshop/promise.h"

#define REPEATS 3

static double scale = 1.0;

static long
iterations(long base)
{
    long n = (long)((double)base * scale);

    return n > 0 ? n : 1;
}

static void
die(const char *what)
{
    fprintf(stderr, "bench_promise: %s failed\n", what);
    exit(1);
}

/* --- steps -------------------------------------------------------------- */

static int
sync_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
          struct wk_value *out)
{
    (void)ctx;
    (void)arg;
    (void)last;
    (void)out;
    return WK_OK;
}

static void
async_inline(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
             struct wk_settle *settle)
{
    (void)ctx;
    (void)arg;
    (void)last;
    wk_settle(settle, WK_OK, (struct wk_value){0});
}

static void
async_park(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
           struct wk_settle *settle)
{
    (void)ctx;
    (void)last;
    *(struct wk_settle **)arg = settle;
}

static int
noop_before(void *self, const char *key, wk_time now, void **token)
{
    (void)self;
    (void)key;
    (void)now;
    (void)token;
    return WK_OK;
}

static void
noop_after(void *self, const char *key, void *token, int err,
           wk_duration latency, wk_time now)
{
    (void)self;
    (void)key;
    (void)token;
    (void)err;
    (void)latency;
    (void)now;
}

static const struct wk_middleware_ops noop_ops = {
    .name = "noop",
    .before = noop_before,
    .after = noop_after,
};

static const struct wk_middleware noop_mws[4] = {
    {&noop_ops, NULL}, {&noop_ops, NULL}, {&noop_ops, NULL}, {&noop_ops, NULL}};

/* --- promise rows --------------------------------------------------------- */

struct promise_run {
    const struct wk_step *step;
    const struct wk_promise_opts *opts;
    struct wk_settle **parked; /* settle after start when not NULL */
};

static void
run_promises(const struct promise_run *r, long n)
{
    for (long i = 0; i < n; i++) {
        struct wk_promise *p = wk_promise_new(r->opts, r->step);

        if (p == NULL)
            die("wk_promise_new");
        if (wk_promise_start(p) != WK_OK)
            die("wk_promise_start");
        if (r->parked != NULL)
            wk_settle(*r->parked, WK_OK, (struct wk_value){0});
        wk_promise_free(&p);
    }
}

/* Returns the fastest of REPEATS runs of n promises, in ns per promise. */
static double
time_promises(const struct promise_run *r, long n)
{
    double best = 0;

    for (int rep = 0; rep < REPEATS; rep++) {
        wk_time start = wk_clock_now(NULL);

        run_promises(r, n);

        double ns = (double)(wk_clock_now(NULL) - start) / (double)n;

        if (rep == 0 || ns < best)
            best = ns;
    }
    return best;
}

static void
print_row(const char *name, long ops, double ns)
{
    printf("%-44s %10ld %10.1f\n", name, ops, ns);
}

static void
promise_rows(void)
{
    long n = iterations(1000000);
    struct wk_settle *parked = NULL;
    struct wk_step sync = {.run = sync_step};
    struct wk_step inline_async = {.run_async = async_inline};
    struct wk_step park = {.run_async = async_park, .arg = &parked};
    struct wk_promise_opts plain = {.key = "route"};
    struct wk_promise_opts with_mws = {
        .key = "route", .middlewares = noop_mws, .middleware_count = 4};

    print_row("promise, sync inline", n,
              time_promises(&(struct promise_run){&sync, &plain, NULL}, n));
    print_row(
        "promise, async settled inline", n,
        time_promises(&(struct promise_run){&inline_async, &plain, NULL}, n));
    print_row("promise, async settled after start", n,
              time_promises(&(struct promise_run){&park, &plain, &parked}, n));

    double without =
        time_promises(&(struct promise_run){&inline_async, &plain, NULL}, n);
    double with =
        time_promises(&(struct promise_run){&inline_async, &with_mws, NULL}, n);

    print_row("middleware before/after pair (of 4)", 4 * n,
              (with - without) / 4);
}

/* --- pool rows ------------------------------------------------------------ */

static void
noop_task(void *arg)
{
    (void)arg;
}

/* Submits n tasks in batches that fit the queue; returns ns per task. */
static double
time_pool(unsigned threads, long n)
{
    const size_t capacity = 65536;
    double best = 0;

    for (int rep = 0; rep < REPEATS; rep++) {
        struct wk_pool *pool = wk_pool_new(threads, capacity);

        if (pool == NULL)
            die("wk_pool_new");

        wk_time start = wk_clock_now(NULL);

        for (long i = 0; i < n;) {
            if (wk_pool_submit(pool, noop_task, NULL, NULL) == WK_OK)
                i++;
        }
        wk_pool_shutdown(pool, WK_POOL_DRAIN);

        double ns = (double)(wk_clock_now(NULL) - start) / (double)n;

        wk_pool_destroy(&pool);
        if (rep == 0 || ns < best)
            best = ns;
    }
    return best;
}

static double
time_promises_on_pool(long n)
{
    struct wk_pool *pool = wk_pool_new(2, 1024);
    struct wk_step sync = {.run = sync_step};
    struct wk_promise_opts opts = {.pool = pool};
    double best = 0;

    if (pool == NULL)
        die("wk_pool_new");
    for (int rep = 0; rep < REPEATS; rep++) {
        wk_time start = wk_clock_now(NULL);

        for (long i = 0; i < n; i++) {
            struct wk_promise *p = wk_promise_new(&opts, &sync);

            if (p == NULL || wk_promise_start(p) != WK_OK)
                die("promise on pool");
            if (wk_promise_wait(p, WK_TIME_NEVER) != WK_OK)
                die("wk_promise_wait");
            wk_promise_free(&p);
        }

        double ns = (double)(wk_clock_now(NULL) - start) / (double)n;

        if (rep == 0 || ns < best)
            best = ns;
    }
    wk_pool_destroy(&pool);
    return best;
}

static void
pool_rows(void)
{
    long n = iterations(1000000);

    print_row("pool task, 1 thread", n, time_pool(1, n));
    print_row("pool task, 2 threads", n, time_pool(2, n));

    long m = iterations(30000);

    print_row("promise on pool, 2 threads, waited", m,
              time_promises_on_pool(m));
}

int
main(int argc, char **argv)
{
    if (argc > 1) {
        char *end = NULL;

        scale = strtod(argv[1], &end);
        if (end == argv[1] || *end != '\0' || !(scale > 0)) {
            fprintf(stderr, "usage: %s [scale > 0]\n", argv[0]);
            return 2;
        }
    }

    printf("%-44s %10s %10s\n", "operation", "ops", "ns/op");
    promise_rows();
    pool_rows();
    return 0;
}
