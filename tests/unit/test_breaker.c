/*
 * Circuit breaker tests: scenarios driven by a manual clock, transition
 * reports, snapshots, config checks, the middleware, and real threads racing
 * on the half-open gate.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "workshop/breaker.h"
#include "workshop/error.h"

#define T0 WK_SEC(1000)

/* --- scenario tables ---------------------------------------------------- */

enum op {
    END = 0,
    OK,          /* n calls admitted and succeed */
    FAIL,        /* n calls admitted and fail */
    TIMEOUT,     /* n calls admitted and time out */
    SLOW,        /* n calls admitted and succeed after slow_call_ms */
    REJECTED,    /* n calls rejected */
    ADVANCE,     /* the clock moves n ms */
    STATE,       /* the state is n */
    BEGIN,       /* one call admitted and left running */
    END_OK,      /* the latest running call succeeds */
    END_FAIL,    /* the latest running call fails */
    END_SLOW,    /* the latest running call succeeds, slowly */
    END_IGNORED, /* the latest running call ends cancelled */
    CALLS,       /* the window contains n calls */
    FAILED,      /* the window contains n failures and timeouts */
};

struct step {
    enum op op;
    int n;
};

/* Changes from the defaults; 0 keeps the default. */
struct tweak {
    enum wk_breaker_trip trip;
    uint32_t consecutive_failures;
    double failures_per_second;
    uint32_t burst;
    uint32_t slow_call_ms;
    uint32_t slow_percent;
    uint32_t half_open_requests;
};

struct scenario {
    const char *name;
    struct tweak tweak;
    struct step steps[16];
};

#define TRIP_IT                                                                \
    {OK, 10}, {FAIL, 10},                                                      \
    {                                                                          \
        STATE, WK_BREAKER_OPEN                                                 \
    }

static const struct scenario scenarios[] = {
    {"20 calls with 10 failures open the breaker",
     {0},
     {{OK, 10},
      {FAIL, 9},
      {STATE, WK_BREAKER_CLOSED},
      {FAIL, 1},
      {STATE, WK_BREAKER_OPEN}}},
    {"10 failures then 10 successes open it on the 20th call",
     {0},
     {{FAIL, 10},
      {OK, 9},
      {STATE, WK_BREAKER_CLOSED},
      {OK, 1},
      {STATE, WK_BREAKER_OPEN}}},
    {"19 calls with 19 failures do not open it",
     {0},
     {{FAIL, 19}, {STATE, WK_BREAKER_CLOSED}, {CALLS, 19}, {FAILED, 19}}},
    {"a share just under error_percent keeps it closed",
     {0},
     {{OK, 11}, {FAIL, 10}, {STATE, WK_BREAKER_CLOSED}}},
    {"timeouts count as failures",
     {0},
     {{OK, 10}, {TIMEOUT, 10}, {STATE, WK_BREAKER_OPEN}}},
    {"failures older than the window are forgotten",
     {0},
     {{FAIL, 19},
      {ADVANCE, 10000},
      {CALLS, 0},
      {FAIL, 1},
      {STATE, WK_BREAKER_CLOSED},
      {FAIL, 18},
      {STATE, WK_BREAKER_CLOSED},
      {FAIL, 1},
      {STATE, WK_BREAKER_OPEN}}},
    {"failures from 9 s ago still count",
     {0},
     {{FAIL, 19}, {ADVANCE, 9000}, {FAIL, 1}, {STATE, WK_BREAKER_OPEN}}},
    {"open rejects until open_ms has passed",
     {0},
     {TRIP_IT,
      {REJECTED, 5},
      {ADVANCE, 4999},
      {REJECTED, 1},
      {ADVANCE, 1},
      {BEGIN, 0},
      {STATE, WK_BREAKER_HALF_OPEN}}},
    {"after 5 s one probe passes and a second concurrent one is rejected",
     {0},
     {TRIP_IT,
      {ADVANCE, 5000},
      {BEGIN, 0},
      {REJECTED, 1},
      {END_OK, 0},
      {STATE, WK_BREAKER_CLOSED}}},
    {"a failed probe reopens for another 5 s",
     {0},
     {TRIP_IT,
      {ADVANCE, 5000},
      {BEGIN, 0},
      {END_FAIL, 0},
      {STATE, WK_BREAKER_OPEN},
      {ADVANCE, 4999},
      {REJECTED, 1},
      {ADVANCE, 1},
      {BEGIN, 0},
      {STATE, WK_BREAKER_HALF_OPEN}}},
    {"a closing breaker starts with an empty window",
     {0},
     {TRIP_IT,
      {ADVANCE, 5000},
      {OK, 1},
      {STATE, WK_BREAKER_CLOSED},
      {CALLS, 0},
      {FAIL, 19},
      {STATE, WK_BREAKER_CLOSED},
      {FAIL, 1},
      {STATE, WK_BREAKER_OPEN}}},
    {"rejections never count as failures",
     {0},
     {TRIP_IT, {REJECTED, 50}, {FAILED, 10}, {CALLS, 20}}},
    {"all three probes must succeed to close",
     {.half_open_requests = 3},
     {TRIP_IT,
      {ADVANCE, 5000},
      {BEGIN, 0},
      {BEGIN, 0},
      {BEGIN, 0},
      {REJECTED, 1},
      {END_OK, 0},
      {END_OK, 0},
      {STATE, WK_BREAKER_HALF_OPEN},
      {END_OK, 0},
      {STATE, WK_BREAKER_CLOSED}}},
    {"one failed probe of three reopens",
     {.half_open_requests = 3},
     {TRIP_IT,
      {ADVANCE, 5000},
      {BEGIN, 0},
      {BEGIN, 0},
      {END_OK, 0},
      {END_FAIL, 0},
      {STATE, WK_BREAKER_OPEN}}},
    {"a cancelled probe gives its slot back",
     {0},
     {TRIP_IT,
      {ADVANCE, 5000},
      {BEGIN, 0},
      {END_IGNORED, 0},
      {STATE, WK_BREAKER_HALF_OPEN},
      {BEGIN, 0},
      {END_OK, 0},
      {STATE, WK_BREAKER_CLOSED}}},
    {"a call admitted before the breaker opened does not count later",
     {0},
     {{BEGIN, 0},
      TRIP_IT,
      {ADVANCE, 5000},
      {OK, 1},
      {STATE, WK_BREAKER_CLOSED},
      {END_FAIL, 0},
      {CALLS, 0}}},
    {"cancelled calls are not counted",
     {0},
     {{BEGIN, 0}, {END_IGNORED, 0}, {CALLS, 0}}},
    {"consecutive failures open it; a success resets the run",
     {.trip = WK_BREAKER_TRIP_CONSECUTIVE, .consecutive_failures = 5},
     {{FAIL, 4},
      {OK, 1},
      {FAIL, 4},
      {STATE, WK_BREAKER_CLOSED},
      {FAIL, 1},
      {STATE, WK_BREAKER_OPEN}}},
    {"the failure bucket trips it once burst failures are spent",
     {.trip = WK_BREAKER_TRIP_FAILURE_RATE,
      .failures_per_second = 1,
      .burst = 5},
     {{FAIL, 5},
      {STATE, WK_BREAKER_CLOSED},
      {FAIL, 1},
      {STATE, WK_BREAKER_OPEN}}},
    {"the failure bucket refills at failures_per_second",
     {.trip = WK_BREAKER_TRIP_FAILURE_RATE,
      .failures_per_second = 1,
      .burst = 5},
     {{FAIL, 5},
      {ADVANCE, 2000},
      {FAIL, 2},
      {STATE, WK_BREAKER_CLOSED},
      {FAIL, 1},
      {STATE, WK_BREAKER_OPEN}}},
    {"a half-slow window opens it",
     {.slow_call_ms = 100, .slow_percent = 50},
     {{OK, 10},
      {SLOW, 9},
      {STATE, WK_BREAKER_CLOSED},
      {SLOW, 1},
      {STATE, WK_BREAKER_OPEN}}},
    {"slow calls under min_requests keep it closed",
     {.slow_call_ms = 100, .slow_percent = 50},
     {{SLOW, 19}, {STATE, WK_BREAKER_CLOSED}}},
    {"a slow probe counts as a failed probe",
     {.slow_call_ms = 100},
     {TRIP_IT,
      {ADVANCE, 5000},
      {BEGIN, 0},
      {END_SLOW, 0},
      {STATE, WK_BREAKER_OPEN}}},
};

static void
apply_tweak(struct wk_breaker_config *c, const struct tweak *t)
{
    c->trip = t->trip;
    if (t->consecutive_failures != 0)
        c->consecutive_failures = t->consecutive_failures;
    if (t->failures_per_second != 0)
        c->failures_per_second = t->failures_per_second;
    if (t->burst != 0)
        c->burst = t->burst;
    if (t->slow_call_ms != 0)
        c->slow_call_ms = t->slow_call_ms;
    if (t->slow_percent != 0)
        c->slow_percent = t->slow_percent;
    if (t->half_open_requests != 0)
        c->half_open_requests = t->half_open_requests;
}

struct runner {
    struct wk_breaker *b;
    struct wk_manual_clock clock;
    wk_duration slow;
    struct wk_breaker_permit running[8];
    int running_count;
};

static wk_time
now_of(struct runner *r)
{
    return wk_clock_now(&r->clock.clock);
}

static void
admit(struct runner *r, struct wk_breaker_permit *p, const char *name)
{
    int err = wk_breaker_before(r->b, now_of(r), p);

    if (err != WK_OK)
        fail_msg("%s: a call was rejected: %s", name, wk_strerror(err));
}

static void
run_calls(struct runner *r, int n, int err, wk_duration latency,
          const char *name)
{
    for (int i = 0; i < n; i++) {
        struct wk_breaker_permit p;

        admit(r, &p, name);
        wk_breaker_after(r->b, &p, err, latency, now_of(r));
    }
}

static void
end_running(struct runner *r, int err, wk_duration latency, const char *name)
{
    if (r->running_count == 0)
        fail_msg("%s: no call is running", name);
    r->running_count--;
    wk_breaker_after(r->b, &r->running[r->running_count], err, latency,
                     now_of(r));
}

static void
check_window(struct runner *r, const struct step *s, const char *name)
{
    struct wk_breaker_snapshot snap;

    wk_breaker_snapshot(r->b, now_of(r), &snap);

    uint64_t failed = snap.window.failures + snap.window.timeouts;
    uint64_t calls = failed + snap.window.successes;
    uint64_t got = s->op == CALLS ? calls : failed;

    if (got != (uint64_t)s->n)
        fail_msg("%s: window holds %llu %s, expected %d", name,
                 (unsigned long long)got, s->op == CALLS ? "calls" : "failures",
                 s->n);
}

static void
run_step(struct runner *r, const struct step *s, const char *name)
{
    struct wk_breaker_snapshot snap;
    struct wk_breaker_permit p;

    switch (s->op) {
    case END:
        break;
    case OK:
        run_calls(r, s->n, WK_OK, WK_MSEC(1), name);
        break;
    case FAIL:
        run_calls(r, s->n, WK_ERR_UPSTREAM, WK_MSEC(1), name);
        break;
    case TIMEOUT:
        run_calls(r, s->n, WK_ERR_TIMED_OUT, WK_MSEC(1), name);
        break;
    case SLOW:
        run_calls(r, s->n, WK_OK, r->slow, name);
        break;
    case REJECTED:
        for (int i = 0; i < s->n; i++) {
            if (wk_breaker_before(r->b, now_of(r), &p) != WK_ERR_BREAKER_OPEN)
                fail_msg("%s: call %d was admitted", name, i + 1);
        }
        break;
    case ADVANCE:
        wk_manual_clock_advance(&r->clock, WK_MSEC(s->n));
        break;
    case STATE:
        wk_breaker_snapshot(r->b, now_of(r), &snap);
        if ((int)snap.state != s->n)
            fail_msg("%s: state is %s, expected %s", name,
                     wk_breaker_state_name(snap.state),
                     wk_breaker_state_name((enum wk_breaker_state)s->n));
        break;
    case BEGIN:
        admit(r, &r->running[r->running_count++], name);
        break;
    case END_OK:
        end_running(r, WK_OK, WK_MSEC(1), name);
        break;
    case END_FAIL:
        end_running(r, WK_ERR_UPSTREAM, WK_MSEC(1), name);
        break;
    case END_SLOW:
        end_running(r, WK_OK, r->slow, name);
        break;
    case END_IGNORED:
        end_running(r, WK_ERR_CANCELLED, WK_MSEC(1), name);
        break;
    case CALLS:
    case FAILED:
        check_window(r, s, name);
        break;
    }
}

/*
 * Start times for every scenario: time 0 (windows that reach back before
 * it), and starts that are not on a bucket boundary.
 */
static const wk_time starts[] = {0, WK_MSEC(1), T0, T0 + WK_MSEC(999)};

static void
run_scenario(const struct scenario *sc, wk_time start)
{
    struct wk_breaker_config config = WK_BREAKER_CONFIG_INIT;
    struct runner r = {0};
    char name[160];

    snprintf(name, sizeof(name), "%s (clock from %lld ms)", sc->name,
             (long long)(start / WK_NSEC_PER_MSEC));
    apply_tweak(&config, &sc->tweak);
    wk_manual_clock_init(&r.clock, start);
    r.slow = WK_MSEC(config.slow_call_ms);
    assert_int_equal(wk_breaker_new(&config, &r.b), WK_OK);
    for (const struct step *s = sc->steps; s->op != END; s++)
        run_step(&r, s, name);
    wk_breaker_destroy(&r.b);
    assert_null(r.b);
}

static void
test_scenarios(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
        for (size_t k = 0; k < sizeof(starts) / sizeof(starts[0]); k++)
            run_scenario(&scenarios[i], starts[k]);
    }
}

/* --- transitions --------------------------------------------------------- */

struct recorder {
    struct wk_breaker_transition seen[16];
    char keys[16][32];
    int count;
};

static void
record_transition(void *arg, const struct wk_breaker_transition *t)
{
    struct recorder *rec = arg;

    if (rec->count < 16) {
        rec->seen[rec->count] = *t;
        snprintf(rec->keys[rec->count], sizeof(rec->keys[0]), "%s", t->key);
    }
    rec->count++;
}

static struct wk_breaker *
new_recorded(struct recorder *rec, const char *name)
{
    struct wk_breaker_config config = WK_BREAKER_CONFIG_INIT;
    struct wk_breaker *b = NULL;

    config.name = name;
    config.on_transition = record_transition;
    config.on_transition_arg = rec;
    assert_int_equal(wk_breaker_new(&config, &b), WK_OK);
    return b;
}

static void
calls(struct wk_breaker *b, int n, int err, wk_time now)
{
    for (int i = 0; i < n; i++) {
        struct wk_breaker_permit p;

        assert_int_equal(wk_breaker_before(b, now, &p), WK_OK);
        wk_breaker_after(b, &p, err, WK_MSEC(1), now);
    }
}

static void
test_transitions_reported_once(void **state)
{
    struct recorder rec = {0};
    struct wk_breaker *b = new_recorded(&rec, "users");
    struct wk_breaker_permit p;

    (void)state;
    calls(b, 10, WK_OK, T0);
    calls(b, 10, WK_ERR_UPSTREAM, T0);
    assert_int_equal(rec.count, 1);
    for (int i = 0; i < 10; i++)
        assert_int_equal(wk_breaker_before(b, T0 + WK_SEC(1), &p),
                         WK_ERR_BREAKER_OPEN);
    assert_int_equal(rec.count, 1);

    calls(b, 1, WK_OK, T0 + WK_SEC(5));
    assert_int_equal(rec.count, 3);

    assert_string_equal(rec.keys[0], "users");
    assert_int_equal(rec.seen[0].from, WK_BREAKER_CLOSED);
    assert_int_equal(rec.seen[0].to, WK_BREAKER_OPEN);
    assert_int_equal(rec.seen[0].reason, WK_BREAKER_REASON_ERROR_PERCENT);
    assert_int_equal(rec.seen[0].window.successes, 10);
    assert_int_equal(rec.seen[0].window.failures, 10);
    assert_int_equal(rec.seen[0].open_for, WK_SEC(5));
    assert_int_equal(rec.seen[0].at, T0);

    assert_int_equal(rec.seen[1].from, WK_BREAKER_OPEN);
    assert_int_equal(rec.seen[1].to, WK_BREAKER_HALF_OPEN);
    assert_int_equal(rec.seen[1].reason, WK_BREAKER_REASON_OPEN_ELAPSED);

    assert_int_equal(rec.seen[2].from, WK_BREAKER_HALF_OPEN);
    assert_int_equal(rec.seen[2].to, WK_BREAKER_CLOSED);
    assert_int_equal(rec.seen[2].reason, WK_BREAKER_REASON_PROBES_SUCCEEDED);
    assert_true(rec.seen[0].generation < rec.seen[1].generation);
    assert_true(rec.seen[1].generation < rec.seen[2].generation);
    wk_breaker_destroy(&b);
}

static void
test_failed_probe_reported(void **state)
{
    struct recorder rec = {0};
    struct wk_breaker *b = new_recorded(&rec, NULL);

    (void)state;
    calls(b, 20, WK_ERR_UPSTREAM, T0);
    calls(b, 1, WK_ERR_UPSTREAM, T0 + WK_SEC(5));
    assert_int_equal(rec.count, 3);
    assert_string_equal(rec.keys[2], "");
    assert_int_equal(rec.seen[2].from, WK_BREAKER_HALF_OPEN);
    assert_int_equal(rec.seen[2].to, WK_BREAKER_OPEN);
    assert_int_equal(rec.seen[2].reason, WK_BREAKER_REASON_PROBE_FAILED);
    assert_string_equal(wk_breaker_reason_name(rec.seen[2].reason),
                        "probe failed");
    wk_breaker_destroy(&b);
}

/* --- snapshot and rejection details ------------------------------------ */

static void
test_snapshot_buckets(void **state)
{
    struct wk_breaker_config config = WK_BREAKER_CONFIG_INIT;
    struct wk_breaker *b = NULL;
    struct wk_breaker_snapshot snap;

    (void)state;
    assert_int_equal(wk_breaker_new(&config, &b), WK_OK);
    calls(b, 3, WK_OK, T0);
    calls(b, 2, WK_ERR_UPSTREAM, T0 + WK_SEC(1));
    calls(b, 1, WK_ERR_TIMED_OUT, T0 + WK_SEC(1));

    wk_breaker_snapshot(b, T0 + WK_SEC(1), &snap);
    assert_int_equal(snap.state, WK_BREAKER_CLOSED);
    assert_int_equal(snap.bucket_count, 10);
    assert_int_equal(snap.bucket_width, WK_SEC(1));
    assert_int_equal(snap.buckets[8].successes, 3);
    assert_int_equal(snap.buckets[9].failures, 2);
    assert_int_equal(snap.buckets[9].timeouts, 1);
    assert_int_equal(snap.window.successes, 3);
    assert_int_equal(snap.window.failures, 2);
    assert_int_equal(snap.window.timeouts, 1);
    assert_int_equal(snap.consecutive_failures, 3);

    /* Nine seconds on, the first bucket is the oldest still in the window. */
    wk_breaker_snapshot(b, T0 + WK_SEC(9), &snap);
    assert_int_equal(snap.buckets[0].successes, 3);
    assert_int_equal(snap.buckets[1].failures, 2);
    wk_breaker_snapshot(b, T0 + WK_SEC(10), &snap);
    assert_int_equal(snap.buckets[0].failures, 2);
    assert_int_equal(snap.window.successes, 0);
    wk_breaker_destroy(&b);
}

static void
test_rejection_retry_after(void **state)
{
    struct wk_breaker_config config = WK_BREAKER_CONFIG_INIT;
    struct wk_breaker *b = NULL;
    struct wk_breaker_permit p;
    struct wk_breaker_snapshot snap;

    (void)state;
    assert_int_equal(wk_breaker_new(&config, &b), WK_OK);
    calls(b, 20, WK_ERR_UPSTREAM, T0);

    assert_int_equal(wk_breaker_before(b, T0 + WK_MSEC(1500), &p),
                     WK_ERR_BREAKER_OPEN);
    assert_int_equal(p.retry_after, WK_MSEC(3500));
    wk_breaker_snapshot(b, T0 + WK_MSEC(1500), &snap);
    assert_int_equal(snap.state, WK_BREAKER_OPEN);
    assert_int_equal(snap.open_remaining, WK_MSEC(3500));
    assert_int_equal(snap.window.rejections, 1);
    assert_int_equal(snap.rejections_total, 1);
    assert_int_equal(snap.transitions_total, 1);

    /* Half-open with its probe taken: the wait is unknown. */
    assert_int_equal(wk_breaker_before(b, T0 + WK_SEC(5), &p), WK_OK);
    assert_int_equal(wk_breaker_before(b, T0 + WK_SEC(5), &p),
                     WK_ERR_BREAKER_OPEN);
    assert_int_equal(p.retry_after, 0);
    wk_breaker_snapshot(b, T0 + WK_SEC(5), &snap);
    assert_int_equal(snap.state, WK_BREAKER_HALF_OPEN);
    assert_int_equal(snap.probes_admitted, 1);
    wk_breaker_destroy(&b);
}

/* --- configuration ------------------------------------------------------ */

struct config_case {
    const char *name;
    void (*change)(struct wk_breaker_config *c);
    const char *field; /* NULL: valid */
};

static void
no_change(struct wk_breaker_config *c)
{
    (void)c;
}

static void
zero_buckets(struct wk_breaker_config *c)
{
    c->buckets = 0;
}

static void
too_many_buckets(struct wk_breaker_config *c)
{
    c->buckets = WK_BREAKER_MAX_BUCKETS + 1;
}

static void
uneven_window(struct wk_breaker_config *c)
{
    c->window_ms = 10000;
    c->buckets = 3;
}

static void
short_window(struct wk_breaker_config *c)
{
    c->window_ms = WK_BREAKER_MIN_WINDOW_MS - 1;
    c->buckets = 1;
}

static void
zero_percent(struct wk_breaker_config *c)
{
    c->error_percent = 0;
}

static void
over_percent(struct wk_breaker_config *c)
{
    c->error_percent = 101;
}

static void
nan_rate(struct wk_breaker_config *c)
{
    c->failures_per_second = 0.0 / 0.0;
}

static void
zero_probes(struct wk_breaker_config *c)
{
    c->half_open_requests = 0;
}

static void
max_everything(struct wk_breaker_config *c)
{
    c->window_ms = WK_BREAKER_MAX_WINDOW_MS;
    c->buckets = WK_BREAKER_MAX_BUCKETS;
    c->half_open_requests = WK_BREAKER_MAX_HALF_OPEN_REQUESTS;
    c->open_ms = WK_BREAKER_MAX_OPEN_MS;
    c->slow_call_ms = WK_BREAKER_MAX_SLOW_CALL_MS;
}

static void
unknown_trip(struct wk_breaker_config *c)
{
    c->trip = (enum wk_breaker_trip)7;
}

static const struct config_case config_cases[] = {
    {"the defaults are valid", no_change, NULL},
    {"every maximum is valid", max_everything, NULL},
    {"zero buckets", zero_buckets, "buckets"},
    {"too many buckets", too_many_buckets, "buckets"},
    {"a window that buckets do not divide", uneven_window, "window_ms"},
    {"a window under the minimum", short_window, "window_ms"},
    {"error_percent 0", zero_percent, "error_percent"},
    {"error_percent 101", over_percent, "error_percent"},
    {"failures_per_second NaN", nan_rate, "failures_per_second"},
    {"no probes", zero_probes, "half_open_requests"},
    {"an unknown trip rule", unknown_trip, "trip"},
};

static void
test_config_check(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(config_cases) / sizeof(config_cases[0]);
         i++) {
        const struct config_case *cc = &config_cases[i];
        struct wk_breaker_config config;
        struct wk_breaker *b = NULL;
        const char *field = "unset";

        wk_breaker_config_init(&config);
        cc->change(&config);
        int err = wk_breaker_config_check(&config, &field);

        if (cc->field == NULL) {
            if (err != WK_OK || field != NULL)
                fail_msg("%s: rejected (%s)", cc->name, field);
            assert_int_equal(wk_breaker_new(&config, &b), WK_OK);
            wk_breaker_destroy(&b);
            continue;
        }
        if (err != WK_ERR_INVALID || field == NULL ||
            strcmp(field, cc->field) != 0)
            fail_msg("%s: got field %s, expected %s", cc->name,
                     field != NULL ? field : "none", cc->field);
        assert_int_equal(wk_breaker_new(&config, &b), WK_ERR_INVALID);
        assert_null(b);
    }
}

static void
test_long_name_is_cut(void **state)
{
    char name[WK_BREAKER_MAX_NAME_BYTES + 10];
    struct recorder rec = {0};
    struct wk_breaker *b;

    (void)state;
    memset(name, 'a', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    b = new_recorded(&rec, name);
    calls(b, 20, WK_ERR_UPSTREAM, T0);
    assert_int_equal(rec.count, 1);
    assert_int_equal(strlen(rec.seen[0].key), WK_BREAKER_MAX_NAME_BYTES);
    wk_breaker_destroy(&b);
}

/* --- middleware --------------------------------------------------------- */

static void
test_middleware(void **state)
{
    struct wk_breaker_config config = WK_BREAKER_CONFIG_INIT;
    struct wk_breaker *b = NULL;
    struct wk_breaker_snapshot snap;
    void *token;

    (void)state;
    assert_int_equal(wk_breaker_new(&config, &b), WK_OK);

    struct wk_middleware mw = wk_breaker_middleware(b);

    assert_string_equal(mw.ops->name, "breaker");
    /* Rejections by a later middleware are not failures. */
    for (int i = 0; i < 30; i++) {
        assert_int_equal(wk_middleware_before_all(&mw, 1, "k", T0, &token),
                         WK_OK);
        wk_middleware_after_all(&mw, 1, "k", &token, WK_ERR_BULKHEAD_FULL, T0,
                                T0);
    }
    wk_breaker_snapshot(b, T0, &snap);
    assert_int_equal(snap.window.failures, 0);
    assert_int_equal(snap.state, WK_BREAKER_CLOSED);

    for (int i = 0; i < 20; i++) {
        assert_int_equal(wk_middleware_before_all(&mw, 1, "k", T0, &token),
                         WK_OK);
        wk_middleware_after_all(&mw, 1, "k", &token, WK_ERR_UPSTREAM, T0,
                                T0 + WK_MSEC(2));
    }
    assert_int_equal(wk_middleware_before_all(&mw, 1, "k", T0, &token),
                     WK_ERR_BREAKER_OPEN);
    wk_breaker_destroy(&b);
}

/* --- threads ------------------------------------------------------------ */

#define RACERS 8
#define ROUNDS 200

struct gate_race {
    struct wk_breaker *b;
    pthread_barrier_t start;
    pthread_barrier_t done;
    wk_time now;
    _Atomic int admitted;
    struct wk_breaker_permit permits[RACERS];
    bool got[RACERS];
};

struct racer {
    struct gate_race *race;
    int index;
};

static void *
race_gate(void *arg)
{
    struct racer *r = arg;
    struct gate_race *race = r->race;

    for (int round = 0; round < ROUNDS; round++) {
        pthread_barrier_wait(&race->start);
        r->race->got[r->index] =
            wk_breaker_before(race->b, race->now, &race->permits[r->index]) ==
            WK_OK;
        if (race->got[r->index])
            atomic_fetch_add(&race->admitted, 1);
        pthread_barrier_wait(&race->done);
        pthread_barrier_wait(&race->start); /* main thread checks */
    }
    return NULL;
}

/*
 * Each round trips the breaker, lets open_ms pass, and releases RACERS
 * threads at once on before(): exactly half_open_requests may get in.
 */
static void
test_half_open_gate_under_threads(void **state)
{
    struct wk_breaker_config config = WK_BREAKER_CONFIG_INIT;
    struct gate_race race = {0};
    struct racer racers[RACERS];
    pthread_t threads[RACERS];
    wk_time now = T0;

    (void)state;
    config.half_open_requests = 3;
    assert_int_equal(wk_breaker_new(&config, &race.b), WK_OK);
    pthread_barrier_init(&race.start, NULL, RACERS + 1);
    pthread_barrier_init(&race.done, NULL, RACERS + 1);
    for (int i = 0; i < RACERS; i++) {
        racers[i] = (struct racer){.race = &race, .index = i};
        pthread_create(&threads[i], NULL, race_gate, &racers[i]);
    }

    for (int round = 0; round < ROUNDS; round++) {
        calls(race.b, 20, WK_ERR_UPSTREAM, now);
        now += WK_SEC(5);
        race.now = now;
        atomic_store(&race.admitted, 0);
        pthread_barrier_wait(&race.start);
        pthread_barrier_wait(&race.done);
        if (atomic_load(&race.admitted) != 3)
            fail_msg("round %d admitted %d probes", round,
                     atomic_load(&race.admitted));
        /* The probes succeed, so the breaker closes for the next round. */
        for (int i = 0; i < RACERS; i++) {
            if (race.got[i])
                wk_breaker_after(race.b, &race.permits[i], WK_OK, 0, now);
        }
        struct wk_breaker_snapshot snap;

        wk_breaker_snapshot(race.b, now, &snap);
        assert_int_equal(snap.state, WK_BREAKER_CLOSED);
        now += WK_SEC(11);
        pthread_barrier_wait(&race.start);
    }
    for (int i = 0; i < RACERS; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&race.start);
    pthread_barrier_destroy(&race.done);
    wk_breaker_destroy(&race.b);
}

/* Transitions seen by the stress test, by generation, under a lock. */
#define MAX_GENERATIONS 65536

struct chain {
    pthread_mutex_t mu;
    uint64_t count;
    uint64_t max_gen;
    unsigned reports[MAX_GENERATIONS];
    enum wk_breaker_state from[MAX_GENERATIONS];
    enum wk_breaker_state to[MAX_GENERATIONS];
};

static struct chain chain = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void
record_chain(void *arg, const struct wk_breaker_transition *t)
{
    struct chain *c = arg;

    pthread_mutex_lock(&c->mu);
    c->count++;
    if (t->generation < MAX_GENERATIONS) {
        c->reports[t->generation]++;
        c->from[t->generation] = t->from;
        c->to[t->generation] = t->to;
    }
    if (t->generation > c->max_gen)
        c->max_gen = t->generation;
    pthread_mutex_unlock(&c->mu);
}

struct stress {
    struct wk_breaker *b;
    struct wk_manual_clock clock;
};

#define STRESS_CALLS 20000

/*
 * Calls through the breaker, a third of them failing, and moves the shared
 * clock 1 ms every 16 calls, so the four callers cover about 5 s.
 */
static void *
stress_calls(void *arg)
{
    struct stress *s = arg;
    unsigned seed = (unsigned)(uintptr_t)&seed;

    for (int i = 0; i < STRESS_CALLS; i++) {
        struct wk_breaker_permit p;

        if (i % 16 == 0)
            wk_manual_clock_advance(&s->clock, WK_MSEC(1));

        wk_time now = wk_clock_now(&s->clock.clock);

        if (wk_breaker_before(s->b, now, &p) != WK_OK)
            continue;

        int err = rand_r(&seed) % 3 == 0 ? WK_ERR_UPSTREAM : WK_OK;

        wk_breaker_after(s->b, &p, err, WK_MSEC(1),
                         wk_clock_now(&s->clock.clock));
    }
    return NULL;
}

/*
 * Four threads call through a breaker that opens for 50 ms at a time while
 * they move the clock, so it opens and closes many times. Every transition
 * must be reported once, with one report per generation, each starting
 * where the previous one ended.
 */
static void
test_transitions_chain_under_threads(void **state)
{
    struct wk_breaker_config config = WK_BREAKER_CONFIG_INIT;
    struct stress s = {0};
    pthread_t callers[4];
    struct wk_breaker_snapshot snap;

    (void)state;
    config.error_percent = 30;
    config.open_ms = 50;
    config.on_transition = record_chain;
    config.on_transition_arg = &chain;
    wk_manual_clock_init(&s.clock, T0);
    assert_int_equal(wk_breaker_new(&config, &s.b), WK_OK);
    for (int i = 0; i < 4; i++)
        pthread_create(&callers[i], NULL, stress_calls, &s);
    for (int i = 0; i < 4; i++)
        pthread_join(callers[i], NULL);
    print_message("stress: %llu transitions\n",
                  (unsigned long long)chain.count);

    wk_breaker_snapshot(s.b, wk_clock_now(&s.clock.clock), &snap);
    assert_true(chain.count > 0);
    assert_true(chain.max_gen < MAX_GENERATIONS);
    assert_int_equal(chain.count, snap.transitions_total);
    assert_int_equal(chain.max_gen, snap.generation);
    for (uint64_t g = 1; g <= chain.max_gen; g++) {
        enum wk_breaker_state prev =
            g == 1 ? WK_BREAKER_CLOSED : chain.to[g - 1];

        if (chain.reports[g] != 1)
            fail_msg("generation %llu was reported %u times",
                     (unsigned long long)g, chain.reports[g]);
        if (chain.from[g] != prev)
            fail_msg("generation %llu starts from %s, previous ended %s",
                     (unsigned long long)g,
                     wk_breaker_state_name(chain.from[g]),
                     wk_breaker_state_name(prev));
    }
    wk_breaker_destroy(&s.b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scenarios),
        cmocka_unit_test(test_transitions_reported_once),
        cmocka_unit_test(test_failed_probe_reported),
        cmocka_unit_test(test_snapshot_buckets),
        cmocka_unit_test(test_rejection_retry_after),
        cmocka_unit_test(test_config_check),
        cmocka_unit_test(test_long_name_is_cut),
        cmocka_unit_test(test_middleware),
        cmocka_unit_test(test_half_open_gate_under_threads),
        cmocka_unit_test(test_transitions_chain_under_threads),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
