/*
 * A growable byte buffer with a hard cap, for bodies and rendered text.
 *
 * Appends past the cap or past available memory fail and leave the buffer
 * as it was; the data stays NUL-terminated for text use.
 */
#ifndef GATEWAY_BUF_H
#define GATEWAY_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct gw_buf {
    char *data;
    size_t len;
    size_t capacity;
    size_t max;  /* appends that would pass max bytes fail */
    bool failed; /* an append has failed since the buffer was created */
};

/* Appends len bytes. Returns 0, or -1 (over max or out of memory). */
int gw_buf_append(struct gw_buf *buf, const void *data, size_t len);

/* Appends formatted text. Returns 0 or -1 as gw_buf_append(). */
int gw_buf_printf(struct gw_buf *buf, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Frees the data and clears buf (max is kept). */
void gw_buf_free(struct gw_buf *buf);

/* Moves the data out: the caller owns the returned pointer. */
char *gw_buf_take(struct gw_buf *buf, size_t *len);

#endif /* GATEWAY_BUF_H */
