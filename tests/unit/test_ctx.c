/*
 * Unit tests for contexts: deadlines, inheritance from a parent,
 * cancellation, remaining time and reference counting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "workshop/ctx.h"
#include "workshop/error.h"

static void
test_defaults(void **state)
{
    struct wk_ctx *ctx = wk_ctx_new(NULL, WK_TIME_NEVER, NULL);

    (void)state;
    assert_non_null(ctx);
    assert_ptr_equal(wk_ctx_clock(ctx), &wk_clock_monotonic);
    assert_int_equal(wk_ctx_deadline(ctx), WK_TIME_NEVER);
    assert_int_equal(wk_ctx_remaining(ctx), WK_TIME_NEVER);
    assert_int_equal(wk_ctx_err(ctx), WK_OK);
    assert_false(wk_ctx_cancelled(ctx));
    wk_ctx_unref(&ctx);
    assert_null(ctx);
    wk_ctx_unref(&ctx);
}

static void
test_deadline_on_manual_clock(void **state)
{
    struct wk_manual_clock clock;

    (void)state;
    wk_manual_clock_init(&clock, WK_SEC(5));

    struct wk_ctx *ctx =
        wk_ctx_new(NULL, WK_SEC(5) + WK_MSEC(30), &clock.clock);

    assert_int_equal(wk_ctx_remaining(ctx), WK_MSEC(30));
    assert_int_equal(wk_ctx_err(ctx), WK_OK);
    wk_manual_clock_advance(&clock, WK_MSEC(29));
    assert_int_equal(wk_ctx_remaining(ctx), WK_MSEC(1));
    assert_int_equal(wk_ctx_err(ctx), WK_OK);
    /* The deadline itself counts as passed. */
    wk_manual_clock_advance(&clock, WK_MSEC(1));
    assert_int_equal(wk_ctx_remaining(ctx), 0);
    assert_int_equal(wk_ctx_err(ctx), WK_ERR_TIMED_OUT);
    wk_manual_clock_advance(&clock, WK_SEC(1));
    assert_int_equal(wk_ctx_remaining(ctx), 0);
    wk_ctx_unref(&ctx);
}

struct deadline_case {
    const char *name;
    wk_time parent;
    wk_time child;
    wk_time want;
};

static const struct deadline_case deadline_cases[] = {
    {"earlier parent wins", WK_MSEC(10), WK_MSEC(20), WK_MSEC(10)},
    {"earlier child wins", WK_MSEC(30), WK_MSEC(20), WK_MSEC(20)},
    {"parent without deadline", WK_TIME_NEVER, WK_MSEC(20), WK_MSEC(20)},
    {"child without deadline inherits", WK_MSEC(10), WK_TIME_NEVER,
     WK_MSEC(10)},
    {"neither has one", WK_TIME_NEVER, WK_TIME_NEVER, WK_TIME_NEVER},
};

static void
test_child_deadline_table(void **state)
{
    struct wk_manual_clock clock;

    (void)state;
    wk_manual_clock_init(&clock, 0);
    for (size_t i = 0; i < sizeof(deadline_cases) / sizeof(deadline_cases[0]);
         i++) {
        const struct deadline_case *tc = &deadline_cases[i];
        struct wk_ctx *parent = wk_ctx_new(NULL, tc->parent, &clock.clock);
        struct wk_ctx *child = wk_ctx_new(parent, tc->child, NULL);

        if (wk_ctx_deadline(child) != tc->want)
            fail_msg("case '%s': deadline %lld, want %lld", tc->name,
                     (long long)wk_ctx_deadline(child), (long long)tc->want);
        wk_ctx_unref(&child);
        wk_ctx_unref(&parent);
    }
}

static void
test_clock_inherited_unless_given(void **state)
{
    struct wk_manual_clock a, b;

    (void)state;
    wk_manual_clock_init(&a, 0);
    wk_manual_clock_init(&b, 0);

    struct wk_ctx *parent = wk_ctx_new(NULL, WK_TIME_NEVER, &a.clock);
    struct wk_ctx *inherits = wk_ctx_new(parent, WK_TIME_NEVER, NULL);
    struct wk_ctx *own = wk_ctx_new(parent, WK_TIME_NEVER, &b.clock);

    assert_ptr_equal(wk_ctx_clock(inherits), &a.clock);
    assert_ptr_equal(wk_ctx_clock(own), &b.clock);
    wk_ctx_unref(&own);
    wk_ctx_unref(&inherits);
    wk_ctx_unref(&parent);
}

static void
test_cancel_flows_down_not_up(void **state)
{
    struct wk_ctx *root = wk_ctx_new(NULL, WK_TIME_NEVER, NULL);
    struct wk_ctx *mid = wk_ctx_new(root, WK_TIME_NEVER, NULL);
    struct wk_ctx *leaf = wk_ctx_new(mid, WK_TIME_NEVER, NULL);
    struct wk_ctx *sibling = wk_ctx_new(root, WK_TIME_NEVER, NULL);

    (void)state;
    wk_ctx_cancel(mid);
    assert_false(wk_ctx_cancelled(root));
    assert_true(wk_ctx_cancelled(mid));
    assert_true(wk_ctx_cancelled(leaf));
    assert_false(wk_ctx_cancelled(sibling));
    assert_int_equal(wk_ctx_err(leaf), WK_ERR_CANCELLED);

    wk_ctx_cancel(root);
    assert_true(wk_ctx_cancelled(sibling));
    wk_ctx_unref(&sibling);
    wk_ctx_unref(&leaf);
    wk_ctx_unref(&mid);
    wk_ctx_unref(&root);
}

static void
test_cancel_wins_over_timeout(void **state)
{
    struct wk_manual_clock clock;

    (void)state;
    wk_manual_clock_init(&clock, WK_SEC(1));

    struct wk_ctx *ctx = wk_ctx_new(NULL, 0, &clock.clock);

    assert_int_equal(wk_ctx_err(ctx), WK_ERR_TIMED_OUT);
    wk_ctx_cancel(ctx);
    assert_int_equal(wk_ctx_err(ctx), WK_ERR_CANCELLED);
    wk_ctx_unref(&ctx);
}

static void
test_child_keeps_parent_alive(void **state)
{
    struct wk_manual_clock clock;

    (void)state;
    wk_manual_clock_init(&clock, 0);

    struct wk_ctx *parent = wk_ctx_new(NULL, WK_MSEC(5), &clock.clock);
    struct wk_ctx *child = wk_ctx_new(parent, WK_TIME_NEVER, NULL);
    struct wk_ctx *extra = wk_ctx_ref(child);

    assert_ptr_equal(extra, child);
    wk_ctx_cancel(parent);
    wk_ctx_unref(&parent);
    /* The parent is still read through the child (ASan checks this). */
    assert_true(wk_ctx_cancelled(child));
    wk_ctx_unref(&child);
    assert_true(wk_ctx_cancelled(extra));
    wk_ctx_unref(&extra);
}

static void
test_long_chain_unrefs_without_recursion(void **state)
{
    struct wk_ctx *ctx = wk_ctx_new(NULL, WK_TIME_NEVER, NULL);

    (void)state;
    for (int i = 0; i < 100000; i++) {
        struct wk_ctx *child = wk_ctx_new(ctx, WK_TIME_NEVER, NULL);

        assert_non_null(child);
        wk_ctx_unref(&ctx);
        ctx = child;
    }
    wk_ctx_unref(&ctx);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_deadline_on_manual_clock),
        cmocka_unit_test(test_child_deadline_table),
        cmocka_unit_test(test_clock_inherited_unless_given),
        cmocka_unit_test(test_cancel_flows_down_not_up),
        cmocka_unit_test(test_cancel_wins_over_timeout),
        cmocka_unit_test(test_child_keeps_parent_alive),
        cmocka_unit_test(test_long_chain_unrefs_without_recursion),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
