/*
 * A circuit breaker over a rolling window of buckets.
 *
 * Closed, the breaker admits every call and records each outcome in the
 * bucket for the current time; the window is the last `buckets` buckets,
 * covering `window_ms`. It trips open in one of three ways, chosen by
 * config.trip:
 *
 *   - WK_BREAKER_TRIP_ERROR_PERCENT (the default): the window holds at least
 *     min_requests calls and failures plus timeouts are at least
 *     error_percent of them;
 *   - WK_BREAKER_TRIP_CONSECUTIVE: consecutive_failures calls in a row
 *     failed or timed out;
 *   - WK_BREAKER_TRIP_FAILURE_RATE: failures drain a token bucket of `burst`
 *     tokens refilled at failures_per_second, and a failure that finds it
 *     empty trips the breaker (the rule of the Go library this ports).
 *
 * With slow_call_ms set, a call that took at least that long also counts as
 * slow, and the breaker trips, whatever the mode, once the window holds
 * min_requests calls of which slow_percent are slow.
 *
 * Open, it rejects every call with WK_ERR_BREAKER_OPEN for open_ms. Then it
 * turns half-open and admits exactly half_open_requests probe calls, however
 * many arrive at once. When all of them succeed (and none is slow) the
 * breaker closes with an empty window; when one fails it opens for another
 * open_ms.
 *
 * Outcomes are the caller's classification, passed as err to
 * wk_breaker_after():
 *   - WK_OK: a success;
 *   - WK_ERR_TIMED_OUT: a timeout, which counts as a failure;
 *   - WK_ERR_BREAKER_OPEN, WK_ERR_RATE_LIMITED, WK_ERR_BULKHEAD_FULL,
 *     WK_ERR_REJECTED and WK_ERR_CANCELLED: the call never ran or the caller
 *     gave up, which says nothing about the callee, so the outcome is not
 *     counted (middleware chains report a later policy's rejection this way);
 *   - any other error: a failure.
 * Calls the breaker rejects are counted as rejections, never as failures.
 *
 * Every transition is reported once through the on_transition callback, on
 * the thread that caused it. Two transitions that happen close together may
 * be reported out of order from different threads; the event's generation
 * orders them.
 *
 * Every function takes the current time `now` (monotonic nanoseconds, at
 * least 0) from the caller. Thread safety: every function may be called
 * from any thread. The request path (before and after) and the snapshot take
 * no lock: state, probe counts and bucket counters are atomics.
 */
#ifndef WORKSHOP_BREAKER_H
#define WORKSHOP_BREAKER_H

#include <stdint.h>

#include "workshop/clock.h"
#include "workshop/middleware.h"

/*
 * Knobs and their ranges. The gateway's config validation uses the same
 * constants.
 *
 * trip: how the breaker trips, see above. Default
 *   WK_BREAKER_TRIP_ERROR_PERCENT.
 * window_ms: milliseconds covered by the rolling window. Default 10000,
 *   range [100, 3600000], and a multiple of buckets.
 * buckets: buckets in the window. Default 10, range [1, 100].
 * min_requests: calls the window must hold before error_percent or
 *   slow_percent can trip it. Default 20, range [1, 1000000].
 * error_percent: failed share, in percent, that trips it. Default 50,
 *   range [1, 100].
 * consecutive_failures: failures in a row that trip it. Default 5,
 *   range [1, 1000000].
 * failures_per_second: refill rate of the failure bucket (a double).
 *   Default 1, range [0.001, 1000000].
 * burst: capacity of the failure bucket, in failures. Default 5,
 *   range [1, 1000000].
 * slow_call_ms: milliseconds from which a call counts as slow; 0 turns slow
 *   calls off. Default 0, range [0, 3600000].
 * slow_percent: slow share, in percent, that trips it. Default 100,
 *   range [1, 100].
 * open_ms: milliseconds the breaker stays open. Default 5000,
 *   range [1, 3600000].
 * half_open_requests: probe calls admitted when half-open, all of which must
 *   succeed to close. Default 1, range [1, 1000].
 */
#define WK_BREAKER_DEFAULT_WINDOW_MS            10000
#define WK_BREAKER_MIN_WINDOW_MS                100
#define WK_BREAKER_MAX_WINDOW_MS                3600000
#define WK_BREAKER_DEFAULT_BUCKETS              10
#define WK_BREAKER_MIN_BUCKETS                  1
#define WK_BREAKER_MAX_BUCKETS                  100
#define WK_BREAKER_DEFAULT_MIN_REQUESTS         20
#define WK_BREAKER_MIN_MIN_REQUESTS             1
#define WK_BREAKER_MAX_MIN_REQUESTS             1000000
#define WK_BREAKER_DEFAULT_ERROR_PERCENT        50
#define WK_BREAKER_MIN_ERROR_PERCENT            1
#define WK_BREAKER_MAX_ERROR_PERCENT            100
#define WK_BREAKER_DEFAULT_CONSECUTIVE_FAILURES 5
#define WK_BREAKER_MIN_CONSECUTIVE_FAILURES     1
#define WK_BREAKER_MAX_CONSECUTIVE_FAILURES     1000000
#define WK_BREAKER_DEFAULT_FAILURES_PER_SECOND  1.0
#define WK_BREAKER_MIN_FAILURES_PER_SECOND      0.001
#define WK_BREAKER_MAX_FAILURES_PER_SECOND      1000000.0
#define WK_BREAKER_DEFAULT_BURST                5
#define WK_BREAKER_MIN_BURST                    1
#define WK_BREAKER_MAX_BURST                    1000000
#define WK_BREAKER_DEFAULT_SLOW_CALL_MS         0
#define WK_BREAKER_MIN_SLOW_CALL_MS             0
#define WK_BREAKER_MAX_SLOW_CALL_MS             3600000
#define WK_BREAKER_DEFAULT_SLOW_PERCENT         100
#define WK_BREAKER_MIN_SLOW_PERCENT             1
#define WK_BREAKER_MAX_SLOW_PERCENT             100
#define WK_BREAKER_DEFAULT_OPEN_MS              5000
#define WK_BREAKER_MIN_OPEN_MS                  1
#define WK_BREAKER_MAX_OPEN_MS                  3600000
#define WK_BREAKER_DEFAULT_HALF_OPEN_REQUESTS   1
#define WK_BREAKER_MIN_HALF_OPEN_REQUESTS       1
#define WK_BREAKER_MAX_HALF_OPEN_REQUESTS       1000
/* Maximum name length, in bytes; a longer name is truncated. */
#define WK_BREAKER_MAX_NAME_BYTES 255

enum wk_breaker_state {
    WK_BREAKER_CLOSED = 0,
    WK_BREAKER_OPEN,
    WK_BREAKER_HALF_OPEN,
};

enum wk_breaker_trip {
    WK_BREAKER_TRIP_ERROR_PERCENT = 0,
    WK_BREAKER_TRIP_CONSECUTIVE,
    WK_BREAKER_TRIP_FAILURE_RATE,
};

/* Reasons for a transition. */
enum wk_breaker_reason {
    WK_BREAKER_REASON_ERROR_PERCENT,        /* closed -> open */
    WK_BREAKER_REASON_CONSECUTIVE_FAILURES, /* closed -> open */
    WK_BREAKER_REASON_FAILURE_RATE,         /* closed -> open */
    WK_BREAKER_REASON_SLOW_CALLS,           /* closed -> open */
    WK_BREAKER_REASON_OPEN_ELAPSED,         /* open -> half-open */
    WK_BREAKER_REASON_PROBES_SUCCEEDED,     /* half-open -> closed */
    WK_BREAKER_REASON_PROBE_FAILED,         /* half-open -> open */
};

/* Outcome counts of one bucket, or of the whole window. */
struct wk_breaker_counts {
    uint64_t successes;
    uint64_t failures; /* not counting timeouts */
    uint64_t timeouts;
    uint64_t slow_calls; /* also counted as a success, failure or timeout */
    uint64_t rejections; /* calls the breaker rejected */
};

/* A transition, with the evidence for it. */
struct wk_breaker_transition {
    const char *key; /* the breaker's name */
    enum wk_breaker_state from;
    enum wk_breaker_state to;
    enum wk_breaker_reason reason;
    wk_time at;
    uint64_t generation;             /* grows by one per transition */
    struct wk_breaker_counts window; /* the window when it tripped */
    uint64_t consecutive_failures;
    wk_duration open_for; /* when to is WK_BREAKER_OPEN: open_ms */
};

typedef void wk_breaker_transition_fn(void *arg,
                                      const struct wk_breaker_transition *t);

struct wk_breaker_config {
    const char *name; /* reported as the transition's key; copied; NULL: "" */
    enum wk_breaker_trip trip;
    uint32_t window_ms;
    uint32_t buckets;
    uint32_t min_requests;
    uint32_t error_percent;
    uint32_t consecutive_failures;
    double failures_per_second;
    uint32_t burst;
    uint32_t slow_call_ms;
    uint32_t slow_percent;
    uint32_t open_ms;
    uint32_t half_open_requests;
    /* Called once per transition, on the thread that caused it; may be NULL.
     * It must not call back into this breaker's before() or after(). */
    wk_breaker_transition_fn *on_transition;
    void *on_transition_arg;
};

#define WK_BREAKER_CONFIG_INIT                                                 \
    {                                                                          \
        .trip = WK_BREAKER_TRIP_ERROR_PERCENT,                                 \
        .window_ms = WK_BREAKER_DEFAULT_WINDOW_MS,                             \
        .buckets = WK_BREAKER_DEFAULT_BUCKETS,                                 \
        .min_requests = WK_BREAKER_DEFAULT_MIN_REQUESTS,                       \
        .error_percent = WK_BREAKER_DEFAULT_ERROR_PERCENT,                     \
        .consecutive_failures = WK_BREAKER_DEFAULT_CONSECUTIVE_FAILURES,       \
        .failures_per_second = WK_BREAKER_DEFAULT_FAILURES_PER_SECOND,         \
        .burst = WK_BREAKER_DEFAULT_BURST,                                     \
        .slow_call_ms = WK_BREAKER_DEFAULT_SLOW_CALL_MS,                       \
        .slow_percent = WK_BREAKER_DEFAULT_SLOW_PERCENT,                       \
        .open_ms = WK_BREAKER_DEFAULT_OPEN_MS,                                 \
        .half_open_requests = WK_BREAKER_DEFAULT_HALF_OPEN_REQUESTS,           \
    }

/* Fills config with the defaults. */
void wk_breaker_config_init(struct wk_breaker_config *config);

/*
 * Checks every knob against its range, and that window_ms is a multiple of
 * buckets. Returns WK_OK, or WK_ERR_INVALID and sets *field (if not NULL) to
 * the name of the first invalid knob.
 */
int wk_breaker_config_check(const struct wk_breaker_config *config,
                            const char **field);

struct wk_breaker;

/*
 * Creates a closed breaker with an empty window. Returns WK_OK and sets *out,
 * WK_ERR_INVALID when the config fails wk_breaker_config_check(), or
 * WK_ERR_NOMEM. The caller owns the breaker and frees it with
 * wk_breaker_destroy().
 */
int wk_breaker_new(const struct wk_breaker_config *config,
                   struct wk_breaker **out) __attribute__((warn_unused_result));

/* Frees the breaker and sets *breaker to NULL. Safe on NULL. */
void wk_breaker_destroy(struct wk_breaker **breaker);

/*
 * The admission of one call, filled by wk_breaker_before() and handed back
 * to wk_breaker_after().
 */
struct wk_breaker_permit {
    uint64_t state;          /* the breaker's state word at admission */
    wk_duration retry_after; /* on a rejection: time left open, 0 unknown */
};

/*
 * Admits or rejects a call at now. Returns WK_OK, after which the caller
 * must call wk_breaker_after() exactly once with the same permit; or
 * WK_ERR_BREAKER_OPEN, with permit->retry_after set to the time until the
 * breaker turns half-open (0 when it is half-open with every probe taken).
 */
int wk_breaker_before(struct wk_breaker *breaker, wk_time now,
                      struct wk_breaker_permit *permit)
    __attribute__((warn_unused_result));

/*
 * Records the outcome err (classified as described above) of a call that
 * wk_breaker_before() admitted with permit and that took latency. Outcomes
 * of calls admitted before the latest transition are not recorded, so they
 * cannot trip a breaker that closed after they started.
 */
void wk_breaker_after(struct wk_breaker *breaker,
                      const struct wk_breaker_permit *permit, int err,
                      wk_duration latency, wk_time now);

struct wk_breaker_snapshot {
    enum wk_breaker_state state;
    wk_duration open_remaining; /* when open: time until half-open */
    uint32_t probes_admitted;   /* when half-open */
    uint64_t generation;
    uint64_t consecutive_failures;
    struct wk_breaker_counts window; /* sum of the buckets below */
    uint32_t bucket_count;
    wk_duration bucket_width;
    /* buckets[0] is the oldest; buckets[bucket_count - 1] contains now. */
    struct wk_breaker_counts buckets[WK_BREAKER_MAX_BUCKETS];
    uint64_t rejections_total; /* since creation */
    uint64_t transitions_total;
};

/*
 * Fills snap at now. Reads atomics only and never blocks callers. A bucket
 * that rotates while it is read is reported as empty.
 */
void wk_breaker_snapshot(struct wk_breaker *breaker, wk_time now,
                         struct wk_breaker_snapshot *snap);

/* Returns "closed", "open" or "half-open". */
const char *wk_breaker_state_name(enum wk_breaker_state state);

/* Returns a short name for reason ("error percent", "probe failed", ...). */
const char *wk_breaker_reason_name(enum wk_breaker_reason reason);

/*
 * Returns a middleware over breaker: before() is wk_breaker_before() and
 * after() is wk_breaker_after(). One breaker serves every event key; create
 * one breaker per key to keep keys apart. The middleware borrows breaker,
 * which must outlive it.
 */
struct wk_middleware wk_breaker_middleware(struct wk_breaker *breaker);

#endif /* WORKSHOP_BREAKER_H */
