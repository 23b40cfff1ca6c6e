/*
 * End-to-end proxying through the real gateway binary to the test upstream:
 * what passes through unchanged, what is dropped or added, and the gateway's
 * own answers (404, 405, 502, 504).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

static struct h_proc upstream;
static struct h_proc gateway;
static int closed_port; /* a loopback port with nothing listening */

/* Finds a port nothing listens on: bind port 0, read it, close. */
static int
unused_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(addr.sin_port);
}

static int
setup(void **state)
{
    (void)state;
    if (h_upstream_start(&upstream) != 0)
        return -1;
    closed_port = unused_port();
    char *config = h_format(
        "{\"listen\":\"127.0.0.1:0\",\"admin\":{\"listen\":\"127.0.0.1:0\"},"
        "\"limits\":{\"max_body_bytes\":33554432},"
        "\"routes\":["
        "{\"name\":\"api\",\"match\":{\"prefix\":\"/api\",\"methods\":"
        "[\"GET\",\"POST\",\"PUT\"]},\"upstream\":{\"url\":"
        "\"http://127.0.0.1:%d\",\"timeout_ms\":5000}},"
        "{\"name\":\"strip\",\"match\":{\"prefix\":\"/strip\"},"
        "\"upstream\":{\"url\":\"http://127.0.0.1:%d/base\","
        "\"strip_prefix\":true}},"
        "{\"name\":\"slow\",\"match\":{\"prefix\":\"/slow\"},"
        "\"upstream\":{\"url\":\"http://127.0.0.1:%d\","
        "\"connect_timeout_ms\":200,\"timeout_ms\":500}},"
        "{\"name\":\"down\",\"match\":{\"prefix\":\"/down\"},"
        "\"upstream\":{\"url\":\"http://127.0.0.1:%d\","
        "\"connect_timeout_ms\":500,\"timeout_ms\":1000}}"
        "]}",
        upstream.port, upstream.port, upstream.port, closed_port);
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

static void
expect_gateway_error(const struct h_response *resp, long status,
                     const char *kind)
{
    assert_int_equal(resp->status, status);
    assert_non_null(h_header(resp, "X-Workshop-Error", 0));
    assert_string_equal(h_header(resp, "X-Workshop-Error", 0), kind);
    assert_non_null(h_header(resp, "Content-Type", 0));
    assert_string_equal(h_header(resp, "Content-Type", 0), "application/json");
    char expected[64];
    snprintf(expected, sizeof(expected), "{\"error\":\"%s\",\"status\":%ld",
             kind, status);
    assert_non_null(strstr(resp->body, expected));
}

static void
proxy_passes_request_unchanged(void **state)
{
    static const char *const headers[] = {
        "X-Multi: one", "X-Multi: two", "Connection: keep-alive, X-Hop",
        "X-Hop: secret", "Keep-Alive: timeout=5", "X-Forwarded-For: 10.1.1.1",
        "Cookie: a=1", NULL};
    char url[256];
    struct h_response resp;

    (void)state;
    snprintf(url, sizeof(url),
             "http://127.0.0.1:%d/api/items/a%%20b?echo=1&q=x%%2Fy&q=2",
             gateway.port);
    struct h_request req = {.method = "PUT", .url = url, .headers = headers,
                            .body = "hello", .body_len = 5};
    assert_int_equal(h_http(&req, &resp), 0);
    assert_int_equal(resp.status, 200);
    const char *b = resp.body;
    assert_non_null(strstr(b, "\"method\":\"PUT\""));
    assert_non_null(strstr(b, "\"target\":\"/api/items/a%20b?echo=1&q=x%2Fy&q=2\""));
    assert_non_null(strstr(b, "[\"X-Multi\",\"one\"],[\"X-Multi\",\"two\"]"));
    assert_non_null(strstr(b, "[\"Cookie\",\"a=1\"]"));
    assert_null(strstr(b, "X-Hop"));
    assert_null(strstr(b, "Keep-Alive"));
    assert_null(strstr(b, "\"Connection\""));
    assert_non_null(strstr(b, "[\"X-Forwarded-For\",\"10.1.1.1, 127.0.0.1\"]"));
    assert_non_null(strstr(b, "[\"X-Forwarded-Proto\",\"http\"]"));
    char host[64];
    snprintf(host, sizeof(host), "[\"X-Forwarded-Host\",\"127.0.0.1:%d\"]",
             gateway.port);
    assert_non_null(strstr(b, host));
    assert_non_null(strstr(b, "[\"Via\",\"1.1 workshop-gateway\"]"));
    assert_non_null(strstr(b, "\"body_length\":5"));
    h_response_free(&resp);
}

static void
proxy_strips_prefix(void **state)
{
    struct h_response resp;

    (void)state;
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/strip/x/y?echo=1",
                           gateway.port),
                     0);
    assert_int_equal(resp.status, 200);
    assert_non_null(strstr(resp.body, "\"target\":\"/base/x/y?echo=1\""));
    h_response_free(&resp);
}

static void
proxy_large_body_identical(void **state)
{
    const size_t size = 16u * 1024 * 1024;
    unsigned char *body = malloc(size);
    char url[128];
    struct h_response resp;

    (void)state;
    assert_non_null(body);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < size; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        body[i] = (unsigned char)x;
    }
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/upload?mirror=1",
             gateway.port);
    struct h_request req = {.method = "POST", .url = url, .body = body,
                            .body_len = size, .timeout_ms = 60000};
    assert_int_equal(h_http(&req, &resp), 0);
    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.body_len, size);
    assert_memory_equal(resp.body, body, size);
    h_response_free(&resp);
    free(body);
}

static void
proxy_response_headers(void **state)
{
    struct h_response resp;

    (void)state;
    assert_int_equal(
        h_get(&resp,
              "http://127.0.0.1:%d/api/c?header=Set-Cookie:a%%3D1"
              "&header=Set-Cookie:b%%3D2&header=Connection:X-Up-Hop"
              "&header=X-Up-Hop:1&header=Keep-Alive:timeout%%3D9"
              "&header=X-Kept:yes&status=201",
              gateway.port),
        0);
    assert_int_equal(resp.status, 201);
    assert_int_equal(h_header_count(&resp, "Set-Cookie"), 2);
    assert_string_equal(h_header(&resp, "Set-Cookie", 0), "a=1");
    assert_string_equal(h_header(&resp, "Set-Cookie", 1), "b=2");
    assert_string_equal(h_header(&resp, "X-Kept", 0), "yes");
    assert_null(h_header(&resp, "X-Up-Hop", 0));
    assert_null(h_header(&resp, "Keep-Alive", 0));
    assert_non_null(h_header(&resp, "Via", 0));
    assert_non_null(h_header(&resp, "X-Upstream-Request-Id", 0));
    h_response_free(&resp);
}

static void
proxy_chunked_upstream_body(void **state)
{
    struct h_response resp;

    (void)state;
    /* Within limits.response_buffer_bytes the body is read whole, so the
     * client gets it with a Content-Length. */
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/api/c?chunked=1"
                                  "&body_size=30000",
                           gateway.port),
                     0);
    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.body_len, 30000);
    assert_string_equal(h_header(&resp, "Content-Length", 0), "30000");
    h_response_free(&resp);

    /* Beyond it the body streams, and stays chunked. */
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/api/c?chunked=1"
                                  "&body_size=100000",
                           gateway.port),
                     0);
    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.body_len, 100000);
    assert_null(h_header(&resp, "Content-Length", 0));
    assert_string_equal(h_header(&resp, "Transfer-Encoding", 0), "chunked");
    h_response_free(&resp);
}

static void
proxy_bodiless_responses(void **state)
{
    char url[128];
    struct h_response resp;

    (void)state;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/h?body_size=1234",
             gateway.port);
    struct h_request head = {.method = "HEAD", .url = url};
    assert_int_equal(h_http(&head, &resp), 0);
    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.body_len, 0);
    assert_int_equal(h_header_count(&resp, "Content-Length"), 1);
    assert_string_equal(h_header(&resp, "Content-Length", 0), "1234");
    h_response_free(&resp);

    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/api/n?status=204",
                           gateway.port),
                     0);
    assert_int_equal(resp.status, 204);
    assert_int_equal(resp.body_len, 0);
    assert_null(h_header(&resp, "Content-Length", 0));
    h_response_free(&resp);

    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/api/n?status=304",
                           gateway.port),
                     0);
    assert_int_equal(resp.status, 304);
    assert_int_equal(resp.body_len, 0);
    h_response_free(&resp);
}

static void
proxy_upstream_status_passes(void **state)
{
    struct h_response resp;

    (void)state;
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/api/x?status=503",
                           gateway.port),
                     0);
    assert_int_equal(resp.status, 503);
    assert_null(h_header(&resp, "X-Workshop-Error", 0));
    h_response_free(&resp);
}

static void
gateway_no_route_404(void **state)
{
    struct h_response resp;

    (void)state;
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/nowhere", gateway.port),
                     0);
    expect_gateway_error(&resp, 404, "not_found");
    assert_null(h_header(&resp, "X-Upstream-Request-Id", 0));
    h_response_free(&resp);

    /* "/apix" continues "/api" without a '/', so it is not under it. */
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/apix", gateway.port),
                     0);
    expect_gateway_error(&resp, 404, "not_found");
    h_response_free(&resp);
}

static void
gateway_method_405_allow(void **state)
{
    char url[128];
    struct h_response resp;

    (void)state;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/x", gateway.port);
    struct h_request req = {.method = "DELETE", .url = url};
    assert_int_equal(h_http(&req, &resp), 0);
    expect_gateway_error(&resp, 405, "method_not_allowed");
    assert_string_equal(h_header(&resp, "Allow", 0), "GET, HEAD, POST, PUT");
    h_response_free(&resp);
}

static void
gateway_unreachable_502(void **state)
{
    struct h_response resp;

    (void)state;
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/down", gateway.port),
                     0);
    expect_gateway_error(&resp, 502, "upstream_error");
    assert_non_null(strstr(resp.body, "\"route\":\"down\""));
    h_response_free(&resp);

    /* An upstream that closes without answering is a 502 too. */
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/api/x?action=close",
                           gateway.port),
                     0);
    expect_gateway_error(&resp, 502, "upstream_error");
    h_response_free(&resp);
}

static void
gateway_timeout_504_on_time(void **state)
{
    struct h_response resp;

    (void)state;
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/slow?delay_ms=3000",
                           gateway.port),
                     0);
    expect_gateway_error(&resp, 504, "timeout");
    /* timeout_ms is 500: the answer comes within 100 ms after it. Valgrind
     * slows everything by an order of magnitude, so it gets more room. */
    double limit = getenv("WK_VALGRIND") != NULL ? 2.0 : 0.6;
    if (resp.total_seconds < 0.5 || resp.total_seconds > limit)
        fail_msg("504 after %.3f s; expected between 0.5 and %.1f s",
                 resp.total_seconds, limit);
    h_response_free(&resp);
}

static void
gateway_metrics_count_requests(void **state)
{
    struct h_response resp;

    (void)state;
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/metrics",
                           gateway.admin_port),
                     0);
    assert_int_equal(resp.status, 200);
    assert_non_null(strstr(h_header(&resp, "Content-Type", 0),
                           "text/plain; version=0.0.4"));
    assert_non_null(
        strstr(resp.body, "workshop_requests_total{route=\"api\",code=\"200\"}"));
    assert_non_null(strstr(resp.body, "workshop_requests_total{route=\"(none)\","
                                      "code=\"404\"}"));
    h_response_free(&resp);

    /* Routes never shadow the admin endpoints: they are on another port. */
    assert_int_equal(h_get(&resp, "http://127.0.0.1:%d/readyz",
                           gateway.admin_port),
                     0);
    assert_int_equal(resp.status, 200);
    h_response_free(&resp);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(proxy_passes_request_unchanged),
        cmocka_unit_test(proxy_strips_prefix),
        cmocka_unit_test(proxy_large_body_identical),
        cmocka_unit_test(proxy_response_headers),
        cmocka_unit_test(proxy_chunked_upstream_body),
        cmocka_unit_test(proxy_bodiless_responses),
        cmocka_unit_test(proxy_upstream_status_passes),
        cmocka_unit_test(gateway_no_route_404),
        cmocka_unit_test(gateway_method_405_allow),
        cmocka_unit_test(gateway_unreachable_502),
        cmocka_unit_test(gateway_timeout_504_on_time),
        cmocka_unit_test(gateway_metrics_count_requests),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
