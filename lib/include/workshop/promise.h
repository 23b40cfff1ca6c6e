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
 *     max_attempts runs of the step in all. When the attempts are used up, or
 *     the recovery itself fails, the chain continues in failure.
 *
 * The chain settles when its last link has run, or when it is closed.
 *
 * Steps are synchronous (run() executes on a pool thread, or inline on the
 * thread that reached the step when the promise has no pool) or asynchronous
 * (run_async() starts work on the thread that reached the step and returns at
 * once; the work settles the step later, from any thread, through the settle
 * handle, exactly once).
 *
 * Middlewares: a promise has default middlewares. A step's own middlewares
 * are appended to the defaults (WK_MW_APPEND) or replace them
 * (WK_MW_OVERRIDE). Before each run of a step the befores run with the step's
 * event key (the step's key, or else the promise's); a rejection fails that
 * run with the middleware's error. After the run the afters see its outcome
 * and latency.
 *
 * Cancellation: wk_promise_close() cancels the promise's context, so a running
 * step sees wk_ctx_cancelled(); an asynchronous step's cancel hook runs; no
 * later step runs; waiters and the on-settle callback get WK_ERR_CANCELLED.
 * A settle that arrives after close is dropped and its value freed.
 *
 * Ownership of values:
 *   - a step's output value (struct wk_value) belongs to the promise from the
 *     moment the step returns WK_OK or settles; the promise frees it with the
 *     value's free function once the next link has run, or, for the final
 *     value, when the promise is freed;
 *   - the value a step receives as `last` is borrowed for the duration of the
 *     call (for an asynchronous step: until it settles);
 *   - an output written by a step that then returns an error is freed by the
 *     promise at once;
 *   - steps that never run produce nothing and free nothing; args passed to
 *     steps stay owned by the caller and must outlive the promise.
 *
 * Thread safety: building calls (new, then, on_exception, recover_and_retry,
 * on_settle, start) must come from one thread before or at start. get, wait,
 * close, and free may be called from any thread, at any time, including from
 * inside a step or the on-settle callback.
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
                         const struct wk_value *last,
                         struct wk_settle *settle);

/*
 * Settles an asynchronous step with err and, on success, value (whose
 * ownership moves to the promise). Must be called exactly once per run of the
 * step. After the promise was closed the settle is dropped: value is freed and
 * nothing else happens. The settle handle is invalid after the call.
 */
void wk_settle(struct wk_settle *settle, int err, struct wk_value value);

/*
 * Registers fn(arg) to run once if the promise is closed while this step is
 * running, so the step can abort its work; the step must still call
 * wk_settle(). Must be called before wk_settle(), from the step's own
 * run_async() call. fn may run on any thread, and concurrently with the
 * step's work.
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
    const char *key; /* event key for middlewares; NULL: the promise's key */
    const struct wk_middleware *middlewares; /* copied by the promise */
    size_t middleware_count;
    enum wk_middleware_mode middleware_mode;
};

struct wk_promise_opts {
    struct wk_pool *pool;       /* runs synchronous steps; NULL: inline */
    struct wk_ctx *parent;      /* parent context, or NULL */
    wk_time deadline;           /* absolute; 0 or WK_TIME_NEVER for none */
    const struct wk_clock *clock; /* NULL: monotonic */
    const char *key;            /* default event key; copied */
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
int wk_promise_on_exception(struct wk_promise *p, wk_recover_fn *fn,
                            void *arg);

/*
 * Makes the last appended step retried on failure: fn recovers, then the step
 * runs again with fn's output as `last`, up to max_attempts runs of the step
 * in all (at least 1). WK_ERR_INVALID after start or when there is no step
 * before it.
 */
int wk_promise_recover_and_retry(struct wk_promise *p, wk_recover_fn *fn,
                                 void *arg, unsigned max_attempts);

/*
 * Called once when the chain settles, on the thread that settled it, with
 * the final error and value. The callback may take the value (copy it, then
 * clear *value); otherwise the promise keeps it for get() and frees it with
 * the promise. Register before start.
 */
typedef void wk_settled_fn(void *arg, int err, struct wk_value *value);
int wk_promise_on_settle(struct wk_promise *p, wk_settled_fn *fn, void *arg);

/* Starts the chain. Returns WK_OK, or an error if it was already started. */
int wk_promise_start(struct wk_promise *p);

/*
 * Waits until the chain settles or deadline (absolute, on the promise's
 * clock; WK_TIME_NEVER to wait without limit) passes. Returns the chain's
 * error, or WK_ERR_TIMED_OUT when the deadline passed first; then the chain
 * goes on. On WK_OK, *value (if not NULL) points to the final value, owned by
 * the promise and valid until wk_promise_free().
 */
int wk_promise_get(struct wk_promise *p, wk_time deadline,
                   const struct wk_value **value);

/* Like wk_promise_get() without the value. */
int wk_promise_wait(struct wk_promise *p, wk_time deadline);

/* Returns true once the chain has settled. */
bool wk_promise_settled(struct wk_promise *p);

/* Cancels the chain as described above. Safe to call more than once. */
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
