/*
 * Integration-test harness, second half: HTTP requests with libcurl (one
 * at a time or many at once), the test upstream's counters, and raw TCP
 * for tests that write HTTP by hand. Any thread may call these.
 */
#include "harness.h"

#include <cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void
curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
}

/* Appends to a NUL-terminated growable byte string. */
static bool
append_bytes(char **data, size_t *len, size_t *cap, const char *src, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap < 256 ? 256 : *cap;
        while (c < *len + n + 1)
            c *= 2;
        char *bigger = realloc(*data, c);
        if (bigger == NULL)
            return false;
        *data = bigger;
        *cap = c;
    }
    memcpy(*data + *len, src, n);
    *len += n;
    (*data)[*len] = '\0';
    return true;
}

struct collector {
    struct h_response *resp;
    size_t header_cap;
    size_t body_cap;
};

static void
free_headers(struct h_response *resp)
{
    for (size_t i = 0; i < resp->header_count; i++) {
        free(resp->headers[i].name);
        free(resp->headers[i].value);
    }
    free(resp->headers);
    resp->headers = NULL;
    resp->header_count = 0;
}

static bool
add_header(struct collector *col, const char *line, size_t len)
{
    struct h_response *resp = col->resp;
    const char *colon = memchr(line, ':', len);
    if (colon == NULL)
        return true;
    const char *value = colon + 1;
    const char *end = line + len;
    while (value < end && (*value == ' ' || *value == '\t'))
        value++;
    while (end > value && (end[-1] == '\r' || end[-1] == '\n' ||
                           end[-1] == ' ' || end[-1] == '\t'))
        end--;

    if (resp->header_count == col->header_cap) {
        size_t cap = col->header_cap == 0 ? 16 : col->header_cap * 2;
        struct h_header *h = realloc(resp->headers, cap * sizeof(*h));
        if (h == NULL)
            return false;
        resp->headers = h;
        col->header_cap = cap;
    }
    char *name = strndup(line, (size_t)(colon - line));
    char *val = strndup(value, (size_t)(end - value));
    if (name == NULL || val == NULL) {
        free(name);
        free(val);
        return false;
    }
    resp->headers[resp->header_count++] = (struct h_header){name, val};
    return true;
}

static size_t
on_header(char *data, size_t size, size_t count, void *arg)
{
    struct collector *col = arg;
    size_t len = size * count;
    /* Each status line starts a head: keep only the final one's fields. */
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        free_headers(col->resp);
        col->header_cap = 0;
        return len;
    }
    return add_header(col, data, len) ? len : 0;
}

static size_t
on_body(char *data, size_t size, size_t count, void *arg)
{
    struct collector *col = arg;
    size_t len = size * count;
    struct h_response *resp = col->resp;
    return append_bytes(&resp->body, &resp->body_len, &col->body_cap, data, len)
               ? len
               : 0;
}

static bool
is_body_method(const char *method)
{
    return strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
           strcmp(method, "PATCH") == 0;
}

/* Sets the method and body options of a request. */
static void
set_method(CURL *curl, const struct h_request *req)
{
    const char *method = req->method != NULL ? req->method : "GET";
    bool has_body = req->body != NULL || is_body_method(method);
    if (has_body) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS,
                         req->body != NULL ? req->body : "");
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)req->body_len);
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    }
}

/* One libcurl transfer and what it owns. */
struct transfer {
    CURL *curl;
    struct curl_slist *headers;
    struct collector col;
};

/* Prepares a transfer for req into resp. False if out of memory. */
static bool
transfer_init(struct transfer *t, const struct h_request *req,
              struct h_response *resp)
{
    pthread_once(&curl_once, curl_init_once);
    *resp = (struct h_response){.curl_code = CURLE_FAILED_INIT};
    *t = (struct transfer){.col = {.resp = resp}};
    if (!append_bytes(&resp->body, &resp->body_len, &t->col.body_cap, "", 0))
        return false;
    t->curl = curl_easy_init();
    if (t->curl == NULL)
        return false;
    for (size_t i = 0; req->headers != NULL && req->headers[i] != NULL; i++) {
        struct curl_slist *more =
            curl_slist_append(t->headers, req->headers[i]);
        if (more == NULL)
            return false;
        t->headers = more;
    }

    CURL *curl = t->curl;
    curl_easy_setopt(curl, CURLOPT_URL, req->url);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_PROXY, "");
    curl_easy_setopt(curl, CURLOPT_HTTP_CONTENT_DECODING, 0L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                     req->timeout_ms > 0 ? req->timeout_ms : 10000L);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &t->col);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t->col);
    set_method(curl, req);
    return true;
}

/* Records the outcome and frees the transfer. 0 if it succeeded. */
static int
transfer_finish(struct transfer *t, CURLcode code)
{
    struct h_response *resp = t->col.resp;
    resp->curl_code = (int)code;
    if (t->curl != NULL) {
        curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &resp->status);
        curl_easy_getinfo(t->curl, CURLINFO_TOTAL_TIME, &resp->total_seconds);
        curl_easy_cleanup(t->curl);
    }
    curl_slist_free_all(t->headers);
    *t = (struct transfer){0};
    return code == CURLE_OK ? 0 : -1;
}

int
h_http(const struct h_request *req, struct h_response *resp)
{
    struct transfer t;
    if (!transfer_init(&t, req, resp))
        return transfer_finish(&t, CURLE_OUT_OF_MEMORY);
    return transfer_finish(&t, curl_easy_perform(t.curl));
}

static pthread_once_t fd_limit_once = PTHREAD_ONCE_INIT;

/* Raises the open-file soft limit to the hard limit. */
static void
raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

/* Drives the multi handle until every transfer has finished. */
static void
run_multi(CURLM *multi, struct transfer *ts, size_t n)
{
    int running = 1;
    while (running > 0) {
        if (curl_multi_perform(multi, &running) != CURLM_OK)
            break;
        int left;
        CURLMsg *msg;
        while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            for (size_t i = 0; i < n; i++) {
                if (ts[i].curl != msg->easy_handle)
                    continue;
                curl_multi_remove_handle(multi, ts[i].curl);
                transfer_finish(&ts[i], msg->data.result);
                break;
            }
        }
        if (running > 0)
            curl_multi_poll(multi, NULL, 0, 100, NULL);
    }
}

int
h_http_parallel(const struct h_request *reqs, struct h_response *resps,
                size_t n)
{
    pthread_once(&fd_limit_once, raise_fd_limit);
    struct transfer *ts = calloc(n, sizeof(*ts));
    CURLM *multi = curl_multi_init();
    if (ts == NULL || multi == NULL) {
        free(ts);
        curl_multi_cleanup(multi);
        for (size_t i = 0; i < n; i++)
            resps[i] = (struct h_response){.curl_code = CURLE_OUT_OF_MEMORY};
        return -1;
    }

    for (size_t i = 0; i < n; i++) {
        if (!transfer_init(&ts[i], &reqs[i], &resps[i]) ||
            curl_multi_add_handle(multi, ts[i].curl) != CURLM_OK)
            transfer_finish(&ts[i], CURLE_OUT_OF_MEMORY);
    }
    run_multi(multi, ts, n);

    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        /* A transfer still here was cut short by a multi failure. */
        if (ts[i].curl != NULL) {
            curl_multi_remove_handle(multi, ts[i].curl);
            transfer_finish(&ts[i], CURLE_FAILED_INIT);
        }
        if (resps[i].curl_code != CURLE_OK)
            rc = -1;
    }
    curl_multi_cleanup(multi);
    free(ts);
    return rc;
}

int
h_get(struct h_response *resp, const char *url_fmt, ...)
{
    va_list ap;
    va_start(ap, url_fmt);
    char url[2048];
    int n = vsnprintf(url, sizeof(url), url_fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(url)) {
        *resp = (struct h_response){.curl_code = CURLE_URL_MALFORMAT};
        return -1;
    }
    struct h_request req = {.url = url};
    return h_http(&req, resp);
}

const char *
h_header(const struct h_response *resp, const char *name, size_t index)
{
    for (size_t i = 0; i < resp->header_count; i++) {
        if (strcasecmp(resp->headers[i].name, name) == 0 && index-- == 0)
            return resp->headers[i].value;
    }
    return NULL;
}

size_t
h_header_count(const struct h_response *resp, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < resp->header_count; i++)
        n += strcasecmp(resp->headers[i].name, name) == 0;
    return n;
}

void
h_response_free(struct h_response *resp)
{
    free_headers(resp);
    free(resp->body);
    *resp = (struct h_response){0};
}

/* --- the test upstream's counters --------------------------------------- */

/* Fetches GET /__stats (or /__reset) as parsed JSON, or NULL on failure. */
static cJSON *
upstream_admin(const struct h_proc *upstream, const char *path)
{
    struct h_response resp;
    cJSON *json = NULL;
    if (h_get(&resp, "http://127.0.0.1:%d%s", upstream->port, path) == 0 &&
        resp.status == 200)
        json = cJSON_Parse(resp.body);
    h_response_free(&resp);
    return json;
}

/* Reads the number at key of object, or -1 if it is missing. */
static long
json_long(const cJSON *object, const char *key)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, key);
    return cJSON_IsNumber(item) ? (long)item->valuedouble : -1;
}

long
h_metric(const struct h_proc *gateway, const char *series)
{
    struct h_response resp;
    long value = -1;

    if (h_get(&resp, "http://127.0.0.1:%d/metrics", gateway->admin_port) != 0) {
        h_response_free(&resp);
        return -1;
    }
    const char *line = strstr(resp.body, series);
    if (line != NULL)
        value = strtol(line + strlen(series), NULL, 10);
    h_response_free(&resp);
    return value;
}

long
h_upstream_requests(const struct h_proc *upstream)
{
    cJSON *json = upstream_admin(upstream, "/__stats");
    long n = json_long(json, "requests");
    cJSON_Delete(json);
    return n;
}

long
h_upstream_key_requests(const struct h_proc *upstream, const char *key)
{
    cJSON *json = upstream_admin(upstream, "/__stats");
    const cJSON *by_key = cJSON_GetObjectItemCaseSensitive(json, "by_key");
    long n = -1;
    if (cJSON_IsObject(by_key)) {
        n = json_long(by_key, key);
        if (n < 0)
            n = 0;
    }
    cJSON_Delete(json);
    return n;
}

long
h_upstream_open_connections(const struct h_proc *upstream)
{
    cJSON *json = upstream_admin(upstream, "/__stats");
    long n = json_long(json, "open_connections");
    cJSON_Delete(json);
    return n;
}

int
h_upstream_reset(const struct h_proc *upstream)
{
    cJSON *json = upstream_admin(upstream, "/__reset");
    int rc = json_long(json, "requests") == 0 ? 0 : -1;
    cJSON_Delete(json);
    return rc;
}

/* --- raw sockets -------------------------------------------------------- */

int
h_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int
h_send_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

long
h_recv(int fd, char *buf, size_t size, const char *until, int timeout_ms)
{
    long long deadline = h_now_ms() + timeout_ms;
    size_t len = 0;
    buf[0] = '\0';
    while (len + 1 < size) {
        if (until != NULL && strstr(buf, until) != NULL)
            break;
        long long left = deadline - h_now_ms();
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            break;
        ssize_t n = recv(fd, buf + len, size - 1 - len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && len == 0)
            return -1;
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
    }
    return (long)len;
}
