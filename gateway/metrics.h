/*
 * Counters and histograms for /metrics, and their rendering.
 *
 * Each route name gets one struct gw_route_metrics for the life of the
 * process, so counters survive a reload that keeps the route. Request threads
 * update them with relaxed atomic adds and never take a lock. The renderer
 * reads the same atomics and the policies' lock-free snapshots. It takes
 * the config lock only to take a reference, as each request does.
 *
 * Label values come only from route names (from the config) and fixed sets
 * (status codes 100-599, outcome names), never from request data.
 */
#ifndef GATEWAY_METRICS_H
#define GATEWAY_METRICS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "upstream.h"

#define GW_STATUS_MIN   100
#define GW_STATUS_MAX   599
#define GW_STATUS_SLOTS (GW_STATUS_MAX - GW_STATUS_MIN + 1)
/* Histogram upper bounds in seconds; the last bucket is +Inf. */
#define GW_LATENCY_BUCKETS    14
#define GW_METRICS_ROUTES_MAX 4096
/* Breaker states, as enum wk_breaker_state counts them. */
#define GW_BREAKER_STATES 3

/* The Content-Type of the Prometheus text exposition format 0.0.4. */
#define GW_METRICS_TEXT_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct gw_histogram {
    _Atomic uint64_t buckets[GW_LATENCY_BUCKETS + 1]; /* not cumulative */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_ns;
};

struct gw_route_metrics {
    char name[72];
    _Atomic uint64_t requests[GW_STATUS_SLOTS];          /* by status code */
    _Atomic uint64_t upstream_attempts[GW_UP_NOMEM + 1]; /* by outcome */
    struct gw_histogram request_latency;
    struct gw_histogram upstream_latency;
    _Atomic uint64_t fallbacks[GW_REASON_COUNT]; /* by reason index */
    _Atomic uint64_t retries;
    /* by enum wk_breaker_state */
    _Atomic uint64_t breaker_transitions[GW_BREAKER_STATES];
};

struct gw_metrics {
    pthread_mutex_t lock; /* guards adding routes, not the counters */
    struct gw_route_metrics *routes[GW_METRICS_ROUTES_MAX];
    _Atomic size_t route_count;
    struct gw_route_metrics unrouted; /* responses sent before routing */
    _Atomic uint64_t reloads_ok;
    _Atomic uint64_t reloads_failed;
    double start_time_seconds; /* Unix time at start */
};

int gw_metrics_init(struct gw_metrics *m);
void gw_metrics_destroy(struct gw_metrics *m);

/*
 * Returns the metrics of the route called name, creating them on first use.
 * Returns NULL when out of memory or past GW_METRICS_ROUTES_MAX routes.
 */
struct gw_route_metrics *gw_metrics_route(struct gw_metrics *m,
                                          const char *name);

/* Counts a finished request: its status and total latency. */
void gw_metrics_request(struct gw_route_metrics *rm, unsigned status,
                        int64_t latency_ns);

/* Counts one upstream attempt: its outcome and latency. */
void gw_metrics_upstream(struct gw_route_metrics *rm,
                         enum gw_upstream_outcome outcome, int64_t latency_ns);

/* Counts a response served by a fallback, by the reason it was used. */
void gw_metrics_fallback(struct gw_route_metrics *rm,
                         enum gw_fallback_reason reason);

/* Counts one retry of an upstream attempt. */
void gw_metrics_retry(struct gw_route_metrics *rm);

/* Counts a breaker transition into state to (an enum wk_breaker_state). */
void gw_metrics_breaker_transition(struct gw_route_metrics *rm, int to);

struct gw_server;

enum gw_metrics_format {
    GW_METRICS_TEXT, /* Prometheus text format 0.0.4 */
    GW_METRICS_JSON, /* the same state as one JSON object */
};

/*
 * Renders the metrics of srv and the state of the policies of the
 * configuration in force into a new malloc'ed buffer, which the caller
 * frees. Returns 0 and sets *out and *len, or -1 when out of memory. Holds
 * no lock while rendering. It takes the config lock once, inside
 * gw_server_config_get(), and then reads atomics and lock-free snapshots.
 */
int gw_metrics_render(struct gw_server *srv, enum gw_metrics_format format,
                      char **out, size_t *len);

#endif /* GATEWAY_METRICS_H */
