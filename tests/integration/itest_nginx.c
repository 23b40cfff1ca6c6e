/*
 * Proxying to an unrelated real server: nginx (Debian's), serving a static
 * file and a 302. Through the gateway the client gets the same status,
 * end-to-end headers and bytes as when it asks nginx directly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define NGINX "/usr/sbin/nginx"

static struct h_proc gateway;
static pid_t nginx_pid;
static int nginx_port;
static char dir[] = "/tmp/wk-nginx-XXXXXX";

static int
unused_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET,
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int port = -1;

    if (fd >= 0 && bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 &&
        getsockname(fd, (struct sockaddr *)&addr, &len) == 0)
        port = ntohs(addr.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int
write_text(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");

    if (f == NULL)
        return -1;
    size_t n = fwrite(text, 1, len, f);
    return fclose(f) == 0 && n == len ? 0 : -1;
}

static bool
nginx_accepts(void *arg)
{
    (void)arg;
    int fd = h_connect(nginx_port);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

/* Writes nginx's config and files under dir and starts it on loopback. */
static int
start_nginx(void)
{
    char path[256], conf[2048], file[8192];

    if (access(NGINX, X_OK) != 0) {
        fprintf(stderr, "%s is missing; run 'make deps' (nginx-light)\n",
                NGINX);
        return -1;
    }
    if (mkdtemp(dir) == NULL)
        return -1;
    nginx_port = unused_port();
    snprintf(path, sizeof(path), "%s/www", dir);
    mkdir(path, 0755);
    for (size_t i = 0; i < sizeof(file); i++)
        file[i] = (char)('a' + i % 26);
    snprintf(path, sizeof(path), "%s/www/file.txt", dir);
    if (write_text(path, file, sizeof(file)) != 0)
        return -1;
    snprintf(conf, sizeof(conf),
             "daemon off; master_process off; worker_processes 1;\n"
             "pid %s/nginx.pid; error_log %s/error.log;\n"
             "events { worker_connections 64; }\n"
             "http {\n"
             "  access_log off; types { text/plain txt; }\n"
             "  client_body_temp_path %s; proxy_temp_path %s;\n"
             "  fastcgi_temp_path %s; uwsgi_temp_path %s; scgi_temp_path %s;\n"
             "  server {\n"
             "    listen 127.0.0.1:%d; root %s/www;\n"
             "    location = /moved { return 302 /file.txt; }\n"
             "  }\n"
             "}\n",
             dir, dir, dir, dir, dir, dir, dir, nginx_port, dir);
    snprintf(path, sizeof(path), "%s/nginx.conf", dir);
    if (write_text(path, conf, strlen(conf)) != 0)
        return -1;

    nginx_pid = fork();
    if (nginx_pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execl(NGINX, NGINX, "-c", path, "-p", dir, (char *)NULL);
        _exit(127);
    }
    if (nginx_pid < 0 || !h_wait_until(nginx_accepts, NULL, 10000))
        return -1;
    return 0;
}

static int
setup(void **state)
{
    (void)state;
    if (start_nginx() != 0)
        return -1;
    char *config = h_format(
        "{\"listen\":\"127.0.0.1:0\",\"admin\":{\"listen\":\"127.0.0.1:0\"},"
        "\"routes\":[{\"name\":\"nginx\",\"match\":{\"prefix\":\"/\"},"
        "\"upstream\":{\"url\":\"http://127.0.0.1:%d\"}}]}",
        nginx_port);
    int rc = config != NULL ? h_gateway_start(&gateway, config) : -1;
    free(config);
    return rc;
}

static int
teardown(void **state)
{
    char cmd[128];

    (void)state;
    h_gateway_stop_checked(&gateway);
    if (nginx_pid > 0) {
        kill(nginx_pid, SIGTERM);
        waitpid(nginx_pid, NULL, 0);
    }
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Fields that differ by design: framing and connection management, the
 * Date of each response, and the gateway's own Via. */
static bool
compared(const char *name)
{
    static const char *const skipped[] = {
        "Date",       "Via",          "Connection", "Keep-Alive",
        "Transfer-Encoding", "Content-Length"};
    for (size_t i = 0; i < sizeof(skipped) / sizeof(skipped[0]); i++) {
        if (strcasecmp(name, skipped[i]) == 0)
            return false;
    }
    return true;
}

static void
expect_same(const char *method, const char *path)
{
    char direct_url[128], proxied_url[128];
    struct h_response direct, proxied;

    snprintf(direct_url, sizeof(direct_url), "http://127.0.0.1:%d%s",
             nginx_port, path);
    snprintf(proxied_url, sizeof(proxied_url), "http://127.0.0.1:%d%s",
             gateway.port, path);
    /* Both requests name the same host, as a client would that reaches
     * nginx once directly and once through the gateway under one name:
     * nginx builds absolute redirects from it. */
    static const char *const headers[] = {"Host: site.test", NULL};
    struct h_request dreq = {.method = method, .url = direct_url,
                             .headers = headers};
    struct h_request preq = {.method = method, .url = proxied_url,
                             .headers = headers};
    assert_int_equal(h_http(&dreq, &direct), 0);
    assert_int_equal(h_http(&preq, &proxied), 0);

    assert_int_equal(proxied.status, direct.status);
    assert_int_equal(proxied.body_len, direct.body_len);
    assert_memory_equal(proxied.body, direct.body, direct.body_len);
    size_t d = 0, p = 0;
    while (d < direct.header_count || p < proxied.header_count) {
        while (d < direct.header_count && !compared(direct.headers[d].name))
            d++;
        while (p < proxied.header_count && !compared(proxied.headers[p].name))
            p++;
        if (d == direct.header_count || p == proxied.header_count) {
            if (d != direct.header_count || p != proxied.header_count)
                fail_msg("%s %s: header lists differ in length", method,
                         path);
            break;
        }
        if (strcasecmp(direct.headers[d].name, proxied.headers[p].name) != 0 ||
            strcmp(direct.headers[d].value, proxied.headers[p].value) != 0)
            fail_msg("%s %s: direct [%s: %s], proxied [%s: %s]", method, path,
                     direct.headers[d].name, direct.headers[d].value,
                     proxied.headers[p].name, proxied.headers[p].value);
        d++;
        p++;
    }
    /* Content-Length is compared apart: its position in the head is the
     * framing layer's choice. */
    const char *dlen = h_header(&direct, "Content-Length", 0);
    const char *plen = h_header(&proxied, "Content-Length", 0);
    assert_non_null(dlen);
    assert_non_null(plen);
    assert_string_equal(plen, dlen);
    assert_non_null(h_header(&proxied, "Via", 0));
    h_response_free(&direct);
    h_response_free(&proxied);
}

static void
nginx_static_file_same(void **state)
{
    (void)state;
    expect_same("GET", "/file.txt");
    expect_same("HEAD", "/file.txt");
}

static void
nginx_redirect_same(void **state)
{
    (void)state;
    expect_same("GET", "/moved");
}

static void
nginx_not_found_same(void **state)
{
    (void)state;
    expect_same("GET", "/missing.txt");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(nginx_static_file_same),
        cmocka_unit_test(nginx_redirect_same),
        cmocka_unit_test(nginx_not_found_same),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
