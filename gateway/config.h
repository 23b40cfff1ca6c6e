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

struct gw_route_metrics;

/* A listen address: a numeric IPv4 or [IPv6] host and a port. */
struct gw_listen {
    char text[80]; /* as written, e.g. "0.0.0.0:8080" */
    struct sockaddr_storage addr;
    socklen_t addr_len;
};

struct gw_limits {
    long max_connections;   /* simultaneous client connections */
    long max_header_bytes;  /* request line plus headers */
    long max_body_bytes;    /* request body */
    long max_response_bytes; /* upstream response body */
    long client_timeout_ms; /* idle client connection */
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
    struct gw_route_metrics *metrics; /* set by the server; not owned */
};

struct gw_config {
    char *path; /* the file it came from, for messages */
    struct gw_listen listen;
    struct gw_listen admin_listen;
    struct gw_limits limits;
    long drain_timeout_ms;
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
