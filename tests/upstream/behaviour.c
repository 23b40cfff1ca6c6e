/*
 * Turns a parsed request into the reply that its parameters ask for:
 * status, delay, body (default JSON, pattern, echo or mirror), extra header
 * fields, chunked coding, per-key failures, injected faults and chaos. Also
 * serves /__stats and /__reset.
 *
 * Every reply head carries X-Upstream-Request-Id, and Content-Length unless
 * the body is chunked. 204 replies carry neither (RFC 9110, 8.6).
 */
#include "upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Distinct key= values counted before /__reset is needed. */
#define MAX_KEYS 10000
/* Body bytes per chunk of a chunked reply. */
#define CHUNK_BYTES (8 * KIB)
/* Size of the header field that action=huge_head adds. */
#define HUGE_HEADER_BYTES MIB
/* Reply bytes beyond the body: head, chunk framing, huge header. */
#define REPLY_OVERHEAD (4 * MIB)

/* Returns the byte at offset i of a body_size= body. */
static char
pattern_byte(uint64_t i)
{
    return (char)('a' + i % 26);
}

static const char *
reason_phrase(int status)
{
    static const struct {
        int status;
        const char *reason;
    } reasons[] = {
        {200, "OK"},
        {201, "Created"},
        {202, "Accepted"},
        {204, "No Content"},
        {206, "Partial Content"},
        {301, "Moved Permanently"},
        {302, "Found"},
        {304, "Not Modified"},
        {307, "Temporary Redirect"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {408, "Request Timeout"},
        {413, "Content Too Large"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {501, "Not Implemented"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
        {504, "Gateway Timeout"},
        {505, "HTTP Version Not Supported"},
    };
    for (size_t i = 0; i < sizeof(reasons) / sizeof(*reasons); i++) {
        if (reasons[i].status == status)
            return reasons[i].reason;
    }
    return "Status";
}

/* Returns the 64-bit FNV-1a hash of data. */
static uint64_t
fnv1a64(const char *data, size_t len)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)data[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

/* Copies the request target's path, without the query, into out. */
static const char *
target_path(const struct request *req, char *out, size_t size)
{
    size_t len = strcspn(req->target, "?");
    if (len >= size)
        len = size - 1;
    memcpy(out, req->target, len);
    out[len] = '\0';
    return out;
}

void
reply_free(struct reply *reply)
{
    buf_free(&reply->out);
}

static void
reply_init(struct upstream_state *st, struct reply *reply)
{
    *reply = (struct reply){.id = ++st->sequence, .finish = FINISH_CLOSE};
    buf_init(&reply->out, MAX_RESPONSE_BODY + REPLY_OVERHEAD);
}

/* Drops a half-built reply: the client sees the connection close. */
static void
reply_out_of_memory(struct reply *reply)
{
    buf_free(&reply->out);
    reply->finish = FINISH_CLOSE;
    reply->status = 0;
    reply->action = "out of memory";
}

/* Builds a complete reply with a JSON body and no delay. */
static void
reply_simple(struct reply *reply, int status, bool keep_alive,
             const struct buf *json)
{
    reply->status = status;
    reply->finish = keep_alive ? FINISH_KEEP : FINISH_CLOSE;
    if (!buf_printf(&reply->out,
                    "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                    "Content-Length: %zu\r\nX-Upstream-Request-Id: %llu\r\n"
                    "%s\r\n",
                    status, reason_phrase(status), json->len,
                    (unsigned long long)reply->id,
                    keep_alive ? "" : "Connection: close\r\n") ||
        !buf_append(&reply->out, json->data, json->len))
        reply_out_of_memory(reply);
}

static void
reply_error(struct reply *reply, int status, bool keep_alive,
            const char *reason)
{
    struct buf json;
    buf_init(&json, 4 * KIB);
    if (buf_append_str(&json, "{\"error\":") &&
        buf_append_json(&json, reason, strlen(reason)) &&
        buf_append_str(&json, "}"))
        reply_simple(reply, status, keep_alive, &json);
    else
        reply_out_of_memory(reply);
    buf_free(&json);
}

void
upstream_respond_error(struct upstream_state *st, int status,
                       const char *reason, struct reply *reply)
{
    reply_init(st, reply);
    reply_error(reply, status, false, reason);
}

/* --- counters ----------------------------------------------------------- */

/* Counts one request carrying key. Returns its count, or 0 if full. */
static uint64_t
count_key(struct upstream_state *st, const char *key)
{
    for (size_t i = 0; i < st->key_count; i++) {
        if (strcmp(st->keys[i].key, key) == 0)
            return ++st->keys[i].count;
    }
    if (st->key_count == MAX_KEYS)
        return 0;
    if (st->key_count == st->key_cap) {
        size_t cap = st->key_cap == 0 ? 16 : st->key_cap * 2;
        struct key_count *keys = realloc(st->keys, cap * sizeof(*keys));
        if (keys == NULL)
            return 0;
        st->keys = keys;
        st->key_cap = cap;
    }
    char *copy = strdup(key);
    if (copy == NULL)
        return 0;
    st->keys[st->key_count++] = (struct key_count){copy, 1};
    return 1;
}

static void
reset_counters(struct upstream_state *st)
{
    for (size_t i = 0; i < st->key_count; i++)
        free(st->keys[i].key);
    st->key_count = 0;
    st->requests = 0;
    st->chaos_draws = 0;
}

void
upstream_state_destroy(struct upstream_state *st)
{
    reset_counters(st);
    free(st->keys);
    *st = (struct upstream_state){0};
}

static bool
append_stats(const struct upstream_state *st, struct buf *json)
{
    if (!buf_printf(json, "{\"requests\":%llu,\"by_key\":{",
                    (unsigned long long)st->requests))
        return false;
    for (size_t i = 0; i < st->key_count; i++) {
        const struct key_count *k = &st->keys[i];
        if ((i > 0 && !buf_append_str(json, ",")) ||
            !buf_append_json(json, k->key, strlen(k->key)) ||
            !buf_printf(json, ":%llu", (unsigned long long)k->count))
            return false;
    }
    return buf_printf(json, "},\"open_connections\":%zu}",
                      st->open_connections);
}

/* Serves GET /__stats and GET or POST /__reset. */
static void
reply_admin(struct upstream_state *st, const struct request *req, bool reset,
            struct reply *reply)
{
    bool get = strcmp(req->method, "GET") == 0;
    if (!get && !(reset && strcmp(req->method, "POST") == 0)) {
        reply_error(reply, 405, req->keep_alive,
                    reset ? "use GET or POST" : "use GET");
        return;
    }
    if (reset)
        reset_counters(st);

    struct buf json;
    buf_init(&json, 16 * MIB);
    if (append_stats(st, &json))
        reply_simple(reply, 200, req->keep_alive, &json);
    else
        reply_out_of_memory(reply);
    buf_free(&json);
}

/* --- chaos -------------------------------------------------------------- */

/*
 * Returns the next number of the chaos sequence for seed (splitmix64 of
 * the seed and the draw count). Requests that share a seed draw from one
 * sequence in arrival order, so a run with the same seed and request count
 * gets the same outcomes.
 */
static uint64_t
chaos_draw(struct upstream_state *st, uint64_t seed)
{
    if (seed != st->chaos_seed) {
        st->chaos_seed = seed;
        st->chaos_draws = 0;
    }
    uint64_t x = seed + ++st->chaos_draws * UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

/*
 * With probability chaos_percent, replaces the behaviour by one fault
 * picked at random and names it in *label for X-Upstream-Chaos.
 */
static void
apply_chaos(struct upstream_state *st, struct params *prm, char *label,
            size_t size)
{
    static const int statuses[] = {500, 502, 503};
    label[0] = '\0';
    if (prm->chaos_percent == 0 ||
        chaos_draw(st, prm->seed) % 100 >= prm->chaos_percent)
        return;

    switch (chaos_draw(st, prm->seed) % 5) {
    case 0:
        prm->delay_ms = (unsigned)(chaos_draw(st, prm->seed) % 501);
        snprintf(label, size, "delay_ms=%u", prm->delay_ms);
        break;
    case 1:
        prm->status = statuses[chaos_draw(st, prm->seed) % 3];
        prm->action = ACTION_NONE;
        snprintf(label, size, "status=%d", prm->status);
        break;
    case 2:
        prm->action = ACTION_RESET;
        break;
    case 3:
        prm->action = ACTION_CLOSE_MID_BODY;
        break;
    default:
        prm->action = ACTION_STALL_BODY;
        break;
    }
    if (label[0] == '\0')
        snprintf(label, size, "action=%s", action_name(prm->action));
}

/* --- bodies ------------------------------------------------------------- */

static bool
append_echo(const struct request *req, struct buf *body)
{
    if (!buf_append_str(body, "{\"method\":") ||
        !buf_append_json(body, req->method, strlen(req->method)) ||
        !buf_append_str(body, ",\"target\":") ||
        !buf_append_json(body, req->target, strlen(req->target)) ||
        !buf_append_str(body, ",\"version\":") ||
        !buf_append_json(body, req->version, strlen(req->version)) ||
        !buf_append_str(body, ",\"headers\":["))
        return false;
    for (size_t i = 0; i < req->header_count; i++) {
        const struct header *h = &req->headers[i];
        if (!buf_append_str(body, i > 0 ? ",[" : "[") ||
            !buf_append_json(body, h->name, strlen(h->name)) ||
            !buf_append_str(body, ",") ||
            !buf_append_json(body, h->value, strlen(h->value)) ||
            !buf_append_str(body, "]"))
            return false;
    }
    return buf_printf(
        body, "],\"body_length\":%zu,\"body_fnv1a64\":\"%016llx\"}",
        req->body.len,
        (unsigned long long)fnv1a64(req->body.data, req->body.len));
}

/* Builds the body the GET form of the request would get. */
static bool
build_body(const struct request *req, const struct params *prm,
           struct buf *body)
{
    if (prm->echo)
        return append_echo(req, body);
    if (prm->mirror)
        return buf_append(body, req->body.data, req->body.len);
    if (prm->has_body_size) {
        if (!buf_reserve(body, (size_t)prm->body_size))
            return false;
        for (uint64_t i = 0; i < prm->body_size; i++)
            body->data[i] = pattern_byte(i);
        body->len = (size_t)prm->body_size;
        body->data[body->len] = '\0';
        return true;
    }

    char path[1024];
    target_path(req, path, sizeof(path));
    return buf_append_str(body, "{\"upstream\":\"test\",\"path\":") &&
           buf_append_json(body, path, strlen(path)) &&
           buf_append_str(body, "}");
}

/* Appends body[0..len) as chunks, and the final zero chunk if last. */
static bool
append_chunked(struct buf *out, const char *body, size_t len, bool last)
{
    for (size_t off = 0; off < len; off += CHUNK_BYTES) {
        size_t n = len - off < CHUNK_BYTES ? len - off : CHUNK_BYTES;
        if (!buf_printf(out, "%zx\r\n", n) || !buf_append(out, body + off, n) ||
            !buf_append(out, "\r\n", 2))
            return false;
    }
    return !last || buf_append_str(out, "0\r\n\r\n");
}

/* --- replies ------------------------------------------------------------ */

struct reply_shape {
    bool send_body; /* false for HEAD, 204 and 304 */
    bool framing;   /* false for 204: neither Content-Length nor chunked */
    bool chunked;
    bool keep_alive;
    const char *content_type;
};

static bool
append_head(struct reply *reply, const struct request *req,
            const struct params *prm, const struct reply_shape *shape,
            size_t body_len, const char *chaos)
{
    struct buf *out = &reply->out;
    bool ok = buf_printf(out, "HTTP/1.1 %d %s\r\n", prm->status,
                         reason_phrase(prm->status));
    if (shape->framing && shape->chunked)
        ok = ok && buf_append_str(out, "Transfer-Encoding: chunked\r\n");
    else if (shape->framing)
        ok = ok && buf_printf(out, "Content-Length: %zu\r\n", body_len);
    if (!prm->extra_content_type && shape->framing)
        ok = ok && buf_printf(out, "Content-Type: %s\r\n", shape->content_type);
    ok = ok && buf_printf(out, "X-Upstream-Request-Id: %llu\r\n",
                          (unsigned long long)reply->id);
    if (ok && chaos[0] != '\0')
        ok = buf_printf(out, "X-Upstream-Chaos: %s\r\n", chaos);
    if (ok && !shape->keep_alive)
        ok = buf_append_str(out, "Connection: close\r\n");
    else if (ok && req->minor_version == 0)
        ok = buf_append_str(out, "Connection: keep-alive\r\n");
    if (ok && prm->action == ACTION_HUGE_HEAD) {
        ok = buf_append_str(out, "X-Huge: ") &&
             buf_reserve(out, HUGE_HEADER_BYTES);
        if (ok) {
            memset(out->data + out->len, 'h', HUGE_HEADER_BYTES);
            out->len += HUGE_HEADER_BYTES;
            ok = buf_append_str(out, "\r\n");
        }
    }
    return ok &&
           buf_append(out, prm->extra_headers.data, prm->extra_headers.len) &&
           buf_append_str(out, "\r\n");
}

/* Appends the body, or its first half for the mid-body faults. */
static bool
append_body(struct reply *reply, const struct params *prm,
            const struct reply_shape *shape, const struct buf *body)
{
    bool partial = prm->action == ACTION_CLOSE_MID_BODY ||
                   prm->action == ACTION_STALL_BODY;
    if (!shape->send_body)
        return true;
    size_t len = partial ? body->len / 2 : body->len;
    if (shape->chunked)
        return append_chunked(&reply->out, body->data, len, !partial);
    return buf_append(&reply->out, body->data, len);
}

static enum finish
finish_for(const struct params *prm, bool keep_alive)
{
    switch (prm->action) {
    case ACTION_CLOSE:
    case ACTION_CLOSE_MID_BODY:
    case ACTION_BAD_HEAD:
        return FINISH_CLOSE;
    case ACTION_RESET:
        return FINISH_RESET;
    case ACTION_STALL:
    case ACTION_STALL_BODY:
        return FINISH_STALL;
    case ACTION_NONE:
    case ACTION_HUGE_HEAD:
        break;
    }
    return keep_alive ? FINISH_KEEP : FINISH_CLOSE;
}

static void
build_reply(const struct request *req, const struct params *prm,
            const char *chaos, struct reply *reply)
{
    reply->delay_ms = prm->delay_ms;
    reply->status = prm->status;
    reply->finish = finish_for(prm, req->keep_alive);
    if (prm->action != ACTION_NONE)
        reply->action = action_name(prm->action);

    switch (prm->action) {
    case ACTION_CLOSE:
    case ACTION_RESET:
    case ACTION_STALL:
        reply->status = 0;
        return;
    case ACTION_BAD_HEAD:
        if (!buf_append_str(
                &reply->out,
                "HTTP/1.1 two hundred OK\r\nContent-Length: 0\r\n\r\n"))
            reply_out_of_memory(reply);
        return;
    default:
        break;
    }

    bool is_head = strcmp(req->method, "HEAD") == 0;
    bool plain = prm->echo || !(prm->mirror || prm->has_body_size);
    struct reply_shape shape = {
        .send_body = !is_head && prm->status != 204 && prm->status != 304,
        .framing = prm->status != 204,
        /* HTTP/1.0 clients do not know chunked coding. */
        .chunked = prm->chunked && req->minor_version == 1,
        .keep_alive = reply->finish == FINISH_KEEP,
        .content_type = plain ? "application/json" : "application/octet-stream",
    };

    struct buf body;
    buf_init(&body, MAX_RESPONSE_BODY);
    if (!build_body(req, prm, &body) ||
        !append_head(reply, req, prm, &shape, body.len, chaos) ||
        !append_body(reply, prm, &shape, &body))
        reply_out_of_memory(reply);
    buf_free(&body);
}

/* Applies key=, fail_first=, fail_status= and fail_action=. */
static bool
apply_key(struct upstream_state *st, struct params *prm, struct reply *reply,
          bool keep_alive)
{
    if (prm->key[0] == '\0')
        return true;
    uint64_t count = count_key(st, prm->key);
    if (count == 0) {
        reply_error(reply, 500, keep_alive,
                    "too many distinct keys: request /__reset");
        return false;
    }
    if (count <= prm->fail_first) {
        prm->status = prm->fail_status;
        prm->action = prm->fail_action;
    }
    return true;
}

void
upstream_respond(struct upstream_state *st, const struct request *req,
                 struct reply *reply)
{
    reply_init(st, reply);

    char path[64];
    target_path(req, path, sizeof(path));
    bool reset = strcmp(path, "/__reset") == 0;
    if (reset || strcmp(path, "/__stats") == 0) {
        reply_admin(st, req, reset, reply);
        return;
    }
    st->requests++;

    struct params prm;
    if (!params_read(&prm, req)) {
        reply_error(reply, 400, req->keep_alive, prm.error);
    } else if (apply_key(st, &prm, reply, req->keep_alive)) {
        char chaos[64];
        apply_chaos(st, &prm, chaos, sizeof(chaos));
        build_reply(req, &prm, chaos, reply);
    }
    params_free(&prm);
}
