/*
 * The JSON form of a metrics view, served at /metrics?format=json: the same
 * state as the Prometheus text, grouped by route, with each breaker's
 * bucket array. A policy the route does not have is null. Durations are in
 * seconds; counters that end in _total count since the policy (or, outside
 * the policy objects, the process) was created.
 */
#include <stdio.h>
#include <string.h>

#include "metrics_view.h"
#include "version.h"

/* A writer that puts the commas between members and array elements. */
struct json {
    struct gw_metrics_writer *out;
    bool first; /* nothing written yet in the innermost object or array */
};

static void
put(struct json *j, const char *s)
{
    gw_metrics_puts(j->out, s);
}

static void
separate(struct json *j)
{
    if (!j->first)
        put(j, ",");
    j->first = false;
}

/* Writes s as a JSON string; route names are the only variable text. */
static void
put_string(struct json *j, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *c = (const unsigned char *)s;

    put(j, "\"");
    while (*c != '\0') {
        size_t plain = 0;
        while (c[plain] >= 0x20 && c[plain] != '"' && c[plain] != '\\')
            plain++;
        gw_metrics_write(j->out, c, plain);
        c += plain;
        if (*c == '\0')
            break;
        if (*c == '"' || *c == '\\') {
            char esc[2] = {'\\', (char)*c};
            gw_metrics_write(j->out, esc, 2);
        } else {
            char esc[6] = {'\\', 'u', '0', '0', hex[*c >> 4], hex[*c & 0xf]};
            gw_metrics_write(j->out, esc, 6);
        }
        c++;
    }
    put(j, "\"");
}

static void
key(struct json *j, const char *name)
{
    separate(j);
    put_string(j, name);
    put(j, ":");
}

static void
open_object(struct json *j, const char *name)
{
    if (name != NULL)
        key(j, name);
    else
        separate(j);
    put(j, "{");
    j->first = true;
}

static void
open_array(struct json *j, const char *name)
{
    key(j, name);
    put(j, "[");
    j->first = true;
}

static void
close_object(struct json *j)
{
    put(j, "}");
    j->first = false;
}

static void
close_array(struct json *j)
{
    put(j, "]");
    j->first = false;
}

static void
member_u64(struct json *j, const char *name, uint64_t v)
{
    key(j, name);
    gw_metrics_put_u64(j->out, v);
}

static void
member_seconds(struct json *j, const char *name, wk_duration d)
{
    key(j, name);
    gw_metrics_put_seconds(j->out, d > 0 ? (uint64_t)d : 0);
}

/* Writes v, or null when v is below 0 (not available). */
static void
member_double(struct json *j, const char *name, double v)
{
    char text[32];

    key(j, name);
    if (v < 0) {
        put(j, "null");
        return;
    }
    snprintf(text, sizeof(text), "%.15g", v);
    put(j, text);
}

static void
member_null(struct json *j, const char *name)
{
    key(j, name);
    put(j, "null");
}

static uint64_t
load(const _Atomic uint64_t *counter)
{
    return atomic_load_explicit(counter, memory_order_relaxed);
}

/* --- per route -------------------------------------------------------- */

static void
histogram(struct json *j, const char *name, const struct gw_histogram *h)
{
    uint64_t cumulative[GW_LATENCY_BUCKETS + 1];
    uint64_t sum_ns;

    gw_histogram_read(h, cumulative, &sum_ns);
    open_object(j, name);
    member_u64(j, "count", cumulative[GW_LATENCY_BUCKETS]);
    key(j, "sum");
    gw_metrics_put_seconds(j->out, sum_ns);
    open_array(j, "buckets");
    for (size_t i = 0; i <= GW_LATENCY_BUCKETS; i++) {
        open_object(j, NULL);
        key(j, "le");
        put_string(j,
                   i < GW_LATENCY_BUCKETS ? gw_metrics_latency_le[i] : "+Inf");
        member_u64(j, "count", cumulative[i]);
        close_object(j);
    }
    close_array(j);
    close_object(j);
}

static void
requests(struct json *j, const struct gw_route_metrics *m)
{
    open_object(j, "requests");
    for (unsigned s = 0; s < GW_STATUS_SLOTS; s++) {
        uint64_t v = load(&m->requests[s]);
        char code[8];
        if (v == 0)
            continue;
        snprintf(code, sizeof(code), "%u", s + GW_STATUS_MIN);
        member_u64(j, code, v);
    }
    close_object(j);
}

static void
counters(struct json *j, const struct gw_route_metrics *m)
{
    open_object(j, "upstream_attempts");
    for (int o = GW_UP_OK; o <= GW_UP_NOMEM; o++)
        member_u64(j, gw_metrics_outcome_labels[o],
                   load(&m->upstream_attempts[o]));
    close_object(j);
    member_u64(j, "retries_total", load(&m->retries));
    open_object(j, "fallbacks");
    for (unsigned i = 0; i < GW_REASON_COUNT; i++)
        member_u64(j, gw_reason_name((enum gw_fallback_reason)(1u << i)),
                   load(&m->fallbacks[i]));
    close_object(j);
}

static void
breaker_counts(struct json *j, const char *name,
               const struct wk_breaker_counts *c)
{
    open_object(j, name);
    for (size_t o = 0; o < GW_BREAKER_OUTCOMES; o++)
        member_u64(j, gw_metrics_breaker_outcomes[o], gw_breaker_count(c, o));
    close_object(j);
}

static void
breaker(struct json *j, const struct gw_route_view *rv)
{
    const struct gw_breaker_view *b = rv->breaker;

    if (b == NULL) {
        member_null(j, "breaker");
        return;
    }
    open_object(j, "breaker");
    key(j, "state");
    put_string(j, gw_metrics_state_labels[b->state]);
    member_u64(j, "state_value", (uint64_t)b->state);
    member_seconds(j, "open_remaining_seconds",
                   b->state == WK_BREAKER_OPEN ? b->open_remaining : 0);
    member_u64(j, "probes_admitted", b->probes_admitted);
    member_u64(j, "consecutive_failures", b->consecutive_failures);
    member_u64(j, "rejections_total", b->rejections_total);
    if (rv->metrics != NULL) {
        open_object(j, "transitions");
        for (int s = 0; s < GW_BREAKER_STATES; s++)
            member_u64(j, gw_metrics_state_labels[s],
                       load(&rv->metrics->breaker_transitions[s]));
        close_object(j);
    }
    member_seconds(j, "bucket_width_seconds", b->bucket_width);
    breaker_counts(j, "window", &b->window);
    open_array(j, "buckets");
    for (uint32_t i = 0; i < b->bucket_count; i++)
        breaker_counts(j, NULL, &b->buckets[i]);
    close_array(j);
    close_object(j);
}

static void
limiter(struct json *j, const struct gw_route_view *rv)
{
    const struct wk_ratelimit_snapshot *l = rv->limiter;

    if (l == NULL) {
        member_null(j, "rate_limit");
        return;
    }
    open_object(j, "rate_limit");
    key(j, "keyed");
    put(j, rv->limiter_keyed ? "true" : "false");
    if (rv->limiter_keyed)
        member_null(j, "tokens");
    else
        member_u64(j, "tokens", l->tokens);
    member_u64(j, "keys", l->keys);
    member_u64(j, "rejections_total", l->rejections);
    member_u64(j, "key_evictions_total", l->evictions);
    member_u64(j, "key_expirations_total", l->expirations);
    close_object(j);
}

static void
bulkhead(struct json *j, const struct gw_route_view *rv)
{
    const struct wk_bulkhead_snapshot *b = rv->bulkhead;

    if (b == NULL) {
        member_null(j, "bulkhead");
        return;
    }
    open_object(j, "bulkhead");
    member_u64(j, "in_flight", b->in_flight);
    member_u64(j, "waiting", b->waiting);
    member_u64(j, "max_concurrent", rv->bulkhead_max_concurrent);
    member_u64(j, "rejections_total", b->rejections);
    member_u64(j, "wait_timeouts_total", b->timeouts);
    close_object(j);
}

static void
retry(struct json *j, const struct gw_route_view *rv)
{
    const struct wk_retry_snapshot *r = rv->retry;

    if (r == NULL) {
        member_null(j, "retry");
        return;
    }
    open_object(j, "retry");
    member_u64(j, "calls_in_window", r->calls_in_window);
    member_u64(j, "retries_in_window", r->retries_in_window);
    member_u64(j, "retries_allowed_in_window", r->retries_allowed);
    member_u64(j, "denied_total", r->denied_total);
    close_object(j);
}

static void
route(struct json *j, const struct gw_route_view *rv)
{
    open_object(j, NULL);
    key(j, "name");
    put_string(j, rv->name);
    if (rv->metrics != NULL) {
        requests(j, rv->metrics);
        histogram(j, "request_duration_seconds", &rv->metrics->request_latency);
        histogram(j, "upstream_duration_seconds",
                  &rv->metrics->upstream_latency);
        counters(j, rv->metrics);
    }
    breaker(j, rv);
    limiter(j, rv);
    bulkhead(j, rv);
    retry(j, rv);
    close_object(j);
}

/* --- gateway-wide ----------------------------------------------------- */

static void
process(struct json *j, const struct gw_process_view *p)
{
    open_object(j, "process");
    member_double(j, "cpu_seconds_total", p->cpu_seconds);
    member_double(j, "resident_memory_bytes", p->resident_bytes);
    member_double(j, "virtual_memory_bytes", p->virtual_bytes);
    member_double(j, "virtual_memory_max_bytes", p->virtual_max_bytes);
    member_double(j, "open_fds", p->open_fds);
    member_double(j, "max_fds", p->max_fds);
    member_double(j, "start_time_seconds", p->start_time_seconds);
    close_object(j);
}

int
gw_metrics_json(const struct gw_metrics_view *view, struct gw_buf *buf)
{
    struct gw_metrics_writer w = {.out = buf, .len = 0};
    struct json j = {.out = &w, .first = true};
    const struct gw_route_view *unrouted = NULL;

    open_object(&j, NULL);
    key(&j, "version");
    put_string(&j, GW_VERSION);
    member_u64(&j, "in_flight_requests",
               view->in_flight > 0 ? (uint64_t)view->in_flight : 0);
    member_u64(&j, "client_connections",
               view->connections > 0 ? (uint64_t)view->connections : 0);
    member_u64(&j, "client_connections_refused", view->connections_refused);
    open_object(&j, "config_reloads");
    member_u64(&j, "ok", view->reloads_ok);
    member_u64(&j, "failed", view->reloads_failed);
    close_object(&j);

    open_array(&j, "routes");
    for (size_t r = 0; r < view->route_count; r++) {
        if (view->routes[r].routed)
            route(&j, &view->routes[r]);
        else
            unrouted = &view->routes[r];
    }
    close_array(&j);

    if (unrouted != NULL && unrouted->metrics != NULL) {
        open_object(&j, "unrouted");
        requests(&j, unrouted->metrics);
        histogram(&j, "request_duration_seconds",
                  &unrouted->metrics->request_latency);
        close_object(&j);
    }
    process(&j, &view->process);
    close_object(&j);
    put(&j, "\n");
    gw_metrics_writer_flush(&w);
    return buf->failed ? -1 : 0;
}
