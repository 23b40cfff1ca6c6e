/*
 * The Prometheus text exposition format 0.0.4 of a metrics view.
 *
 * Each family is written whole (HELP, TYPE, then every series), because the
 * format requires a family's series to be contiguous. A family with no
 * series is left out. Numbers are formatted by hand rather than with
 * printf, which keeps a scrape of 100 routes with breakers well under the
 * 5 ms budget that tests/bench/bench_metrics.c checks.
 */
#include <stdio.h>
#include <string.h>

#include "metrics_view.h"
#include "version.h"

static void
put(struct gw_metrics_writer *out, const char *s)
{
    gw_metrics_puts(out, s);
}

/* A metric family; its HELP and TYPE lines go out before its first series. */
struct family {
    const char *name;
    const char *type;
    const char *help;
    bool written;
};

static void
family_header(struct gw_metrics_writer *out, struct family *f)
{
    if (f->written)
        return;
    put(out, "# HELP ");
    put(out, f->name);
    put(out, " ");
    put(out, f->help);
    put(out, "\n# TYPE ");
    put(out, f->name);
    put(out, " ");
    put(out, f->type);
    put(out, "\n");
    f->written = true;
}

/* Starts a series of the route: name{route="..." (suffix may be NULL). */
static void
begin(struct gw_metrics_writer *out, struct family *f, const char *suffix,
      const struct gw_route_view *rv)
{
    family_header(out, f);
    put(out, f->name);
    if (suffix != NULL)
        put(out, suffix);
    put(out, "{route=\"");
    put(out, rv->label);
    put(out, "\"");
}

/* Adds a label whose value comes from a fixed set and needs no escaping. */
static void
label(struct gw_metrics_writer *out, const char *key, const char *value)
{
    put(out, ",");
    put(out, key);
    put(out, "=\"");
    put(out, value);
    put(out, "\"");
}

static void
end_u64(struct gw_metrics_writer *out, uint64_t v)
{
    put(out, "} ");
    gw_metrics_put_u64(out, v);
    put(out, "\n");
}

static uint64_t
load(const _Atomic uint64_t *counter)
{
    return atomic_load_explicit(counter, memory_order_relaxed);
}

#define FAMILY(n, t, h)                                                        \
    {                                                                          \
        .name = (n), .type = (t), .help = (h), .written = false                \
    }

/* Returns true and sets *value when the route has a series in a family. */
typedef bool route_value_fn(const struct gw_route_view *rv, uint64_t *value);

/* Writes one series per route for which value() returns true. */
static void
per_route(struct gw_metrics_writer *out, const struct gw_metrics_view *view,
          struct family f, route_value_fn *value)
{
    for (size_t r = 0; r < view->route_count; r++) {
        uint64_t v;
        if (!value(&view->routes[r], &v))
            continue;
        begin(out, &f, NULL, &view->routes[r]);
        end_u64(out, v);
    }
}

/* Writes a family of one series without labels. */
static void
single(struct gw_metrics_writer *out, struct family f, const char *value)
{
    family_header(out, &f);
    put(out, f.name);
    put(out, " ");
    put(out, value);
    put(out, "\n");
}

static void
single_double(struct gw_metrics_writer *out, struct family f, double v)
{
    char text[32];

    snprintf(text, sizeof(text), "%.15g", v);
    single(out, f, text);
}

/* --- gateway-wide families -------------------------------------------- */

static void
render_gateway(struct gw_metrics_writer *out,
               const struct gw_metrics_view *view)
{
    struct family build = FAMILY("workshop_build_info", "gauge",
                                 "Build information; the value is always 1.");
    struct family reloads = FAMILY("workshop_config_reloads_total", "counter",
                                   "Configuration reloads, by result.");
    char in_flight[24];

    family_header(out, &build);
    put(out, "workshop_build_info{version=\"" GW_VERSION "\"} 1\n");
    family_header(out, &reloads);
    put(out, "workshop_config_reloads_total{result=\"ok\"} ");
    gw_metrics_put_u64(out, view->reloads_ok);
    put(out, "\nworkshop_config_reloads_total{result=\"failed\"} ");
    gw_metrics_put_u64(out, view->reloads_failed);
    put(out, "\n");
    snprintf(in_flight, sizeof(in_flight), "%ld",
             view->in_flight > 0 ? view->in_flight : 0);
    single(out,
           (struct family)FAMILY("workshop_in_flight_requests", "gauge",
                                 "Requests received and not yet answered."),
           in_flight);

    char count[24];
    snprintf(count, sizeof(count), "%ld",
             view->connections > 0 ? view->connections : 0);
    single(out,
           (struct family)FAMILY("workshop_client_connections", "gauge",
                                 "Client connections open now."),
           count);
    snprintf(count, sizeof(count), "%llu",
             (unsigned long long)view->connections_refused);
    single(out,
           (struct family)FAMILY("workshop_client_connections_refused_total",
                                 "counter",
                                 "Client connections closed at accept because "
                                 "limits.max_connections were open."),
           count);
}

/* --- requests and upstream attempts ----------------------------------- */

static void
render_requests(struct gw_metrics_writer *out,
                const struct gw_metrics_view *view)
{
    struct family f =
        FAMILY("workshop_requests_total", "counter",
               "Requests answered, by route and HTTP status code.");

    for (size_t r = 0; r < view->route_count; r++) {
        const struct gw_route_view *rv = &view->routes[r];
        if (rv->metrics == NULL)
            continue;
        for (unsigned s = 0; s < GW_STATUS_SLOTS; s++) {
            uint64_t v = load(&rv->metrics->requests[s]);
            if (v == 0)
                continue;
            begin(out, &f, NULL, rv);
            put(out, ",code=\"");
            gw_metrics_put_u64(out, s + GW_STATUS_MIN);
            put(out, "\"");
            end_u64(out, v);
        }
    }
}

static void
render_histogram(struct gw_metrics_writer *out, struct family *f,
                 const struct gw_route_view *rv, const struct gw_histogram *h)
{
    uint64_t cumulative[GW_LATENCY_BUCKETS + 1];
    uint64_t sum_ns;

    gw_histogram_read(h, cumulative, &sum_ns);
    for (size_t i = 0; i <= GW_LATENCY_BUCKETS; i++) {
        begin(out, f, "_bucket", rv);
        label(out, "le",
              i < GW_LATENCY_BUCKETS ? gw_metrics_latency_le[i] : "+Inf");
        end_u64(out, cumulative[i]);
    }
    begin(out, f, "_sum", rv);
    put(out, "} ");
    gw_metrics_put_seconds(out, sum_ns);
    put(out, "\n");
    begin(out, f, "_count", rv);
    end_u64(out, cumulative[GW_LATENCY_BUCKETS]);
}

static void
render_latency(struct gw_metrics_writer *out,
               const struct gw_metrics_view *view)
{
    struct family request =
        FAMILY("workshop_request_duration_seconds", "histogram",
               "Time from the request head to the response, by route.");
    struct family upstream =
        FAMILY("workshop_upstream_duration_seconds", "histogram",
               "Duration of each upstream attempt, by route.");

    for (size_t r = 0; r < view->route_count; r++) {
        const struct gw_route_view *rv = &view->routes[r];
        if (rv->metrics != NULL)
            render_histogram(out, &request, rv, &rv->metrics->request_latency);
    }
    for (size_t r = 0; r < view->route_count; r++) {
        const struct gw_route_view *rv = &view->routes[r];
        if (rv->routed && rv->metrics != NULL)
            render_histogram(out, &upstream, rv,
                             &rv->metrics->upstream_latency);
    }
}

static void
render_attempts(struct gw_metrics_writer *out,
                const struct gw_metrics_view *view)
{
    struct family f = FAMILY("workshop_upstream_attempts_total", "counter",
                             "Upstream attempts, by route and outcome.");

    for (size_t r = 0; r < view->route_count; r++) {
        const struct gw_route_view *rv = &view->routes[r];
        if (!rv->routed || rv->metrics == NULL)
            continue;
        for (int o = GW_UP_OK; o <= GW_UP_NOMEM; o++) {
            begin(out, &f, NULL, rv);
            label(out, "outcome", gw_metrics_outcome_labels[o]);
            end_u64(out, load(&rv->metrics->upstream_attempts[o]));
        }
    }
}

static bool
retries_value(const struct gw_route_view *rv, uint64_t *v)
{
    if (!rv->routed || rv->metrics == NULL)
        return false;
    *v = load(&rv->metrics->retries);
    return rv->retry != NULL || *v > 0;
}

static void
render_retries_fallbacks(struct gw_metrics_writer *out,
                         const struct gw_metrics_view *view)
{
    struct family fallbacks =
        FAMILY("workshop_fallbacks_total", "counter",
               "Responses served by a fallback, by route and reason.");

    per_route(
        out, view,
        (struct family)FAMILY("workshop_retries_total", "counter",
                              "Upstream attempts that were retries, by route."),
        retries_value);
    for (size_t r = 0; r < view->route_count; r++) {
        const struct gw_route_view *rv = &view->routes[r];
        if (!rv->routed || rv->metrics == NULL)
            continue;
        for (unsigned i = 0; i < GW_REASON_COUNT; i++) {
            uint64_t v = load(&rv->metrics->fallbacks[i]);
            if (!rv->has_fallback && v == 0)
                continue;
            begin(out, &fallbacks, NULL, rv);
            label(out, "reason",
                  gw_reason_name((enum gw_fallback_reason)(1u << i)));
            end_u64(out, v);
        }
    }
}

/* --- circuit breakers ------------------------------------------------- */

static bool
breaker_state(const struct gw_route_view *rv, uint64_t *v)
{
    if (rv->breaker == NULL)
        return false;
    *v = (uint64_t)rv->breaker->state;
    return true;
}

static bool
breaker_consecutive(const struct gw_route_view *rv, uint64_t *v)
{
    if (rv->breaker == NULL)
        return false;
    *v = rv->breaker->consecutive_failures;
    return true;
}

static bool
breaker_rejections(const struct gw_route_view *rv, uint64_t *v)
{
    if (rv->breaker == NULL)
        return false;
    *v = rv->breaker->rejections_total;
    return true;
}

/* Writes "} <seconds>\n" for a duration in nanoseconds. */
static void
end_duration(struct gw_metrics_writer *out, wk_duration d)
{
    put(out, "} ");
    gw_metrics_put_seconds(out, d > 0 ? (uint64_t)d : 0);
    put(out, "\n");
}

static void
render_breaker_timing(struct gw_metrics_writer *out,
                      const struct gw_metrics_view *view)
{
    struct family remaining =
        FAMILY("workshop_breaker_open_remaining_seconds", "gauge",
               "Time until an open breaker turns half-open; 0 unless open.");
    struct family width =
        FAMILY("workshop_breaker_bucket_width_seconds", "gauge",
               "Time covered by each bucket of the breaker's rolling window.");

    for (size_t r = 0; r < view->route_count; r++) {
        const struct gw_route_view *rv = &view->routes[r];
        if (rv->breaker == NULL)
            continue;
        begin(out, &remaining, NULL, rv);
        end_duration(out, rv->breaker->state == WK_BREAKER_OPEN
                              ? rv->breaker->open_remaining
                              : 0);
    }
    for (size_t r = 0; r < view->route_count; r++) {
        const struct gw_route_view *rv = &view->routes[r];
        if (rv->breaker == NULL)
            continue;
        begin(out, &width, NULL, rv);
        end_duration(out, rv->breaker->bucket_width);
    }
}

static void
render_breaker_state(struct gw_metrics_writer *out,
                     const struct gw_metrics_view *view)
{
    struct family transitions =
        FAMILY("workshop_breaker_transitions_total", "counter",
               "Circuit breaker transitions, by route and the state entered.");

    per_route(out, view,
              (struct family)FAMILY(
                  "workshop_breaker_state", "gauge",
                  "Circuit breaker state: 0 closed, 1 open, 2 half-open."),
              breaker_state);
    for (size_t r = 0; r < view->route_count; r++) {
        const struct gw_route_view *rv = &view->routes[r];
        if (rv->breaker == NULL || rv->metrics == NULL)
            continue;
        for (int s = 0; s < GW_BREAKER_STATES; s++) {
            begin(out, &transitions, NULL, rv);
            label(out, "to", gw_metrics_state_labels[s]);
            end_u64(out, load(&rv->metrics->breaker_transitions[s]));
        }
    }
    per_route(out, view,
              (struct family)FAMILY(
                  "workshop_breaker_consecutive_failures", "gauge",
                  "Failed or timed-out calls in a row, reset by a success."),
              breaker_consecutive);
    per_route(out, view,
              (struct family)FAMILY(
                  "workshop_breaker_rejections_total", "counter",
                  "Calls the breaker rejected since its policy was created."),
              breaker_rejections);
    render_breaker_timing(out, view);
}

static void
render_breaker_window(struct gw_metrics_writer *out,
                      const struct gw_metrics_view *view)
{
    struct family window =
        FAMILY("workshop_breaker_window_calls", "gauge",
               "Calls in the breaker's rolling window, by outcome.");
    struct family buckets =
        FAMILY("workshop_breaker_bucket_calls", "gauge",
               "Calls in each bucket of the breaker's rolling window, by "
               "outcome; bucket 0 is the oldest.");

    for (size_t r = 0; r < view->route_count; r++) {
        const struct gw_route_view *rv = &view->routes[r];
        if (rv->breaker == NULL)
            continue;
        for (size_t o = 0; o < GW_BREAKER_OUTCOMES; o++) {
            begin(out, &window, NULL, rv);
            label(out, "outcome", gw_metrics_breaker_outcomes[o]);
            end_u64(out, gw_breaker_count(&rv->breaker->window, o));
        }
    }
    for (size_t r = 0; r < view->route_count; r++) {
        const struct gw_route_view *rv = &view->routes[r];
        if (rv->breaker == NULL)
            continue;
        for (uint32_t b = 0; b < rv->breaker->bucket_count; b++) {
            for (size_t o = 0; o < GW_BREAKER_OUTCOMES; o++) {
                begin(out, &buckets, NULL, rv);
                put(out, ",bucket=\"");
                gw_metrics_put_u64(out, b);
                put(out, "\"");
                label(out, "outcome", gw_metrics_breaker_outcomes[o]);
                end_u64(out, gw_breaker_count(&rv->breaker->buckets[b], o));
            }
        }
    }
}

/* --- rate limiters and bulkheads -------------------------------------- */

static bool
limiter_tokens(const struct gw_route_view *rv, uint64_t *v)
{
    if (rv->limiter == NULL || rv->limiter_keyed)
        return false;
    *v = rv->limiter->tokens;
    return true;
}

static bool
limiter_keys(const struct gw_route_view *rv, uint64_t *v)
{
    if (rv->limiter == NULL || !rv->limiter_keyed)
        return false;
    *v = rv->limiter->keys;
    return true;
}

static bool
limiter_rejections(const struct gw_route_view *rv, uint64_t *v)
{
    if (rv->limiter == NULL)
        return false;
    *v = rv->limiter->rejections;
    return true;
}

static bool
limiter_evictions(const struct gw_route_view *rv, uint64_t *v)
{
    if (rv->limiter == NULL || !rv->limiter_keyed)
        return false;
    *v = rv->limiter->evictions;
    return true;
}

static void
render_limiters(struct gw_metrics_writer *out,
                const struct gw_metrics_view *view)
{
    per_route(out, view,
              (struct family)FAMILY(
                  "workshop_ratelimit_tokens", "gauge",
                  "Tokens left in the bucket of a limiter without keys."),
              limiter_tokens);
    per_route(out, view,
              (struct family)FAMILY("workshop_ratelimit_keys", "gauge",
                                    "Keys in a keyed limiter's table."),
              limiter_keys);
    per_route(out, view,
              (struct family)FAMILY("workshop_ratelimit_rejections_total",
                                    "counter",
                                    "Requests the rate limiter rejected "
                                    "since its policy was created."),
              limiter_rejections);
    per_route(out, view,
              (struct family)FAMILY("workshop_ratelimit_key_evictions_total",
                                    "counter",
                                    "Keys evicted from a full key table "
                                    "since the limiter was created."),
              limiter_evictions);
}

static bool
bulkhead_in_flight(const struct gw_route_view *rv, uint64_t *v)
{
    if (rv->bulkhead == NULL)
        return false;
    *v = rv->bulkhead->in_flight;
    return true;
}

static bool
bulkhead_waiting(const struct gw_route_view *rv, uint64_t *v)
{
    if (rv->bulkhead == NULL)
        return false;
    *v = rv->bulkhead->waiting;
    return true;
}

static bool
bulkhead_max(const struct gw_route_view *rv, uint64_t *v)
{
    if (rv->bulkhead == NULL)
        return false;
    *v = rv->bulkhead_max_concurrent;
    return true;
}

static bool
bulkhead_rejections(const struct gw_route_view *rv, uint64_t *v)
{
    if (rv->bulkhead == NULL)
        return false;
    *v = rv->bulkhead->rejections;
    return true;
}

static void
render_bulkheads(struct gw_metrics_writer *out,
                 const struct gw_metrics_view *view)
{
    per_route(out, view,
              (struct family)FAMILY("workshop_bulkhead_in_flight", "gauge",
                                    "Calls holding a bulkhead slot."),
              bulkhead_in_flight);
    per_route(out, view,
              (struct family)FAMILY("workshop_bulkhead_waiting", "gauge",
                                    "Calls queued for a bulkhead slot."),
              bulkhead_waiting);
    per_route(
        out, view,
        (struct family)FAMILY("workshop_bulkhead_max_concurrent", "gauge",
                              "Bulkhead slots: the configured max_concurrent."),
        bulkhead_max);
    per_route(out, view,
              (struct family)FAMILY("workshop_bulkhead_rejections_total",
                                    "counter",
                                    "Calls the bulkhead rejected, wait "
                                    "timeouts included, since its policy "
                                    "was created."),
              bulkhead_rejections);
}

/* --- process ---------------------------------------------------------- */

/* Names and help texts as the Prometheus client libraries write them. */
static void
render_process(struct gw_metrics_writer *out, const struct gw_process_view *p)
{
    if (p->cpu_seconds >= 0)
        single_double(out,
                      (struct family)FAMILY(
                          "process_cpu_seconds_total", "counter",
                          "Total user and system CPU time spent in seconds."),
                      p->cpu_seconds);
    if (p->resident_bytes >= 0)
        single_double(out,
                      (struct family)FAMILY("process_resident_memory_bytes",
                                            "gauge",
                                            "Resident memory size in bytes."),
                      p->resident_bytes);
    if (p->virtual_bytes >= 0)
        single_double(out,
                      (struct family)FAMILY("process_virtual_memory_bytes",
                                            "gauge",
                                            "Virtual memory size in bytes."),
                      p->virtual_bytes);
    if (p->virtual_max_bytes >= 0)
        single_double(out,
                      (struct family)FAMILY("process_virtual_memory_max_bytes",
                                            "gauge",
                                            "Maximum amount of virtual memory "
                                            "available in bytes."),
                      p->virtual_max_bytes);
    if (p->open_fds >= 0)
        single_double(out,
                      (struct family)FAMILY("process_open_fds", "gauge",
                                            "Number of open file "
                                            "descriptors."),
                      p->open_fds);
    if (p->max_fds >= 0)
        single_double(out,
                      (struct family)FAMILY("process_max_fds", "gauge",
                                            "Maximum number of open file "
                                            "descriptors."),
                      p->max_fds);
    single_double(out,
                  (struct family)FAMILY("process_start_time_seconds", "gauge",
                                        "Start time of the process since "
                                        "unix epoch in seconds."),
                  p->start_time_seconds);
}

int
gw_metrics_text(const struct gw_metrics_view *view, struct gw_buf *buf)
{
    struct gw_metrics_writer w = {.out = buf, .len = 0};
    struct gw_metrics_writer *out = &w;

    render_gateway(out, view);
    render_requests(out, view);
    render_latency(out, view);
    render_attempts(out, view);
    render_retries_fallbacks(out, view);
    if (view->breakers > 0) {
        render_breaker_state(out, view);
        render_breaker_window(out, view);
    }
    if (view->limiters > 0)
        render_limiters(out, view);
    if (view->bulkheads > 0)
        render_bulkheads(out, view);
    render_process(out, &view->process);
    gw_metrics_writer_flush(out);
    return buf->failed ? -1 : 0;
}
