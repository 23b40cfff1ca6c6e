/*
 * The worker pool: a ring buffer of tasks under one mutex, and a fixed set of
 * threads that take tasks from it.
 *
 * Submitting wakes a worker only when one is idle, so a busy pool pays for no
 * wake-ups. The workers block every signal, so a program's signal handlers
 * run on its own threads. A thread-local pointer lets wk_pool_is_worker(),
 * and so the promise code, check whether the caller is already on a pool
 * thread.
 */
#include "workshop/pool.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "workshop/error.h"

struct task {
    wk_task_fn *run;
    wk_task_fn *cancel;
    void *arg;
};

struct wk_pool {
    pthread_mutex_t mu;
    pthread_cond_t work; /* signalled when a task is queued or on shutdown */
    struct task *ring;
    size_t capacity;
    size_t head; /* index of the oldest queued task */
    size_t count;
    pthread_t *threads;
    unsigned thread_count; /* threads started */
    unsigned idle;         /* workers waiting on work */
    bool stopping;         /* no more submissions */
    bool discard;          /* WK_POOL_CANCEL: workers leave queued tasks */
    bool shut_down;        /* a shutdown call has begun */
    uint64_t running;
    uint64_t completed;
    uint64_t rejected;
    uint64_t cancelled;
};

static _Thread_local const struct wk_pool *current_pool;

/* Takes the oldest task; the queue must not be empty. Caller holds mu. */
static struct task
pop_locked(struct wk_pool *pool)
{
    struct task t = pool->ring[pool->head];

    pool->head = (pool->head + 1) % pool->capacity;
    pool->count--;
    return t;
}

static void *
worker_main(void *arg)
{
    struct wk_pool *pool = arg;

    current_pool = pool;
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        while (pool->count == 0 && !pool->stopping) {
            pool->idle++;
            pthread_cond_wait(&pool->work, &pool->mu);
            pool->idle--;
        }
        /* Stopping: with WK_POOL_DRAIN the queue is emptied first. */
        if (pool->count == 0 || pool->discard)
            break;

        struct task t = pop_locked(pool);

        pool->running++;
        pthread_mutex_unlock(&pool->mu);
        t.run(t.arg);
        pthread_mutex_lock(&pool->mu);
        pool->running--;
        pool->completed++;
    }
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

/* Starts the workers with every signal blocked; returns false on failure. */
static bool
start_workers(struct wk_pool *pool, unsigned threads)
{
    sigset_t all, old;
    bool ok = true;

    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (unsigned i = 0; i < threads; i++) {
        if (pthread_create(&pool->threads[i], NULL, worker_main, pool) != 0) {
            ok = false;
            break;
        }
        pool->thread_count++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return ok;
}

struct wk_pool *
wk_pool_new(unsigned threads, size_t queue_capacity)
{
    if (threads == 0)
        threads = 1;
    if (queue_capacity == 0)
        queue_capacity = 1;

    struct wk_pool *pool = calloc(1, sizeof(*pool));

    if (pool == NULL)
        return NULL;
    pool->capacity = queue_capacity;
    pool->ring = calloc(queue_capacity, sizeof(*pool->ring));
    pool->threads = calloc(threads, sizeof(*pool->threads));
    if (pool->ring == NULL || pool->threads == NULL)
        goto fail;
    if (pthread_mutex_init(&pool->mu, NULL) != 0)
        goto fail;
    if (pthread_cond_init(&pool->work, NULL) != 0) {
        pthread_mutex_destroy(&pool->mu);
        goto fail;
    }
    if (!start_workers(pool, threads)) {
        /* Stops and joins the threads that did start, then frees. */
        wk_pool_destroy(&pool);
        return NULL;
    }
    return pool;

fail:
    free(pool->threads);
    free(pool->ring);
    free(pool);
    return NULL;
}

int
wk_pool_submit(struct wk_pool *pool, wk_task_fn *run, wk_task_fn *cancel,
               void *arg)
{
    int err = WK_ERR_REJECTED;

    pthread_mutex_lock(&pool->mu);
    if (pool->stopping || pool->count == pool->capacity) {
        pool->rejected++;
        goto out;
    }

    size_t tail = (pool->head + pool->count) % pool->capacity;

    pool->ring[tail] = (struct task){.run = run, .cancel = cancel, .arg = arg};
    pool->count++;
    if (pool->idle > 0)
        pthread_cond_signal(&pool->work);
    err = WK_OK;
out:
    pthread_mutex_unlock(&pool->mu);
    return err;
}

/*
 * Calls the cancel function of every queued task, oldest first, once the
 * workers are gone. A cancel function may submit again; that is rejected.
 */
static void
cancel_queued(struct wk_pool *pool)
{
    pthread_mutex_lock(&pool->mu);
    while (pool->count > 0) {
        struct task t = pop_locked(pool);

        pool->cancelled++;
        pthread_mutex_unlock(&pool->mu);
        if (t.cancel != NULL)
            t.cancel(t.arg);
        pthread_mutex_lock(&pool->mu);
    }
    pthread_mutex_unlock(&pool->mu);
}

void
wk_pool_shutdown(struct wk_pool *pool, enum wk_pool_shutdown how)
{
    if (current_pool == pool) {
        /* Joining would wait for this very thread. */
        fprintf(stderr, "wk_pool_shutdown: called from a pool thread\n");
        abort();
    }

    pthread_mutex_lock(&pool->mu);
    if (pool->shut_down) {
        pthread_mutex_unlock(&pool->mu);
        return;
    }
    pool->shut_down = true;
    pool->stopping = true;
    pool->discard = how == WK_POOL_CANCEL;
    pthread_cond_broadcast(&pool->work);
    pthread_mutex_unlock(&pool->mu);

    for (unsigned i = 0; i < pool->thread_count; i++)
        pthread_join(pool->threads[i], NULL);
    cancel_queued(pool);
}

void
wk_pool_destroy(struct wk_pool **ppool)
{
    struct wk_pool *pool = *ppool;

    if (pool == NULL)
        return;
    *ppool = NULL;
    wk_pool_shutdown(pool, WK_POOL_DRAIN);
    pthread_cond_destroy(&pool->work);
    pthread_mutex_destroy(&pool->mu);
    free(pool->threads);
    free(pool->ring);
    free(pool);
}

void
wk_pool_stats(struct wk_pool *pool, struct wk_pool_stats *stats)
{
    pthread_mutex_lock(&pool->mu);
    stats->queued = pool->count;
    stats->running = pool->running;
    stats->completed = pool->completed;
    stats->rejected = pool->rejected;
    stats->cancelled = pool->cancelled;
    pthread_mutex_unlock(&pool->mu);
}

bool
wk_pool_is_worker(const struct wk_pool *pool)
{
    return pool != NULL && current_pool == pool;
}
