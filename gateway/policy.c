/*
 * Creating and sharing the run-time state of a route's policies.
 */
#include "policy.h"

#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "stale.h"
#include "workshop/error.h"

/* Logs each breaker transition once, with its evidence, and counts it. */
static void
on_breaker_transition(void *arg, const struct wk_breaker_transition *t)
{
    struct gw_route_metrics *metrics = arg;
    const struct wk_breaker_counts *w = &t->window;

    gw_metrics_breaker_transition(metrics, (int)t->to);
    gw_log_warn(
        "breaker: %s -> %s (%s) route=%s successes=%llu "
        "failures=%llu timeouts=%llu slow=%llu "
        "consecutive_failures=%llu open_ms=%lld",
        wk_breaker_state_name(t->from), wk_breaker_state_name(t->to),
        wk_breaker_reason_name(t->reason), t->key,
        (unsigned long long)w->successes, (unsigned long long)w->failures,
        (unsigned long long)w->timeouts, (unsigned long long)w->slow_calls,
        (unsigned long long)t->consecutive_failures,
        (long long)(t->open_for / WK_NSEC_PER_MSEC));
}

static const struct gw_fallback *
stale_fallback(const struct gw_route *route)
{
    for (size_t i = 0; i < route->fallback_count; i++) {
        if (route->fallbacks[i].kind == GW_FALLBACK_STALE)
            return &route->fallbacks[i];
    }
    return NULL;
}

static int
create_policies(struct gw_route_runtime *rt, const struct gw_route *route)
{
    if (route->rate_limit.enabled &&
        wk_ratelimit_new(&route->rate_limit.lib, &rt->limiter) != WK_OK)
        return -1;
    if (route->breaker.enabled) {
        struct wk_breaker_config config = route->breaker.lib;
        config.name = route->name;
        config.on_transition = on_breaker_transition;
        config.on_transition_arg = rt->metrics;
        if (wk_breaker_new(&config, &rt->breaker) != WK_OK)
            return -1;
    }
    if (route->bulkhead.enabled &&
        wk_bulkhead_new(&route->bulkhead.lib, &rt->bulkhead) != WK_OK)
        return -1;
    if (route->retry.enabled &&
        wk_retry_new(&route->retry.lib, &rt->retry) != WK_OK)
        return -1;
    const struct gw_fallback *stale = stale_fallback(route);
    if (stale != NULL) {
        rt->stale = gw_stale_new((size_t)stale->max_bytes);
        if (rt->stale == NULL)
            return -1;
    }
    return 0;
}

struct gw_route_runtime *
gw_route_runtime_get(const struct gw_route *route,
                     struct gw_route_runtime *previous,
                     struct gw_route_metrics *metrics)
{
    if (previous != NULL &&
        strcmp(previous->settings, route->policy_settings) == 0) {
        atomic_fetch_add_explicit(&previous->refs, 1, memory_order_relaxed);
        return previous;
    }

    struct gw_route_runtime *rt = calloc(1, sizeof(*rt));
    if (rt == NULL) {
        gw_log_error("policy: out of memory creating route %s", route->name);
        return NULL;
    }
    atomic_init(&rt->refs, 1);
    rt->metrics = metrics;
    rt->settings = strdup(route->policy_settings);
    if (rt->settings == NULL || create_policies(rt, route) != 0) {
        gw_log_error("policy: cannot create the policies of route %s: out "
                     "of memory",
                     route->name);
        gw_route_runtime_put(&rt);
        return NULL;
    }
    return rt;
}

void
gw_route_runtime_put(struct gw_route_runtime **rtp)
{
    struct gw_route_runtime *rt = *rtp;

    if (rt == NULL)
        return;
    *rtp = NULL;
    if (atomic_fetch_sub_explicit(&rt->refs, 1, memory_order_acq_rel) != 1)
        return;
    wk_ratelimit_destroy(&rt->limiter);
    wk_breaker_destroy(&rt->breaker);
    wk_bulkhead_destroy(&rt->bulkhead);
    wk_retry_destroy(&rt->retry);
    gw_stale_free(&rt->stale);
    free(rt->settings);
    free(rt);
}
