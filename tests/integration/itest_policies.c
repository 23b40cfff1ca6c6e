/*
 * Per-route policies and fallbacks through the real gateway: the breaker
 * opens and closes, the limiter answers 429 with Retry-After, the bulkhead
 * answers 503, retries follow the method, fallbacks answer (static,
 * alternate upstream, stale), and SIGHUP reloads without losing a request.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static struct h_proc upstream;
static struct h_proc gateway;

/* The routes under test; %1$d is the upstream's port. */
static const char routes_fmt[] =
    "{\"listen\":\"127.0.0.1:0\",\"admin\":{\"listen\":\"127.0.0.1:0\"},"
    "\"log\":{\"access\":\"%2$s\"},"
    "\"routes\":["
    "{\"name\":\"breaker\",\"match\":{\"prefix\":\"/breaker\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\",\"timeout_ms\":2000},"
    "\"breaker\":{\"trip\":\"consecutive_failures\","
    "\"consecutive_failures\":3,\"open_ms\":400}},"
    "{\"name\":\"breaker-fb\",\"match\":{\"prefix\":\"/bfb\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\"},"
    "\"breaker\":{\"trip\":\"consecutive_failures\","
    "\"consecutive_failures\":2,\"open_ms\":60000},"
    "\"fallback\":{\"on\":[\"breaker_open\"],\"status\":200,"
    "\"headers\":{\"Content-Type\":\"text/plain\"},\"body\":\"degraded\"}},"
    "{\"name\":\"limited\",\"match\":{\"prefix\":\"/limited\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\"},"
    "\"rate_limit\":{\"rate\":0.5,\"burst\":2}},"
    "{\"name\":\"bulkhead\",\"match\":{\"prefix\":\"/bulkhead\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\"},"
    "\"bulkhead\":{\"max_concurrent\":2}},"
    "{\"name\":\"queue\",\"match\":{\"prefix\":\"/queue\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\"},"
    "\"bulkhead\":{\"max_concurrent\":1,\"max_wait\":4,"
    "\"max_wait_ms\":60000}},"
    "{\"name\":\"retry\",\"match\":{\"prefix\":\"/retry\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\"},"
    "\"retry\":{\"attempts\":3,\"on\":[\"5xx\"],\"backoff_ms\":5,"
    "\"max_backoff_ms\":20}},"
    "{\"name\":\"stale\",\"match\":{\"prefix\":\"/stale\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\"},"
    "\"fallback\":{\"on\":[\"upstream_error\",\"status_5xx\"],"
    "\"stale\":{\"max_age_ms\":60000}}},"
    "{\"name\":\"alternate\",\"match\":{\"prefix\":\"/alternate\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\",\"timeout_ms\":300},"
    "\"fallback\":[{\"on\":[\"timeout\"],\"upstream\":{\"url\":"
    "\"http://127.0.0.1:%1$d/spare\"}},{\"status\":503,\"body\":\"none\"}]}"
    "]}";

static int
setup(void **state)
{
    (void)state;
    if (h_upstream_start(&upstream) != 0)
        return -1;
    char *config = h_format(routes_fmt, upstream.port, "off");
    int rc = config != NULL ? h_gateway_start(&gateway, config) : -1;
    free(config);
    return rc;
}

static int
teardown(void **state)
{
    (void)state;
    h_gateway_stop_checked(&gateway);
    h_upstream_stop_checked(&upstream);
    return 0;
}

static long
get_status(const char *path)
{
    struct h_response resp;

    h_get(&resp, "http://127.0.0.1:%d%s", gateway.port, path);
    long status = resp.status;
    h_response_free(&resp);
    return status;
}

static bool
breaker_closed_again(void *arg)
{
    (void)arg;
    return get_status("/breaker/ok") == 200;
}

static void
breaker_opens_then_closes(void **state)
{
    struct h_response resp;

    (void)state;
    for (int i = 0; i < 3; i++)
        assert_int_equal(get_status("/breaker/x?status=502"), 502);

    /* Open: answered by the gateway, the upstream is not called. */
    long before = h_upstream_requests(&upstream);
    assert_int_equal(
        h_get(&resp, "http://127.0.0.1:%d/breaker/x", gateway.port), 0);
    assert_int_equal(resp.status, 503);
    assert_string_equal(h_header(&resp, "X-Workshop-Error", 0), "breaker_open");
    const char *retry_after = h_header(&resp, "Retry-After", 0);
    assert_non_null(retry_after);
    assert_int_equal(atoi(retry_after), 1); /* 400 ms, rounded up */
    h_response_free(&resp);
    assert_int_equal(h_upstream_requests(&upstream), before);

    /* After open_ms one good probe closes it. */
    assert_true(h_wait_until(breaker_closed_again, NULL, 5000));
    assert_int_equal(get_status("/breaker/y"), 200);
}

static void
breaker_fallback_answers(void **state)
{
    struct h_response resp;

    (void)state;
    for (int i = 0; i < 2; i++)
        assert_int_equal(get_status("/bfb/x?status=500"), 500);
    long before = h_upstream_requests(&upstream);
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/bfb/x", gateway.port),
                     0);
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.body, "degraded");
    assert_string_equal(h_header(&resp, "X-Workshop-Fallback", 0),
                        "breaker_open");
    assert_string_equal(h_header(&resp, "Content-Type", 0), "text/plain");
    assert_null(h_header(&resp, "X-Workshop-Error", 0));
    h_response_free(&resp);
    assert_int_equal(h_upstream_requests(&upstream), before);
}

static void
limiter_429_retry_after(void **state)
{
    struct h_response resp;

    (void)state;
    assert_int_equal(get_status("/limited/a"), 200);
    assert_int_equal(get_status("/limited/b"), 200);
    assert_int_equal(
        h_get(&resp, "http://127.0.0.1:%d/limited/c", gateway.port), 0);
    assert_int_equal(resp.status, 429);
    assert_string_equal(h_header(&resp, "X-Workshop-Error", 0), "rate_limited");
    /* 0.5 tokens per second: the next token is at most 2 s away. */
    const char *retry_after = h_header(&resp, "Retry-After", 0);
    assert_non_null(retry_after);
    int seconds = atoi(retry_after);
    assert_true(seconds >= 1);
    assert_true(seconds <= 2);
    h_response_free(&resp);
}

static void
bulkhead_503_past_limit(void **state)
{
    struct h_request reqs[3];
    struct h_response resps[3];
    char url[128];

    (void)state;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/bulkhead?delay_ms=500",
             gateway.port);
    for (int i = 0; i < 3; i++)
        reqs[i] = (struct h_request){.url = url};
    h_http_parallel(reqs, resps, 3);
    int ok = 0, full = 0;
    for (int i = 0; i < 3; i++) {
        if (resps[i].status == 200)
            ok++;
        if (resps[i].status == 503 &&
            strcmp(h_header(&resps[i], "X-Workshop-Error", 0),
                   "bulkhead_full") == 0)
            full++;
        h_response_free(&resps[i]);
    }
    assert_int_equal(ok, 2);
    assert_int_equal(full, 1);
}

static bool
metric_is(void *arg)
{
    const struct {
        const char *series;
        long value;
    } *want = arg;

    return h_metric(&gateway, want->series) == want->value;
}

static void
bulkhead_queue_drops_gone_client(void **state)
{
    static const char holder[] = "GET /queue/hold?delay_ms=1500 HTTP/1.1\r\n"
                                 "Host: a\r\nConnection: close\r\n\r\n";
    static const char waiter[] = "GET /queue/wait HTTP/1.1\r\nHost: a\r\n\r\n";
    struct {
        const char *series;
        long value;
    } in_flight = {"workshop_bulkhead_in_flight{route=\"queue\"} ", 1},
      waiting = {"workshop_bulkhead_waiting{route=\"queue\"} ", 1},
      closed = {"workshop_requests_total{route=\"queue\",code=\"499\"} ", 1};
    char out[4096];

    (void)state;
    int hold_fd = h_connect(gateway.port);
    assert_true(hold_fd >= 0);
    assert_int_equal(h_send_all(hold_fd, holder, sizeof(holder) - 1), 0);
    assert_true(h_wait_until(metric_is, &in_flight, 10000));

    int wait_fd = h_connect(gateway.port);
    assert_true(wait_fd >= 0);
    assert_int_equal(h_send_all(wait_fd, waiter, sizeof(waiter) - 1), 0);
    assert_true(h_wait_until(metric_is, &waiting, 10000));
    close(wait_fd);

    /* The queue lets the client go: counted as 499, never sent upstream.
     * Left in the queue it would get the slot and a 200 instead. */
    assert_true(h_wait_until(metric_is, &closed, 10000));
    waiting.value = 0;
    assert_true(metric_is(&waiting));

    assert_true(h_recv(hold_fd, out, sizeof(out), NULL, 10000) > 0);
    assert_non_null(strstr(out, "HTTP/1.1 200"));
    close(hold_fd);
    /* Waiting is not a rejection, and neither is leaving the queue. */
    assert_int_equal(
        h_metric(&gateway,
                 "workshop_bulkhead_rejections_total{route=\"queue\"} "),
        0);
}

static void
retry_get_not_post(void **state)
{
    char url[128];
    struct h_response resp;

    (void)state;
    assert_int_equal(get_status("/retry/x?key=get-once&fail_first=1"), 200);
    assert_int_equal(h_upstream_key_requests(&upstream, "get-once"), 2);

    snprintf(url, sizeof(url),
             "http://127.0.0.1:%d/retry/x?key=post-once&fail_first=1",
             gateway.port);
    struct h_request post = {
        .method = "POST", .url = url, .body = "x", .body_len = 1};
    assert_int_equal(h_http(&post, &resp), 0);
    assert_int_equal(resp.status, 503);
    h_response_free(&resp);
    assert_int_equal(h_upstream_key_requests(&upstream, "post-once"), 1);
}

static void
stale_served_when_down(void **state)
{
    static const char *const down[] = {"X-Test-Action: reset", NULL};
    char url[128];
    struct h_response resp;

    (void)state;
    assert_int_equal(get_status("/stale/page?v=1"), 200);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/stale/page?v=1",
             gateway.port);
    struct h_request req = {.url = url, .headers = down};
    assert_int_equal(h_http(&req, &resp), 0);
    assert_int_equal(resp.status, 200);
    assert_non_null(strstr(resp.body, "/stale/page"));
    assert_string_equal(h_header(&resp, "X-Workshop-Fallback", 0),
                        "upstream_error");
    assert_non_null(h_header(&resp, "Age", 0));
    h_response_free(&resp);

    /* A response that sets a cookie belongs to one client: not stored. */
    assert_int_equal(get_status("/stale/page?v=3&header=Set-Cookie:s%3D1"),
                     200);
    snprintf(url, sizeof(url),
             "http://127.0.0.1:%d/stale/page?v=3&header=Set-Cookie:s%%3D1",
             gateway.port);
    assert_int_equal(h_http(&req, &resp), 0);
    assert_int_equal(resp.status, 502);
    h_response_free(&resp);

    /* Another query was never stored: the gateway's own 502. */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/stale/page?v=2",
             gateway.port);
    assert_int_equal(h_http(&req, &resp), 0);
    assert_int_equal(resp.status, 502);
    h_response_free(&resp);
}

static void
alternate_upstream_answers(void **state)
{
    struct h_response resp;

    (void)state;
    assert_int_equal(h_get(&resp,
                           "http://127.0.0.1:%d/alternate/x?delay_ms=1000"
                           "&echo=1",
                           gateway.port),
                     0);
    /* The spare sees the same request under its base path; it answers
     * after the same delay, within its own 5 s timeout. */
    assert_int_equal(resp.status, 200);
    assert_string_equal(h_header(&resp, "X-Workshop-Fallback", 0), "timeout");
    assert_non_null(strstr(resp.body, "\"target\":\"/spare/alternate/x?"));
    h_response_free(&resp);
}

struct load {
    atomic_bool stop;
    long sent;
    long ok;
    long failed;
};

static void *
send_load(void *arg)
{
    struct load *l = arg;

    while (!atomic_load(&l->stop)) {
        long status = get_status("/retry/load");
        l->sent++;
        if (status == 200)
            l->ok++;
        else
            l->failed++;
    }
    return NULL;
}

static void
reload_under_load(void **state)
{
    struct load load = {.stop = false};
    pthread_t thread;

    (void)state;
    assert_int_equal(pthread_create(&thread, NULL, send_load, &load), 0);
    for (int i = 0; i < 6; i++) {
        /* Alternate a changed config (access log on) and an invalid one. */
        char *config = i % 2 == 0 ? h_format(routes_fmt, upstream.port, "json")
                                  : h_format("{\"routes\": 7}");
        assert_non_null(config);
        assert_int_equal(h_gateway_write_config(&gateway, config), 0);
        free(config);
        assert_int_equal(kill(gateway.pid, SIGHUP), 0);
        usleep(100 * 1000);
    }
    atomic_store(&load.stop, true);
    pthread_join(thread, NULL);
    assert_true(load.sent > 10);
    assert_int_equal(load.failed, 0);

    char *log = h_proc_read_log(&gateway);
    assert_non_null(log);
    assert_non_null(strstr(log, "reloaded"));
    assert_non_null(strstr(log, "reload failed, the running configuration "
                                "stays"));
    assert_non_null(strstr(log, "routes: 7 is not a non-empty array"));
    free(log);
}

static void
reload_keeps_breaker_state(void **state)
{
    struct h_response resp;

    (void)state;
    /* breaker-fb opened in an earlier test with open_ms 60 s; a reload with
     * the same settings keeps it open. */
    char *config = h_format(routes_fmt, upstream.port, "off");
    assert_int_equal(h_gateway_write_config(&gateway, config), 0);
    free(config);
    assert_int_equal(kill(gateway.pid, SIGHUP), 0);
    usleep(200 * 1000);
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/bfb/x", gateway.port),
                     0);
    assert_int_equal(resp.status, 200);
    assert_string_equal(h_header(&resp, "X-Workshop-Fallback", 0),
                        "breaker_open");
    h_response_free(&resp);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(breaker_opens_then_closes),
        cmocka_unit_test(breaker_fallback_answers),
        cmocka_unit_test(limiter_429_retry_after),
        cmocka_unit_test(bulkhead_503_past_limit),
        cmocka_unit_test(bulkhead_queue_drops_gone_client),
        cmocka_unit_test(retry_get_not_post),
        cmocka_unit_test(stale_served_when_down),
        cmocka_unit_test(alternate_upstream_answers),
        cmocka_unit_test(reload_under_load),
        cmocka_unit_test(reload_keeps_breaker_state),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
