/*
 * Admission cost of the resilience policies, per call, on one thread and on
 * two threads sharing one route's policies.
 *
 *   build/bench/bench_policies [calls-per-thread]
 *
 * Each row runs the calls on 1 and then 2 threads, three times, and keeps
 * the fastest run. Time is synthetic, with one timeline for all threads. A
 * thread takes a block of 64 calls from a shared atomic, whose time advances
 * 4 us per call. At that rate a limiter of 1e6 tokens a second admits every
 * call, and breaker buckets rotate every 250000 calls. No clock read is
 * counted; the row "clock read" shows that cost on its own. The shared
 * atomic costs every row about one contended fetch-and-add per 64 calls.
 *
 * The "rejected" column must stay 0 for the admission path to be what was
 * measured. A thread that is descheduled long enough to fall 1 s of
 * synthetic time behind gets rejections. The "parallel" column is the
 * threads' CPU time over the wall time: near 2.0 the two threads really ran
 * at once, much lower and the machine was busy with other work, so the
 * two-thread figures say nothing about contention.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "workshop/breaker.h"
#include "workshop/bulkhead.h"
#include "workshop/clock.h"
#include "workshop/error.h"
#include "workshop/ratelimit.h"

#define STEP_NS     4000
#define BLOCK       64
#define REPEATS     3
#define MAX_THREADS 2

struct route {
    struct wk_ratelimit *limiter;
    struct wk_ratelimit *keyed;
    struct wk_breaker *breaker;
    struct wk_bulkhead *bulkhead;
    pthread_mutex_t mu; /* for the one-lock baseline */
    uint64_t guarded;
    _Alignas(64) _Atomic wk_time timeline; /* start of the next free block */
};

/* One call's work; returns 1 when a policy rejected it. */
typedef int call_fn(struct route *r, wk_time now, const char *key);

static int
call_limiter(struct route *r, wk_time now, const char *key)
{
    (void)key;
    return wk_ratelimit_take(r->limiter, NULL, now, NULL) != WK_OK;
}

static int
call_keyed_limiter(struct route *r, wk_time now, const char *key)
{
    return wk_ratelimit_take(r->keyed, key, now, NULL) != WK_OK;
}

static int
call_breaker(struct route *r, wk_time now, const char *key)
{
    struct wk_breaker_permit permit;

    (void)key;
    if (wk_breaker_before(r->breaker, now, &permit) != WK_OK)
        return 1;
    wk_breaker_after(r->breaker, &permit, WK_OK, 1000, now);
    return 0;
}

static int
call_bulkhead(struct route *r, wk_time now, const char *key)
{
    (void)now;
    (void)key;
    if (wk_bulkhead_try_acquire(r->bulkhead) != WK_OK)
        return 1;
    wk_bulkhead_release(r->bulkhead);
    return 0;
}

/* The breaker and bulkhead part of admission, and their afters. */
static int
breaker_and_bulkhead(struct route *r, wk_time now)
{
    struct wk_breaker_permit permit;

    if (wk_breaker_before(r->breaker, now, &permit) != WK_OK)
        return 1;
    if (wk_bulkhead_try_acquire(r->bulkhead) != WK_OK) {
        wk_breaker_after(r->breaker, &permit, WK_ERR_BULKHEAD_FULL, 0, now);
        return 1;
    }
    wk_bulkhead_release(r->bulkhead);
    wk_breaker_after(r->breaker, &permit, WK_OK, 1000, now);
    return 0;
}

/* The gateway's order: limiter, breaker, bulkhead; afters in reverse. */
static int
call_all_three(struct route *r, wk_time now, const char *key)
{
    (void)key;
    if (wk_ratelimit_take(r->limiter, NULL, now, NULL) != WK_OK)
        return 1;
    return breaker_and_bulkhead(r, now);
}

/* As above, with the limiter keyed by client address. */
static int
call_all_three_keyed(struct route *r, wk_time now, const char *key)
{
    if (wk_ratelimit_take(r->keyed, key, now, NULL) != WK_OK)
        return 1;
    return breaker_and_bulkhead(r, now);
}

static int
call_mutex(struct route *r, wk_time now, const char *key)
{
    (void)now;
    (void)key;
    pthread_mutex_lock(&r->mu);
    r->guarded++;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static volatile wk_time clock_sink;

static int
call_clock(struct route *r, wk_time now, const char *key)
{
    (void)r;
    (void)now;
    (void)key;
    clock_sink = wk_clock_now(NULL);
    return 0;
}

struct row {
    const char *name;
    call_fn *fn;
    bool same_key;         /* keyed rows: both threads use one key */
    bool route_per_thread; /* each thread gets its own policies */
};

static const struct row rows[] = {
    {"limiter take", call_limiter, false, false},
    {"keyed limiter, a key per thread", call_keyed_limiter, false, false},
    {"keyed limiter, one key", call_keyed_limiter, true, false},
    {"breaker before+after", call_breaker, false, false},
    {"bulkhead acquire+release", call_bulkhead, false, false},
    {"limiter+breaker+bulkhead", call_all_three, false, false},
    {"limiter+breaker+bulkhead, own route", call_all_three, false, true},
    {"keyed limiter+breaker+bulkhead", call_all_three_keyed, false, false},
    {"baseline: one mutex", call_mutex, false, false},
    {"clock read (CLOCK_MONOTONIC)", call_clock, false, false},
};

struct worker {
    struct route *route;
    const struct row *row;
    long calls;
    int index;
    pthread_barrier_t *start;
    long rejected;
    double cpu_seconds;
};

static double
seconds_since(clockid_t clock, const struct timespec *start)
{
    struct timespec end;

    clock_gettime(clock, &end);
    return (double)(end.tv_sec - start->tv_sec) +
           (double)(end.tv_nsec - start->tv_nsec) / 1e9;
}

static void *
run_worker(void *arg)
{
    struct worker *w = arg;
    struct route *r = w->route;
    struct timespec cpu_start;
    char key[32];
    long rejected = 0;

    snprintf(key, sizeof(key), "10.0.0.%d", w->row->same_key ? 1 : w->index);
    pthread_barrier_wait(w->start);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_start);
    for (long done = 0; done < w->calls; done += BLOCK) {
        wk_time now = atomic_fetch_add_explicit(&r->timeline, BLOCK * STEP_NS,
                                                memory_order_relaxed);

        for (int i = 0; i < BLOCK; i++) {
            rejected += w->row->fn(r, now, key);
            now += STEP_NS;
        }
    }
    w->rejected = rejected;
    w->cpu_seconds = seconds_since(CLOCK_THREAD_CPUTIME_ID, &cpu_start);
    return NULL;
}

static int
new_route(struct route *r)
{
    struct wk_ratelimit_config rl = WK_RATELIMIT_CONFIG_INIT;
    struct wk_breaker_config br = WK_BREAKER_CONFIG_INIT;
    struct wk_bulkhead_config bh = WK_BULKHEAD_CONFIG_INIT;

    /* 1 s of tokens: a thread may lag the timeline by that much. */
    rl.rate = WK_RATELIMIT_MAX_RATE;
    rl.burst = WK_RATELIMIT_MAX_BURST;
    if (wk_ratelimit_new(&rl, &r->limiter) != WK_OK)
        return -1;
    rl.max_keys = 10000;
    if (wk_ratelimit_new(&rl, &r->keyed) != WK_OK)
        return -1;
    br.name = "bench";
    if (wk_breaker_new(&br, &r->breaker) != WK_OK)
        return -1;
    if (wk_bulkhead_new(&bh, &r->bulkhead) != WK_OK)
        return -1;
    pthread_mutex_init(&r->mu, NULL);
    atomic_init(&r->timeline, WK_SEC(1000));
    return 0;
}

static void
free_route(struct route *r)
{
    wk_ratelimit_destroy(&r->limiter);
    wk_ratelimit_destroy(&r->keyed);
    wk_breaker_destroy(&r->breaker);
    wk_bulkhead_destroy(&r->bulkhead);
    pthread_mutex_destroy(&r->mu);
}

/* The result of one run of a row. */
struct run {
    double wall_seconds;
    double cpu_seconds; /* all threads */
    long rejected;
};

/* Runs row on threads threads, calls each, on fresh routes. */
static struct run
run_once(const struct row *row, int threads, long calls)
{
    struct route routes[MAX_THREADS] = {0};
    int route_count = row->route_per_thread ? threads : 1;
    struct worker workers[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    pthread_barrier_t start;
    struct timespec began;
    struct run run = {0};

    for (int i = 0; i < route_count; i++) {
        if (new_route(&routes[i]) != 0) {
            fprintf(stderr, "bench_policies: creating the policies failed\n");
            exit(1);
        }
    }
    pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
    for (int i = 0; i < threads; i++) {
        workers[i] = (struct worker){
            .route = &routes[row->route_per_thread ? i : 0],
            .row = row,
            .calls = calls,
            .index = i,
            .start = &start,
        };
        pthread_create(&ids[i], NULL, run_worker, &workers[i]);
    }
    clock_gettime(CLOCK_MONOTONIC, &began);
    pthread_barrier_wait(&start);
    for (int i = 0; i < threads; i++) {
        pthread_join(ids[i], NULL);
        run.rejected += workers[i].rejected;
        run.cpu_seconds += workers[i].cpu_seconds;
    }
    run.wall_seconds = seconds_since(CLOCK_MONOTONIC, &began);

    pthread_barrier_destroy(&start);
    for (int i = 0; i < route_count; i++)
        free_route(&routes[i]);
    return run;
}

int
main(int argc, char **argv)
{
    long calls = 2000000;

    if (argc > 1) {
        char *end;

        calls = strtol(argv[1], &end, 10);
        if (*end != '\0' || calls <= 0) {
            fprintf(stderr, "usage: %s [calls-per-thread]\n", argv[0]);
            return 2;
        }
    }
    calls = (calls + BLOCK - 1) / BLOCK * BLOCK;

    printf("%-38s %7s %9s %13s %9s %9s\n", "policy", "threads", "ns/call",
           "Mcalls/s all", "parallel", "rejected");
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        for (int threads = 1; threads <= MAX_THREADS; threads++) {
            struct run best = {0};
            long rejected = 0;

            for (int rep = 0; rep < REPEATS; rep++) {
                struct run run = run_once(&rows[i], threads, calls);

                rejected += run.rejected;
                if (rep == 0 || run.wall_seconds < best.wall_seconds)
                    best = run;
            }
            /* Each thread made `calls` calls in best.wall_seconds. */
            printf("%-38s %7d %9.1f %13.1f %9.2f %9ld\n", rows[i].name, threads,
                   best.wall_seconds * 1e9 / (double)calls,
                   (double)calls * threads / best.wall_seconds / 1e6,
                   best.cpu_seconds / best.wall_seconds, rejected);
        }
    }
    return 0;
}
