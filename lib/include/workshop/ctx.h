/*
 * Contexts: a deadline and a cancellation flag, inherited from a parent.
 *
 * A context is reference counted. A child sees its parent's cancellation and
 * never has a later deadline than its parent. Every step of a promise gets the
 * promise's context, so a step can read how much time it has left and notice
 * that the promise was closed.
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef WORKSHOP_CTX_H
#define WORKSHOP_CTX_H

#include <stdbool.h>

#include "workshop/clock.h"

struct wk_ctx;

/*
 * Creates a context. parent may be NULL; the child keeps a reference to it.
 * deadline is an absolute time on clock (WK_TIME_NEVER for none). The
 * effective deadline is the earlier of it and the parent's, so both should
 * be on the same clock. clock may be NULL for the monotonic clock; a child
 * with a NULL clock uses its parent's. The clock must outlive the context.
 * Returns NULL when out of memory. The caller owns one reference and
 * releases it with wk_ctx_unref().
 */
struct wk_ctx *wk_ctx_new(struct wk_ctx *parent, wk_time deadline,
                          const struct wk_clock *clock);

/* Takes another reference to ctx and returns ctx. */
struct wk_ctx *wk_ctx_ref(struct wk_ctx *ctx);

/* Drops the reference in *ctx and sets *ctx to NULL. Safe on NULL. */
void wk_ctx_unref(struct wk_ctx **ctx);

/*
 * Cancels ctx and, through inheritance, every context derived from it: a
 * context reads its ancestors' flags when asked, so nothing is notified.
 */
void wk_ctx_cancel(struct wk_ctx *ctx);

/* Returns true once ctx or one of its ancestors was cancelled. */
bool wk_ctx_cancelled(const struct wk_ctx *ctx);

/*
 * Returns WK_ERR_CANCELLED if ctx was cancelled, WK_ERR_TIMED_OUT if its
 * deadline has passed, WK_OK otherwise.
 */
int wk_ctx_err(const struct wk_ctx *ctx);

/* Returns the effective deadline, WK_TIME_NEVER when there is none. */
wk_time wk_ctx_deadline(const struct wk_ctx *ctx);

/*
 * Returns the time left before the deadline: WK_TIME_NEVER when there is no
 * deadline, 0 when it has passed.
 */
wk_duration wk_ctx_remaining(const struct wk_ctx *ctx);

/* Returns the clock ctx reads (never NULL). */
const struct wk_clock *wk_ctx_clock(const struct wk_ctx *ctx);

#endif /* WORKSHOP_CTX_H */
