/*
 * Streamed responses: a body larger than limits.response_buffer_bytes
 * flows to the client while it arrives, byte for byte, with either framing.
 * A body the upstream cuts short reaches the client visibly incomplete, a
 * client that leaves stops the upstream transfer, and a 5xx is still read
 * whole so that it can be retried.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static struct h_proc upstream;
static struct h_proc gateway;

#define MAX_RESPONSE 4000000

static int
setup(void **state)
{
    (void)state;
    if (h_upstream_start(&upstream) != 0)
        return -1;
    char *config = h_format(
        "{\"listen\":\"127.0.0.1:0\",\"admin\":{\"listen\":\"127.0.0.1:0\"},"
        "\"limits\":{\"max_response_bytes\":%d,"
        "\"response_buffer_bytes\":4096},"
        "\"routes\":["
        "{\"name\":\"s\",\"match\":{\"prefix\":\"/s\"},"
        "\"upstream\":{\"url\":\"http://127.0.0.1:%d\",\"timeout_ms\":8000}},"
        "{\"name\":\"r\",\"match\":{\"prefix\":\"/r\"},"
        "\"upstream\":{\"url\":\"http://127.0.0.1:%d\",\"timeout_ms\":8000},"
        "\"retry\":{\"attempts\":3,\"on\":[\"5xx\"],\"backoff_ms\":1,"
        "\"max_backoff_ms\":2,\"budget_percent\":100}}"
        "]}",
        MAX_RESPONSE, upstream.port, upstream.port);
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

/* The test upstream's body_size= bodies repeat the alphabet. */
static void
assert_pattern(const struct h_response *resp, size_t size)
{
    assert_int_equal(resp->body_len, size);
    for (size_t i = 0; i < size; i++) {
        if (resp->body[i] != (char)('a' + i % 26))
            fail_msg("body byte %zu is 0x%02x", i,
                     (unsigned char)resp->body[i]);
    }
}

static void
large_bodies_stream_intact(void **state)
{
    static const char *const framings[] = {"", "&chunked=1"};
    struct h_response resp;

    (void)state;
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(h_get(&resp,
                               "http://127.0.0.1:%d/s/big?body_size=3000000%s",
                               gateway.port, framings[i]),
                         0);
        assert_int_equal(resp.curl_code, CURLE_OK);
        assert_int_equal(resp.status, 200);
        assert_pattern(&resp, 3000000);
        h_response_free(&resp);
    }
}

static void
cut_body_is_visibly_incomplete(void **state)
{
    static const char *const cases[] = {
        "action=close_mid_body&body_size=1000000",
        "action=close_mid_body&body_size=1000000&chunked=1",
        /* Over max_response_bytes after the head has gone out. */
        "body_size=5000000&chunked=1",
    };
    struct h_response resp;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        /* The head went out before the failure: 200, then a body that
         * ends before its declared length or its last chunk. */
        if (h_get(&resp, "http://127.0.0.1:%d/s/cut?%s", gateway.port,
                  cases[i]) == 0 ||
            resp.curl_code == CURLE_OK)
            fail_msg("case %s: a cut body arrived as complete (%zu bytes)",
                     cases[i], resp.body_len);
        assert_int_equal(resp.status, 200);
        h_response_free(&resp);
    }
    /* The gateway goes on serving. */
    assert_int_equal(h_get(&resp,
                           "http://127.0.0.1:%d/s/after?body_size=100000",
                           gateway.port),
                     0);
    assert_int_equal(resp.status, 200);
    assert_pattern(&resp, 100000);
    h_response_free(&resp);
}

/* Returns the attempts of route s counted as cancelled so far. */
static long
cancelled_count(void)
{
    long n = h_metric(&gateway, "workshop_upstream_attempts_total{route=\"s\","
                                "outcome=\"cancelled\"} ");
    return n < 0 ? 0 : n;
}

/* Sends request on a new connection and reads the response into buf until
 * until is found, or (with until NULL) until the gateway closes. */
static void
exchange(const char *request, char *buf, size_t size, const char *until)
{
    int fd = h_connect(gateway.port);

    assert_true(fd >= 0);
    assert_int_equal(h_send_all(fd, request, strlen(request)), 0);
    assert_true(h_recv(fd, buf, size, until, 5000) > 0);
    close(fd);
}

static bool
transfer_cancelled(void *arg)
{
    long before = *(long *)arg;

    return cancelled_count() > before &&
           h_metric(&gateway, "workshop_in_flight_requests ") == 0;
}

static void
client_leaving_stops_the_transfer(void **state)
{
    char head[512];
    char buf[65536];

    (void)state;
    long before = cancelled_count();
    /* Far more than the buffers between the upstream and the client hold,
     * so the transfer is still running when the client leaves. */
    snprintf(head, sizeof(head),
             "GET /s/leave?body_size=%d HTTP/1.1\r\n"
             "Host: 127.0.0.1\r\n\r\n",
             MAX_RESPONSE - 1);
    exchange(head, buf, sizeof(buf), "\r\n\r\n");
    assert_non_null(strstr(buf, "HTTP/1.1 200"));

    assert_true(h_wait_until(transfer_cancelled, &before, 10000));
}

static void
client_leaving_stalled_stream_is_seen(void **state)
{
    static const char request[] =
        "GET /s/stall?body_size=400000&action=stall_body HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n\r\n";
    char buf[65536];

    (void)state;
    long before = cancelled_count();
    /* The upstream sends half the body, then nothing: the response waits,
     * suspended, for bytes that do not come. */
    exchange(request, buf, sizeof(buf), "\r\n\r\n");

    /* Counted as cancelled well before the route's 8 s timeout would have
     * ended it as timed out. */
    assert_true(h_wait_until(transfer_cancelled, &before, 4000));
}

static void
http10_client_never_gets_cut_body(void **state)
{
    static const char request[] =
        "GET /s/old?action=close_mid_body&body_size=1000000&chunked=1 "
        "HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    char buf[4096];

    (void)state;
    /* Chunked coding is not open to an HTTP/1.0 client, so its body would
     * end at the close and a cut one would look whole: it is read whole
     * first, and the cut gives a 502 instead. */
    exchange(request, buf, sizeof(buf), "\r\n\r\n");
    assert_non_null(strstr(buf, " 502 "));
}

static void
head_of_chunked_body_closes(void **state)
{
    static const char requests[] =
        "HEAD /s/h?body_size=100&chunked=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        "GET /s/h?body_size=10 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    char buf[8192];

    (void)state;
    exchange(requests, buf, sizeof(buf), NULL);
    /* The head declares chunked coding, as the GET's would, and claims no
     * length. libmicrohttpd writes a last chunk after it, so the connection
     * closes rather than let the next response follow those bytes. */
    const char *end = strstr(buf, "\r\n\r\n");
    assert_non_null(end);
    assert_non_null(strcasestr(buf, "\r\nTransfer-Encoding: chunked\r\n"));
    assert_non_null(strcasestr(buf, "\r\nConnection: close\r\n"));
    assert_null(strcasestr(buf, "\r\nContent-Length:"));
    if (strstr(end, "HTTP/1.1") != NULL)
        fail_msg("a response followed the HEAD response:\n%s", buf);
}

static void
server_error_is_read_whole_and_retried(void **state)
{
    struct h_response resp;

    (void)state;
    long before = h_upstream_requests(&upstream);
    assert_int_equal(
        h_get(&resp, "http://127.0.0.1:%d/r/x?status=503&body_size=200000",
              gateway.port),
        0);
    /* Each attempt's body was over response_buffer_bytes, and each was
     * retried: a streamed 503 could not have been. */
    assert_int_equal(h_upstream_requests(&upstream) - before, 3);
    assert_int_equal(resp.status, 503);
    assert_pattern(&resp, 200000);
    h_response_free(&resp);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(large_bodies_stream_intact),
        cmocka_unit_test(cut_body_is_visibly_incomplete),
        cmocka_unit_test(client_leaving_stops_the_transfer),
        cmocka_unit_test(client_leaving_stalled_stream_is_seen),
        cmocka_unit_test(http10_client_never_gets_cut_body),
        cmocka_unit_test(head_of_chunked_body_closes),
        cmocka_unit_test(server_error_is_read_whole_and_retried),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
