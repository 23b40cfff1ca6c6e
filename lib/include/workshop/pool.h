/*
 * A fixed set of worker threads with a bounded task queue.
 *
 * Submitting never blocks: a full queue, or a pool that is shutting down,
 * rejects the task at once with WK_ERR_REJECTED. Shutdown either drains the
 * queue (every queued task runs) or cancels it (each queued task's cancel
 * function runs instead), then joins every thread.
 *
 * Thread safety: submit, stats and wk_pool_is_worker may be called from any
 * thread, including from a task. Shutdown and destroy must not be called from
 * a pool thread (that aborts with a message), and must not race each other:
 * call them from one thread.
 */
#ifndef WORKSHOP_POOL_H
#define WORKSHOP_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct wk_pool;

/* A unit of work. It owns arg from the moment it is called. */
typedef void wk_task_fn(void *arg);

enum wk_pool_shutdown {
    WK_POOL_DRAIN,  /* run every queued task, then stop */
    WK_POOL_CANCEL, /* call each queued task's cancel function, then stop */
};

struct wk_pool_stats {
    uint64_t queued;    /* tasks waiting now */
    uint64_t running;   /* tasks running now */
    uint64_t completed; /* tasks that have returned since creation */
    uint64_t rejected;  /* submissions rejected since creation */
    uint64_t cancelled; /* queued tasks cancelled by WK_POOL_CANCEL */
};

/*
 * Starts threads worker threads with room for queue_capacity waiting tasks;
 * 0 counts as 1 for both. The workers block every signal. Returns NULL when
 * out of memory or when a thread cannot be created.
 */
struct wk_pool *wk_pool_new(unsigned threads, size_t queue_capacity);

/*
 * Queues run(arg). cancel, which may be NULL, is called with arg instead of
 * run when the pool is shut down with WK_POOL_CANCEL before the task started.
 * Returns WK_OK, or WK_ERR_REJECTED when the queue is full or the pool is
 * shutting down; on rejection neither function is called and the caller
 * still owns arg.
 */
int wk_pool_submit(struct wk_pool *pool, wk_task_fn *run, wk_task_fn *cancel,
                   void *arg) __attribute__((warn_unused_result));

/*
 * Stops accepting tasks, then joins every thread. With WK_POOL_DRAIN the
 * workers run every queued task first. With WK_POOL_CANCEL they finish only
 * the tasks already running, and the cancel functions of the queued ones run
 * on the calling thread after the join. A second call does nothing.
 */
void wk_pool_shutdown(struct wk_pool *pool, enum wk_pool_shutdown how);

/* Shuts down with WK_POOL_DRAIN if still running, frees, sets *pool NULL. */
void wk_pool_destroy(struct wk_pool **pool);

/* Fills stats with a consistent snapshot of the counters. */
void wk_pool_stats(struct wk_pool *pool, struct wk_pool_stats *stats);

/* Returns true when the calling thread is one of pool's workers. */
bool wk_pool_is_worker(const struct wk_pool *pool);

#endif /* WORKSHOP_POOL_H */
