/*
 * The stale cache behind a route's "stale" fallback: the last successful
 * response to each GET (by path and query), kept so that it can be served
 * while the upstream is down.
 *
 * The cache is bounded by the total bytes of its entries (bodies, headers
 * and keys); storing past the bound evicts the least recently used entries,
 * and an entry larger than the bound is not stored. Entries older than the
 * fallback's max_age_ms are not served.
 *
 * Thread safety: every function may be called from any thread; one mutex
 * guards the table, and copies are made under it so no entry is shared.
 */
#ifndef GATEWAY_STALE_H
#define GATEWAY_STALE_H

#include <stdbool.h>
#include <stddef.h>

#include "upstream.h"
#include "workshop/clock.h"

struct gw_stale_cache;

/* A served copy of an entry; the caller owns it and frees it with
 * gw_stale_copy_free(). */
struct gw_stale_copy {
    unsigned status;
    struct gw_header_list headers;
    char *body;
    size_t body_len;
    wk_time stored_at;
};

/* Creates a cache of at most max_bytes. Returns NULL when out of memory. */
struct gw_stale_cache *gw_stale_new(size_t max_bytes);

/* Frees the cache and every entry; sets *cache to NULL. Safe on NULL. */
void gw_stale_free(struct gw_stale_cache **cache);

/*
 * Stores a response for key (copied), replacing an older one. Only
 * end-to-end fields should be passed in headers. Returns 0 when stored,
 * -1 when it does not fit or memory ran out.
 */
int gw_stale_put(struct gw_stale_cache *cache, const char *key, unsigned status,
                 const struct gw_header_list *headers, const char *body,
                 size_t body_len, wk_time now);

/*
 * Copies the entry for key into out when there is one no older than
 * max_age at now. Returns true when out was filled.
 */
bool gw_stale_get(struct gw_stale_cache *cache, const char *key,
                  wk_duration max_age, wk_time now, struct gw_stale_copy *out);

void gw_stale_copy_free(struct gw_stale_copy *copy);

/* Returns the bytes and entries stored now. */
void gw_stale_usage(struct gw_stale_cache *cache, size_t *bytes,
                    size_t *entries);

#endif /* GATEWAY_STALE_H */
