/*
 * Which header fields a proxy forwards (RFC 9110, 7.6.1).
 *
 * Hop-by-hop fields describe one connection, not the message, so they are
 * dropped in both directions: Connection, Keep-Alive, Proxy-Connection, TE,
 * Trailer, Transfer-Encoding, Upgrade, and every field that a Connection
 * header names. Content-Length is not hop-by-hop, but the gateway frames each
 * message it sends itself, so callers drop and regenerate it.
 *
 * Thread safety: pure functions.
 */
#ifndef GATEWAY_HEADERS_H
#define GATEWAY_HEADERS_H

#include <stdbool.h>
#include <stddef.h>

/* Returns true for the fixed hop-by-hop fields (case-insensitive). */
bool gw_header_is_hop_by_hop(const char *name);

/*
 * Returns true when the Connection header value lists name as one of its
 * comma-separated tokens (case-insensitive, whitespace around tokens ignored).
 */
bool gw_connection_lists(const char *connection_value, const char *name);

/*
 * The Connection values of one message, gathered so that each other field
 * can be checked against them. Values are borrowed from the message.
 */
#define GW_CONNECTION_VALUES_MAX 8
struct gw_connection_values {
    const char *values[GW_CONNECTION_VALUES_MAX];
    size_t count;
    bool overflow; /* more Connection headers than fit: reject the message */
};

void gw_connection_values_add(struct gw_connection_values *cv,
                              const char *value);

/*
 * Returns true when a field called name should be forwarded: it is neither
 * hop-by-hop nor listed in cv.
 */
bool gw_header_forwarded(const struct gw_connection_values *cv,
                         const char *name);

/*
 * Parses a Content-Length value: decimal digits only, no sign or spaces,
 * no overflow. Returns true and sets *out when valid.
 */
bool gw_parse_content_length(const char *text, unsigned long long *out);

#endif /* GATEWAY_HEADERS_H */
