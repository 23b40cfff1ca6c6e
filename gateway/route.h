/*
 * Route matching: which route serves a request path and method.
 *
 * The route with the longest matching prefix decides. A prefix matches a
 * path when the path equals it, or continues it after a '/' (so "/api"
 * matches "/api" and "/api/x" but not "/apix"); a prefix ending in '/'
 * matches every path that starts with it. Among routes with that same prefix,
 * the one listing the method serves; when none does, the answer is 405 with
 * the methods they list.
 *
 * Thread safety: matching only reads the config and may run on any thread.
 */
#ifndef GATEWAY_ROUTE_H
#define GATEWAY_ROUTE_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

enum gw_match_result {
    GW_MATCH_OK,
    GW_MATCH_NOT_FOUND,          /* no prefix matches: 404 */
    GW_MATCH_METHOD_NOT_ALLOWED, /* prefix matches, method does not: 405 */
};

/*
 * Finds the route for path (without the query) and method. On GW_MATCH_OK
 * sets *route. On GW_MATCH_METHOD_NOT_ALLOWED writes the allowed methods,
 * comma-separated, into allow.
 */
enum gw_match_result gw_route_match(const struct gw_config *config,
                                    const char *path, size_t path_len,
                                    const char *method,
                                    const struct gw_route **route, char *allow,
                                    size_t allow_size);

/* Returns true when prefix (of length prefix_len) matches path. */
bool gw_prefix_matches(const char *prefix, size_t prefix_len, const char *path,
                       size_t path_len);

/*
 * Writes the path to request upstream for path under route: the upstream's
 * base path, then path with the route's prefix removed when strip_prefix is
 * set. Returns the length written, or -1 when out does not have room.
 */
int gw_route_upstream_path(const struct gw_route *route, const char *path,
                           size_t path_len, char *out, size_t out_size);

/*
 * Puts a request path (without the query) into the one form that routes
 * match and that goes upstream, or rejects it, so that no spelling of a path
 * can reach a route that its plain spelling would not:
 *
 *   - percent-encoded unreserved characters (letters, digits, '-', '.', '_',
 *     '~') are decoded, as RFC 3986 (6.2.2.2) says they are equivalent;
 *   - a path is rejected when it then has a "." or ".." segment, an empty
 *     segment ("//"), an encoded '/' or '\\' (%2F, %5C), a '\\', an encoded
 *     NUL, a malformed escape, or does not start with '/'.
 *
 * Other escapes stay as received. Writes the result into out and returns its
 * length, or -1 with *problem set to a static description.
 */
int gw_path_normalize(const char *path, size_t len, char *out, size_t out_size,
                      const char **problem);

#endif /* GATEWAY_ROUTE_H */
