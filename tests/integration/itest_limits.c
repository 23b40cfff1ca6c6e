/*
 * Connection limits: connections past max_connections are refused without
 * harm to the ones already open, and a client slower than client_timeout_ms
 * is disconnected.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

#define MAX_CONNECTIONS 4

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
        "\"limits\":{\"max_connections\":%d,\"client_timeout_ms\":1000},"
        "\"routes\":[{\"name\":\"all\",\"match\":{\"prefix\":\"/\"},"
        "\"upstream\":{\"url\":\"http://127.0.0.1:%d\"}}]}",
        MAX_CONNECTIONS, upstream.port);
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

/* Returns true when the peer has closed fd (or reset it) within ms. */
static bool
closed_within(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char byte;

    if (poll(&p, 1, ms) <= 0)
        return false;
    return recv(fd, &byte, 1, MSG_PEEK) <= 0;
}

static void
connections_past_limit_refused(void **state)
{
    int fds[MAX_CONNECTIONS];
    char out[4096];
    static const char request[] = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n";

    (void)state;
    for (int i = 0; i < MAX_CONNECTIONS; i++) {
        fds[i] = h_connect(gateway.port);
        assert_true(fds[i] >= 0);
    }
    /* The next connection is accepted by the kernel and closed at once. */
    int extra = h_connect(gateway.port);
    assert_true(extra >= 0);
    assert_true(closed_within(extra, 2000));
    close(extra);

    /* The open ones still work. */
    for (int i = 0; i < MAX_CONNECTIONS; i++) {
        assert_int_equal(h_send_all(fds[i], request, sizeof(request) - 1), 0);
        long n = h_recv(fds[i], out, sizeof(out), "\r\n\r\n", 5000);
        assert_true(n > 12);
        assert_int_equal(strncmp(out, "HTTP/1.1 200", 12), 0);
        close(fds[i]);
    }
}

static void
slow_client_disconnected(void **state)
{
    static const char partial[] = "GET /x HTTP/1.1\r\nHost: a\r\n";

    (void)state;
    int fd = h_connect(gateway.port);
    assert_true(fd >= 0);
    assert_int_equal(h_send_all(fd, partial, sizeof(partial) - 1), 0);
    /* The head never ends: after client_timeout_ms (1 s) the gateway
     * closes the connection; allow for libmicrohttpd's one-second ticks. */
    long long start = h_now_ms();
    assert_true(closed_within(fd, 5000));
    assert_true(h_now_ms() - start >= 900);
    close(fd);
}

static void
trickling_head_disconnected(void **state)
{
    static const char start[] = "GET /x HTTP/1.1\r\nHost: a\r\nX-Pad: ";
    bool closed = false;

    (void)state;
    int fd = h_connect(gateway.port);
    assert_true(fd >= 0);
    assert_int_equal(h_send_all(fd, start, sizeof(start) - 1), 0);
    /* One byte every 200 ms keeps the connection from ever being idle for
     * client_timeout_ms (1 s), but the head as a whole must still arrive
     * within it. Up to 8 s of this: without a head deadline it never
     * ends. */
    for (int i = 0; i < 40 && !closed; i++) {
        if (send(fd, "a", 1, MSG_NOSIGNAL) != 1 || closed_within(fd, 200))
            closed = true;
    }
    close(fd);
    assert_true(closed);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(connections_past_limit_refused),
        cmocka_unit_test(slow_client_disconnected),
        cmocka_unit_test(trickling_head_disconnected),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
