/*
 * The traffic listener: the libmicrohttpd handlers that read each request's
 * head and body, check them, match the route, and hand the request to the
 * call (call.c). reply.c builds the response.
 *
 * A request moves through these states, all on the libmicrohttpd thread:
 * READ_HEAD (check the head, route it), READ_BODY (collect the body up to
 * max_body_bytes), and WAIT_CALL (the connection is suspended while the call
 * runs, then resumed to send the response).
 */
#include "proxy.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "headers.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "route.h"
#include "version.h"
#include "workshop/error.h"

void
request_put(struct request *r)
{
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1)
        return;
    wk_promise_free(&r->promise);
    gw_upstream_call_reset(&r->call);
    gw_stale_copy_free(&r->stale);
    gw_buf_free(&r->body);
    gw_config_ref_put(&r->config);
    free(r->target);
    free(r);
}

struct gw_route_metrics *
request_metrics(struct request *r)
{
    if (r->route != NULL && r->route->metrics != NULL)
        return r->route->metrics;
    return &r->srv->metrics.unrouted;
}

/*
 * A client connection's deadline for its next request head. libmicrohttpd's
 * timeout only closes an idle connection, and every byte restarts it, so a
 * client sending a head one byte at a time would hold the connection for
 * ever. The head must arrive within client_timeout_ms of the connection's
 * start, or of the end of the previous request, as nginx's
 * client_header_timeout has it. The body has only the idle timeout.
 * Everything here runs on the loop thread, which drives the listener and
 * runs the timer.
 */
struct connection_state {
    struct gw_server *srv;
    int fd;
    bool armed;
    struct wk_timer head_timer;
};

static void
on_head_deadline(void *arg, wk_time now)
{
    struct connection_state *cs = arg;

    (void)now;
    cs->armed = false;
    gw_log_limited(GW_LOG_WARN, "slow head",
                   "proxy: closing a connection whose request head did not "
                   "arrive within client_timeout_ms (%ld ms)",
                   cs->srv->client_timeout_ms);
    /* libmicrohttpd still owns the socket: it reads the end of it and
     * closes the connection itself. */
    shutdown(cs->fd, SHUT_RDWR);
}

static void
arm_head_deadline(struct connection_state *cs)
{
    wk_time deadline = wk_clock_now(NULL) + WK_MSEC(cs->srv->client_timeout_ms);

    if (cs->armed)
        wk_timer_cancel(gw_upstream_timers(cs->srv->upstream), &cs->head_timer);
    cs->armed =
        wk_timer_add(gw_upstream_timers(cs->srv->upstream), &cs->head_timer,
                     deadline, on_head_deadline, cs) == WK_OK;
}

static void
disarm_head_deadline(struct connection_state *cs)
{
    if (cs->armed)
        wk_timer_cancel(gw_upstream_timers(cs->srv->upstream), &cs->head_timer);
    cs->armed = false;
}

/* Returns the state of conn, or NULL when it has none (out of memory). */
static struct connection_state *
connection_state(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

    return info != NULL ? info->socket_context : NULL;
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
    bool host_seen;
    const char *content_length; /* the first value seen */
    bool transfer_encoding;
    const char *value_end; /* just past the previous field's value */
};

/* The maximum bytes of line ends and trailing whitespace looked at between
 * two fields; a wider gap is not checked. */
#define FIELD_GAP_MAX 1024

/*
 * Returns true when the bytes between the end of one field's value and the
 * start of what follows hold more than line ends and whitespace.
 * libmicrohttpd 0.9.75 parses the head in place and ends a value at a NUL
 * byte, so the rest of a value cut that way is left in this gap. A gap it
 * cannot measure (the next field elsewhere in memory) is not checked.
 */
static bool
gap_has_text(const char *from, const char *to)
{
    if (from == NULL || to <= from || to - from > FIELD_GAP_MAX)
        return false;
    for (const char *c = from; c < to; c++) {
        if (*c != '\0' && *c != '\r' && *c != '\n' && *c != ' ' && *c != '\t')
            return true;
    }
    return false;
}

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
    /* libmicrohttpd 0.9.75 appends an obs-fold line to the field name
     * rather than the value, and that moves the name out of the read
     * buffer, to after its value. In 0.9.75 an unfolded name precedes its
     * value, as both point into the buffer in the order received. A fold
     * onto an empty value is not caught this way. */
    if (hc->problem == NULL && value != NULL && value_size > 0 &&
        (uintptr_t)value < (uintptr_t)name)
        hc->problem = "a header field uses obsolete line folding";
    if (hc->problem == NULL && gap_has_text(hc->value_end, name))
        hc->problem = "a header field value contains NUL";
    if (value != NULL)
        hc->value_end = value + value_size;
    if (value != NULL && hc->problem == NULL) {
        if (strlen(value) != value_size)
            hc->problem = "a header field value contains CR, LF or NUL";
        for (const unsigned char *c = (const unsigned char *)value;
             *c != '\0' && hc->problem == NULL; c++) {
            if ((*c < ' ' && *c != '\t') || *c == 0x7f)
                hc->problem = "a header field value contains CR, LF or "
                              "another control character";
        }
    }
    if (hc->problem == NULL && strcasecmp(name, "Host") == 0) {
        if (hc->host_seen)
            hc->problem = "the request has more than one Host field";
        hc->host_seen = true;
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
 * second message past the upstream (RFC 9112, 6.3 and 5), and HTTP/1.1
 * requests without Host (RFC 9112, 3.2). Returns the reason, or NULL when
 * the head is acceptable.
 *
 * NOTE: libmicrohttpd 0.9.75 cuts a header value at a NUL byte before this
 * check runs. The bytes it leaves behind are found (gap_has_text), but a
 * NUL with nothing after it on its line looks like the line's end and is
 * dropped rather than rejected.
 */
static const char *
check_head_fields(struct MHD_Connection *conn, const char *method,
                  size_t head_size, const char *version)
{
    struct head_check hc = {0};

    MHD_get_connection_values_n(conn, MHD_HEADER_KIND, check_field, &hc);
    /* After the last field comes the end of the head, which starts at the
     * method. */
    if (hc.problem == NULL && head_size > 0 &&
        gap_has_text(hc.value_end, method + head_size))
        hc.problem = "a header field value contains NUL";
    if (hc.problem == NULL && !hc.host_seen &&
        strcmp(version, MHD_HTTP_VERSION_1_1) == 0)
        hc.problem = "an HTTP/1.1 request must have a Host field";
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
on_head(struct request *r, const char *method, const char *version)
{
    struct connection_state *cs = connection_state(r->conn);

    if (cs != NULL)
        disarm_head_deadline(cs);
    r->method = method; /* libmicrohttpd keeps it for the request's life */
    const struct gw_config *cfg = r->config->config;
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(
        r->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);

    if (info != NULL &&
        info->header_size > (size_t)cfg->limits.max_header_bytes)
        return reply_error(r, GW_KIND_HEADER_TOO_LARGE, NULL,
                           "the request head has %zu bytes; the limit is %ld",
                           info->header_size, cfg->limits.max_header_bytes);

    /* libcurl cuts a URL at '#', so a fragment would reach the upstream
     * as another path than the one routed; RFC 9112 (3.2) has no fragment
     * in a request target. Control bytes and spaces are not allowed either
     * (libmicrohttpd lets some through). */
    for (const unsigned char *c = (const unsigned char *)r->target; *c; c++) {
        if (*c == '#' || *c <= ' ' || *c == 0x7f)
            return reply_error(r, GW_KIND_BAD_REQUEST, NULL,
                               "the request target contains a '#', a space "
                               "or a control character");
    }
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
    const char *framing = check_head_fields(
        r->conn, method, info != NULL ? info->header_size : 0, version);
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
        r->runtime = r->route->runtime;
        break;
    }

    const char *length = MHD_lookup_connection_value(
        r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    unsigned long long declared = 0;
    if (length != NULL && !gw_parse_content_length(length, &declared))
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
        /* on_uri could not allocate, so respond without per-request state. */
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
        return on_head(r, method, version);
    case READ_BODY:
        if (*upload_data_size > 0) {
            /* A body past the limit, or one for a request already
             * rejected, is read and dropped. */
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
        return call_start(r, version);
    case WAIT_CALL:
        return reply_result(r);
    }
    return MHD_NO;
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
    client_address(conn, r->client_ip, sizeof(r->client_ip));
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

    /* The connection may carry another request: its head has
     * client_timeout_ms from now. */
    struct connection_state *cs = connection_state(conn);
    if (cs != NULL && code == MHD_REQUEST_TERMINATED_COMPLETED_OK)
        arm_head_deadline(cs);
    if (r == NULL)
        return;
    *con_cls = NULL;
    atomic_fetch_sub(&srv->in_flight, 1);
    request_put(r);
}

/*
 * Refuses a connection once max_connections are open: it is closed at
 * accept, before any byte is read, and the open ones carry on. (Left to
 * libmicrohttpd's own limit, the extra connections would wait unserved in
 * the listen backlog instead.)
 */
static enum MHD_Result
on_accept(void *cls, const struct sockaddr *addr, socklen_t addr_len)
{
    struct gw_server *srv = cls;
    long max = srv->max_connections;

    (void)addr;
    (void)addr_len;
    if (atomic_load_explicit(&srv->connections, memory_order_relaxed) >= max) {
        atomic_fetch_add_explicit(&srv->connections_refused, 1,
                                  memory_order_relaxed);
        return MHD_NO;
    }
    return MHD_YES;
}

static void
on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
              enum MHD_ConnectionNotificationCode code)
{
    struct gw_server *srv = cls;
    struct connection_state *cs = *socket_context;

    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        atomic_fetch_add_explicit(&srv->connections, 1, memory_order_relaxed);
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        cs = info != NULL ? calloc(1, sizeof(*cs)) : NULL;
        if (cs == NULL)
            return; /* served without a head deadline */
        cs->srv = srv;
        cs->fd = info->connect_fd;
        *socket_context = cs;
        arm_head_deadline(cs);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        atomic_fetch_sub_explicit(&srv->connections, 1, memory_order_relaxed);
        if (cs != NULL) {
            disarm_head_deadline(cs);
            free(cs);
            *socket_context = NULL;
        }
    }
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
    /* The listener's own error names the address, but this one names port
     * 0, so it is dropped. */
    if (strncmp(line, "Failed to bind to port", 22) == 0)
        return;
    /* Logged when a handler returns MHD_NO, which the gateway does on
     * purpose for a client that left (499) and logs itself otherwise. */
    if (strncmp(line, "Application reported internal error", 35) == 0)
        return;
    /* A client can make libmicrohttpd log a line per connection (a reset,
     * a malformed head): one line per interval, with a count. */
    gw_log_limited(GW_LOG_WARN, "libmicrohttpd", "libmicrohttpd: %s", line);
}

int
gw_proxy_start_daemon(struct gw_server *srv)
{
    const struct gw_config *cfg = srv->current->config;
    /* No thread of its own: the upstream loop drives the daemon
     * (gw_server_start), so a request is read, proxied and responded to on
     * one thread. */
    unsigned flags =
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    unsigned timeout_s =
        (unsigned)((cfg->limits.client_timeout_ms + 999) / 1000);
    /* The connection's memory pool contains the request head, the read buffer
     * and the response head; the head limit itself is checked in on_head().
     * libmicrohttpd 0.9.75 clears the whole pool between requests on a
     * connection, so a larger pool costs time on every request. */
    size_t pool = (size_t)cfg->limits.max_header_bytes + 8192;

    if (cfg->listen.addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    srv->max_connections = cfg->limits.max_connections;
    srv->client_timeout_ms = cfg->limits.client_timeout_ms;
    srv->traffic = MHD_start_daemon(
        flags, 0, on_accept, srv, on_access, srv, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_log, NULL, MHD_OPTION_SOCK_ADDR,
        (const struct sockaddr *)&cfg->listen.addr,
        /* on_accept enforces max_connections; this is a backstop. */
        MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)cfg->limits.max_connections + 16u,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv,
        MHD_OPTION_CONNECTION_TIMEOUT, timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool,
        /* Level 0, not 1: at 1 libmicrohttpd 0.9.75 responds to a
         * missing Host with a head sent twice, and closes on a space in
         * the target without a response. At 0 both reach on_head, which
         * responds with 400. */
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u, MHD_OPTION_STRICT_FOR_CLIENT, 0,
        /* No MHD_OPTION_LISTENING_ADDRESS_REUSE: it adds SO_REUSEPORT, and
         * a second gateway on the same port would then share the traffic
         * instead of failing to start. libmicrohttpd's default,
         * SO_REUSEADDR, is enough for a quick restart. */
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, srv, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, srv, MHD_OPTION_UNESCAPE_CALLBACK, keep_escaped, NULL,
        MHD_OPTION_END);
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
