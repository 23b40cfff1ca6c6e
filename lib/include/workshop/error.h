/*
 * Error kinds shared by every libworkshop module.
 *
 * Functions that can fail return an int: WK_OK (0) on success, or one of the
 * positive codes below. Steps written by callers may return their own codes
 * from WK_ERR_USER upwards; libworkshop passes them through unchanged.
 */
#ifndef WORKSHOP_ERROR_H
#define WORKSHOP_ERROR_H

enum wk_err {
    WK_OK = 0,
    WK_ERR_BREAKER_OPEN,  /* "breaker open": a circuit breaker rejected */
    WK_ERR_RATE_LIMITED,  /* "rate limited": a rate limiter rejected */
    WK_ERR_BULKHEAD_FULL, /* "bulkhead full": too many concurrent calls */
    WK_ERR_TIMED_OUT,     /* "timed out": a deadline passed */
    WK_ERR_CANCELLED,     /* "cancelled": the promise or context was closed */
    WK_ERR_REJECTED,      /* "rejected": a pool queue was full or closed */
    WK_ERR_UPSTREAM,      /* "upstream error": the remote call failed */
    WK_ERR_NOMEM,         /* "out of memory" */
    WK_ERR_INVALID,       /* "invalid argument" */
    WK_ERR_FAILED,        /* "failed": a step failed for another reason */
    WK_ERR__COUNT,

    WK_ERR_USER = 1000 /* first code free for callers' own errors */
};

/* Returns the static name of err ("breaker open", ...), or "unknown error". */
const char *wk_strerror(int err);

#endif /* WORKSHOP_ERROR_H */
