/*
 * The run-time state of a route's policies: its rate limiter, circuit
 * breaker, bulkhead, retry policy and stale-response cache.
 *
 * A struct gw_route_runtime is created for each route when a config is
 * loaded and is shared, by reference count, between the configs that keep
 * the route unchanged: a reload that leaves a route's name and policy
 * settings as they were hands the same runtime to the new config, so its
 * breaker and limiter state carry over. Requests hold their config, and so
 * the runtime, until they complete.
 *
 * Thread safety: the policy objects are safe for concurrent use; the
 * runtime's fields themselves are set once at creation.
 */
#ifndef GATEWAY_POLICY_H
#define GATEWAY_POLICY_H

#include <stdatomic.h>
#include <stdbool.h>

#include "workshop/breaker.h"
#include "workshop/bulkhead.h"
#include "workshop/ratelimit.h"
#include "workshop/retry.h"

struct gw_stale_cache;
struct gw_route;
struct gw_metrics;

struct gw_route_runtime {
    _Atomic long refs;
    char *settings; /* the route's policy settings, to compare at reload */
    struct wk_ratelimit *limiter;     /* NULL: no rate_limit block */
    struct wk_breaker *breaker;       /* NULL: no breaker block */
    struct wk_bulkhead *bulkhead;     /* NULL: no bulkhead block */
    struct wk_retry *retry;           /* NULL: no retry block */
    struct gw_stale_cache *stale;     /* NULL: no stale fallback */
    struct gw_route_metrics *metrics; /* not owned; outlives the runtime */
};

/*
 * Creates the runtime for route from its parsed policy settings, or takes a
 * reference to previous when previous has the same settings. Returns NULL
 * after logging why when a policy cannot be created.
 */
struct gw_route_runtime *gw_route_runtime_get(const struct gw_route *route,
                                              struct gw_route_runtime *previous,
                                              struct gw_route_metrics *metrics);

/* Drops a reference; the last one frees the policies. Safe on NULL. */
void gw_route_runtime_put(struct gw_route_runtime **runtime);

#endif /* GATEWAY_POLICY_H */
