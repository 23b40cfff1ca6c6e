/*
 * Unit tests for middlewares: wk_middleware_before_all/after_all on their
 * own, and how a promise runs them around its steps (append and override,
 * event keys, reverse afters, rejections, latency, retries, close).
 *
 * Each middleware writes each call it gets to a log string that the tests
 * compare whole: "A>k" is A's before for key k, "A<k:E:L" its after with
 * outcome E and latency L in milliseconds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "workshop/error.h"
#include "workshop/middleware.h"
#include "workshop/promise.h"

struct log {
    pthread_mutex_t mu;
    char text[512];
    size_t len;
};

static struct log mw_log = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void log_add(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
log_add(const char *fmt, ...)
{
    va_list ap;

    pthread_mutex_lock(&mw_log.mu);
    if (mw_log.len > 0 && mw_log.len + 1 < sizeof(mw_log.text))
        mw_log.text[mw_log.len++] = ' ';
    va_start(ap, fmt);
    int n = vsnprintf(mw_log.text + mw_log.len,
                      sizeof(mw_log.text) - mw_log.len, fmt, ap);
    va_end(ap);
    if (n > 0)
        mw_log.len += (size_t)n;
    if (mw_log.len >= sizeof(mw_log.text))
        mw_log.len = sizeof(mw_log.text) - 1;
    pthread_mutex_unlock(&mw_log.mu);
}

static int
log_reset(void **state)
{
    (void)state;
    pthread_mutex_lock(&mw_log.mu);
    mw_log.len = 0;
    mw_log.text[0] = '\0';
    pthread_mutex_unlock(&mw_log.mu);
    return 0;
}

static void
assert_log(const char *want)
{
    pthread_mutex_lock(&mw_log.mu);
    assert_string_equal(mw_log.text, want);
    pthread_mutex_unlock(&mw_log.mu);
}

/* A middleware that logs and rejects with `reject` when it is not WK_OK. */
struct recorder {
    const char *name;
    int reject;
};

static int
rec_before(void *self, const char *key, wk_time now, void **token)
{
    struct recorder *r = self;

    (void)now;
    assert_null(*token);
    log_add("%s>%s", r->name, key);
    if (r->reject != WK_OK)
        return r->reject;
    *token = r; /* after() checks that it comes back */
    return WK_OK;
}

static void
rec_after(void *self, const char *key, void *token, int err,
          wk_duration latency, wk_time now)
{
    struct recorder *r = self;

    (void)now;
    assert_ptr_equal(token, r);
    log_add("%s<%s:%d:%lld", r->name, key, err,
            (long long)(latency / WK_NSEC_PER_MSEC));
}

static const struct wk_middleware_ops rec_ops = {
    .name = "recorder",
    .before = rec_before,
    .after = rec_after,
};

/* A middleware without an after hook. */
static const struct wk_middleware_ops before_only_ops = {
    .name = "before-only",
    .before = rec_before,
};

static struct recorder rec_a = {"A", WK_OK};
static struct recorder rec_b = {"B", WK_OK};
static struct recorder rec_c = {"C", WK_OK};
static struct recorder rec_d = {"D", WK_OK};

static int
setup(void **state)
{
    rec_a.reject = rec_b.reject = rec_c.reject = rec_d.reject = WK_OK;
    return log_reset(state);
}

/* --- the chain functions on their own --------------------------------- */

static void
test_before_all_admits_in_order(void **state)
{
    struct wk_middleware mws[] = {{&rec_ops, &rec_a}, {&rec_ops, &rec_b}};
    void *tokens[2] = {&rec_c, &rec_c};

    (void)state;
    assert_int_equal(wk_middleware_before_all(mws, 2, "k", 0, tokens), WK_OK);
    assert_ptr_equal(tokens[0], &rec_a);
    assert_ptr_equal(tokens[1], &rec_b);
    wk_middleware_after_all(mws, 2, "k", tokens, WK_ERR_UPSTREAM, WK_MSEC(2),
                            WK_MSEC(9));
    assert_log("A>k B>k B<k:7:7 A<k:7:7");
}

static void
test_rejection_runs_earlier_afters(void **state)
{
    struct wk_middleware mws[] = {
        {&rec_ops, &rec_a}, {&rec_ops, &rec_b}, {&rec_ops, &rec_c}};
    void *tokens[3];

    (void)state;
    rec_c.reject = WK_ERR_BREAKER_OPEN;
    assert_int_equal(wk_middleware_before_all(mws, 3, "k", WK_MSEC(5), tokens),
                     WK_ERR_BREAKER_OPEN);
    assert_log("A>k B>k C>k B<k:1:0 A<k:1:0");
}

static void
test_first_rejection_runs_no_after(void **state)
{
    struct wk_middleware mws[] = {{&rec_ops, &rec_a}, {&rec_ops, &rec_b}};
    void *tokens[2];

    (void)state;
    rec_a.reject = WK_ERR_RATE_LIMITED;
    assert_int_equal(wk_middleware_before_all(mws, 2, "k", 0, tokens),
                     WK_ERR_RATE_LIMITED);
    assert_log("A>k");
}

static void
test_missing_after_is_skipped(void **state)
{
    struct wk_middleware mws[] = {{&before_only_ops, &rec_a},
                                  {&rec_ops, &rec_b}};
    void *tokens[2];

    (void)state;
    assert_int_equal(wk_middleware_before_all(mws, 2, "k", 0, tokens), WK_OK);
    wk_middleware_after_all(mws, 2, "k", tokens, WK_OK, WK_MSEC(3), 0);
    /* A clock read that goes backwards gives zero latency, not negative. */
    assert_log("A>k B>k B<k:0:0");
}

/* --- around promise steps --------------------------------------------- */

static struct wk_manual_clock clock_;

/* Takes 7 ms of the manual clock and outputs nothing. */
static int
slow_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
          struct wk_value *out)
{
    (void)ctx;
    (void)arg;
    (void)last;
    (void)out;
    log_add("run");
    wk_manual_clock_advance(&clock_, WK_MSEC(7));
    return WK_OK;
}

struct promise_case {
    const char *name;
    const char *promise_key;
    const char *step_key;
    enum wk_middleware_mode mode;
    size_t step_mws; /* how many of C, D the step has */
    struct recorder *rejecter;
    int want_err;
    const char *want_log;
};

static const struct promise_case promise_cases[] = {
    {"append runs defaults first, afters reversed", "route", NULL, WK_MW_APPEND,
     2, NULL, WK_OK,
     "A>route B>route C>route D>route run D<route:0:7 C<route:0:7 "
     "B<route:0:7 A<route:0:7"},
    {"override replaces the defaults", "route", NULL, WK_MW_OVERRIDE, 2, NULL,
     WK_OK, "C>route D>route run D<route:0:7 C<route:0:7"},
    {"override with none runs no middleware", "route", NULL, WK_MW_OVERRIDE, 0,
     NULL, WK_OK, "run"},
    {"the step's key wins over the promise's", "route", "step", WK_MW_APPEND, 1,
     NULL, WK_OK, "A>step B>step C>step run C<step:0:7 B<step:0:7 A<step:0:7"},
    {"no key at all is the empty string", NULL, NULL, WK_MW_OVERRIDE, 1, NULL,
     WK_OK, "C> run C<:0:7"},
    {"a step's rejection unwinds the defaults too", "k", NULL, WK_MW_APPEND, 2,
     &rec_d, WK_ERR_BULKHEAD_FULL, "A>k B>k C>k D>k C<k:3:0 B<k:3:0 A<k:3:0"},
    {"a default's rejection stops before the step's", "k", NULL, WK_MW_APPEND,
     2, &rec_b, WK_ERR_BREAKER_OPEN, "A>k B>k A<k:1:0"},
};

static void
test_promise_table(void **state)
{
    struct wk_middleware defaults[] = {{&rec_ops, &rec_a}, {&rec_ops, &rec_b}};
    struct wk_middleware own[] = {{&rec_ops, &rec_c}, {&rec_ops, &rec_d}};

    for (size_t c = 0; c < sizeof(promise_cases) / sizeof(promise_cases[0]);
         c++) {
        const struct promise_case *tc = &promise_cases[c];

        setup(state);
        wk_manual_clock_init(&clock_, WK_SEC(1));
        if (tc->rejecter != NULL)
            tc->rejecter->reject = tc->want_err;

        struct wk_promise_opts opts = {
            .clock = &clock_.clock,
            .key = tc->promise_key,
            .middlewares = defaults,
            .middleware_count = 2,
        };
        struct wk_step step = {
            .run = slow_step,
            .key = tc->step_key,
            .middlewares = own,
            .middleware_count = tc->step_mws,
            .middleware_mode = tc->mode,
        };
        struct wk_promise *p = wk_promise_new(&opts, &step);

        assert_non_null(p);
        assert_int_equal(wk_promise_start(p), WK_OK);

        int err = wk_promise_wait(p, WK_TIME_NEVER);

        pthread_mutex_lock(&mw_log.mu);
        if (err != tc->want_err || strcmp(mw_log.text, tc->want_log) != 0)
            fail_msg("case '%s': err %d log '%s'\n  want %d '%s'", tc->name,
                     err, mw_log.text, tc->want_err, tc->want_log);
        pthread_mutex_unlock(&mw_log.mu);
        wk_promise_free(&p);
    }
}

static void
test_promise_copies_middlewares_and_keys(void **state)
{
    struct wk_middleware defaults[] = {{&rec_ops, &rec_a}};
    struct wk_middleware own[] = {{&rec_ops, &rec_c}};
    char promise_key[] = "route";
    char step_key[] = "step";

    (void)state;
    wk_manual_clock_init(&clock_, 0);

    struct wk_promise_opts opts = {.clock = &clock_.clock,
                                   .key = promise_key,
                                   .middlewares = defaults,
                                   .middleware_count = 1};
    struct wk_step step = {.run = slow_step,
                           .key = step_key,
                           .middlewares = own,
                           .middleware_count = 1};
    struct wk_promise *p = wk_promise_new(&opts, &step);
    struct wk_step then = step;

    then.key = NULL;
    assert_int_equal(wk_promise_then(p, &then), WK_OK);
    /* The caller's arrays and strings may change once the calls return. */
    defaults[0].self = &rec_b;
    own[0].self = &rec_d;
    memcpy(promise_key, "xxxxx", 5);
    memcpy(step_key, "yyyy", 4);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_OK);
    assert_log("A>step C>step run C<step:0:7 A<step:0:7 "
               "A>route C>route run C<route:0:7 A<route:0:7");
    wk_promise_free(&p);
}

static int
failing_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
             struct wk_value *out)
{
    (void)ctx;
    (void)arg;
    (void)last;
    (void)out;
    log_add("run");
    return WK_ERR_UPSTREAM;
}

static int
recover(struct wk_ctx *ctx, void *arg, int err, const struct wk_value *last,
        struct wk_value *out)
{
    (void)ctx;
    (void)arg;
    (void)err;
    (void)last;
    (void)out;
    log_add("recover");
    return WK_OK;
}

static void
test_every_retry_runs_middlewares(void **state)
{
    struct wk_middleware own[] = {{&rec_ops, &rec_a}};
    struct wk_step step = {.run = failing_step,
                           .key = "k",
                           .middlewares = own,
                           .middleware_count = 1};

    (void)state;
    wk_manual_clock_init(&clock_, 0);

    struct wk_promise_opts opts = {.clock = &clock_.clock};
    struct wk_promise *p = wk_promise_new(&opts, &step);

    assert_int_equal(wk_promise_recover_and_retry(p, recover, NULL, 2), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_ERR_UPSTREAM);
    /* Recoveries and exception steps are not calls: no middleware. */
    assert_log("A>k run A<k:7:0 recover A>k run A<k:7:0");
    wk_promise_free(&p);
}

/* An async step that keeps its handle in *arg for the test to settle. */
static void
parking_async(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
              struct wk_settle *settle)
{
    (void)ctx;
    (void)last;
    log_add("start");
    *(struct wk_settle **)arg = settle;
}

static void
test_async_afters_run_at_settle(void **state)
{
    struct wk_settle *settle = NULL;
    struct wk_middleware mws[] = {{&rec_ops, &rec_a}, {&rec_ops, &rec_b}};
    struct wk_step step = {.run_async = parking_async, .arg = &settle};

    (void)state;
    wk_manual_clock_init(&clock_, 0);

    struct wk_promise_opts opts = {.clock = &clock_.clock,
                                   .key = "up",
                                   .middlewares = mws,
                                   .middleware_count = 2};
    struct wk_promise *p = wk_promise_new(&opts, &step);

    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_log("A>up B>up start");
    wk_manual_clock_advance(&clock_, WK_MSEC(25));
    wk_settle(settle, WK_ERR_UPSTREAM, (struct wk_value){0});
    assert_log("A>up B>up start B<up:7:25 A<up:7:25");
    wk_promise_free(&p);
}

static void
test_afters_run_for_settle_after_close(void **state)
{
    struct wk_settle *settle = NULL;
    struct wk_middleware mws[] = {{&rec_ops, &rec_a}};
    struct wk_step step = {.run_async = parking_async, .arg = &settle};

    (void)state;
    wk_manual_clock_init(&clock_, 0);

    struct wk_promise_opts opts = {.clock = &clock_.clock,
                                   .key = "up",
                                   .middlewares = mws,
                                   .middleware_count = 1};
    struct wk_promise *p = wk_promise_new(&opts, &step);

    assert_int_equal(wk_promise_start(p), WK_OK);
    wk_promise_free(&p);
    wk_manual_clock_advance(&clock_, WK_MSEC(4));
    /* A breaker must learn how the call it admitted ended. */
    wk_settle(settle, WK_OK, (struct wk_value){0});
    assert_log("A>up start A<up:0:4");
}

static void
test_step_after_deadline_gets_middlewares(void **state)
{
    struct wk_middleware mws[] = {{&rec_ops, &rec_a}};
    struct wk_step step = {.run = slow_step};

    (void)state;
    wk_manual_clock_init(&clock_, WK_MSEC(10));

    struct wk_promise_opts opts = {.clock = &clock_.clock,
                                   .deadline = WK_MSEC(10),
                                   .key = "k",
                                   .middlewares = mws,
                                   .middleware_count = 1};
    struct wk_promise *p = wk_promise_new(&opts, &step);

    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_OK);
    /* The deadline is the step's to act on; the call still happened. */
    assert_log("A>k run A<k:0:7");
    wk_promise_free(&p);
}

/* A middleware whose before closes the promise it admits. */
struct closer {
    struct wk_promise *p;
};

static int
closer_before(void *self, const char *key, wk_time now, void **token)
{
    struct closer *c = self;

    (void)now;
    (void)token;
    log_add("X>%s", key);
    wk_promise_close(c->p);
    return WK_OK;
}

static void
closer_after(void *self, const char *key, void *token, int err,
             wk_duration latency, wk_time now)
{
    (void)self;
    (void)token;
    (void)latency;
    (void)now;
    log_add("X<%s:%d", key, err);
}

static const struct wk_middleware_ops closer_ops = {
    .name = "closer",
    .before = closer_before,
    .after = closer_after,
};

static void
test_close_in_before_stops_the_call(void **state)
{
    struct wk_settle *settle = NULL;
    struct closer c = {0};
    struct wk_middleware mws[] = {{&closer_ops, &c}};
    struct wk_step step = {.run_async = parking_async, .arg = &settle};

    (void)state;
    wk_manual_clock_init(&clock_, 0);

    struct wk_promise_opts opts = {.clock = &clock_.clock,
                                   .key = "up",
                                   .middlewares = mws,
                                   .middleware_count = 1};

    c.p = wk_promise_new(&opts, &step);
    assert_int_equal(wk_promise_start(c.p), WK_OK);
    /* run_async was never called, and the admitted call got its after. */
    assert_null(settle);
    assert_log("X>up X<up:5");
    assert_int_equal(wk_promise_wait(c.p, WK_TIME_NEVER), WK_ERR_CANCELLED);
    wk_promise_free(&c.p);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_before_all_admits_in_order, setup),
        cmocka_unit_test_setup(test_rejection_runs_earlier_afters, setup),
        cmocka_unit_test_setup(test_first_rejection_runs_no_after, setup),
        cmocka_unit_test_setup(test_missing_after_is_skipped, setup),
        cmocka_unit_test_setup(test_promise_table, setup),
        cmocka_unit_test_setup(test_promise_copies_middlewares_and_keys, setup),
        cmocka_unit_test_setup(test_every_retry_runs_middlewares, setup),
        cmocka_unit_test_setup(test_async_afters_run_at_settle, setup),
        cmocka_unit_test_setup(test_afters_run_for_settle_after_close, setup),
        cmocka_unit_test_setup(test_step_after_deadline_gets_middlewares,
                               setup),
        cmocka_unit_test_setup(test_close_in_before_stops_the_call, setup),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
