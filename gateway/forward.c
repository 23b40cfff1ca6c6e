/*
 * The upstream request's header list and the gateway's error responses.
 */
#include "proxy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "headers.h"
#include "version.h"

static const struct {
    const char *name;
    unsigned status;
} kinds[] = {
    [GW_KIND_NOT_FOUND] = {"not_found", 404},
    [GW_KIND_METHOD_NOT_ALLOWED] = {"method_not_allowed", 405},
    [GW_KIND_BAD_REQUEST] = {"bad_request", 400},
    [GW_KIND_BODY_TOO_LARGE] = {"body_too_large", 413},
    [GW_KIND_HEADER_TOO_LARGE] = {"header_too_large", 431},
    [GW_KIND_RATE_LIMITED] = {"rate_limited", 429},
    [GW_KIND_BREAKER_OPEN] = {"breaker_open", 503},
    [GW_KIND_BULKHEAD_FULL] = {"bulkhead_full", 503},
    [GW_KIND_TIMEOUT] = {"timeout", 504},
    [GW_KIND_UPSTREAM_ERROR] = {"upstream_error", 502},
    [GW_KIND_SHUTTING_DOWN] = {"shutting_down", 503},
    /* The client left before the response: logged and counted only. 499
     * is the code nginx uses for this. */
    [GW_KIND_CLIENT_CLOSED] = {"client_closed", 499},
    [GW_KIND_INTERNAL] = {"internal", 500},
};

const char *
gw_error_kind_name(enum gw_error_kind kind)
{
    return kinds[kind].name;
}

unsigned
gw_error_kind_status(enum gw_error_kind kind)
{
    return kinds[kind].status;
}

/* Copies text into out as the inside of a JSON string, cut to fit. */
static size_t
json_escape(const char *text, char *out, size_t size)
{
    size_t n = 0;

    for (const char *c = text; *c != '\0' && n + 7 < size; c++) {
        unsigned char ch = (unsigned char)*c;
        if (ch == '"' || ch == '\\') {
            out[n++] = '\\';
            out[n++] = (char)ch;
        } else if (ch < 0x20) {
            n += (size_t)snprintf(out + n, size - n, "\\u%04x", ch);
        } else {
            out[n++] = (char)ch;
        }
    }
    out[n] = '\0';
    return n;
}

size_t
gw_error_body(enum gw_error_kind kind, const char *message, const char *route,
              char *out, size_t out_size)
{
    char msg[256];
    char rt[96];
    int n;

    json_escape(message, msg, sizeof(msg));
    if (route != NULL) {
        json_escape(route, rt, sizeof(rt));
        n = snprintf(out, out_size,
                     "{\"error\":\"%s\",\"status\":%u,\"message\":\"%s\","
                     "\"route\":\"%s\"}\n",
                     kinds[kind].name, kinds[kind].status, msg, rt);
    } else {
        n = snprintf(out, out_size,
                     "{\"error\":\"%s\",\"status\":%u,\"message\":\"%s\"}\n",
                     kinds[kind].name, kinds[kind].status, msg);
    }
    if (n < 0)
        return 0;
    return (size_t)n < out_size ? (size_t)n : out_size - 1;
}

/*
 * Appends "name: value" to list. An empty value is written "name;", which is
 * how libcurl sends a field with no value ("name:" would remove the field).
 */
static struct curl_slist *
append_field(struct curl_slist *list, const char *name, const char *value,
             bool *failed)
{
    size_t name_len = strlen(name);
    size_t value_len = strlen(value);
    char small[512];
    char *line = small;

    if (*failed)
        return list;
    if (name_len + value_len + 3 > sizeof(small)) {
        line = malloc(name_len + value_len + 3);
        if (line == NULL) {
            *failed = true;
            return list;
        }
    }
    if (value_len == 0)
        snprintf(line, name_len + 2, "%s;", name);
    else
        snprintf(line, name_len + value_len + 3, "%s: %s", name, value);

    struct curl_slist *grown = curl_slist_append(list, line);
    if (line != small)
        free(line);
    if (grown == NULL) {
        *failed = true;
        return list;
    }
    return grown;
}

static struct curl_slist *
append_line(struct curl_slist *list, const char *line, bool *failed)
{
    if (*failed)
        return list;
    struct curl_slist *grown = curl_slist_append(list, line);
    if (grown == NULL) {
        *failed = true;
        return list;
    }
    return grown;
}

/* Fields the gateway sets or leaves to libcurl, so the client's are not
 * copied as they are. */
static bool
replaced_field(const char *name)
{
    static const char *const names[] = {
        "Host",
        "Content-Length",
        "Expect",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcasecmp(name, names[i]) == 0)
            return true;
    }
    return false;
}

/* Joins the values of every field called name with ", " into out. */
static void
join_values(const struct gw_request_header *headers, size_t count,
            const char *name, char *out, size_t size)
{
    size_t used = 0;

    out[0] = '\0';
    for (size_t i = 0; i < count && used < size; i++) {
        if (strcasecmp(headers[i].name, name) == 0)
            used += (size_t)snprintf(out + used, size - used, "%s%s",
                                     used > 0 ? ", " : "", headers[i].value);
    }
}

struct curl_slist *
gw_build_upstream_headers(const struct gw_request_header *headers, size_t count,
                          const struct gw_forward_info *info, bool *bad_request)
{
    struct gw_connection_values cv = {0};
    struct curl_slist *list = NULL;
    const char *host = NULL;
    bool has_accept = false, has_content_type = false;
    bool failed = false;

    *bad_request = false;
    for (size_t i = 0; i < count; i++) {
        if (strcasecmp(headers[i].name, "Connection") == 0)
            gw_connection_values_add(&cv, headers[i].value);
        else if (strcasecmp(headers[i].name, "Host") == 0 && host == NULL)
            host = headers[i].value;
    }
    if (cv.overflow) {
        *bad_request = true;
        return NULL;
    }

    /* Host first, as a client would send it: the upstream sees the name the
     * client asked for. */
    if (host != NULL)
        list = append_field(list, "Host", host, &failed);
    for (size_t i = 0; i < count; i++) {
        const char *name = headers[i].name;

        if (!gw_header_forwarded(&cv, name) || replaced_field(name))
            continue;
        has_accept = has_accept || strcasecmp(name, "Accept") == 0;
        has_content_type =
            has_content_type || strcasecmp(name, "Content-Type") == 0;
        list = append_field(list, name, headers[i].value, &failed);
    }

    char value[4096];
    join_values(headers, count, "X-Forwarded-For", value, sizeof(value));
    size_t used = strlen(value);
    snprintf(value + used, sizeof(value) - used, "%s%s", used > 0 ? ", " : "",
             info->client_ip);
    list = append_field(list, "X-Forwarded-For", value, &failed);
    list = append_field(list, "X-Forwarded-Proto", "http", &failed);
    if (host != NULL)
        list = append_field(list, "X-Forwarded-Host", host, &failed);
    const char *version = strncmp(info->http_version, "HTTP/", 5) == 0
                              ? info->http_version + 5
                              : info->http_version;
    snprintf(value, sizeof(value), "%s %s", version, GW_NAME);
    list = append_field(list, "Via", value, &failed);

    /* With "Name:" and no value, libcurl does not add its own field. */
    if (!has_accept)
        list = append_line(list, "Accept:", &failed);
    list = append_line(list, "Expect:", &failed);
    if (info->send_body && !has_content_type)
        list = append_line(list, "Content-Type:", &failed);

    if (failed) {
        curl_slist_free_all(list);
        return NULL;
    }
    return list;
}
