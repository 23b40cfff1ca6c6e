/*
 * One scrape's read of the metrics: the routes of a configuration with their
 * counters and a snapshot of each policy, which metrics_text.c renders as
 * the Prometheus text format and metrics_json.c as JSON.
 *
 * Each policy is snapshotted once per scrape, so a breaker's window totals
 * and its buckets agree. Counters are read from their atomics while
 * rendering. Each histogram is read once and its count is the sum of the
 * buckets read, so its series agree even while requests finish.
 *
 * Thread safety: a view belongs to the thread that gathered it. It borrows
 * the configuration and the metrics, which must outlive it.
 */
#ifndef GATEWAY_METRICS_VIEW_H
#define GATEWAY_METRICS_VIEW_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"
#include "config.h"
#include "metrics.h"
#include "workshop/breaker.h"
#include "workshop/bulkhead.h"
#include "workshop/clock.h"
#include "workshop/ratelimit.h"
#include "workshop/retry.h"

/* Label value of the requests that matched no route. */
#define GW_METRICS_UNROUTED_LABEL "(none)"

/* Outcome label values of the breaker's counts, in struct order. */
#define GW_BREAKER_OUTCOMES 5

struct gw_breaker_view {
    enum wk_breaker_state state;
    wk_duration open_remaining;
    uint32_t probes_admitted;
    uint64_t consecutive_failures;
    uint64_t rejections_total;
    struct wk_breaker_counts window;
    uint32_t bucket_count;
    wk_duration bucket_width;
    struct wk_breaker_counts *buckets; /* bucket_count, oldest first; owned */
};

struct gw_route_view {
    const char *name;  /* borrowed from the configuration */
    char *label;       /* name escaped as a Prometheus label value; owned */
    bool routed;       /* false for the requests that matched no route */
    bool has_fallback; /* the route has a fallback */
    const struct gw_route_metrics *metrics;      /* NULL: nothing counted */
    const struct gw_breaker_view *breaker;       /* NULL: no breaker */
    const struct wk_ratelimit_snapshot *limiter; /* NULL: no rate limit */
    bool limiter_keyed;                          /* one bucket per key */
    const struct wk_bulkhead_snapshot *bulkhead; /* NULL: no bulkhead */
    uint32_t bulkhead_max_concurrent;
    const struct wk_retry_snapshot *retry; /* NULL: no retry policy */

    /* Storage the pointers above point into. */
    struct gw_breaker_view breaker_data;
    struct wk_ratelimit_snapshot limiter_data;
    struct wk_bulkhead_snapshot bulkhead_data;
    struct wk_retry_snapshot retry_data;
};

/*
 * The process_* values. A field that could not be read, or a limit that is
 * unlimited, is below 0 and is not rendered (null in JSON).
 */
struct gw_process_view {
    double cpu_seconds;
    double resident_bytes;
    double virtual_bytes;
    double virtual_max_bytes;
    double open_fds;
    double max_fds;
    double start_time_seconds;
};

struct gw_metrics_view {
    struct gw_route_view *routes; /* the configuration's, then unrouted */
    size_t route_count;
    size_t breakers, limiters, bulkheads, retries; /* routes with each */
    long in_flight;
    long connections;             /* client connections open now */
    uint64_t connections_refused; /* past limits.max_connections */
    uint64_t reloads_ok;
    uint64_t reloads_failed;
    struct gw_process_view process;
};

/*
 * Fills view from m and the routes of config at now (the monotonic time the
 * policies run on); in_flight is the requests in flight. Returns 0, or -1
 * when out of memory (view is then empty and needs no free).
 */
int gw_metrics_view_gather(struct gw_metrics_view *view, struct gw_metrics *m,
                           const struct gw_config *config, long in_flight,
                           wk_time now);

/* Frees what the view owns and clears it. Safe on a cleared view. */
void gw_metrics_view_free(struct gw_metrics_view *view);

/* Appends view as the Prometheus text format. Returns 0 or -1 (no memory). */
int gw_metrics_text(const struct gw_metrics_view *view, struct gw_buf *out);

/* Appends view as one JSON object. Returns 0 or -1 (no memory). */
int gw_metrics_json(const struct gw_metrics_view *view, struct gw_buf *out);

/* Label values of fixed sets, shared by both renderers. */
extern const char *const gw_metrics_outcome_labels[GW_UP_NOMEM + 1];
extern const char *const gw_metrics_state_labels[GW_BREAKER_STATES];
extern const char *const gw_metrics_breaker_outcomes[GW_BREAKER_OUTCOMES];
/* Histogram bounds in seconds, and the same bounds as le label values. */
extern const double gw_metrics_latency_bounds[GW_LATENCY_BUCKETS];
extern const char *const gw_metrics_latency_le[GW_LATENCY_BUCKETS];

/* Returns the breaker count of outcome i (the order of the labels above). */
uint64_t gw_breaker_count(const struct wk_breaker_counts *c, size_t i);

/*
 * Reads h once: cumulative[i] counts the observations up to bound i, and
 * cumulative[GW_LATENCY_BUCKETS] (+Inf) counts them all.
 */
void gw_histogram_read(const struct gw_histogram *h,
                       uint64_t cumulative[GW_LATENCY_BUCKETS + 1],
                       uint64_t *sum_ns);

/*
 * A buffered writer in front of a gw_buf. A scrape is tens of thousands of
 * short pieces, and copying them into a chunk costs a fraction of one
 * gw_buf_append() each. Call gw_metrics_writer_flush() at the end.
 */
struct gw_metrics_writer {
    struct gw_buf *out;
    size_t len;
    char chunk[16384];
};

static inline void
gw_metrics_writer_flush(struct gw_metrics_writer *w)
{
    gw_buf_append(w->out, w->chunk, w->len);
    w->len = 0;
}

static inline void
gw_metrics_write(struct gw_metrics_writer *w, const void *data, size_t len)
{
    if (len > sizeof(w->chunk) - w->len) {
        gw_metrics_writer_flush(w);
        if (len > sizeof(w->chunk)) {
            gw_buf_append(w->out, data, len);
            return;
        }
    }
    memcpy(w->chunk + w->len, data, len);
    w->len += len;
}

static inline void
gw_metrics_puts(struct gw_metrics_writer *w, const char *s)
{
    gw_metrics_write(w, s, strlen(s));
}

/* Writes v in decimal, without printf. */
void gw_metrics_put_u64(struct gw_metrics_writer *w, uint64_t v);

/* Writes ns nanoseconds as seconds with nine decimals, exactly. */
void gw_metrics_put_seconds(struct gw_metrics_writer *w, uint64_t ns);

#endif /* GATEWAY_METRICS_VIEW_H */
