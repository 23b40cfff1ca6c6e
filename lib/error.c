/*
 * Names of the error kinds.
 */
#include "workshop/error.h"

#include <stddef.h>

static const char *const names[WK_ERR__COUNT] = {
    [WK_OK] = "ok",
    [WK_ERR_BREAKER_OPEN] = "breaker open",
    [WK_ERR_RATE_LIMITED] = "rate limited",
    [WK_ERR_BULKHEAD_FULL] = "bulkhead full",
    [WK_ERR_TIMED_OUT] = "timed out",
    [WK_ERR_CANCELLED] = "cancelled",
    [WK_ERR_REJECTED] = "rejected",
    [WK_ERR_UPSTREAM] = "upstream error",
    [WK_ERR_NOMEM] = "out of memory",
    [WK_ERR_INVALID] = "invalid argument",
    [WK_ERR_FAILED] = "failed",
};

const char *
wk_strerror(int err)
{
    if (err >= 0 && err < WK_ERR__COUNT && names[err] != NULL)
        return names[err];
    return "unknown error";
}
