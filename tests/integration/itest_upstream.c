/*
 * Tests of build/test-upstream itself, over loopback and without the
 * gateway: every behaviour the integration tests rely on (status, delay,
 * echo, mirror, extra headers, chunked coding, per-key failures, faults,
 * HEAD and bodiless statuses, counters, keep-alive, chaos).
 *
 * The group setup starts one upstream. Tests that need fresh counters
 * call /__reset first.
 */
#include "harness.h"

#include <cJSON.h>
#include <curl/curl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

static struct h_proc upstream;

static int
group_setup(void **state)
{
    (void)state;
    return h_upstream_start(&upstream);
}

static int
group_teardown(void **state)
{
    (void)state;
    int code = h_exit_code(h_proc_stop(&upstream, SIGTERM, 10000));
    if (code != 0) {
        fprintf(stderr, "test-upstream exited with code %d, expected 0\n",
                code);
        h_proc_dump_log(&upstream);
    }
    h_kill_all();
    return code == 0 ? 0 : -1;
}

/* Returns a URL on the upstream for path (which may carry a query). */
static char *
url(const char *path)
{
    char *u = h_format("http://127.0.0.1:%d%s", upstream.port, path);
    assert_non_null(u);
    return u;
}

/* The byte at offset i of a body_size= body. */
static char
pattern_byte(size_t i)
{
    return (char)('a' + i % 26);
}

static uint64_t
fnv1a64(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

/* Performs req on path and returns the response (caller frees). */
static struct h_response
request(const char *method, const char *path, const char *const *headers,
        const void *body, size_t body_len, long timeout_ms)
{
    char *u = url(path);
    struct h_request req = {.method = method,
                            .url = u,
                            .headers = headers,
                            .body = body,
                            .body_len = body_len,
                            .timeout_ms = timeout_ms};
    struct h_response resp;
    h_http(&req, &resp);
    free(u);
    return resp;
}

/* --- status, ids, delay ------------------------------------------------ */

static void
status_from_query_or_header(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *path;
        const char *header;
        long status;
    } rows[] = {
        {"no parameter gives 200", "/t", NULL, 200},
        {"status= sets the status", "/t?status=503", NULL, 503},
        {"status=404 works too", "/t?status=404", NULL, 404},
        {"X-Test-Status sets the status", "/t", "X-Test-Status: 418", 418},
        {"the query beats the header", "/t?status=201", "X-Test-Status: 500",
         201},
        {"a non-number status is a 400", "/t?status=abc", NULL, 400},
        {"a 1xx status is a 400", "/t?status=101", NULL, 400},
        {"an unknown parameter is ignored", "/t?color=blue", NULL, 200},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(*rows); i++) {
        const char *headers[] = {rows[i].header, NULL};
        struct h_response resp =
            request(NULL, rows[i].path, headers, NULL, 0, 0);
        if (resp.status != rows[i].status)
            fprintf(stderr, "row \"%s\": status %ld\n", rows[i].name,
                    resp.status);
        assert_int_equal(resp.curl_code, CURLE_OK);
        assert_int_equal(resp.status, rows[i].status);
        assert_non_null(h_header(&resp, "X-Upstream-Request-Id", 0));
        const char *cl = h_header(&resp, "Content-Length", 0);
        assert_non_null(cl);
        assert_int_equal(strtoul(cl, NULL, 10), resp.body_len);
        h_response_free(&resp);
    }
}

static void
default_body_names_path(void **state)
{
    (void)state;
    struct h_response resp = request(NULL, "/some/path?x=1", NULL, NULL, 0, 0);
    assert_int_equal(resp.status, 200);
    assert_string_equal(resp.body,
                        "{\"upstream\":\"test\",\"path\":\"/some/path\"}");
    assert_string_equal(h_header(&resp, "Content-Type", 0), "application/json");
    h_response_free(&resp);
}

static void
request_ids_count_up(void **state)
{
    (void)state;
    struct h_response a = request(NULL, "/a", NULL, NULL, 0, 0);
    struct h_response b = request(NULL, "/b", NULL, NULL, 0, 0);
    const char *ida = h_header(&a, "X-Upstream-Request-Id", 0);
    const char *idb = h_header(&b, "X-Upstream-Request-Id", 0);
    assert_non_null(ida);
    assert_non_null(idb);
    assert_int_equal(strtoul(idb, NULL, 10), strtoul(ida, NULL, 10) + 1);
    h_response_free(&a);
    h_response_free(&b);
}

static void
delay_holds_the_reply(void **state)
{
    (void)state;
    struct h_response q = request(NULL, "/d?delay_ms=300", NULL, NULL, 0, 0);
    assert_int_equal(q.status, 200);
    assert_true(q.total_seconds >= 0.29);
    assert_true(q.total_seconds < 3.0);
    h_response_free(&q);

    const char *headers[] = {"X-Test-Delay-Ms: 200", NULL};
    struct h_response h = request(NULL, "/d", headers, NULL, 0, 0);
    assert_int_equal(h.status, 200);
    assert_true(h.total_seconds >= 0.19);
    assert_true(h.total_seconds < 3.0);
    h_response_free(&h);
}

/* 200 requests delayed 500 ms each must overlap, not queue. */
static void
delays_run_concurrently(void **state)
{
    (void)state;
    enum { N = 200 };
    char *u = url("/slow?delay_ms=500");
    struct h_request reqs[N];
    struct h_response resps[N];
    for (size_t i = 0; i < N; i++)
        reqs[i] = (struct h_request){.url = u, .timeout_ms = 20000};

    long long start = h_now_ms();
    int rc = h_http_parallel(reqs, resps, N);
    long long elapsed = h_now_ms() - start;
    free(u);

    size_t ok = 0;
    for (size_t i = 0; i < N; i++) {
        ok += resps[i].status == 200;
        h_response_free(&resps[i]);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(ok, N);
    assert_true(elapsed >= 490);
    assert_true(elapsed < 5000);
}

/* --- bodies ------------------------------------------------------------ */

/* Returns the name of echoed header i and sets *value. */
static const char *
echo_header(const cJSON *headers, int i, const char **value)
{
    const cJSON *pair = cJSON_GetArrayItem(headers, i);
    assert_true(cJSON_IsArray(pair));
    assert_int_equal(cJSON_GetArraySize(pair), 2);
    *value = cJSON_GetStringValue(cJSON_GetArrayItem(pair, 1));
    return cJSON_GetStringValue(cJSON_GetArrayItem(pair, 0));
}

static void
echo_describes_request(void **state)
{
    (void)state;
    const char *headers[] = {"X-Rep: one", "X-Other: x", "X-Rep: two", NULL};
    const char body[] = "hello";
    struct h_response resp =
        request("PUT", "/echo/p?echo=1&q=%41+b", headers, body, 5, 0);
    assert_int_equal(resp.status, 200);

    cJSON *json = cJSON_Parse(resp.body);
    assert_non_null(json);
    assert_string_equal(
        cJSON_GetStringValue(cJSON_GetObjectItem(json, "method")), "PUT");
    assert_string_equal(
        cJSON_GetStringValue(cJSON_GetObjectItem(json, "target")),
        "/echo/p?echo=1&q=%41+b");
    assert_string_equal(
        cJSON_GetStringValue(cJSON_GetObjectItem(json, "version")), "HTTP/1.1");
    assert_int_equal(
        (int)cJSON_GetNumberValue(cJSON_GetObjectItem(json, "body_length")), 5);
    char fnv[17];
    snprintf(fnv, sizeof(fnv), "%016llx", (unsigned long long)fnv1a64(body, 5));
    assert_string_equal(
        cJSON_GetStringValue(cJSON_GetObjectItem(json, "body_fnv1a64")), fnv);

    /* The repeated field arrives twice, in order, around the other one. */
    const cJSON *list = cJSON_GetObjectItem(json, "headers");
    assert_true(cJSON_IsArray(list));
    int reps = 0;
    int other_at = -1;
    for (int i = 0; i < cJSON_GetArraySize(list); i++) {
        const char *value;
        const char *name = echo_header(list, i, &value);
        if (strcmp(name, "X-Other") == 0)
            other_at = reps;
        if (strcmp(name, "X-Rep") != 0)
            continue;
        assert_string_equal(value, reps == 0 ? "one" : "two");
        reps++;
    }
    assert_int_equal(reps, 2);
    assert_int_equal(other_at, 1);
    cJSON_Delete(json);
    h_response_free(&resp);
}

static void
mirror_returns_16mib_body(void **state)
{
    (void)state;
    size_t len = 16u << 20;
    unsigned char *body = malloc(len);
    assert_non_null(body);
    uint32_t x = 12345;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        body[i] = (unsigned char)(x >> 24);
    }

    struct h_response resp =
        request("POST", "/m?mirror=1", NULL, body, len, 30000);
    assert_int_equal(resp.curl_code, CURLE_OK);
    assert_int_equal(resp.status, 200);
    assert_int_equal(resp.body_len, len);
    assert_memory_equal(resp.body, body, len);
    h_response_free(&resp);
    free(body);
}

static void
header_param_repeats_in_order(void **state)
{
    (void)state;
    const char *headers[] = {"X-Test-Header: X-From-Header: h", NULL};
    struct h_response resp =
        request(NULL, "/h?header=Set-Cookie%3Aa%3D1&header=Set-Cookie%3Ab%3D2",
                headers, NULL, 0, 0);
    assert_int_equal(resp.status, 200);
    assert_int_equal(h_header_count(&resp, "Set-Cookie"), 2);
    assert_string_equal(h_header(&resp, "set-cookie", 0), "a=1");
    assert_string_equal(h_header(&resp, "Set-Cookie", 1), "b=2");
    assert_null(h_header(&resp, "Set-Cookie", 2));
    assert_string_equal(h_header(&resp, "X-From-Header", 0), "h");
    h_response_free(&resp);
}

static void
chunked_reply_decodes(void **state)
{
    (void)state;
    struct h_response resp =
        request(NULL, "/c?chunked=1&body_size=100000", NULL, NULL, 0, 0);
    assert_int_equal(resp.curl_code, CURLE_OK);
    assert_int_equal(resp.status, 200);
    assert_string_equal(h_header(&resp, "Transfer-Encoding", 0), "chunked");
    assert_null(h_header(&resp, "Content-Length", 0));
    assert_int_equal(resp.body_len, 100000);
    for (size_t i = 0; i < resp.body_len; i++) {
        if (resp.body[i] != pattern_byte(i))
            fail_msg("body byte %zu is '%c', expected '%c'", i, resp.body[i],
                     pattern_byte(i));
    }
    h_response_free(&resp);
}

static void
head_and_bodiless_statuses(void **state)
{
    (void)state;
    struct h_response head =
        request("HEAD", "/x?body_size=1234", NULL, NULL, 0, 0);
    assert_int_equal(head.curl_code, CURLE_OK);
    assert_int_equal(head.status, 200);
    assert_string_equal(h_header(&head, "Content-Length", 0), "1234");
    assert_int_equal(head.body_len, 0);
    h_response_free(&head);

    struct h_response nc =
        request(NULL, "/x?status=204&body_size=10", NULL, NULL, 0, 0);
    assert_int_equal(nc.curl_code, CURLE_OK);
    assert_int_equal(nc.status, 204);
    assert_int_equal(nc.body_len, 0);
    assert_null(h_header(&nc, "Content-Length", 0));
    h_response_free(&nc);

    struct h_response nm = request(NULL, "/x?status=304", NULL, NULL, 0, 0);
    assert_int_equal(nm.curl_code, CURLE_OK);
    assert_int_equal(nm.status, 304);
    assert_int_equal(nm.body_len, 0);
    h_response_free(&nm);
}

/* --- counters ---------------------------------------------------------- */

static void
fail_first_counts_per_key(void **state)
{
    (void)state;
    assert_int_equal(h_upstream_reset(&upstream), 0);
    static const long k1[] = {503, 503, 200, 200};
    for (size_t i = 0; i < 4; i++) {
        struct h_response r =
            request(NULL, "/f?key=k1&fail_first=2", NULL, NULL, 0, 0);
        assert_int_equal(r.status, k1[i]);
        h_response_free(&r);
    }
    const char *headers[] = {"X-Test-Key: k2", "X-Test-Fail-First: 1",
                             "X-Test-Fail-Status: 500", NULL};
    static const long k2[] = {500, 200};
    for (size_t i = 0; i < 2; i++) {
        struct h_response r = request(NULL, "/f", headers, NULL, 0, 0);
        assert_int_equal(r.status, k2[i]);
        h_response_free(&r);
    }
    struct h_response reset = request(
        NULL, "/f?key=k3&fail_first=1&fail_action=reset", NULL, NULL, 0, 0);
    assert_int_equal(reset.curl_code, CURLE_RECV_ERROR);
    h_response_free(&reset);

    assert_int_equal(h_upstream_key_requests(&upstream, "k1"), 4);
    assert_int_equal(h_upstream_key_requests(&upstream, "k2"), 2);
    assert_int_equal(h_upstream_key_requests(&upstream, "k3"), 1);
    assert_int_equal(h_upstream_key_requests(&upstream, "none"), 0);
    assert_int_equal(h_upstream_requests(&upstream), 7);
}

static void
stats_count_and_reset(void **state)
{
    (void)state;
    assert_int_equal(h_upstream_reset(&upstream), 0);
    assert_int_equal(h_upstream_requests(&upstream), 0);
    for (int i = 0; i < 3; i++) {
        struct h_response r = request(NULL, "/s", NULL, NULL, 0, 0);
        assert_int_equal(r.status, 200);
        h_response_free(&r);
    }
    /* Reading /__stats does not count itself. */
    assert_int_equal(h_upstream_requests(&upstream), 3);
    assert_int_equal(h_upstream_requests(&upstream), 3);
    assert_true(h_upstream_open_connections(&upstream) >= 1);

    struct h_response post = request("POST", "/__reset", NULL, NULL, 0, 0);
    assert_int_equal(post.status, 200);
    h_response_free(&post);
    assert_int_equal(h_upstream_requests(&upstream), 0);
}

/* --- faults ------------------------------------------------------------ */

static void
faults_break_the_transfer(void **state)
{
    (void)state;
    static const struct {
        const char *path;
        long timeout_ms;
        int curl_code; /* -1: any failure */
        long status;
        size_t body_len;
    } rows[] = {
        {"/f?action=close", 0, CURLE_GOT_NOTHING, 0, 0},
        {"/f?action=reset", 0, CURLE_RECV_ERROR, 0, 0},
        {"/f?action=close_mid_body&body_size=1000", 0, CURLE_PARTIAL_FILE, 200,
         500},
        {"/f?action=close_mid_body&body_size=1000&chunked=1", 0,
         CURLE_PARTIAL_FILE, 200, 500},
        {"/f?action=stall_body&body_size=1000", 400, CURLE_OPERATION_TIMEDOUT,
         200, 500},
        {"/f?action=stall", 400, CURLE_OPERATION_TIMEDOUT, 0, 0},
        {"/f?action=bad_head", 0, -1, 0, 0},
        {"/f?action=huge_head", 0, -1, 0, 0},
        {"/f?delay_ms=100&action=reset", 0, CURLE_RECV_ERROR, 0, 0},
    };
    assert_int_equal(h_upstream_reset(&upstream), 0);
    for (size_t i = 0; i < sizeof(rows) / sizeof(*rows); i++) {
        struct h_response r =
            request(NULL, rows[i].path, NULL, NULL, 0, rows[i].timeout_ms);
        if (rows[i].curl_code != -1 && r.curl_code != rows[i].curl_code)
            fprintf(stderr, "%s: curl code %d (%s)\n", rows[i].path,
                    r.curl_code, curl_easy_strerror(r.curl_code));
        if (rows[i].curl_code == -1)
            assert_int_not_equal(r.curl_code, CURLE_OK);
        else
            assert_int_equal(r.curl_code, rows[i].curl_code);
        if (rows[i].curl_code != -1) {
            assert_int_equal(r.status, rows[i].status);
            assert_int_equal(r.body_len, rows[i].body_len);
        }
        h_response_free(&r);
    }
    /* Every faulty request still reached the upstream. */
    assert_int_equal(h_upstream_requests(&upstream),
                     sizeof(rows) / sizeof(*rows));
}

/* --- raw HTTP/1.x ------------------------------------------------------ */

/* Counts the occurrences of needle in haystack. */
static int
count_of(const char *haystack, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(haystack, needle); p != NULL;
         p = strstr(p + 1, needle))
        n++;
    return n;
}

static void
pipelined_requests_keep_alive(void **state)
{
    (void)state;
    int fd = h_connect(upstream.port);
    assert_true(fd >= 0);
    const char two[] = "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /two HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(h_send_all(fd, two, strlen(two)), 0);
    char buf[8192];
    h_recv(fd, buf, sizeof(buf), "\"path\":\"/two\"}", 5000);
    assert_int_equal(count_of(buf, "HTTP/1.1 200 OK\r\n"), 2);
    assert_non_null(strstr(buf, "\"path\":\"/one\"}"));
    assert_true(strstr(buf, "/one") < strstr(buf, "/two"));

    /* The connection stays open, and Connection: close ends it. */
    const char last[] = "GET /three HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_int_equal(h_send_all(fd, last, strlen(last)), 0);
    long n = h_recv(fd, buf, sizeof(buf), NULL, 5000);
    assert_true(n > 0);
    assert_non_null(strstr(buf, "Connection: close\r\n"));
    assert_non_null(strstr(buf, "\"path\":\"/three\"}"));
    assert_int_equal(h_recv(fd, buf, sizeof(buf), NULL, 1000), 0);
    close(fd);
}

static void
http10_closes_after_reply(void **state)
{
    (void)state;
    int fd = h_connect(upstream.port);
    assert_true(fd >= 0);
    const char req[] = "GET /old?chunked=1 HTTP/1.0\r\n\r\n";
    assert_int_equal(h_send_all(fd, req, strlen(req)), 0);
    char buf[4096];
    long n = h_recv(fd, buf, sizeof(buf), NULL, 5000);
    assert_true(n > 0);
    /* HTTP/1.0 has no chunked coding, so Content-Length is used. */
    assert_non_null(strstr(buf, "Content-Length: "));
    assert_null(strstr(buf, "Transfer-Encoding"));
    assert_non_null(strstr(buf, "Connection: close\r\n"));
    close(fd);
}

static void
chunked_request_is_decoded(void **state)
{
    (void)state;
    int fd = h_connect(upstream.port);
    assert_true(fd >= 0);
    const char req[] = "POST /e?echo=1 HTTP/1.1\r\nHost: x\r\n"
                       "Transfer-Encoding: chunked\r\nConnection: close\r\n"
                       "\r\n"
                       "5;ext=1\r\nhello\r\n6\r\n world\r\n"
                       "10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n";
    assert_int_equal(h_send_all(fd, req, strlen(req)), 0);
    char buf[4096];
    assert_true(h_recv(fd, buf, sizeof(buf), NULL, 5000) > 0);
    close(fd);

    char *body = strstr(buf, "\r\n\r\n");
    assert_non_null(body);
    cJSON *json = cJSON_Parse(body + 4);
    assert_non_null(json);
    assert_int_equal(
        (int)cJSON_GetNumberValue(cJSON_GetObjectItem(json, "body_length")),
        27);
    char fnv[17];
    snprintf(fnv, sizeof(fnv), "%016llx",
             (unsigned long long)fnv1a64("hello world0123456789abcdef", 27));
    assert_string_equal(
        cJSON_GetStringValue(cJSON_GetObjectItem(json, "body_fnv1a64")), fnv);
    cJSON_Delete(json);
}

static void
malformed_requests_rejected(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *request;
        const char *status_line;
    } rows[] = {
        {"garbage request line", "GARBAGE\r\n\r\n", "HTTP/1.1 400 "},
        {"invalid Content-Length",
         "POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", "HTTP/1.1 400 "},
        {"conflicting Content-Length",
         "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
         "HTTP/1.1 400 "},
        {"invalid chunk size",
         "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
         "HTTP/1.1 400 "},
        {"unknown transfer coding",
         "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "HTTP/1.1 501 "},
        {"HTTP/2.0 request line", "GET / HTTP/2.0\r\n\r\n", "HTTP/1.1 505 "},
        {"body over 64 MiB",
         "POST / HTTP/1.1\r\nContent-Length: 67108865\r\n\r\n",
         "HTTP/1.1 413 "},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(*rows); i++) {
        int fd = h_connect(upstream.port);
        assert_true(fd >= 0);
        assert_int_equal(
            h_send_all(fd, rows[i].request, strlen(rows[i].request)), 0);
        char buf[4096];
        long n = h_recv(fd, buf, sizeof(buf), NULL, 5000);
        close(fd);
        if (n <= 0 ||
            strncmp(buf, rows[i].status_line, strlen(rows[i].status_line)) != 0)
            fail_msg("%s: got \"%.40s\", expected \"%s\"", rows[i].name,
                     n > 0 ? buf : "", rows[i].status_line);
    }
}

static void
expect_continue_is_answered(void **state)
{
    (void)state;
    int fd = h_connect(upstream.port);
    assert_true(fd >= 0);
    const char head[] = "POST /e?mirror=1 HTTP/1.1\r\nHost: x\r\n"
                        "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    assert_int_equal(h_send_all(fd, head, strlen(head)), 0);
    char buf[4096];
    assert_true(h_recv(fd, buf, sizeof(buf), "\r\n\r\n", 5000) > 0);
    assert_string_equal(buf, "HTTP/1.1 100 Continue\r\n\r\n");

    assert_int_equal(h_send_all(fd, "abcde", 5), 0);
    assert_true(h_recv(fd, buf, sizeof(buf), "abcde", 5000) > 0);
    assert_int_equal(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17), 0);
    close(fd);
}

static bool
only_stats_connection_open(void *arg)
{
    (void)arg;
    return h_upstream_open_connections(&upstream) == 1;
}

static void
closed_clients_free_connections(void **state)
{
    (void)state;
    /* The /__stats request itself is the one connection left open. */
    assert_true(h_wait_until(only_stats_connection_open, NULL, 5000));

    int waiting = h_connect(upstream.port);
    int stalled = h_connect(upstream.port);
    assert_true(waiting >= 0 && stalled >= 0);
    const char wait_req[] = "GET /?delay_ms=60000 HTTP/1.1\r\n\r\n";
    const char stall_req[] = "GET /?action=stall_body HTTP/1.1\r\n\r\n";
    assert_int_equal(h_send_all(waiting, wait_req, strlen(wait_req)), 0);
    assert_int_equal(h_send_all(stalled, stall_req, strlen(stall_req)), 0);
    char buf[512];
    assert_true(h_recv(stalled, buf, sizeof(buf), "\r\n\r\n", 5000) > 0);
    assert_int_equal(h_upstream_open_connections(&upstream), 3);

    close(waiting);
    close(stalled);
    assert_true(h_wait_until(only_stats_connection_open, NULL, 5000));
}

/* --- chaos and lifecycle ----------------------------------------------- */

static int
compare_outcomes(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Runs n chaos requests at once and writes their outcomes, sorted. */
static void
chaos_outcomes(size_t n, char out[][32])
{
    assert_int_equal(h_upstream_reset(&upstream), 0);
    char *u = url("/chaos?chaos=100&seed=7&body_size=100");
    struct h_request reqs[32];
    struct h_response resps[32];
    assert_true(n <= 32);
    for (size_t i = 0; i < n; i++)
        reqs[i] = (struct h_request){.url = u, .timeout_ms = 900};
    h_http_parallel(reqs, resps, n);
    free(u);
    for (size_t i = 0; i < n; i++) {
        snprintf(out[i], 32, "%ld/%d", resps[i].status, resps[i].curl_code);
        h_response_free(&resps[i]);
    }
    qsort(out, n, 32, compare_outcomes);
}

static void
chaos_repeats_with_seed(void **state)
{
    (void)state;
    enum { N = 24 };
    char first[N][32];
    char second[N][32];
    chaos_outcomes(N, first);
    chaos_outcomes(N, second);

    size_t kinds = 1;
    for (size_t i = 0; i < N; i++) {
        assert_string_equal(first[i], second[i]);
        kinds += i > 0 && strcmp(first[i], first[i - 1]) != 0;
    }
    /* With 24 draws over five faults, at least three kinds show up. */
    assert_true(kinds >= 3);

    struct h_response calm =
        request(NULL, "/c?chaos=0&seed=7", NULL, NULL, 0, 0);
    assert_int_equal(calm.status, 200);
    assert_null(h_header(&calm, "X-Upstream-Chaos", 0));
    h_response_free(&calm);
}

static void
sigterm_and_sigint_exit_zero(void **state)
{
    (void)state;
    static const int signals[] = {SIGTERM, SIGINT};
    for (size_t i = 0; i < 2; i++) {
        struct h_proc p;
        assert_int_equal(h_upstream_start(&p), 0);
        /* An idle connection and a delayed request are open at the stop. */
        int idle = h_connect(p.port);
        int busy = h_connect(p.port);
        assert_true(idle >= 0 && busy >= 0);
        const char req[] = "GET /?delay_ms=60000 HTTP/1.1\r\n\r\n";
        assert_int_equal(h_send_all(busy, req, strlen(req)), 0);
        assert_int_equal(h_exit_code(h_proc_stop(&p, signals[i], 10000)), 0);
        close(idle);
        close(busy);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(status_from_query_or_header),
        cmocka_unit_test(default_body_names_path),
        cmocka_unit_test(request_ids_count_up),
        cmocka_unit_test(delay_holds_the_reply),
        cmocka_unit_test(delays_run_concurrently),
        cmocka_unit_test(echo_describes_request),
        cmocka_unit_test(mirror_returns_16mib_body),
        cmocka_unit_test(header_param_repeats_in_order),
        cmocka_unit_test(chunked_reply_decodes),
        cmocka_unit_test(head_and_bodiless_statuses),
        cmocka_unit_test(fail_first_counts_per_key),
        cmocka_unit_test(stats_count_and_reset),
        cmocka_unit_test(faults_break_the_transfer),
        cmocka_unit_test(pipelined_requests_keep_alive),
        cmocka_unit_test(http10_closes_after_reply),
        cmocka_unit_test(chunked_request_is_decoded),
        cmocka_unit_test(malformed_requests_rejected),
        cmocka_unit_test(expect_continue_is_answered),
        cmocka_unit_test(closed_clients_free_connections),
        cmocka_unit_test(chaos_repeats_with_seed),
        cmocka_unit_test(sigterm_and_sigint_exit_zero),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
