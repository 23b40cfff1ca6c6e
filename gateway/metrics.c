/*
 * Metrics storage, the label sets shared by the renderers, and the entry
 * point that renders a scrape.
 */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "metrics_view.h"
#include "server.h"

/* Rendered text is capped so a scrape cannot exhaust memory. */
#define RENDER_MAX (64u * 1024 * 1024)

const double gw_metrics_latency_bounds[GW_LATENCY_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25,  0.5,    1.0,   2.5,  5.0,   10.0, 30.0,
};

/* Written out rather than formatted per scrape; a unit test checks that
 * each one parses to the bound above. */
const char *const gw_metrics_latency_le[GW_LATENCY_BUCKETS] = {
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25",  "0.5",    "1",     "2.5",  "5",     "10",   "30",
};

const char *const gw_metrics_outcome_labels[GW_UP_NOMEM + 1] = {
    [GW_UP_OK] = "ok",
    [GW_UP_CONNECT_FAILED] = "connect_failed",
    [GW_UP_TIMEOUT] = "timeout",
    [GW_UP_PROTOCOL] = "protocol_error",
    [GW_UP_TOO_LARGE] = "too_large",
    [GW_UP_CANCELLED] = "cancelled",
    [GW_UP_NOMEM] = "out_of_memory",
};

const char *const gw_metrics_state_labels[GW_BREAKER_STATES] = {
    [WK_BREAKER_CLOSED] = "closed",
    [WK_BREAKER_OPEN] = "open",
    [WK_BREAKER_HALF_OPEN] = "half_open",
};

const char *const gw_metrics_breaker_outcomes[GW_BREAKER_OUTCOMES] = {
    "successes", "failures", "timeouts", "slow_calls", "rejections",
};

uint64_t
gw_breaker_count(const struct wk_breaker_counts *c, size_t i)
{
    switch (i) {
    case 0:
        return c->successes;
    case 1:
        return c->failures;
    case 2:
        return c->timeouts;
    case 3:
        return c->slow_calls;
    default:
        return c->rejections;
    }
}

void
gw_metrics_put_u64(struct gw_metrics_writer *w, uint64_t v)
{
    char digits[20];
    size_t n = sizeof(digits);

    do {
        digits[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    gw_metrics_write(w, digits + n, sizeof(digits) - n);
}

void
gw_metrics_put_seconds(struct gw_metrics_writer *w, uint64_t ns)
{
    char frac[10];
    uint64_t rest = ns % 1000000000u;

    gw_metrics_put_u64(w, ns / 1000000000u);
    frac[0] = '.';
    for (int i = 9; i >= 1; i--) {
        frac[i] = (char)('0' + rest % 10);
        rest /= 10;
    }
    gw_metrics_write(w, frac, sizeof(frac));
}

int
gw_metrics_init(struct gw_metrics *m)
{
    struct timespec now;

    memset(m, 0, sizeof(*m));
    if (pthread_mutex_init(&m->lock, NULL) != 0)
        return -1;
    snprintf(m->unrouted.name, sizeof(m->unrouted.name), "%s",
             GW_METRICS_UNROUTED_LABEL);
    clock_gettime(CLOCK_REALTIME, &now);
    m->start_time_seconds = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    return 0;
}

void
gw_metrics_destroy(struct gw_metrics *m)
{
    size_t count = atomic_load(&m->route_count);

    for (size_t i = 0; i < count; i++)
        free(m->routes[i]);
    pthread_mutex_destroy(&m->lock);
}

struct gw_route_metrics *
gw_metrics_route(struct gw_metrics *m, const char *name)
{
    struct gw_route_metrics *found = NULL;

    pthread_mutex_lock(&m->lock);
    size_t count = atomic_load(&m->route_count);
    for (size_t i = 0; i < count && found == NULL; i++) {
        if (strcmp(m->routes[i]->name, name) == 0)
            found = m->routes[i];
    }
    if (found == NULL && count < GW_METRICS_ROUTES_MAX) {
        found = calloc(1, sizeof(*found));
        if (found != NULL) {
            snprintf(found->name, sizeof(found->name), "%s", name);
            m->routes[count] = found;
            /* Publish after the slot is filled: readers take the count
             * without the lock. */
            atomic_store_explicit(&m->route_count, count + 1,
                                  memory_order_release);
        }
    }
    pthread_mutex_unlock(&m->lock);
    return found;
}

static void
histogram_observe(struct gw_histogram *h, int64_t ns)
{
    double seconds = (double)ns / 1e9;
    size_t i = 0;

    while (i < GW_LATENCY_BUCKETS && seconds > gw_metrics_latency_bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, (uint64_t)(ns > 0 ? ns : 0),
                              memory_order_relaxed);
}

void
gw_histogram_read(const struct gw_histogram *h,
                  uint64_t cumulative[GW_LATENCY_BUCKETS + 1], uint64_t *sum_ns)
{
    uint64_t total = 0;

    for (size_t i = 0; i <= GW_LATENCY_BUCKETS; i++) {
        total += atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        cumulative[i] = total;
    }
    *sum_ns = atomic_load_explicit(&h->sum_ns, memory_order_relaxed);
}

void
gw_metrics_request(struct gw_route_metrics *rm, unsigned status,
                   int64_t latency_ns)
{
    if (status >= GW_STATUS_MIN && status <= GW_STATUS_MAX)
        atomic_fetch_add_explicit(&rm->requests[status - GW_STATUS_MIN], 1,
                                  memory_order_relaxed);
    histogram_observe(&rm->request_latency, latency_ns);
}

void
gw_metrics_upstream(struct gw_route_metrics *rm,
                    enum gw_upstream_outcome outcome, int64_t latency_ns)
{
    atomic_fetch_add_explicit(&rm->upstream_attempts[outcome], 1,
                              memory_order_relaxed);
    histogram_observe(&rm->upstream_latency, latency_ns);
}

void
gw_metrics_fallback(struct gw_route_metrics *rm, enum gw_fallback_reason reason)
{
    atomic_fetch_add_explicit(&rm->fallbacks[gw_reason_index(reason)], 1,
                              memory_order_relaxed);
}

void
gw_metrics_retry(struct gw_route_metrics *rm)
{
    atomic_fetch_add_explicit(&rm->retries, 1, memory_order_relaxed);
}

void
gw_metrics_breaker_transition(struct gw_route_metrics *rm, int to)
{
    if (to >= 0 && to < GW_BREAKER_STATES)
        atomic_fetch_add_explicit(&rm->breaker_transitions[to], 1,
                                  memory_order_relaxed);
}

int
gw_metrics_render(struct gw_server *srv, enum gw_metrics_format format,
                  char **text, size_t *len)
{
    struct gw_metrics_view view;
    struct gw_buf out = {.max = RENDER_MAX};
    struct gw_config_ref *ref = gw_server_config_get(srv);
    int rc = -1;

    if (gw_metrics_view_gather(&view, &srv->metrics, ref->config,
                               atomic_load(&srv->in_flight),
                               wk_clock_now(NULL)) != 0)
        goto out;
    view.connections = atomic_load(&srv->connections);
    view.connections_refused = atomic_load(&srv->connections_refused);
    int err = format == GW_METRICS_JSON ? gw_metrics_json(&view, &out)
                                        : gw_metrics_text(&view, &out);
    gw_metrics_view_free(&view);
    if (err != 0 || out.failed || out.data == NULL)
        goto out;
    *text = gw_buf_take(&out, len);
    rc = 0;
out:
    gw_buf_free(&out);
    gw_config_ref_put(&ref);
    return rc;
}
