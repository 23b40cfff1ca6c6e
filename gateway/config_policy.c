/*
 * Parsing a route's policy blocks (rate_limit, breaker, bulkhead, retry) and
 * its fallbacks. Ranges and defaults come from libworkshop's headers, so the
 * config accepts exactly what the library does.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "config_internal.h"
#include "headers.h"

/* The largest body_file a static fallback reads at load. */
#define FALLBACK_BODY_MAX    (1024 * 1024)
#define FALLBACK_HEADERS_MAX 64

static const char *const reason_names[GW_REASON_COUNT] = {
    "rate_limited", "breaker_open",   "bulkhead_full",
    "timeout",      "upstream_error", "status_5xx",
};

const char *
gw_reason_name(enum gw_fallback_reason reason)
{
    return reason_names[gw_reason_index(reason)];
}

unsigned
gw_reason_index(enum gw_fallback_reason reason)
{
    unsigned i = 0;

    while (i + 1 < GW_REASON_COUNT && ((unsigned)reason >> i) != 1)
        i++;
    return i;
}

/* Reads an optional integer knob into a uint32_t field. */
static int
knob(struct validator *v, const cJSON *obj, const char *path, const char *key,
     long min, long max, long def, const char *unit, uint32_t *out)
{
    long value;

    if (cfg_int(v, obj, path, key, min, max, def, unit, &value) != 0)
        return -1;
    *out = (uint32_t)value;
    return 0;
}

static int
parse_rate_limit(struct validator *v, const cJSON *route_obj,
                 const char *route_path, struct gw_rate_limit_config *rl)
{
    static const char *const keys[] = {"rate",     "burst",   "key",
                                       "max_keys", "idle_ms", NULL};
    char path[CFG_PATH_MAX], sub[CFG_PATH_MAX];
    const cJSON *obj =
        cJSON_GetObjectItemCaseSensitive(route_obj, "rate_limit");
    const char *key = NULL;

    if (obj == NULL)
        return 0;
    cfg_path_key(path, sizeof(path), route_path, "rate_limit");
    wk_ratelimit_config_init(&rl->lib);
    if (cfg_expect_object(v, obj, path) != 0 ||
        cfg_check_keys(v, obj, path, keys) != 0 ||
        cfg_double(v, obj, path, "rate", WK_RATELIMIT_MIN_RATE,
                   WK_RATELIMIT_MAX_RATE, WK_RATELIMIT_DEFAULT_RATE,
                   "requests per second", &rl->lib.rate) != 0 ||
        knob(v, obj, path, "burst", WK_RATELIMIT_MIN_BURST,
             WK_RATELIMIT_MAX_BURST, WK_RATELIMIT_DEFAULT_BURST, "requests",
             &rl->lib.burst) != 0 ||
        cfg_string(v, obj, path, "key", false, 128, &key) != 0)
        return -1;

    cfg_path_key(sub, sizeof(sub), path, "key");
    if (key == NULL || strcmp(key, "global") == 0) {
        rl->key = GW_LIMIT_KEY_GLOBAL;
    } else if (strcmp(key, "client_ip") == 0) {
        rl->key = GW_LIMIT_KEY_CLIENT_IP;
    } else if (strncmp(key, "header:", 7) == 0 && key[7] != '\0') {
        rl->key = GW_LIMIT_KEY_HEADER;
        rl->header = strdup(key + 7);
        if (rl->header == NULL)
            return cfg_fail(v, sub, NULL, "out of memory");
    } else {
        return cfg_fail(v, sub, cJSON_GetObjectItemCaseSensitive(obj, "key"),
                        "is not a limiter key; use \"global\", "
                        "\"client_ip\" or \"header:NAME\"");
    }
    /* A keyed limiter needs a table; 10,000 keys is about 1 MiB. */
    long def_keys = rl->key == GW_LIMIT_KEY_GLOBAL ? 0 : 10000;
    if (knob(v, obj, path, "max_keys", rl->key == GW_LIMIT_KEY_GLOBAL ? 0 : 1,
             WK_RATELIMIT_MAX_MAX_KEYS, def_keys, "keys",
             &rl->lib.max_keys) != 0 ||
        knob(v, obj, path, "idle_ms", WK_RATELIMIT_MIN_IDLE_MS,
             WK_RATELIMIT_MAX_IDLE_MS, WK_RATELIMIT_DEFAULT_IDLE_MS,
             "milliseconds", &rl->lib.idle_ms) != 0)
        return -1;
    if (rl->key == GW_LIMIT_KEY_GLOBAL && rl->lib.max_keys != 0) {
        cfg_path_key(sub, sizeof(sub), path, "max_keys");
        return cfg_fail(v, sub,
                        cJSON_GetObjectItemCaseSensitive(obj, "max_keys"),
                        "is set but key is \"global\", which has one "
                        "bucket; set key to \"client_ip\" or "
                        "\"header:NAME\", or drop max_keys");
    }
    rl->enabled = true;
    return 0;
}

static int
parse_breaker(struct validator *v, const cJSON *route_obj,
              const char *route_path, struct gw_breaker_config *b)
{
    static const char *const keys[] = {"trip",
                                       "window_ms",
                                       "buckets",
                                       "min_requests",
                                       "error_percent",
                                       "consecutive_failures",
                                       "failures_per_second",
                                       "burst",
                                       "slow_call_ms",
                                       "slow_percent",
                                       "open_ms",
                                       "half_open_requests",
                                       NULL};
    char path[CFG_PATH_MAX], sub[CFG_PATH_MAX];
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(route_obj, "breaker");
    const char *trip = NULL;
    struct wk_breaker_config *c = &b->lib;

    if (obj == NULL)
        return 0;
    cfg_path_key(path, sizeof(path), route_path, "breaker");
    wk_breaker_config_init(c);
    if (cfg_expect_object(v, obj, path) != 0 ||
        cfg_check_keys(v, obj, path, keys) != 0 ||
        cfg_string(v, obj, path, "trip", false, 64, &trip) != 0)
        return -1;
    cfg_path_key(sub, sizeof(sub), path, "trip");
    if (trip == NULL || strcmp(trip, "error_percent") == 0)
        c->trip = WK_BREAKER_TRIP_ERROR_PERCENT;
    else if (strcmp(trip, "consecutive_failures") == 0)
        c->trip = WK_BREAKER_TRIP_CONSECUTIVE;
    else if (strcmp(trip, "failure_rate") == 0)
        c->trip = WK_BREAKER_TRIP_FAILURE_RATE;
    else
        return cfg_fail(v, sub, cJSON_GetObjectItemCaseSensitive(obj, "trip"),
                        "is not a trip rule; use \"error_percent\", "
                        "\"consecutive_failures\" or \"failure_rate\"");

    if (knob(v, obj, path, "window_ms", WK_BREAKER_MIN_WINDOW_MS,
             WK_BREAKER_MAX_WINDOW_MS, WK_BREAKER_DEFAULT_WINDOW_MS,
             "milliseconds", &c->window_ms) != 0 ||
        knob(v, obj, path, "buckets", WK_BREAKER_MIN_BUCKETS,
             WK_BREAKER_MAX_BUCKETS, WK_BREAKER_DEFAULT_BUCKETS, "buckets",
             &c->buckets) != 0 ||
        knob(v, obj, path, "min_requests", WK_BREAKER_MIN_MIN_REQUESTS,
             WK_BREAKER_MAX_MIN_REQUESTS, WK_BREAKER_DEFAULT_MIN_REQUESTS,
             "calls", &c->min_requests) != 0 ||
        knob(v, obj, path, "error_percent", WK_BREAKER_MIN_ERROR_PERCENT,
             WK_BREAKER_MAX_ERROR_PERCENT, WK_BREAKER_DEFAULT_ERROR_PERCENT,
             "percent", &c->error_percent) != 0 ||
        knob(v, obj, path, "consecutive_failures",
             WK_BREAKER_MIN_CONSECUTIVE_FAILURES,
             WK_BREAKER_MAX_CONSECUTIVE_FAILURES,
             WK_BREAKER_DEFAULT_CONSECUTIVE_FAILURES, "calls",
             &c->consecutive_failures) != 0 ||
        cfg_double(v, obj, path, "failures_per_second",
                   WK_BREAKER_MIN_FAILURES_PER_SECOND,
                   WK_BREAKER_MAX_FAILURES_PER_SECOND,
                   WK_BREAKER_DEFAULT_FAILURES_PER_SECOND,
                   "failures per second", &c->failures_per_second) != 0 ||
        knob(v, obj, path, "burst", WK_BREAKER_MIN_BURST, WK_BREAKER_MAX_BURST,
             WK_BREAKER_DEFAULT_BURST, "failures", &c->burst) != 0 ||
        knob(v, obj, path, "slow_call_ms", WK_BREAKER_MIN_SLOW_CALL_MS,
             WK_BREAKER_MAX_SLOW_CALL_MS, WK_BREAKER_DEFAULT_SLOW_CALL_MS,
             "milliseconds", &c->slow_call_ms) != 0 ||
        knob(v, obj, path, "slow_percent", WK_BREAKER_MIN_SLOW_PERCENT,
             WK_BREAKER_MAX_SLOW_PERCENT, WK_BREAKER_DEFAULT_SLOW_PERCENT,
             "percent", &c->slow_percent) != 0 ||
        knob(v, obj, path, "open_ms", WK_BREAKER_MIN_OPEN_MS,
             WK_BREAKER_MAX_OPEN_MS, WK_BREAKER_DEFAULT_OPEN_MS, "milliseconds",
             &c->open_ms) != 0 ||
        knob(v, obj, path, "half_open_requests",
             WK_BREAKER_MIN_HALF_OPEN_REQUESTS,
             WK_BREAKER_MAX_HALF_OPEN_REQUESTS,
             WK_BREAKER_DEFAULT_HALF_OPEN_REQUESTS, "calls",
             &c->half_open_requests) != 0)
        return -1;

    if (c->window_ms % c->buckets != 0) {
        cfg_path_key(sub, sizeof(sub), path, "window_ms");
        return cfg_fail(v, sub, NULL,
                        "%u is not a multiple of buckets (%u); each bucket "
                        "covers window_ms / buckets",
                        (unsigned)c->window_ms, (unsigned)c->buckets);
    }
    const char *field = NULL;
    if (wk_breaker_config_check(c, &field) != 0) {
        cfg_path_key(sub, sizeof(sub), path, field != NULL ? field : "");
        return cfg_fail(v, sub, NULL,
                        "is invalid with the other breaker settings");
    }
    b->enabled = true;
    return 0;
}

static int
parse_bulkhead(struct validator *v, const cJSON *route_obj,
               const char *route_path, struct gw_bulkhead_config *b)
{
    static const char *const keys[] = {"max_concurrent", "max_wait",
                                       "max_wait_ms", NULL};
    char path[CFG_PATH_MAX];
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(route_obj, "bulkhead");

    if (obj == NULL)
        return 0;
    cfg_path_key(path, sizeof(path), route_path, "bulkhead");
    wk_bulkhead_config_init(&b->lib);
    if (cfg_expect_object(v, obj, path) != 0 ||
        cfg_check_keys(v, obj, path, keys) != 0 ||
        knob(v, obj, path, "max_concurrent", WK_BULKHEAD_MIN_MAX_CONCURRENT,
             WK_BULKHEAD_MAX_MAX_CONCURRENT, WK_BULKHEAD_DEFAULT_MAX_CONCURRENT,
             "calls", &b->lib.max_concurrent) != 0 ||
        knob(v, obj, path, "max_wait", WK_BULKHEAD_MIN_MAX_WAIT,
             WK_BULKHEAD_MAX_MAX_WAIT, WK_BULKHEAD_DEFAULT_MAX_WAIT,
             "waiting calls", &b->lib.max_wait) != 0 ||
        knob(v, obj, path, "max_wait_ms", WK_BULKHEAD_MIN_MAX_WAIT_MS,
             WK_BULKHEAD_MAX_MAX_WAIT_MS, WK_BULKHEAD_DEFAULT_MAX_WAIT_MS,
             "milliseconds", &b->lib.max_wait_ms) != 0)
        return -1;
    b->enabled = true;
    return 0;
}

/* Reads retry.on: condition names, or status codes as numbers. */
static int
parse_retry_on(struct validator *v, const cJSON *obj, const char *path,
               struct wk_retry_config *c)
{
    char sub[CFG_PATH_MAX], item_path[CFG_PATH_MAX];
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(obj, "on");
    const cJSON *item;
    size_t i = 0;

    if (list == NULL)
        return 0;
    cfg_path_key(sub, sizeof(sub), path, "on");
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) == 0)
        return cfg_fail(v, sub, list,
                        "is not a non-empty array of conditions, e.g. "
                        "[\"connect_failure\", \"timeout\", \"5xx\", 429]");
    c->on = 0;
    c->status_count = 0;
    cJSON_ArrayForEach(item, list)
    {
        cfg_path_index(item_path, sizeof(item_path), sub, i++);
        if (cJSON_IsNumber(item)) {
            double d = item->valuedouble;
            if (d < 100 || d > 599 || d != (double)(int)d)
                return cfg_fail(v, item_path, item,
                                "is not an HTTP status from 100 to 599");
            if (c->status_count == WK_RETRY_MAX_STATUSES)
                return cfg_fail(v, item_path, item,
                                "is one status too many; at most %d",
                                WK_RETRY_MAX_STATUSES);
            c->statuses[c->status_count++] = (uint16_t)d;
            c->on |= WK_RETRY_ON_STATUSES;
            continue;
        }
        unsigned flag =
            cJSON_IsString(item) ? wk_retry_on_from_name(item->valuestring) : 0;
        if (flag == 0 || flag == WK_RETRY_ON_STATUSES)
            return cfg_fail(v, item_path, item,
                            "is not a retry condition; use "
                            "\"connect_failure\", \"timeout\", \"5xx\", "
                            "\"gateway_error\", \"error\" or a status "
                            "number");
        c->on |= flag;
    }
    return 0;
}

static int
parse_retry(struct validator *v, const cJSON *route_obj, const char *route_path,
            struct gw_retry_config *r)
{
    static const char *const keys[] = {
        "attempts",           "on",
        "backoff_ms",         "max_backoff_ms",
        "budget_percent",     "budget_min_per_second",
        "budget_window_ms",   "non_idempotent",
        "per_try_timeout_ms", NULL};
    char path[CFG_PATH_MAX], sub[CFG_PATH_MAX];
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(route_obj, "retry");
    struct wk_retry_config *c = &r->lib;

    if (obj == NULL)
        return 0;
    cfg_path_key(path, sizeof(path), route_path, "retry");
    wk_retry_config_init(c);
    if (cfg_expect_object(v, obj, path) != 0 ||
        cfg_check_keys(v, obj, path, keys) != 0 ||
        knob(v, obj, path, "attempts", WK_RETRY_MIN_ATTEMPTS,
             WK_RETRY_MAX_ATTEMPTS, WK_RETRY_DEFAULT_ATTEMPTS, "attempts",
             &c->attempts) != 0 ||
        parse_retry_on(v, obj, path, c) != 0 ||
        knob(v, obj, path, "backoff_ms", WK_RETRY_MIN_BACKOFF_MS,
             WK_RETRY_MAX_BACKOFF_MS, WK_RETRY_DEFAULT_BACKOFF_MS,
             "milliseconds", &c->backoff_ms) != 0 ||
        knob(v, obj, path, "max_backoff_ms", WK_RETRY_MIN_MAX_BACKOFF_MS,
             WK_RETRY_MAX_MAX_BACKOFF_MS, WK_RETRY_DEFAULT_MAX_BACKOFF_MS,
             "milliseconds", &c->max_backoff_ms) != 0 ||
        knob(v, obj, path, "budget_percent", WK_RETRY_MIN_BUDGET_PERCENT,
             WK_RETRY_MAX_BUDGET_PERCENT, WK_RETRY_DEFAULT_BUDGET_PERCENT,
             "percent", &c->budget_percent) != 0 ||
        knob(v, obj, path, "budget_min_per_second",
             WK_RETRY_MIN_BUDGET_MIN_PER_SECOND,
             WK_RETRY_MAX_BUDGET_MIN_PER_SECOND,
             WK_RETRY_DEFAULT_BUDGET_MIN_PER_SECOND, "retries per second",
             &c->budget_min_per_second) != 0 ||
        knob(v, obj, path, "budget_window_ms", WK_RETRY_MIN_BUDGET_WINDOW_MS,
             WK_RETRY_MAX_BUDGET_WINDOW_MS, WK_RETRY_DEFAULT_BUDGET_WINDOW_MS,
             "milliseconds", &c->budget_window_ms) != 0 ||
        cfg_bool(v, obj, path, "non_idempotent", false,
                 &c->retry_non_idempotent) != 0 ||
        cfg_int(v, obj, path, "per_try_timeout_ms", 0, 3600000, 0,
                "milliseconds", &r->per_try_timeout_ms) != 0)
        return -1;

    if (c->max_backoff_ms < c->backoff_ms) {
        cfg_path_key(sub, sizeof(sub), path, "max_backoff_ms");
        return cfg_fail(v, sub, NULL,
                        "%u (the default when not set is %u) is less than "
                        "backoff_ms (%u); set max_backoff_ms to at least "
                        "backoff_ms",
                        (unsigned)c->max_backoff_ms,
                        (unsigned)WK_RETRY_DEFAULT_MAX_BACKOFF_MS,
                        (unsigned)c->backoff_ms);
    }
    if (c->budget_window_ms % WK_RETRY_BUDGET_BUCKETS != 0) {
        cfg_path_key(sub, sizeof(sub), path, "budget_window_ms");
        return cfg_fail(v, sub, NULL,
                        "%u is not a multiple of %d (the budget window has %d "
                        "buckets)",
                        (unsigned)c->budget_window_ms, WK_RETRY_BUDGET_BUCKETS,
                        WK_RETRY_BUDGET_BUCKETS);
    }
    const char *field = NULL;
    if (wk_retry_config_check(c, &field) != 0) {
        cfg_path_key(sub, sizeof(sub), path, field != NULL ? field : "");
        return cfg_fail(v, sub, NULL,
                        "is invalid with the other retry settings");
    }
    r->enabled = true;
    return 0;
}

/* --- fallbacks ----------------------------------------------------------- */

static int
parse_reasons(struct validator *v, const cJSON *obj, const char *path,
              unsigned *on)
{
    char sub[CFG_PATH_MAX], item_path[CFG_PATH_MAX];
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(obj, "on");
    const cJSON *item;
    size_t i = 0;

    *on = GW_REASON_DEFAULT;
    if (list == NULL)
        return 0;
    cfg_path_key(sub, sizeof(sub), path, "on");
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) == 0)
        return cfg_fail(v, sub, list,
                        "is not a non-empty array of reasons, e.g. "
                        "[\"breaker_open\", \"timeout\"]");
    *on = 0;
    cJSON_ArrayForEach(item, list)
    {
        unsigned bit = 0;

        cfg_path_index(item_path, sizeof(item_path), sub, i++);
        for (unsigned k = 0; k < GW_REASON_COUNT && cJSON_IsString(item); k++) {
            if (strcmp(item->valuestring, reason_names[k]) == 0)
                bit = 1u << k;
        }
        if (bit == 0)
            return cfg_fail(v, item_path, item,
                            "is not a fallback reason; use rate_limited, "
                            "breaker_open, bulkhead_full, timeout, "
                            "upstream_error or status_5xx");
        *on |= bit;
    }
    return 0;
}

static char *
read_body_file(struct validator *v, const char *path, const char *file,
               size_t *len)
{
    FILE *f = fopen(file, "rb");
    char *body = NULL;

    if (f == NULL) {
        cfg_fail(v, path, NULL, "\"%s\" cannot be opened: %s", file,
                 strerror(errno));
        return NULL;
    }
    body = malloc(FALLBACK_BODY_MAX + 1);
    if (body == NULL) {
        cfg_fail(v, path, NULL, "out of memory");
        fclose(f);
        return NULL;
    }
    *len = fread(body, 1, FALLBACK_BODY_MAX + 1, f);
    bool failed = ferror(f) != 0;
    fclose(f);
    if (failed || *len > FALLBACK_BODY_MAX) {
        cfg_fail(v, path, NULL, "\"%s\" %s", file,
                 failed ? "cannot be read"
                        : "is larger than 1 MiB, the limit for a fallback "
                          "body");
        free(body);
        return NULL;
    }
    return body;
}

static int
parse_static_headers(struct validator *v, const cJSON *obj, const char *path,
                     struct gw_fallback *fb)
{
    char sub[CFG_PATH_MAX], item_path[CFG_PATH_MAX];
    const cJSON *headers = cJSON_GetObjectItemCaseSensitive(obj, "headers");
    const cJSON *item;

    if (headers == NULL)
        return 0;
    cfg_path_key(sub, sizeof(sub), path, "headers");
    if (!cJSON_IsObject(headers) ||
        cJSON_GetArraySize(headers) > FALLBACK_HEADERS_MAX)
        return cfg_fail(v, sub, headers,
                        "is not an object of at most %d \"Name\": "
                        "\"value\" pairs",
                        FALLBACK_HEADERS_MAX);
    fb->headers =
        calloc((size_t)cJSON_GetArraySize(headers) + 1, sizeof(*fb->headers));
    if (fb->headers == NULL)
        return cfg_fail(v, sub, NULL, "out of memory");
    cJSON_ArrayForEach(item, headers)
    {
        cfg_path_key(item_path, sizeof(item_path), sub, item->string);
        bool name_ok = item->string[0] != '\0';
        for (const char *c = item->string; *c != '\0'; c++)
            name_ok = name_ok && *c > ' ' && *c < 0x7f && *c != ':';
        if (!name_ok)
            return cfg_fail(v, item_path, NULL, "is not a valid header name");
        /* The gateway frames the response itself. */
        if (gw_header_is_hop_by_hop(item->string) ||
            strcasecmp(item->string, "Content-Length") == 0)
            return cfg_fail(v, item_path, NULL,
                            "is set by the gateway; remove it");
        for (size_t k = 0; k < fb->header_count; k++) {
            if (strcasecmp(fb->headers[k].name, item->string) == 0)
                return cfg_fail(v, item_path, NULL,
                                "appears twice; give each header once");
        }
        if (!cJSON_IsString(item) || strpbrk(item->valuestring, "\r\n") != NULL)
            return cfg_fail(v, item_path, item,
                            "is not a header value: expected a string "
                            "without CR or LF");
        struct gw_header_pair *h = &fb->headers[fb->header_count++];
        h->name = strdup(item->string);
        h->value = strdup(item->valuestring);
        if (h->name == NULL || h->value == NULL)
            return cfg_fail(v, item_path, NULL, "out of memory");
    }
    return 0;
}

static int
parse_static(struct validator *v, const cJSON *obj, const char *path,
             struct gw_fallback *fb)
{
    char sub[CFG_PATH_MAX];
    const char *body = NULL, *file = NULL;
    long status;

    fb->kind = GW_FALLBACK_STATIC;
    if (cfg_int(v, obj, path, "status", 200, 599, 503, "HTTP status",
                &status) != 0 ||
        parse_static_headers(v, obj, path, fb) != 0)
        return -1;
    fb->status = (unsigned)status;
    const cJSON *body_item = cJSON_GetObjectItemCaseSensitive(obj, "body");
    cfg_path_key(sub, sizeof(sub), path, "body");
    if (body_item != NULL && !cJSON_IsString(body_item))
        return cfg_fail(v, sub, body_item, "is %s; expected a string",
                        cfg_type_name(body_item));
    body = body_item != NULL ? body_item->valuestring : NULL;
    if (cfg_string(v, obj, path, "body_file", false, 4096, &file) != 0)
        return -1;
    if (body != NULL && file != NULL)
        return cfg_fail(v, sub, NULL, "and body_file are both set; give one");
    if (body != NULL && strlen(body) > FALLBACK_BODY_MAX)
        return cfg_fail(v, sub, NULL, "is larger than 1 MiB");
    if (file != NULL) {
        cfg_path_key(sub, sizeof(sub), path, "body_file");
        fb->body = read_body_file(v, sub, file, &fb->body_len);
        return fb->body != NULL ? 0 : -1;
    }
    fb->body = strdup(body != NULL ? body : "");
    fb->body_len = body != NULL ? strlen(body) : 0;
    if (fb->body == NULL)
        return cfg_fail(v, sub, NULL, "out of memory");
    return 0;
}

static int
parse_alternate(struct validator *v, const cJSON *obj, const char *path,
                struct gw_fallback *fb)
{
    static const char *const keys[] = {"url", "connect_timeout_ms",
                                       "timeout_ms", NULL};
    char sub[CFG_PATH_MAX], url_path[CFG_PATH_MAX];
    const char *url;
    const cJSON *up = cJSON_GetObjectItemCaseSensitive(obj, "upstream");

    fb->kind = GW_FALLBACK_UPSTREAM;
    cfg_path_key(sub, sizeof(sub), path, "upstream");
    if (cfg_expect_object(v, up, sub) != 0 ||
        cfg_check_keys(v, up, sub, keys) != 0 ||
        cfg_string(v, up, sub, "url", true, 2048, &url) != 0)
        return -1;
    cfg_path_key(url_path, sizeof(url_path), sub, "url");
    if (cfg_url(v, cJSON_GetObjectItemCaseSensitive(up, "url"), url_path,
                &fb->upstream_url, &fb->upstream_base) != 0 ||
        cfg_int(v, up, sub, "connect_timeout_ms", 1, 600000, 1000,
                "milliseconds", &fb->connect_timeout_ms) != 0 ||
        cfg_int(v, up, sub, "timeout_ms", 1, 3600000, 5000, "milliseconds",
                &fb->timeout_ms) != 0)
        return -1;
    if (cJSON_GetObjectItemCaseSensitive(up, "connect_timeout_ms") == NULL &&
        fb->connect_timeout_ms > fb->timeout_ms)
        fb->connect_timeout_ms = fb->timeout_ms;
    if (fb->connect_timeout_ms > fb->timeout_ms) {
        cfg_path_key(url_path, sizeof(url_path), sub, "connect_timeout_ms");
        return cfg_fail(v, url_path, NULL,
                        "is larger than timeout_ms (%ld); lower it",
                        fb->timeout_ms);
    }
    return 0;
}

static int
parse_stale(struct validator *v, const cJSON *obj, const char *path,
            struct gw_fallback *fb)
{
    static const char *const keys[] = {"max_age_ms", "max_bytes", NULL};
    char sub[CFG_PATH_MAX];
    const cJSON *stale = cJSON_GetObjectItemCaseSensitive(obj, "stale");

    fb->kind = GW_FALLBACK_STALE;
    cfg_path_key(sub, sizeof(sub), path, "stale");
    if (cfg_expect_object(v, stale, sub) != 0 ||
        cfg_check_keys(v, stale, sub, keys) != 0 ||
        cfg_int(v, stale, sub, "max_age_ms", 1, 86400000, 60000, "milliseconds",
                &fb->max_age_ms) != 0 ||
        cfg_int(v, stale, sub, "max_bytes", 1024, 1073741824, 10485760, "bytes",
                &fb->max_bytes) != 0)
        return -1;
    return 0;
}

static int
parse_fallback(struct validator *v, const cJSON *obj, const char *path,
               struct gw_fallback *fb)
{
    static const char *const keys[] = {"on",    "status",    "headers",
                                       "body",  "body_file", "upstream",
                                       "stale", NULL};
    bool has_upstream = cJSON_GetObjectItemCaseSensitive(obj, "upstream");
    bool has_stale = cJSON_GetObjectItemCaseSensitive(obj, "stale");
    bool has_static = cJSON_GetObjectItemCaseSensitive(obj, "status") ||
                      cJSON_GetObjectItemCaseSensitive(obj, "headers") ||
                      cJSON_GetObjectItemCaseSensitive(obj, "body") ||
                      cJSON_GetObjectItemCaseSensitive(obj, "body_file");

    if (cfg_expect_object(v, obj, path) != 0 ||
        cfg_check_keys(v, obj, path, keys) != 0 ||
        parse_reasons(v, obj, path, &fb->on) != 0)
        return -1;
    if (has_upstream + has_stale + has_static > 1)
        return cfg_fail(v, path, NULL,
                        "mixes kinds; a fallback is either a static "
                        "response (status, headers, body), an "
                        "\"upstream\" or \"stale\"");
    if (has_upstream)
        return parse_alternate(v, obj, path, fb);
    if (has_stale)
        return parse_stale(v, obj, path, fb);
    return parse_static(v, obj, path, fb);
}

static int
parse_fallbacks(struct validator *v, const cJSON *route_obj,
                const char *route_path, struct gw_route *route)
{
    char path[CFG_PATH_MAX], item_path[CFG_PATH_MAX];
    const cJSON *value =
        cJSON_GetObjectItemCaseSensitive(route_obj, "fallback");

    if (value == NULL)
        return 0;
    cfg_path_key(path, sizeof(path), route_path, "fallback");
    if (cJSON_IsObject(value)) {
        route->fallbacks = calloc(1, sizeof(*route->fallbacks));
        if (route->fallbacks == NULL)
            return cfg_fail(v, path, NULL, "out of memory");
        route->fallback_count = 1;
        return parse_fallback(v, value, path, &route->fallbacks[0]);
    }
    if (!cJSON_IsArray(value) || cJSON_GetArraySize(value) == 0 ||
        cJSON_GetArraySize(value) > 8)
        return cfg_fail(v, path, value,
                        "is not a fallback object or an array of 1 to 8 of "
                        "them");
    size_t count = (size_t)cJSON_GetArraySize(value);
    route->fallbacks = calloc(count, sizeof(*route->fallbacks));
    if (route->fallbacks == NULL)
        return cfg_fail(v, path, NULL, "out of memory");
    const cJSON *item;
    cJSON_ArrayForEach(item, value)
    {
        size_t i = route->fallback_count++;
        cfg_path_index(item_path, sizeof(item_path), path, i);
        if (parse_fallback(v, item, item_path, &route->fallbacks[i]) != 0)
            return -1;
        if (route->fallbacks[i].kind == GW_FALLBACK_STALE) {
            for (size_t j = 0; j < i; j++) {
                if (route->fallbacks[j].kind == GW_FALLBACK_STALE)
                    return cfg_fail(v, item_path, NULL,
                                    "is a second stale fallback; a route "
                                    "has one stale cache");
            }
        }
    }
    return 0;
}

/*
 * Keeps the policy blocks as compact JSON: a reload compares them to decide
 * whether a route keeps its breaker and limiter state.
 */
static int
record_settings(struct validator *v, const cJSON *obj, const char *path,
                struct gw_route *route)
{
    static const char *const keys[] = {"rate_limit", "breaker",  "bulkhead",
                                       "retry",      "fallback", NULL};
    cJSON *subset = cJSON_CreateObject();

    if (subset == NULL)
        return cfg_fail(v, path, NULL, "out of memory");
    for (size_t i = 0; keys[i] != NULL; i++) {
        const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, keys[i]);
        if (item != NULL)
            cJSON_AddItemReferenceToObject(subset, keys[i], (cJSON *)item);
    }
    route->policy_settings = cJSON_PrintUnformatted(subset);
    cJSON_Delete(subset);
    if (route->policy_settings == NULL)
        return cfg_fail(v, path, NULL, "out of memory");
    return 0;
}

int
cfg_route_policies(struct validator *v, const cJSON *obj, const char *path,
                   struct gw_route *route)
{
    if (parse_rate_limit(v, obj, path, &route->rate_limit) != 0 ||
        parse_breaker(v, obj, path, &route->breaker) != 0 ||
        parse_bulkhead(v, obj, path, &route->bulkhead) != 0 ||
        parse_retry(v, obj, path, &route->retry) != 0 ||
        parse_fallbacks(v, obj, path, route) != 0)
        return -1;
    return record_settings(v, obj, path, route);
}

void
cfg_route_policies_free(struct gw_route *route)
{
    free(route->rate_limit.header);
    for (size_t i = 0; i < route->fallback_count; i++) {
        struct gw_fallback *fb = &route->fallbacks[i];
        for (size_t k = 0; k < fb->header_count; k++) {
            free(fb->headers[k].name);
            free(fb->headers[k].value);
        }
        free(fb->headers);
        free(fb->body);
        free(fb->upstream_url);
        free(fb->upstream_base);
    }
    free(route->fallbacks);
    free(route->policy_settings);
}
