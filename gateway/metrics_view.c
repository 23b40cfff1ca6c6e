/*
 * Gathering a scrape's view: snapshots of each route's policies, escaped
 * label values, and the process_* values from /proc.
 */
#include "metrics_view.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "policy.h"

/*
 * Returns name escaped as a Prometheus label value (backslash, double quote
 * and newline get a backslash), in memory the caller frees, or NULL.
 */
static char *
escape_label(const char *name)
{
    char *out = malloc(2 * strlen(name) + 1);
    size_t n = 0;

    if (out == NULL)
        return NULL;
    for (const char *c = name; *c != '\0'; c++) {
        if (*c == '\\' || *c == '"') {
            out[n++] = '\\';
            out[n++] = *c;
        } else if (*c == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else {
            out[n++] = *c;
        }
    }
    out[n] = '\0';
    return out;
}

/* Copies the breaker's snapshot at now into rv. Returns 0 or -1. */
static int
gather_breaker(struct gw_route_view *rv, struct wk_breaker *breaker,
               wk_time now)
{
    struct wk_breaker_snapshot snap; /* about 4 KB */
    struct gw_breaker_view *b = &rv->breaker_data;

    wk_breaker_snapshot(breaker, now, &snap);
    b->buckets = calloc(snap.bucket_count > 0 ? snap.bucket_count : 1,
                        sizeof(*b->buckets));
    if (b->buckets == NULL)
        return -1;
    memcpy(b->buckets, snap.buckets, snap.bucket_count * sizeof(*b->buckets));
    b->state = snap.state;
    b->open_remaining = snap.open_remaining;
    b->probes_admitted = snap.probes_admitted;
    b->consecutive_failures = snap.consecutive_failures;
    b->rejections_total = snap.rejections_total;
    b->window = snap.window;
    b->bucket_count = snap.bucket_count;
    b->bucket_width = snap.bucket_width;
    rv->breaker = b;
    return 0;
}

/* Fills rv for route: its label, counters and policy snapshots. */
static int
gather_route(struct gw_metrics_view *view, struct gw_route_view *rv,
             const struct gw_route *route, wk_time now)
{
    const struct gw_route_runtime *rt = route->runtime;

    rv->name = route->name;
    rv->routed = true;
    rv->has_fallback = route->fallback_count > 0;
    rv->metrics = route->metrics;
    rv->label = escape_label(route->name);
    if (rv->label == NULL)
        return -1;
    if (rt == NULL)
        return 0;
    if (rt->breaker != NULL) {
        if (gather_breaker(rv, rt->breaker, now) != 0)
            return -1;
        view->breakers++;
    }
    if (rt->limiter != NULL) {
        wk_ratelimit_snapshot(rt->limiter, now, &rv->limiter_data);
        rv->limiter = &rv->limiter_data;
        rv->limiter_keyed = route->rate_limit.lib.max_keys > 0;
        view->limiters++;
    }
    if (rt->bulkhead != NULL) {
        wk_bulkhead_snapshot(rt->bulkhead, &rv->bulkhead_data);
        rv->bulkhead = &rv->bulkhead_data;
        rv->bulkhead_max_concurrent = route->bulkhead.lib.max_concurrent;
        view->bulkheads++;
    }
    if (rt->retry != NULL) {
        wk_retry_snapshot(rt->retry, now, &rv->retry_data);
        rv->retry = &rv->retry_data;
        view->retries++;
    }
    return 0;
}

static double
count_open_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    double n = 0;
    struct dirent *e;

    if (dir == NULL)
        return -1;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] != '.')
            n++;
    }
    closedir(dir);
    return n - 1; /* the directory's own descriptor */
}

/* Reads CPU time and memory sizes from /proc/self/stat (see proc(5)). */
static void
read_proc_stat(struct gw_process_view *p)
{
    char stat[1024];
    unsigned long utime, stime, vsize;
    long rss;
    FILE *f = fopen("/proc/self/stat", "r");

    if (f == NULL)
        return;
    size_t n = fread(stat, 1, sizeof(stat) - 1, f);
    stat[n] = '\0';
    fclose(f);
    /* The fields after the command name, which may contain spaces. */
    const char *p_end = strrchr(stat, ')');
    if (p_end == NULL ||
        sscanf(p_end + 2,
               "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu "
               "%*d %*d %*d %*d %*d %*d %*u %lu %ld",
               &utime, &stime, &vsize, &rss) != 4)
        return;
    long ticks = sysconf(_SC_CLK_TCK);
    long page = sysconf(_SC_PAGESIZE);
    if (ticks > 0)
        p->cpu_seconds = (double)(utime + stime) / (double)ticks;
    p->virtual_bytes = (double)vsize;
    if (page > 0)
        p->resident_bytes = (double)rss * (double)page;
}

static void
gather_process(struct gw_process_view *p, const struct gw_metrics *m)
{
    struct rlimit lim;

    *p = (struct gw_process_view){
        .cpu_seconds = -1,
        .resident_bytes = -1,
        .virtual_bytes = -1,
        .virtual_max_bytes = -1,
        .max_fds = -1,
        .start_time_seconds = m->start_time_seconds,
    };
    read_proc_stat(p);
    p->open_fds = count_open_fds();
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY)
        p->max_fds = (double)lim.rlim_cur;
    if (getrlimit(RLIMIT_AS, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY)
        p->virtual_max_bytes = (double)lim.rlim_cur;
}

int
gw_metrics_view_gather(struct gw_metrics_view *view, struct gw_metrics *m,
                       const struct gw_config *config, long in_flight,
                       wk_time now)
{
    size_t routes = config != NULL ? config->route_count : 0;

    *view = (struct gw_metrics_view){
        .in_flight = in_flight,
        .reloads_ok = atomic_load(&m->reloads_ok),
        .reloads_failed = atomic_load(&m->reloads_failed),
    };
    view->routes = calloc(routes + 1, sizeof(*view->routes));
    if (view->routes == NULL)
        return -1;
    view->route_count = routes + 1;
    for (size_t i = 0; i < routes; i++) {
        if (gather_route(view, &view->routes[i], &config->routes[i], now) !=
            0) {
            gw_metrics_view_free(view);
            return -1;
        }
    }

    struct gw_route_view *unrouted = &view->routes[routes];
    unrouted->name = GW_METRICS_UNROUTED_LABEL;
    unrouted->metrics = &m->unrouted;
    unrouted->label = escape_label(GW_METRICS_UNROUTED_LABEL);
    if (unrouted->label == NULL) {
        gw_metrics_view_free(view);
        return -1;
    }
    gather_process(&view->process, m);
    return 0;
}

void
gw_metrics_view_free(struct gw_metrics_view *view)
{
    for (size_t i = 0; i < view->route_count; i++) {
        free(view->routes[i].label);
        free(view->routes[i].breaker_data.buckets);
    }
    free(view->routes);
    *view = (struct gw_metrics_view){.routes = NULL};
}
