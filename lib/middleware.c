/*
 * Running a chain of middlewares around one call.
 */
#include "workshop/middleware.h"

#include "workshop/error.h"

int
wk_middleware_before_all(const struct wk_middleware *mws, size_t count,
                         const char *key, wk_time now, void **tokens)
{
    for (size_t i = 0; i < count; i++) {
        tokens[i] = NULL;
        int err = mws[i].ops->before != NULL
                      ? mws[i].ops->before(mws[i].self, key, now, &tokens[i])
                      : WK_OK;
        if (err != WK_OK) {
            /* The ones before i admitted the call: they see the rejection. */
            wk_middleware_after_all(mws, i, key, tokens, err, now, now);
            return err;
        }
    }
    return WK_OK;
}

void
wk_middleware_after_all(const struct wk_middleware *mws, size_t count,
                        const char *key, void **tokens, int err,
                        wk_time started, wk_time now)
{
    wk_duration latency = now > started ? now - started : 0;

    for (size_t i = count; i-- > 0;) {
        if (mws[i].ops->after != NULL)
            mws[i].ops->after(mws[i].self, key, tokens[i], err, latency, now);
    }
}
