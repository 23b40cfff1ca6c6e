/*
 * Behaviour parameters of a request: query parameters such as
 * "?status=503&delay_ms=100", or header fields such as "X-Test-Status: 503"
 * and "X-Test-Delay-Ms: 100" (the name after "X-Test-", lowercased, with
 * '-' read as '_'). Header fields are read first and query parameters
 * second, so a query parameter wins. Unknown names are ignored, because
 * tests also send query parameters of their own.
 */
#include "upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HEADER_PREFIX "X-Test-"

static const char *const action_names[] = {
    [ACTION_NONE] = "none",
    [ACTION_CLOSE] = "close",
    [ACTION_RESET] = "reset",
    [ACTION_CLOSE_MID_BODY] = "close_mid_body",
    [ACTION_STALL_BODY] = "stall_body",
    [ACTION_BAD_HEAD] = "bad_head",
    [ACTION_HUGE_HEAD] = "huge_head",
    [ACTION_STALL] = "stall",
};

const char *
action_name(enum action action)
{
    return action_names[action];
}

static bool
invalid(struct params *prm, const char *name, const char *value,
        const char *allowed)
{
    snprintf(prm->error, sizeof(prm->error),
             "invalid parameter %s=\"%.64s\": expected %s", name, value,
             allowed);
    return false;
}

/* Parses a decimal integer in [min, max]. False for anything else. */
static bool
parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (*s == '\0')
        return false;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return false;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (v < min || v > max)
        return false;
    *out = v;
    return true;
}

static bool
parse_bool(const char *s, bool *out)
{
    if (strcmp(s, "1") == 0 || strcasecmp(s, "true") == 0) {
        *out = true;
        return true;
    }
    if (strcmp(s, "0") == 0 || strcasecmp(s, "false") == 0) {
        *out = false;
        return true;
    }
    return false;
}

static bool
parse_action(const char *s, enum action *out)
{
    for (size_t i = 0; i < sizeof(action_names) / sizeof(*action_names); i++) {
        if (strcmp(s, action_names[i]) == 0) {
            *out = (enum action)i;
            return true;
        }
    }
    return false;
}

static bool
is_token(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                     (c >= '0' && c <= '9');
        if (!alnum && strchr("!#$%&'*+-.^_`|~", c) == NULL)
            return false;
    }
    return true;
}

/* Adds "Name:Value" from header= as a reply header field. */
static bool
add_extra_header(struct params *prm, const char *spec)
{
    const char *colon = strchr(spec, ':');
    if (colon == NULL || !is_token(spec, (size_t)(colon - spec)))
        return invalid(prm, "header", spec, "Name:Value");
    const char *value = colon + 1;
    while (*value == ' ')
        value++;
    if (strpbrk(value, "\r\n") != NULL)
        return invalid(prm, "header", spec, "a value without CR or LF");

    size_t name_len = (size_t)(colon - spec);
    if (name_len == 12 && strncasecmp(spec, "Content-Type", 12) == 0)
        prm->extra_content_type = true;
    if (!buf_printf(&prm->extra_headers, "%.*s: %s\r\n", (int)name_len, spec,
                    value))
        return invalid(prm, "header", spec, "fewer or shorter header fields");
    return true;
}

static bool
apply_number(struct params *prm, const char *name, const char *value)
{
    uint64_t v;
    if (strcmp(name, "status") == 0 || strcmp(name, "fail_status") == 0) {
        if (!parse_uint(value, 200, 599, &v))
            return invalid(prm, name, value, "a status from 200 to 599");
        *(name[0] == 's' ? &prm->status : &prm->fail_status) = (int)v;
    } else if (strcmp(name, "delay_ms") == 0) {
        if (!parse_uint(value, 0, 3600 * 1000, &v))
            return invalid(prm, name, value, "milliseconds up to 3600000");
        prm->delay_ms = (unsigned)v;
    } else if (strcmp(name, "body_size") == 0) {
        if (!parse_uint(value, 0, MAX_RESPONSE_BODY, &v))
            return invalid(prm, name, value, "bytes up to 268435456");
        prm->has_body_size = true;
        prm->body_size = v;
    } else if (strcmp(name, "fail_first") == 0) {
        if (!parse_uint(value, 0, UINT32_MAX, &v))
            return invalid(prm, name, value, "a count up to 4294967295");
        prm->fail_first = v;
    } else if (strcmp(name, "chaos") == 0) {
        if (!parse_uint(value, 0, 100, &v))
            return invalid(prm, name, value, "a percentage from 0 to 100");
        prm->chaos_percent = (unsigned)v;
    } else if (strcmp(name, "seed") == 0) {
        if (!parse_uint(value, 0, UINT64_MAX, &v))
            return invalid(prm, name, value, "an unsigned 64-bit integer");
        prm->seed = v;
    }
    return true;
}

/* Applies one name=value pair. Unknown names are ignored. */
static bool
apply_param(struct params *prm, const char *name, const char *value)
{
    bool *flag = NULL;
    if (strcmp(name, "echo") == 0)
        flag = &prm->echo;
    else if (strcmp(name, "mirror") == 0)
        flag = &prm->mirror;
    else if (strcmp(name, "chunked") == 0)
        flag = &prm->chunked;
    if (flag != NULL) {
        if (!parse_bool(value, flag))
            return invalid(prm, name, value, "1, 0, true or false");
        return true;
    }

    if (strcmp(name, "action") == 0 || strcmp(name, "fail_action") == 0) {
        enum action *a = name[0] == 'a' ? &prm->action : &prm->fail_action;
        if (!parse_action(value, a))
            return invalid(prm, name, value,
                           "close, reset, close_mid_body, stall_body, "
                           "bad_head, huge_head, stall or none");
        return true;
    }
    if (strcmp(name, "header") == 0)
        return add_extra_header(prm, value);
    if (strcmp(name, "key") == 0) {
        if (strlen(value) > MAX_KEY_BYTES)
            return invalid(prm, name, value, "at most 256 bytes");
        memcpy(prm->key, value, strlen(value) + 1);
        return true;
    }
    return apply_number(prm, name, value);
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

/* Decodes %XX and '+' in place. A malformed %-escape stays as it is. */
static void
url_decode(char *s)
{
    char *out = s;
    for (const char *in = s; *in != '\0'; in++) {
        int hi = in[0] == '%' ? hex_value(in[1]) : -1;
        int lo = hi >= 0 ? hex_value(in[2]) : -1;
        if (lo >= 0) {
            *out++ = (char)(hi * 16 + lo);
            in += 2;
        } else {
            *out++ = *in == '+' ? ' ' : *in;
        }
    }
    *out = '\0';
}

/* Applies every name=value pair of the query string (modified in place). */
static bool
read_query(struct params *prm, char *query)
{
    char *save = NULL;
    for (char *pair = strtok_r(query, "&", &save); pair != NULL;
         pair = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(pair, '=');
        char *value = eq != NULL ? eq + 1 : pair + strlen(pair);
        if (eq != NULL)
            *eq = '\0';
        url_decode(pair);
        url_decode(value);
        if (!apply_param(prm, pair, value))
            return false;
    }
    return true;
}

/* Applies the X-Test-* header fields in order. */
static bool
read_headers(struct params *prm, const struct request *req)
{
    size_t plen = strlen(HEADER_PREFIX);
    for (size_t i = 0; i < req->header_count; i++) {
        const struct header *h = &req->headers[i];
        if (strncasecmp(h->name, HEADER_PREFIX, plen) != 0)
            continue;

        char name[64];
        size_t n = strlen(h->name + plen);
        if (n == 0 || n >= sizeof(name))
            continue;
        for (size_t j = 0; j <= n; j++) {
            char c = h->name[plen + j];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            name[j] = c == '-' ? '_' : c;
        }
        if (!apply_param(prm, name, h->value))
            return false;
    }
    return true;
}

bool
params_read(struct params *prm, const struct request *req)
{
    *prm = (struct params){.status = 200, .fail_status = 503, .seed = 1};
    buf_init(&prm->extra_headers, 64 * KIB);

    if (!read_headers(prm, req))
        return false;

    const char *q = strchr(req->target, '?');
    if (q == NULL)
        return true;
    char *query = strdup(q + 1);
    if (query == NULL) {
        snprintf(prm->error, sizeof(prm->error), "out of memory");
        return false;
    }
    bool ok = read_query(prm, query);
    free(query);
    return ok;
}

void
params_free(struct params *prm)
{
    buf_free(&prm->extra_headers);
}
