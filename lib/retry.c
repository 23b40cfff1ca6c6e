/*
 * The retry policy: retry conditions, full-jitter backoff and a retry budget
 * counted in a ring of ten buckets.
 *
 * Budget bucket i counts the calls and retries of bucket number n (now
 * divided by the bucket width) with n % 10 == i, tagged with 2n. As in the
 * breaker, the first writer of a new number claims the bucket with an odd
 * tag, zeroes it and publishes the even tag, and readers check the tag
 * around their reads, so nobody takes a lock.
 */
#include "workshop/retry.h"

#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "workshop/error.h"

#define TAG_EMPTY INT64_C(-2)

struct budget_bucket {
    _Atomic int64_t tag; /* 2n for bucket number n; odd while being reset */
    _Atomic uint64_t calls;
    _Atomic uint64_t retries;
};

struct wk_retry {
    struct budget_bucket buckets[WK_RETRY_BUDGET_BUCKETS];
    _Atomic uint64_t retries_total;
    _Atomic uint64_t denied_total;
    wk_duration bucket_width;
    uint64_t budget_floor; /* retries per window allowed whatever the calls */
    uint32_t budget_percent;
    uint32_t attempts;
    unsigned on;
    uint16_t statuses[WK_RETRY_MAX_STATUSES];
    uint32_t status_count;
    wk_duration backoff;
    wk_duration max_backoff;
    bool retry_non_idempotent;
    wk_retry_random_fn *random;
    void *random_arg;
};

/* --- the budget window ------------------------------------------------- */

static int64_t
bucket_number(const struct wk_retry *r, wk_time now)
{
    return (now > 0 ? now : 0) / r->bucket_width;
}

static struct budget_bucket *
bucket_at(struct wk_retry *r, wk_time now)
{
    int64_t n = bucket_number(r, now);
    struct budget_bucket *bk = &r->buckets[n % WK_RETRY_BUDGET_BUCKETS];
    int64_t want = 2 * n;
    unsigned spins = 0;

    for (;;) {
        int64_t tag = atomic_load_explicit(&bk->tag, memory_order_acquire);

        if (tag >= want && (tag & 1) == 0)
            return bk;
        if (tag & 1) {
            /* Another thread is zeroing it; yield in case it was preempted. */
            if (++spins % 64 == 0)
                sched_yield();
            continue;
        }
        if (atomic_compare_exchange_weak_explicit(&bk->tag, &tag, want + 1,
                                                  memory_order_acquire,
                                                  memory_order_relaxed)) {
            atomic_store_explicit(&bk->calls, 0, memory_order_relaxed);
            atomic_store_explicit(&bk->retries, 0, memory_order_relaxed);
            atomic_store_explicit(&bk->tag, want, memory_order_release);
            return bk;
        }
    }
}

/* Sums the calls and retries of the window that ends with now's bucket. */
static void
window_sums(struct wk_retry *r, wk_time now, uint64_t *calls, uint64_t *retries)
{
    int64_t last = bucket_number(r, now);

    *calls = 0;
    *retries = 0;
    int64_t first = last - WK_RETRY_BUDGET_BUCKETS + 1;

    /* Numbers below 0 are before time 0: a window that starts near boot. */
    if (first < 0)
        first = 0;
    for (int64_t n = first; n <= last; n++) {
        struct budget_bucket *bk = &r->buckets[n % WK_RETRY_BUDGET_BUCKETS];
        int64_t tag = atomic_load_explicit(&bk->tag, memory_order_acquire);

        if (tag != 2 * n)
            continue;

        uint64_t c = atomic_load_explicit(&bk->calls, memory_order_relaxed);
        uint64_t t = atomic_load_explicit(&bk->retries, memory_order_relaxed);

        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&bk->tag, memory_order_relaxed) != tag)
            continue; /* reused for a newer number while we read */
        *calls += c;
        *retries += t;
    }
}

static uint64_t
budget_allowed(const struct wk_retry *r, uint64_t calls)
{
    return calls * r->budget_percent / 100 + r->budget_floor;
}

/* Counts one retry at now if the window has room for it. */
static bool
budget_take(struct wk_retry *r, wk_time now)
{
    uint64_t calls, retries;

    window_sums(r, now, &calls, &retries);
    if (retries + 1 > budget_allowed(r, calls))
        return false;
    atomic_fetch_add_explicit(&bucket_at(r, now)->retries, 1,
                              memory_order_relaxed);
    return true;
}

void
wk_retry_record_call(struct wk_retry *policy, wk_time now)
{
    atomic_fetch_add_explicit(&bucket_at(policy, now)->calls, 1,
                              memory_order_relaxed);
}

/* --- backoff ----------------------------------------------------------- */

static uint64_t
splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* The default random source: one generator per thread, seeded once. */
static uint64_t
thread_random(void *arg)
{
    static _Thread_local uint64_t state;
    static _Thread_local bool seeded;

    (void)arg;
    if (!seeded) {
        if (getrandom(&state, sizeof(state), GRND_NONBLOCK) !=
            (ssize_t)sizeof(state))
            state = (uint64_t)wk_clock_now(NULL) ^ (uint64_t)(uintptr_t)&state;
        seeded = true;
    }
    return splitmix64(&state);
}

wk_duration
wk_retry_backoff(struct wk_retry *policy, uint32_t retry)
{
    struct wk_retry *r = policy;
    wk_duration cap = r->backoff;

    /* backoff * 2^(retry - 1), doubling only while under the maximum. */
    for (uint32_t i = 1; i < retry && cap < r->max_backoff; i++)
        cap *= 2;
    if (cap > r->max_backoff)
        cap = r->max_backoff;
    return (wk_duration)(r->random(r->random_arg) % ((uint64_t)cap + 1));
}

/* --- decisions --------------------------------------------------------- */

static bool
status_listed(const struct wk_retry *r, int status)
{
    for (uint32_t i = 0; i < r->status_count; i++) {
        if (r->statuses[i] == status)
            return true;
    }
    return false;
}

static bool
retryable(const struct wk_retry *r, const struct wk_retry_outcome *o)
{
    switch (o->kind) {
    case WK_RETRY_ATTEMPT_OK:
        return false;
    case WK_RETRY_ATTEMPT_CONNECT_FAILURE:
        return (r->on & WK_RETRY_ON_CONNECT_FAILURE) != 0;
    case WK_RETRY_ATTEMPT_TIMEOUT:
        return (r->on & WK_RETRY_ON_TIMEOUT) != 0;
    case WK_RETRY_ATTEMPT_ERROR:
        return (r->on & WK_RETRY_ON_ERROR) != 0;
    case WK_RETRY_ATTEMPT_STATUS:
        break;
    }
    if ((r->on & WK_RETRY_ON_5XX) && o->status >= 500 && o->status <= 599)
        return true;
    if ((r->on & WK_RETRY_ON_GATEWAY_ERROR) &&
        (o->status == 502 || o->status == 503 || o->status == 504))
        return true;
    return (r->on & WK_RETRY_ON_STATUSES) && status_listed(r, o->status);
}

static enum wk_retry_decision
decide(struct wk_retry *r, uint32_t attempt,
       const struct wk_retry_outcome *outcome, wk_time now, wk_time deadline,
       wk_duration *delay)
{
    if (!retryable(r, outcome))
        return WK_RETRY_DENY_NOT_RETRYABLE;
    if (!outcome->idempotent && !r->retry_non_idempotent)
        return WK_RETRY_DENY_NOT_IDEMPOTENT;
    if (attempt >= r->attempts)
        return WK_RETRY_DENY_ATTEMPTS;

    wk_duration d = wk_retry_backoff(r, attempt);

    /* Written as a difference so that WK_TIME_NEVER cannot overflow. */
    if (deadline != WK_TIME_NEVER && (deadline <= now || deadline - now <= d))
        return WK_RETRY_DENY_DEADLINE;
    if (!budget_take(r, now))
        return WK_RETRY_DENY_BUDGET;
    *delay = d;
    return WK_RETRY_ALLOW;
}

enum wk_retry_decision
wk_retry_decide(struct wk_retry *policy, uint32_t attempt,
                const struct wk_retry_outcome *outcome, wk_time now,
                wk_time deadline, wk_duration *delay)
{
    enum wk_retry_decision d =
        decide(policy, attempt, outcome, now, deadline, delay);

    if (d == WK_RETRY_ALLOW)
        atomic_fetch_add_explicit(&policy->retries_total, 1,
                                  memory_order_relaxed);
    else if (outcome->kind != WK_RETRY_ATTEMPT_OK)
        atomic_fetch_add_explicit(&policy->denied_total, 1,
                                  memory_order_relaxed);
    return d;
}

const char *
wk_retry_decision_name(enum wk_retry_decision decision)
{
    switch (decision) {
    case WK_RETRY_ALLOW:
        return "allow";
    case WK_RETRY_DENY_NOT_RETRYABLE:
        return "not retryable";
    case WK_RETRY_DENY_NOT_IDEMPOTENT:
        return "not idempotent";
    case WK_RETRY_DENY_ATTEMPTS:
        return "attempts";
    case WK_RETRY_DENY_DEADLINE:
        return "deadline";
    case WK_RETRY_DENY_BUDGET:
        return "budget";
    }
    return "unknown";
}

unsigned
wk_retry_on_from_name(const char *name)
{
    static const struct {
        const char *name;
        unsigned flag;
    } names[] = {
        {"connect_failure", WK_RETRY_ON_CONNECT_FAILURE},
        {"timeout", WK_RETRY_ON_TIMEOUT},
        {"5xx", WK_RETRY_ON_5XX},
        {"gateway_error", WK_RETRY_ON_GATEWAY_ERROR},
        {"statuses", WK_RETRY_ON_STATUSES},
        {"error", WK_RETRY_ON_ERROR},
    };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (name != NULL && strcmp(name, names[i].name) == 0)
            return names[i].flag;
    }
    return 0;
}

void
wk_retry_snapshot(struct wk_retry *policy, wk_time now,
                  struct wk_retry_snapshot *snap)
{
    window_sums(policy, now, &snap->calls_in_window, &snap->retries_in_window);
    snap->retries_allowed = budget_allowed(policy, snap->calls_in_window);
    snap->retries_total =
        atomic_load_explicit(&policy->retries_total, memory_order_relaxed);
    snap->denied_total =
        atomic_load_explicit(&policy->denied_total, memory_order_relaxed);
}

/* --- configuration and life cycle -------------------------------------- */

void
wk_retry_config_init(struct wk_retry_config *config)
{
    *config = (struct wk_retry_config)WK_RETRY_CONFIG_INIT;
}

static bool
in_range(uint32_t v, uint32_t min, uint32_t max)
{
    return v >= min && v <= max;
}

/* Returns the name of the first knob out of its range, or NULL. */
static const char *
first_invalid(const struct wk_retry_config *c)
{
    unsigned known = WK_RETRY_ON_CONNECT_FAILURE | WK_RETRY_ON_TIMEOUT |
                     WK_RETRY_ON_5XX | WK_RETRY_ON_GATEWAY_ERROR |
                     WK_RETRY_ON_STATUSES | WK_RETRY_ON_ERROR;

    if (!in_range(c->attempts, WK_RETRY_MIN_ATTEMPTS, WK_RETRY_MAX_ATTEMPTS))
        return "attempts";
    if ((c->on & ~known) != 0)
        return "on";
    if (c->status_count > WK_RETRY_MAX_STATUSES)
        return "statuses";
    for (uint32_t i = 0; i < c->status_count; i++) {
        if (!in_range(c->statuses[i], WK_RETRY_MIN_STATUS, WK_RETRY_MAX_STATUS))
            return "statuses";
    }
    if (!in_range(c->backoff_ms, WK_RETRY_MIN_BACKOFF_MS,
                  WK_RETRY_MAX_BACKOFF_MS))
        return "backoff_ms";
    if (!in_range(c->max_backoff_ms, WK_RETRY_MIN_MAX_BACKOFF_MS,
                  WK_RETRY_MAX_MAX_BACKOFF_MS) ||
        c->max_backoff_ms < c->backoff_ms)
        return "max_backoff_ms";
    if (!in_range(c->budget_percent, WK_RETRY_MIN_BUDGET_PERCENT,
                  WK_RETRY_MAX_BUDGET_PERCENT))
        return "budget_percent";
    if (!in_range(c->budget_min_per_second, WK_RETRY_MIN_BUDGET_MIN_PER_SECOND,
                  WK_RETRY_MAX_BUDGET_MIN_PER_SECOND))
        return "budget_min_per_second";
    if (!in_range(c->budget_window_ms, WK_RETRY_MIN_BUDGET_WINDOW_MS,
                  WK_RETRY_MAX_BUDGET_WINDOW_MS) ||
        c->budget_window_ms % WK_RETRY_BUDGET_BUCKETS != 0)
        return "budget_window_ms";
    return NULL;
}

int
wk_retry_config_check(const struct wk_retry_config *config, const char **field)
{
    const char *bad = first_invalid(config);

    if (field != NULL)
        *field = bad;
    return bad == NULL ? WK_OK : WK_ERR_INVALID;
}

int
wk_retry_new(const struct wk_retry_config *config, struct wk_retry **out)
{
    *out = NULL;
    if (wk_retry_config_check(config, NULL) != WK_OK)
        return WK_ERR_INVALID;

    struct wk_retry *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return WK_ERR_NOMEM;
    for (int i = 0; i < WK_RETRY_BUDGET_BUCKETS; i++)
        atomic_init(&r->buckets[i].tag, TAG_EMPTY);
    r->bucket_width =
        WK_MSEC(config->budget_window_ms) / WK_RETRY_BUDGET_BUCKETS;
    r->budget_floor = (uint64_t)config->budget_min_per_second *
                      config->budget_window_ms / 1000;
    r->budget_percent = config->budget_percent;
    r->attempts = config->attempts;
    r->on = config->on;
    memcpy(r->statuses, config->statuses, sizeof(r->statuses));
    r->status_count = config->status_count;
    r->backoff = WK_MSEC(config->backoff_ms);
    r->max_backoff = WK_MSEC(config->max_backoff_ms);
    r->retry_non_idempotent = config->retry_non_idempotent;
    r->random = config->random != NULL ? config->random : thread_random;
    r->random_arg = config->random_arg;
    *out = r;
    return WK_OK;
}

void
wk_retry_destroy(struct wk_retry **policy)
{
    if (policy == NULL || *policy == NULL)
        return;
    free(*policy);
    *policy = NULL;
}

/* --- the per-call middleware ------------------------------------------- */

void
wk_retry_call_init(struct wk_retry_call *call, struct wk_retry *policy,
                   wk_time deadline, bool idempotent)
{
    call->policy = policy;
    /* 0 means "no deadline", as in struct wk_promise_opts. */
    call->deadline = deadline > 0 ? deadline : WK_TIME_NEVER;
    call->idempotent = idempotent;
    call->attempts = 0;
    call->last_err = WK_OK;
}

/* Maps a run's error to an outcome; returns false if it is never retried. */
static bool
outcome_of(int err, bool idempotent, struct wk_retry_outcome *o)
{
    *o = (struct wk_retry_outcome){.idempotent = idempotent};
    switch (err) {
    case WK_OK:
        o->kind = WK_RETRY_ATTEMPT_OK;
        return true;
    case WK_ERR_TIMED_OUT:
        o->kind = WK_RETRY_ATTEMPT_TIMEOUT;
        return true;
    case WK_ERR_BREAKER_OPEN:
    case WK_ERR_RATE_LIMITED:
    case WK_ERR_BULKHEAD_FULL:
    case WK_ERR_REJECTED:
    case WK_ERR_CANCELLED:
        return false;
    default:
        o->kind = WK_RETRY_ATTEMPT_ERROR;
        return true;
    }
}

static void
sleep_for(wk_duration d)
{
    struct timespec ts = {
        .tv_sec = d / WK_NSEC_PER_SEC,
        .tv_nsec = d % WK_NSEC_PER_SEC,
    };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        continue;
}

static int
call_before(void *self, const char *key, wk_time now, void **token)
{
    struct wk_retry_call *call = self;
    struct wk_retry_outcome outcome;
    wk_duration delay = 0;

    (void)key;
    (void)token;
    if (call->attempts == 0) {
        wk_retry_record_call(call->policy, now);
        call->attempts = 1;
        return WK_OK;
    }

    /* A re-run: the previous run failed with last_err. */
    int failed = call->last_err != WK_OK ? call->last_err : WK_ERR_FAILED;

    if (!outcome_of(call->last_err, call->idempotent, &outcome) ||
        wk_retry_decide(call->policy, call->attempts, &outcome, now,
                        call->deadline, &delay) != WK_RETRY_ALLOW)
        return failed;
    if (delay > 0)
        sleep_for(delay);
    call->attempts++;
    return WK_OK;
}

static void
call_after(void *self, const char *key, void *token, int err,
           wk_duration latency, wk_time now)
{
    struct wk_retry_call *call = self;

    (void)key;
    (void)token;
    (void)latency;
    (void)now;
    call->last_err = err;
}

static const struct wk_middleware_ops retry_call_ops = {
    .name = "retry",
    .before = call_before,
    .after = call_after,
};

struct wk_middleware
wk_retry_call_middleware(struct wk_retry_call *call)
{
    return (struct wk_middleware){.ops = &retry_call_ops, .self = call};
}
