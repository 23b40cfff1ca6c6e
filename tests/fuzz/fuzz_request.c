/*
 * libFuzzer target for the request path: it runs the gateway's real
 * libmicrohttpd handlers, upstream loop and response code in this process.
 *
 * LLVMFuzzerInitialize() starts a stub upstream thread and then the gateway
 * with gw_server_start() on a config whose routes point at the stub (three
 * routes) or at a closed port (one route). Each input is
 *
 *     REQUEST [SPLIT RESPONSE]
 *
 * where SPLIT is FUZZ_SPLIT. The target opens a loopback connection to the
 * traffic port, writes REQUEST, shuts down its write side and reads until
 * the gateway closes or stays silent for QUIET_MS. Every upstream call made
 * meanwhile gets RESPONSE from the stub, or a small valid 200 response when
 * the input has no SPLIT, so one input fuzzes both the client side and the
 * upstream side of the proxy.
 *
 * Besides crashes and sanitizer reports in any thread, it aborts (and so
 * leaves the input as a crash) when:
 * - the gateway sends bytes that do not start with an HTTP/1.x status line;
 * - a request is still in flight (srv.in_flight) SETTLE_WAIT_MS after the
 *   client closed its connection, which means a request that never
 *   completes.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "server.h"

/* Separates the client's bytes from the stub upstream's reply. */
#define FUZZ_SPLIT "\n@@upstream@@\n"
/*
 * The client stops reading after QUIET_MS without a byte from the gateway,
 * and after CLIENT_WAIT_MS in any case. The gateway closes a half-closed
 * connection right after its response, but keeps one whose request is
 * incomplete until client_timeout_ms (libmicrohttpd 0.9.75), which would
 * cost a second per such input. A response that takes longer than QUIET_MS
 * meets a closed client, which tests that path instead.
 */
#define QUIET_MS       20
#define CLIENT_WAIT_MS 5000
/* How long a finished connection may take to leave srv.in_flight. */
#define SETTLE_WAIT_MS 3000
/* How long the stub waits for a request head. */
#define STUB_WAIT_MS 2000
/*
 * How long the stub reads on after its reply before it closes. The gateway
 * may keep the connection for reuse and never close it, so a longer drain
 * would keep one stub thread per input alive.
 */
#define STUB_DRAIN_MS 100
/* Response bytes kept for the status line check; the rest is drained. */
#define RESPONSE_KEEP 4096
#define STUB_HEAD_MAX (64 * 1024)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char default_reply[] = "HTTP/1.1 200 OK\r\n"
                                    "Content-Type: text/plain\r\n"
                                    "Content-Length: 2\r\n"
                                    "\r\n"
                                    "ok";

static struct gw_server server;

/* The reply that the stub sends to every call; guarded by reply_lock. */
static pthread_mutex_t reply_lock = PTHREAD_MUTEX_INITIALIZER;
static char *reply_data;
static size_t reply_len;

static _Noreturn void
fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_request: %s%s%s\n", what, detail != NULL ? ": " : "",
            detail != NULL ? detail : "");
    abort();
}

static long long
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000,
                          .tv_nsec = (ms % 1000) * 1000000};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Waits until fd is readable or deadline_ms passes; true when readable. */
static bool
wait_readable(int fd, long long deadline_ms)
{
    for (;;) {
        long long left = deadline_ms - now_ms();
        if (left <= 0)
            return false;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int n = poll(&pfd, 1, (int)left);
        if (n > 0)
            return true;
        if (n < 0 && errno != EINTR)
            return false;
    }
}

static int
listen_loopback(uint16_t *port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(addr.sin_port);
    return fd;
}

/* --- stub upstream ------------------------------------------------------- */

static void
send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* the gateway went away; nothing to report */
        data += n;
        len -= (size_t)n;
    }
}

/*
 * Serves one upstream connection: reads the request head, sends the
 * current reply, shuts down its side and drains what the gateway still
 * sends (the rest of a request body) before it closes. The shutdown is
 * what ends a reply that has no framing of its own.
 */
static void *
stub_serve(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char *head = malloc(STUB_HEAD_MAX + 1);
    size_t used = 0;
    long long deadline = now_ms() + STUB_WAIT_MS;

    while (head != NULL && used < STUB_HEAD_MAX &&
           wait_readable(fd, deadline)) {
        ssize_t n = recv(fd, head + used, STUB_HEAD_MAX - used, 0);
        if (n <= 0)
            break;
        used += (size_t)n;
        head[used] = '\0';
        if (strstr(head, "\r\n\r\n") != NULL)
            break;
    }
    free(head);

    pthread_mutex_lock(&reply_lock);
    char *reply = malloc(reply_len > 0 ? reply_len : 1);
    size_t len = reply != NULL ? reply_len : 0;
    if (reply != NULL)
        memcpy(reply, reply_data, len);
    pthread_mutex_unlock(&reply_lock);
    send_all(fd, reply, len);
    free(reply);

    shutdown(fd, SHUT_WR);
    char drain[4096];
    deadline = now_ms() + STUB_DRAIN_MS;
    while (wait_readable(fd, deadline) && recv(fd, drain, sizeof(drain), 0) > 0)
        ;
    close(fd);
    return NULL;
}

static void *
stub_accept(void *arg)
{
    int listen_fd = (int)(intptr_t)arg;

    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EINTR && errno != ECONNABORTED)
                sleep_ms(10); /* out of descriptors: let some close */
            continue;
        }
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&thread, &attr, stub_serve, (void *)(intptr_t)fd) !=
            0)
            close(fd);
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

static void
set_reply(const char *data, size_t len)
{
    char *copy = malloc(len > 0 ? len : 1);

    if (copy == NULL)
        fail("out of memory", NULL);
    memcpy(copy, data, len);
    pthread_mutex_lock(&reply_lock);
    free(reply_data);
    reply_data = copy;
    reply_len = len;
    pthread_mutex_unlock(&reply_lock);
}

/* --- gateway ---------------------------------------------------------------
 */

/* Returns a port on which nothing listens: bound once, then closed. */
static uint16_t
closed_port(void)
{
    uint16_t port = 0;
    int fd = listen_loopback(&port);

    if (fd < 0)
        fail("cannot bind a loopback socket", strerror(errno));
    close(fd);
    return port;
}

static void
start_gateway(uint16_t stub_port)
{
    char json[4096];
    char err[1024];
    struct gw_config *config;
    uint16_t dead_port = closed_port();

    /* Small limits, so inputs reach the 413 and 431 paths. */
    int n = snprintf(
        json, sizeof(json),
        "{\"listen\": \"127.0.0.1:0\","
        " \"admin\": {\"listen\": \"127.0.0.1:0\"},"
        " \"limits\": {\"max_connections\": 64, \"max_header_bytes\": 2048,"
        "   \"max_body_bytes\": 4096, \"max_response_bytes\": 4096,"
        "   \"client_timeout_ms\": 1000},"
        " \"log\": {\"access\": \"json\"},"
        " \"drain_timeout_ms\": 1000,"
        " \"routes\": ["
        "  {\"name\": \"api\", \"match\": {\"prefix\": \"/api\", \"methods\":"
        "     [\"GET\", \"POST\", \"PUT\", \"DELETE\", \"PATCH\", "
        "\"OPTIONS\"]},"
        "   \"upstream\": {\"url\": \"http://127.0.0.1:%u\","
        "     \"connect_timeout_ms\": 250, \"timeout_ms\": 1000}},"
        "  {\"name\": \"strip\", \"match\": {\"prefix\": \"/strip/\"},"
        "   \"upstream\": {\"url\": \"http://127.0.0.1:%u/v1/\","
        "     \"strip_prefix\": true, \"timeout_ms\": 1000}},"
        "  {\"name\": \"api-put\", \"match\": {\"prefix\": \"/api/x\","
        "     \"methods\": [\"PUT\"]},"
        "   \"upstream\": {\"url\": \"http://127.0.0.1:%u/base\","
        "     \"strip_prefix\": true, \"timeout_ms\": 1000}},"
        "  {\"name\": \"dead\", \"match\": {\"prefix\": \"/dead\"},"
        "   \"upstream\": {\"url\": \"http://127.0.0.1:%u\","
        "     \"connect_timeout_ms\": 250, \"timeout_ms\": 1000}}"
        " ]}",
        stub_port, stub_port, stub_port, dead_port);
    if (n < 0 || (size_t)n >= sizeof(json))
        fail("the config does not fit its buffer", NULL);
    if (gw_config_parse(json, (size_t)n, "fuzz_request.json", &config, err,
                        sizeof(err)) != 0)
        fail("the fuzz config is invalid", err);
    if (gw_server_start(&server, config) != 0)
        fail("gw_server_start failed", NULL);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    signal(SIGPIPE, SIG_IGN);
    /* Upstream failures are the normal case here; keep the output to
     * libFuzzer's own lines and real errors. */
    gw_log_set_level(GW_LOG_ERROR);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        fail("curl_global_init failed", NULL);
    set_reply(default_reply, sizeof(default_reply) - 1);

    uint16_t stub_port = 0;
    int stub_fd = listen_loopback(&stub_port);
    if (stub_fd < 0)
        fail("cannot start the stub upstream", strerror(errno));
    pthread_t thread;
    if (pthread_create(&thread, NULL, stub_accept, (void *)(intptr_t)stub_fd) !=
        0)
        fail("cannot start the stub upstream thread", NULL);
    pthread_detach(thread);

    start_gateway(stub_port);
    return 0;
}

/* --- one input ---------------------------------------------------------------
 */

static int
connect_traffic(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_port = htons(server.traffic_port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        fail("socket failed", strerror(errno));
    /* libFuzzer's timeout timer (SIGALRM) can interrupt a connect that
     * waits for the handshake; it is retried, for up to 30 s in all. */
    int rc;
    long long give_up = now_ms() + 30000;
    while ((rc = connect(fd, (struct sockaddr *)&addr, sizeof(addr))) != 0 &&
           errno == EINTR && now_ms() < give_up) {
        close(fd);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            fail("socket failed", strerror(errno));
    }
    if (rc != 0)
        fail("cannot connect to the gateway", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* The gateway may stop reading (431, 413) while bytes are left; give
     * up on them instead of blocking. */
    struct timeval send_timeout = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout,
               sizeof(send_timeout));
    return fd;
}

static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/*
 * Checks that the gateway's output starts with "HTTP/1.x NNN". When the
 * client stopped reading before the gateway closed (complete is false), the
 * output may be cut short, and only the bytes that arrived are checked.
 */
static void
check_status_line(const char *buf, size_t len, bool complete)
{
    static const char pattern[] = "HTTP/1.x ddd_";
    bool ok = !complete || len == 0 || len >= sizeof(pattern) - 1;

    for (size_t i = 0; ok && i < len && i < sizeof(pattern) - 1; i++) {
        switch (pattern[i]) {
        case 'x':
            ok = buf[i] == '0' || buf[i] == '1';
            break;
        case 'd':
            ok = is_digit(buf[i]);
            break;
        case '_':
            ok = buf[i] == ' ' || buf[i] == '\r';
            break;
        default:
            ok = buf[i] == pattern[i];
            break;
        }
    }
    if (!ok) {
        char shown[64];
        size_t n = len < 40 ? len : 40;
        for (size_t i = 0; i < n; i++)
            shown[i] = buf[i] >= ' ' && buf[i] < 0x7f ? buf[i] : '.';
        shown[n] = '\0';
        fail("the gateway sent something other than a status line", shown);
    }
}

/* Reads the gateway's output until it closes or goes quiet. */
static void
read_response(int fd)
{
    char keep[RESPONSE_KEEP];
    char drain[16384];
    size_t kept = 0;
    bool complete = false;
    long long deadline = now_ms() + CLIENT_WAIT_MS;

    for (;;) {
        long long quiet = now_ms() + QUIET_MS;
        if (!wait_readable(fd, quiet < deadline ? quiet : deadline))
            break;
        char *into = kept < sizeof(keep) ? keep + kept : drain;
        size_t room = kept < sizeof(keep) ? sizeof(keep) - kept : sizeof(drain);
        ssize_t n = recv(fd, into, room, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            complete = true; /* closed, or reset after the gateway gave up */
            break;
        }
        if (into == keep + kept)
            kept += (size_t)n;
    }
    check_status_line(keep, kept, complete);
}

static void
wait_settled(void)
{
    long long deadline = now_ms() + SETTLE_WAIT_MS;

    while (atomic_load(&server.in_flight) > 0) {
        if (now_ms() >= deadline) {
            char count[32];
            snprintf(count, sizeof(count), "%ld",
                     atomic_load(&server.in_flight));
            fail("requests still in flight after the connection closed", count);
        }
        sleep_ms(1);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *bytes = (const char *)data;
    const char *split = memmem(bytes, size, FUZZ_SPLIT, strlen(FUZZ_SPLIT));
    size_t request_len = split != NULL ? (size_t)(split - bytes) : size;

    if (split != NULL) {
        const char *reply = split + strlen(FUZZ_SPLIT);
        set_reply(reply, size - (size_t)(reply - bytes));
    } else {
        set_reply(default_reply, sizeof(default_reply) - 1);
    }

    int fd = connect_traffic();
    send_all(fd, bytes, request_len);
    shutdown(fd, SHUT_WR);
    read_response(fd);
    /* Close with a reset when the gateway has not closed yet (the quiet
     * case), so that socket skips TIME_WAIT. One that the gateway closed
     * after its response is in TIME_WAIT already, because this side sent the
     * first FIN; loopback connects reuse those ports (tcp_tw_reuse). */
    struct linger reset = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
    close(fd);
    wait_settled();
    return 0;
}
