/*
 * Byte buffers with a hard cap, for request input, decoded bodies and
 * replies. Single-threaded like the rest of test-upstream.
 */
#include "upstream.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void
buf_init(struct buf *b, size_t max)
{
    *b = (struct buf){.max = max};
}

void
buf_free(struct buf *b)
{
    free(b->data);
    buf_init(b, b->max);
}

bool
buf_reserve(struct buf *b, size_t extra)
{
    if (extra > b->max || b->len > b->max - extra)
        return false;

    /* One byte more than asked keeps room for the terminating NUL. */
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return true;

    size_t cap = b->cap < 256 ? 256 : b->cap;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;

    char *data = realloc(b->data, cap);
    if (data == NULL)
        return false;
    b->data = data;
    b->cap = cap;
    return true;
}

bool
buf_append(struct buf *b, const void *data, size_t len)
{
    if (!buf_reserve(b, len))
        return false;
    if (len > 0)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return true;
}

bool
buf_append_str(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

bool
buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !buf_reserve(b, (size_t)n))
        return false;

    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return true;
}

bool
buf_append_json(struct buf *b, const char *s, size_t len)
{
    if (!buf_append(b, "\"", 1))
        return false;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ok;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            ok = buf_append(b, esc, 2);
        } else if (c < 0x20 || c == 0x7f) {
            ok = buf_printf(b, "\\u%04x", c);
        } else {
            /*
             * Bytes of 0x80 and above pass through, so the text is valid
             * JSON only if the request was valid UTF-8.
             */
            ok = buf_append(b, &s[i], 1);
        }
        if (!ok)
            return false;
    }
    return buf_append(b, "\"", 1);
}

void
buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data != NULL)
        b->data[b->len] = '\0';
}
