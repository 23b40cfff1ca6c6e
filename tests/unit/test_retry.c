/*
 * Retry policy tests: decisions for each condition, full-jitter backoff with
 * an injected random source, the retry budget on a manual clock, config
 * checks, the per-call middleware, and threads spending one budget.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "workshop/error.h"
#include "workshop/retry.h"

#define T0 WK_SEC(1000)

static uint64_t
fixed_random(void *arg)
{
    return *(const uint64_t *)arg;
}

/* --- decisions ---------------------------------------------------------- */

struct decision_case {
    const char *name;
    unsigned on;     /* 0: the default conditions */
    uint16_t status; /* listed in config.statuses when not 0 */
    bool retry_non_idempotent;
    uint32_t attempt;
    struct wk_retry_outcome outcome;
    wk_duration deadline; /* since T0; 0: none */
    uint64_t random;
    enum wk_retry_decision expected;
    wk_duration delay; /* on WK_RETRY_ALLOW */
};

#define CONNECT                                                                \
    {                                                                          \
        WK_RETRY_ATTEMPT_CONNECT_FAILURE, 0, true                              \
    }
#define STATUS(s)                                                              \
    {                                                                          \
        WK_RETRY_ATTEMPT_STATUS, (s), true                                     \
    }

static const struct decision_case decision_cases[] = {
    {"a connection failure is retried by default", 0, 0, false, 1, CONNECT, 0,
     7, WK_RETRY_ALLOW, 7},
    {"a timeout is retried by default",
     0,
     0,
     false,
     1,
     {WK_RETRY_ATTEMPT_TIMEOUT, 0, true},
     0,
     0,
     WK_RETRY_ALLOW,
     0},
    {"a success is not retried",
     0,
     0,
     false,
     1,
     {WK_RETRY_ATTEMPT_OK, 200, true},
     0,
     0,
     WK_RETRY_DENY_NOT_RETRYABLE,
     0},
    {"a 503 is not retried by default", 0, 0, false, 1, STATUS(503), 0, 0,
     WK_RETRY_DENY_NOT_RETRYABLE, 0},
    {"a 503 is retried on 5xx", WK_RETRY_ON_5XX, 0, false, 1, STATUS(503), 0, 0,
     WK_RETRY_ALLOW, 0},
    {"a 404 is not retried on 5xx", WK_RETRY_ON_5XX, 0, false, 1, STATUS(404),
     0, 0, WK_RETRY_DENY_NOT_RETRYABLE, 0},
    {"a 502 is a gateway error", WK_RETRY_ON_GATEWAY_ERROR, 0, false, 1,
     STATUS(502), 0, 0, WK_RETRY_ALLOW, 0},
    {"a 500 is not a gateway error", WK_RETRY_ON_GATEWAY_ERROR, 0, false, 1,
     STATUS(500), 0, 0, WK_RETRY_DENY_NOT_RETRYABLE, 0},
    {"a listed 429 is retried", WK_RETRY_ON_STATUSES, 429, false, 1,
     STATUS(429), 0, 0, WK_RETRY_ALLOW, 0},
    {"an unlisted 409 is not retried", WK_RETRY_ON_STATUSES, 429, false, 1,
     STATUS(409), 0, 0, WK_RETRY_DENY_NOT_RETRYABLE, 0},
    {"a listed status needs the statuses condition", WK_RETRY_ON_5XX, 429,
     false, 1, STATUS(429), 0, 0, WK_RETRY_DENY_NOT_RETRYABLE, 0},
    {"a connection failure is not retried without its condition",
     WK_RETRY_ON_5XX, 0, false, 1, CONNECT, 0, 0, WK_RETRY_DENY_NOT_RETRYABLE,
     0},
    {"other errors are retried on error",
     WK_RETRY_ON_ERROR,
     0,
     false,
     1,
     {WK_RETRY_ATTEMPT_ERROR, 0, true},
     0,
     0,
     WK_RETRY_ALLOW,
     0},
    {"other errors are not retried by default",
     0,
     0,
     false,
     1,
     {WK_RETRY_ATTEMPT_ERROR, 0, true},
     0,
     0,
     WK_RETRY_DENY_NOT_RETRYABLE,
     0},
    {"a call that is not idempotent is not retried",
     0,
     0,
     false,
     1,
     {WK_RETRY_ATTEMPT_CONNECT_FAILURE, 0, false},
     0,
     0,
     WK_RETRY_DENY_NOT_IDEMPOTENT,
     0},
    {"the caller may opt in for calls that are not idempotent",
     0,
     0,
     true,
     1,
     {WK_RETRY_ATTEMPT_CONNECT_FAILURE, 0, false},
     0,
     0,
     WK_RETRY_ALLOW,
     0},
    {"the second attempt may be retried", 0, 0, false, 2, CONNECT, 0, 0,
     WK_RETRY_ALLOW, 0},
    {"after the third attempt there is no fourth", 0, 0, false, 3, CONNECT, 0,
     0, WK_RETRY_DENY_ATTEMPTS, 0},
    {"a delay ending before the deadline is allowed", 0, 0, false, 1, CONNECT,
     WK_MSEC(20) + 1, WK_MSEC(20), WK_RETRY_ALLOW, WK_MSEC(20)},
    {"a delay ending at the deadline is denied", 0, 0, false, 1, CONNECT,
     WK_MSEC(20), WK_MSEC(20), WK_RETRY_DENY_DEADLINE, 0},
    {"a passed deadline denies even without delay", 0, 0, false, 1, CONNECT, -1,
     0, WK_RETRY_DENY_DEADLINE, 0},
};

static void
test_decisions(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(decision_cases) / sizeof(decision_cases[0]);
         i++) {
        const struct decision_case *dc = &decision_cases[i];
        struct wk_retry_config config = WK_RETRY_CONFIG_INIT;
        struct wk_retry *policy = NULL;
        uint64_t random = dc->random;
        wk_duration delay = -1;

        if (dc->on != 0)
            config.on = dc->on;
        if (dc->status != 0) {
            config.statuses[0] = dc->status;
            config.status_count = 1;
        }
        config.retry_non_idempotent = dc->retry_non_idempotent;
        config.random = fixed_random;
        config.random_arg = &random;
        assert_int_equal(wk_retry_new(&config, &policy), WK_OK);

        wk_time deadline =
            dc->deadline != 0 ? T0 + dc->deadline : WK_TIME_NEVER;
        enum wk_retry_decision got = wk_retry_decide(
            policy, dc->attempt, &dc->outcome, T0, deadline, &delay);

        if (got != dc->expected)
            fail_msg("%s: decided %s, expected %s", dc->name,
                     wk_retry_decision_name(got),
                     wk_retry_decision_name(dc->expected));
        if (got == WK_RETRY_ALLOW && delay != dc->delay)
            fail_msg("%s: delay %lld ns, expected %lld", dc->name,
                     (long long)delay, (long long)dc->delay);
        wk_retry_destroy(&policy);
        assert_null(policy);
    }
}

/* --- backoff ------------------------------------------------------------ */

static void
test_backoff_caps(void **state)
{
    static const struct {
        uint32_t retry;
        wk_duration cap;
    } caps[] = {
        {1, WK_MSEC(25)},  {2, WK_MSEC(50)},  {3, WK_MSEC(100)},
        {4, WK_MSEC(200)}, {5, WK_MSEC(250)}, {10, WK_MSEC(250)},
        {0, WK_MSEC(25)},
    };
    struct wk_retry_config config = WK_RETRY_CONFIG_INIT;
    struct wk_retry *policy = NULL;
    uint64_t random = 0;

    (void)state;
    config.random = fixed_random;
    config.random_arg = &random;
    assert_int_equal(wk_retry_new(&config, &policy), WK_OK);
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        /* The largest draw gives the cap, the smallest gives 0. */
        random = (uint64_t)caps[i].cap;
        if (wk_retry_backoff(policy, caps[i].retry) != caps[i].cap)
            fail_msg("retry %u: the cap is not %lld ns", caps[i].retry,
                     (long long)caps[i].cap);
        random = (uint64_t)caps[i].cap + 1;
        assert_int_equal(wk_retry_backoff(policy, caps[i].retry), 0);
        random = UINT64_C(123456789);
        assert_int_equal(
            wk_retry_backoff(policy, caps[i].retry),
            (wk_duration)(UINT64_C(123456789) % (uint64_t)(caps[i].cap + 1)));
    }
    wk_retry_destroy(&policy);
}

/* The default random source spreads delays over [0, cap], mean near cap/2. */
static void
test_backoff_full_jitter(void **state)
{
    struct wk_retry_config config = WK_RETRY_CONFIG_INIT;
    struct wk_retry *policy = NULL;
    wk_duration cap = WK_MSEC(25);
    double sum = 0;
    wk_duration low = cap, high = 0;

    (void)state;
    assert_int_equal(wk_retry_new(&config, &policy), WK_OK);
    for (int i = 0; i < 10000; i++) {
        wk_duration d = wk_retry_backoff(policy, 1);

        assert_in_range(d, 0, cap);
        sum += (double)d;
        low = d < low ? d : low;
        high = d > high ? d : high;
    }

    double mean = sum / 10000;

    assert_true(mean > 0.45 * (double)cap && mean < 0.55 * (double)cap);
    assert_true(low < cap / 10);
    assert_true(high > cap - cap / 10);
    wk_retry_destroy(&policy);
}

/* --- budget ------------------------------------------------------------- */

enum budget_op {
    B_END = 0,
    B_CALLS,   /* record n calls */
    B_RETRIES, /* ask for n retries; `allowed` of them must be allowed */
    B_ADVANCE, /* move the clock n ms */
};

struct budget_step {
    enum budget_op op;
    int n;
    int allowed;
};

struct budget_case {
    const char *name;
    uint32_t percent;
    uint32_t min_per_second;
    struct budget_step steps[8];
};

static const struct budget_case budget_cases[] = {
    {"without calls the floor allows 10 per second of the window",
     20,
     10,
     {{B_RETRIES, 150, 100}}},
    {"1000 calls add 20 percent to the floor",
     20,
     10,
     {{B_CALLS, 1000, 0}, {B_RETRIES, 400, 300}}},
    {"retries leave the window with their bucket",
     20,
     10,
     {{B_RETRIES, 100, 100},
      {B_ADVANCE, 9000, 0},
      {B_RETRIES, 1, 0},
      {B_ADVANCE, 1000, 0},
      {B_RETRIES, 101, 100}}},
    {"calls leave the window too",
     50,
     0,
     {{B_CALLS, 10, 0}, {B_ADVANCE, 10000, 0}, {B_RETRIES, 1, 0}}},
    {"a zero budget allows no retries",
     0,
     0,
     {{B_CALLS, 1000, 0}, {B_RETRIES, 5, 0}}},
    {"half of the calls may be retried",
     50,
     0,
     {{B_CALLS, 10, 0}, {B_RETRIES, 6, 5}}},
};

static void
run_budget_step(struct wk_retry *policy, const struct budget_step *s,
                wk_time *now, const char *name)
{
    const struct wk_retry_outcome timeout = {WK_RETRY_ATTEMPT_TIMEOUT, 0, true};
    wk_duration delay;
    int allowed = 0;

    switch (s->op) {
    case B_END:
        break;
    case B_CALLS:
        for (int i = 0; i < s->n; i++)
            wk_retry_record_call(policy, *now);
        break;
    case B_RETRIES:
        for (int i = 0; i < s->n; i++) {
            if (wk_retry_decide(policy, 1, &timeout, *now, WK_TIME_NEVER,
                                &delay) == WK_RETRY_ALLOW)
                allowed++;
        }
        if (allowed != s->allowed)
            fail_msg("%s: %d of %d retries allowed, expected %d", name, allowed,
                     s->n, s->allowed);
        break;
    case B_ADVANCE:
        *now += WK_MSEC(s->n);
        break;
    }
}

/* From time 0 the window reaches back before the clock's start. */
static const wk_time starts[] = {0, T0, T0 + WK_MSEC(999)};

static void
test_budget(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(budget_cases) / sizeof(budget_cases[0]);
         i++) {
        for (size_t k = 0; k < sizeof(starts) / sizeof(starts[0]); k++) {
            const struct budget_case *bc = &budget_cases[i];
            struct wk_retry_config config = WK_RETRY_CONFIG_INIT;
            struct wk_retry *policy = NULL;
            wk_time now = starts[k];
            char name[160];

            snprintf(name, sizeof(name), "%s (clock from %lld ms)", bc->name,
                     (long long)(now / WK_NSEC_PER_MSEC));
            config.budget_percent = bc->percent;
            config.budget_min_per_second = bc->min_per_second;
            assert_int_equal(wk_retry_new(&config, &policy), WK_OK);
            for (const struct budget_step *s = bc->steps; s->op != B_END; s++)
                run_budget_step(policy, s, &now, name);
            wk_retry_destroy(&policy);
        }
    }
}

static void
test_snapshot(void **state)
{
    struct wk_retry_config config = WK_RETRY_CONFIG_INIT;
    const struct wk_retry_outcome timeout = {WK_RETRY_ATTEMPT_TIMEOUT, 0, true};
    const struct wk_retry_outcome ok = {WK_RETRY_ATTEMPT_OK, 200, true};
    struct wk_retry *policy = NULL;
    struct wk_retry_snapshot snap;
    wk_duration delay;

    (void)state;
    assert_int_equal(wk_retry_new(&config, &policy), WK_OK);
    for (int i = 0; i < 50; i++)
        wk_retry_record_call(policy, T0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            wk_retry_decide(policy, 1, &timeout, T0, WK_TIME_NEVER, &delay),
            WK_RETRY_ALLOW);
    assert_int_equal(
        wk_retry_decide(policy, 3, &timeout, T0, WK_TIME_NEVER, &delay),
        WK_RETRY_DENY_ATTEMPTS);
    assert_int_equal(wk_retry_decide(policy, 1, &ok, T0, WK_TIME_NEVER, &delay),
                     WK_RETRY_DENY_NOT_RETRYABLE);

    wk_retry_snapshot(policy, T0, &snap);
    assert_int_equal(snap.calls_in_window, 50);
    assert_int_equal(snap.retries_in_window, 3);
    assert_int_equal(snap.retries_allowed, 100 + 10);
    assert_int_equal(snap.retries_total, 3);
    assert_int_equal(snap.denied_total, 1); /* successes are not denials */
    wk_retry_destroy(&policy);
}

/* --- configuration and names -------------------------------------------- */

struct config_case {
    const char *name;
    void (*change)(struct wk_retry_config *c);
    const char *field;
};

static void
no_change(struct wk_retry_config *c)
{
    (void)c;
}

static void
zero_attempts(struct wk_retry_config *c)
{
    c->attempts = 0;
}

static void
eleven_attempts(struct wk_retry_config *c)
{
    c->attempts = 11;
}

static void
unknown_condition(struct wk_retry_config *c)
{
    c->on |= 1u << 20;
}

static void
status_out_of_range(struct wk_retry_config *c)
{
    c->statuses[0] = 600;
    c->status_count = 1;
}

static void
too_many_statuses(struct wk_retry_config *c)
{
    c->status_count = WK_RETRY_MAX_STATUSES + 1;
}

static void
cap_under_base(struct wk_retry_config *c)
{
    c->backoff_ms = 100;
    c->max_backoff_ms = 50;
}

static void
percent_over_100(struct wk_retry_config *c)
{
    c->budget_percent = 101;
}

static void
uneven_window(struct wk_retry_config *c)
{
    c->budget_window_ms = 10005;
}

static void
every_maximum(struct wk_retry_config *c)
{
    c->attempts = WK_RETRY_MAX_ATTEMPTS;
    c->backoff_ms = WK_RETRY_MAX_BACKOFF_MS;
    c->max_backoff_ms = WK_RETRY_MAX_MAX_BACKOFF_MS;
    c->budget_percent = WK_RETRY_MAX_BUDGET_PERCENT;
    c->budget_min_per_second = WK_RETRY_MAX_BUDGET_MIN_PER_SECOND;
    c->budget_window_ms = WK_RETRY_MAX_BUDGET_WINDOW_MS;
    c->status_count = WK_RETRY_MAX_STATUSES;
    for (int i = 0; i < WK_RETRY_MAX_STATUSES; i++)
        c->statuses[i] = (uint16_t)(500 + i);
}

static const struct config_case config_cases[] = {
    {"the defaults are valid", no_change, NULL},
    {"every maximum is valid", every_maximum, NULL},
    {"zero attempts", zero_attempts, "attempts"},
    {"eleven attempts", eleven_attempts, "attempts"},
    {"an unknown condition", unknown_condition, "on"},
    {"status 600", status_out_of_range, "statuses"},
    {"too many statuses", too_many_statuses, "statuses"},
    {"a cap under the base delay", cap_under_base, "max_backoff_ms"},
    {"budget_percent 101", percent_over_100, "budget_percent"},
    {"a window that 10 buckets do not divide", uneven_window,
     "budget_window_ms"},
};

static void
test_config_check(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(config_cases) / sizeof(config_cases[0]);
         i++) {
        const struct config_case *cc = &config_cases[i];
        struct wk_retry_config config;
        struct wk_retry *policy = NULL;
        const char *field = "unset";

        wk_retry_config_init(&config);
        cc->change(&config);
        int err = wk_retry_config_check(&config, &field);

        if (cc->field == NULL) {
            if (err != WK_OK || field != NULL)
                fail_msg("%s: rejected (%s)", cc->name, field);
            assert_int_equal(wk_retry_new(&config, &policy), WK_OK);
            wk_retry_destroy(&policy);
            continue;
        }
        if (err != WK_ERR_INVALID || field == NULL ||
            strcmp(field, cc->field) != 0)
            fail_msg("%s: got field %s, expected %s", cc->name,
                     field != NULL ? field : "none", cc->field);
        assert_int_equal(wk_retry_new(&config, &policy), WK_ERR_INVALID);
        assert_null(policy);
    }
}

static void
test_condition_names(void **state)
{
    (void)state;
    assert_int_equal(wk_retry_on_from_name("connect_failure"),
                     WK_RETRY_ON_CONNECT_FAILURE);
    assert_int_equal(wk_retry_on_from_name("timeout"), WK_RETRY_ON_TIMEOUT);
    assert_int_equal(wk_retry_on_from_name("5xx"), WK_RETRY_ON_5XX);
    assert_int_equal(wk_retry_on_from_name("gateway_error"),
                     WK_RETRY_ON_GATEWAY_ERROR);
    assert_int_equal(wk_retry_on_from_name("statuses"), WK_RETRY_ON_STATUSES);
    assert_int_equal(wk_retry_on_from_name("error"), WK_RETRY_ON_ERROR);
    assert_int_equal(wk_retry_on_from_name("5XX"), 0);
    assert_int_equal(wk_retry_on_from_name(""), 0);
    assert_int_equal(wk_retry_on_from_name(NULL), 0);
    assert_string_equal(wk_retry_decision_name(WK_RETRY_DENY_BUDGET), "budget");
}

/* --- the per-call middleware -------------------------------------------- */

/* One run of a step through the middleware, ending with err if admitted. */
static int
run_once(struct wk_middleware *mw, int err)
{
    void *token;
    int admitted = wk_middleware_before_all(mw, 1, "k", T0, &token);

    if (admitted == WK_OK)
        wk_middleware_after_all(mw, 1, "k", &token, err, T0, T0);
    return admitted;
}

static void
test_call_middleware(void **state)
{
    struct wk_retry_config config = WK_RETRY_CONFIG_INIT;
    struct wk_retry *policy = NULL;
    struct wk_retry_call call;
    struct wk_retry_snapshot snap;
    uint64_t random = 0; /* no backoff, so the test does not sleep */

    (void)state;
    config.random = fixed_random;
    config.random_arg = &random;
    assert_int_equal(wk_retry_new(&config, &policy), WK_OK);
    wk_retry_call_init(&call, policy, 0, true);

    struct wk_middleware mw = wk_retry_call_middleware(&call);

    assert_string_equal(mw.ops->name, "retry");
    assert_int_equal(run_once(&mw, WK_ERR_TIMED_OUT), WK_OK);
    assert_int_equal(run_once(&mw, WK_ERR_TIMED_OUT), WK_OK);
    assert_int_equal(run_once(&mw, WK_ERR_TIMED_OUT), WK_OK);
    /* Three attempts used: the fourth run ends with the last error. */
    assert_int_equal(run_once(&mw, WK_OK), WK_ERR_TIMED_OUT);

    wk_retry_snapshot(policy, T0, &snap);
    assert_int_equal(snap.calls_in_window, 1);
    assert_int_equal(snap.retries_in_window, 2);

    /* A call rejected by another policy is never retried. */
    wk_retry_call_init(&call, policy, 0, true);
    assert_int_equal(run_once(&mw, WK_ERR_BREAKER_OPEN), WK_OK);
    assert_int_equal(run_once(&mw, WK_OK), WK_ERR_BREAKER_OPEN);

    /* Nor is one that the policy's conditions do not cover. */
    wk_retry_call_init(&call, policy, 0, true);
    assert_int_equal(run_once(&mw, WK_ERR_UPSTREAM), WK_OK);
    assert_int_equal(run_once(&mw, WK_OK), WK_ERR_UPSTREAM);

    /* Nor one past its deadline. */
    wk_retry_call_init(&call, policy, T0, true);
    assert_int_equal(run_once(&mw, WK_ERR_TIMED_OUT), WK_OK);
    assert_int_equal(run_once(&mw, WK_OK), WK_ERR_TIMED_OUT);
    wk_retry_destroy(&policy);
}

/* --- threads ------------------------------------------------------------ */

#define THREADS 6

struct spender {
    struct wk_retry *policy;
    pthread_barrier_t start;
    _Atomic int allowed;
};

static void *
spend(void *arg)
{
    struct spender *s = arg;
    const struct wk_retry_outcome timeout = {WK_RETRY_ATTEMPT_TIMEOUT, 0, true};
    wk_duration delay;
    int allowed = 0;

    pthread_barrier_wait(&s->start);
    for (int i = 0; i < 500; i++) {
        wk_retry_record_call(s->policy, T0);
        if (wk_retry_decide(s->policy, 1, &timeout, T0, WK_TIME_NEVER,
                            &delay) == WK_RETRY_ALLOW)
            allowed++;
    }
    atomic_fetch_add(&s->allowed, allowed);
    return NULL;
}

/*
 * Six threads each record a call and ask for a retry, 500 times, with the
 * clock frozen. The budget ends at 100 plus 20 % of 3000 calls, 700. The
 * bounds allow for the races: each thread may overshoot by one retry, and
 * reading the window while other threads count may cost up to two retries
 * per thread.
 */
static void
test_threads_share_budget(void **state)
{
    struct wk_retry_config config = WK_RETRY_CONFIG_INIT;
    struct spender s = {0};
    pthread_t threads[THREADS];

    (void)state;
    assert_int_equal(wk_retry_new(&config, &s.policy), WK_OK);
    pthread_barrier_init(&s.start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, spend, &s);
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&s.start);

    assert_in_range(atomic_load(&s.allowed), 700 - 2 * THREADS, 700 + THREADS);
    wk_retry_destroy(&s.policy);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decisions),
        cmocka_unit_test(test_backoff_caps),
        cmocka_unit_test(test_backoff_full_jitter),
        cmocka_unit_test(test_budget),
        cmocka_unit_test(test_snapshot),
        cmocka_unit_test(test_config_check),
        cmocka_unit_test(test_condition_names),
        cmocka_unit_test(test_call_middleware),
        cmocka_unit_test(test_threads_share_budget),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
