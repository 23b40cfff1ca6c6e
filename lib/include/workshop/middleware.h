/*
 * Middlewares: hooks that run around a call, such as a circuit breaker or a
 * rate limiter.
 *
 * before() runs first and may reject the call by returning an error; when it
 * admits the call it may store a token that its after() receives. after()
 * runs once the call has ended with the call's outcome and latency. For a
 * chain of middlewares the befores run in order and the afters in reverse
 * order; when one before rejects, the afters of those that already admitted
 * the call still run, with the rejection's error, and the call itself never
 * starts. Every middleware receives the call's event key.
 *
 * The outcome passed to after() is the caller's classification: WK_OK for a
 * success, an error code for a failure. A gateway, say, passes WK_OK for an
 * HTTP 404 and WK_ERR_UPSTREAM for a 503.
 *
 * Thread safety: a middleware's hooks are called concurrently from many
 * threads and must be safe for that.
 */
#ifndef WORKSHOP_MIDDLEWARE_H
#define WORKSHOP_MIDDLEWARE_H

#include <stddef.h>

#include "workshop/clock.h"

struct wk_middleware_ops {
    const char *name;
    /*
     * Admits (returns WK_OK) or rejects (returns an error) a call for key at
     * time now. May set *token, which is NULL on entry, for after().
     */
    int (*before)(void *self, const char *key, wk_time now, void **token);
    /*
     * Sees the outcome err of an admitted call that started at now - latency.
     * May be NULL. Not called for a call this middleware rejected.
     */
    void (*after)(void *self, const char *key, void *token, int err,
                  wk_duration latency, wk_time now);
};

struct wk_middleware {
    const struct wk_middleware_ops *ops;
    void *self;
};

/*
 * Runs the befores of mws[0..count) in order for key. tokens must have room
 * for count entries. Returns WK_OK when all admitted. On a rejection, runs the
 * afters of the ones that admitted, in reverse order, with the rejecting
 * error and zero latency, and returns that error; then no after remains due.
 */
int wk_middleware_before_all(const struct wk_middleware *mws, size_t count,
                             const char *key, wk_time now, void **tokens);

/*
 * Runs the afters of mws[0..count) in reverse order with outcome err, for a
 * call admitted by wk_middleware_before_all() at time started.
 */
void wk_middleware_after_all(const struct wk_middleware *mws, size_t count,
                             const char *key, void **tokens, int err,
                             wk_time started, wk_time now);

#endif /* WORKSHOP_MIDDLEWARE_H */
