/*
 * Formatting access log lines, as text or as JSON lines.
 *
 * Method and target come from the client, so both formats escape them. Text
 * writes '"', '\', spaces, control characters and bytes above 0x7e as
 * \xHH. JSON escapes per RFC 8259 and replaces each byte that is not valid
 * UTF-8 with U+FFFD, so every line parses. A line is at most
 * GW_LOG_LINE_MAX bytes because the target is cut to TARGET_MAX bytes of
 * output, ending in "...".
 */
#include "access_log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* Output bytes of the target, and of every other string, before the cut. */
#define TARGET_MAX 2048
#define FIELD_MAX  256
/* The longest JSON line fits, so a line is never cut in the middle. */
_Static_assert(TARGET_MAX + 5 * (FIELD_MAX + 5) + 400 < GW_LOG_LINE_MAX,
               "an access log line can exceed GW_LOG_LINE_MAX");

static const char hex[] = "0123456789abcdef";

struct line {
    char data[GW_LOG_LINE_MAX];
    size_t len;
    size_t limit; /* room for text; the newline goes after it */
};

static void
put(struct line *l, const char *s, size_t n)
{
    if (n > l->limit - l->len)
        n = l->limit - l->len;
    memcpy(l->data + l->len, s, n);
    l->len += n;
}

static void
put_str(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void
put_fmt(struct line *l, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        put(l, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void
put_time(struct line *l)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    put_fmt(l, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000);
}

/*
 * Returns the length of the valid UTF-8 sequence (RFC 3629) at s, or 0
 * when s does not start one. s is NUL-terminated, so reads stop at the NUL.
 */
static size_t
utf8_sequence(const unsigned char *s)
{
    unsigned char lo = 0x80, hi = 0xbf;
    size_t n;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        n = 2;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        n = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        n = 4;
    else
        return 0;
    /* The second byte's range excludes overlong forms and surrogates. */
    if (s[0] == 0xe0)
        lo = 0xa0;
    else if (s[0] == 0xed)
        hi = 0x9f;
    else if (s[0] == 0xf0)
        lo = 0x90;
    else if (s[0] == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    }
    return n;
}

/* Writes the JSON escape of the byte c (a control character, '"', '\'). */
static size_t
json_escape_byte(unsigned char c, char out[6])
{
    switch (c) {
    case '"':
        memcpy(out, "\\\"", 2);
        return 2;
    case '\\':
        memcpy(out, "\\\\", 2);
        return 2;
    case '\n':
        memcpy(out, "\\n", 2);
        return 2;
    case '\r':
        memcpy(out, "\\r", 2);
        return 2;
    case '\t':
        memcpy(out, "\\t", 2);
        return 2;
    default:
        memcpy(out, "\\u00", 4);
        out[4] = hex[c >> 4];
        out[5] = hex[c & 0xf];
        return 6;
    }
}

/*
 * Writes s as a JSON string, or null for NULL. Past max output bytes the
 * string ends with "...".
 */
static void
put_json_string(struct line *l, const char *s, size_t max)
{
    const unsigned char *c = (const unsigned char *)s;
    size_t used = 0;

    if (s == NULL) {
        put_str(l, "null");
        return;
    }
    put_str(l, "\"");
    while (*c != '\0') {
        char esc[6];
        const char *piece = (const char *)c;
        size_t in = 1, out = 1;
        if (*c < 0x20 || *c == '"' || *c == '\\') {
            out = json_escape_byte(*c, esc);
            piece = esc;
        } else if (*c >= 0x80) {
            in = utf8_sequence(c);
            out = in;
            if (in == 0) {
                piece = "\xef\xbf\xbd"; /* U+FFFD for an invalid byte */
                in = 1;
                out = 3;
            }
        }
        if (used + out > max) {
            put_str(l, "...");
            break;
        }
        put(l, piece, out);
        used += out;
        c += in;
    }
    put_str(l, "\"");
}

/*
 * Writes s for the text format, or "-" for NULL or "". Past max output
 * bytes it ends with "...".
 */
static void
put_text(struct line *l, const char *s, size_t max)
{
    size_t used = 0;

    if (s == NULL || *s == '\0') {
        put_str(l, "-");
        return;
    }
    for (const unsigned char *c = (const unsigned char *)s; *c != '\0'; c++) {
        bool plain = *c > 0x20 && *c < 0x7f && *c != '"' && *c != '\\';
        size_t out = plain ? 1 : 4;
        if (used + out > max) {
            put_str(l, "...");
            break;
        }
        if (plain) {
            put(l, (const char *)c, 1);
        } else {
            char esc[4] = {'\\', 'x', hex[*c >> 4], hex[*c & 0xf]};
            put(l, esc, 4);
        }
        used += out;
    }
}

static void
format_text(struct line *l, const struct gw_access_entry *e)
{
    put_time(l);
    put_str(l, " access ");
    put_text(l, e->client, FIELD_MAX);
    put_str(l, " \"");
    put_text(l, e->method, FIELD_MAX);
    put_str(l, " ");
    put_text(l, e->target, TARGET_MAX);
    put_str(l, "\" route=");
    put_text(l, e->route, FIELD_MAX);
    put_fmt(l, " status=%u upstream_status=", e->status);
    if (e->upstream_status > 0)
        put_fmt(l, "%ld", e->upstream_status);
    else
        put_str(l, "-");
    put_fmt(l, " attempts=%u duration_ms=%.3f fallback=", e->attempts,
            (double)e->duration_ns / 1e6);
    put_text(l, e->fallback, FIELD_MAX);
    put_str(l, " error=");
    put_text(l, e->error, FIELD_MAX);
    put_fmt(l, " request_id=%llu", (unsigned long long)e->request_id);
}

static void
format_json(struct line *l, const struct gw_access_entry *e)
{
    put_str(l, "{\"time\":\"");
    put_time(l);
    put_fmt(l, "\",\"request_id\":%llu,\"client\":",
            (unsigned long long)e->request_id);
    put_json_string(l, e->client, FIELD_MAX);
    put_str(l, ",\"method\":");
    put_json_string(l, e->method, FIELD_MAX);
    put_str(l, ",\"target\":");
    put_json_string(l, e->target, TARGET_MAX);
    put_str(l, ",\"route\":");
    put_json_string(l, e->route, FIELD_MAX);
    put_fmt(l, ",\"status\":%u,\"upstream_status\":", e->status);
    if (e->upstream_status > 0)
        put_fmt(l, "%ld", e->upstream_status);
    else
        put_str(l, "null");
    put_fmt(l,
            ",\"attempts\":%u,\"duration_ms\":%.3f,\"fallback\":", e->attempts,
            (double)e->duration_ns / 1e6);
    put_json_string(l, e->fallback, FIELD_MAX);
    put_str(l, ",\"error\":");
    put_json_string(l, e->error, FIELD_MAX);
    put_str(l, "}");
}

void
gw_access_log_write(enum gw_access_log format, const struct gw_access_entry *e)
{
    struct line l = {.len = 0, .limit = sizeof(l.data) - 1};

    if (format == GW_ACCESS_LOG_OFF)
        return;
    if (format == GW_ACCESS_LOG_JSON)
        format_json(&l, e);
    else
        format_text(&l, e);
    l.data[l.len++] = '\n';
    ssize_t written = write(gw_log_fd(), l.data, l.len);
    (void)written;
}
