/*
 * The access log: one line per answered request, on stderr, as text or as a
 * JSON object per line (log.access in the config).
 *
 * Thread safety: gw_access_log_write() may be called from any thread; each
 * line is written with a single write().
 */
#ifndef GATEWAY_ACCESS_LOG_H
#define GATEWAY_ACCESS_LOG_H

#include <stdint.h>

#include "config.h"

struct gw_access_entry {
    uint64_t request_id;
    const char *client; /* client address */
    const char *method;
    const char *target;   /* path and query as forwarded */
    const char *route;    /* NULL when no route matched */
    unsigned status;      /* sent to the client */
    long upstream_status; /* 0 when no upstream answered */
    unsigned attempts;    /* upstream attempts made */
    int64_t duration_ns;  /* from the request head to the response */
    const char *fallback; /* the fallback reason, or NULL */
    const char *error;    /* the X-Workshop-Error kind, or NULL */
};

/* Writes one line for e in format; does nothing for GW_ACCESS_LOG_OFF. */
void gw_access_log_write(enum gw_access_log format,
                         const struct gw_access_entry *e);

#endif /* GATEWAY_ACCESS_LOG_H */
