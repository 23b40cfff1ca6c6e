/*
 * Growable capped buffers.
 */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int
reserve(struct gw_buf *buf, size_t extra)
{
    if (extra > buf->max || buf->len > buf->max - extra) {
        buf->failed = true;
        return -1;
    }
    size_t need = buf->len + extra + 1;
    if (need <= buf->capacity)
        return 0;
    size_t cap = buf->capacity ? buf->capacity : 256;
    while (cap < need)
        cap *= 2;
    char *data = realloc(buf->data, cap);
    if (data == NULL) {
        buf->failed = true;
        return -1;
    }
    buf->data = data;
    buf->capacity = cap;
    return 0;
}

int
gw_buf_append(struct gw_buf *buf, const void *data, size_t len)
{
    if (reserve(buf, len) != 0)
        return -1;
    if (len > 0)
        memcpy(buf->data + buf->len, data, len);
    buf->len += len;
    buf->data[buf->len] = '\0';
    return 0;
}

int
gw_buf_printf(struct gw_buf *buf, const char *fmt, ...)
{
    va_list ap;
    char small[512];

    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        buf->failed = true;
        return -1;
    }
    if ((size_t)n < sizeof(small))
        return gw_buf_append(buf, small, (size_t)n);

    if (reserve(buf, (size_t)n) != 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf(buf->data + buf->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    buf->len += (size_t)n;
    return 0;
}

void
gw_buf_free(struct gw_buf *buf)
{
    free(buf->data);
    buf->data = NULL;
    buf->len = 0;
    buf->capacity = 0;
}

char *
gw_buf_take(struct gw_buf *buf, size_t *len)
{
    char *data = buf->data;

    *len = buf->len;
    buf->data = NULL;
    buf->len = 0;
    buf->capacity = 0;
    return data;
}
