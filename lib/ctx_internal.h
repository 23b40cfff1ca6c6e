/*
 * The layout of struct wk_ctx, shared by ctx.c and promise.c only.
 *
 * A promise embeds its context in its own allocation to keep creation to one
 * malloc. Such a context has a release function instead of free(): when its
 * last reference goes, release() frees the block that contains it.
 */
#ifndef WORKSHOP_LIB_CTX_INTERNAL_H
#define WORKSHOP_LIB_CTX_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>

#include "workshop/ctx.h"

struct wk_ctx {
    atomic_uint refs;
    atomic_bool cancelled;
    wk_time deadline; /* effective: never later than the parent's */
    const struct wk_clock *clock;
    struct wk_ctx *parent; /* one reference held, or NULL */
    /* Frees the memory of ctx once unreferenced; NULL means free(ctx). */
    void (*release)(struct wk_ctx *ctx);
};

/*
 * Initialises a context that lives inside a larger object, with one reference
 * owned by the caller. Arguments as for wk_ctx_new(); release frees the
 * enclosing object when the last reference is dropped.
 */
void wk__ctx_init_embedded(struct wk_ctx *ctx, struct wk_ctx *parent,
                           wk_time deadline, const struct wk_clock *clock,
                           void (*release)(struct wk_ctx *ctx));

#endif /* WORKSHOP_LIB_CTX_INTERNAL_H */
