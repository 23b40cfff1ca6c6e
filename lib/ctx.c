/*
 * Contexts: a deadline and a cancellation flag, inherited from a parent.
 *
 * Cancellation is not pushed down to children: a child has no list of its
 * descendants, so wk_ctx_cancelled() walks up the chain of parents instead.
 * Chains are short (a request's context, a promise's, maybe one more), and
 * the walk needs no lock, so every function here may be called from any
 * thread.
 */
#include "ctx_internal.h"

#include <stdlib.h>

#include "workshop/error.h"

void
wk__ctx_init_embedded(struct wk_ctx *ctx, struct wk_ctx *parent,
                      wk_time deadline, const struct wk_clock *clock,
                      void (*release)(struct wk_ctx *ctx))
{
    atomic_init(&ctx->refs, 1);
    atomic_init(&ctx->cancelled, false);
    ctx->release = release;
    ctx->parent = parent != NULL ? wk_ctx_ref(parent) : NULL;

    if (clock == NULL)
        clock = parent != NULL ? parent->clock : &wk_clock_monotonic;
    ctx->clock = clock;

    if (parent != NULL && parent->deadline < deadline)
        deadline = parent->deadline;
    ctx->deadline = deadline;
}

struct wk_ctx *
wk_ctx_new(struct wk_ctx *parent, wk_time deadline,
           const struct wk_clock *clock)
{
    struct wk_ctx *ctx = malloc(sizeof(*ctx));

    if (ctx == NULL)
        return NULL;
    wk__ctx_init_embedded(ctx, parent, deadline, clock, NULL);
    return ctx;
}

struct wk_ctx *
wk_ctx_ref(struct wk_ctx *ctx)
{
    atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed);
    return ctx;
}

void
wk_ctx_unref(struct wk_ctx **pctx)
{
    struct wk_ctx *ctx = *pctx;

    *pctx = NULL;
    /* A loop rather than recursion: dropping a child may drop its parent. */
    while (ctx != NULL) {
        if (atomic_fetch_sub_explicit(&ctx->refs, 1, memory_order_acq_rel) != 1)
            return;

        struct wk_ctx *parent = ctx->parent;

        if (ctx->release != NULL)
            ctx->release(ctx);
        else
            free(ctx);
        ctx = parent;
    }
}

void
wk_ctx_cancel(struct wk_ctx *ctx)
{
    atomic_store_explicit(&ctx->cancelled, true, memory_order_release);
}

bool
wk_ctx_cancelled(const struct wk_ctx *ctx)
{
    for (; ctx != NULL; ctx = ctx->parent) {
        if (atomic_load_explicit(&ctx->cancelled, memory_order_acquire))
            return true;
    }
    return false;
}

int
wk_ctx_err(const struct wk_ctx *ctx)
{
    if (wk_ctx_cancelled(ctx))
        return WK_ERR_CANCELLED;
    if (ctx->deadline != WK_TIME_NEVER &&
        wk_clock_now(ctx->clock) >= ctx->deadline)
        return WK_ERR_TIMED_OUT;
    return WK_OK;
}

wk_time
wk_ctx_deadline(const struct wk_ctx *ctx)
{
    return ctx->deadline;
}

wk_duration
wk_ctx_remaining(const struct wk_ctx *ctx)
{
    if (ctx->deadline == WK_TIME_NEVER)
        return WK_TIME_NEVER;

    wk_time now = wk_clock_now(ctx->clock);

    return now >= ctx->deadline ? 0 : ctx->deadline - now;
}

const struct wk_clock *
wk_ctx_clock(const struct wk_ctx *ctx)
{
    return ctx->clock;
}
