/*
 * The admin listener: /healthz, /readyz, /metrics and /metrics?format=json,
 * on its own address so that metrics are not served to the traffic side.
 * Routes never reach it. Its handler runs on the admin daemon's one thread,
 * and a scrape holds no lock while it renders (see gw_metrics_render).
 */
#include <errno.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "server.h"

static enum MHD_Result
reply_text(struct MHD_Connection *conn, unsigned status,
           const char *content_type, const char *body)
{
    struct MHD_Response *response = MHD_create_response_from_buffer(
        strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);

    if (response == NULL)
        return MHD_NO;
    MHD_add_response_header(response, "Content-Type", content_type);
    MHD_add_response_header(response, "Cache-Control", "no-store");
    enum MHD_Result rc = MHD_queue_response(conn, status, response);
    MHD_destroy_response(response);
    return rc;
}

/*
 * Serves /metrics: the Prometheus text format, or JSON with ?format=json.
 * Any other format value is a 400, so a typo does not silently get text.
 */
static enum MHD_Result
reply_metrics(struct gw_server *srv, struct MHD_Connection *conn)
{
    const char *format =
        MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "format");
    enum gw_metrics_format kind = GW_METRICS_TEXT;
    char *text;
    size_t len;

    if (format != NULL && strcmp(format, "json") == 0)
        kind = GW_METRICS_JSON;
    else if (format != NULL && strcmp(format, "text") != 0)
        return reply_text(conn, 400, "text/plain; charset=utf-8",
                          "invalid format; use format=text or format=json\n");
    if (gw_metrics_render(srv, kind, &text, &len) != 0) {
        gw_log_error("admin: cannot render /metrics: out of memory, or the "
                     "text is over 64 MiB");
        return reply_text(conn, 500, "text/plain; charset=utf-8",
                          "cannot render metrics: out of memory\n");
    }
    struct MHD_Response *response =
        MHD_create_response_from_buffer_with_free_callback(len, text, free);
    if (response == NULL) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(response, "Content-Type",
                            kind == GW_METRICS_JSON
                                ? "application/json"
                                : GW_METRICS_TEXT_CONTENT_TYPE);
    MHD_add_response_header(response, "Cache-Control", "no-store");
    enum MHD_Result rc = MHD_queue_response(conn, 200, response);
    MHD_destroy_response(response);
    return rc;
}

/* Sends 405 with the methods the admin endpoints serve. */
static enum MHD_Result
reply_method_not_allowed(struct MHD_Connection *conn)
{
    static const char body[] = "only GET and HEAD are served here\n";
    struct MHD_Response *response = MHD_create_response_from_buffer(
        sizeof(body) - 1, (void *)body, MHD_RESPMEM_PERSISTENT);

    if (response == NULL)
        return MHD_NO;
    MHD_add_response_header(response, "Content-Type",
                            "text/plain; charset=utf-8");
    MHD_add_response_header(response, "Allow", "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(conn, 405, response);
    MHD_destroy_response(response);
    return rc;
}

static enum MHD_Result
on_admin(void *cls, struct MHD_Connection *conn, const char *url,
         const char *method, const char *version, const char *upload_data,
         size_t *upload_data_size, void **con_cls)
{
    struct gw_server *srv = cls;

    (void)version;
    (void)upload_data;
    if (*con_cls == NULL) {
        *con_cls = srv; /* first call: wait for the whole request */
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        *upload_data_size = 0; /* admin endpoints take no body */
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply_method_not_allowed(conn);
    if (strcmp(url, "/healthz") == 0)
        return reply_text(conn, 200, "text/plain; charset=utf-8", "ok\n");
    if (strcmp(url, "/readyz") == 0) {
        if (atomic_load(&srv->draining))
            return reply_text(conn, 503, "text/plain; charset=utf-8",
                              "draining\n");
        if (!atomic_load(&srv->ready))
            return reply_text(conn, 503, "text/plain; charset=utf-8",
                              "starting\n");
        return reply_text(conn, 200, "text/plain; charset=utf-8", "ready\n");
    }
    if (strcmp(url, "/metrics") == 0)
        return reply_metrics(srv, conn);
    return reply_text(conn, 404, "text/plain; charset=utf-8",
                      "not found; try /metrics, /healthz or /readyz\n");
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
    /* A client can make libmicrohttpd log a line per connection (a reset,
     * a malformed head): one line per interval, with a count. */
    gw_log_limited(GW_LOG_WARN, "libmicrohttpd (admin)",
                   "libmicrohttpd (admin): %s", line);
}

int
gw_admin_start_daemon(struct gw_server *srv)
{
    const struct gw_config *cfg = srv->current->config;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG;

    if (cfg->admin_listen.addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    srv->admin = MHD_start_daemon(
        flags, 0, NULL, NULL, on_admin, srv, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_log, NULL, MHD_OPTION_SOCK_ADDR,
        (const struct sockaddr *)&cfg->admin_listen.addr,
        MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_CONNECTION_TIMEOUT, 10u,
        MHD_OPTION_END);
    if (srv->admin == NULL) {
        gw_log_error("admin: cannot listen on %s: %s", cfg->admin_listen.text,
                     strerror(errno));
        return -1;
    }
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(srv->admin, MHD_DAEMON_INFO_BIND_PORT);
    srv->admin_port = info != NULL ? info->port : 0;
    return 0;
}
