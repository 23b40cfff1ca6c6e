/*
 * Unit tests for the worker pool: running tasks, the bounded queue,
 * shutdown by draining or cancelling, and the counters.
 *
 * Tasks that must stay busy wait on a gate that the test opens, so the
 * queue's state is known exactly when the test checks it.
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

#include "workshop/error.h"
#include "workshop/pool.h"

struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int count; /* opens so far */
};

static void
gate_init(struct gate *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cond, NULL);
    g->count = 0;
}

static void
gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->count++;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->mu);
}

/* Waits until the gate has been opened n times in all. */
static void
gate_wait(struct gate *g, int n)
{
    pthread_mutex_lock(&g->mu);
    while (g->count < n)
        pthread_cond_wait(&g->cond, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void
gate_destroy(struct gate *g)
{
    pthread_cond_destroy(&g->cond);
    pthread_mutex_destroy(&g->mu);
}

/* A task that reports it started and waits until released. */
struct blocker {
    struct gate started;
    struct gate release;
};

static void
blocker_init(struct blocker *b)
{
    gate_init(&b->started);
    gate_init(&b->release);
}

static void
blocker_destroy(struct blocker *b)
{
    gate_destroy(&b->started);
    gate_destroy(&b->release);
}

static void
block_task(void *arg)
{
    struct blocker *b = arg;

    gate_open(&b->started);
    gate_wait(&b->release, 1);
}

struct counts {
    atomic_int runs;
    atomic_int cancels;
    atomic_int on_worker;
    struct wk_pool *pool;
};

static void
count_run(void *arg)
{
    struct counts *c = arg;

    if (wk_pool_is_worker(c->pool))
        atomic_fetch_add(&c->on_worker, 1);
    atomic_fetch_add(&c->runs, 1);
}

static void
count_cancel(void *arg)
{
    struct counts *c = arg;

    atomic_fetch_add(&c->cancels, 1);
}

static void
test_runs_every_task_on_workers(void **state)
{
    struct wk_pool *pool = wk_pool_new(2, 1000);
    struct counts c = {.pool = pool};
    struct wk_pool_stats stats;

    (void)state;
    assert_non_null(pool);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(wk_pool_submit(pool, count_run, count_cancel, &c),
                         WK_OK);
    wk_pool_shutdown(pool, WK_POOL_DRAIN);
    assert_int_equal(atomic_load(&c.runs), 1000);
    assert_int_equal(atomic_load(&c.on_worker), 1000);
    assert_int_equal(atomic_load(&c.cancels), 0);
    assert_false(wk_pool_is_worker(pool));
    assert_false(wk_pool_is_worker(NULL));

    wk_pool_stats(pool, &stats);
    assert_int_equal(stats.completed, 1000);
    assert_int_equal(stats.queued, 0);
    assert_int_equal(stats.running, 0);
    assert_int_equal(stats.rejected, 0);
    wk_pool_destroy(&pool);
    assert_null(pool);
    wk_pool_destroy(&pool);
}

static void
test_full_queue_rejects_at_once(void **state)
{
    struct wk_pool *pool = wk_pool_new(1, 2);
    struct blocker b;
    struct counts c = {.pool = pool};
    struct wk_pool_stats stats;

    (void)state;
    blocker_init(&b);
    assert_int_equal(wk_pool_submit(pool, block_task, NULL, &b), WK_OK);
    gate_wait(&b.started, 1);
    assert_int_equal(wk_pool_submit(pool, count_run, count_cancel, &c), WK_OK);
    assert_int_equal(wk_pool_submit(pool, count_run, count_cancel, &c), WK_OK);
    assert_int_equal(wk_pool_submit(pool, count_run, count_cancel, &c),
                     WK_ERR_REJECTED);

    wk_pool_stats(pool, &stats);
    assert_int_equal(stats.queued, 2);
    assert_int_equal(stats.running, 1);
    assert_int_equal(stats.completed, 0);
    assert_int_equal(stats.rejected, 1);

    gate_open(&b.release);
    wk_pool_destroy(&pool);
    /* The rejected task's functions were never called. */
    assert_int_equal(atomic_load(&c.runs), 2);
    assert_int_equal(atomic_load(&c.cancels), 0);
    blocker_destroy(&b);
}

static void *
shutdown_cancel_main(void *arg)
{
    wk_pool_shutdown(arg, WK_POOL_CANCEL);
    return NULL;
}

static void
test_cancel_shutdown_cancels_queued(void **state)
{
    enum { CAPACITY = 100000 };
    struct wk_pool *pool = wk_pool_new(1, CAPACITY);
    struct blocker b;
    struct counts c = {.pool = pool};
    struct counts probes = {.pool = pool};
    struct wk_pool_stats stats;
    pthread_t t;

    (void)state;
    blocker_init(&b);
    assert_int_equal(wk_pool_submit(pool, block_task, NULL, &b), WK_OK);
    gate_wait(&b.started, 1);
    for (int i = 0; i < 5; i++)
        assert_int_equal(wk_pool_submit(pool, count_run, count_cancel, &c),
                         WK_OK);
    /* NULL cancel functions are allowed. */
    assert_int_equal(wk_pool_submit(pool, count_run, NULL, &c), WK_OK);

    /*
     * Shut down from another thread while the worker is still blocked; the
     * first rejected probe shows that shutdown has begun.
     */
    assert_int_equal(pthread_create(&t, NULL, shutdown_cancel_main, pool), 0);
    int accepted = 0;

    while (wk_pool_submit(pool, count_run, count_cancel, &probes) == WK_OK) {
        accepted++;
        assert_true(accepted < CAPACITY - 10);
        sched_yield();
    }
    gate_open(&b.release);
    pthread_join(t, NULL);

    /* The blocker finished; every queued task was cancelled, none ran. */
    assert_int_equal(atomic_load(&c.runs), 0);
    assert_int_equal(atomic_load(&c.cancels), 5);
    assert_int_equal(atomic_load(&probes.runs), 0);
    assert_int_equal(atomic_load(&probes.cancels), accepted);
    wk_pool_stats(pool, &stats);
    assert_int_equal(stats.completed, 1);
    assert_int_equal(stats.cancelled, 6 + (uint64_t)accepted);
    assert_int_equal(stats.queued, 0);
    assert_int_equal(stats.running, 0);
    assert_int_equal(wk_pool_submit(pool, count_run, count_cancel, &c),
                     WK_ERR_REJECTED);
    wk_pool_destroy(&pool);
    blocker_destroy(&b);
}

static void
test_drain_shutdown_runs_queued(void **state)
{
    struct wk_pool *pool = wk_pool_new(1, 8);
    struct blocker b;
    struct counts c = {.pool = pool};
    struct wk_pool_stats stats;

    (void)state;
    blocker_init(&b);
    assert_int_equal(wk_pool_submit(pool, block_task, NULL, &b), WK_OK);
    gate_wait(&b.started, 1);
    for (int i = 0; i < 8; i++)
        assert_int_equal(wk_pool_submit(pool, count_run, count_cancel, &c),
                         WK_OK);
    gate_open(&b.release);
    wk_pool_shutdown(pool, WK_POOL_DRAIN);
    assert_int_equal(atomic_load(&c.runs), 8);
    assert_int_equal(atomic_load(&c.cancels), 0);
    wk_pool_stats(pool, &stats);
    assert_int_equal(stats.completed, 9);
    assert_int_equal(stats.cancelled, 0);
    /* A second shutdown does nothing. */
    wk_pool_shutdown(pool, WK_POOL_CANCEL);
    wk_pool_destroy(&pool);
    blocker_destroy(&b);
}

static void
test_workers_run_concurrently(void **state)
{
    struct wk_pool *pool = wk_pool_new(3, 4);
    struct blocker b;

    (void)state;
    blocker_init(&b);
    for (int i = 0; i < 3; i++)
        assert_int_equal(wk_pool_submit(pool, block_task, NULL, &b), WK_OK);
    /* All three block at once, so three threads exist. */
    gate_wait(&b.started, 3);
    gate_open(&b.release);
    wk_pool_destroy(&pool);
    blocker_destroy(&b);
}

/* Resubmits itself from the worker until n reaches zero. */
struct chain {
    struct wk_pool *pool;
    atomic_int n;
    atomic_int rejected;
    struct gate done;
};

static void
resubmit_task(void *arg)
{
    struct chain *c = arg;

    if (atomic_fetch_sub(&c->n, 1) == 1) {
        gate_open(&c->done);
        return;
    }
    if (wk_pool_submit(c->pool, resubmit_task, NULL, c) != WK_OK) {
        atomic_fetch_add(&c->rejected, 1);
        gate_open(&c->done);
    }
}

static void
test_task_may_submit(void **state)
{
    struct wk_pool *pool = wk_pool_new(1, 1);
    struct chain c = {.pool = pool};
    struct wk_pool_stats stats;

    (void)state;
    gate_init(&c.done);
    atomic_init(&c.n, 100);
    assert_int_equal(wk_pool_submit(pool, resubmit_task, NULL, &c), WK_OK);
    gate_wait(&c.done, 1);
    assert_int_equal(atomic_load(&c.rejected), 0);
    assert_int_equal(atomic_load(&c.n), 0);
    wk_pool_shutdown(pool, WK_POOL_DRAIN);
    wk_pool_stats(pool, &stats);
    assert_int_equal(stats.completed, 100);
    wk_pool_destroy(&pool);
    gate_destroy(&c.done);
}

static void
test_zero_sizes_mean_one(void **state)
{
    struct wk_pool *pool = wk_pool_new(0, 0);
    struct blocker b;
    struct counts c = {.pool = pool};

    (void)state;
    assert_non_null(pool);
    blocker_init(&b);
    assert_int_equal(wk_pool_submit(pool, block_task, NULL, &b), WK_OK);
    gate_wait(&b.started, 1);
    assert_int_equal(wk_pool_submit(pool, count_run, NULL, &c), WK_OK);
    assert_int_equal(wk_pool_submit(pool, count_run, NULL, &c),
                     WK_ERR_REJECTED);
    gate_open(&b.release);
    wk_pool_destroy(&pool);
    assert_int_equal(atomic_load(&c.runs), 1);
    blocker_destroy(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_runs_every_task_on_workers),
        cmocka_unit_test(test_full_queue_rejects_at_once),
        cmocka_unit_test(test_cancel_shutdown_cancels_queued),
        cmocka_unit_test(test_drain_shutdown_runs_queued),
        cmocka_unit_test(test_workers_run_concurrently),
        cmocka_unit_test(test_task_may_submit),
        cmocka_unit_test(test_zero_sizes_mean_one),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
