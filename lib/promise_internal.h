/*
 * The layout of a promise, shared by promise.c (building, waiting, closing,
 * freeing) and promise_run.c (the code that drives the chain).
 *
 * Fields fall in three groups by who may touch them:
 *   - set while building and read-only after wk_promise_start();
 *   - under mu: the settle state, the async handshake and the cancel hook;
 *   - owned by the one thread that drives the chain at a time (the cursor,
 *     the chain's error and value). The drive moves between threads only
 *     through the pool's mutex or through mu, which orders those writes.
 */
#ifndef WORKSHOP_LIB_PROMISE_INTERNAL_H
#define WORKSHOP_LIB_PROMISE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "ctx_internal.h"
#include "workshop/promise.h"

enum link_kind {
    LINK_STEP,      /* then, or the first step */
    LINK_EXCEPTION, /* on_exception */
};

/* One link of the chain, with its middlewares, tokens and key behind it. */
struct link {
    enum link_kind kind;
    wk_step_fn *run;
    wk_async_fn *run_async;
    wk_recover_fn *recover; /* LINK_EXCEPTION */
    void *arg;
    wk_recover_fn *retry_fn; /* set by recover_and_retry, or NULL */
    void *retry_arg;
    unsigned max_attempts; /* runs of the step in all; 1 without retry */
    const char *key;       /* NULL: the promise's key */
    const struct wk_middleware *mws;
    size_t mw_count;
    bool with_defaults; /* WK_MW_APPEND: the promise's run first */
    void **tokens;      /* one per middleware that runs, defaults first */
    struct link *next;
};

/* The job that the driver runs next at the cursor. */
enum job {
    JOB_STEP,    /* a run of the cursor's step */
    JOB_RECOVER, /* the recovery between two runs of the step */
    JOB_CATCH,   /* the cursor's on_exception function */
};

/* The handshake between run_async() and wk_settle(). */
enum async_state {
    ASYNC_IDLE,
    ASYNC_CALLING, /* run_async() has not returned yet */
    ASYNC_WAITING, /* run_async() returned; wk_settle() drives on */
    ASYNC_SETTLED, /* settled before run_async() returned; it drives on */
};

struct outcome {
    int err;
    struct wk_value value;
};

struct wk_settle {
    struct wk_promise *promise;
};

struct wk_promise {
    atomic_uint refs; /* the owner's, plus one while the chain runs */
    atomic_bool closed;

    pthread_mutex_t mu;
    pthread_cond_t cond; /* on CLOCK_MONOTONIC; see sleepers */

    /* Under mu. */
    unsigned sleepers; /* threads waiting on cond */
    bool started;
    bool decided;   /* the result is fixed; on_settle may be running */
    bool published; /* on_settle has returned; get() may read the result */
    int result;
    enum async_state async;
    struct outcome early; /* ASYNC_SETTLED: the outcome */
    void (*hook_fn)(void *arg);
    void *hook_arg;
    bool hook_fired;   /* the hook of the current async run was taken */
    bool hook_running; /* on hook_thread, so wk_settle() waits */
    pthread_t hook_thread;

    /* Owned by the driving thread. */
    struct link *cursor; /* NULL once the chain has run out */
    enum job job;
    unsigned attempt; /* runs of the cursor's step so far */
    int chain_err;    /* WK_OK while the chain is in success */
    int step_err;     /* JOB_RECOVER: the error of the failed run */
    struct wk_value value;
    bool admitted; /* the middlewares admitted the current run */
    wk_time run_started;

    /* Set while building; read-only once started. */
    struct link *head;
    struct link *tail;
    struct wk_pool *pool;
    const char *key;
    const struct wk_middleware *mws;
    size_t mw_count;
    wk_settled_fn *on_settle;
    void *on_settle_arg;

    struct wk_settle settle;
    struct wk_ctx ctx;
    struct link first;
};

/* Runs the chain from its cursor until it must wait for a pool or settle. */
void wk__promise_drive_start(struct wk_promise *p);

/*
 * Runs on_settle for a result just decided under mu, then publishes it to
 * get() and wakes the waiters.
 */
void wk__promise_notify(struct wk_promise *p, int err, struct wk_value *value);

/*
 * Takes the current asynchronous run's cancel hook for running when the
 * promise is closed and the hook has not been taken yet: returns true with
 * *fn and *arg set and marks the hook as running. Caller holds mu.
 */
bool wk__promise_take_hook_locked(struct wk_promise *p, void (**fn)(void *),
                                  void **arg);

/* Runs a hook taken under mu, then lets a settle waiting for it go on. */
void wk__promise_run_hook(struct wk_promise *p, void (*fn)(void *), void *arg);

/* Drops one reference; the last frees the promise. */
void wk__promise_unref(struct wk_promise *p);

/* The promise whose code this thread is running, or NULL. */
extern _Thread_local struct wk_promise *wk__promise_running_here;

#endif /* WORKSHOP_LIB_PROMISE_INTERNAL_H */
