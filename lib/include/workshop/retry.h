/*
 * A retry policy: which failed attempts may be retried, after what delay,
 * and how many retries the policy allows across all calls.
 *
 * After each failed attempt the caller classifies the outcome and calls
 * wk_retry_decide(). A retry is allowed only when all of these hold:
 *   - the outcome matches a condition in config.on (a connection failure, a
 *     timeout, a 5xx status, a listed status, ...);
 *   - the call is idempotent, or config.retry_non_idempotent is set;
 *   - fewer than config.attempts attempts have been made;
 *   - the retry, after its backoff delay, would start before the call's
 *     deadline;
 *   - the retry budget has room.
 *
 * Backoff is exponential with full jitter: the delay before retry k (k = 1
 * after the first attempt) is uniform in [0, min(max_backoff_ms,
 * backoff_ms * 2^(k-1))]. The random source is injectable for tests.
 *
 * The budget keeps retries to at most budget_percent of the calls seen in
 * the last budget_window_ms, plus a floor of budget_min_per_second retries
 * per second of that window, so a route with little traffic can still retry.
 * With the defaults (20 %, 10/s, 10 s) the window allows 100 retries plus
 * one for every five calls. Callers record each call once with
 * wk_retry_record_call(); wk_retry_decide() records each retry it allows.
 * The check and the record are separate atomic steps, so threads racing on
 * the last unit of budget may overshoot it by one retry each.
 *
 * The policy never waits: the caller arms a timer for the returned delay (a
 * struct wk_timer on the loop's queue) and starts the retry when it fires.
 * Only the per-call middleware from wk_retry_call_middleware() sleeps, as a
 * blocking form for library users.
 *
 * Thread safety: a policy is shared by all calls and every function on it may
 * be called from any thread. A struct wk_retry_call belongs to one call.
 */
#ifndef WORKSHOP_RETRY_H
#define WORKSHOP_RETRY_H

#include <stdbool.h>
#include <stdint.h>

#include "workshop/clock.h"
#include "workshop/middleware.h"

/*
 * Knobs and their ranges. The gateway's config validation uses the same
 * constants.
 *
 * attempts: attempts in all, the first one included; 1 turns retries off.
 *   Default 3, range [1, 10].
 * on: conditions that allow a retry, a bitwise OR of WK_RETRY_ON_* values.
 *   Default WK_RETRY_ON_CONNECT_FAILURE | WK_RETRY_ON_TIMEOUT.
 * statuses, status_count: HTTP statuses that allow a retry when on has
 *   WK_RETRY_ON_STATUSES. Default none; up to WK_RETRY_MAX_STATUSES of
 *   them, each in [100, 599].
 * backoff_ms: base delay, in milliseconds. Default 25, range [1, 60000].
 * max_backoff_ms: cap on the delay, in milliseconds, at least backoff_ms.
 *   Default 250, range [1, 600000].
 * budget_percent: retries allowed per 100 calls in the window. Default 20,
 *   range [0, 100].
 * budget_min_per_second: retries per second allowed whatever the traffic.
 *   Default 10, range [0, 100000].
 * budget_window_ms: milliseconds over which calls and retries are counted.
 *   Default 10000, range [1000, 600000], and a multiple of 10 (the window
 *   has 10 buckets).
 * retry_non_idempotent: allow retries of calls the caller marks as not
 *   idempotent. Default false.
 */
#define WK_RETRY_DEFAULT_ATTEMPTS              3
#define WK_RETRY_MIN_ATTEMPTS                  1
#define WK_RETRY_MAX_ATTEMPTS                  10
#define WK_RETRY_MAX_STATUSES                  16
#define WK_RETRY_MIN_STATUS                    100
#define WK_RETRY_MAX_STATUS                    599
#define WK_RETRY_DEFAULT_BACKOFF_MS            25
#define WK_RETRY_MIN_BACKOFF_MS                1
#define WK_RETRY_MAX_BACKOFF_MS                60000
#define WK_RETRY_DEFAULT_MAX_BACKOFF_MS        250
#define WK_RETRY_MIN_MAX_BACKOFF_MS            1
#define WK_RETRY_MAX_MAX_BACKOFF_MS            600000
#define WK_RETRY_DEFAULT_BUDGET_PERCENT        20
#define WK_RETRY_MIN_BUDGET_PERCENT            0
#define WK_RETRY_MAX_BUDGET_PERCENT            100
#define WK_RETRY_DEFAULT_BUDGET_MIN_PER_SECOND 10
#define WK_RETRY_MIN_BUDGET_MIN_PER_SECOND     0
#define WK_RETRY_MAX_BUDGET_MIN_PER_SECOND     100000
#define WK_RETRY_DEFAULT_BUDGET_WINDOW_MS      10000
#define WK_RETRY_MIN_BUDGET_WINDOW_MS          1000
#define WK_RETRY_MAX_BUDGET_WINDOW_MS          600000
#define WK_RETRY_BUDGET_BUCKETS                10

/* Conditions that allow a retry, for wk_retry_config.on. */
enum wk_retry_on {
    WK_RETRY_ON_CONNECT_FAILURE = 1u << 0, /* no connection was made */
    WK_RETRY_ON_TIMEOUT = 1u << 1,         /* the attempt timed out */
    WK_RETRY_ON_5XX = 1u << 2,             /* any status 500-599 */
    WK_RETRY_ON_GATEWAY_ERROR = 1u << 3,   /* status 502, 503 or 504 */
    WK_RETRY_ON_STATUSES = 1u << 4,        /* a status in config.statuses */
    WK_RETRY_ON_ERROR = 1u << 5,           /* WK_RETRY_ATTEMPT_ERROR */
};

#define WK_RETRY_DEFAULT_ON (WK_RETRY_ON_CONNECT_FAILURE | WK_RETRY_ON_TIMEOUT)

/*
 * Returns the flag named name ("connect_failure", "timeout", "5xx",
 * "gateway_error", "statuses", "error"), or 0 for an unknown name.
 */
unsigned wk_retry_on_from_name(const char *name);

/* A random source: returns 64 uniformly random bits. */
typedef uint64_t wk_retry_random_fn(void *arg);

struct wk_retry_config {
    uint32_t attempts;
    unsigned on;
    uint16_t statuses[WK_RETRY_MAX_STATUSES];
    uint32_t status_count;
    uint32_t backoff_ms;
    uint32_t max_backoff_ms;
    uint32_t budget_percent;
    uint32_t budget_min_per_second;
    uint32_t budget_window_ms;
    bool retry_non_idempotent;
    /* NULL: a per-thread xorshift generator seeded from the OS. */
    wk_retry_random_fn *random;
    void *random_arg;
};

#define WK_RETRY_CONFIG_INIT                                                   \
    {                                                                          \
        .attempts = WK_RETRY_DEFAULT_ATTEMPTS, .on = WK_RETRY_DEFAULT_ON,      \
        .backoff_ms = WK_RETRY_DEFAULT_BACKOFF_MS,                             \
        .max_backoff_ms = WK_RETRY_DEFAULT_MAX_BACKOFF_MS,                     \
        .budget_percent = WK_RETRY_DEFAULT_BUDGET_PERCENT,                     \
        .budget_min_per_second = WK_RETRY_DEFAULT_BUDGET_MIN_PER_SECOND,       \
        .budget_window_ms = WK_RETRY_DEFAULT_BUDGET_WINDOW_MS,                 \
    }

/* Fills config with the defaults. */
void wk_retry_config_init(struct wk_retry_config *config);

/*
 * Checks every knob against its range. Returns WK_OK, or WK_ERR_INVALID and
 * sets *field (if not NULL) to the name of the first invalid knob.
 */
int wk_retry_config_check(const struct wk_retry_config *config,
                          const char **field);

struct wk_retry;

/*
 * Creates a policy with an empty budget window. Returns WK_OK and sets *out,
 * WK_ERR_INVALID when the config fails wk_retry_config_check(), or
 * WK_ERR_NOMEM. The caller owns it and frees it with wk_retry_destroy().
 */
int wk_retry_new(const struct wk_retry_config *config, struct wk_retry **out)
    __attribute__((warn_unused_result));

/* Frees the policy and sets *policy to NULL. Safe on NULL. */
void wk_retry_destroy(struct wk_retry **policy);

/* The outcome of an attempt, as the caller classifies it. */
enum wk_retry_attempt_kind {
    WK_RETRY_ATTEMPT_OK,              /* succeeded: nothing to retry */
    WK_RETRY_ATTEMPT_CONNECT_FAILURE, /* no connection was made */
    WK_RETRY_ATTEMPT_TIMEOUT,         /* no response in time */
    WK_RETRY_ATTEMPT_STATUS,          /* a response with status */
    WK_RETRY_ATTEMPT_ERROR,           /* any other failure */
};

struct wk_retry_outcome {
    enum wk_retry_attempt_kind kind;
    int status;      /* the HTTP status, for WK_RETRY_ATTEMPT_STATUS */
    bool idempotent; /* whether the call may safely run twice */
};

enum wk_retry_decision {
    WK_RETRY_ALLOW = 0,
    WK_RETRY_DENY_NOT_RETRYABLE, /* the outcome matches no condition */
    WK_RETRY_DENY_NOT_IDEMPOTENT,
    WK_RETRY_DENY_ATTEMPTS, /* config.attempts used up */
    WK_RETRY_DENY_DEADLINE, /* the delay would end at or past the deadline */
    WK_RETRY_DENY_BUDGET,   /* the retry budget is spent */
};

/* Returns a short name for decision ("allow", "budget", ...). */
const char *wk_retry_decision_name(enum wk_retry_decision decision);

/* Counts one call (its first attempt) at now in the budget window. */
void wk_retry_record_call(struct wk_retry *policy, wk_time now);

/*
 * Decides whether to retry a call after attempt number attempt (1 for the
 * first) ended with outcome at now. deadline is the call's absolute
 * deadline (WK_TIME_NEVER for none). On WK_RETRY_ALLOW, *delay is the
 * backoff to wait before the next attempt, and the retry has been counted
 * in the budget.
 */
enum wk_retry_decision
wk_retry_decide(struct wk_retry *policy, uint32_t attempt,
                const struct wk_retry_outcome *outcome, wk_time now,
                wk_time deadline, wk_duration *delay)
    __attribute__((warn_unused_result));

/*
 * Returns the full-jitter backoff before retry number retry (1 for the
 * first retry; 0 counts as 1), drawing from the policy's random source.
 */
wk_duration wk_retry_backoff(struct wk_retry *policy, uint32_t retry);

struct wk_retry_snapshot {
    uint64_t calls_in_window;
    uint64_t retries_in_window;
    uint64_t retries_allowed; /* by the budget in the current window */
    uint64_t retries_total;   /* allowed since creation */
    uint64_t denied_total;    /* failed attempts not retried, since creation */
};

/* Fills snap at now. Reads atomics only and never blocks callers. */
void wk_retry_snapshot(struct wk_retry *policy, wk_time now,
                       struct wk_retry_snapshot *snap);

/*
 * The retry state of one call, for the middleware form. The fields are
 * private.
 */
struct wk_retry_call {
    struct wk_retry *policy;
    wk_time deadline;
    bool idempotent;
    uint32_t attempts; /* started so far */
    int last_err;
};

/*
 * Sets up call for one call through policy, with the call's deadline and
 * whether it is idempotent.
 */
void wk_retry_call_init(struct wk_retry_call *call, struct wk_retry *policy,
                        wk_time deadline, bool idempotent);

/*
 * Returns a middleware for one call, to put first in that call's promise
 * (with wk_promise_recover_and_retry() providing the re-runs). Its
 * before() lets the first run through and records it in the budget; before
 * each re-run it calls wk_retry_decide() with the previous run's error,
 * sleeps the calling thread for the backoff and admits the run, or returns
 * that error to end the call. Errors map to outcomes as: WK_ERR_TIMED_OUT a
 * timeout; WK_ERR_BREAKER_OPEN, WK_ERR_RATE_LIMITED, WK_ERR_BULKHEAD_FULL,
 * WK_ERR_REJECTED and WK_ERR_CANCELLED never retryable; other errors
 * WK_RETRY_ATTEMPT_ERROR. The middleware borrows call, which must outlive
 * it.
 */
struct wk_middleware wk_retry_call_middleware(struct wk_retry_call *call);

#endif /* WORKSHOP_RETRY_H */
