/*
 * Metrics storage and the Prometheus text exposition.
 */
#include "metrics.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "server.h"
#include "version.h"

/* Upper bounds of the latency histograms, in seconds. */
static const double latency_bounds[GW_LATENCY_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25,  0.5,    1.0,   2.5,  5.0,   10.0, 30.0,
};

/* The label value used for requests that matched no route. */
#define UNROUTED_LABEL "(none)"
/* Rendered text is capped so a scrape cannot exhaust memory. */
#define RENDER_MAX (64u * 1024 * 1024)

int
gw_metrics_init(struct gw_metrics *m)
{
    struct timespec now;

    memset(m, 0, sizeof(*m));
    if (pthread_mutex_init(&m->lock, NULL) != 0)
        return -1;
    snprintf(m->unrouted.name, sizeof(m->unrouted.name), "%s",
             UNROUTED_LABEL);
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
            /* Publish after the slot is filled: the renderer reads the
             * count without the lock. */
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

    while (i < GW_LATENCY_BUCKETS && seconds > latency_bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, (uint64_t)(ns > 0 ? ns : 0),
                              memory_order_relaxed);
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
gw_metrics_fallback(struct gw_route_metrics *rm,
                    enum gw_fallback_reason reason)
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
    if (to >= 0 && to < 3)
        atomic_fetch_add_explicit(&rm->breaker_transitions[to], 1,
                                  memory_order_relaxed);
}

/* --- rendering ------------------------------------------------------------ */

static void
family(struct gw_buf *out, const char *name, const char *type,
       const char *help)
{
    gw_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Collects the route metrics to render: every named route, then unrouted. */
static size_t
snapshot_routes(struct gw_metrics *m, struct gw_route_metrics **list,
                size_t max)
{
    size_t count = atomic_load_explicit(&m->route_count, memory_order_acquire);
    size_t n = 0;

    for (size_t i = 0; i < count && n < max - 1; i++)
        list[n++] = m->routes[i];
    list[n++] = &m->unrouted;
    return n;
}

static void
render_requests(struct gw_buf *out, struct gw_route_metrics **routes,
                size_t n)
{
    family(out, "workshop_requests_total", "counter",
           "Requests answered, by route and HTTP status code.");
    for (size_t r = 0; r < n; r++) {
        for (unsigned s = 0; s < GW_STATUS_SLOTS; s++) {
            uint64_t v = atomic_load_explicit(&routes[r]->requests[s],
                                              memory_order_relaxed);
            if (v > 0)
                gw_buf_printf(out,
                              "workshop_requests_total{route=\"%s\","
                              "code=\"%u\"} %llu\n",
                              routes[r]->name, s + GW_STATUS_MIN,
                              (unsigned long long)v);
        }
    }
}

static void
render_histogram(struct gw_buf *out, const char *name, const char *route,
                 const struct gw_histogram *h)
{
    uint64_t cumulative = 0;

    for (size_t i = 0; i <= GW_LATENCY_BUCKETS; i++) {
        cumulative +=
            atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
        if (i < GW_LATENCY_BUCKETS)
            gw_buf_printf(out, "%s_bucket{route=\"%s\",le=\"%g\"} %llu\n",
                          name, route, latency_bounds[i],
                          (unsigned long long)cumulative);
        else
            gw_buf_printf(out, "%s_bucket{route=\"%s\",le=\"+Inf\"} %llu\n",
                          name, route, (unsigned long long)cumulative);
    }
    /* The count is the sum of the buckets read, so the series agree even
     * while requests finish during the scrape. */
    double sum = (double)atomic_load_explicit(&h->sum_ns,
                                              memory_order_relaxed) /
                 1e9;
    gw_buf_printf(out, "%s_sum{route=\"%s\"} %.9f\n", name, route, sum);
    gw_buf_printf(out, "%s_count{route=\"%s\"} %llu\n", name, route,
                  (unsigned long long)cumulative);
}

static void
render_latency(struct gw_buf *out, struct gw_route_metrics **routes, size_t n)
{
    family(out, "workshop_request_duration_seconds", "histogram",
           "Time from the request head to the response, by route.");
    for (size_t r = 0; r < n; r++)
        render_histogram(out, "workshop_request_duration_seconds",
                         routes[r]->name, &routes[r]->request_latency);

    family(out, "workshop_upstream_duration_seconds", "histogram",
           "Duration of each upstream attempt, by route.");
    for (size_t r = 0; r + 1 < n; r++)
        render_histogram(out, "workshop_upstream_duration_seconds",
                         routes[r]->name, &routes[r]->upstream_latency);
}

static void
render_attempts(struct gw_buf *out, struct gw_route_metrics **routes,
                size_t n)
{
    family(out, "workshop_upstream_attempts_total", "counter",
           "Upstream attempts, by route and outcome.");
    for (size_t r = 0; r + 1 < n; r++) {
        for (int o = GW_UP_OK; o <= GW_UP_NOMEM; o++) {
            char outcome[32];
            snprintf(outcome, sizeof(outcome), "%s",
                     gw_upstream_outcome_name((enum gw_upstream_outcome)o));
            for (char *c = outcome; *c != '\0'; c++)
                *c = *c == ' ' ? '_' : *c;
            gw_buf_printf(
                out,
                "workshop_upstream_attempts_total{route=\"%s\",outcome=\"%s\"} "
                "%llu\n",
                routes[r]->name, outcome,
                (unsigned long long)atomic_load_explicit(
                    &routes[r]->upstream_attempts[o], memory_order_relaxed));
        }
    }
}

static long
count_open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    long n = 0;

    if (dir == NULL)
        return -1;
    while (readdir(dir) != NULL)
        n++;
    closedir(dir);
    return n - 3; /* ".", ".." and the directory's own fd */
}

static void
render_process(struct gw_buf *out, const struct gw_metrics *m)
{
    char stat[1024];
    unsigned long utime = 0, stime = 0, vsize = 0;
    long rss = 0;
    FILE *f = fopen("/proc/self/stat", "r");

    if (f != NULL) {
        size_t n = fread(stat, 1, sizeof(stat) - 1, f);
        stat[n] = '\0';
        fclose(f);
        /* Fields after the command name, which may contain spaces. */
        const char *p = strrchr(stat, ')');
        if (p != NULL)
            sscanf(p + 2,
                   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu "
                   "%*d %*d %*d %*d %*d %*d %*u %lu %ld",
                   &utime, &stime, &vsize, &rss);
    }
    double ticks = (double)sysconf(_SC_CLK_TCK);
    struct rlimit lim = {0};
    getrlimit(RLIMIT_NOFILE, &lim);

    family(out, "process_cpu_seconds_total", "counter",
           "User and system CPU time spent, in seconds.");
    gw_buf_printf(out, "process_cpu_seconds_total %.2f\n",
                  (double)(utime + stime) / ticks);
    family(out, "process_resident_memory_bytes", "gauge",
           "Resident memory size in bytes.");
    gw_buf_printf(out, "process_resident_memory_bytes %ld\n",
                  rss * sysconf(_SC_PAGESIZE));
    family(out, "process_virtual_memory_bytes", "gauge",
           "Virtual memory size in bytes.");
    gw_buf_printf(out, "process_virtual_memory_bytes %lu\n", vsize);
    family(out, "process_open_fds", "gauge", "Open file descriptors.");
    gw_buf_printf(out, "process_open_fds %ld\n", count_open_fds());
    family(out, "process_max_fds", "gauge",
           "Maximum number of open file descriptors.");
    gw_buf_printf(out, "process_max_fds %llu\n",
                  (unsigned long long)lim.rlim_cur);
    family(out, "process_start_time_seconds", "gauge",
           "Start time of the process since the Unix epoch, in seconds.");
    gw_buf_printf(out, "process_start_time_seconds %.3f\n",
                  m->start_time_seconds);
}

int
gw_metrics_render(struct gw_server *srv, char **text, size_t *len)
{
    struct gw_metrics *m = &srv->metrics;
    struct gw_buf out = {.max = RENDER_MAX};
    struct gw_route_metrics *routes[GW_METRICS_ROUTES_MAX + 1];
    size_t n = snapshot_routes(m, routes, GW_METRICS_ROUTES_MAX + 1);

    family(&out, "workshop_build_info", "gauge",
           "Build information; the value is always 1.");
    gw_buf_printf(&out, "workshop_build_info{version=\"%s\"} 1\n",
                  GW_VERSION);
    render_requests(&out, routes, n);
    render_latency(&out, routes, n);
    render_attempts(&out, routes, n);
    family(&out, "workshop_in_flight_requests", "gauge",
           "Requests received and not yet answered.");
    gw_buf_printf(&out, "workshop_in_flight_requests %ld\n",
                  atomic_load(&srv->in_flight));
    family(&out, "workshop_config_reloads_total", "counter",
           "Configuration reloads, by result.");
    gw_buf_printf(&out,
                  "workshop_config_reloads_total{result=\"ok\"} %llu\n"
                  "workshop_config_reloads_total{result=\"failed\"} %llu\n",
                  (unsigned long long)atomic_load(&m->reloads_ok),
                  (unsigned long long)atomic_load(&m->reloads_failed));
    render_process(&out, m);

    if (out.failed || out.data == NULL) {
        gw_buf_free(&out);
        return -1;
    }
    *text = gw_buf_take(&out, len);
    return 0;
}
