/*
 * Rate limiting: a lock-free token bucket, and a limiter that applies one
 * either to all calls or to each key (a client address, a header value) in
 * a bounded table.
 *
 * The bucket has room for `burst` tokens and gains `rate` tokens per
 * second. Each admitted call takes one. It is stored as a single atomic
 * "theoretical arrival time" (the generic cell rate algorithm), so taking a
 * token is one load and one compare-and-swap, and N threads racing on a
 * full bucket with a frozen clock admit exactly `burst` calls.
 *
 * The key table keeps at most `max_keys` keys. A key unused for `idle_ms`
 * whose bucket has refilled is dropped (lazily when new keys arrive, or by
 * wk_ratelimit_expire()). When the table is full, the least recently used
 * key is evicted, so a flood of new keys costs memory up to max_keys and no
 * more; an evicted client starts again with a full bucket.
 *
 * Every function takes the current time `now` (monotonic nanoseconds, at
 * least 0) from the caller. Thread safety: every function may be called from
 * any thread. Functions that return int return WK_OK or a wk_err code.
 */
#ifndef WORKSHOP_RATELIMIT_H
#define WORKSHOP_RATELIMIT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "workshop/clock.h"
#include "workshop/middleware.h"

/*
 * Knobs and their ranges. The gateway's config validation uses the same
 * constants.
 *
 * rate: tokens added per second (a double). Default 100, range
 *   [0.001, 1000000].
 * burst: bucket capacity, in tokens. Default 100, range [1, 1000000].
 * max_keys: keys kept in the table; 0 means the limiter is not keyed and
 *   every call shares one bucket. Each key takes about 80 bytes plus its
 *   length. Default 0, range [0, 10000000].
 * idle_ms: milliseconds a key must go unused before it may be dropped.
 *   Default 60000, range [1000, 86400000].
 */
#define WK_RATELIMIT_DEFAULT_RATE     100.0
#define WK_RATELIMIT_MIN_RATE         0.001
#define WK_RATELIMIT_MAX_RATE         1000000.0
#define WK_RATELIMIT_DEFAULT_BURST    100
#define WK_RATELIMIT_MIN_BURST        1
#define WK_RATELIMIT_MAX_BURST        1000000
#define WK_RATELIMIT_DEFAULT_MAX_KEYS 0
#define WK_RATELIMIT_MIN_MAX_KEYS     0
#define WK_RATELIMIT_MAX_MAX_KEYS     10000000
#define WK_RATELIMIT_DEFAULT_IDLE_MS  60000
#define WK_RATELIMIT_MIN_IDLE_MS      1000
#define WK_RATELIMIT_MAX_IDLE_MS      86400000
/* Maximum key length, in bytes; a longer key is rejected (WK_ERR_INVALID). */
#define WK_RATELIMIT_MAX_KEY_BYTES 256

/* --- token bucket ------------------------------------------------------ */

/*
 * A token bucket. Initialise it with wk_token_bucket_init(); it starts full.
 * It needs no destroy.
 */
struct wk_token_bucket {
    _Atomic int64_t tat;  /* when the bucket will be full again */
    wk_duration interval; /* time to gain one token */
    wk_duration capacity; /* burst * interval */
};

/*
 * Sets up a full bucket of burst tokens gaining rate tokens per second.
 * Returns WK_ERR_INVALID when rate or burst is outside its range above.
 */
int wk_token_bucket_init(struct wk_token_bucket *bucket, double rate,
                         uint32_t burst) __attribute__((warn_unused_result));

/*
 * Takes one token at time now. Returns WK_OK, or WK_ERR_RATE_LIMITED when
 * the bucket is empty. On a rejection *wait (if not NULL) is set to the time
 * until the next token, which is always more than 0.
 */
int wk_token_bucket_take(struct wk_token_bucket *bucket, wk_time now,
                         wk_duration *wait);

/* Returns the whole tokens available at now. */
uint32_t wk_token_bucket_tokens(const struct wk_token_bucket *bucket,
                                wk_time now);

/* Refills the bucket to burst tokens. */
void wk_token_bucket_fill(struct wk_token_bucket *bucket);

/*
 * Converts a wait into the value of a Retry-After header: whole seconds,
 * rounded up, and at least 1 for any wait above 0.
 */
static inline int64_t
wk_retry_after_seconds(wk_duration wait)
{
    if (wait <= 0)
        return 0;
    return (wait - 1) / WK_NSEC_PER_SEC + 1;
}

/* --- rate limiter ------------------------------------------------------- */

struct wk_ratelimit_config {
    double rate;
    uint32_t burst;
    uint32_t max_keys;
    uint32_t idle_ms;
};

#define WK_RATELIMIT_CONFIG_INIT                                               \
    {                                                                          \
        .rate = WK_RATELIMIT_DEFAULT_RATE,                                     \
        .burst = WK_RATELIMIT_DEFAULT_BURST,                                   \
        .max_keys = WK_RATELIMIT_DEFAULT_MAX_KEYS,                             \
        .idle_ms = WK_RATELIMIT_DEFAULT_IDLE_MS,                               \
    }

/* Fills config with the defaults. */
void wk_ratelimit_config_init(struct wk_ratelimit_config *config);

/*
 * Checks every knob against its range. Returns WK_OK, or WK_ERR_INVALID and
 * sets *field (if not NULL) to the name of the first invalid knob.
 */
int wk_ratelimit_config_check(const struct wk_ratelimit_config *config,
                              const char **field);

struct wk_ratelimit;

/*
 * Creates a limiter. Returns WK_OK and sets *out, WK_ERR_INVALID when the
 * config fails wk_ratelimit_config_check(), or WK_ERR_NOMEM. The caller owns
 * the limiter and frees it with wk_ratelimit_destroy().
 */
int wk_ratelimit_new(const struct wk_ratelimit_config *config,
                     struct wk_ratelimit **out)
    __attribute__((warn_unused_result));

/* Frees the limiter and its key table, and sets *limiter to NULL. */
void wk_ratelimit_destroy(struct wk_ratelimit **limiter);

/*
 * Admits one call at now. With a key table (max_keys > 0) key selects the
 * bucket; without one, or when key is NULL, the limiter's shared bucket is
 * used. Returns WK_OK; WK_ERR_RATE_LIMITED, with *wait (if not NULL) set to
 * the time until the next token; WK_ERR_INVALID when key is longer than
 * WK_RATELIMIT_MAX_KEY_BYTES; or WK_ERR_NOMEM when a new key could not be
 * stored. The limiter copies key; the caller keeps it.
 */
int wk_ratelimit_take(struct wk_ratelimit *limiter, const char *key,
                      wk_time now, wk_duration *wait);

/*
 * Drops every key that is idle at now. Returns how many were dropped. Call it
 * every few seconds from a timer to give back memory after a burst of keys.
 */
size_t wk_ratelimit_expire(struct wk_ratelimit *limiter, wk_time now);

struct wk_ratelimit_snapshot {
    uint32_t tokens;      /* in the shared bucket, at now */
    uint64_t rejections;  /* calls rejected since creation */
    uint64_t keys;        /* keys in the table now */
    uint64_t evictions;   /* keys evicted because the table was full */
    uint64_t expirations; /* keys dropped because they were idle */
};

/*
 * Fills snap at now. Reads atomics only, so it never blocks callers; the
 * fields are each current but not taken at one instant.
 */
void wk_ratelimit_snapshot(struct wk_ratelimit *limiter, wk_time now,
                           struct wk_ratelimit_snapshot *snap);

/*
 * Returns a middleware whose before() calls wk_ratelimit_take() with the
 * event key and returns its result; it has no after(). The middleware
 * borrows limiter, which must outlive it.
 */
struct wk_middleware wk_ratelimit_middleware(struct wk_ratelimit *limiter);

#endif /* WORKSHOP_RATELIMIT_H */
