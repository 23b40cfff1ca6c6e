/*
 * The traffic listener: libmicrohttpd handlers that carry each request from
 * its head to the upstream and back.
 *
 * A request moves through these states, all on the libmicrohttpd thread:
 * READ_HEAD (route it, check limits), READ_BODY (collect the body up to
 * max_body_bytes), WAIT_UPSTREAM (the connection is suspended while the
 * upstream call runs as an asynchronous promise step on the upstream loop),
 * and back on the libmicrohttpd thread once the promise settles and resumes
 * the connection, where the response is queued.
 *
 * A request is reference counted: libmicrohttpd holds one reference from the
 * request's first byte to its completion callback, and the upstream call
 * holds one while it is in flight, so neither side frees memory the other
 * still uses.
 */
#include "proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "headers.h"
#include "log.h"
#include "metrics.h"
#include "route.h"
#include "server.h"
#include "upstream.h"
#include "version.h"
#include "workshop/clock.h"
#include "workshop/error.h"
#include "workshop/promise.h"

/* Room for the upstream head beyond max_header_bytes' own value. */
#define UPSTREAM_HEAD_MIN (64 * 1024)

enum request_state {
    READ_HEAD,
    READ_BODY,
    WAIT_UPSTREAM,
};

struct request {
    struct gw_server *srv;
    struct MHD_Connection *conn;
    struct gw_config_ref *config;
    const struct gw_route *route;
    char *target;    /* raw request target, as received */
    size_t path_len; /* length of target's path, before any '?' */
    uint64_t id;
    enum request_state state;
    bool body_too_large;
    bool send_body;
    /* An answer decided from the head, sent once the body is read so the
     * connection can stay open. */
    bool deferred;
    enum gw_error_kind deferred_kind;
    char deferred_message[96];
    char allow[128];
    struct gw_buf body;
    struct gw_upstream_call call;
    struct wk_promise *promise;
    struct wk_settle *settle;
    int err; /* the promise's result */
    wk_time started;
    wk_time upstream_started;
    _Atomic int refs;
};

static void
request_put(struct request *r)
{
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    wk_promise_free(&r->promise);
    gw_upstream_call_reset(&r->call);
    gw_buf_free(&r->body);
    gw_config_ref_put(&r->config);
    free(r->target);
    free(r);
}

static struct gw_route_metrics *
request_metrics(struct request *r)
{
    if (r->route != NULL && r->route->metrics != NULL)
        return r->route->metrics;
    return &r->srv->metrics.unrouted;
}

/* Queues response with status, counts it, and releases the response. */
static enum MHD_Result
queue(struct request *r, unsigned status, struct MHD_Response *response)
{
    if (response == NULL) {
        gw_log_error("proxy: cannot create a response: out of memory "
                     "request_id=%llu",
                     (unsigned long long)r->id);
        return MHD_NO; /* libmicrohttpd closes the connection */
    }
    if (atomic_load(&r->srv->draining))
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response(r->conn, status, response);
    MHD_destroy_response(response);
    gw_metrics_request(request_metrics(r), status,
                       wk_clock_now(NULL) - r->started);
    return rc;
}

static enum MHD_Result reply_error(struct request *r, enum gw_error_kind kind,
                                   const char *allow, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Sends the gateway's own error: status, X-Workshop-Error and JSON body. */
static enum MHD_Result
reply_error(struct request *r, enum gw_error_kind kind, const char *allow,
            const char *fmt, ...)
{
    char message[256];
    char body[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    size_t len =
        gw_error_body(kind, message, r->route != NULL ? r->route->name : NULL,
                      body, sizeof(body));
    struct MHD_Response *response =
        MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_COPY);
    if (response != NULL) {
        MHD_add_response_header(response, "Content-Type", "application/json");
        MHD_add_response_header(response, "X-Workshop-Error",
                                gw_error_kind_name(kind));
        if (allow != NULL)
            MHD_add_response_header(response, "Allow", allow);
    }
    return queue(r, gw_error_kind_status(kind), response);
}

/* --- request head ----------------------------------------------------------
 */

/*
 * Finds the path in a request target: origin-form "/p?q" or absolute-form
 * "http://host/p?q" (RFC 9112, 3.2). Returns NULL for other forms.
 */
static const char *
target_path(const char *target)
{
    if (target[0] == '/')
        return target;
    if (strncasecmp(target, "http://", 7) != 0 &&
        strncasecmp(target, "https://", 8) != 0)
        return NULL;
    const char *authority = strstr(target, "://") + 3;
    const char *path = authority + strcspn(authority, "/?");
    return *path == '/' ? path : NULL;
}

static bool
parse_length(const char *text, unsigned long long *out)
{
    unsigned long long v = 0;

    if (*text == '\0')
        return false;
    for (const char *c = text; *c != '\0'; c++) {
        if (*c < '0' || *c > '9' || v > (ULLONG_MAX - 9) / 10)
            return false;
        v = v * 10 + (unsigned long long)(*c - '0');
    }
    *out = v;
    return true;
}

/*
 * Replaces the target's path with its normal form (see gw_path_normalize);
 * the query stays as received. On a rejected path returns -1 with the reason
 * in r->deferred_message.
 */
static int
normalize_target(struct request *r)
{
    const char *problem = NULL;
    size_t query_len = strlen(r->target + r->path_len);
    char *normal = malloc(r->path_len + query_len + 1);

    if (normal == NULL) {
        snprintf(r->deferred_message, sizeof(r->deferred_message),
                 "out of memory");
        return -1;
    }
    int n = gw_path_normalize(r->target, r->path_len, normal, r->path_len + 1,
                              &problem);
    if (n < 0) {
        snprintf(r->deferred_message, sizeof(r->deferred_message), "%s",
                 problem);
        free(normal);
        return -1;
    }
    memcpy(normal + n, r->target + r->path_len, query_len + 1);
    free(r->target);
    r->target = normal;
    r->path_len = (size_t)n;
    return 0;
}

struct head_check {
    const char *problem;
    const char *content_length; /* the first value seen */
    bool transfer_encoding;
};

static bool
is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static enum MHD_Result
check_field(void *arg, enum MHD_ValueKind kind, const char *name,
            size_t name_size, const char *value, size_t value_size)
{
    struct head_check *hc = arg;

    (void)kind;
    if (name_size == 0 || strlen(name) != name_size)
        hc->problem = "a header field name is empty or contains NUL";
    for (size_t i = 0; i < name_size && hc->problem == NULL; i++) {
        if (!is_tchar((unsigned char)name[i]))
            hc->problem = "a header field name contains an invalid character";
    }
    if (value != NULL && hc->problem == NULL) {
        if (strlen(value) != value_size || strpbrk(value, "\r\n") != NULL)
            hc->problem = "a header field value contains CR, LF or NUL";
    }
    if (hc->problem != NULL)
        return MHD_NO;

    if (strcasecmp(name, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        if (hc->transfer_encoding || value == NULL ||
            strcasecmp(value, "chunked") != 0)
            hc->problem = "Transfer-Encoding must be exactly \"chunked\"";
        hc->transfer_encoding = true;
    } else if (strcasecmp(name, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        if (hc->content_length != NULL && value != NULL &&
            strcmp(hc->content_length, value) != 0)
            hc->problem = "the request has differing Content-Length values";
        hc->content_length = value != NULL ? value : "";
    }
    if (hc->problem == NULL && hc->transfer_encoding &&
        hc->content_length != NULL)
        hc->problem =
            "the request has both Content-Length and Transfer-Encoding";
    return hc->problem == NULL ? MHD_YES : MHD_NO;
}

/*
 * Rejects heads whose framing is ambiguous or whose fields could smuggle a
 * second message past the upstream (RFC 9112, 6.3 and 5). Returns the
 * reason, or NULL when the head is acceptable.
 */
static const char *
check_head_fields(struct MHD_Connection *conn)
{
    struct head_check hc = {0};

    MHD_get_connection_values_n(conn, MHD_HEADER_KIND, check_field, &hc);
    return hc.problem;
}

static void
defer_error(struct request *r, enum gw_error_kind kind, const char *message)
{
    r->deferred = true;
    r->deferred_kind = kind;
    snprintf(r->deferred_message, sizeof(r->deferred_message), "%s", message);
}

static enum MHD_Result
on_head(struct request *r, const char *method)
{
    const struct gw_config *cfg = r->config->config;
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(
        r->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);

    if (info != NULL &&
        info->header_size > (size_t)cfg->limits.max_header_bytes)
        return reply_error(r, GW_KIND_HEADER_TOO_LARGE, NULL,
                           "the request head has %zu bytes; the limit is %ld",
                           info->header_size, cfg->limits.max_header_bytes);

    const char *path = target_path(r->target);
    if (path == NULL)
        return reply_error(r, GW_KIND_BAD_REQUEST, NULL,
                           "the request target is not a path or an "
                           "absolute http URL");
    if (path != r->target) {
        /* Keep only the path and query: the upstream gets origin-form. */
        memmove(r->target, path, strlen(path) + 1);
    }
    r->path_len = strcspn(r->target, "?");
    if (normalize_target(r) != 0)
        return reply_error(r, GW_KIND_BAD_REQUEST, NULL, "%s",
                           r->deferred_message);
    const char *framing = check_head_fields(r->conn);
    if (framing != NULL)
        return reply_error(r, GW_KIND_BAD_REQUEST, NULL, "%s", framing);

    switch (gw_route_match(cfg, r->target, r->path_len, method, &r->route,
                           r->allow, sizeof(r->allow))) {
    case GW_MATCH_NOT_FOUND:
        defer_error(r, GW_KIND_NOT_FOUND, "no route matches this path");
        break;
    case GW_MATCH_METHOD_NOT_ALLOWED:
        defer_error(r, GW_KIND_METHOD_NOT_ALLOWED,
                    "this method is not allowed here");
        break;
    case GW_MATCH_OK:
        break;
    }

    const char *length = MHD_lookup_connection_value(
        r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long declared = 0;
    if (length != NULL && !parse_length(length, &declared))
        return reply_error(r, GW_KIND_BAD_REQUEST, NULL,
                           "Content-Length is not a number");
    if (declared > (unsigned long long)cfg->limits.max_body_bytes)
        return reply_error(r, GW_KIND_BODY_TOO_LARGE, NULL,
                           "the body has %llu bytes; the limit is %ld",
                           declared, cfg->limits.max_body_bytes);
    r->send_body =
        length != NULL ||
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                    MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
    r->body.max = (size_t)cfg->limits.max_body_bytes;
    r->state = READ_BODY;
    return MHD_YES;
}

/* --- upstream call -----------------------------------------------------------
 */

struct header_collector {
    struct gw_request_header *items;
    size_t count;
    size_t capacity;
};

static enum MHD_Result
collect_header(void *arg, enum MHD_ValueKind kind, const char *name,
               size_t name_size, const char *value, size_t value_size)
{
    struct header_collector *hc = arg;

    (void)kind;
    (void)name_size;
    (void)value_size;
    if (hc->count == hc->capacity)
        return MHD_NO;
    hc->items[hc->count].name = name;
    hc->items[hc->count].value = value != NULL ? value : "";
    hc->count++;
    return MHD_YES;
}

static void
client_address(struct MHD_Connection *conn, char *out, size_t size)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);

    snprintf(out, size, "unknown");
    if (info == NULL || info->client_addr == NULL)
        return;
    const struct sockaddr *sa = info->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out,
                  (socklen_t)size);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out,
                  (socklen_t)size);
}

/* Builds the upstream URL: origin, rewritten path, then the raw query. */
static char *
build_url(const struct request *r)
{
    const struct gw_route *route = r->route;
    const char *query = r->target + r->path_len;
    size_t size = strlen(route->upstream_url) + strlen(route->upstream_base) +
                  strlen(r->target) + 2;
    char *url = malloc(size);

    if (url == NULL)
        return NULL;
    size_t origin = (size_t)snprintf(url, size, "%s", route->upstream_url);
    int n = gw_route_upstream_path(route, r->target, r->path_len, url + origin,
                                   size - origin);
    if (n < 0) {
        free(url);
        return NULL;
    }
    snprintf(url + origin + (size_t)n, size - origin - (size_t)n, "%s", query);
    return url;
}

static int
prepare_call(struct request *r, const char *method, const char *version,
             bool *bad_request)
{
    const struct gw_config *cfg = r->config->config;
    struct gw_upstream_call *call = &r->call;
    char ip[INET6_ADDRSTRLEN];

    *bad_request = false;
    int count = MHD_get_connection_values(r->conn, MHD_HEADER_KIND, NULL, NULL);
    struct header_collector hc = {.capacity = count > 0 ? (size_t)count : 1};
    hc.items = calloc(hc.capacity, sizeof(*hc.items));
    if (hc.items == NULL)
        return -1;
    MHD_get_connection_values_n(r->conn, MHD_HEADER_KIND, collect_header, &hc);
    client_address(r->conn, ip, sizeof(ip));
    struct gw_forward_info fwd = {
        .client_ip = ip, .http_version = version, .send_body = r->send_body};
    call->headers =
        gw_build_upstream_headers(hc.items, hc.count, &fwd, bad_request);
    free(hc.items);
    if (call->headers == NULL)
        return -1;

    call->url = build_url(r);
    if (call->url == NULL)
        return -1;
    call->method = method;
    call->body = r->body.data;
    call->body_len = r->body.len;
    call->send_body = r->send_body;
    call->connect_timeout_ms = r->route->connect_timeout_ms;
    call->timeout_ms = r->route->timeout_ms;
    call->max_head_bytes = cfg->limits.max_header_bytes > UPSTREAM_HEAD_MIN
                               ? (size_t)cfg->limits.max_header_bytes
                               : UPSTREAM_HEAD_MIN;
    call->max_body_bytes = (size_t)cfg->limits.max_response_bytes;
    call->user = r;
    return 0;
}

/* Maps an upstream outcome to the error the promise settles with. */
static int
outcome_error(enum gw_upstream_outcome outcome)
{
    switch (outcome) {
    case GW_UP_OK:
        return WK_OK;
    case GW_UP_TIMEOUT:
        return WK_ERR_TIMED_OUT;
    case GW_UP_CANCELLED:
        return WK_ERR_CANCELLED;
    case GW_UP_NOMEM:
        return WK_ERR_NOMEM;
    default:
        return WK_ERR_UPSTREAM;
    }
}

/* Runs on the upstream loop thread when the call has ended. */
static void
on_upstream_done(struct gw_upstream_call *call)
{
    struct request *r = call->user;
    wk_time now = wk_clock_now(NULL);

    gw_metrics_upstream(request_metrics(r), call->outcome,
                        now - r->upstream_started);
    if (call->outcome != GW_UP_OK && call->outcome != GW_UP_CANCELLED)
        gw_log_warn("proxy: upstream call failed: %s (%s) route=%s url=%s "
                    "request_id=%llu",
                    gw_upstream_outcome_name(call->outcome), call->error,
                    r->route->name, call->url, (unsigned long long)r->id);
    wk_settle(r->settle, outcome_error(call->outcome), (struct wk_value){0});
    request_put(r); /* the upstream's reference */
}

static void
cancel_upstream(void *arg)
{
    struct request *r = arg;

    gw_upstream_cancel(r->srv->upstream, &r->call);
}

/* The promise's asynchronous step: hands the call to the upstream loop. */
static void
upstream_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
              struct wk_settle *settle)
{
    struct request *r = arg;

    (void)ctx;
    (void)last;
    r->settle = settle;
    wk_settle_on_cancel(settle, cancel_upstream, r);
    r->upstream_started = wk_clock_now(NULL);
    gw_upstream_submit(r->srv->upstream, &r->call);
}

/* Runs where the promise settles (usually the upstream loop thread). */
static void
on_settled(void *arg, int err, struct wk_value *value)
{
    struct request *r = arg;

    (void)value;
    r->err = err;
    MHD_resume_connection(r->conn);
}

static enum MHD_Result
start_upstream(struct request *r, const char *method, const char *version)
{
    bool bad_request;

    if (prepare_call(r, method, version, &bad_request) != 0) {
        if (bad_request)
            return reply_error(r, GW_KIND_BAD_REQUEST, NULL,
                               "too many Connection header fields");
        return reply_error(r, GW_KIND_INTERNAL, NULL, "out of memory");
    }
    r->call.done = on_upstream_done;

    struct wk_step step = {
        .run_async = upstream_step, .arg = r, .key = r->route->name};
    struct wk_promise_opts opts = {.key = r->route->name};
    r->promise = wk_promise_new(&opts, &step);
    if (r->promise == NULL ||
        wk_promise_on_settle(r->promise, on_settled, r) != WK_OK)
        return reply_error(r, GW_KIND_INTERNAL, NULL, "out of memory");

    /* Suspend before the call starts, so its completion always finds the
     * connection suspended. */
    r->state = WAIT_UPSTREAM;
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    MHD_suspend_connection(r->conn);
    if (wk_promise_start(r->promise) != WK_OK) {
        /* Nothing was submitted: undo the upstream's reference. */
        atomic_fetch_sub_explicit(&r->refs, 1, memory_order_relaxed);
        r->err = WK_ERR_NOMEM;
        MHD_resume_connection(r->conn);
    }
    return MHD_YES;
}

/* --- response
 * ------------------------------------------------------------------ */

static enum MHD_Result
reply_failure(struct request *r)
{
    switch (r->err) {
    case WK_ERR_TIMED_OUT:
        return reply_error(r, GW_KIND_TIMEOUT, NULL,
                           "the upstream did not answer within %ld ms",
                           r->route->timeout_ms);
    case WK_ERR_CANCELLED:
        return reply_error(r, GW_KIND_SHUTTING_DOWN, NULL,
                           "the gateway is shutting down");
    case WK_ERR_NOMEM:
        return reply_error(r, GW_KIND_INTERNAL, NULL, "out of memory");
    default:
        return reply_error(r, GW_KIND_UPSTREAM_ERROR, NULL,
                           "the upstream call failed: %s",
                           gw_upstream_outcome_name(r->call.outcome));
    }
}

/* Copies the upstream's end-to-end fields onto response. */
static int
copy_response_headers(struct request *r, struct MHD_Response *response)
{
    const struct gw_header_list *list = &r->call.response_headers;
    struct gw_connection_values cv = {0};

    for (size_t i = 0; i < list->count; i++) {
        if (strcasecmp(list->items[i].name, "Connection") == 0)
            gw_connection_values_add(&cv, list->items[i].value);
    }
    for (size_t i = 0; i < list->count; i++) {
        const struct gw_header *h = &list->items[i];

        if (!gw_header_forwarded(&cv, h->name))
            continue;
        if (strcasecmp(h->name, "Content-Length") == 0)
            continue; /* libmicrohttpd writes the framing */
        if (MHD_add_response_header(response, h->name, h->value) != MHD_YES)
            return -1;
    }
    MHD_add_response_header(response, "Via", "1.1 " GW_NAME);
    return 0;
}

static ssize_t
no_content(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)cls;
    (void)pos;
    (void)buf;
    (void)max;
    return MHD_CONTENT_READER_END_OF_STREAM;
}

/*
 * Builds a response that has no body on the wire but may declare a length:
 * a HEAD response carries the Content-Length the GET would have had, and a
 * 304 the length of the representation (RFC 9110, 8.6). libmicrohttpd sends
 * the declared size and never calls the reader for these.
 */
static struct MHD_Response *
bodiless_response(const struct gw_upstream_call *call)
{
    const struct gw_header_list *list = &call->response_headers;
    unsigned long long length = 0;
    bool declared = false;

    for (size_t i = 0; i < list->count && !declared; i++) {
        if (strcasecmp(list->items[i].name, "Content-Length") == 0)
            declared = parse_length(list->items[i].value, &length);
    }
    if (!declared || call->status == 204 || call->status < 200)
        return MHD_create_response_from_buffer(0, (void *)"",
                                               MHD_RESPMEM_PERSISTENT);
    return MHD_create_response_from_callback(length, 4096, no_content, NULL,
                                             NULL);
}

static enum MHD_Result
reply_upstream(struct request *r, const char *method)
{
    struct gw_upstream_call *call = &r->call;
    struct MHD_Response *response;

    if (r->err != WK_OK)
        return reply_failure(r);

    bool head = strcmp(method, "HEAD") == 0;
    bool bodiless = head || call->status == 304 || call->status == 204 ||
                    call->status < 200;
    if (bodiless) {
        response = bodiless_response(call);
    } else if (call->response_len > 0) {
        response = MHD_create_response_from_buffer_with_free_callback(
            call->response_len, call->response_body, free);
        if (response != NULL)
            call->response_body = NULL; /* libmicrohttpd frees it now */
    } else {
        response = MHD_create_response_from_buffer(0, (void *)"",
                                                   MHD_RESPMEM_PERSISTENT);
    }
    if (response == NULL)
        return reply_error(r, GW_KIND_INTERNAL, NULL, "out of memory");
    if (copy_response_headers(r, response) != 0) {
        MHD_destroy_response(response);
        gw_log_warn("proxy: the upstream sent a header field that cannot be "
                    "forwarded route=%s request_id=%llu",
                    r->route->name, (unsigned long long)r->id);
        r->err = WK_ERR_UPSTREAM;
        call->outcome = GW_UP_PROTOCOL;
        return reply_failure(r);
    }
    return queue(r, (unsigned)call->status, response);
}

/* --- libmicrohttpd callbacks
 * ---------------------------------------------------- */

static enum MHD_Result
on_access(void *cls, struct MHD_Connection *conn, const char *url,
          const char *method, const char *version, const char *upload_data,
          size_t *upload_data_size, void **con_cls)
{
    struct request *r = *con_cls;

    (void)cls;
    (void)url;
    if (r == NULL) {
        /* on_uri could not allocate; answer without per-request state. */
        static const char body[] = "{\"error\":\"internal\",\"status\":503}\n";
        struct MHD_Response *response = MHD_create_response_from_buffer(
            sizeof(body) - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
        if (response == NULL)
            return MHD_NO;
        enum MHD_Result rc = MHD_queue_response(conn, 503, response);
        MHD_destroy_response(response);
        return rc;
    }
    switch (r->state) {
    case READ_HEAD:
        return on_head(r, method);
    case READ_BODY:
        if (*upload_data_size > 0) {
            /* A body past the limit, or one for a request already
             * answered, is read and dropped. */
            if (!r->body_too_large && !r->deferred &&
                gw_buf_append(&r->body, upload_data, *upload_data_size) != 0)
                r->body_too_large = true;
            *upload_data_size = 0;
            return MHD_YES;
        }
        if (r->deferred)
            return reply_error(r, r->deferred_kind,
                               r->deferred_kind == GW_KIND_METHOD_NOT_ALLOWED
                                   ? r->allow
                                   : NULL,
                               "%s", r->deferred_message);
        if (r->body_too_large)
            return reply_error(r, GW_KIND_BODY_TOO_LARGE, NULL,
                               "the body is larger than %ld bytes",
                               r->config->config->limits.max_body_bytes);
        return start_upstream(r, method, version);
    case WAIT_UPSTREAM:
        return reply_upstream(r, method);
    }
    return MHD_NO;
}

static void *
on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct gw_server *srv = cls;
    struct request *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return NULL;
    r->target = strdup(uri);
    if (r->target == NULL) {
        free(r);
        return NULL;
    }
    r->srv = srv;
    r->conn = conn;
    r->config = gw_server_config_get(srv);
    r->id = atomic_fetch_add(&srv->next_request_id, 1) + 1;
    r->started = wk_clock_now(NULL);
    r->body.max = 0;
    atomic_init(&r->refs, 1);
    atomic_fetch_add(&srv->in_flight, 1);
    return r;
}

static void
on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
             enum MHD_RequestTerminationCode code)
{
    struct gw_server *srv = cls;
    struct request *r = *con_cls;

    (void)conn;
    (void)code;
    if (r == NULL)
        return;
    *con_cls = NULL;
    atomic_fetch_sub(&srv->in_flight, 1);
    request_put(r);
}

/* Keeps the path and query exactly as received: the gateway forwards them
 * unchanged, so libmicrohttpd must not decode them. */
static size_t
keep_escaped(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    return strlen(s);
}

__attribute__((format(printf, 2, 0))) static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];

    (void)cls;
    vsnprintf(line, sizeof(line), fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    gw_log_warn("libmicrohttpd: %s", line);
}

int
gw_proxy_start_daemon(struct gw_server *srv)
{
    const struct gw_config *cfg = srv->current->config;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    unsigned timeout_s =
        (unsigned)((cfg->limits.client_timeout_ms + 999) / 1000);
    /* The connection's memory pool holds the request head and the read
     * buffer; the head limit itself is checked in on_head(). */
    size_t pool = (size_t)cfg->limits.max_header_bytes * 2 + 16384;

    if (cfg->listen.addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    srv->traffic = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, srv, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_log, NULL, MHD_OPTION_SOCK_ADDR,
        (const struct sockaddr *)&cfg->listen.addr, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->limits.max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u, MHD_OPTION_STRICT_FOR_CLIENT, 1,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_URI_LOG_CALLBACK,
        on_uri, srv, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_UNESCAPE_CALLBACK, keep_escaped, NULL, MHD_OPTION_END);
    if (srv->traffic == NULL) {
        gw_log_error("proxy: cannot listen on %s: %s", cfg->listen.text,
                     strerror(errno));
        return -1;
    }
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(srv->traffic, MHD_DAEMON_INFO_BIND_PORT);
    srv->traffic_port = info != NULL ? info->port : 0;
    return 0;
}
