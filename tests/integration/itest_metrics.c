/*
 * The admin listener through the real gateway binary. Covered: /healthz,
 * /readyz (also while draining), /metrics in text and JSON after real
 * traffic, a breaker opened by traffic, and reload results. Also covered:
 * routes that cannot shadow the admin paths, and JSON access log lines.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static struct h_proc upstream;
static struct h_proc gateway;

/* %1$d is the upstream's port. */
static const char config_fmt[] =
    "{\"listen\":\"127.0.0.1:0\",\"admin\":{\"listen\":\"127.0.0.1:0\"},"
    "\"log\":{\"access\":\"json\"},\"drain_timeout_ms\":5000,"
    "\"routes\":["
    "{\"name\":\"api\",\"match\":{\"prefix\":\"/api\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\"}},"
    "{\"name\":\"flaky\",\"match\":{\"prefix\":\"/flaky\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\"},"
    "\"breaker\":{\"trip\":\"consecutive_failures\","
    "\"consecutive_failures\":3,\"open_ms\":60000}},"
    "{\"name\":\"shadow\",\"match\":{\"prefix\":\"/metrics\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\"}},"
    "{\"name\":\"slow\",\"match\":{\"prefix\":\"/slow\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\",\"timeout_ms\":10000}}"
    "]}";

static char *
config_text(void)
{
    char *config = h_format(config_fmt, upstream.port);
    assert_non_null(config);
    return config;
}

static int
setup(void **state)
{
    (void)state;
    if (h_upstream_start(&upstream) != 0)
        return -1;
    char *config = h_format(config_fmt, upstream.port);
    int rc = config != NULL ? h_gateway_start(&gateway, config) : -1;
    free(config);
    return rc;
}

static int
teardown(void **state)
{
    (void)state;
    if (gateway.pid > 0)
        h_gateway_stop_checked(&gateway);
    h_upstream_stop_checked(&upstream);
    return 0;
}

/* GETs path from the admin port; the caller frees resp. */
static void
admin_get(struct h_response *resp, const char *path)
{
    assert_int_equal(
        h_get(resp, "http://127.0.0.1:%d%s", gateway.admin_port, path), 0);
}

static void
traffic_expect(const char *path, long status)
{
    struct h_response resp;

    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d%s", gateway.port, path),
                     0);
    if (resp.status != status)
        fail_msg("GET %s: status %ld, expected %ld", path, resp.status, status);
    h_response_free(&resp);
}

/* Returns true when /metrics has line (a whole line). */
static bool
metrics_has(const char *line)
{
    struct h_response resp;
    char pattern[512];

    int rc = h_get(&resp, "http://127.0.0.1:%d/metrics", gateway.admin_port);
    snprintf(pattern, sizeof(pattern), "\n%s\n", line);
    bool found =
        rc == 0 && resp.status == 200 && strstr(resp.body, pattern) != NULL;
    h_response_free(&resp);
    return found;
}

static bool
metrics_has_fn(void *line)
{
    return metrics_has(line);
}

/* Fails unless /metrics shows line within 5 s. */
static void
expect_metric(const char *line)
{
    if (!h_wait_until(metrics_has_fn, (void *)line, 5000))
        fail_msg("/metrics never showed: %s", line);
}

static void
admin_serves_health(void **state)
{
    struct h_response resp;

    (void)state;
    admin_get(&resp, "/healthz");
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.body, "ok\n");
    h_response_free(&resp);

    admin_get(&resp, "/readyz");
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.body, "ready\n");
    h_response_free(&resp);

    admin_get(&resp, "/nothing-here");
    assert_int_equal(resp.status, 404);
    h_response_free(&resp);

    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics",
             gateway.admin_port);
    struct h_request post = {
        .method = "POST", .url = url, .body = "x", .body_len = 1};
    assert_int_equal(h_http(&post, &resp), 0);
    assert_int_equal(resp.status, 405);
    assert_non_null(h_header(&resp, "Allow", 0));
    assert_string_equal(h_header(&resp, "Allow", 0), "GET, HEAD");
    h_response_free(&resp);
}

static void
metrics_count_traffic(void **state)
{
    struct h_response resp;

    (void)state;
    traffic_expect("/api/a", 200);
    traffic_expect("/api/b?status=503", 503);
    traffic_expect("/nowhere", 404);

    admin_get(&resp, "/metrics");
    assert_int_equal(resp.status, 200);
    assert_non_null(h_header(&resp, "Content-Type", 0));
    assert_string_equal(h_header(&resp, "Content-Type", 0),
                        "text/plain; version=0.0.4; charset=utf-8");
    assert_non_null(strstr(resp.body, "# TYPE workshop_requests_total "
                                      "counter\n"));
    assert_non_null(strstr(resp.body, "\nworkshop_build_info{version="));
    assert_non_null(strstr(resp.body, "\nprocess_open_fds "));
    h_response_free(&resp);

    /* A request is counted just after its response is queued, so a
     * client can see the response first: poll. */
    expect_metric("workshop_requests_total{route=\"api\",code=\"200\"} 1");
    expect_metric("workshop_requests_total{route=\"api\",code=\"503\"} 1");
    expect_metric("workshop_requests_total{route=\"(none)\",code=\"404\"} 1");
    expect_metric(
        "workshop_upstream_attempts_total{route=\"api\",outcome=\"ok\"} 2");
    expect_metric("workshop_request_duration_seconds_count{route=\"api\"} 2");
    expect_metric("workshop_upstream_duration_seconds_bucket{route=\"api\","
                  "le=\"+Inf\"} 2");
}

static void
metrics_json_view(void **state)
{
    struct h_response resp;

    (void)state;
    traffic_expect("/api/json", 200);
    admin_get(&resp, "/metrics?format=json");
    assert_int_equal(resp.status, 200);
    assert_string_equal(h_header(&resp, "Content-Type", 0), "application/json");
    cJSON *root = cJSON_Parse(resp.body);
    assert_non_null(root);
    cJSON *routes = cJSON_GetObjectItem(root, "routes");
    assert_int_equal(cJSON_GetArraySize(routes), 4);
    cJSON *flaky = cJSON_GetArrayItem(routes, 1);
    assert_string_equal(cJSON_GetObjectItem(flaky, "name")->valuestring,
                        "flaky");
    cJSON *buckets =
        cJSON_GetObjectItem(cJSON_GetObjectItem(flaky, "breaker"), "buckets");
    assert_int_equal(cJSON_GetArraySize(buckets), 10);
    assert_true(cJSON_IsObject(cJSON_GetObjectItem(root, "process")));
    cJSON_Delete(root);
    h_response_free(&resp);

    admin_get(&resp, "/metrics?format=text");
    assert_int_equal(resp.status, 200);
    assert_non_null(strstr(resp.body, "# TYPE workshop_build_info gauge"));
    h_response_free(&resp);
    admin_get(&resp, "/metrics?format=yaml");
    assert_int_equal(resp.status, 400);
    h_response_free(&resp);
}

static void
routes_cannot_shadow_admin(void **state)
{
    struct h_response resp;

    (void)state;
    /* On the traffic port /metrics belongs to the route and goes upstream. */
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/metrics", gateway.port),
                     0);
    assert_int_equal(resp.status, 200);
    assert_null(strstr(resp.body, "# TYPE"));
    h_response_free(&resp);
    /* The admin port still serves the gateway's own metrics. */
    expect_metric("workshop_requests_total{route=\"shadow\",code=\"200\"} 1");
}

static void
breaker_opened_by_traffic(void **state)
{
    struct h_response resp;

    (void)state;
    expect_metric("workshop_breaker_state{route=\"flaky\"} 0");
    for (int i = 0; i < 3; i++)
        traffic_expect("/flaky?status=503", 503);
    expect_metric("workshop_breaker_state{route=\"flaky\"} 1");
    expect_metric(
        "workshop_breaker_transitions_total{route=\"flaky\",to=\"open\"} 1");
    expect_metric("workshop_breaker_window_calls{route=\"flaky\","
                  "outcome=\"failures\"} 3");
    traffic_expect("/flaky", 503); /* rejected without an upstream call */
    expect_metric("workshop_breaker_rejections_total{route=\"flaky\"} 1");

    admin_get(&resp, "/metrics?format=json");
    cJSON *root = cJSON_Parse(resp.body);
    assert_non_null(root);
    cJSON *breaker = cJSON_GetObjectItem(
        cJSON_GetArrayItem(cJSON_GetObjectItem(root, "routes"), 1), "breaker");
    assert_string_equal(cJSON_GetObjectItem(breaker, "state")->valuestring,
                        "open");
    cJSON_Delete(root);
    h_response_free(&resp);

    char *log = h_proc_read_log(&gateway);
    assert_non_null(log);
    assert_non_null(strstr(log, "breaker: closed -> open"));
    free(log);
}

static void
reload_results_are_counted(void **state)
{
    (void)state;
    assert_int_equal(h_gateway_write_config(&gateway, "{\"routes\": 5}"), 0);
    assert_int_equal(kill(gateway.pid, SIGHUP), 0);
    expect_metric("workshop_config_reloads_total{result=\"failed\"} 1");
    expect_metric("workshop_config_reloads_total{result=\"ok\"} 0");

    char *config = config_text();
    assert_int_equal(h_gateway_write_config(&gateway, config), 0);
    free(config);
    assert_int_equal(kill(gateway.pid, SIGHUP), 0);
    expect_metric("workshop_config_reloads_total{result=\"ok\"} 1");

    char *log = h_proc_read_log(&gateway);
    assert_non_null(log);
    assert_non_null(strstr(log, "reload failed"));
    assert_non_null(strstr(log, "reloaded"));
    free(log);
    /* The breaker kept its state: the route's settings did not change. */
    expect_metric("workshop_breaker_state{route=\"flaky\"} 1");
}

/* Finds the JSON access log line whose target is target. */
static cJSON *
access_line(const char *log, const char *target)
{
    for (const char *line = log; line != NULL && *line != '\0';) {
        const char *end = strchr(line, '\n');
        if (end == NULL)
            break;
        if (line[0] == '{') {
            char *copy = strndup(line, (size_t)(end - line));
            cJSON *entry = cJSON_Parse(copy);
            free(copy);
            const char *t =
                cJSON_GetStringValue(cJSON_GetObjectItem(entry, "target"));
            if (t != NULL && strcmp(t, target) == 0)
                return entry;
            cJSON_Delete(entry);
        }
        line = end + 1;
    }
    return NULL;
}

struct log_search {
    const char *target;
    cJSON *entry; /* the line found, or NULL */
};

static bool
find_access_line(void *arg)
{
    struct log_search *search = arg;
    char *log = h_proc_read_log(&gateway);

    if (log != NULL)
        search->entry = access_line(log, search->target);
    free(log);
    return search->entry != NULL;
}

static void
access_log_is_json(void **state)
{
    struct log_search search = {.target = "/api/logged?status=201&x=%22q%22"};

    (void)state;
    traffic_expect(search.target, 201);
    if (!h_wait_until(find_access_line, &search, 5000)) {
        h_proc_dump_log(&gateway);
        fail_msg("no JSON access log line for %s", search.target);
    }
    cJSON *entry = search.entry;
    assert_string_equal(cJSON_GetObjectItem(entry, "route")->valuestring,
                        "api");
    assert_string_equal(cJSON_GetObjectItem(entry, "method")->valuestring,
                        "GET");
    assert_int_equal(cJSON_GetObjectItem(entry, "status")->valueint, 201);
    assert_int_equal(cJSON_GetObjectItem(entry, "upstream_status")->valueint,
                     201);
    assert_int_equal(cJSON_GetObjectItem(entry, "attempts")->valueint, 1);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(entry, "fallback")));
    assert_true(cJSON_IsNumber(cJSON_GetObjectItem(entry, "duration_ms")));
    assert_string_equal(cJSON_GetObjectItem(entry, "client")->valuestring,
                        "127.0.0.1");
    cJSON_Delete(entry);
}

static void *
slow_request(void *arg)
{
    struct h_response *resp = arg;
    char url[128];

    snprintf(url, sizeof(url),
             "http://127.0.0.1:%d/slow?delay_ms=2000&key=drain", gateway.port);
    struct h_request req = {.url = url, .timeout_ms = 10000};
    h_http(&req, resp);
    return NULL;
}

static bool
upstream_has_slow_request(void *arg)
{
    (void)arg;
    return h_upstream_key_requests(&upstream, "drain") == 1;
}

static bool
readyz_draining(void *arg)
{
    struct h_response resp;

    (void)arg;
    int rc = h_get(&resp, "http://127.0.0.1:%d/readyz", gateway.admin_port);
    bool draining =
        rc == 0 && resp.status == 503 && strcmp(resp.body, "draining\n") == 0;
    h_response_free(&resp);
    return draining;
}

/* Runs last: it stops the gateway. */
static void
readyz_fails_while_draining(void **state)
{
    struct h_response slow;
    pthread_t thread;

    (void)state;
    assert_int_equal(pthread_create(&thread, NULL, slow_request, &slow), 0);
    /* The upstream delays its response by 2 s once the request arrives. */
    if (!h_wait_until(upstream_has_slow_request, NULL, 5000))
        fail_msg("the slow request never reached the upstream");
    assert_int_equal(kill(gateway.pid, SIGTERM), 0);
    bool seen = h_wait_until(readyz_draining, NULL, 3000);
    pthread_join(thread, NULL);
    assert_true(seen);
    assert_int_equal(slow.status, 200); /* the drain let it finish */
    h_response_free(&slow);
    assert_int_equal(h_exit_code(h_proc_wait(&gateway, 15000)), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(admin_serves_health),
        cmocka_unit_test(metrics_count_traffic),
        cmocka_unit_test(metrics_json_view),
        cmocka_unit_test(routes_cannot_shadow_admin),
        cmocka_unit_test(breaker_opened_by_traffic),
        cmocka_unit_test(reload_results_are_counted),
        cmocka_unit_test(access_log_is_json),
        cmocka_unit_test(readyz_fails_while_draining),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
