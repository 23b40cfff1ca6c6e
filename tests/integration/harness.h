/*
 * Integration-test harness: starts build/test-upstream and
 * build/workshop-gateway as child processes on loopback, sends requests
 * with libcurl, and cleans up.
 *
 * Children are started with fork/exec (no shell) and recorded. A child
 * still running when the test binary exits is killed with SIGKILL. So is
 * every child when h_kill_all or h_teardown runs, so a test that uses
 * h_teardown as its cmocka teardown leaves no process behind when an
 * assertion fails.
 * Logs and configs live in one temporary folder ($TMPDIR or /tmp), which
 * is removed when the binary exits with status 0 and kept (its path
 * printed) otherwise.
 *
 * Process and file functions are for the test's main thread. The HTTP
 * functions (h_http, h_http_parallel, h_get, the h_upstream_* counters)
 * and the raw-socket helpers may run on several threads at once.
 *
 * Environment: WK_BUILD (folder of the binaries, default "build"),
 * WK_GATEWAY_WRAPPER (a command prefix for the gateway such as
 * "valgrind --error-exitcode=99", split on spaces), WK_VALGRIND=1 (longer
 * stop timeouts).
 */
#ifndef TESTS_INTEGRATION_HARNESS_H
#define TESTS_INTEGRATION_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Folder holding the binaries: $WK_BUILD, default "build". */
const char *h_build_dir(void);

/* A started child process. Zero-initialise before use. */
struct h_proc {
    pid_t pid; /* 0 once stopped and reaped */
    char log_path[256];
    int port;
    int admin_port;
    char config_path[256]; /* the gateway's config file, else empty */
};

/* Starts $WK_BUILD/test-upstream on 127.0.0.1:0 and reads its port.
 * Returns 0 on success, or prints the log to stderr and returns -1. */
int h_upstream_start(struct h_proc *p);

/*
 * Writes config_json to a temporary file and starts
 * "$WK_GATEWAY_WRAPPER $WK_BUILD/workshop-gateway --config FILE" with
 * stdout and stderr to a log file. The config should use "127.0.0.1:0"
 * for listen and admin.listen. The harness polls the log (60 s at most,
 * to allow for valgrind) for "ready traffic=HOST:PORT admin=HOST:PORT"
 * and fills p->port and p->admin_port. Returns 0 on success. On failure
 * it prints the log to stderr, leaves no process running and returns -1.
 */
int h_gateway_start(struct h_proc *p, const char *config_json);

/* Returns the path of the gateway's config file (p->config_path). */
const char *h_gateway_config_path(const struct h_proc *p);

/* Replaces the gateway's config file, e.g. before sending SIGHUP. 0 on
 * success. */
int h_gateway_write_config(const struct h_proc *p, const char *config_json);

/* Formats a string, e.g. a config with the upstream's port. Returns memory
 * the caller frees, or NULL if out of memory. */
char *h_format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * Sends sig and waits up to timeout_ms for the exit. Returns the status
 * as from waitpid (see h_exit_code), or -1 on timeout, after which the
 * process is killed with SIGKILL and reaped. Returns -1 at once if p has
 * no running process.
 */
int h_proc_stop(struct h_proc *p, int sig, int timeout_ms);
/* Waits up to timeout_ms for the exit without sending a signal. Returns
 * the status, or -1 on timeout (the process keeps running). */
int h_proc_wait(struct h_proc *p, int timeout_ms);
/* Returns the exit code of a waitpid status, 128 + N for a death by
 * signal N, and -1 for -1. */
int h_exit_code(int status);

/* Stops the gateway with SIGTERM and fails the cmocka test if it did not
 * exit 0 (under WK_VALGRIND=1, valgrind's --error-exitcode=99 turns
 * memory errors into exit 99). */
void h_gateway_stop_checked(struct h_proc *p);
/* Stops the upstream with SIGTERM and fails the test unless it exits 0. */
void h_upstream_stop_checked(struct h_proc *p);

/* Kills (SIGKILL) and reaps every child still running. */
void h_kill_all(void);
/* A cmocka teardown that calls h_kill_all and returns 0. */
int h_teardown(void **state);

/* Returns the number of threads of a process, from /proc/PID/status, or
 * -1 if it cannot be read. */
int h_proc_threads(pid_t pid);
/* Copies the log file to stderr (for failing tests). */
void h_proc_dump_log(const struct h_proc *p);
/* Returns the log file's contents (caller frees), or NULL. */
char *h_proc_read_log(const struct h_proc *p);

struct h_header {
    char *name;
    char *value;
};

struct h_response {
    long status;              /* 0 if no status line arrived */
    struct h_header *headers; /* in order, repeats kept, final head only */
    size_t header_count;
    char *body; /* NUL-terminated, never NULL after h_http */
    size_t body_len;
    double total_seconds;
    int curl_code; /* CURLE_OK unless the transfer failed */
};

struct h_request {
    const char *method; /* default GET */
    const char *url;
    const char *const *headers; /* NULL-terminated "Name: value" list */
    const void *body;           /* sent with Content-Length */
    size_t body_len;
    long timeout_ms; /* default 10000 */
};

/*
 * Performs one request with libcurl on a new connection (no redirects
 * followed, no content decoding, proxies from the environment ignored).
 * Returns 0 if the whole response arrived, -1 otherwise. resp is filled in
 * both cases: curl_code is the libcurl error, and a partial body is kept. Free
 * resp with h_response_free.
 */
int h_http(const struct h_request *req, struct h_response *resp);
/*
 * Performs n requests at once, each on its own connection, with one curl
 * multi handle, and stores the response to reqs[i] in resps[i]. Returns 0 if
 * every request got a whole response, -1 otherwise. Raises this process's
 * open-file limit to the hard limit first, so thousands can run.
 */
int h_http_parallel(const struct h_request *reqs, struct h_response *resps,
                    size_t n);
/* GET shortcut: h_get(&resp, "http://127.0.0.1:%d/x", port). */
int h_get(struct h_response *resp, const char *url_fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Case-insensitive header lookup; index picks among repeats; NULL if
 * absent. */
const char *h_header(const struct h_response *resp, const char *name,
                     size_t index);
size_t h_header_count(const struct h_response *resp, const char *name);
void h_response_free(struct h_response *resp);

/* Polls fn(arg) every 10 ms until it returns true or timeout_ms passes;
 * returns the last result. */
bool h_wait_until(bool (*fn)(void *), void *arg, int timeout_ms);
/* Returns milliseconds on the monotonic clock. */
long long h_now_ms(void);

/* Reads the upstream's /__stats "requests" counter, or -1 on failure. */
long h_upstream_requests(const struct h_proc *upstream);
/* Returns the value of a series ("name{labels} ", with the space) on the
 * gateway's admin /metrics page, or -1 when it is missing. */
long h_metric(const struct h_proc *gateway, const char *series);
/* Reads /__stats "by_key"[key]: 0 if the key was never seen, -1 on
 * failure. */
long h_upstream_key_requests(const struct h_proc *upstream, const char *key);
/* Reads /__stats "open_connections", or -1 on failure. */
long h_upstream_open_connections(const struct h_proc *upstream);
/* Zeroes the upstream's counters with /__reset. 0 on success. */
int h_upstream_reset(const struct h_proc *upstream);

/* Opens a blocking TCP connection to 127.0.0.1:port. Returns fd or -1. */
int h_connect(int port);
/* Sends all of data. Returns 0 on success, -1 on error. */
int h_send_all(int fd, const void *data, size_t len);
/*
 * Reads into buf (NUL-terminated, so at most size - 1 bytes) until the
 * peer closes, until is found (if not NULL), buf is full, or timeout_ms
 * passes. Returns the bytes read, or -1 if the first read failed.
 */
long h_recv(int fd, char *buf, size_t size, const char *until, int timeout_ms);

#endif /* TESTS_INTEGRATION_HARNESS_H */
