/*
 * Many requests in flight at once: 1,000 requests held 1 s by the upstream
 * all succeed, and the gateway's thread count while they are held equals its
 * count at idle (no thread per request).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static struct h_proc upstream;
static struct h_proc gateway;

static int
setup(void **state)
{
    (void)state;
    if (h_upstream_start(&upstream) != 0)
        return -1;
    char *config = h_format(
        "{\"listen\":\"127.0.0.1:0\",\"admin\":{\"listen\":\"127.0.0.1:0\"},"
        "\"routes\":[{\"name\":\"held\",\"match\":{\"prefix\":\"/\"},"
        "\"upstream\":{\"url\":\"http://127.0.0.1:%d\",\"timeout_ms\":"
        "60000}}]}",
        upstream.port);
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

struct batch {
    const struct h_request *reqs;
    struct h_response *resps;
    size_t n;
    int rc;
};

static void *
run_batch(void *arg)
{
    struct batch *b = arg;

    b->rc = h_http_parallel(b->reqs, b->resps, b->n);
    return NULL;
}

static bool
upstream_holds(void *arg)
{
    long want = *(long *)arg;

    return h_upstream_open_connections(&upstream) >= want;
}

static void
thousand_held_requests(void **state)
{
    /* Valgrind runs every thread on one core at a fraction of the speed;
     * fewer requests keep the run short and still show the shape. */
    size_t n = getenv("WK_VALGRIND") != NULL ? 200 : 1000;
    struct h_request *reqs = calloc(n, sizeof(*reqs));
    struct h_response *resps = calloc(n, sizeof(*resps));
    char url[128];

    (void)state;
    assert_non_null(reqs);
    assert_non_null(resps);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/held?delay_ms=1000",
             gateway.port);
    for (size_t i = 0; i < n; i++)
        reqs[i] = (struct h_request){.url = url, .timeout_ms = 60000};

    int idle_threads = h_proc_threads(gateway.pid);
    assert_true(idle_threads > 0);

    pthread_t thread;
    struct batch b = {.reqs = reqs, .resps = resps, .n = n};
    assert_int_equal(pthread_create(&thread, NULL, run_batch, &b), 0);

    /* Wait until the upstream holds every request, then count threads. */
    long want = (long)n;
    bool held = h_wait_until(upstream_holds, &want, 30000);
    int busy_threads = h_proc_threads(gateway.pid);
    pthread_join(thread, NULL);

    assert_true(held);
    assert_int_equal(busy_threads, idle_threads);
    assert_int_equal(b.rc, 0);
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        if (resps[i].status == 200)
            ok++;
        h_response_free(&resps[i]);
    }
    assert_int_equal(ok, n);
    free(reqs);
    free(resps);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(thousand_held_requests),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
