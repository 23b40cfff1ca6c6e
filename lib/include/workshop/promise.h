/*
 * Promises: a chain of steps run one after another, with error handling,
 * bounded retries, middlewares, cancellation and a deadline.
 *
 * Build a chain with wk_promise_new() and the then / on_exception /
 * recover_and_retry calls, register an on-settle callback if needed, then
 * start it with wk_promise_start(). Links run in the order they were added:
 *
 *   - a "then" step runs when the chain is in success; it receives the
 *     previous value and produces the next one, or fails with an error;
 *   - an "on_exception" step runs when the chain is in failure; it receives
 *     the error and the last good value, and either recovers (returns WK_OK
 *     and a value, so the chain continues in success) or fails;
 *   - a "recover_and_retry" link belongs to the step before it: when that
 *     step fails, the recovery runs and then the step runs again, up to
 *     max_attempts runs of the step in all. When the attempts are used up,
 *     the context's deadline has passed, or the recovery itself fails (its
 *     error then becomes the chain's), the chain continues in failure.
 *
 * The chain settles when its last link has run, or when it is closed.
 *
 * Threads. Synchronous functions (a step's run(), on_exception and recovery
 * functions) run on a pool thread: the thread that reaches one hands it to
 * the pool unless it is already one of the pool's workers, in which case it
 * runs it inline. Without a pool they run inline on the thread that reached
 * them. A full pool queue fails that run with WK_ERR_REJECTED; a pool shut
 * down with WK_POOL_CANCEL before the run started settles the chain with
 * WK_ERR_CANCELLED. An asynchronous step's run_async() is called on the
 * thread that reached the step (the caller of wk_promise_start() for the
 * first step), with no pool hop; it starts work and returns, and the work
 * settles the step later, from any thread, through the settle handle,
 * exactly once. The chain then goes on on the settling thread. So
 * wk_promise_start() may run the whole chain, on_settle included, before it
 * returns.
 *
 * Deadline. The promise's context carries opts.deadline and the parent's.
 * No step is skipped or interrupted when it passes: every step runs and
 * reads wk_ctx_err() or wk_ctx_remaining() to decide, as a Go function
 * checks ctx.Err(). So the run_async() of a first step is always called
 * inside a successful wk_promise_start(), unless one of its middlewares
 * rejects the run or closes the promise. The promise
 * itself uses the deadline in one place: recover_and_retry makes no new
 * attempt once it has passed.
 *
 * Middlewares: a promise has default middlewares. A step's own middlewares
 * are appended to the defaults (WK_MW_APPEND) or replace them
 * (WK_MW_OVERRIDE). Before each run of a step the befores run in order with
 * the step's event key (the step's key, or else the promise's, or else "");
 * a rejection fails that run with the middleware's error, the afters of the
 * middlewares that had admitted it run in reverse order, and the step is
 * not called. After an admitted run the afters run in reverse order with
 * the run's outcome and the latency from the befores to the end of run() or
 * to wk_settle(), read on the promise's clock. Every admitted run gets its
 * afters, also when the promise was closed meanwhile. Befores and afters of
 * a synchronous step run on the thread that runs the step; those of an
 * asynchronous step run on the thread that reached it and on the settling
 * thread.
 *
 * Cancellation: wk_promise_close() cancels the promise's context, so a running
 * step sees wk_ctx_cancelled(); an asynchronous step's cancel hook runs; no
 * later step runs; waiters and the on-settle callback get WK_ERR_CANCELLED.
 * A settle that arrives after close is dropped and its value freed. If the
 * parent context is cancelled, the chain stops at the next link and settles
 * with WK_ERR_CANCELLED; a run in progress then is not told.
 *
 * Ownership of values:
 *   - a step's output value (struct wk_value) belongs to the promise from the
 *     moment the step returns WK_OK or settles with WK_OK; the promise frees
 *     it with the value's free function when a later output replaces it, or
 *     when the promise is freed;
 *   - the value a step receives as `last` is borrowed for the duration of the
 *     call (for an asynchronous step: until it settles). A step may pass it
 *     on unchanged by setting *out = *last: an output whose pointer is that
 *     of `last` keeps the value as it is and is never freed twice;
 *   - an output written by a step that then returns an error is freed by the
 *     promise at once;
 *   - steps that never run produce nothing and free nothing; args passed to
 *     steps stay owned by the caller and must outlive the promise.
 *
 * Memory: the promise is reference counted. wk_promise_free() drops the
 * owner's reference; a started chain keeps its own until its last link, or
 * the settle of a run outstanding at close, is done. So free may come first.
 *
 * Thread safety: building calls (new, then, on_exception, recover_and_retry,
 * on_settle, start) must come from one thread before or at start. get, wait,
 * settled, close, and free may be called from any thread that holds the
 * owner's reference, at any time, including from inside a step or the
 * on-settle callback. Inside one of its own steps, get and wait return
 * WK_ERR_INVALID instead of waiting for themselves.
 */
#ifndef WORKSHOP_PROMISE_H
#define WORKSHOP_PROMISE_H

#include <stdbool.h>
#include <stddef.h>

#include "workshop/clock.h"
#include "workshop/ctx.h"
#include "workshop/middleware.h"
#include "workshop/pool.h"

/* A value passed along the chain, with the function that frees it. */
struct wk_value {
    void *ptr;
    void (*free)(void *ptr); /* NULL when ptr needs no freeing */
};

/* Frees v's pointer with its free function and clears v. Safe on NULL. */
void wk_value_clear(struct wk_value *v);

/* Moves *from into the result and clears *from. */
struct wk_value wk_value_take(struct wk_value *from);

/* A synchronous step: returns WK_OK and sets *out, or returns an error. */
typedef int wk_step_fn(struct wk_ctx *ctx, void *arg,
                       const struct wk_value *last, struct wk_value *out);

/*
 * An exception step: sees the error err and the last good value. Returns
 * WK_OK and sets *out to recover, or an error to stay in failure.
 */
typedef int wk_recover_fn(struct wk_ctx *ctx, void *arg, int err,
                          const struct wk_value *last, struct wk_value *out);

struct wk_settle;

/*
 * An asynchronous step: starts work and returns. The work later calls
 * wk_settle(settle, ...) exactly once, from any thread.
 */
typedef void wk_async_fn(struct wk_ctx *ctx, void *arg,
                         const struct wk_value *last, struct wk_settle *settle);

/*
 * Settles an asynchronous step with err and, on success, value (whose
 * ownership moves to the promise; on an error it is freed). Must be called
 * exactly once per run of the step; a second call that the promise can still
 * detect aborts the process with a message. The chain goes on on the calling
 * thread, unless run_async() has not returned yet: then its thread goes on
 * once it returns. After the promise was closed the settle is dropped: the
 * step's afters run, value is freed, and no later link runs. The settle
 * handle is invalid after the call.
 *
 * If the promise's close is running the step's cancel hook on another thread,
 * wk_settle() waits for the hook to return, so that after wk_settle() the
 * hook is neither running nor due; do not call it holding a lock the hook
 * takes.
 */
void wk_settle(struct wk_settle *settle, int err, struct wk_value value);

/*
 * Registers fn(arg) to run once if the promise is closed while this step is
 * running, so the step can abort its work. The step must still call
 * wk_settle(). Must be called before wk_settle(), from the step's own
 * run_async() call. fn runs on the thread that calls wk_promise_close(), or
 * at once on this thread if the promise was closed already, and may run
 * concurrently with the step's work. It may call wk_settle() itself.
 */
void wk_settle_on_cancel(struct wk_settle *settle, void (*fn)(void *arg),
                         void *arg);

/* Returns the context of the step that settle belongs to. */
struct wk_ctx *wk_settle_ctx(struct wk_settle *settle);

enum wk_middleware_mode {
    WK_MW_APPEND = 0, /* the step's middlewares run after the promise's */
    WK_MW_OVERRIDE,   /* the step's middlewares replace the promise's */
};

/* One step. Exactly one of run and run_async is set. */
struct wk_step {
    wk_step_fn *run;
    wk_async_fn *run_async;
    void *arg;
    const char *key; /* event key for middlewares, copied; NULL: the
                        promise's key */
    const struct wk_middleware *middlewares; /* copied by the promise */
    size_t middleware_count;
    enum wk_middleware_mode middleware_mode;
};

struct wk_promise_opts {
    struct wk_pool *pool;         /* runs synchronous steps; NULL: inline */
    struct wk_ctx *parent;        /* parent context, or NULL */
    wk_time deadline;             /* absolute; 0 or WK_TIME_NEVER for none */
    const struct wk_clock *clock; /* NULL: monotonic */
    const char *key;              /* default event key; copied */
    const struct wk_middleware *middlewares; /* defaults; copied */
    size_t middleware_count;
};

struct wk_promise;

/*
 * Creates a promise whose chain starts with first. opts may be NULL for all
 * defaults. Returns NULL when out of memory or when first is invalid. The
 * caller owns the promise and releases it with wk_promise_free().
 */
struct wk_promise *wk_promise_new(const struct wk_promise_opts *opts,
                                  const struct wk_step *first);

/* Appends a step that runs on success. WK_ERR_INVALID after start. */
int wk_promise_then(struct wk_promise *p, const struct wk_step *step);

/* Appends an exception step. WK_ERR_INVALID after start. */
int wk_promise_on_exception(struct wk_promise *p, wk_recover_fn *fn, void *arg);

/*
 * Makes the last appended step retried on failure: fn recovers, then the step
 * runs again with fn's output as `last`, up to max_attempts runs of the step
 * in all (at least 1). WK_ERR_INVALID after start or when there is no step
 * before it.
 */
int wk_promise_recover_and_retry(struct wk_promise *p, wk_recover_fn *fn,
                                 void *arg, unsigned max_attempts);

/*
 * Called once when a started chain settles, on the thread that settled it:
 * the one that ran the last link, or the one that called close. It gets the
 * final error and the chain's value, which is the final value on WK_OK, the
 * last good value on a failure, and an empty value after close. The callback
 * may take the value (copy it, then clear *value); otherwise the promise keeps
 * it for get() and frees it with the promise. get() and wait() on other threads
 * return once the callback has returned; inside it they return the result at
 * once. A promise that is never started, or closed before start, never calls
 * it. Register before start; WK_ERR_INVALID after.
 */
typedef void wk_settled_fn(void *arg, int err, struct wk_value *value);
int wk_promise_on_settle(struct wk_promise *p, wk_settled_fn *fn, void *arg);

/*
 * Starts the chain. Returns WK_OK; WK_ERR_INVALID if it was already started;
 * WK_ERR_CANCELLED if it was closed before, and then nothing runs.
 */
int wk_promise_start(struct wk_promise *p);

/*
 * Waits until the chain settles or deadline (absolute, on the promise's
 * clock; WK_TIME_NEVER to wait without limit) passes. Returns the chain's
 * error, or WK_ERR_TIMED_OUT when the deadline passed first; then the chain
 * goes on. On WK_OK, *value (if not NULL) points to the final value, owned by
 * the promise and valid until wk_promise_free(); otherwise *value is NULL.
 * A closed promise, even one never started, returns WK_ERR_CANCELLED. With a
 * clock other than wk_clock_monotonic the waiter re-reads the clock every
 * millisecond, so a manual clock moved past the deadline ends the wait.
 */
int wk_promise_get(struct wk_promise *p, wk_time deadline,
                   const struct wk_value **value);

/* Like wk_promise_get() without the value. */
int wk_promise_wait(struct wk_promise *p, wk_time deadline);

/* Returns true once the chain's result is fixed (settled or closed). */
bool wk_promise_settled(struct wk_promise *p);

/*
 * Cancels the chain as described above; does nothing once it has settled.
 * Runs the cancel hook of a step in progress and then on_settle, on this
 * thread. Safe to call more than once.
 */
void wk_promise_close(struct wk_promise *p);

/*
 * Closes the promise if it has not settled, drops the caller's reference and
 * sets *p to NULL. The memory goes once no step or callback still uses it.
 * Safe on NULL.
 */
void wk_promise_free(struct wk_promise **p);

/* Returns the promise's context (borrowed; valid until free). */
struct wk_ctx *wk_promise_ctx(struct wk_promise *p);

#endif /* WORKSHOP_PROMISE_H */
