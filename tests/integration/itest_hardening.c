/*
 * Hostile input and failing upstreams: ambiguous framing and smuggling
 * attempts get 400 and never reach the upstream, paths cannot slip past
 * route matching, limits give 413 and 431, each upstream fault gives a
 * proper error and its metric, and SIGTERM lets requests in flight finish.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static struct h_proc upstream;
static struct h_proc gateway;

static char *
gateway_config(void)
{
    return h_format(
        "{\"listen\":\"127.0.0.1:0\",\"admin\":{\"listen\":\"127.0.0.1:0\"},"
        "\"limits\":{\"max_header_bytes\":4096,\"max_body_bytes\":1000,"
        "\"max_response_bytes\":100000},\"drain_timeout_ms\":10000,"
        "\"routes\":["
        "{\"name\":\"open\",\"match\":{\"prefix\":\"/open\"},"
        "\"upstream\":{\"url\":\"http://127.0.0.1:%d\",\"timeout_ms\":1000}},"
        "{\"name\":\"admin-only\",\"match\":{\"prefix\":\"/admin\","
        "\"methods\":[\"GET\"]},\"upstream\":{\"url\":"
        "\"http://127.0.0.1:%d\"}}"
        "]}",
        upstream.port, upstream.port);
}

static int
setup(void **state)
{
    (void)state;
    if (h_upstream_start(&upstream) != 0)
        return -1;
    char *config = gateway_config();
    int rc = config != NULL ? h_gateway_start(&gateway, config) : -1;
    free(config);
    return rc;
}

static int
teardown(void **state)
{
    (void)state;
    if (gateway.pid != 0)
        h_gateway_stop_checked(&gateway);
    h_upstream_stop_checked(&upstream);
    return 0;
}

/* Sends raw bytes on a new connection and returns the response's status. */
static int
raw_status(const char *request, size_t len, char *out, size_t out_size)
{
    int fd = h_connect(gateway.port);

    if (fd < 0)
        return -1;
    if (h_send_all(fd, request, len) != 0) {
        close(fd);
        return -1;
    }
    long n = h_recv(fd, out, out_size, "\r\n\r\n", 5000);
    if (n < 12 || strncmp(out, "HTTP/1.1 ", 9) != 0) {
        close(fd);
        return -1;
    }
    /* Then the body its Content-Length declares, so that a second head
     * sent in its place shows up in out. */
    const char *end = strstr(out, "\r\n\r\n");
    const char *length = strcasestr(out, "\r\nContent-Length:");
    if (end != NULL && length != NULL && length < end) {
        size_t head = (size_t)(end + 4 - out);
        size_t want = head + strtoul(length + 17, NULL, 10);
        if (want < out_size && (size_t)n < want)
            h_recv(fd, out + n, want - (size_t)n + 1, NULL, 5000);
    }
    close(fd);
    return atoi(out + 9);
}

struct raw_case {
    const char *what;
    const char *request;
    int status;
};

static const struct raw_case framing_cases[] = {
    {"Content-Length and Transfer-Encoding",
     "POST /open/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     400},
    {"differing Content-Length values",
     "POST /open/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
     "Content-Length: 6\r\n\r\nhello!",
     400},
    {"malformed chunk size",
     "POST /open/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     "zz\r\nhello\r\n0\r\n\r\n",
     400},
    {"transfer coding other than chunked",
     "POST /open/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked"
     "\r\n\r\n0\r\n\r\n",
     400},
    {"CR inside a header value",
     "GET /open/x HTTP/1.1\r\nHost: a\r\nX-A: o\rne\r\n\r\n", 400},
    {"space before the colon",
     "GET /open/x HTTP/1.1\r\nHost: a\r\nX-A : one\r\n\r\n", 400},
    {"folded line with two words",
     "GET /open/x HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two three\r\n\r\n", 400},
    {"folded line with one word",
     "GET /open/x HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n", 400},
    {"folded line after a tab",
     "GET /open/x HTTP/1.1\r\nX-A: one\r\n\ttwo\r\nHost: a\r\n\r\n", 400},
    {"space in the target", "GET /open/a b HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"HTTP/1.1 without Host", "GET /open/x HTTP/1.1\r\n\r\n", 400},
    {"dot segment", "GET /open/../admin HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"encoded dot segment",
     "GET /open/%2e%2E/admin HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"encoded slash", "GET /open%2F..%2Fadmin HTTP/1.1\r\nHost: a\r\n\r\n",
     400},
    {"repeated slash", "GET /open//x HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"backslash", "GET /open\\..\\admin HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"malformed escape", "GET /open/%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"fragment in the target",
     "GET /open#/../admin HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"tab in the target", "GET /open/a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    {"control byte in a header value",
     "GET /open/x HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n", 400},
    {"two Host fields", "GET /open/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
     400},
    {"declared body over the limit",
     "POST /open/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", 413},
};

static void
framing_attacks_rejected(void **state)
{
    char out[4096];

    (void)state;
    assert_int_equal(h_upstream_reset(&upstream), 0);
    for (size_t i = 0; i < sizeof(framing_cases) / sizeof(framing_cases[0]);
         i++) {
        const struct raw_case *c = &framing_cases[i];
        int status =
            raw_status(c->request, strlen(c->request), out, sizeof(out));
        if (status != c->status)
            fail_msg("case '%s': status %d, expected %d; response:\n%s",
                     c->what, status, c->status, out);
        /* One response, with one head. */
        const char *second = strstr(out, "\nHTTP/1.");
        if (second != NULL)
            fail_msg("case '%s': more than one status line:\n%s", c->what, out);
    }
    /* None of them reached the upstream. */
    assert_int_equal(h_upstream_requests(&upstream), 0);
}

static void
nul_in_header_rejected(void **state)
{
    /* Sizes spelled out: the requests hold NUL bytes. */
    static const char middle[] = "GET /open/x HTTP/1.1\r\nHost: a\r\n"
                                 "X-A: a\0b\r\nX-B: c\r\n\r\n";
    static const char last[] = "GET /open/x HTTP/1.1\r\nHost: a\r\n"
                               "X-A: a\0b\r\n\r\n";
    char out[4096];

    (void)state;
    assert_int_equal(h_upstream_reset(&upstream), 0);
    assert_int_equal(raw_status(middle, sizeof(middle) - 1, out, sizeof(out)),
                     400);
    assert_int_equal(raw_status(last, sizeof(last) - 1, out, sizeof(out)), 400);
    assert_int_equal(h_upstream_requests(&upstream), 0);
}

static void
encoded_path_matches_plain(void **state)
{
    struct h_response resp;

    (void)state;
    /* "%61" is "a": the request takes the route its plain spelling takes,
     * so its method list applies. */
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/%%61dmin/x", gateway.port);
    struct h_request req = {.method = "POST", .url = url};
    assert_int_equal(h_http(&req, &resp), 0);
    assert_int_equal(resp.status, 405);
    h_response_free(&resp);

    assert_int_equal(
        h_get(&resp, "http://127.0.0.1:%d/%%6Fpen/x?echo=1", gateway.port), 0);
    assert_int_equal(resp.status, 200);
    assert_non_null(strstr(resp.body, "\"target\":\"/open/x?echo=1\""));
    h_response_free(&resp);
}

static void
chunked_body_over_limit_413(void **state)
{
    char request[4096], out[4096];
    int n = snprintf(request, sizeof(request),
                     "POST /open/x HTTP/1.1\r\nHost: a\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n");

    (void)state;
    assert_int_equal(h_upstream_reset(&upstream), 0);
    for (int i = 0; i < 3; i++)
        n += snprintf(request + n, sizeof(request) - (size_t)n,
                      "258\r\n%0600d\r\n", 0);
    n += snprintf(request + n, sizeof(request) - (size_t)n, "0\r\n\r\n");
    assert_int_equal(raw_status(request, (size_t)n, out, sizeof(out)), 413);
    assert_non_null(strstr(out, "X-Workshop-Error: body_too_large"));
    assert_int_equal(h_upstream_requests(&upstream), 0);
}

static void
head_with_empty_body_answered(void **state)
{
    static const char *const headers[] = {"Content-Length: 0", NULL};
    char url[128];
    struct h_response resp;

    (void)state;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/open/h?body_size=10",
             gateway.port);
    struct h_request req = {
        .method = "HEAD", .url = url, .headers = headers, .timeout_ms = 3000};
    assert_int_equal(h_http(&req, &resp), 0);
    assert_int_equal(resp.status, 200);
    assert_string_equal(h_header(&resp, "Content-Length", 0), "10");
    h_response_free(&resp);
}

static void
head_over_limit_431(void **state)
{
    static char big[6000];
    char header[6100];
    const char *headers[] = {header, NULL};
    struct h_response resp;
    char url[128];

    (void)state;
    memset(big, 'x', sizeof(big) - 1);
    snprintf(header, sizeof(header), "X-Big: %s", big);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/open/x", gateway.port);
    struct h_request req = {.url = url, .headers = headers};
    assert_int_equal(h_http(&req, &resp), 0);
    assert_int_equal(resp.status, 431);
    h_response_free(&resp);
}

struct fault_case {
    const char *what;
    const char *query;
    long status;
    const char *outcome; /* the upstream attempt's metric label */
};

static const struct fault_case fault_cases[] = {
    {"reset before the head", "action=reset", 502, "protocol_error"},
    {"close before the head", "action=close", 502, "protocol_error"},
    {"close in the middle of the body", "action=close_mid_body&body_size=50000",
     502, "protocol_error"},
    {"invalid status line", "action=bad_head", 502, "protocol_error"},
    {"head too large", "action=huge_head", 502, NULL},
    {"body over max_response_bytes", "body_size=200000", 502, "too_large"},
    {"differing Content-Length values", "header=Content-Length:5", 502,
     "protocol_error"},
    {"control byte in a header value", "header=X-A:a%01b", 502,
     "protocol_error"},
    {"stalled body", "action=stall_body&body_size=50000", 504, "timeout"},
    {"no answer at all", "action=stall", 504, "timeout"},
};

static void
upstream_faults_answered(void **state)
{
    struct h_response resp;

    (void)state;
    for (size_t i = 0; i < sizeof(fault_cases) / sizeof(fault_cases[0]); i++) {
        const struct fault_case *f = &fault_cases[i];

        assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/open/f?%s",
                               gateway.port, f->query),
                         0);
        if (resp.status != f->status)
            fail_msg("case '%s': status %ld, expected %ld", f->what,
                     resp.status, f->status);
        assert_non_null(h_header(&resp, "X-Workshop-Error", 0));
        h_response_free(&resp);
    }

    assert_int_equal(
        h_get(&resp, "http://127.0.0.1:%d/metrics", gateway.admin_port), 0);
    for (size_t i = 0; i < sizeof(fault_cases) / sizeof(fault_cases[0]); i++) {
        char series[160];

        if (fault_cases[i].outcome == NULL)
            continue;
        snprintf(series, sizeof(series),
                 "workshop_upstream_attempts_total{route=\"open\","
                 "outcome=\"%s\"} ",
                 fault_cases[i].outcome);
        const char *line = strstr(resp.body, series);
        if (line == NULL || atol(line + strlen(series)) < 1)
            fail_msg("case '%s': no count in %s", fault_cases[i].what, series);
    }
    h_response_free(&resp);
}

struct slow_batch {
    struct h_request reqs[20];
    struct h_response resps[20];
    int rc;
};

static void *
send_slow(void *arg)
{
    struct slow_batch *b = arg;

    b->rc = h_http_parallel(b->reqs, b->resps, 20);
    return NULL;
}

static bool
upstream_holds_twenty(void *arg)
{
    (void)arg;
    return h_upstream_open_connections(&upstream) >= 20;
}

static bool
readyz_unavailable(void *arg)
{
    struct h_response resp;

    (void)arg;
    if (h_get(&resp, "http://127.0.0.1:%d/readyz", gateway.admin_port) != 0) {
        h_response_free(&resp);
        return false;
    }
    bool draining = resp.status == 503;
    h_response_free(&resp);
    return draining;
}

static void
sigterm_drains_in_flight(void **state)
{
    struct slow_batch *b = calloc(1, sizeof(*b));
    char url[128];
    struct h_response resp;

    (void)state;
    assert_non_null(b);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/open/slow?delay_ms=700",
             gateway.port);
    for (int i = 0; i < 20; i++)
        b->reqs[i] = (struct h_request){.url = url, .timeout_ms = 20000};

    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, send_slow, b), 0);
    assert_true(h_wait_until(upstream_holds_twenty, NULL, 10000));
    assert_int_equal(kill(gateway.pid, SIGTERM), 0);

    /* While draining, readiness turns to 503 and liveness stays 200. */
    assert_true(h_wait_until(readyz_unavailable, NULL, 5000));
    assert_int_equal(
        h_get(&resp, "http://127.0.0.1:%d/healthz", gateway.admin_port), 0);
    assert_int_equal(resp.status, 200);
    h_response_free(&resp);

    pthread_join(thread, NULL);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(b->resps[i].status, 200);
        h_response_free(&b->resps[i]);
    }
    assert_int_equal(b->rc, 0);
    int status = h_proc_wait(&gateway, 30000);
    assert_int_equal(h_exit_code(status), 0);
    free(b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(framing_attacks_rejected),
        cmocka_unit_test(nul_in_header_rejected),
        cmocka_unit_test(encoded_path_matches_plain),
        cmocka_unit_test(chunked_body_over_limit_413),
        cmocka_unit_test(head_over_limit_431),
        cmocka_unit_test(head_with_empty_body_answered),
        cmocka_unit_test(upstream_faults_answered),
        cmocka_unit_test(sigterm_drains_in_flight),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
