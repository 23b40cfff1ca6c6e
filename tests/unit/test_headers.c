/*
 * Header filtering: hop-by-hop fields, fields named in Connection, the
 * forwarding fields and libcurl's defaults.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "headers.h"
#include "proxy.h"

static void
hop_by_hop_fields(void **state)
{
    static const char *const dropped[] = {
        "Connection", "keep-alive", "PROXY-CONNECTION", "TE",
        "Trailer",    "transfer-encoding", "Upgrade"};
    static const char *const kept[] = {"Content-Type", "Set-Cookie", "Host",
                                       "Trailers", "X-Upgrade"};
    (void)state;
    for (size_t i = 0; i < sizeof(dropped) / sizeof(dropped[0]); i++) {
        if (!gw_header_is_hop_by_hop(dropped[i]))
            fail_msg("%s should be hop-by-hop", dropped[i]);
    }
    for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
        if (gw_header_is_hop_by_hop(kept[i]))
            fail_msg("%s should not be hop-by-hop", kept[i]);
    }
}

static void
connection_token_list(void **state)
{
    (void)state;
    assert_true(gw_connection_lists("close, X-Foo", "x-foo"));
    assert_true(gw_connection_lists(" X-Foo ,close", "X-Foo"));
    assert_true(gw_connection_lists("a,,b", "b"));
    assert_false(gw_connection_lists("X-Foobar", "X-Foo"));
    assert_false(gw_connection_lists("X-Fo", "X-Foo"));
    assert_false(gw_connection_lists("", "X-Foo"));
}

static void
connection_values_forwarding(void **state)
{
    struct gw_connection_values cv = {0};

    (void)state;
    gw_connection_values_add(&cv, "keep-alive, X-Secret");
    gw_connection_values_add(&cv, "X-Other");
    assert_false(gw_header_forwarded(&cv, "x-secret"));
    assert_false(gw_header_forwarded(&cv, "X-Other"));
    assert_false(gw_header_forwarded(&cv, "Keep-Alive"));
    assert_true(gw_header_forwarded(&cv, "X-Public"));
    for (int i = 0; i < GW_CONNECTION_VALUES_MAX; i++)
        gw_connection_values_add(&cv, "x");
    assert_true(cv.overflow);
}

/* Collects a curl_slist into one string, lines joined with '|'. */
static void
join(const struct curl_slist *list, char *out, size_t size)
{
    size_t used = 0;

    out[0] = '\0';
    for (; list != NULL; list = list->next)
        used += (size_t)snprintf(out + used, size - used, "%s%s",
                                 used > 0 ? "|" : "", list->data);
}

static void
upstream_headers_built(void **state)
{
    const struct gw_request_header in[] = {
        {"Host", "example.test"},
        {"Connection", "keep-alive, X-Hop"},
        {"X-Hop", "secret"},
        {"Keep-Alive", "timeout=5"},
        {"X-A", "1"},
        {"X-A", "2"},
        {"Content-Length", "5"},
        {"Transfer-Encoding", "chunked"},
        {"Expect", "100-continue"},
        {"X-Forwarded-For", "10.0.0.1"},
        {"X-Forwarded-Proto", "https"},
        {"Via", "1.0 edge"},
        {"X-Empty", ""},
        {"TE", "trailers"},
        {"Upgrade", "websocket"},
    };
    struct gw_forward_info info = {.client_ip = "127.0.0.9",
                                   .http_version = "HTTP/1.1",
                                   .send_body = true};
    bool bad = true;
    char text[2048];

    (void)state;
    struct curl_slist *list = gw_build_upstream_headers(
        in, sizeof(in) / sizeof(in[0]), &info, &bad);
    assert_non_null(list);
    assert_false(bad);
    join(list, text, sizeof(text));
    assert_string_equal(text,
                        "Host: example.test|X-A: 1|X-A: 2|Via: 1.0 edge|"
                        "X-Empty;|X-Forwarded-For: 10.0.0.1, 127.0.0.9|"
                        "X-Forwarded-Proto: http|"
                        "X-Forwarded-Host: example.test|"
                        "Via: 1.1 workshop-gateway|Accept:|Expect:|"
                        "Content-Type:");
    curl_slist_free_all(list);
}

static void
upstream_headers_keep_accept(void **state)
{
    const struct gw_request_header in[] = {{"Accept", "text/html"},
                                           {"Content-Type", "text/plain"}};
    struct gw_forward_info info = {.client_ip = "::1",
                                   .http_version = "HTTP/1.0",
                                   .send_body = true};
    bool bad;
    char text[1024];

    (void)state;
    struct curl_slist *list = gw_build_upstream_headers(in, 2, &info, &bad);
    assert_non_null(list);
    join(list, text, sizeof(text));
    assert_string_equal(text, "Accept: text/html|Content-Type: text/plain|"
                              "X-Forwarded-For: ::1|X-Forwarded-Proto: http|"
                              "Via: 1.0 workshop-gateway|Expect:");
    curl_slist_free_all(list);
}

static void
upstream_headers_too_many_connection(void **state)
{
    struct gw_request_header in[GW_CONNECTION_VALUES_MAX + 1];
    struct gw_forward_info info = {.client_ip = "1.2.3.4",
                                   .http_version = "HTTP/1.1"};
    bool bad = false;

    (void)state;
    for (size_t i = 0; i < GW_CONNECTION_VALUES_MAX + 1; i++)
        in[i] = (struct gw_request_header){"Connection", "close"};
    assert_null(gw_build_upstream_headers(in, GW_CONNECTION_VALUES_MAX + 1,
                                          &info, &bad));
    assert_true(bad);
}

static void
error_body_json(void **state)
{
    char body[256];

    (void)state;
    size_t n = gw_error_body(GW_KIND_TIMEOUT, "took \"too\" long", "users",
                             body, sizeof(body));
    assert_int_equal(n, strlen(body));
    assert_string_equal(body,
                        "{\"error\":\"timeout\",\"status\":504,\"message\":"
                        "\"took \\\"too\\\" long\",\"route\":\"users\"}\n");
    assert_int_equal(gw_error_kind_status(GW_KIND_UPSTREAM_ERROR), 502);
    assert_int_equal(gw_error_kind_status(GW_KIND_NOT_FOUND), 404);
    assert_string_equal(gw_error_kind_name(GW_KIND_BREAKER_OPEN),
                        "breaker_open");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hop_by_hop_fields),
        cmocka_unit_test(connection_token_list),
        cmocka_unit_test(connection_values_forwarding),
        cmocka_unit_test(upstream_headers_built),
        cmocka_unit_test(upstream_headers_keep_accept),
        cmocka_unit_test(upstream_headers_too_many_connection),
        cmocka_unit_test(error_body_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
