/*
 * The response sent back for a request: the upstream's (possibly from a
 * fallback upstream), a static or stale fallback, or the gateway's error.
 * Every response is counted in the metrics and written to the access log.
 * Runs on the libmicrohttpd thread.
 */
#include <limits.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "access_log.h"
#include "headers.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "version.h"
#include "workshop/error.h"

static const char *
fallback_reason(const struct request *r)
{
    if (r->result_fallback == NULL || r->reason == 0)
        return NULL;
    return gw_reason_name((enum gw_fallback_reason)r->reason);
}

static void
access_log(struct request *r, unsigned status, const char *error)
{
    enum gw_access_log format = r->config->config->access_log;

    if (format == GW_ACCESS_LOG_OFF)
        return;
    struct gw_access_entry e = {
        .request_id = r->id,
        .client = r->client_ip,
        .method = r->method != NULL ? r->method : "-",
        .target = r->target,
        .route = r->route != NULL ? r->route->name : NULL,
        .status = status,
        .upstream_status =
            r->attempts > 0 || r->on_alternate ? r->call.status : 0,
        .attempts = r->attempts,
        .duration_ns = wk_clock_now(NULL) - r->started,
        .fallback = fallback_reason(r),
        .error = error,
    };
    gw_access_log_write(format, &e);
}

/* Queues response with status, counts and logs it, and releases it. */
static enum MHD_Result
queue(struct request *r, unsigned status, struct MHD_Response *response,
      const char *error)
{
    if (response == NULL) {
        gw_log_error("reply: cannot create a response: out of memory "
                     "request_id=%llu",
                     (unsigned long long)r->id);
        return MHD_NO; /* libmicrohttpd closes the connection */
    }
    const char *reason = fallback_reason(r);
    if (reason != NULL)
        MHD_add_response_header(response, "X-Workshop-Fallback", reason);
    if (atomic_load(&r->srv->draining))
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response(r->conn, status, response);
    MHD_destroy_response(response);
    gw_metrics_request(request_metrics(r), status,
                       wk_clock_now(NULL) - r->started);
    access_log(r, status, error);
    return rc;
}

/* Adds Retry-After in whole seconds, rounded up, when the wait is known. */
static void
add_retry_after(struct MHD_Response *response, wk_duration wait)
{
    char seconds[32];

    if (wait <= 0)
        return;
    snprintf(seconds, sizeof(seconds), "%lld",
             (long long)((wait + WK_NSEC_PER_SEC - 1) / WK_NSEC_PER_SEC));
    MHD_add_response_header(response, "Retry-After", seconds);
}

static enum MHD_Result
send_error(struct request *r, enum gw_error_kind kind, const char *allow,
           const char *message)
{
    if (kind == GW_KIND_CLIENT_CLOSED) {
        /* The client has left, so no response is sent: the request is
         * counted and logged, and the connection closes, as in nginx. A
         * client that only shut down its sending side gets the close too. */
        gw_metrics_request(request_metrics(r), gw_error_kind_status(kind),
                           wk_clock_now(NULL) - r->started);
        access_log(r, gw_error_kind_status(kind), gw_error_kind_name(kind));
        return MHD_NO;
    }
    char body[512];
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
        if (kind == GW_KIND_RATE_LIMITED || kind == GW_KIND_BREAKER_OPEN)
            add_retry_after(response, r->retry_after);
    }
    return queue(r, gw_error_kind_status(kind), response,
                 gw_error_kind_name(kind));
}

enum MHD_Result
reply_error(struct request *r, enum gw_error_kind kind, const char *allow,
            const char *fmt, ...)
{
    char message[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    return send_error(r, kind, allow, message);
}

/* Copies end-to-end fields of list onto response, then adds Via. */
static int
copy_headers(const struct gw_header_list *list, struct MHD_Response *response)
{
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
bodiless_response(long status, const struct gw_header_list *list)
{
    unsigned long long length = 0;
    bool declared = false;

    for (size_t i = 0; i < list->count && !declared; i++) {
        if (strcasecmp(list->items[i].name, "Content-Length") == 0)
            declared = gw_parse_content_length(list->items[i].value, &length);
    }
    if (status == 204 || status < 200)
        return MHD_create_response_from_buffer(0, (void *)"",
                                               MHD_RESPMEM_PERSISTENT);
    /* Without a declared length (a chunked upstream response) the length
     * stays unknown, so the head declares chunked coding as the GET's would,
     * rather than claim 0. libmicrohttpd 0.9.75 then writes a last chunk after
     * the head, which a keep-alive client would read as the start of the
     * next response: the connection closes after this one instead. */
    if (!declared) {
        struct MHD_Response *response = MHD_create_response_from_callback(
            MHD_SIZE_UNKNOWN, 4096, no_content, NULL, NULL);
        if (response != NULL)
            MHD_add_response_header(response, MHD_HTTP_HEADER_CONNECTION,
                                    "close");
        return response;
    }
    return MHD_create_response_from_callback(length, 4096, no_content, NULL,
                                             NULL);
}

static bool
is_bodiless(const struct request *r, long status)
{
    return strcmp(r->method, "HEAD") == 0 || status == 304 || status == 204 ||
           status < 200;
}

/* Keeps a successful GET response for the route's stale fallback. */
static void
remember_for_stale(struct request *r)
{
    const struct gw_upstream_call *call = &r->call;

    if (r->runtime == NULL || r->runtime->stale == NULL ||
        r->result_fallback != NULL || strcmp(r->method, "GET") != 0 ||
        call->status < 200 || call->status >= 300 || call->status == 206)
        return;
    /* A response for one user must never be served to another: skip those
     * that carry credentials or a session, or that are marked private. */
    if (MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                    "Authorization") != NULL ||
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Cookie") != NULL)
        return;
    for (size_t i = 0; i < call->response_headers.count; i++) {
        const struct gw_header *h = &call->response_headers.items[i];
        if (strcasecmp(h->name, "Set-Cookie") == 0 ||
            (strcasecmp(h->name, "Cache-Control") == 0 &&
             (strcasestr(h->value, "no-store") != NULL ||
              strcasestr(h->value, "private") != NULL)))
            return;
    }
    struct gw_header_list kept = {0};
    struct gw_connection_values cv = {0};
    for (size_t i = 0; i < call->response_headers.count; i++) {
        const struct gw_header *h = &call->response_headers.items[i];
        if (strcasecmp(h->name, "Connection") == 0)
            gw_connection_values_add(&cv, h->value);
    }
    for (size_t i = 0; i < call->response_headers.count; i++) {
        const struct gw_header *h = &call->response_headers.items[i];
        if (gw_header_forwarded(&cv, h->name) &&
            strcasecmp(h->name, "Content-Length") != 0 &&
            gw_header_list_add(&kept, h->name, strlen(h->name), h->value,
                               strlen(h->value)) != 0)
            break;
    }
    gw_stale_put(r->runtime->stale, r->target, (unsigned)call->status, &kept,
                 call->response_body != NULL ? call->response_body : "",
                 call->response_len, wk_clock_now(NULL));
    gw_header_list_clear(&kept);
}

/* Runs on the loop thread when the client of a suspended stream hangs up:
 * the transfer stops, and the resumed connection finds the body failed and
 * closes. */
static void
on_stream_hangup(struct gw_hangup_watch *watch)
{
    struct request *r =
        (struct request *)((char *)watch -
                           offsetof(struct request, stream_watch));

    atomic_store(&r->client_left, true);
    gw_upstream_close_body(r->srv->upstream, &r->call);
    MHD_resume_connection(r->conn);
}

/*
 * Suspends the connection of a request whose streamed body has no bytes
 * ready; on_readable (call.c) resumes it. libmicrohttpd does not look at a
 * suspended socket, so the loop watches it: a client that leaves while the
 * upstream stalls would otherwise keep its slot until timeout_ms.
 */
static void
suspend_for_body(void *arg)
{
    struct request *r = arg;
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);

    MHD_suspend_connection(r->conn);
    if (info == NULL)
        return;
    r->stream_watch.fd = info->connect_fd;
    r->stream_watch.on_hangup = on_stream_hangup;
    r->stream_watch.on_release = NULL;
    gw_upstream_watch(r->srv->upstream, &r->stream_watch);
}

/*
 * The content reader of a streamed response. A body cut short by the
 * upstream ends with an error, so libmicrohttpd closes the connection
 * before the declared length or the last chunk: the client can tell the
 * body is incomplete.
 */
static ssize_t
read_stream(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct request *r = cls;
    size_t n;

    (void)pos;
    switch (gw_upstream_read_body(r->srv->upstream, &r->call, buf, max, &n,
                                  suspend_for_body, r)) {
    case GW_BODY_DATA:
        return (ssize_t)n;
    case GW_BODY_WAIT:
        return 0; /* suspended: called again once resumed */
    case GW_BODY_END:
        return MHD_CONTENT_READER_END_OF_STREAM;
    case GW_BODY_FAILED:
        if (!atomic_load(&r->client_left))
            gw_log_warn("reply: the upstream body was cut short; closing "
                        "the connection route=%s request_id=%llu",
                        r->route->name, (unsigned long long)r->id);
        break;
    }
    return MHD_CONTENT_READER_END_WITH_ERROR;
}

/* Runs when libmicrohttpd drops a streamed response: sent, or the client
 * left. Stops the transfer if it still runs. */
static void
close_stream(void *cls)
{
    struct request *r = cls;

    gw_upstream_unwatch(r->srv->upstream, &r->stream_watch);
    gw_upstream_close_body(r->srv->upstream, &r->call);
    request_put(r); /* the response's reference */
}

/* Builds the response for a body that streams from the upstream. */
static struct MHD_Response *
stream_response(struct request *r)
{
    const struct gw_header_list *list = &r->call.response_headers;
    unsigned long long length = 0;
    bool declared = false;

    for (size_t i = 0; i < list->count && !declared; i++) {
        if (strcasecmp(list->items[i].name, "Content-Length") == 0)
            declared = gw_parse_content_length(list->items[i].value, &length);
    }
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    struct MHD_Response *response =
        MHD_create_response_from_callback(declared ? length : MHD_SIZE_UNKNOWN,
                                          16384, read_stream, r, close_stream);
    if (response == NULL)
        close_stream(r);
    return response;
}

/* Builds the response for a body read whole; it takes the body. */
static struct MHD_Response *
whole_response(struct request *r)
{
    struct gw_upstream_call *call = &r->call;
    struct MHD_Response *response;

    if (is_bodiless(r, call->status))
        return bodiless_response(call->status, &call->response_headers);
    if (call->response_len == 0)
        return MHD_create_response_from_buffer(0, (void *)"",
                                               MHD_RESPMEM_PERSISTENT);
    response = MHD_create_response_from_buffer_with_free_callback(
        call->response_len, call->response_body, free);
    if (response != NULL)
        call->response_body = NULL; /* libmicrohttpd frees it now */
    return response;
}

static enum MHD_Result
reply_upstream(struct request *r)
{
    struct gw_upstream_call *call = &r->call;
    struct MHD_Response *response;

    if (r->streaming) {
        /* Not kept for the stale fallback: the body is never whole here. */
        response = stream_response(r);
    } else {
        remember_for_stale(r);
        response = whole_response(r);
    }
    if (response == NULL)
        return send_error(r, GW_KIND_INTERNAL, NULL, "out of memory");
    if (copy_headers(&call->response_headers, response) != 0) {
        MHD_destroy_response(response);
        gw_log_warn("reply: the upstream sent a header field that cannot be "
                    "forwarded route=%s request_id=%llu",
                    r->route->name, (unsigned long long)r->id);
        return send_error(r, GW_KIND_UPSTREAM_ERROR, NULL,
                          "the upstream sent an invalid header field");
    }
    return queue(r, (unsigned)call->status, response, NULL);
}

static enum MHD_Result
reply_static(struct request *r)
{
    const struct gw_fallback *fb = r->result_fallback;
    struct MHD_Response *response =
        is_bodiless(r, fb->status)
            ? MHD_create_response_from_buffer(0, (void *)"",
                                              MHD_RESPMEM_PERSISTENT)
            : MHD_create_response_from_buffer(fb->body_len, fb->body,
                                              MHD_RESPMEM_MUST_COPY);

    if (response == NULL)
        return send_error(r, GW_KIND_INTERNAL, NULL, "out of memory");
    for (size_t i = 0; i < fb->header_count; i++)
        MHD_add_response_header(response, fb->headers[i].name,
                                fb->headers[i].value);
    if (fb->status == 503 || fb->status == 429)
        add_retry_after(response, r->retry_after);
    return queue(r, fb->status, response, NULL);
}

static enum MHD_Result
reply_stale(struct request *r)
{
    struct gw_stale_copy *copy = &r->stale;
    struct MHD_Response *response;
    char age[32];

    if (is_bodiless(r, copy->status)) {
        response = MHD_create_response_from_buffer(0, (void *)"",
                                                   MHD_RESPMEM_PERSISTENT);
    } else {
        response = MHD_create_response_from_buffer_with_free_callback(
            copy->body_len, copy->body, free);
        if (response != NULL)
            copy->body = NULL;
    }
    if (response == NULL)
        return send_error(r, GW_KIND_INTERNAL, NULL, "out of memory");
    if (copy_headers(&copy->headers, response) != 0) {
        MHD_destroy_response(response);
        return send_error(r, GW_KIND_INTERNAL, NULL,
                          "a stored header field cannot be sent");
    }
    wk_duration held = wk_clock_now(NULL) - copy->stored_at;
    snprintf(age, sizeof(age), "%lld",
             (long long)(held > 0 ? held / WK_NSEC_PER_SEC : 0));
    MHD_add_response_header(response, "Age", age);
    return queue(r, copy->status, response, NULL);
}

enum MHD_Result
reply_result(struct request *r)
{
    if (r->err != WK_OK && r->result != RESULT_ERROR) {
        /* The promise ended without its step's result: it was closed. */
        if (r->streaming)
            gw_upstream_close_body(r->srv->upstream, &r->call);
        return send_error(r, GW_KIND_SHUTTING_DOWN, NULL,
                          "the gateway is shutting down");
    }
    switch (r->result) {
    case RESULT_UPSTREAM:
        return reply_upstream(r);
    case RESULT_STATIC:
        return reply_static(r);
    case RESULT_STALE:
        return reply_stale(r);
    case RESULT_ERROR:
        break;
    }
    return send_error(r, r->error_kind, NULL, r->error_message);
}
