/*
 * Promises: building a chain, starting it, waiting for it, closing and
 * freeing it. The code that runs the chain is in promise_run.c.
 *
 * A promise, its context, its first link and the copies of the default
 * middlewares and keys live in one allocation. Each later link costs one
 * more.
 * The memory goes when the owner's reference and the running chain's are
 * both gone and nobody holds a reference to the promise's context.
 */
#include "promise_internal.h"

#include <assert.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "workshop/error.h"

/* A waiter on another clock than the monotonic one re-reads it this often. */
#define POLL_INTERVAL WK_MSEC(1)
/* Maximum single sleep in a wait, so a timespec never overflows. */
#define MAX_SLEEP WK_SEC(3600)

static_assert(sizeof(struct wk_middleware) % alignof(void *) == 0,
              "middleware copies keep the tokens after them aligned");

void
wk_value_clear(struct wk_value *v)
{
    if (v == NULL)
        return;
    if (v->free != NULL && v->ptr != NULL)
        v->free(v->ptr);
    *v = (struct wk_value){0};
}

struct wk_value
wk_value_take(struct wk_value *from)
{
    struct wk_value v = *from;

    *from = (struct wk_value){0};
    return v;
}

/* Hands out consecutive pieces of an allocation sized beforehand. */
struct carver {
    char *next;
};

static void *
carve(struct carver *c, size_t size)
{
    void *ptr = c->next;

    c->next += size;
    return ptr;
}

static const char *
carve_string(struct carver *c, const char *s)
{
    if (s == NULL)
        return NULL;

    size_t len = strlen(s) + 1;

    return memcpy(carve(c, len), s, len);
}

static bool
middlewares_valid(const struct wk_middleware *mws, size_t count)
{
    if (count > 0 && mws == NULL)
        return false;
    for (size_t i = 0; i < count; i++) {
        if (mws[i].ops == NULL)
            return false;
    }
    return true;
}

static bool
step_valid(const struct wk_step *step)
{
    if (step == NULL || (step->run == NULL) == (step->run_async == NULL))
        return false;
    if (step->middleware_mode != WK_MW_APPEND &&
        step->middleware_mode != WK_MW_OVERRIDE)
        return false;
    return middlewares_valid(step->middlewares, step->middleware_count);
}

static size_t
token_count(const struct wk_step *step, size_t defaults)
{
    size_t own = step->middleware_count;

    return step->middleware_mode == WK_MW_APPEND ? defaults + own : own;
}

/* Bytes behind a link for its middlewares, tokens and key, in that order. */
static size_t
link_extra(const struct wk_step *step, size_t defaults)
{
    size_t size = step->middleware_count * sizeof(struct wk_middleware) +
                  token_count(step, defaults) * sizeof(void *);

    if (step->key != NULL)
        size += strlen(step->key) + 1;
    return size;
}

/*
 * Fills l from step, carving its middleware copies and tokens from c. The
 * caller carves the key itself afterwards, so that every string comes after
 * every pointer-aligned piece.
 */
static void
link_init(struct link *l, const struct wk_step *step, size_t defaults,
          struct carver *c)
{
    size_t mw_bytes = step->middleware_count * sizeof(struct wk_middleware);
    struct wk_middleware *mws = carve(c, mw_bytes);

    if (mw_bytes > 0)
        memcpy(mws, step->middlewares, mw_bytes);
    *l = (struct link){
        .kind = LINK_STEP,
        .run = step->run,
        .run_async = step->run_async,
        .arg = step->arg,
        .max_attempts = 1,
        .mws = mws,
        .mw_count = step->middleware_count,
        .with_defaults = step->middleware_mode == WK_MW_APPEND,
        .tokens = carve(c, token_count(step, defaults) * sizeof(void *)),
    };
}

static void
release_block(struct wk_ctx *ctx)
{
    free((char *)ctx - offsetof(struct wk_promise, ctx));
}

static bool
sync_init(struct wk_promise *p)
{
    pthread_condattr_t attr;
    bool ok = false;

    if (pthread_condattr_init(&attr) != 0)
        return false;
    if (pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&p->cond, &attr) != 0)
        goto out;
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        pthread_cond_destroy(&p->cond);
        goto out;
    }
    ok = true;
out:
    pthread_condattr_destroy(&attr);
    return ok;
}

struct wk_promise *
wk_promise_new(const struct wk_promise_opts *opts, const struct wk_step *first)
{
    static const struct wk_promise_opts no_opts = {0};

    if (opts == NULL)
        opts = &no_opts;
    if (!step_valid(first) ||
        !middlewares_valid(opts->middlewares, opts->middleware_count))
        return NULL;

    size_t defaults = opts->middleware_count;
    size_t mw_bytes = defaults * sizeof(struct wk_middleware);
    size_t size = sizeof(struct wk_promise) + mw_bytes +
                  link_extra(first, defaults) +
                  (opts->key != NULL ? strlen(opts->key) + 1 : 0);
    struct wk_promise *p = calloc(1, size);

    if (p == NULL)
        return NULL;
    if (!sync_init(p)) {
        free(p);
        return NULL;
    }

    struct carver c = {.next = (char *)(p + 1)};
    struct wk_middleware *mws = carve(&c, mw_bytes);

    if (mw_bytes > 0)
        memcpy(mws, opts->middlewares, mw_bytes);
    p->mws = mws;
    p->mw_count = defaults;
    link_init(&p->first, first, defaults, &c);
    p->first.key = carve_string(&c, first->key);
    p->key = opts->key != NULL ? carve_string(&c, opts->key) : "";

    atomic_init(&p->refs, 1);
    atomic_init(&p->closed, false);
    p->pool = opts->pool;
    p->settle.promise = p;
    p->head = p->tail = p->cursor = &p->first;
    p->job = JOB_STEP;

    wk_time deadline = opts->deadline == 0 ? WK_TIME_NEVER : opts->deadline;

    wk__ctx_init_embedded(&p->ctx, opts->parent, deadline, opts->clock,
                          release_block);
    return p;
}

/* Returns true while building calls are allowed. */
static bool
building(struct wk_promise *p)
{
    pthread_mutex_lock(&p->mu);
    bool ok = !p->started;
    pthread_mutex_unlock(&p->mu);
    return ok;
}

static void
append_link(struct wk_promise *p, struct link *l)
{
    p->tail->next = l;
    p->tail = l;
}

int
wk_promise_then(struct wk_promise *p, const struct wk_step *step)
{
    if (!step_valid(step) || !building(p))
        return WK_ERR_INVALID;

    struct link *l = malloc(sizeof(*l) + link_extra(step, p->mw_count));

    if (l == NULL)
        return WK_ERR_NOMEM;

    struct carver c = {.next = (char *)(l + 1)};

    link_init(l, step, p->mw_count, &c);
    l->key = carve_string(&c, step->key);
    append_link(p, l);
    return WK_OK;
}

int
wk_promise_on_exception(struct wk_promise *p, wk_recover_fn *fn, void *arg)
{
    if (fn == NULL || !building(p))
        return WK_ERR_INVALID;

    struct link *l = malloc(sizeof(*l));

    if (l == NULL)
        return WK_ERR_NOMEM;
    *l = (struct link){
        .kind = LINK_EXCEPTION,
        .recover = fn,
        .arg = arg,
        .max_attempts = 1,
    };
    append_link(p, l);
    return WK_OK;
}

int
wk_promise_recover_and_retry(struct wk_promise *p, wk_recover_fn *fn, void *arg,
                             unsigned max_attempts)
{
    if (fn == NULL || max_attempts == 0 || !building(p))
        return WK_ERR_INVALID;

    struct link *l = p->tail;

    if (l->kind != LINK_STEP || l->retry_fn != NULL)
        return WK_ERR_INVALID;
    l->retry_fn = fn;
    l->retry_arg = arg;
    l->max_attempts = max_attempts;
    return WK_OK;
}

int
wk_promise_on_settle(struct wk_promise *p, wk_settled_fn *fn, void *arg)
{
    if (!building(p))
        return WK_ERR_INVALID;
    p->on_settle = fn;
    p->on_settle_arg = arg;
    return WK_OK;
}

int
wk_promise_start(struct wk_promise *p)
{
    pthread_mutex_lock(&p->mu);
    if (p->started) {
        pthread_mutex_unlock(&p->mu);
        return WK_ERR_INVALID;
    }
    p->started = true;
    if (atomic_load_explicit(&p->closed, memory_order_relaxed)) {
        pthread_mutex_unlock(&p->mu);
        return WK_ERR_CANCELLED;
    }
    /* The running chain's reference, dropped when it ends. */
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&p->mu);

    wk__promise_drive_start(p);
    return WK_OK;
}

static bool
is_monotonic(const struct wk_clock *clock)
{
    return clock == &wk_clock_monotonic || clock->now == wk_clock_monotonic.now;
}

/*
 * Sleeps on p->cond until woken, or until deadline on the promise's clock.
 * Returns false, without sleeping, once the deadline has passed. Caller
 * holds mu.
 */
static bool
sleep_locked(struct wk_promise *p, wk_time deadline)
{
    p->sleepers++;
    if (deadline == WK_TIME_NEVER) {
        pthread_cond_wait(&p->cond, &p->mu);
        p->sleepers--;
        return true;
    }

    const struct wk_clock *clock = p->ctx.clock;
    wk_time now = wk_clock_now(clock);

    if (now >= deadline) {
        p->sleepers--;
        return false;
    }

    wk_duration left = deadline - now;

    if (!is_monotonic(clock) && left > POLL_INTERVAL)
        left = POLL_INTERVAL;
    if (left > MAX_SLEEP)
        left = MAX_SLEEP;

    wk_time until = wk_clock_now(&wk_clock_monotonic) + left;
    struct timespec ts = {
        .tv_sec = (time_t)(until / WK_NSEC_PER_SEC),
        .tv_nsec = (long)(until % WK_NSEC_PER_SEC),
    };

    pthread_cond_timedwait(&p->cond, &p->mu, &ts);
    p->sleepers--;
    return true;
}

int
wk_promise_get(struct wk_promise *p, wk_time deadline,
               const struct wk_value **value)
{
    int err;

    pthread_mutex_lock(&p->mu);
    if (!p->published && wk__promise_running_here == p) {
        /*
         * Inside one of p's steps the chain cannot settle while we wait;
         * inside its on_settle callback the result is already fixed.
         */
        err = p->decided ? p->result : WK_ERR_INVALID;
        goto out;
    }
    while (!p->published) {
        if (!sleep_locked(p, deadline)) {
            pthread_mutex_unlock(&p->mu);
            if (value != NULL)
                *value = NULL;
            return WK_ERR_TIMED_OUT;
        }
    }
    err = p->result;
out:
    pthread_mutex_unlock(&p->mu);
    if (value != NULL)
        *value = err == WK_OK ? &p->value : NULL;
    return err;
}

int
wk_promise_wait(struct wk_promise *p, wk_time deadline)
{
    return wk_promise_get(p, deadline, NULL);
}

bool
wk_promise_settled(struct wk_promise *p)
{
    pthread_mutex_lock(&p->mu);
    bool settled = p->decided;
    pthread_mutex_unlock(&p->mu);
    return settled;
}

void
wk_promise_close(struct wk_promise *p)
{
    void (*hook)(void *) = NULL;
    void *hook_arg = NULL;

    pthread_mutex_lock(&p->mu);
    if (p->decided || atomic_load_explicit(&p->closed, memory_order_relaxed)) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    atomic_store_explicit(&p->closed, true, memory_order_release);
    wk_ctx_cancel(&p->ctx);
    p->decided = true;
    p->result = WK_ERR_CANCELLED;
    if (!p->started) {
        /* Nothing runs and no on_settle is due; only waiters wake. */
        p->published = true;
        if (p->sleepers > 0)
            pthread_cond_broadcast(&p->cond);
        pthread_mutex_unlock(&p->mu);
        return;
    }
    bool fire = wk__promise_take_hook_locked(p, &hook, &hook_arg);
    pthread_mutex_unlock(&p->mu);

    if (fire)
        wk__promise_run_hook(p, hook, hook_arg);

    struct wk_value none = {0};

    wk__promise_notify(p, WK_ERR_CANCELLED, &none);
    wk_value_clear(&none);
}

void
wk__promise_unref(struct wk_promise *p)
{
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1)
        return;

    wk_value_clear(&p->value);
    wk_value_clear(&p->early.value);
    for (struct link *l = p->first.next, *next; l != NULL; l = next) {
        next = l->next;
        free(l);
    }
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->mu);

    /* The block goes with the context's last reference. */
    struct wk_ctx *ctx = &p->ctx;

    wk_ctx_unref(&ctx);
}

void
wk_promise_free(struct wk_promise **pp)
{
    if (pp == NULL || *pp == NULL)
        return;

    struct wk_promise *p = *pp;

    *pp = NULL;
    wk_promise_close(p);
    wk__promise_unref(p);
}

struct wk_ctx *
wk_promise_ctx(struct wk_promise *p)
{
    return &p->ctx;
}
