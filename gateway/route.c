/*
 * Longest-prefix route matching and upstream path rewriting.
 */
#include "route.h"

#include <stdio.h>
#include <string.h>

bool
gw_prefix_matches(const char *prefix, size_t prefix_len, const char *path,
                  size_t path_len)
{
    if (path_len < prefix_len || memcmp(prefix, path, prefix_len) != 0)
        return false;
    if (path_len == prefix_len || prefix[prefix_len - 1] == '/')
        return true;
    return path[prefix_len] == '/';
}

/* Appends method to the comma-separated list allow unless it is there. */
static void
allow_add(char *allow, size_t allow_size, const char *method)
{
    size_t used = strlen(allow);
    size_t mlen = strlen(method);

    for (const char *p = strstr(allow, method); p != NULL;
         p = strstr(p + 1, method)) {
        if ((p == allow || p[-1] == ' ') && (p[mlen] == ',' || p[mlen] == '\0'))
            return;
    }
    if (used + mlen + 3 > allow_size)
        return;
    snprintf(allow + used, allow_size - used, "%s%s", used > 0 ? ", " : "",
             method);
}

/* Lists the methods of every route with prefix; GET brings HEAD along. */
static void
collect_allow(const struct gw_config *config, const char *prefix, char *allow,
              size_t allow_size)
{
    allow[0] = '\0';
    for (size_t i = 0; i < config->route_count; i++) {
        const struct gw_route *r = &config->routes[i];

        if (strcmp(r->prefix, prefix) != 0)
            continue;
        for (size_t k = 0; k < r->method_count; k++) {
            allow_add(allow, allow_size, r->methods[k]);
            if (strcmp(r->methods[k], "GET") == 0)
                allow_add(allow, allow_size, "HEAD");
        }
    }
}

enum gw_match_result
gw_route_match(const struct gw_config *config, const char *path,
               size_t path_len, const char *method,
               const struct gw_route **route, char *allow, size_t allow_size)
{
    const struct gw_route *best = NULL;
    const struct gw_route *best_allowed = NULL;

    for (size_t i = 0; i < config->route_count; i++) {
        const struct gw_route *r = &config->routes[i];

        if (!gw_prefix_matches(r->prefix, r->prefix_len, path, path_len))
            continue;
        if (best != NULL && r->prefix_len < best->prefix_len)
            continue;
        if (best == NULL || r->prefix_len > best->prefix_len) {
            best = r;
            best_allowed = NULL;
        }
        if (best_allowed == NULL && gw_route_allows(r, method))
            best_allowed = r;
    }
    if (best == NULL)
        return GW_MATCH_NOT_FOUND;
    if (best_allowed == NULL) {
        collect_allow(config, best->prefix, allow, allow_size);
        return GW_MATCH_METHOD_NOT_ALLOWED;
    }
    *route = best_allowed;
    return GW_MATCH_OK;
}

int
gw_route_upstream_path(const struct gw_route *route, const char *path,
                       size_t path_len, char *out, size_t out_size)
{
    const char *rest = path;
    size_t rest_len = path_len;

    if (route->strip_prefix) {
        /* Keep the '/' that follows the prefix: "/api" + "/api/x" -> "/x".
         * A prefix ending in '/' gives back that '/'. */
        size_t cut = route->prefix_len;
        if (cut > 0 && route->prefix[cut - 1] == '/')
            cut--;
        rest = path + cut;
        rest_len = path_len - cut;
    }

    const char *base = route->upstream_base;
    size_t base_len = strlen(base);
    const char *slash = rest_len == 0 || rest[0] != '/' ? "/" : "";
    if (rest_len == 0 && base_len > 0)
        slash = ""; /* "/api" stripped to "" under base "/v1" -> "/v1" */

    size_t total = base_len + strlen(slash) + rest_len;
    if (total + 1 > out_size)
        return -1;
    memcpy(out, base, base_len);
    memcpy(out + base_len, slash, strlen(slash));
    memcpy(out + base_len + strlen(slash), rest, rest_len);
    out[total] = '\0';
    return (int)total;
}

static int
hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool
is_unreserved(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
           c == '~';
}

/* Checks one decoded segment [start, end) of a normalized path. */
static const char *
segment_problem(const char *start, const char *end)
{
    size_t len = (size_t)(end - start);

    if (len == 0)
        return "the path has an empty segment (\"//\")";
    if ((len == 1 && start[0] == '.') ||
        (len == 2 && start[0] == '.' && start[1] == '.'))
        return "the path has a \".\" or \"..\" segment";
    return NULL;
}

int
gw_path_normalize(const char *path, size_t len, char *out, size_t out_size,
                  const char **problem)
{
    size_t n = 0;

    if (len == 0 || path[0] != '/') {
        *problem = "the path does not start with '/'";
        return -1;
    }
    if (len + 1 > out_size) {
        *problem = "the path is too long";
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char c = path[i];

        if (c == '%') {
            int hi = i + 2 < len ? hex_value(path[i + 1]) : -1;
            int lo = i + 2 < len ? hex_value(path[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                *problem = "the path has a malformed percent-escape";
                return -1;
            }
            int byte = hi * 16 + lo;
            if (byte == '/' || byte == '\\' || byte == 0) {
                *problem = "the path has an encoded '/', '\\' or NUL";
                return -1;
            }
            if (is_unreserved(byte)) {
                out[n++] = (char)byte;
            } else {
                memcpy(out + n, path + i, 3);
                n += 3;
            }
            i += 2;
            continue;
        }
        if (c == '\\') {
            *problem = "the path has a '\\'";
            return -1;
        }
        out[n++] = c;
    }
    out[n] = '\0';

    /* Every segment after a '/' must be a real name. A trailing '/' leaves
     * an empty last segment, which is allowed ("/dir/"). */
    const char *seg = out + 1;
    for (const char *p = out + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            bool last = *p == '\0';
            if (!(last && p == seg)) {
                *problem = segment_problem(seg, p);
                if (*problem != NULL)
                    return -1;
            }
            if (last)
                break;
            seg = p + 1;
        }
    }
    *problem = NULL;
    return (int)n;
}
