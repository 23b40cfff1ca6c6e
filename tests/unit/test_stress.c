/*
 * Stress tests: many threads and promises at once, with closes and frees
 * racing settles, and pools shut down while work still arrives.
 *
 * Each scenario checks totals that hold whatever the interleaving: every
 * started promise calls on_settle exactly once, every value is freed once,
 * every admitted call gets its after hook, every accepted pool task either
 * runs or is cancelled. ASan, TSan and valgrind builds check the rest (no
 * use after free, no race, no leak). Sizes are chosen to finish in a few
 * seconds under TSan on two cores.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "workshop/error.h"
#include "workshop/promise.h"

enum {
    CREATORS = 4,
    PROMISES_PER_CREATOR = 2500,
    SETTLERS = 2,
    SUBMITTERS = 3,
    SUBMITS_PER_THREAD = 20000,
};

static uint32_t
next_random(uint32_t *state)
{
    uint32_t x = *state;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;
    return x;
}

static atomic_int values_made;
static atomic_int values_freed;

static void
count_free(void *ptr)
{
    free(ptr);
    atomic_fetch_add(&values_freed, 1);
}

static struct wk_value
int_value(int n)
{
    int *ptr = malloc(sizeof(*ptr));

    assert_non_null(ptr);
    *ptr = n;
    atomic_fetch_add(&values_made, 1);
    return (struct wk_value){.ptr = ptr, .free = count_free};
}

/* --- a middleware that counts befores and afters ---------------------- */

static atomic_long befores;
static atomic_long afters;

static int
count_before(void *self, const char *key, wk_time now, void **token)
{
    (void)self;
    (void)now;
    (void)token;
    assert_non_null(key);
    atomic_fetch_add(&befores, 1);
    return WK_OK;
}

static void
count_after(void *self, const char *key, void *token, int err,
            wk_duration latency, wk_time now)
{
    (void)self;
    (void)key;
    (void)token;
    (void)err;
    (void)now;
    assert_true(latency >= 0);
    atomic_fetch_add(&afters, 1);
}

static const struct wk_middleware_ops count_ops = {
    .name = "count",
    .before = count_before,
    .after = count_after,
};

static const struct wk_middleware counting = {&count_ops, NULL};

/* --- a queue of work for the settler threads --------------------------- */

enum owner_mode {
    OWNER_WAITS,      /* the creator waits for the result, then frees */
    OWNER_CLOSES,     /* the creator closes at once, then frees */
    OWNER_FREES,      /* the creator frees at once */
    CALLBACK_FREES,   /* on_settle frees */
    SETTLER_FREES,    /* the settler frees, before or after settling */
    OWNER_MODE_COUNT, /* number of modes */
};

struct request {
    struct wk_promise *p;
    enum owner_mode mode;
    atomic_int settled_calls;
    atomic_int hooks;
    atomic_bool settler_owns; /* SETTLER_FREES: taken by the first settler */
};

struct job {
    struct wk_settle *settle;
    struct request *req;
};

struct queue {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct job *jobs;
    size_t head, count, capacity;
    bool closed;
};

static struct queue settle_queue;

static void
queue_push(struct queue *q, struct job job)
{
    pthread_mutex_lock(&q->mu);
    assert_true(q->count < q->capacity);
    q->jobs[(q->head + q->count) % q->capacity] = job;
    q->count++;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->mu);
}

/* Returns false once the queue is closed and empty. */
static bool
queue_pop(struct queue *q, struct job *job)
{
    pthread_mutex_lock(&q->mu);
    while (q->count == 0 && !q->closed)
        pthread_cond_wait(&q->cond, &q->mu);
    bool got = q->count > 0;

    if (got) {
        *job = q->jobs[q->head];
        q->head = (q->head + 1) % q->capacity;
        q->count--;
    }
    pthread_mutex_unlock(&q->mu);
    return got;
}

static void
queue_init(struct queue *q, size_t capacity)
{
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cond, NULL);
    q->jobs = calloc(capacity, sizeof(*q->jobs));
    assert_non_null(q->jobs);
    q->capacity = capacity;
    q->head = q->count = 0;
    q->closed = false;
}

static void
queue_close(struct queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = true;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
}

static void
queue_destroy(struct queue *q)
{
    free(q->jobs);
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->mu);
}

/* --- steps ------------------------------------------------------------- */

static void
hook(void *arg)
{
    struct request *req = arg;

    atomic_fetch_add(&req->hooks, 1);
    /* Widens the window in which a settle must wait for the hook. */
    sched_yield();
}

static void
remote_call(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
            struct wk_settle *settle)
{
    struct request *req = arg;

    (void)ctx;
    (void)last;
    wk_settle_on_cancel(settle, hook, req);
    queue_push(&settle_queue, (struct job){settle, req});
}

static int
add_one(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
        struct wk_value *out)
{
    (void)ctx;
    (void)arg;
    *out = int_value(last->ptr != NULL ? *(int *)last->ptr + 1 : 1);
    return WK_OK;
}

/* Retries an upstream failure once, passing `last` on unchanged. */
static int
retry_upstream(struct wk_ctx *ctx, void *arg, int err,
               const struct wk_value *last, struct wk_value *out)
{
    (void)ctx;
    (void)arg;
    *out = *last;
    return err == WK_ERR_UPSTREAM ? WK_OK : err;
}

static int
fall_back(struct wk_ctx *ctx, void *arg, int err, const struct wk_value *last,
          struct wk_value *out)
{
    (void)ctx;
    (void)arg;
    (void)last;
    if (err == WK_ERR_UPSTREAM)
        *out = int_value(0);
    return err == WK_ERR_UPSTREAM ? WK_OK : err;
}

static void
on_settled(void *arg, int err, struct wk_value *value)
{
    struct request *req = arg;

    (void)err;
    (void)value;
    atomic_fetch_add(&req->settled_calls, 1);
    if (req->mode == CALLBACK_FREES)
        wk_promise_free(&req->p);
}

static void *
settler_main(void *arg)
{
    uint32_t rng = (uint32_t)(uintptr_t)arg;
    struct job job;

    while (queue_pop(&settle_queue, &job)) {
        bool ok = next_random(&rng) % 3 != 0;
        bool free_first = next_random(&rng) % 2 == 0;
        struct request *req = job.req;
        /* A retried call comes twice; only one settler may free. */
        bool owner = req->mode == SETTLER_FREES &&
                     !atomic_exchange(&req->settler_owns, true);

        if (owner && free_first)
            wk_promise_free(&req->p);
        if (next_random(&rng) % 4 == 0)
            sched_yield();
        if (ok)
            wk_settle(job.settle, WK_OK, int_value(1));
        else
            wk_settle(job.settle, WK_ERR_UPSTREAM, int_value(-1));
        if (owner && !free_first)
            wk_promise_free(&req->p);
    }
    return NULL;
}

struct creator {
    struct wk_pool *pool;
    uint32_t seed;
    struct request *reqs;
    int started;
};

static struct wk_promise *
build_request(struct creator *c, struct request *req, bool use_pool)
{
    struct wk_promise_opts opts = {
        .pool = use_pool ? c->pool : NULL,
        .key = "route",
        .middlewares = &counting,
        .middleware_count = 1,
    };
    struct wk_step call = {.run_async = remote_call, .arg = req};
    struct wk_step then = {.run = add_one};
    struct wk_promise *p = wk_promise_new(&opts, &call);

    assert_non_null(p);
    assert_int_equal(wk_promise_recover_and_retry(p, retry_upstream, NULL, 2),
                     WK_OK);
    assert_int_equal(wk_promise_on_exception(p, fall_back, NULL), WK_OK);
    assert_int_equal(wk_promise_then(p, &then), WK_OK);
    assert_int_equal(wk_promise_on_settle(p, on_settled, req), WK_OK);
    return p;
}

static void *
creator_main(void *arg)
{
    struct creator *c = arg;
    uint32_t rng = c->seed;

    for (int i = 0; i < PROMISES_PER_CREATOR; i++) {
        struct request *req = &c->reqs[i];

        req->mode = (enum owner_mode)(next_random(&rng) % OWNER_MODE_COUNT);
        req->p = build_request(c, req, next_random(&rng) % 2 == 0);

        /* Modes that hand the promise on must not touch it after start. */
        struct wk_promise *own = req->p;

        if (req->mode == CALLBACK_FREES || req->mode == SETTLER_FREES)
            own = NULL;
        assert_int_equal(wk_promise_start(req->p), WK_OK);
        c->started++;

        switch (req->mode) {
        case OWNER_WAITS: {
            int err = wk_promise_wait(own, WK_TIME_NEVER);

            assert_true(err == WK_OK || err == WK_ERR_REJECTED);
            wk_promise_free(&req->p);
            break;
        }
        case OWNER_CLOSES:
            wk_promise_close(own);
            wk_promise_free(&req->p);
            break;
        case OWNER_FREES:
            wk_promise_free(&req->p);
            break;
        case CALLBACK_FREES:
        case SETTLER_FREES:
        case OWNER_MODE_COUNT:
            break;
        }
    }
    return NULL;
}

static bool
all_done(const struct creator *creators)
{
    for (int i = 0; i < CREATORS; i++) {
        for (int j = 0; j < PROMISES_PER_CREATOR; j++) {
            if (atomic_load(&creators[i].reqs[j].settled_calls) == 0)
                return false;
        }
    }
    return atomic_load(&afters) == atomic_load(&befores);
}

/* Polls all_done(); fails after a minute, which means a lost settle. */
static void
wait_all_done(const struct creator *creators)
{
    struct timespec start, now;

    clock_gettime(CLOCK_MONOTONIC, &start);
    while (!all_done(creators)) {
        sched_yield();
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > 60)
            fail_msg("promises still unsettled after a minute");
    }
}

static void
test_settles_race_closes_and_frees(void **state)
{
    struct wk_pool *pool = wk_pool_new(2, 256);
    struct creator creators[CREATORS];
    pthread_t creator_threads[CREATORS], settler_threads[SETTLERS];

    (void)state;
    /* Room for every run: a retried call settles twice. */
    queue_init(&settle_queue, 2 * CREATORS * PROMISES_PER_CREATOR);
    for (int i = 0; i < SETTLERS; i++)
        assert_int_equal(pthread_create(&settler_threads[i], NULL, settler_main,
                                        (void *)(uintptr_t)(7 + i)),
                         0);
    for (int i = 0; i < CREATORS; i++) {
        creators[i] = (struct creator){
            .pool = pool,
            .seed = 1234567u * (uint32_t)(i + 1),
            .reqs = calloc(PROMISES_PER_CREATOR, sizeof(struct request)),
        };
        assert_non_null(creators[i].reqs);
        assert_int_equal(pthread_create(&creator_threads[i], NULL, creator_main,
                                        &creators[i]),
                         0);
    }

    for (int i = 0; i < CREATORS; i++)
        pthread_join(creator_threads[i], NULL);
    /*
     * A retry may start a call from a pool thread after every creator is
     * done, so the settlers stay until each promise has settled and each
     * admitted call has ended.
     */
    wait_all_done(creators);
    queue_close(&settle_queue);
    for (int i = 0; i < SETTLERS; i++)
        pthread_join(settler_threads[i], NULL);
    /* Chains still queued on the pool finish; then every promise is gone. */
    wk_pool_destroy(&pool);

    for (int i = 0; i < CREATORS; i++) {
        assert_int_equal(creators[i].started, PROMISES_PER_CREATOR);
        for (int j = 0; j < PROMISES_PER_CREATOR; j++) {
            struct request *req = &creators[i].reqs[j];

            assert_int_equal(atomic_load(&req->settled_calls), 1);
            assert_true(atomic_load(&req->hooks) <= 1);
            assert_null(req->p);
        }
        free(creators[i].reqs);
    }
    assert_int_equal(atomic_load(&values_freed), atomic_load(&values_made));
    assert_int_equal(atomic_load(&afters), atomic_load(&befores));
    queue_destroy(&settle_queue);
}

/* --- pool shutdown under load ------------------------------------------ */

struct load {
    struct wk_pool *pool;
    atomic_long runs;
    atomic_long cancels;
    atomic_long accepted;
    atomic_int done; /* submitters that have finished */
};

static void
load_run(void *arg)
{
    struct load *l = arg;

    atomic_fetch_add(&l->runs, 1);
}

static void
load_cancel(void *arg)
{
    struct load *l = arg;

    atomic_fetch_add(&l->cancels, 1);
}

static void *
submitter_main(void *arg)
{
    struct load *l = arg;

    for (int i = 0; i < SUBMITS_PER_THREAD; i++) {
        if (wk_pool_submit(l->pool, load_run, load_cancel, l) == WK_OK)
            atomic_fetch_add(&l->accepted, 1);
        if (i % 64 == 0)
            sched_yield();
    }
    atomic_fetch_add(&l->done, 1);
    return NULL;
}

static void
shutdown_under_load(enum wk_pool_shutdown how)
{
    struct load l = {.pool = wk_pool_new(2, 256)};
    pthread_t threads[SUBMITTERS];
    struct wk_pool_stats stats;

    for (int i = 0; i < SUBMITTERS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, submitter_main, &l),
                         0);
    /*
     * Let some work through first, so the shutdown meets a busy pool. Under
     * valgrind the submitters may all finish first; that is fine too.
     */
    do {
        sched_yield();
        wk_pool_stats(l.pool, &stats);
    } while (stats.completed < 500 && atomic_load(&l.done) < SUBMITTERS);
    wk_pool_shutdown(l.pool, how);
    for (int i = 0; i < SUBMITTERS; i++)
        pthread_join(threads[i], NULL);

    wk_pool_stats(l.pool, &stats);
    assert_int_equal(atomic_load(&l.runs) + atomic_load(&l.cancels),
                     atomic_load(&l.accepted));
    assert_int_equal(stats.completed, (uint64_t)atomic_load(&l.runs));
    assert_int_equal(stats.cancelled, (uint64_t)atomic_load(&l.cancels));
    assert_int_equal(stats.completed + stats.cancelled + stats.rejected,
                     (uint64_t)SUBMITTERS * SUBMITS_PER_THREAD);
    assert_int_equal(stats.queued, 0);
    assert_int_equal(stats.running, 0);
    if (how == WK_POOL_DRAIN)
        assert_int_equal(atomic_load(&l.cancels), 0);
    wk_pool_destroy(&l.pool);
}

static void
test_pool_cancel_under_load(void **state)
{
    (void)state;
    shutdown_under_load(WK_POOL_CANCEL);
}

static void
test_pool_drain_under_load(void **state)
{
    (void)state;
    shutdown_under_load(WK_POOL_DRAIN);
}

/* --- promises on a pool that shuts down ----------------------------------- */

struct chain_load {
    struct wk_pool *pool;
    atomic_int settles;
    atomic_int started;
    atomic_bool done;
    uint32_t seed;
};

static void
chain_settled(void *arg, int err, struct wk_value *value)
{
    struct chain_load *cl = arg;

    (void)value;
    assert_true(err == WK_OK || err == WK_ERR_REJECTED ||
                err == WK_ERR_CANCELLED);
    atomic_fetch_add(&cl->settles, 1);
}

static void *
chain_creator_main(void *arg)
{
    struct chain_load *cl = arg;
    struct wk_step step = {.run = add_one};
    struct wk_promise_opts opts = {.pool = cl->pool};

    for (int i = 0; i < PROMISES_PER_CREATOR; i++) {
        struct wk_promise *p = wk_promise_new(&opts, &step);

        assert_non_null(p);
        assert_int_equal(wk_promise_then(p, &step), WK_OK);
        assert_int_equal(wk_promise_then(p, &step), WK_OK);
        assert_int_equal(wk_promise_on_settle(p, chain_settled, cl), WK_OK);
        assert_int_equal(wk_promise_start(p), WK_OK);
        atomic_fetch_add(&cl->started, 1);
        if (next_random(&cl->seed) % 2 == 0)
            wk_promise_close(p);
        wk_promise_free(&p);
    }
    atomic_store(&cl->done, true);
    return NULL;
}

static void
test_promises_on_pool_shut_down(void **state)
{
    struct chain_load loads[2];
    pthread_t threads[2];
    struct wk_pool *pool = wk_pool_new(2, 32);
    struct wk_pool_stats stats;

    (void)state;
    for (int i = 0; i < 2; i++) {
        loads[i] = (struct chain_load){.pool = pool, .seed = 99u + (uint32_t)i};
        assert_int_equal(
            pthread_create(&threads[i], NULL, chain_creator_main, &loads[i]),
            0);
    }
    do {
        sched_yield();
        wk_pool_stats(pool, &stats);
    } while (stats.completed < 200 &&
             !(atomic_load(&loads[0].done) && atomic_load(&loads[1].done)));
    wk_pool_shutdown(pool, WK_POOL_CANCEL);
    for (int i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);
    wk_pool_destroy(&pool);

    for (int i = 0; i < 2; i++)
        assert_int_equal(atomic_load(&loads[i].settles),
                         atomic_load(&loads[i].started));
    assert_int_equal(atomic_load(&values_freed), atomic_load(&values_made));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_settles_race_closes_and_frees),
        cmocka_unit_test(test_pool_cancel_under_load),
        cmocka_unit_test(test_pool_drain_under_load),
        cmocka_unit_test(test_promises_on_pool_shut_down),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
