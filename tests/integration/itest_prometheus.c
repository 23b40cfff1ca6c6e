/*
 * A real Prometheus server scrapes the gateway's admin listener: the target
 * must be up, and a breaker that test traffic opened must read as open
 * through Prometheus's HTTP API, with its bucket series stored.
 *
 * Prometheus (Debian 12's prometheus package, 2.42) runs on a free loopback
 * port with a temporary storage folder and scrape_interval 1s. With that
 * version the first scrape comes about 5 s after the start, so this test
 * takes about 6 s. Every wait has a bound.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* Upper bounds of the waits, in milliseconds. */
#define PROMETHEUS_READY_MS 15000
#define FIRST_SCRAPE_MS     30000
#define STOP_MS             10000

static struct h_proc upstream;
static struct h_proc gateway;
static pid_t prometheus_pid;
static int prometheus_port;
static char work_dir[256]; /* config, storage and log of Prometheus */

/* %1$d is the upstream's port. The 60 s window keeps the failures in the
 * breaker's buckets until Prometheus has scraped them. */
static const char gateway_fmt[] =
    "{\"listen\":\"127.0.0.1:0\",\"admin\":{\"listen\":\"127.0.0.1:0\"},"
    "\"log\":{\"access\":\"off\"},"
    "\"routes\":["
    "{\"name\":\"flaky\",\"match\":{\"prefix\":\"/flaky\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\"},"
    "\"breaker\":{\"trip\":\"consecutive_failures\","
    "\"consecutive_failures\":3,\"window_ms\":60000,\"buckets\":6,"
    "\"open_ms\":600000}},"
    "{\"name\":\"steady\",\"match\":{\"prefix\":\"/steady\"},"
    "\"upstream\":{\"url\":\"http://127.0.0.1:%1$d\"},"
    "\"breaker\":{}}"
    "]}";

/* --- Prometheus as a child process ------------------------------------ */

/* Finds a free loopback port: bind port 0, read it, close. */
static int
free_port(void)
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
remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Kills Prometheus if it still runs and removes its folder. */
static void
prometheus_cleanup(void)
{
    if (prometheus_pid > 0) {
        kill(prometheus_pid, SIGKILL);
        waitpid(prometheus_pid, NULL, 0);
        prometheus_pid = 0;
    }
    if (work_dir[0] != '\0') {
        nftw(work_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        work_dir[0] = '\0';
    }
}

static int
write_prometheus_config(const char *path)
{
    FILE *f = fopen(path, "w");

    if (f == NULL) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f,
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: workshop\n"
            "    static_configs:\n"
            "      - targets: ['127.0.0.1:%d']\n",
            gateway.admin_port);
    return fclose(f) == 0 ? 0 : -1;
}

/* Starts prometheus with output to its log; returns 0 or -1. */
static int
spawn_prometheus(void)
{
    char config[300], storage[300], listen[64], log_path[300];

    snprintf(config, sizeof(config), "--config.file=%s/prometheus.yml",
             work_dir);
    snprintf(storage, sizeof(storage), "--storage.tsdb.path=%s/data", work_dir);
    snprintf(listen, sizeof(listen), "--web.listen-address=127.0.0.1:%d",
             prometheus_port);
    snprintf(log_path, sizeof(log_path), "%s/prometheus.log", work_dir);
    int log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0)
        return -1;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(log_fd, STDOUT_FILENO);
        dup2(log_fd, STDERR_FILENO);
        execlp("prometheus", "prometheus", config, storage, listen,
               (char *)NULL);
        _exit(127);
    }
    close(log_fd);
    if (pid < 0)
        return -1;
    prometheus_pid = pid;
    return 0;
}

static void
dump_prometheus_log(void)
{
    char path[300];
    char line[512];

    snprintf(path, sizeof(path), "%s/prometheus.log", work_dir);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    fprintf(stderr, "--- %s\n", path);
    while (fgets(line, sizeof(line), f) != NULL)
        fputs(line, stderr);
    fclose(f);
}

static bool
prometheus_ready(void *arg)
{
    struct h_response resp;

    (void)arg;
    int rc = h_get(&resp, "http://127.0.0.1:%d/-/ready", prometheus_port);
    bool ready = rc == 0 && resp.status == 200;
    h_response_free(&resp);
    return ready;
}

static int
start_prometheus(void)
{
    char path[300];
    const char *base = getenv("TMPDIR");

    snprintf(work_dir, sizeof(work_dir), "%s/wk-prometheus-XXXXXX",
             base != NULL && base[0] != '\0' ? base : "/tmp");
    if (mkdtemp(work_dir) == NULL) {
        work_dir[0] = '\0';
        return -1;
    }
    snprintf(path, sizeof(path), "%s/prometheus.yml", work_dir);
    prometheus_port = free_port();
    if (prometheus_port < 0 || write_prometheus_config(path) != 0 ||
        spawn_prometheus() != 0)
        return -1;
    if (!h_wait_until(prometheus_ready, NULL, PROMETHEUS_READY_MS)) {
        dump_prometheus_log();
        fprintf(stderr, "prometheus not ready after %d ms\n",
                PROMETHEUS_READY_MS);
        return -1;
    }
    return 0;
}

/* Stops Prometheus with SIGTERM, then SIGKILL after STOP_MS. */
static void
stop_prometheus(void)
{
    if (prometheus_pid <= 0)
        return;
    kill(prometheus_pid, SIGTERM);
    long long deadline = h_now_ms() + STOP_MS;
    while (h_now_ms() < deadline) {
        if (waitpid(prometheus_pid, NULL, WNOHANG) == prometheus_pid) {
            prometheus_pid = 0;
            return;
        }
        usleep(20000);
    }
    prometheus_cleanup();
}

/* --- queries ---------------------------------------------------------- */

/*
 * Runs an instant query (URL-encoded) and returns the value of its only
 * result as a string the caller frees, or NULL when there is none yet.
 */
static char *
query_value(const char *encoded_query)
{
    struct h_response resp;
    char *value = NULL;

    int rc = h_get(&resp, "http://127.0.0.1:%d/api/v1/query?query=%s",
                   prometheus_port, encoded_query);
    cJSON *root = rc == 0 && resp.status == 200 ? cJSON_Parse(resp.body) : NULL;
    cJSON *result =
        cJSON_GetObjectItem(cJSON_GetObjectItem(root, "data"), "result");
    if (cJSON_GetArraySize(result) == 1) {
        cJSON *pair =
            cJSON_GetObjectItem(cJSON_GetArrayItem(result, 0), "value");
        const char *text = cJSON_GetStringValue(cJSON_GetArrayItem(pair, 1));
        if (text != NULL)
            value = strdup(text);
    }
    cJSON_Delete(root);
    h_response_free(&resp);
    return value;
}

struct expectation {
    const char *query; /* URL-encoded */
    const char *value;
};

static bool
query_matches(void *arg)
{
    const struct expectation *e = arg;
    char *value = query_value(e->query);
    bool match = value != NULL && strcmp(value, e->value) == 0;

    free(value);
    return match;
}

static void
expect_query(const char *what, const char *encoded_query, const char *value,
             int timeout_ms)
{
    struct expectation e = {.query = encoded_query, .value = value};

    if (h_wait_until(query_matches, &e, timeout_ms))
        return;
    char *got = query_value(encoded_query);
    dump_prometheus_log();
    fail_msg("%s: query %s returned %s, expected %s", what, encoded_query,
             got != NULL ? got : "no single result", value);
}

/* --- the test --------------------------------------------------------- */

static bool
breaker_open_in_gateway(void *arg)
{
    struct h_response resp;

    (void)arg;
    int rc = h_get(&resp, "http://127.0.0.1:%d/metrics", gateway.admin_port);
    bool open = rc == 0 && strstr(resp.body, "\nworkshop_breaker_state{"
                                             "route=\"flaky\"} 1\n") != NULL;
    h_response_free(&resp);
    return open;
}

static int
setup(void **state)
{
    (void)state;
    if (atexit(prometheus_cleanup) != 0 || h_upstream_start(&upstream) != 0)
        return -1;
    char *config = h_format(gateway_fmt, upstream.port);
    int rc = config != NULL ? h_gateway_start(&gateway, config) : -1;
    free(config);
    return rc;
}

static int
teardown(void **state)
{
    (void)state;
    stop_prometheus();
    h_gateway_stop_checked(&gateway);
    h_upstream_stop_checked(&upstream);
    prometheus_cleanup();
    return 0;
}

static void
prometheus_sees_open_breaker(void **state)
{
    (void)state;
    if (system("command -v prometheus >/dev/null 2>&1") != 0)
        fail_msg("prometheus not found in PATH; run 'make deps'");

    for (int i = 0; i < 3; i++) {
        struct h_response resp;
        assert_int_equal(
            h_get(&resp, "http://127.0.0.1:%d/flaky?status=503", gateway.port),
            0);
        assert_int_equal(resp.status, 503);
        h_response_free(&resp);
    }
    if (!h_wait_until(breaker_open_in_gateway, NULL, 5000))
        fail_msg("the gateway's /metrics never showed flaky's breaker open");

    if (start_prometheus() != 0)
        fail_msg("cannot start prometheus (folder %s)", work_dir);
    expect_query("the gateway target is up", "up%7Bjob%3D%22workshop%22%7D",
                 "1", FIRST_SCRAPE_MS);
    expect_query("flaky's breaker reads as open",
                 "workshop_breaker_state%7Broute%3D%22flaky%22%7D", "1", 5000);
    expect_query("steady's breaker reads as closed",
                 "workshop_breaker_state%7Broute%3D%22steady%22%7D", "0", 5000);
    expect_query("the failures are in flaky's buckets",
                 "sum(workshop_breaker_bucket_calls%7Broute%3D%22flaky%22%2C"
                 "outcome%3D%22failures%22%7D)",
                 "3", 5000);
    expect_query("each of flaky's six buckets is a series",
                 "count(workshop_breaker_bucket_calls%7Broute%3D%22flaky%22%2C"
                 "outcome%3D%22failures%22%7D)",
                 "6", 5000);
    expect_query("the transition to open is counted",
                 "workshop_breaker_transitions_total%7Broute%3D%22flaky%22%2C"
                 "to%3D%22open%22%7D",
                 "1", 5000);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(prometheus_sees_open_breaker),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
