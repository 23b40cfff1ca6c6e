/*
 * Cost of a /metrics scrape: gw_metrics_render() on a server-like state of
 * 100 routes, each with a rate limiter, a breaker of 10 buckets, a
 * bulkhead, a retry policy and a fallback, with traffic counted on every
 * route.
 *
 *   build/bench/bench_metrics [renders]
 *
 * Prints milliseconds per render (fastest, median, slowest) for the text
 * and the JSON form, and exits 1 when the median text render takes 5 ms or
 * more. Then it runs one thread through the request path's metric and
 * policy calls (config reference, limiter, breaker, bulkhead, counters),
 * first alone and then while another thread renders without pause. It
 * prints the cost per request both ways. A render takes the config lock
 * once, for a reference count, and no other lock that the request path
 * uses, so the second figure measures shared caches and CPUs.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "server.h"
#include "workshop/error.h"

#define ROUTES          100
#define DEFAULT_RENDERS 200
#define BUDGET_MS       5.0
#define LOAD_SECONDS    1

static double
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A config of ROUTES routes with every policy; the caller frees it. */
static struct gw_config *
build_config(void)
{
    struct gw_buf json = {.max = 1u << 20};
    struct gw_config *config = NULL;
    char err[512];

    gw_buf_printf(&json, "{\"routes\":[");
    for (int i = 0; i < ROUTES; i++)
        gw_buf_printf(
            &json,
            "%s{\"name\":\"route-%03d\",\"match\":{\"prefix\":\"/r%d\"},"
            "\"upstream\":{\"url\":\"http://127.0.0.1:9000\"},"
            "\"rate_limit\":{\"rate\":1000,\"burst\":1000},"
            "\"breaker\":{\"window_ms\":10000,\"buckets\":10},"
            "\"bulkhead\":{\"max_concurrent\":64},"
            "\"retry\":{\"attempts\":3,\"on\":[\"5xx\"]},"
            "\"fallback\":{\"status\":503,\"body\":\"down\"}}",
            i > 0 ? "," : "", i, i);
    gw_buf_printf(&json, "]}");
    if (json.failed || gw_config_parse(json.data, json.len, "bench.json",
                                       &config, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_metrics: config: %s\n",
                json.failed ? "out of memory" : err);
        config = NULL;
    }
    gw_buf_free(&json);
    return config;
}

/* Starts srv as gw_server_start() would, minus listeners and upstreams. */
static int
server_init(struct gw_server *srv)
{
    struct gw_config *config = build_config();

    memset(srv, 0, sizeof(*srv));
    pthread_mutex_init(&srv->config_lock, NULL);
    if (config == NULL || gw_metrics_init(&srv->metrics) != 0)
        return -1;
    srv->current = calloc(1, sizeof(*srv->current));
    if (srv->current == NULL)
        return -1;
    srv->current->config = config;
    atomic_init(&srv->current->refs, 1);
    for (size_t i = 0; i < config->route_count; i++) {
        struct gw_route *route = &config->routes[i];
        route->metrics = gw_metrics_route(&srv->metrics, route->name);
        if (route->metrics == NULL)
            return -1;
        route->runtime = gw_route_runtime_get(route, NULL, route->metrics);
        if (route->runtime == NULL)
            return -1;
    }
    return 0;
}

static void
server_destroy(struct gw_server *srv)
{
    gw_config_ref_put(&srv->current);
    gw_metrics_destroy(&srv->metrics);
    pthread_mutex_destroy(&srv->config_lock);
}

/* One request's policy and metric calls on route at now. */
static void
request(struct gw_route *route, wk_time now, unsigned status, int err)
{
    struct gw_route_runtime *rt = route->runtime;
    struct wk_breaker_permit permit;

    if (wk_ratelimit_take(rt->limiter, NULL, now, NULL) != WK_OK)
        return;
    if (wk_breaker_before(rt->breaker, now, &permit) != WK_OK)
        return;
    if (wk_bulkhead_try_acquire(rt->bulkhead) == WK_OK) {
        gw_metrics_upstream(route->metrics, GW_UP_OK, WK_MSEC(3));
        wk_bulkhead_release(rt->bulkhead);
    }
    wk_breaker_after(rt->breaker, &permit, err, WK_MSEC(3), now);
    gw_metrics_request(route->metrics, status, WK_MSEC(4));
}

/* Spreads traffic over the last 10 s so every breaker bucket has counts. */
static void
populate(struct gw_server *srv)
{
    const struct gw_config *config = srv->current->config;
    wk_time now = wk_clock_now(NULL);

    for (size_t i = 0; i < config->route_count; i++) {
        struct gw_route *route = &config->routes[i];
        for (int k = 0; k < 200; k++) {
            wk_time at = now - WK_SEC(10) + (wk_duration)k * WK_MSEC(50);
            bool fail = k % 7 == 0;
            request(route, at, fail ? 503 : 200,
                    fail ? WK_ERR_UPSTREAM : WK_OK);
        }
        gw_metrics_request(route->metrics, 404, WK_MSEC(1));
        gw_metrics_retry(route->metrics);
        gw_metrics_fallback(route->metrics, GW_REASON_STATUS_5XX);
    }
}

static int
compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Times renders; fills sorted[] with the time of each, in ms. */
static int
time_renders(struct gw_server *srv, enum gw_metrics_format format,
             double *sorted, int renders, size_t *bytes)
{
    for (int i = 0; i < renders; i++) {
        char *text;
        double start = now_ms();
        if (gw_metrics_render(srv, format, &text, bytes) != 0) {
            fprintf(stderr, "bench_metrics: render failed\n");
            return -1;
        }
        sorted[i] = now_ms() - start;
        free(text);
    }
    qsort(sorted, (size_t)renders, sizeof(*sorted), compare_double);
    return 0;
}

struct load {
    struct gw_server *srv;
    _Atomic bool stop;
    _Atomic uint64_t renders;
};

static void *
render_loop(void *arg)
{
    struct load *load = arg;

    while (!atomic_load(&load->stop)) {
        char *text;
        size_t len;
        if (gw_metrics_render(load->srv, GW_METRICS_TEXT, &text, &len) == 0)
            free(text);
        atomic_fetch_add(&load->renders, 1);
    }
    return NULL;
}

/* Runs the request path on this thread for LOAD_SECONDS; returns ns/req. */
static double
request_path_cost(struct gw_server *srv)
{
    uint64_t requests = 0;
    double start = now_ms();
    double end = start + LOAD_SECONDS * 1e3;

    while (now_ms() < end) {
        for (int k = 0; k < 1000; k++) {
            struct gw_config_ref *ref = gw_server_config_get(srv);
            struct gw_route *route =
                &ref->config->routes[requests % ref->config->route_count];
            request(route, wk_clock_now(NULL), 200, WK_OK);
            gw_config_ref_put(&ref);
            requests++;
        }
    }
    return (now_ms() - start) * 1e6 / (double)requests;
}

int
main(int argc, char **argv)
{
    int renders = argc > 1 ? (int)strtol(argv[1], NULL, 10) : DEFAULT_RENDERS;
    struct gw_server srv;
    double *times = calloc(renders > 0 ? (size_t)renders : 1, sizeof(double));
    size_t text_bytes = 0, json_bytes = 0;
    int rc = 1;

    gw_log_set_level(GW_LOG_ERROR);
    if (renders <= 0 || times == NULL || server_init(&srv) != 0) {
        fprintf(stderr, "bench_metrics: setup failed\n");
        return 1;
    }
    populate(&srv);
    printf("%d routes, each with a limiter, a 10-bucket breaker, a bulkhead, "
           "a retry policy and a fallback; %d renders; %ld CPUs online\n",
           ROUTES, renders, sysconf(_SC_NPROCESSORS_ONLN));

    if (time_renders(&srv, GW_METRICS_TEXT, times, renders, &text_bytes) != 0)
        goto out;
    double text_median = times[renders / 2];
    printf("text  %8zu bytes  ms per render: min %.3f  median %.3f  "
           "max %.3f\n",
           text_bytes, times[0], text_median, times[renders - 1]);
    if (time_renders(&srv, GW_METRICS_JSON, times, renders, &json_bytes) != 0)
        goto out;
    printf("json  %8zu bytes  ms per render: min %.3f  median %.3f  "
           "max %.3f\n",
           json_bytes, times[0], times[renders / 2], times[renders - 1]);

    struct load load = {.srv = &srv};
    double alone = request_path_cost(&srv);
    pthread_t renderer;
    if (pthread_create(&renderer, NULL, render_loop, &load) != 0)
        goto out;
    double shared = request_path_cost(&srv);
    atomic_store(&load.stop, true);
    pthread_join(renderer, NULL);
    printf("request path: %.0f ns per request alone, %.0f ns while %llu "
           "renders ran on another thread\n",
           alone, shared, (unsigned long long)atomic_load(&load.renders));

    rc = text_median < BUDGET_MS ? 0 : 1;
    printf("median text render %.3f ms: %s the %.0f ms budget\n", text_median,
           rc == 0 ? "within" : "OVER", BUDGET_MS);
out:
    server_destroy(&srv);
    free(times);
    return rc;
}
