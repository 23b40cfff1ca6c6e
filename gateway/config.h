/*
 * The gateway's configuration: one JSON document, validated strictly.
 *
 * gw_config_parse() turns the JSON text into a struct gw_config or an error
 * message that names the file, the JSON path, the value and what is allowed.
 * Every string in a loaded config is owned by it and freed by
 * gw_config_free(). A loaded config is read-only and may be shared between
 * threads.
 */
#ifndef GATEWAY_CONFIG_H
#define GATEWAY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "workshop/breaker.h"
#include "workshop/bulkhead.h"
#include "workshop/ratelimit.h"
#include "workshop/retry.h"

struct gw_route_metrics;
struct gw_route_runtime;

/* A listen address: a numeric IPv4 or [IPv6] host and a port. */
struct gw_listen {
    char text[80]; /* as written, e.g. "0.0.0.0:8080" */
    struct sockaddr_storage addr;
    socklen_t addr_len;
};

struct gw_limits {
    long max_connections;       /* simultaneous client connections */
    long max_header_bytes;      /* request line plus headers */
    long max_body_bytes;        /* request body */
    long max_response_bytes;    /* upstream response body */
    long response_buffer_bytes; /* read whole up to this; beyond, streamed */
    long client_timeout_ms;     /* idle client connection */
};

/* The source of a rate limiter's key. */
enum gw_limit_key {
    GW_LIMIT_KEY_GLOBAL,    /* one bucket for the whole route */
    GW_LIMIT_KEY_CLIENT_IP, /* one bucket per client address */
    GW_LIMIT_KEY_HEADER,    /* one bucket per value of a request header */
};

struct gw_rate_limit_config {
    bool enabled;
    struct wk_ratelimit_config lib;
    enum gw_limit_key key;
    char *header; /* for GW_LIMIT_KEY_HEADER */
};

struct gw_breaker_config {
    bool enabled;
    struct wk_breaker_config lib;
};

struct gw_bulkhead_config {
    bool enabled;
    struct wk_bulkhead_config lib;
};

struct gw_retry_config {
    bool enabled;
    struct wk_retry_config lib;
    long per_try_timeout_ms; /* 0: each attempt may use what is left */
};

/* Reasons for a fallback. A fallback's `on` is a bitwise OR of these. */
enum gw_fallback_reason {
    GW_REASON_RATE_LIMITED = 1u << 0,
    GW_REASON_BREAKER_OPEN = 1u << 1,
    GW_REASON_BULKHEAD_FULL = 1u << 2,
    GW_REASON_TIMEOUT = 1u << 3,
    GW_REASON_UPSTREAM_ERROR = 1u << 4,
    GW_REASON_STATUS_5XX = 1u << 5,
};
#define GW_REASON_COUNT 6
#define GW_REASON_DEFAULT                                                      \
    (GW_REASON_BREAKER_OPEN | GW_REASON_BULKHEAD_FULL | GW_REASON_TIMEOUT |    \
     GW_REASON_UPSTREAM_ERROR | GW_REASON_STATUS_5XX)

/* Returns the reason's config name ("breaker_open", ...). */
const char *gw_reason_name(enum gw_fallback_reason reason);
/* Returns the index (0 .. GW_REASON_COUNT - 1) of a single reason bit. */
unsigned gw_reason_index(enum gw_fallback_reason reason);

enum gw_fallback_kind {
    GW_FALLBACK_STATIC,   /* a fixed response */
    GW_FALLBACK_UPSTREAM, /* another upstream */
    GW_FALLBACK_STALE,    /* the last good response to the same GET */
};

struct gw_header_pair {
    char *name;
    char *value;
};

struct gw_fallback {
    enum gw_fallback_kind kind;
    unsigned on; /* enum gw_fallback_reason bits */
    /* GW_FALLBACK_STATIC */
    unsigned status;
    struct gw_header_pair *headers;
    size_t header_count;
    char *body;
    size_t body_len;
    /* GW_FALLBACK_UPSTREAM */
    char *upstream_url;
    char *upstream_base;
    long connect_timeout_ms;
    long timeout_ms;
    /* GW_FALLBACK_STALE */
    long max_age_ms;
    long max_bytes;
};

struct gw_route {
    char *name;
    char *prefix;
    size_t prefix_len;
    char **methods; /* NULL-terminated; NULL means every method */
    size_t method_count;
    char *upstream_url;  /* scheme://host[:port], without the base path */
    char *upstream_base; /* the URL's path without a trailing '/', or "" */
    bool strip_prefix;
    long connect_timeout_ms;
    long timeout_ms;
    struct gw_rate_limit_config rate_limit;
    struct gw_breaker_config breaker;
    struct gw_bulkhead_config bulkhead;
    struct gw_retry_config retry;
    struct gw_fallback *fallbacks;
    size_t fallback_count;
    char *policy_settings;            /* the policy blocks as compact JSON */
    struct gw_route_metrics *metrics; /* set by the server; not owned */
    struct gw_route_runtime *runtime; /* set by the server; owned */
};

enum gw_access_log {
    GW_ACCESS_LOG_OFF,
    GW_ACCESS_LOG_TEXT,
    GW_ACCESS_LOG_JSON,
};

struct gw_config {
    char *path; /* the file it came from, for messages */
    struct gw_listen listen;
    struct gw_listen admin_listen;
    struct gw_limits limits;
    long drain_timeout_ms;
    enum gw_access_log access_log;
    struct gw_route *routes;
    size_t route_count;
};

/* Exit code for an invalid configuration, as --check-config returns it. */
#define GW_EXIT_CONFIG 2

/*
 * Parses and validates text (len bytes) read from path. On success returns 0
 * and sets *out, which the caller frees with gw_config_free(). On failure
 * returns -1 and writes a one-line message into err.
 */
int gw_config_parse(const char *text, size_t len, const char *path,
                    struct gw_config **out, char *err, size_t err_size);

/* Reads path and parses it as gw_config_parse() does. */
int gw_config_load(const char *path, struct gw_config **out, char *err,
                   size_t err_size);

/* Frees config and sets *config to NULL. Safe on NULL. */
void gw_config_free(struct gw_config **config);

/*
 * Parses "HOST:PORT" with a numeric IPv4 host or a bracketed IPv6 host.
 * Port 0 asks the kernel for a free port. Returns 0, or -1 when invalid.
 */
int gw_listen_parse(const char *text, struct gw_listen *out);

/* Returns true when route lists method (a route without a list takes all). */
bool gw_route_allows(const struct gw_route *route, const char *method);

#endif /* GATEWAY_CONFIG_H */
