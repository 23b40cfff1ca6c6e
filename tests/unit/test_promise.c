/*
 * Unit tests for promises: chain semantics, retries, ownership of values,
 * asynchronous steps, close, deadlines, get/wait and the pool hand-off.
 *
 * Threads block on condition variables (gates) where a test needs an
 * ordering; nothing sleeps to decide an outcome. Time comes from a manual
 * clock.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "workshop/error.h"
#include "workshop/promise.h"

/* --- values whose frees are counted ---------------------------------- */

static atomic_int values_made;
static atomic_int values_freed;

static void
count_free(void *ptr)
{
    free(ptr);
    atomic_fetch_add(&values_freed, 1);
}

static struct wk_value
int_value(int n)
{
    int *ptr = malloc(sizeof(*ptr));

    assert_non_null(ptr);
    *ptr = n;
    atomic_fetch_add(&values_made, 1);
    return (struct wk_value){.ptr = ptr, .free = count_free};
}

static int
int_of(const struct wk_value *v)
{
    return v != NULL && v->ptr != NULL ? *(const int *)v->ptr : 0;
}

static int
reset_counts(void **state)
{
    (void)state;
    atomic_store(&values_made, 0);
    atomic_store(&values_freed, 0);
    return 0;
}

/* Every value made by a test was freed exactly once. */
static void
assert_values_balanced(void)
{
    assert_int_equal(atomic_load(&values_freed), atomic_load(&values_made));
}

/* --- a gate: one side waits until the other opens it ------------------ */

struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool open;
};

static void
gate_init(struct gate *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cond, NULL);
    g->open = false;
}

static void
gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->mu);
}

static void
gate_wait(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    while (!g->open)
        pthread_cond_wait(&g->cond, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void
gate_destroy(struct gate *g)
{
    pthread_cond_destroy(&g->cond);
    pthread_mutex_destroy(&g->mu);
}

/* --- steps ------------------------------------------------------------ */

/* Outputs last + *(int *)arg. */
static int
add_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
         struct wk_value *out)
{
    (void)ctx;
    *out = int_value(int_of(last) + *(int *)arg);
    return WK_OK;
}

static int one = 1;

/* Fails with *(int *)arg after writing an output the promise must free. */
static int
fail_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
          struct wk_value *out)
{
    (void)ctx;
    (void)last;
    *out = int_value(-1);
    return *(int *)arg;
}

static int user_err = WK_ERR_USER;

/* Passes last on unchanged, as a Go step returning `last, nil` does. */
static int
pass_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
          struct wk_value *out)
{
    (void)ctx;
    (void)arg;
    *out = *last;
    return WK_OK;
}

/* --- a table of chain shapes ------------------------------------------ */

/*
 * Links by letter: 't' adds 1, 'f' fails with WK_ERR_USER, 'e' recovers to
 * last + 10, 'x' fails again with WK_ERR_USER + 1. Each link that runs
 * appends its index to the trace.
 */
struct trace {
    char text[16];
    size_t len;
    int seen_err; /* the error the last exception link saw */
};

struct traced {
    struct trace *trace;
    char index;
    char letter;
};

static void
trace_add(struct trace *t, char index)
{
    if (t->len + 1 < sizeof(t->text))
        t->text[t->len++] = index;
}

static int
traced_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
            struct wk_value *out)
{
    struct traced *tr = arg;

    (void)ctx;
    trace_add(tr->trace, tr->index);
    if (tr->letter == 'f')
        return WK_ERR_USER;
    *out = int_value(int_of(last) + 1);
    return WK_OK;
}

static int
traced_catch(struct wk_ctx *ctx, void *arg, int err,
             const struct wk_value *last, struct wk_value *out)
{
    struct traced *tr = arg;

    (void)ctx;
    trace_add(tr->trace, tr->index);
    tr->trace->seen_err = err;
    if (tr->letter == 'x')
        return WK_ERR_USER + 1;
    *out = int_value(int_of(last) + 10);
    return WK_OK;
}

struct chain_case {
    const char *name;
    const char *links;
    int want_err;
    int want_value;
    const char *want_trace;
};

static const struct chain_case chain_cases[] = {
    {"one step succeeds", "t", WK_OK, 1, "0"},
    {"values flow through then steps", "ttt", WK_OK, 3, "012"},
    {"a failure skips later then steps", "tft", WK_ERR_USER, 0, "01"},
    {"on_exception recovers from the last good value", "tfe", WK_OK, 11, "012"},
    {"then steps after a failure wait for a recovery", "tfte", WK_OK, 11,
     "013"},
    {"the chain goes on after a recovery", "tfet", WK_OK, 12, "0123"},
    {"on_exception is skipped in success", "tet", WK_OK, 2, "02"},
    {"a failing on_exception passes its error on", "fx", WK_ERR_USER + 1, 0,
     "01"},
    {"a second on_exception sees the new error", "fxe", WK_OK, 10, "012"},
};

static void
test_chain_table(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof(chain_cases) / sizeof(chain_cases[0]); c++) {
        const struct chain_case *tc = &chain_cases[c];
        struct trace trace = {0};
        struct traced tr[8];
        struct wk_promise *p = NULL;
        size_t n = strlen(tc->links);

        reset_counts(NULL);
        for (size_t i = 0; i < n; i++) {
            char letter = tc->links[i];

            tr[i] = (struct traced){&trace, (char)('0' + i), letter};
            if (letter == 'e' || letter == 'x') {
                assert_int_equal(
                    wk_promise_on_exception(p, traced_catch, &tr[i]), WK_OK);
                continue;
            }

            struct wk_step step = {.run = traced_step, .arg = &tr[i]};

            if (p == NULL)
                p = wk_promise_new(NULL, &step);
            else
                assert_int_equal(wk_promise_then(p, &step), WK_OK);
            assert_non_null(p);
        }
        assert_int_equal(wk_promise_start(p), WK_OK);

        const struct wk_value *v = NULL;
        int err = wk_promise_get(p, WK_TIME_NEVER, &v);

        if (err != tc->want_err || strcmp(trace.text, tc->want_trace) != 0)
            fail_msg("case '%s': err %d trace '%s', want %d '%s'", tc->name,
                     err, trace.text, tc->want_err, tc->want_trace);
        if (tc->want_err == WK_OK)
            assert_int_equal(int_of(v), tc->want_value);
        else
            assert_null(v);
        wk_promise_free(&p);
        assert_null(p);
        assert_values_balanced();
    }
}

static void
test_exception_sees_error(void **state)
{
    struct trace trace = {0};
    struct traced fail = {&trace, '0', 'f'};
    struct traced catch = {&trace, '1', 'e'};
    struct wk_step step = {.run = traced_step, .arg = &fail};
    struct wk_promise *p = wk_promise_new(NULL, &step);

    (void)state;
    assert_int_equal(wk_promise_on_exception(p, traced_catch, &catch), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_OK);
    assert_int_equal(trace.seen_err, WK_ERR_USER);
    wk_promise_free(&p);
}

/* --- retries ---------------------------------------------------------- */

struct flaky {
    int failures; /* runs that fail before one succeeds */
    int runs;
    int recoveries;
    bool recovery_fails;
    int last_seen; /* the value the step saw as last on its latest run */
};

static int
flaky_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
           struct wk_value *out)
{
    struct flaky *f = arg;

    (void)ctx;
    f->runs++;
    f->last_seen = int_of(last);
    if (f->runs <= f->failures)
        return WK_ERR_UPSTREAM;
    *out = int_value(f->last_seen + 1);
    return WK_OK;
}

static int
flaky_recover(struct wk_ctx *ctx, void *arg, int err,
              const struct wk_value *last, struct wk_value *out)
{
    struct flaky *f = arg;

    (void)ctx;
    assert_int_equal(err, WK_ERR_UPSTREAM);
    f->recoveries++;
    if (f->recovery_fails)
        return WK_ERR_USER + 1;
    *out = int_value(int_of(last) + 100);
    return WK_OK;
}

struct retry_case {
    const char *name;
    int failures;
    unsigned max_attempts;
    bool recovery_fails;
    int want_err;
    int want_runs;
    int want_recoveries;
};

static const struct retry_case retry_cases[] = {
    {"no retry when the first run succeeds", 0, 3, false, WK_OK, 1, 0},
    {"one failure, then success", 1, 3, false, WK_OK, 2, 1},
    {"success on the last attempt", 2, 3, false, WK_OK, 3, 2},
    {"attempts used up", 5, 3, false, WK_ERR_UPSTREAM, 3, 2},
    {"one attempt means no retry", 1, 1, false, WK_ERR_UPSTREAM, 1, 0},
    {"a failing recovery ends the retries", 1, 3, true, WK_ERR_USER + 1, 1, 1},
};

static void
test_retry_table(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof(retry_cases) / sizeof(retry_cases[0]); c++) {
        const struct retry_case *tc = &retry_cases[c];
        struct flaky f = {.failures = tc->failures,
                          .recovery_fails = tc->recovery_fails};
        struct wk_step step = {.run = flaky_step, .arg = &f};
        struct wk_promise *p = wk_promise_new(NULL, &step);

        reset_counts(NULL);
        assert_non_null(p);
        assert_int_equal(wk_promise_recover_and_retry(p, flaky_recover, &f,
                                                      tc->max_attempts),
                         WK_OK);
        assert_int_equal(wk_promise_start(p), WK_OK);

        int err = wk_promise_wait(p, WK_TIME_NEVER);

        if (err != tc->want_err || f.runs != tc->want_runs ||
            f.recoveries != tc->want_recoveries)
            fail_msg("case '%s': err %d runs %d recoveries %d, want %d %d %d",
                     tc->name, err, f.runs, f.recoveries, tc->want_err,
                     tc->want_runs, tc->want_recoveries);
        if (f.recoveries > 0 && !tc->recovery_fails)
            assert_int_equal(f.last_seen, 100 * f.recoveries);
        wk_promise_free(&p);
        assert_values_balanced();
    }
}

static void
test_retry_invalid_uses(void **state)
{
    struct flaky f = {0};
    struct wk_step step = {.run = flaky_step, .arg = &f};
    struct wk_promise *p = wk_promise_new(NULL, &step);

    (void)state;
    assert_int_equal(wk_promise_recover_and_retry(p, flaky_recover, &f, 0),
                     WK_ERR_INVALID);
    assert_int_equal(wk_promise_recover_and_retry(p, NULL, &f, 2),
                     WK_ERR_INVALID);
    assert_int_equal(wk_promise_recover_and_retry(p, flaky_recover, &f, 2),
                     WK_OK);
    assert_int_equal(wk_promise_recover_and_retry(p, flaky_recover, &f, 2),
                     WK_ERR_INVALID);
    assert_int_equal(wk_promise_on_exception(p, flaky_recover, &f), WK_OK);
    assert_int_equal(wk_promise_recover_and_retry(p, flaky_recover, &f, 2),
                     WK_ERR_INVALID);
    wk_promise_free(&p);
}

/* --- building --------------------------------------------------------- */

static void
noop_async(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
           struct wk_settle *settle)
{
    (void)ctx;
    (void)arg;
    (void)last;
    wk_settle(settle, WK_OK, (struct wk_value){0});
}

static void
test_new_rejects_invalid_steps(void **state)
{
    struct wk_middleware mw = {0};
    const struct wk_step bad[] = {
        {.run = NULL, .run_async = NULL},
        {.run = add_step, .run_async = noop_async},
        {.run = add_step, .middleware_count = 1},
        {.run = add_step, .middlewares = &mw, .middleware_count = 1},
        {.run = add_step, .middleware_mode = 7},
    };

    (void)state;
    assert_null(wk_promise_new(NULL, NULL));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_null(wk_promise_new(NULL, &bad[i]));

    struct wk_step good = {.run = add_step, .arg = &one};
    struct wk_promise_opts opts = {.middleware_count = 1};

    assert_null(wk_promise_new(&opts, &good));

    struct wk_promise *p = wk_promise_new(NULL, &good);

    assert_int_equal(wk_promise_then(p, &bad[0]), WK_ERR_INVALID);
    assert_int_equal(wk_promise_on_exception(p, NULL, NULL), WK_ERR_INVALID);
    wk_promise_free(&p);
}

static void
test_build_after_start_is_invalid(void **state)
{
    struct wk_step step = {.run = add_step, .arg = &one};
    struct wk_promise *p = wk_promise_new(NULL, &step);

    (void)state;
    reset_counts(NULL);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_ERR_INVALID);
    assert_int_equal(wk_promise_then(p, &step), WK_ERR_INVALID);
    assert_int_equal(wk_promise_on_exception(p, flaky_recover, NULL),
                     WK_ERR_INVALID);
    assert_int_equal(wk_promise_recover_and_retry(p, flaky_recover, NULL, 2),
                     WK_ERR_INVALID);
    assert_int_equal(wk_promise_on_settle(p, NULL, NULL), WK_ERR_INVALID);
    wk_promise_free(&p);
    assert_values_balanced();
}

static void
test_free_unstarted_and_null(void **state)
{
    struct wk_step step = {.run = add_step, .arg = &one};
    struct wk_promise *p = wk_promise_new(NULL, &step);

    (void)state;
    assert_int_equal(wk_promise_then(p, &step), WK_OK);
    wk_promise_free(&p);
    assert_null(p);
    wk_promise_free(&p);
    wk_promise_free(NULL);
}

/* --- ownership of values ---------------------------------------------- */

static void
test_failed_output_is_freed(void **state)
{
    struct wk_step step = {.run = add_step, .arg = &one};
    struct wk_step failing = {.run = fail_step, .arg = &user_err};
    struct wk_promise *p = wk_promise_new(NULL, &step);

    (void)state;
    reset_counts(NULL);
    assert_int_equal(wk_promise_then(p, &failing), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_ERR_USER);
    /* The failed output went at once; the last good value stays. */
    assert_int_equal(atomic_load(&values_made), 2);
    assert_int_equal(atomic_load(&values_freed), 1);
    wk_promise_free(&p);
    assert_values_balanced();
}

static void
test_passing_last_on_frees_once(void **state)
{
    struct wk_step step = {.run = add_step, .arg = &one};
    struct wk_step pass = {.run = pass_step};
    struct wk_promise *p = wk_promise_new(NULL, &step);
    const struct wk_value *v = NULL;

    (void)state;
    reset_counts(NULL);
    assert_int_equal(wk_promise_then(p, &pass), WK_OK);
    assert_int_equal(wk_promise_then(p, &pass), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(wk_promise_get(p, WK_TIME_NEVER, &v), WK_OK);
    assert_int_equal(int_of(v), 1);
    assert_int_equal(atomic_load(&values_freed), 0);
    wk_promise_free(&p);
    assert_int_equal(atomic_load(&values_made), 1);
    assert_values_balanced();
}

struct settled {
    atomic_int calls;
    int err;
    int value;
    bool take;
    pthread_t thread;
    struct wk_promise **free_me; /* freed inside the callback if set */
};

static void
on_settled(void *arg, int err, struct wk_value *value)
{
    struct settled *s = arg;

    s->err = err;
    s->value = int_of(value);
    s->thread = pthread_self();
    if (s->take)
        wk_value_clear(value);
    if (s->free_me != NULL)
        wk_promise_free(s->free_me);
    atomic_fetch_add(&s->calls, 1);
}

static void
test_on_settle_takes_value(void **state)
{
    struct wk_step step = {.run = add_step, .arg = &one};
    struct wk_promise *p = wk_promise_new(NULL, &step);
    struct settled s = {.take = true};
    const struct wk_value *v = NULL;

    (void)state;
    reset_counts(NULL);
    assert_int_equal(wk_promise_on_settle(p, on_settled, &s), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(atomic_load(&s.calls), 1);
    assert_int_equal(s.err, WK_OK);
    assert_int_equal(s.value, 1);
    assert_int_equal(atomic_load(&values_freed), 1);
    assert_int_equal(wk_promise_get(p, WK_TIME_NEVER, &v), WK_OK);
    assert_non_null(v);
    assert_null(v->ptr);
    wk_promise_free(&p);
    assert_values_balanced();
}

static void
test_free_inside_on_settle(void **state)
{
    struct wk_step step = {.run = add_step, .arg = &one};
    struct wk_promise *p = wk_promise_new(NULL, &step);
    struct settled s = {.free_me = &p};

    (void)state;
    reset_counts(NULL);
    assert_int_equal(wk_promise_on_settle(p, on_settled, &s), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(atomic_load(&s.calls), 1);
    assert_null(p);
    assert_values_balanced();
}

/* Frees the promise that runs it, then keeps going. */
static int
free_self_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
               struct wk_value *out)
{
    struct wk_promise **pp = arg;

    (void)last;
    wk_promise_free(pp);
    assert_true(wk_ctx_cancelled(ctx));
    *out = int_value(5);
    return WK_OK;
}

static void
test_free_inside_step(void **state)
{
    struct wk_promise *p = NULL;
    struct wk_step step = {.run = free_self_step, .arg = &p};
    struct wk_step later = {.run = add_step, .arg = &one};
    struct settled s = {0};

    (void)state;
    reset_counts(NULL);
    p = wk_promise_new(NULL, &step);
    assert_int_equal(wk_promise_then(p, &later), WK_OK);
    assert_int_equal(wk_promise_on_settle(p, on_settled, &s), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_null(p);
    assert_int_equal(atomic_load(&s.calls), 1);
    assert_int_equal(s.err, WK_ERR_CANCELLED);
    /* The output after close was dropped; the later step never ran. */
    assert_int_equal(atomic_load(&values_made), 1);
    assert_values_balanced();
}

/* --- get and wait ----------------------------------------------------- */

static int
get_self_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
              struct wk_value *out)
{
    struct wk_promise **pp = arg;

    (void)ctx;
    (void)last;
    (void)out;
    return wk_promise_get(*pp, WK_TIME_NEVER, NULL);
}

static void
test_get_inside_own_step_is_invalid(void **state)
{
    struct wk_promise *p = NULL;
    struct wk_step step = {.run = get_self_step, .arg = &p};

    (void)state;
    p = wk_promise_new(NULL, &step);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_ERR_INVALID);
    wk_promise_free(&p);
}

struct get_in_callback {
    struct wk_promise *p;
    int err;
    int value;
};

static void
get_in_settle(void *arg, int err, struct wk_value *value)
{
    struct get_in_callback *g = arg;
    const struct wk_value *v = NULL;

    (void)err;
    (void)value;
    g->err = wk_promise_get(g->p, WK_TIME_NEVER, &v);
    g->value = int_of(v);
}

static void
test_get_inside_on_settle(void **state)
{
    struct wk_step step = {.run = add_step, .arg = &one};
    struct get_in_callback g = {.err = -1};

    (void)state;
    reset_counts(NULL);
    g.p = wk_promise_new(NULL, &step);
    assert_int_equal(wk_promise_on_settle(g.p, get_in_settle, &g), WK_OK);
    assert_int_equal(wk_promise_start(g.p), WK_OK);
    assert_int_equal(g.err, WK_OK);
    assert_int_equal(g.value, 1);
    wk_promise_free(&g.p);
    assert_values_balanced();
}

/* An async step that parks its settle handle for the test to use. */
struct parked {
    pthread_mutex_t mu;
    struct wk_settle *settle;
    struct wk_ctx *ctx;
    pthread_t thread; /* the thread run_async ran on */
    int last;
    atomic_int runs;
    atomic_int hooks;
    bool register_hook;
    pthread_t hook_thread;
};

static void
parked_hook(void *arg)
{
    struct parked *pk = arg;

    pk->hook_thread = pthread_self();
    atomic_fetch_add(&pk->hooks, 1);
}

static void
park_async(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
           struct wk_settle *settle)
{
    struct parked *pk = arg;

    pthread_mutex_lock(&pk->mu);
    pk->settle = settle;
    pk->ctx = ctx;
    pk->thread = pthread_self();
    pk->last = int_of(last);
    pthread_mutex_unlock(&pk->mu);
    atomic_fetch_add(&pk->runs, 1);
    if (pk->register_hook)
        wk_settle_on_cancel(settle, parked_hook, pk);
}

static struct wk_settle *
take_parked(struct parked *pk)
{
    pthread_mutex_lock(&pk->mu);
    struct wk_settle *s = pk->settle;
    pk->settle = NULL;
    pthread_mutex_unlock(&pk->mu);
    assert_non_null(s);
    return s;
}

static void
parked_init(struct parked *pk, bool hook)
{
    memset(pk, 0, sizeof(*pk));
    pthread_mutex_init(&pk->mu, NULL);
    pk->register_hook = hook;
}

static void
test_get_deadline_then_chain_goes_on(void **state)
{
    struct wk_manual_clock clock;
    struct parked pk;
    struct wk_step step = {.run_async = park_async, .arg = &pk};
    const struct wk_value *v = NULL;

    (void)state;
    reset_counts(NULL);
    wk_manual_clock_init(&clock, WK_SEC(10));
    parked_init(&pk, false);

    struct wk_promise_opts opts = {.clock = &clock.clock};
    struct wk_promise *p = wk_promise_new(&opts, &step);

    assert_int_equal(wk_promise_start(p), WK_OK);
    /* A deadline already reached times out at once, leaving the chain. */
    assert_int_equal(wk_promise_get(p, WK_SEC(10), &v), WK_ERR_TIMED_OUT);
    assert_null(v);
    assert_int_equal(wk_promise_wait(p, WK_SEC(9)), WK_ERR_TIMED_OUT);
    assert_false(wk_promise_settled(p));

    wk_settle(take_parked(&pk), WK_OK, int_value(7));
    assert_true(wk_promise_settled(p));
    assert_int_equal(wk_promise_get(p, WK_SEC(10), &v), WK_OK);
    assert_int_equal(int_of(v), 7);
    wk_promise_free(&p);
    assert_values_balanced();
}

struct waiter {
    struct wk_promise *p;
    wk_time deadline;
    int err;
};

static void *
waiter_main(void *arg)
{
    struct waiter *w = arg;

    w->err = wk_promise_wait(w->p, w->deadline);
    return NULL;
}

static void
test_wait_ends_when_manual_clock_passes(void **state)
{
    struct wk_manual_clock clock;
    struct parked pk;
    struct wk_step step = {.run_async = park_async, .arg = &pk};

    (void)state;
    wk_manual_clock_init(&clock, 0);
    parked_init(&pk, false);

    struct wk_promise_opts opts = {.clock = &clock.clock};
    struct wk_promise *p = wk_promise_new(&opts, &step);
    struct waiter w = {.p = p, .deadline = WK_MSEC(50), .err = -1};
    pthread_t t;

    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(pthread_create(&t, NULL, waiter_main, &w), 0);
    /* Whether the waiter sleeps already or not, it must see the deadline. */
    wk_manual_clock_advance(&clock, WK_MSEC(50));
    pthread_join(t, NULL);
    assert_int_equal(w.err, WK_ERR_TIMED_OUT);

    wk_settle(take_parked(&pk), WK_ERR_UPSTREAM, (struct wk_value){0});
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_ERR_UPSTREAM);
    wk_promise_free(&p);
}

static void
test_waiter_wakes_on_settle(void **state)
{
    struct parked pk;
    struct wk_step step = {.run_async = park_async, .arg = &pk};

    (void)state;
    parked_init(&pk, false);

    struct wk_promise *p = wk_promise_new(NULL, &step);
    struct waiter w = {.p = p, .deadline = WK_TIME_NEVER, .err = -1};
    pthread_t t;

    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(pthread_create(&t, NULL, waiter_main, &w), 0);
    wk_settle(take_parked(&pk), WK_ERR_USER, (struct wk_value){0});
    pthread_join(t, NULL);
    assert_int_equal(w.err, WK_ERR_USER);
    wk_promise_free(&p);
}

/* --- asynchronous steps ----------------------------------------------- */

static void
inline_async(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
             struct wk_settle *settle)
{
    (void)ctx;
    (void)arg;
    wk_settle(settle, WK_OK, int_value(int_of(last) + 1));
}

static void
test_async_settled_inline(void **state)
{
    struct wk_step step = {.run_async = inline_async};
    struct wk_promise *p = wk_promise_new(NULL, &step);
    const struct wk_value *v = NULL;

    (void)state;
    reset_counts(NULL);
    for (int i = 0; i < 200; i++)
        assert_int_equal(wk_promise_then(p, &step), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_true(wk_promise_settled(p));
    assert_int_equal(wk_promise_get(p, WK_TIME_NEVER, &v), WK_OK);
    assert_int_equal(int_of(v), 201);
    wk_promise_free(&p);
    assert_values_balanced();
}

struct settler {
    struct wk_settle *settle;
    int err;
    struct wk_value value;
};

static void *
settler_main(void *arg)
{
    struct settler *s = arg;

    wk_settle(s->settle, s->err, s->value);
    return NULL;
}

static void
test_async_settled_from_other_thread(void **state)
{
    struct parked pk;
    struct wk_step step = {.run_async = park_async, .arg = &pk};
    struct wk_step then = {.run = add_step, .arg = &one};
    struct settled s = {0};
    pthread_t t;

    (void)state;
    reset_counts(NULL);
    parked_init(&pk, false);

    struct wk_promise *p = wk_promise_new(NULL, &step);

    assert_int_equal(wk_promise_then(p, &then), WK_OK);
    assert_int_equal(wk_promise_on_settle(p, on_settled, &s), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    /* run_async ran on the starting thread, and nothing settled yet. */
    assert_true(pthread_equal(pk.thread, pthread_self()));
    assert_int_equal(atomic_load(&s.calls), 0);

    struct settler st = {take_parked(&pk), WK_OK, int_value(41)};

    assert_int_equal(pthread_create(&t, NULL, settler_main, &st), 0);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_OK);
    pthread_join(t, NULL);
    assert_int_equal(atomic_load(&s.calls), 1);
    assert_int_equal(s.value, 42);
    /* The chain went on, and settled, on the settling thread. */
    assert_true(pthread_equal(s.thread, t));
    wk_promise_free(&p);
    assert_values_balanced();
}

static void
test_async_error_value_is_freed(void **state)
{
    struct parked pk;
    struct wk_step step = {.run_async = park_async, .arg = &pk};

    (void)state;
    reset_counts(NULL);
    parked_init(&pk, false);

    struct wk_promise *p = wk_promise_new(NULL, &step);

    assert_int_equal(wk_promise_start(p), WK_OK);
    wk_settle(take_parked(&pk), WK_ERR_UPSTREAM, int_value(3));
    assert_int_equal(atomic_load(&values_freed), 1);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_ERR_UPSTREAM);
    wk_promise_free(&p);
    assert_values_balanced();
}

static void
test_async_step_retried(void **state)
{
    struct parked pk;
    struct flaky f = {0};
    struct wk_step step = {.run_async = park_async, .arg = &pk};

    (void)state;
    reset_counts(NULL);
    parked_init(&pk, false);

    struct wk_promise *p = wk_promise_new(NULL, &step);

    assert_int_equal(wk_promise_recover_and_retry(p, flaky_recover, &f, 2),
                     WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    wk_settle(take_parked(&pk), WK_ERR_UPSTREAM, (struct wk_value){0});
    /* The settling thread ran the recovery and called run_async again. */
    assert_int_equal(atomic_load(&pk.runs), 2);
    assert_int_equal(pk.last, 100);
    wk_settle(take_parked(&pk), WK_OK, int_value(9));
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_OK);
    wk_promise_free(&p);
    assert_values_balanced();
}

/* --- close ------------------------------------------------------------ */

static void
test_close_async_runs_hook_and_drops_late_settle(void **state)
{
    struct parked pk;
    struct wk_step step = {.run_async = park_async, .arg = &pk};
    struct wk_step later = {.run = add_step, .arg = &one};
    struct settled s = {0};

    (void)state;
    reset_counts(NULL);
    parked_init(&pk, true);

    struct wk_promise *p = wk_promise_new(NULL, &step);

    assert_int_equal(wk_promise_then(p, &later), WK_OK);
    assert_int_equal(wk_promise_on_settle(p, on_settled, &s), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_false(wk_ctx_cancelled(pk.ctx));

    wk_promise_close(p);
    assert_true(wk_ctx_cancelled(pk.ctx));
    assert_int_equal(atomic_load(&pk.hooks), 1);
    assert_true(pthread_equal(pk.hook_thread, pthread_self()));
    assert_int_equal(atomic_load(&s.calls), 1);
    assert_int_equal(s.err, WK_ERR_CANCELLED);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_ERR_CANCELLED);
    wk_promise_close(p);
    assert_int_equal(atomic_load(&pk.hooks), 1);

    wk_settle(take_parked(&pk), WK_OK, int_value(1));
    assert_int_equal(atomic_load(&values_freed), 1);
    assert_int_equal(atomic_load(&s.calls), 1);
    assert_int_equal(atomic_load(&values_made), 1); /* later never ran */
    wk_promise_free(&p);
    assert_values_balanced();
}

static void
test_free_before_late_settle(void **state)
{
    struct parked pk;
    struct wk_step step = {.run_async = park_async, .arg = &pk};
    struct settled s = {0};

    (void)state;
    reset_counts(NULL);
    parked_init(&pk, true);

    struct wk_promise *p = wk_promise_new(NULL, &step);

    assert_int_equal(wk_promise_on_settle(p, on_settled, &s), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    wk_promise_free(&p);
    assert_int_equal(atomic_load(&pk.hooks), 1);
    assert_int_equal(s.err, WK_ERR_CANCELLED);
    /* The memory is still there for the settle, which frees it. */
    wk_settle(take_parked(&pk), WK_OK, int_value(1));
    assert_values_balanced();
}

/* Closes its own promise before registering the hook. */
static void
close_then_hook_async(struct wk_ctx *ctx, void *arg,
                      const struct wk_value *last, struct wk_settle *settle)
{
    struct parked *pk = arg;
    struct wk_promise **pp = (struct wk_promise **)pk->ctx;

    (void)ctx;
    (void)last;
    wk_promise_close(*pp);
    wk_settle_on_cancel(settle, parked_hook, pk);
    assert_int_equal(atomic_load(&pk->hooks), 1);
    wk_settle(settle, WK_OK, int_value(2));
}

static void
test_hook_registered_after_close_runs_at_once(void **state)
{
    struct parked pk;
    struct wk_promise *p = NULL;
    struct wk_step step = {.run_async = close_then_hook_async, .arg = &pk};

    (void)state;
    reset_counts(NULL);
    parked_init(&pk, false);
    pk.ctx = (struct wk_ctx *)&p; /* smuggles the promise to the step */
    p = wk_promise_new(NULL, &step);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(atomic_load(&pk.hooks), 1);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_ERR_CANCELLED);
    wk_promise_free(&p);
    assert_values_balanced();
}

/* A hook that settles the step itself, as an aborted transfer might. */
struct settle_in_hook {
    struct wk_settle *settle;
};

static void
settling_hook(void *arg)
{
    struct settle_in_hook *h = arg;

    wk_settle(h->settle, WK_ERR_CANCELLED, int_value(0));
}

static void
hook_settles_async(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
                   struct wk_settle *settle)
{
    struct settle_in_hook *h = arg;

    (void)ctx;
    (void)last;
    h->settle = settle;
    wk_settle_on_cancel(settle, settling_hook, h);
}

static void
test_hook_may_settle(void **state)
{
    struct settle_in_hook h = {0};
    struct wk_step step = {.run_async = hook_settles_async, .arg = &h};
    struct settled s = {0};

    (void)state;
    reset_counts(NULL);

    struct wk_promise *p = wk_promise_new(NULL, &step);

    assert_int_equal(wk_promise_on_settle(p, on_settled, &s), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    wk_promise_free(&p);
    assert_int_equal(atomic_load(&s.calls), 1);
    assert_int_equal(s.err, WK_ERR_CANCELLED);
    assert_values_balanced();
}

static void
test_close_before_start(void **state)
{
    struct wk_step step = {.run = add_step, .arg = &one};
    struct wk_promise *p = wk_promise_new(NULL, &step);
    struct settled s = {0};

    (void)state;
    reset_counts(NULL);
    assert_int_equal(wk_promise_on_settle(p, on_settled, &s), WK_OK);
    wk_promise_close(p);
    assert_true(wk_promise_settled(p));
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_ERR_CANCELLED);
    assert_int_equal(wk_promise_start(p), WK_ERR_CANCELLED);
    assert_int_equal(atomic_load(&s.calls), 0);
    assert_int_equal(atomic_load(&values_made), 0);
    wk_promise_free(&p);
}

static void
test_close_after_settle_keeps_result(void **state)
{
    struct wk_step step = {.run = add_step, .arg = &one};
    struct wk_promise *p = wk_promise_new(NULL, &step);
    const struct wk_value *v = NULL;

    (void)state;
    reset_counts(NULL);
    assert_int_equal(wk_promise_start(p), WK_OK);
    wk_promise_close(p);
    assert_false(wk_ctx_cancelled(wk_promise_ctx(p)));
    assert_int_equal(wk_promise_get(p, WK_TIME_NEVER, &v), WK_OK);
    assert_int_equal(int_of(v), 1);
    wk_promise_free(&p);
    assert_values_balanced();
}

/* --- context: deadline and parent ------------------------------------- */

static int
advance_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
             struct wk_value *out)
{
    (void)ctx;
    (void)last;
    (void)out;
    wk_manual_clock_advance(arg, WK_MSEC(100));
    return WK_OK;
}

/* Traces itself and fails with the context's error, as a careful step does. */
static int
deadline_aware_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
                    struct wk_value *out)
{
    struct traced *tr = arg;

    (void)last;
    (void)out;
    trace_add(tr->trace, tr->index);
    assert_int_equal(wk_ctx_remaining(ctx), 0);
    return wk_ctx_err(ctx);
}

static void
test_steps_see_passed_deadline(void **state)
{
    struct wk_manual_clock clock;
    struct trace trace = {0};
    struct traced later = {&trace, '1', 't'};
    struct traced catch = {&trace, '2', 'e'};
    struct wk_step slow = {.run = advance_step, .arg = &clock};
    struct wk_step step = {.run = deadline_aware_step, .arg = &later};

    (void)state;
    reset_counts(NULL);
    wk_manual_clock_init(&clock, 0);

    struct wk_promise_opts opts = {.clock = &clock.clock,
                                   .deadline = WK_MSEC(50)};
    struct wk_promise *p = wk_promise_new(&opts, &slow);

    assert_int_equal(wk_promise_then(p, &step), WK_OK);
    assert_int_equal(wk_promise_on_exception(p, traced_catch, &catch), WK_OK);
    assert_int_equal(wk_ctx_remaining(wk_promise_ctx(p)), WK_MSEC(50));
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_OK);
    /* The step after the deadline ran and failed; the fallback recovered. */
    assert_string_equal(trace.text, "12");
    assert_int_equal(trace.seen_err, WK_ERR_TIMED_OUT);
    wk_promise_free(&p);
    assert_values_balanced();
}

static void
test_async_first_step_runs_after_deadline(void **state)
{
    struct wk_manual_clock clock;
    struct parked pk;
    struct wk_step step = {.run_async = park_async, .arg = &pk};

    (void)state;
    wk_manual_clock_init(&clock, WK_SEC(1));
    parked_init(&pk, false);

    struct wk_promise_opts opts = {.clock = &clock.clock, .deadline = 1};
    struct wk_promise *p = wk_promise_new(&opts, &step);

    assert_int_equal(wk_promise_start(p), WK_OK);
    /* An event loop may rely on run_async having run inside start. */
    assert_int_equal(atomic_load(&pk.runs), 1);
    assert_int_equal(wk_ctx_err(pk.ctx), WK_ERR_TIMED_OUT);
    wk_settle(take_parked(&pk), WK_ERR_TIMED_OUT, (struct wk_value){0});
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_ERR_TIMED_OUT);
    wk_promise_free(&p);
}

static void
test_no_retry_after_deadline(void **state)
{
    struct wk_manual_clock clock;
    struct flaky f = {.failures = 5};
    struct wk_step step = {.run = flaky_step, .arg = &f};

    (void)state;
    wk_manual_clock_init(&clock, 0);

    struct wk_promise_opts opts = {.clock = &clock.clock,
                                   .deadline = WK_MSEC(10)};
    struct wk_promise *p = wk_promise_new(&opts, &step);

    assert_int_equal(wk_promise_recover_and_retry(p, flaky_recover, &f, 5),
                     WK_OK);
    wk_manual_clock_set(&clock, WK_MSEC(5));
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(f.runs, 5);
    wk_promise_free(&p);

    f = (struct flaky){.failures = 5};
    p = wk_promise_new(&opts, &step);
    assert_int_equal(wk_promise_recover_and_retry(p, flaky_recover, &f, 5),
                     WK_OK);
    wk_manual_clock_set(&clock, WK_MSEC(10));
    assert_int_equal(wk_promise_start(p), WK_OK);
    /* The step still runs once, but no retry starts after the deadline. */
    assert_int_equal(wk_promise_wait(p, 0), WK_ERR_UPSTREAM);
    assert_int_equal(f.runs, 1);
    assert_int_equal(f.recoveries, 0);
    wk_promise_free(&p);
}

static void
test_parent_context(void **state)
{
    struct wk_manual_clock clock;
    struct parked pk;
    struct wk_step step = {.run_async = park_async, .arg = &pk};
    struct wk_step later = {.run = add_step, .arg = &one};
    struct settled s = {0};

    (void)state;
    reset_counts(NULL);
    wk_manual_clock_init(&clock, 0);
    parked_init(&pk, false);

    struct wk_ctx *parent = wk_ctx_new(NULL, WK_MSEC(30), &clock.clock);
    struct wk_promise_opts opts = {.parent = parent, .deadline = WK_MSEC(80)};
    struct wk_promise *p = wk_promise_new(&opts, &step);

    assert_int_equal(wk_promise_then(p, &later), WK_OK);
    assert_int_equal(wk_promise_on_settle(p, on_settled, &s), WK_OK);
    /* The promise inherits the parent's clock and earlier deadline. */
    assert_ptr_equal(wk_ctx_clock(wk_promise_ctx(p)), &clock.clock);
    assert_int_equal(wk_ctx_deadline(wk_promise_ctx(p)), WK_MSEC(30));
    assert_int_equal(wk_promise_start(p), WK_OK);

    wk_ctx_cancel(parent);
    assert_true(wk_ctx_cancelled(pk.ctx));
    wk_settle(take_parked(&pk), WK_OK, int_value(1));
    assert_int_equal(s.err, WK_ERR_CANCELLED);
    assert_int_equal(atomic_load(&values_made), 1);
    wk_promise_free(&p);
    wk_ctx_unref(&parent);
    assert_null(parent);
    assert_values_balanced();
}

static void
test_ctx_ref_outlives_promise(void **state)
{
    struct wk_step step = {.run = add_step, .arg = &one};
    struct wk_promise *p = wk_promise_new(NULL, &step);
    struct wk_ctx *ctx = wk_ctx_ref(wk_promise_ctx(p));

    (void)state;
    reset_counts(NULL);
    assert_int_equal(wk_promise_start(p), WK_OK);
    wk_promise_free(&p);
    assert_int_equal(wk_ctx_err(ctx), WK_OK);
    assert_int_equal(wk_ctx_remaining(ctx), WK_TIME_NEVER);
    wk_ctx_unref(&ctx);
    assert_values_balanced();
}

/* --- the pool ----------------------------------------------------------- */

struct where {
    struct wk_pool *pool;
    atomic_int on_worker;
    atomic_int runs;
};

static int
where_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
           struct wk_value *out)
{
    struct where *w = arg;

    (void)ctx;
    (void)last;
    (void)out;
    atomic_fetch_add(&w->runs, 1);
    if (wk_pool_is_worker(w->pool))
        atomic_fetch_add(&w->on_worker, 1);
    return WK_OK;
}

static int
where_catch(struct wk_ctx *ctx, void *arg, int err, const struct wk_value *last,
            struct wk_value *out)
{
    (void)err;
    return where_step(ctx, arg, last, out);
}

static void
where_async(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
            struct wk_settle *settle)
{
    struct where *w = arg;

    (void)ctx;
    (void)last;
    atomic_fetch_add(&w->runs, 1);
    if (wk_pool_is_worker(w->pool))
        atomic_fetch_add(&w->on_worker, 1);
    wk_settle(settle, WK_ERR_UPSTREAM, (struct wk_value){0});
}

static void
test_sync_steps_run_on_pool(void **state)
{
    struct wk_pool *pool = wk_pool_new(2, 8);
    struct where w = {.pool = pool};
    struct wk_step step = {.run = where_step, .arg = &w};
    struct wk_step async = {.run_async = where_async, .arg = &w};
    struct wk_promise_opts opts = {.pool = pool};
    struct wk_promise *p = wk_promise_new(&opts, &step);
    struct wk_pool_stats stats;

    (void)state;
    assert_int_equal(wk_promise_then(p, &step), WK_OK);
    assert_int_equal(wk_promise_then(p, &async), WK_OK);
    assert_int_equal(wk_promise_on_exception(p, where_catch, &w), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_OK);
    /* The async step, reached on a worker, stayed there; one hop in all. */
    assert_int_equal(atomic_load(&w.runs), 4);
    assert_int_equal(atomic_load(&w.on_worker), 4);
    wk_promise_free(&p);
    wk_pool_destroy(&pool);
    assert_null(pool);
    (void)stats;
}

static void
test_async_first_step_skips_pool(void **state)
{
    struct wk_pool *pool = wk_pool_new(1, 4);
    struct where w = {.pool = pool};
    struct wk_step async = {.run_async = where_async, .arg = &w};
    struct wk_promise_opts opts = {.pool = pool};
    struct wk_promise *p = wk_promise_new(&opts, &async);
    struct wk_pool_stats stats;

    (void)state;
    assert_int_equal(wk_promise_start(p), WK_OK);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_ERR_UPSTREAM);
    assert_int_equal(atomic_load(&w.on_worker), 0);
    wk_pool_stats(pool, &stats);
    assert_int_equal(stats.completed, 0);
    wk_promise_free(&p);
    wk_pool_destroy(&pool);
}

struct blocker {
    struct gate entered;
    struct gate release;
};

static void
block_task(void *arg)
{
    struct blocker *b = arg;

    gate_open(&b->entered);
    gate_wait(&b->release);
}

static void
nop_task(void *arg)
{
    (void)arg;
}

static void
test_full_pool_rejects_step(void **state)
{
    struct wk_pool *pool = wk_pool_new(1, 1);
    struct blocker b;
    struct where w = {.pool = pool};
    struct wk_step step = {.run = where_step, .arg = &w};
    struct wk_promise_opts opts = {.pool = pool};
    struct settled s = {0};

    (void)state;
    gate_init(&b.entered);
    gate_init(&b.release);
    assert_int_equal(wk_pool_submit(pool, block_task, NULL, &b), WK_OK);
    gate_wait(&b.entered);
    assert_int_equal(wk_pool_submit(pool, nop_task, NULL, NULL), WK_OK);

    struct wk_promise *p = wk_promise_new(&opts, &step);

    assert_int_equal(wk_promise_on_settle(p, on_settled, &s), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    /* Settled inside start, on this thread, without waiting. */
    assert_int_equal(atomic_load(&s.calls), 1);
    assert_int_equal(s.err, WK_ERR_REJECTED);
    assert_int_equal(atomic_load(&w.runs), 0);
    gate_open(&b.release);
    wk_promise_free(&p);
    wk_pool_destroy(&pool);
    gate_destroy(&b.entered);
    gate_destroy(&b.release);
}

static void
test_pool_cancel_settles_queued_promise(void **state)
{
    struct wk_pool *pool = wk_pool_new(1, 4);
    struct blocker b;
    struct where w = {.pool = pool};
    struct wk_step step = {.run = where_step, .arg = &w};
    struct wk_promise_opts opts = {.pool = pool};
    struct settled s = {0};

    (void)state;
    gate_init(&b.entered);
    gate_init(&b.release);
    assert_int_equal(wk_pool_submit(pool, block_task, NULL, &b), WK_OK);
    gate_wait(&b.entered);

    struct wk_promise *p = wk_promise_new(&opts, &step);

    assert_int_equal(wk_promise_on_settle(p, on_settled, &s), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    wk_promise_free(&p);
    gate_open(&b.release);
    wk_pool_shutdown(pool, WK_POOL_CANCEL);
    /* Either the worker had already taken the step, or it was cancelled. */
    assert_int_equal(atomic_load(&s.calls), 1);
    if (atomic_load(&w.runs) == 0)
        assert_int_equal(s.err, WK_ERR_CANCELLED);
    else
        assert_int_equal(s.err, WK_OK);
    wk_pool_destroy(&pool);
    gate_destroy(&b.entered);
    gate_destroy(&b.release);
}

/* A step that waits, on a worker, until the test has closed the promise. */
struct closing {
    struct gate entered;
    struct gate release;
    atomic_bool saw_cancel;
};

static int
closing_step(struct wk_ctx *ctx, void *arg, const struct wk_value *last,
             struct wk_value *out)
{
    struct closing *c = arg;

    (void)last;
    gate_open(&c->entered);
    gate_wait(&c->release);
    atomic_store(&c->saw_cancel, wk_ctx_cancelled(ctx));
    *out = int_value(3);
    return WK_OK;
}

static void
test_close_running_sync_step(void **state)
{
    struct wk_pool *pool = wk_pool_new(1, 4);
    struct closing c = {0};
    struct wk_step step = {.run = closing_step, .arg = &c};
    struct wk_step later = {.run = add_step, .arg = &one};
    struct wk_promise_opts opts = {.pool = pool};
    struct settled s = {0};

    (void)state;
    reset_counts(NULL);
    gate_init(&c.entered);
    gate_init(&c.release);

    struct wk_promise *p = wk_promise_new(&opts, &step);

    assert_int_equal(wk_promise_then(p, &later), WK_OK);
    assert_int_equal(wk_promise_on_settle(p, on_settled, &s), WK_OK);
    assert_int_equal(wk_promise_start(p), WK_OK);
    gate_wait(&c.entered);
    wk_promise_close(p);
    assert_int_equal(atomic_load(&s.calls), 1);
    assert_int_equal(s.err, WK_ERR_CANCELLED);
    assert_int_equal(wk_promise_wait(p, WK_TIME_NEVER), WK_ERR_CANCELLED);
    gate_open(&c.release);
    wk_promise_free(&p);
    wk_pool_destroy(&pool);
    assert_true(atomic_load(&c.saw_cancel));
    /* The step's late output was dropped and `later` never ran. */
    assert_int_equal(atomic_load(&values_made), 1);
    assert_values_balanced();
    gate_destroy(&c.entered);
    gate_destroy(&c.release);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chain_table),
        cmocka_unit_test(test_exception_sees_error),
        cmocka_unit_test(test_retry_table),
        cmocka_unit_test(test_retry_invalid_uses),
        cmocka_unit_test(test_new_rejects_invalid_steps),
        cmocka_unit_test(test_build_after_start_is_invalid),
        cmocka_unit_test(test_free_unstarted_and_null),
        cmocka_unit_test(test_failed_output_is_freed),
        cmocka_unit_test(test_passing_last_on_frees_once),
        cmocka_unit_test(test_on_settle_takes_value),
        cmocka_unit_test(test_free_inside_on_settle),
        cmocka_unit_test(test_free_inside_step),
        cmocka_unit_test(test_get_inside_own_step_is_invalid),
        cmocka_unit_test(test_get_inside_on_settle),
        cmocka_unit_test(test_get_deadline_then_chain_goes_on),
        cmocka_unit_test(test_wait_ends_when_manual_clock_passes),
        cmocka_unit_test(test_waiter_wakes_on_settle),
        cmocka_unit_test(test_async_settled_inline),
        cmocka_unit_test(test_async_settled_from_other_thread),
        cmocka_unit_test(test_async_error_value_is_freed),
        cmocka_unit_test(test_async_step_retried),
        cmocka_unit_test(test_close_async_runs_hook_and_drops_late_settle),
        cmocka_unit_test(test_free_before_late_settle),
        cmocka_unit_test(test_hook_registered_after_close_runs_at_once),
        cmocka_unit_test(test_hook_may_settle),
        cmocka_unit_test(test_close_before_start),
        cmocka_unit_test(test_close_after_settle_keeps_result),
        cmocka_unit_test(test_steps_see_passed_deadline),
        cmocka_unit_test(test_async_first_step_runs_after_deadline),
        cmocka_unit_test(test_no_retry_after_deadline),
        cmocka_unit_test(test_parent_context),
        cmocka_unit_test(test_ctx_ref_outlives_promise),
        cmocka_unit_test(test_sync_steps_run_on_pool),
        cmocka_unit_test(test_async_first_step_skips_pool),
        cmocka_unit_test(test_full_pool_rejects_step),
        cmocka_unit_test(test_pool_cancel_settles_queued_promise),
        cmocka_unit_test(test_close_running_sync_step),
    };

    return cmocka_run_group_tests(tests, reset_counts, NULL);
}
