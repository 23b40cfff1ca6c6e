/*
 * Driving a promise's chain: choosing the next job, running it on the right
 * thread with its middlewares, folding its outcome into the chain, settling.
 *
 * Exactly one thread drives a chain at any moment. A drive runs jobs in a
 * loop until the chain ends or a job has to happen elsewhere. A synchronous
 * job is handed to the pool, unless this thread is one of its workers. An
 * asynchronous step hands the drive to whichever thread calls wk_settle().
 * A settle that comes before run_async() has returned is only recorded, and
 * the thread that called run_async() drives on, so an inline settle does
 * not recurse.
 *
 * The drive holds a reference on the promise from wk_promise_start() until
 * the chain ends and no run is left outstanding; a settle that arrives after
 * close therefore still finds the promise and only drops its value.
 */
#include "promise_internal.h"

#include <stdio.h>
#include <stdlib.h>

#include "workshop/error.h"

_Thread_local struct wk_promise *wk__promise_running_here;

enum entry {
    ENTRY_SELECT,  /* choose how to run the job at the cursor */
    ENTRY_RUN,     /* run the synchronous job at the cursor on this thread */
    ENTRY_OUTCOME, /* fold in the outcome of the job at the cursor */
};

static void drive(struct wk_promise *p, enum entry entry, struct outcome oc);

static const char *
event_key(const struct wk_promise *p, const struct link *l)
{
    return l->key != NULL ? l->key : p->key;
}

static size_t
default_count(const struct wk_promise *p, const struct link *l)
{
    return l->with_defaults ? p->mw_count : 0;
}

/*
 * Runs the befores of the step at the cursor: the promise's (for
 * WK_MW_APPEND), then the step's. Returns WK_OK when all admitted, else the
 * rejecting error after the afters of those that admitted have run.
 */
static int
run_befores(struct wk_promise *p, const struct link *l)
{
    size_t defaults = default_count(p, l);

    if (defaults + l->mw_count == 0)
        return WK_OK;

    const char *key = event_key(p, l);
    wk_time now = wk_clock_now(p->ctx.clock);
    int err = wk_middleware_before_all(p->mws, defaults, key, now, l->tokens);

    if (err != WK_OK)
        return err;
    err = wk_middleware_before_all(l->mws, l->mw_count, key, now,
                                   l->tokens + defaults);
    if (err != WK_OK) {
        /* The step's own afters ran; the defaults' come after, as reversed. */
        wk_middleware_after_all(p->mws, defaults, key, l->tokens, err, now,
                                now);
        return err;
    }
    p->admitted = true;
    p->run_started = now;
    return WK_OK;
}

/* Runs the afters of an admitted run, in reverse order, with outcome err. */
static void
run_afters(struct wk_promise *p, const struct link *l, int err)
{
    size_t defaults = default_count(p, l);
    const char *key = event_key(p, l);
    wk_time now = wk_clock_now(p->ctx.clock);

    p->admitted = false;
    wk_middleware_after_all(l->mws, l->mw_count, key, l->tokens + defaults, err,
                            p->run_started, now);
    wk_middleware_after_all(p->mws, defaults, key, l->tokens, err,
                            p->run_started, now);
}

/* Frees an output that the chain does not keep, unless it is `last` itself. */
static void
drop_output(struct wk_promise *p, struct wk_value *out)
{
    if (out->ptr != NULL && out->ptr == p->value.ptr)
        *out = (struct wk_value){0};
    else
        wk_value_clear(out);
}

/*
 * Makes out the chain's value. An output that is `last` itself (a step that
 * passed its input on) keeps the value as it is, free function included.
 */
static void
keep_output(struct wk_promise *p, struct wk_value *out)
{
    if (out->ptr != NULL && out->ptr == p->value.ptr) {
        *out = (struct wk_value){0};
        return;
    }
    wk_value_clear(&p->value);
    p->value = wk_value_take(out);
}

/* Moves the cursor past the current link to the next one that applies. */
static void
next_link(struct wk_promise *p)
{
    struct link *l = p->cursor->next;
    bool failing = p->chain_err != WK_OK;

    while (l != NULL && failing != (l->kind == LINK_EXCEPTION))
        l = l->next;
    p->cursor = l;
    p->attempt = 0;
    if (l != NULL)
        p->job = l->kind == LINK_EXCEPTION ? JOB_CATCH : JOB_STEP;
}

/* Returns true when the failed run at the cursor gets another attempt. */
static bool
may_retry(struct wk_promise *p, const struct link *l)
{
    return l->retry_fn != NULL && p->attempt < l->max_attempts &&
           wk_ctx_err(&p->ctx) == WK_OK;
}

/* Folds the outcome of the job at the cursor into the chain. */
static void
apply_outcome(struct wk_promise *p, struct outcome *oc)
{
    const struct link *l = p->cursor;

    if (p->admitted)
        run_afters(p, l, oc->err);
    if (atomic_load_explicit(&p->closed, memory_order_acquire)) {
        drop_output(p, &oc->value);
        return;
    }

    if (oc->err == WK_OK)
        keep_output(p, &oc->value);
    else
        drop_output(p, &oc->value);

    switch (p->job) {
    case JOB_STEP:
        p->attempt++;
        if (oc->err != WK_OK && may_retry(p, l)) {
            p->step_err = oc->err;
            p->job = JOB_RECOVER;
            return;
        }
        p->chain_err = oc->err;
        break;
    case JOB_RECOVER:
        if (oc->err == WK_OK) {
            p->job = JOB_STEP;
            return;
        }
        p->chain_err = oc->err;
        break;
    case JOB_CATCH:
        p->chain_err = oc->err;
        break;
    }
    next_link(p);
}

/* Runs the synchronous job at the cursor on this thread. */
static struct outcome
run_here(struct wk_promise *p)
{
    const struct link *l = p->cursor;
    struct outcome oc = {0};
    struct wk_promise *outer = wk__promise_running_here;

    wk__promise_running_here = p;
    switch (p->job) {
    case JOB_STEP:
        oc.err = run_befores(p, l);
        if (oc.err == WK_OK)
            oc.err = l->run(&p->ctx, l->arg, &p->value, &oc.value);
        break;
    case JOB_RECOVER:
        oc.err = l->retry_fn(&p->ctx, l->retry_arg, p->step_err, &p->value,
                             &oc.value);
        break;
    case JOB_CATCH:
        oc.err =
            l->recover(&p->ctx, l->arg, p->chain_err, &p->value, &oc.value);
        break;
    }
    wk__promise_running_here = outer;
    return oc;
}

/*
 * Starts the asynchronous step at the cursor. Returns true with *oc set when
 * the outcome is already known, because a middleware rejected or the step
 * settled before run_async() returned. Returns false when wk_settle() will
 * drive on.
 */
static bool
start_async(struct wk_promise *p, struct outcome *oc)
{
    const struct link *l = p->cursor;
    int err = run_befores(p, l);

    if (err != WK_OK) {
        *oc = (struct outcome){.err = err};
        return true;
    }

    pthread_mutex_lock(&p->mu);
    if (atomic_load_explicit(&p->closed, memory_order_relaxed)) {
        /* Closed since the drive last looked: the call must not start. */
        pthread_mutex_unlock(&p->mu);
        *oc = (struct outcome){.err = WK_ERR_CANCELLED};
        return true;
    }
    p->async = ASYNC_CALLING;
    p->hook_fn = NULL;
    p->hook_fired = false;
    pthread_mutex_unlock(&p->mu);

    struct wk_promise *outer = wk__promise_running_here;

    wk__promise_running_here = p;
    l->run_async(&p->ctx, l->arg, &p->value, &p->settle);
    wk__promise_running_here = outer;

    pthread_mutex_lock(&p->mu);
    if (p->async == ASYNC_SETTLED) {
        *oc = p->early;
        p->early = (struct outcome){0};
        p->async = ASYNC_IDLE;
        pthread_mutex_unlock(&p->mu);
        return true;
    }
    /* From here on the settling thread owns the drive; p may be freed. */
    p->async = ASYNC_WAITING;
    pthread_mutex_unlock(&p->mu);
    return false;
}

void
wk__promise_notify(struct wk_promise *p, int err, struct wk_value *value)
{
    if (p->on_settle != NULL) {
        struct wk_promise *outer = wk__promise_running_here;

        wk__promise_running_here = p;
        p->on_settle(p->on_settle_arg, err, value);
        wk__promise_running_here = outer;
    }

    pthread_mutex_lock(&p->mu);
    p->published = true;
    if (p->sleepers > 0)
        pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
}

/*
 * Ends the drive: settles the promise unless close already did, then drops
 * the drive's reference. A cursor left short of the end means the chain was
 * cancelled.
 */
static void
finish(struct wk_promise *p)
{
    int err = p->cursor != NULL ? WK_ERR_CANCELLED : p->chain_err;

    pthread_mutex_lock(&p->mu);
    bool decided = p->decided;

    p->decided = true;
    if (!decided)
        p->result = err;
    pthread_mutex_unlock(&p->mu);

    if (!decided)
        wk__promise_notify(p, err, &p->value);
    wk__promise_unref(p);
}

static void
pool_run(void *arg)
{
    drive(arg, ENTRY_SELECT, (struct outcome){0});
}

/* The pool was shut down with WK_POOL_CANCEL before the job ran. */
static void
pool_cancel(void *arg)
{
    struct wk_promise *p = arg;

    p->chain_err = WK_ERR_CANCELLED;
    p->cursor = NULL;
    finish(p);
}

/*
 * Decides where the job at the cursor runs. Returns ENTRY_RUN to run it here,
 * ENTRY_OUTCOME with *oc set when its outcome is known at once, or
 * ENTRY_SELECT when another thread has taken over the drive.
 */
static enum entry
dispatch(struct wk_promise *p, struct outcome *oc)
{
    const struct link *l = p->cursor;

    if (p->job == JOB_STEP && l->run_async != NULL)
        return start_async(p, oc) ? ENTRY_OUTCOME : ENTRY_SELECT;
    if (p->pool == NULL || wk_pool_is_worker(p->pool))
        return ENTRY_RUN;
    if (wk_pool_submit(p->pool, pool_run, pool_cancel, p) == WK_OK)
        return ENTRY_SELECT;
    *oc = (struct outcome){.err = WK_ERR_REJECTED};
    return ENTRY_OUTCOME;
}

/* Runs the chain on this thread until it ends or moves to another thread. */
static void
drive(struct wk_promise *p, enum entry entry, struct outcome oc)
{
    for (;;) {
        if (entry == ENTRY_RUN) {
            oc = run_here(p);
            entry = ENTRY_OUTCOME;
        }
        if (entry == ENTRY_OUTCOME)
            apply_outcome(p, &oc);

        if (p->cursor == NULL ||
            atomic_load_explicit(&p->closed, memory_order_acquire) ||
            wk_ctx_cancelled(&p->ctx)) {
            finish(p);
            return;
        }

        entry = dispatch(p, &oc);
        if (entry == ENTRY_SELECT)
            return;
    }
}

void
wk__promise_drive_start(struct wk_promise *p)
{
    drive(p, ENTRY_SELECT, (struct outcome){0});
}

void
wk__promise_run_hook(struct wk_promise *p, void (*fn)(void *arg), void *arg)
{
    fn(arg);
    pthread_mutex_lock(&p->mu);
    p->hook_running = false;
    if (p->sleepers > 0)
        pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
}

void
wk_settle(struct wk_settle *settle, int err, struct wk_value value)
{
    struct wk_promise *p = settle->promise;
    struct outcome oc = {.err = err, .value = value};

    pthread_mutex_lock(&p->mu);
    if (p->async != ASYNC_CALLING && p->async != ASYNC_WAITING) {
        /* The handle may already be reused: carrying on corrupts the chain. */
        fprintf(stderr, "wk_settle: no asynchronous step is waiting "
                        "(settled twice?)\n");
        abort();
    }
    /* After wk_settle() the step's resources may go: no hook may run on. */
    while (p->hook_running && !pthread_equal(p->hook_thread, pthread_self())) {
        p->sleepers++;
        pthread_cond_wait(&p->cond, &p->mu);
        p->sleepers--;
    }
    p->hook_fn = NULL;
    if (p->async == ASYNC_CALLING) {
        p->early = oc;
        p->async = ASYNC_SETTLED;
        pthread_mutex_unlock(&p->mu);
        return;
    }
    p->async = ASYNC_IDLE;
    pthread_mutex_unlock(&p->mu);
    drive(p, ENTRY_OUTCOME, oc);
}

bool
wk__promise_take_hook_locked(struct wk_promise *p, void (**fn)(void *),
                             void **arg)
{
    if (!atomic_load_explicit(&p->closed, memory_order_relaxed))
        return false;
    if (p->async != ASYNC_CALLING && p->async != ASYNC_WAITING)
        return false;
    if (p->hook_fn == NULL || p->hook_fired)
        return false;
    p->hook_fired = true;
    p->hook_running = true;
    p->hook_thread = pthread_self();
    *fn = p->hook_fn;
    *arg = p->hook_arg;
    return true;
}

void
wk_settle_on_cancel(struct wk_settle *settle, void (*fn)(void *arg), void *arg)
{
    struct wk_promise *p = settle->promise;
    void (*hook)(void *) = NULL;
    void *hook_arg = NULL;

    pthread_mutex_lock(&p->mu);
    p->hook_fn = fn;
    p->hook_arg = arg;
    /* Closed before the step could register: cancel it right away. */
    bool fire = wk__promise_take_hook_locked(p, &hook, &hook_arg);
    pthread_mutex_unlock(&p->mu);
    if (fire)
        wk__promise_run_hook(p, hook, hook_arg);
}

struct wk_ctx *
wk_settle_ctx(struct wk_settle *settle)
{
    return &settle->promise->ctx;
}
