/*
 * Building the request sent upstream and the response sent back: header
 * filtering, forwarding headers, error bodies. The libmicrohttpd handlers
 * that drive a request live in proxy.c; these helpers are separate so unit
 * tests can reach them.
 */
#ifndef GATEWAY_PROXY_H
#define GATEWAY_PROXY_H

#include <stdbool.h>
#include <stddef.h>

#include <curl/curl.h>

/* Error kinds sent in X-Workshop-Error, one per condition. */
enum gw_error_kind {
    GW_KIND_NOT_FOUND,
    GW_KIND_METHOD_NOT_ALLOWED,
    GW_KIND_BAD_REQUEST,
    GW_KIND_BODY_TOO_LARGE,
    GW_KIND_HEADER_TOO_LARGE,
    GW_KIND_RATE_LIMITED,
    GW_KIND_BREAKER_OPEN,
    GW_KIND_BULKHEAD_FULL,
    GW_KIND_TIMEOUT,
    GW_KIND_UPSTREAM_ERROR,
    GW_KIND_SHUTTING_DOWN,
    GW_KIND_CLIENT_CLOSED,
    GW_KIND_INTERNAL,
};

/* Returns the kind's token ("not_found", ...) and its HTTP status. */
const char *gw_error_kind_name(enum gw_error_kind kind);
unsigned gw_error_kind_status(enum gw_error_kind kind);

/*
 * Writes the short JSON error body for kind into out, e.g.
 * {"error":"timeout","status":504,"message":"...","route":"users"}.
 * route may be NULL. Returns the length.
 */
size_t gw_error_body(enum gw_error_kind kind, const char *message,
                     const char *route, char *out, size_t out_size);

/* One request header as received. */
struct gw_request_header {
    const char *name;
    const char *value;
};

/* The client side of a request, as the header builder needs it. */
struct gw_forward_info {
    const char *client_ip;    /* textual address */
    const char *http_version; /* "HTTP/1.1" */
    bool send_body;           /* the request has a body to forward */
};

/*
 * Builds the header list for the upstream request from the client's headers
 * (in order, repeats kept): hop-by-hop fields and those named in Connection
 * are dropped, Content-Length and Expect are left to libcurl,
 * X-Forwarded-For is extended with the client address, X-Forwarded-Proto
 * and X-Forwarded-Host are set, Via is extended, and libcurl's own defaults
 * (Accept, Expect, form Content-Type) are suppressed so only the client's
 * fields arrive. Returns the list (the caller frees it with
 * curl_slist_free_all) or NULL when out of memory or when the request has
 * more Connection headers than the gateway accepts (*bad_request is set).
 */
struct curl_slist *
gw_build_upstream_headers(const struct gw_request_header *headers, size_t count,
                          const struct gw_forward_info *info,
                          bool *bad_request);

#endif /* GATEWAY_PROXY_H */
