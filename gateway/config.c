/*
 * Loading and validating the JSON configuration.
 *
 * Validation walks the document once, object by object: each object's keys
 * are checked against the keys it allows, then each value against its type
 * and range. The first problem ends the walk with a message of the form
 * "FILE: JSON.PATH: VALUE is WHAT; allowed ...".
 */
#include "config.h"
#include "config_internal.h"
#include "policy.h"
#include "route.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The largest config file read, so a wrong path cannot exhaust memory. */
#define CONFIG_MAX_BYTES (4 * 1024 * 1024)
#define ROUTE_NAME_MAX   64
#define PREFIX_MAX       1024
#define URL_MAX          2048

/* Formats value as compact JSON, cut to fit out. */
static void
describe_value(const cJSON *value, char *out, size_t size)
{
    char *json = value != NULL ? cJSON_PrintUnformatted(value) : NULL;

    if (json == NULL) {
        snprintf(out, size, "(missing)");
        return;
    }
    if (strlen(json) > 60)
        snprintf(out, size, "%.57s...", json);
    else
        snprintf(out, size, "%s", json);
    free(json);
}

/*
 * Writes "FILE: PATH: VALUE what" into the validator's buffer and returns -1,
 * so callers can write "return cfg_fail(...)". value may be NULL for a message
 * that is not about one value.
 */
int
cfg_fail(struct validator *v, const char *path, const cJSON *value,
         const char *fmt, ...)
{
    char shown[80] = "";
    char what[512];
    va_list ap;

    if (value != NULL)
        describe_value(value, shown, sizeof(shown));
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    char line[1024];
    snprintf(line, sizeof(line), "%s: %s: %s%s%s", v->file, path, shown,
             value != NULL ? " " : "", what);
    /* Keys and values from the file may hold control characters; the
     * message stays one line, with those written as \xHH. */
    size_t n = 0;
    for (const unsigned char *c = (const unsigned char *)line;
         *c != '\0' && n + 5 < v->err_size; c++) {
        if (*c < 0x20 || *c == 0x7f)
            n += (size_t)snprintf(v->err + n, v->err_size - n, "\\x%02x", *c);
        else
            v->err[n++] = (char)*c;
    }
    v->err[n] = '\0';
    return -1;
}

const char *
cfg_type_name(const cJSON *value)
{
    if (cJSON_IsObject(value))
        return "an object";
    if (cJSON_IsArray(value))
        return "an array";
    if (cJSON_IsString(value))
        return "a string";
    if (cJSON_IsNumber(value))
        return "a number";
    if (cJSON_IsBool(value))
        return "a boolean";
    if (cJSON_IsNull(value))
        return "null";
    return "an unknown type";
}

/* Joins a parent path and a key: "routes[0]" + "name". */
/* Appends text to out (of size bytes) at *used, cutting what does not fit;
 * paths only appear in messages. */
static void
path_append(char *out, size_t size, size_t *used, const char *text)
{
    size_t len = strlen(text);

    if (*used + len >= size)
        len = size - 1 - *used;
    memcpy(out + *used, text, len);
    *used += len;
    out[*used] = '\0';
}

void
cfg_path_key(char *out, size_t size, const char *parent, const char *key)
{
    size_t used = 0;

    out[0] = '\0';
    path_append(out, size, &used, parent);
    if (parent[0] != '\0')
        path_append(out, size, &used, ".");
    path_append(out, size, &used, key);
}

void
cfg_path_index(char *out, size_t size, const char *parent, size_t index)
{
    char suffix[32];
    size_t used = 0;

    snprintf(suffix, sizeof(suffix), "[%zu]", index);
    out[0] = '\0';
    path_append(out, size, &used, parent);
    path_append(out, size, &used, suffix);
}

/*
 * Rejects keys of obj that are not in allowed (NULL-terminated) and keys that
 * appear twice, which cJSON would otherwise keep silently.
 */
int
cfg_check_keys(struct validator *v, const cJSON *obj, const char *path,
               const char *const *allowed)
{
    char sub[256];
    const cJSON *item;

    cJSON_ArrayForEach(item, obj)
    {
        bool known = false;

        cfg_path_key(sub, sizeof(sub), path, item->string);
        for (size_t i = 0; allowed[i] != NULL; i++)
            known = known || strcmp(item->string, allowed[i]) == 0;
        if (!known) {
            char list[256] = "";
            size_t used = 0;
            for (size_t i = 0; allowed[i] != NULL && used < sizeof(list); i++)
                used += (size_t)snprintf(list + used, sizeof(list) - used,
                                         "%s%s", i > 0 ? ", " : "", allowed[i]);
            return cfg_fail(v, sub, NULL, "unknown key; allowed keys here: %s",
                            list);
        }
        for (const cJSON *other = item->next; other != NULL;
             other = other->next) {
            if (strcmp(other->string, item->string) == 0)
                return cfg_fail(v, sub, NULL,
                                "appears twice; give each key once");
        }
    }
    return 0;
}

int
cfg_expect_object(struct validator *v, const cJSON *value, const char *path)
{
    if (!cJSON_IsObject(value))
        return cfg_fail(v, path, value, "is %s; expected an object",
                        cfg_type_name(value));
    return 0;
}

/*
 * Reads optional integer key of obj into *out, or def when absent. unit is
 * shown in the range message ("milliseconds", "bytes").
 */
int
cfg_int(struct validator *v, const cJSON *obj, const char *path,
        const char *key, long min, long max, long def, const char *unit,
        long *out)
{
    char sub[256];
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);

    *out = def;
    if (item == NULL)
        return 0;
    cfg_path_key(sub, sizeof(sub), path, key);
    if (!cJSON_IsNumber(item))
        return cfg_fail(v, sub, item, "is %s; expected an integer (%s)",
                        cfg_type_name(item), unit);
    double d = item->valuedouble;
    if (d != floor(d))
        return cfg_fail(v, sub, item,
                        "is not a whole number; expected an "
                        "integer (%s)",
                        unit);
    if (d < (double)min || d > (double)max)
        return cfg_fail(v, sub, item,
                        "is out of range; allowed %ld to %ld (%s)", min, max,
                        unit);
    *out = (long)d;
    return 0;
}

int
cfg_bool(struct validator *v, const cJSON *obj, const char *path,
         const char *key, bool def, bool *out)
{
    char sub[256];
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);

    *out = def;
    if (item == NULL)
        return 0;
    cfg_path_key(sub, sizeof(sub), path, key);
    if (!cJSON_IsBool(item))
        return cfg_fail(v, sub, item, "is %s; expected true or false",
                        cfg_type_name(item));
    *out = cJSON_IsTrue(item);
    return 0;
}

int
cfg_double(struct validator *v, const cJSON *obj, const char *path,
           const char *key, double min, double max, double def,
           const char *unit, double *out)
{
    char sub[CFG_PATH_MAX];
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);

    *out = def;
    if (item == NULL)
        return 0;
    cfg_path_key(sub, sizeof(sub), path, key);
    if (!cJSON_IsNumber(item))
        return cfg_fail(v, sub, item, "is %s; expected a number (%s)",
                        cfg_type_name(item), unit);
    if (!(item->valuedouble >= min && item->valuedouble <= max))
        return cfg_fail(v, sub, item,
                        "is out of range; allowed %.15g to %.15g (%s)", min,
                        max, unit);
    *out = item->valuedouble;
    return 0;
}

/*
 * Reads string key of obj; *out points into the document. A required key that
 * is absent is an error; an optional one leaves *out NULL.
 */
int
cfg_string(struct validator *v, const cJSON *obj, const char *path,
           const char *key, bool required, size_t max_len, const char **out)
{
    char sub[256];
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);

    *out = NULL;
    cfg_path_key(sub, sizeof(sub), path, key);
    if (item == NULL) {
        if (required)
            return cfg_fail(v, sub, NULL, "is missing; this key is required");
        return 0;
    }
    if (!cJSON_IsString(item))
        return cfg_fail(v, sub, item, "is %s; expected a string",
                        cfg_type_name(item));
    if (item->valuestring[0] == '\0')
        return cfg_fail(v, sub, item, "is empty; expected a non-empty string");
    if (strlen(item->valuestring) > max_len)
        return cfg_fail(v, sub, NULL, "is longer than %zu characters", max_len);
    *out = item->valuestring;
    return 0;
}

int
gw_listen_parse(const char *text, struct gw_listen *out)
{
    char host[64];
    const char *colon;
    const char *host_start = text;
    size_t host_len;

    memset(out, 0, sizeof(*out));
    if (strlen(text) >= sizeof(out->text))
        return -1;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        host_start = text + 1;
        host_len = (size_t)(close - host_start);
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL)
            return -1;
        host_len = (size_t)(colon - text);
    }
    if (host_len == 0 || host_len >= sizeof(host))
        return -1;
    memcpy(host, host_start, host_len);
    host[host_len] = '\0';

    const char *port_text = colon + 1;
    if (*port_text == '\0' || strlen(port_text) > 5)
        return -1;
    long port = 0;
    for (const char *p = port_text; *p != '\0'; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        port = port * 10 + (*p - '0');
    }
    if (port > 65535)
        return -1;

    struct sockaddr_in *in4 = (struct sockaddr_in *)&out->addr;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->addr;
    if (text[0] != '[' && inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        out->addr_len = sizeof(*in4);
    } else if (text[0] == '[' &&
               inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        out->addr_len = sizeof(*in6);
    } else {
        return -1;
    }
    snprintf(out->text, sizeof(out->text), "%s", text);
    return 0;
}

static int
parse_listen(struct validator *v, const cJSON *obj, const char *path,
             const char *key, const char *def, struct gw_listen *out)
{
    char sub[256];
    const char *text;

    if (cfg_string(v, obj, path, key, false, 79, &text) != 0)
        return -1;
    if (text == NULL)
        text = def;
    if (gw_listen_parse(text, out) != 0) {
        cfg_path_key(sub, sizeof(sub), path, key);
        return cfg_fail(
            v, sub, cJSON_GetObjectItemCaseSensitive(obj, key),
            "is not a valid listen address; expected HOST:PORT with "
            "a numeric IPv4 host or a bracketed IPv6 host and a port "
            "from 0 to 65535, e.g. \"0.0.0.0:8080\" or \"[::1]:8080\"");
    }
    return 0;
}

static int
parse_limits(struct validator *v, const cJSON *root, struct gw_limits *out)
{
    static const char *const keys[] = {"max_connections",
                                       "max_header_bytes",
                                       "max_body_bytes",
                                       "max_response_bytes",
                                       "client_timeout_ms",
                                       "response_buffer_bytes",
                                       NULL};
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(root, "limits");
    const cJSON empty = {.type = cJSON_Object};

    if (obj == NULL)
        obj = &empty;
    if (cfg_expect_object(v, obj, "limits") != 0 ||
        cfg_check_keys(v, obj, "limits", keys) != 0)
        return -1;
    if (cfg_int(v, obj, "limits", "max_connections", 1, 1000000, 10000,
                "connections", &out->max_connections) != 0 ||
        cfg_int(v, obj, "limits", "max_header_bytes", 1024, 1048576, 16384,
                "bytes", &out->max_header_bytes) != 0 ||
        cfg_int(v, obj, "limits", "max_body_bytes", 0, 1073741824, 10485760,
                "bytes", &out->max_body_bytes) != 0 ||
        cfg_int(v, obj, "limits", "max_response_bytes", 1, 1073741824, 67108864,
                "bytes", &out->max_response_bytes) != 0 ||
        cfg_int(v, obj, "limits", "client_timeout_ms", 1000, 3600000, 30000,
                "milliseconds", &out->client_timeout_ms) != 0 ||
        cfg_int(v, obj, "limits", "response_buffer_bytes", 4096, 67108864,
                65536, "bytes", &out->response_buffer_bytes) != 0)
        return -1;
    return 0;
}

static bool
is_token_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

static int
parse_methods(struct validator *v, const cJSON *match, const char *path,
              struct gw_route *route)
{
    char sub[256];
    char item_path[256];
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(match, "methods");

    if (list == NULL)
        return 0;
    cfg_path_key(sub, sizeof(sub), path, "methods");
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) == 0)
        return cfg_fail(v, sub, list,
                        "is not a non-empty array of method names, "
                        "e.g. [\"GET\", \"POST\"]");

    size_t count = (size_t)cJSON_GetArraySize(list);
    route->methods = calloc(count + 1, sizeof(char *));
    if (route->methods == NULL)
        return cfg_fail(v, sub, NULL, "out of memory");

    const cJSON *item;
    size_t i = 0;
    cJSON_ArrayForEach(item, list)
    {
        cfg_path_index(item_path, sizeof(item_path), sub, i);
        if (!cJSON_IsString(item) || item->valuestring[0] == '\0' ||
            strlen(item->valuestring) > 32)
            return cfg_fail(v, item_path, item,
                            "is not a method name; expected "
                            "an uppercase string such as "
                            "\"GET\"");
        for (const char *c = item->valuestring; *c != '\0'; c++) {
            if (!is_token_char(*c))
                return cfg_fail(v, item_path, item,
                                "is not a method name; use uppercase letters, "
                                "digits, '-' or '_', e.g. \"GET\"");
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(route->methods[j], item->valuestring) == 0)
                return cfg_fail(v, item_path, item, "is listed twice");
        }
        route->methods[i] = strdup(item->valuestring);
        if (route->methods[i] == NULL)
            return cfg_fail(v, item_path, NULL, "out of memory");
        route->method_count = ++i;
    }
    return 0;
}

static int
parse_match(struct validator *v, const cJSON *obj, const char *route_path,
            struct gw_route *route)
{
    static const char *const keys[] = {"prefix", "methods", NULL};
    char path[256];
    const char *prefix;
    const cJSON *match = cJSON_GetObjectItemCaseSensitive(obj, "match");

    cfg_path_key(path, sizeof(path), route_path, "match");
    if (match == NULL)
        return cfg_fail(v, path, NULL,
                        "is missing; every route needs "
                        "{\"prefix\": \"/...\"}");
    if (cfg_expect_object(v, match, path) != 0 ||
        cfg_check_keys(v, match, path, keys) != 0 ||
        cfg_string(v, match, path, "prefix", true, PREFIX_MAX, &prefix) != 0)
        return -1;

    char sub[256];
    cfg_path_key(sub, sizeof(sub), path, "prefix");
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(match, "prefix");
    if (prefix[0] != '/')
        return cfg_fail(v, sub, item, "does not start with '/'");
    for (const char *c = prefix; *c != '\0'; c++) {
        if ((unsigned char)*c <= ' ' || *c == 0x7f || *c == '?' || *c == '#')
            return cfg_fail(v, sub, item,
                            "contains a space, a control "
                            "character, '?' or '#'; a prefix is a "
                            "path only");
    }
    /* A prefix that is not in the normal form requests are matched in
     * (see gw_path_normalize) could never match. */
    char normal[PREFIX_MAX + 1];
    const char *problem = NULL;
    int n = gw_path_normalize(prefix, strlen(prefix), normal, sizeof(normal),
                              &problem);
    if (n < 0 || strcmp(normal, prefix) != 0)
        return cfg_fail(v, sub, item,
                        "is not in normal form (%s); write it as requests "
                        "are matched: plain characters, no \".\" or \"..\" "
                        "segments, no \"//\" or backslash",
                        n < 0 ? problem : "it has encoded characters");
    route->prefix = strdup(prefix);
    if (route->prefix == NULL)
        return cfg_fail(v, sub, NULL, "out of memory");
    route->prefix_len = strlen(prefix);
    return parse_methods(v, match, path, route);
}

/*
 * Checks an upstream URL with libcurl's URL parser: http or https, a host,
 * no credentials, query or fragment. Splits it into origin and base path.
 */
int
cfg_url(struct validator *v, const cJSON *item, const char *path,
        char **origin_out, char **base_out)
{
    CURLU *url = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *upath = NULL;
    char *user = NULL, *query = NULL, *fragment = NULL;
    const char *problem = NULL;
    int rc = -1;

    if (url == NULL)
        return cfg_fail(v, path, NULL, "out of memory");
    if (curl_url_set(url, CURLUPART_URL, item->valuestring, 0) != CURLUE_OK)
        problem = "is not a valid URL";
    else if (curl_url_get(url, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
             (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
        problem = "does not use the http or https scheme";
    else if (curl_url_get(url, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        problem = "has no host";
    else if (curl_url_get(url, CURLUPART_USER, &user, 0) == CURLUE_OK)
        problem = "contains credentials; send them as headers instead";
    else if (curl_url_get(url, CURLUPART_QUERY, &query, 0) == CURLUE_OK)
        problem = "has a query; an upstream URL is scheme://host[:port][/path]";
    else if (curl_url_get(url, CURLUPART_FRAGMENT, &fragment, 0) == CURLUE_OK)
        problem = "has a fragment; an upstream URL is "
                  "scheme://host[:port][/path]";
    if (problem != NULL) {
        cfg_fail(v, path, item, "%s; expected e.g. \"http://127.0.0.1:9000\"",
                 problem);
        goto out;
    }

    curl_url_get(url, CURLUPART_PORT, &port, 0);
    curl_url_get(url, CURLUPART_PATH, &upath, 0);
    size_t origin_size = strlen(scheme) + strlen(host) + 16;
    char *origin = malloc(origin_size);
    size_t base_len = upath != NULL ? strlen(upath) : 0;
    while (base_len > 0 && upath[base_len - 1] == '/')
        base_len--;
    char *base = strndup(upath != NULL ? upath : "", base_len);
    if (origin == NULL || base == NULL) {
        free(origin);
        free(base);
        cfg_fail(v, path, NULL, "out of memory");
        goto out;
    }
    snprintf(origin, origin_size, "%s://%s%s%s", scheme, host,
             port != NULL ? ":" : "", port != NULL ? port : "");
    *origin_out = origin;
    *base_out = base;
    rc = 0;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(upath);
    curl_free(user);
    curl_free(query);
    curl_free(fragment);
    curl_url_cleanup(url);
    return rc;
}

static int
parse_upstream(struct validator *v, const cJSON *obj, const char *route_path,
               struct gw_route *route)
{
    static const char *const keys[] = {
        "url", "strip_prefix", "connect_timeout_ms", "timeout_ms", NULL};
    char path[256];
    char sub[256];
    const char *url;
    const cJSON *up = cJSON_GetObjectItemCaseSensitive(obj, "upstream");

    cfg_path_key(path, sizeof(path), route_path, "upstream");
    if (up == NULL)
        return cfg_fail(v, path, NULL,
                        "is missing; every route needs "
                        "{\"url\": \"http://HOST:PORT\"}");
    if (cfg_expect_object(v, up, path) != 0 ||
        cfg_check_keys(v, up, path, keys) != 0 ||
        cfg_string(v, up, path, "url", true, URL_MAX, &url) != 0)
        return -1;
    cfg_path_key(sub, sizeof(sub), path, "url");
    if (cfg_url(v, cJSON_GetObjectItemCaseSensitive(up, "url"), sub,
                &route->upstream_url, &route->upstream_base) != 0)
        return -1;
    if (cfg_bool(v, up, path, "strip_prefix", false, &route->strip_prefix) !=
            0 ||
        cfg_int(v, up, path, "connect_timeout_ms", 1, 600000, 1000,
                "milliseconds", &route->connect_timeout_ms) != 0 ||
        cfg_int(v, up, path, "timeout_ms", 1, 3600000, 30000, "milliseconds",
                &route->timeout_ms) != 0)
        return -1;
    /* The default connect timeout never exceeds the call's own. */
    if (cJSON_GetObjectItemCaseSensitive(up, "connect_timeout_ms") == NULL &&
        route->connect_timeout_ms > route->timeout_ms)
        route->connect_timeout_ms = route->timeout_ms;
    if (route->connect_timeout_ms > route->timeout_ms) {
        cfg_path_key(sub, sizeof(sub), path, "connect_timeout_ms");
        return cfg_fail(
            v, sub, cJSON_GetObjectItemCaseSensitive(up, "connect_timeout_ms"),
            "is larger than timeout_ms (%ld), which bounds the whole "
            "call; lower it or raise timeout_ms",
            route->timeout_ms);
    }
    return 0;
}

static int
parse_route(struct validator *v, const cJSON *obj, const char *path,
            struct gw_route *route)
{
    static const char *const keys[] = {"name",       "match",    "upstream",
                                       "rate_limit", "breaker",  "bulkhead",
                                       "retry",      "fallback", NULL};
    char sub[256];
    const char *name;

    if (cfg_expect_object(v, obj, path) != 0 ||
        cfg_check_keys(v, obj, path, keys) != 0 ||
        cfg_string(v, obj, path, "name", true, ROUTE_NAME_MAX, &name) != 0)
        return -1;
    cfg_path_key(sub, sizeof(sub), path, "name");
    for (const char *c = name; *c != '\0'; c++) {
        bool ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || *c == '_' || *c == '-' ||
                  *c == '.';
        if (!ok)
            return cfg_fail(
                v, sub, cJSON_GetObjectItemCaseSensitive(obj, "name"),
                "contains '%c'; use letters, digits, '_', '-' or '.' "
                "(the name becomes a metrics label)",
                *c);
    }
    route->name = strdup(name);
    if (route->name == NULL)
        return cfg_fail(v, sub, NULL, "out of memory");
    return parse_match(v, obj, path, route) != 0 ||
                   parse_upstream(v, obj, path, route) != 0 ||
                   cfg_route_policies(v, obj, path, route) != 0
               ? -1
               : 0;
}

/* Two routes overlap when they have the same prefix and share a method. */
static int
check_overlap(struct validator *v, const struct gw_config *c, size_t i)
{
    const struct gw_route *r = &c->routes[i];
    char path[64];

    for (size_t j = 0; j < i; j++) {
        const struct gw_route *o = &c->routes[j];

        snprintf(path, sizeof(path), "routes[%zu].name", i);
        if (strcmp(o->name, r->name) == 0)
            return cfg_fail(v, path, NULL,
                            "name \"%s\" is already used by "
                            "routes[%zu]; route names are unique",
                            r->name, j);
        if (strcmp(o->prefix, r->prefix) != 0)
            continue;
        snprintf(path, sizeof(path), "routes[%zu].match", i);
        if (r->methods == NULL || o->methods == NULL)
            return cfg_fail(v, path, NULL,
                            "prefix \"%s\" is already routed by "
                            "routes[%zu] and one of them takes "
                            "every method; list disjoint "
                            "match.methods",
                            r->prefix, j);
        for (size_t k = 0; k < r->method_count; k++) {
            if (gw_route_allows(o, r->methods[k]))
                return cfg_fail(v, path, NULL,
                                "prefix \"%s\" with method %s is "
                                "already routed by routes[%zu]",
                                r->prefix, r->methods[k], j);
        }
    }
    return 0;
}

static int
parse_routes(struct validator *v, const cJSON *root, struct gw_config *c)
{
    char path[64];
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "routes");

    if (list == NULL)
        return cfg_fail(v, "routes", NULL,
                        "is missing; expected an array of "
                        "route objects");
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) == 0)
        return cfg_fail(v, "routes", list,
                        "is not a non-empty array of route "
                        "objects");

    size_t count = (size_t)cJSON_GetArraySize(list);
    c->routes = calloc(count, sizeof(*c->routes));
    if (c->routes == NULL)
        return cfg_fail(v, "routes", NULL, "out of memory");

    const cJSON *item;
    cJSON_ArrayForEach(item, list)
    {
        size_t i = c->route_count++;

        cfg_path_index(path, sizeof(path), "routes", i);
        if (parse_route(v, item, path, &c->routes[i]) != 0 ||
            check_overlap(v, c, i) != 0)
            return -1;
    }
    return 0;
}

static int
parse_log(struct validator *v, const cJSON *root, struct gw_config *c)
{
    static const char *const keys[] = {"access", NULL};
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(root, "log");
    const char *access = NULL;

    c->access_log = GW_ACCESS_LOG_TEXT;
    if (obj == NULL)
        return 0;
    if (cfg_expect_object(v, obj, "log") != 0 ||
        cfg_check_keys(v, obj, "log", keys) != 0 ||
        cfg_string(v, obj, "log", "access", false, 16, &access) != 0)
        return -1;
    if (access == NULL || strcmp(access, "text") == 0)
        c->access_log = GW_ACCESS_LOG_TEXT;
    else if (strcmp(access, "json") == 0)
        c->access_log = GW_ACCESS_LOG_JSON;
    else if (strcmp(access, "off") == 0)
        c->access_log = GW_ACCESS_LOG_OFF;
    else
        return cfg_fail(v, "log.access",
                        cJSON_GetObjectItemCaseSensitive(obj, "access"),
                        "is not an access log format; use \"text\", "
                        "\"json\" or \"off\"");
    return 0;
}

static int
parse_root(struct validator *v, const cJSON *root, struct gw_config *c)
{
    static const char *const keys[] = {
        "listen", "admin", "limits", "drain_timeout_ms", "log", "routes", NULL};
    static const char *const admin_keys[] = {"listen", NULL};

    if (!cJSON_IsObject(root)) {
        snprintf(v->err, v->err_size,
                 "%s: the document is %s; expected an object with \"routes\"",
                 v->file, cfg_type_name(root));
        return -1;
    }
    if (cfg_check_keys(v, root, "", keys) != 0 ||
        parse_listen(v, root, "", "listen", "0.0.0.0:8080", &c->listen) != 0)
        return -1;

    const cJSON *admin = cJSON_GetObjectItemCaseSensitive(root, "admin");
    const cJSON empty = {.type = cJSON_Object};
    if (admin == NULL)
        admin = &empty;
    if (cfg_expect_object(v, admin, "admin") != 0 ||
        cfg_check_keys(v, admin, "admin", admin_keys) != 0 ||
        parse_listen(v, admin, "admin", "listen", "127.0.0.1:9901",
                     &c->admin_listen) != 0)
        return -1;

    if (parse_limits(v, root, &c->limits) != 0 ||
        cfg_int(v, root, "", "drain_timeout_ms", 0, 600000, 10000,
                "milliseconds", &c->drain_timeout_ms) != 0 ||
        parse_log(v, root, c) != 0)
        return -1;
    return parse_routes(v, root, c);
}

/* Converts a byte offset in text into a 1-based line and column. */
static void
offset_position(const char *text, size_t offset, size_t *line, size_t *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < offset; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

int
gw_config_parse(const char *text, size_t len, const char *path,
                struct gw_config **out, char *err, size_t err_size)
{
    struct validator v = {.file = path, .err = err, .err_size = err_size};
    const char *end = NULL;
    struct gw_config *c = NULL;
    int rc = -1;

    *out = NULL;
    /* cJSON ends a string at an escaped NUL, so "/a\u0000/b" would load as
     * "/a"; such a value is never intended. */
    for (size_t i = 0; i + 6 <= len; i++) {
        if (memcmp(text + i, "\\u0000", 6) == 0) {
            size_t line, col;
            offset_position(text, i, &line, &col);
            snprintf(err, err_size,
                     "%s: line %zu, column %zu: a string contains \\u0000 "
                     "(NUL), which no key or value may contain",
                     path, line, col);
            return -1;
        }
    }
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    /* Only white space may follow the document. cJSON's own check would
     * read one byte past text when it is not NUL-terminated. */
    if (root != NULL && end != NULL) {
        const char *rest = end;
        while (rest < text + len && (*rest == ' ' || *rest == '\t' ||
                                     *rest == '\n' || *rest == '\r'))
            rest++;
        if (rest < text + len) {
            cJSON_Delete(root);
            root = NULL;
            end = rest;
        }
    }
    if (root == NULL) {
        size_t line, col;
        size_t offset = end != NULL && end >= text ? (size_t)(end - text) : 0;
        offset_position(text, offset < len ? offset : len, &line, &col);
        snprintf(err, err_size,
                 "%s: line %zu, column %zu: invalid JSON; check for a "
                 "missing comma, quote or brace, or a trailing comma",
                 path, line, col);
        return -1;
    }

    c = calloc(1, sizeof(*c));
    if (c == NULL || (c->path = strdup(path)) == NULL) {
        snprintf(err, err_size, "%s: out of memory", path);
        goto out;
    }
    if (parse_root(&v, root, c) != 0)
        goto out;
    *out = c;
    c = NULL;
    rc = 0;
out:
    gw_config_free(&c);
    cJSON_Delete(root);
    return rc;
}

int
gw_config_load(const char *path, struct gw_config **out, char *err,
               size_t err_size)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    size_t len = 0;
    int rc = -1;

    *out = NULL;
    if (f == NULL) {
        snprintf(err, err_size, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    text = malloc(CONFIG_MAX_BYTES + 1);
    if (text == NULL) {
        snprintf(err, err_size, "%s: out of memory", path);
        goto out;
    }
    len = fread(text, 1, CONFIG_MAX_BYTES + 1, f);
    if (ferror(f)) {
        snprintf(err, err_size, "%s: read failed: %s", path, strerror(errno));
        goto out;
    }
    if (len > CONFIG_MAX_BYTES) {
        snprintf(err, err_size,
                 "%s: larger than %d bytes; is this the right "
                 "file?",
                 path, CONFIG_MAX_BYTES);
        goto out;
    }
    rc = gw_config_parse(text, len, path, out, err, err_size);
out:
    free(text);
    fclose(f);
    return rc;
}

static void
route_free(struct gw_route *r)
{
    gw_route_runtime_put(&r->runtime);
    cfg_route_policies_free(r);
    free(r->name);
    free(r->prefix);
    for (size_t i = 0; i < r->method_count; i++)
        free(r->methods[i]);
    free(r->methods);
    free(r->upstream_url);
    free(r->upstream_base);
}

void
gw_config_free(struct gw_config **config)
{
    struct gw_config *c = *config;

    if (c == NULL)
        return;
    for (size_t i = 0; i < c->route_count; i++)
        route_free(&c->routes[i]);
    free(c->routes);
    free(c->path);
    free(c);
    *config = NULL;
}

bool
gw_route_allows(const struct gw_route *route, const char *method)
{
    if (route->methods == NULL)
        return true;
    for (size_t i = 0; i < route->method_count; i++) {
        if (strcmp(route->methods[i], method) == 0)
            return true;
        /* A route that serves GET serves HEAD too (RFC 9110, 9.3.2). */
        if (strcmp(method, "HEAD") == 0 &&
            strcmp(route->methods[i], "GET") == 0)
            return true;
    }
    return false;
}
