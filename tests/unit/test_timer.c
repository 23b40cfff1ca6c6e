/*
 * Timer queue tests: firing order, cancellation, re-arming from callbacks,
 * the wake hook, and threads adding and cancelling while a loop runs.
 */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "workshop/error.h"
#include "workshop/timer.h"

#define T0 WK_SEC(1000)

struct fired {
    int ids[64];
    int count;
};

struct tagged_timer {
    struct wk_timer timer;
    int id;
    struct fired *log;
};

static void
log_fire(void *arg, wk_time now)
{
    struct tagged_timer *t = arg;

    (void)now;
    if (t->log->count < 64)
        t->log->ids[t->log->count] = t->id;
    t->log->count++;
}

/* --- firing order ------------------------------------------------------- */

struct order_case {
    const char *name;
    wk_duration deadlines[8]; /* since T0; timer i gets id i + 1; 0 ends */
    wk_duration run_at;       /* since T0 */
    int fired[8];             /* ids in firing order; 0 ends */
};

static const struct order_case order_cases[] = {
    {"timers fire in deadline order",
     {WK_MSEC(30), WK_MSEC(10), WK_MSEC(20)},
     WK_MSEC(30),
     {2, 3, 1}},
    {"equal deadlines fire in the order they were added",
     {WK_MSEC(10), WK_MSEC(10), WK_MSEC(5), WK_MSEC(10)},
     WK_MSEC(10),
     {3, 1, 2, 4}},
    {"timers not yet due stay",
     {WK_MSEC(10), WK_MSEC(11), WK_MSEC(9)},
     WK_MSEC(10),
     {3, 1}},
    {"nothing is due before the earliest deadline",
     {WK_MSEC(10)},
     WK_MSEC(9),
     {0}},
};

static void
test_firing_order(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(order_cases) / sizeof(order_cases[0]); i++) {
        const struct order_case *oc = &order_cases[i];
        struct wk_timer_queue *q = wk_timer_queue_new(NULL, NULL);
        struct tagged_timer timers[8] = {0};
        struct fired log = {0};
        int added = 0;
        int expected = 0;

        assert_non_null(q);
        for (; added < 8 && oc->deadlines[added] != 0; added++) {
            timers[added].id = added + 1;
            timers[added].log = &log;
            assert_int_equal(wk_timer_add(q, &timers[added].timer,
                                          T0 + oc->deadlines[added], log_fire,
                                          &timers[added]),
                             WK_OK);
        }
        while (expected < 8 && oc->fired[expected] != 0)
            expected++;

        size_t ran = wk_timer_run_due(q, T0 + oc->run_at);

        if ((int)ran != expected || log.count != expected)
            fail_msg("%s: %zu ran, expected %d", oc->name, ran, expected);
        for (int k = 0; k < expected; k++) {
            if (log.ids[k] != oc->fired[k])
                fail_msg("%s: timer %d fired in place %d, expected %d",
                         oc->name, log.ids[k], k + 1, oc->fired[k]);
        }
        assert_int_equal(wk_timer_count(q), (size_t)(added - expected));
        wk_timer_queue_destroy(&q);
        assert_null(q);
    }
}

static void
test_next_deadline(void **state)
{
    struct wk_timer_queue *q = wk_timer_queue_new(NULL, NULL);
    struct tagged_timer a = {0}, b = {0};
    struct fired log = {0};

    (void)state;
    a.log = b.log = &log;
    assert_int_equal(wk_timer_next_deadline(q), WK_TIME_NEVER);
    assert_int_equal(wk_timer_add(q, &a.timer, T0 + 50, log_fire, &a), WK_OK);
    assert_int_equal(wk_timer_next_deadline(q), T0 + 50);
    assert_int_equal(wk_timer_add(q, &b.timer, T0 + 20, log_fire, &b), WK_OK);
    assert_int_equal(wk_timer_next_deadline(q), T0 + 20);
    assert_true(wk_timer_cancel(q, &b.timer));
    assert_int_equal(wk_timer_next_deadline(q), T0 + 50);
    assert_int_equal(wk_timer_run_due(q, T0 + 50), 1);
    assert_int_equal(wk_timer_next_deadline(q), WK_TIME_NEVER);
    wk_timer_queue_destroy(&q);
}

/* --- cancellation ------------------------------------------------------- */

static void
test_cancel(void **state)
{
    struct wk_timer_queue *q = wk_timer_queue_new(NULL, NULL);
    struct tagged_timer t = {0};
    struct wk_timer idle = WK_TIMER_INIT;
    struct fired log = {0};

    (void)state;
    t.log = &log;
    assert_false(wk_timer_cancel(q, &idle));
    assert_int_equal(wk_timer_add(q, &t.timer, T0, log_fire, &t), WK_OK);
    assert_int_equal(wk_timer_add(q, &t.timer, T0, log_fire, &t),
                     WK_ERR_INVALID);
    assert_true(wk_timer_cancel(q, &t.timer));
    assert_false(wk_timer_cancel(q, &t.timer));
    assert_int_equal(wk_timer_run_due(q, T0 + WK_SEC(1)), 0);
    assert_int_equal(log.count, 0);

    /* Idle again, the timer can be re-armed, and fired it cannot cancel. */
    assert_int_equal(wk_timer_add(q, &t.timer, T0, log_fire, &t), WK_OK);
    assert_int_equal(wk_timer_run_due(q, T0), 1);
    assert_false(wk_timer_cancel(q, &t.timer));
    assert_int_equal(wk_timer_add(q, &t.timer, T0, NULL, &t), WK_ERR_INVALID);
    wk_timer_queue_destroy(&q);
}

/* A timer pending in one queue cannot be cancelled through another. */
static void
test_cancel_other_queue(void **state)
{
    struct wk_timer_queue *q1 = wk_timer_queue_new(NULL, NULL);
    struct wk_timer_queue *q2 = wk_timer_queue_new(NULL, NULL);
    struct tagged_timer t = {0}, u = {0};
    struct fired log = {0};

    (void)state;
    t.log = u.log = &log;
    assert_int_equal(wk_timer_add(q1, &t.timer, T0, log_fire, &t), WK_OK);
    assert_int_equal(wk_timer_add(q2, &u.timer, T0, log_fire, &u), WK_OK);
    assert_false(wk_timer_cancel(q2, &t.timer));
    assert_int_equal(wk_timer_count(q2), 1);
    assert_true(wk_timer_cancel(q1, &t.timer));
    wk_timer_queue_destroy(&q1);
    wk_timer_queue_destroy(&q2);
}

/*
 * 200 timers with scattered deadlines, every third cancelled: the rest fire
 * in deadline order, which checks the heap after removals from its middle.
 */
static void
test_cancel_keeps_heap_order(void **state)
{
    enum { N = 200 };
    struct wk_timer_queue *q = wk_timer_queue_new(NULL, NULL);
    struct tagged_timer *timers = calloc(N, sizeof(*timers));
    struct fired log = {0};
    wk_time last = 0;
    unsigned seed = 7;
    size_t kept = 0;

    (void)state;
    assert_non_null(timers);
    for (int i = 0; i < N; i++) {
        timers[i].id = i;
        timers[i].log = &log;
        assert_int_equal(wk_timer_add(q, &timers[i].timer,
                                      T0 + rand_r(&seed) % 1000, log_fire,
                                      &timers[i]),
                         WK_OK);
    }
    for (int i = 0; i < N; i += 3)
        assert_true(wk_timer_cancel(q, &timers[i].timer));
    for (int i = 0; i < N; i++)
        kept += i % 3 != 0;
    assert_int_equal(wk_timer_count(q), kept);

    while (wk_timer_count(q) > 0) {
        wk_time next = wk_timer_next_deadline(q);

        assert_true(next >= last);
        last = next;
        assert_true(wk_timer_run_due(q, next) >= 1);
    }
    assert_int_equal(log.count, (int)kept);
    wk_timer_queue_destroy(&q);
    free(timers);
}

/* --- callbacks that touch the queue ------------------------------------- */

struct rearm {
    struct wk_timer timer;
    struct wk_timer_queue *q;
    int runs;
};

static void
rearm_now(void *arg, wk_time now)
{
    struct rearm *r = arg;

    r->runs++;
    assert_int_equal(wk_timer_add(r->q, &r->timer, now, rearm_now, r), WK_OK);
}

static void
test_rearm_runs_next_time(void **state)
{
    struct rearm r = {.q = wk_timer_queue_new(NULL, NULL)};

    (void)state;
    assert_int_equal(wk_timer_add(r.q, &r.timer, T0, rearm_now, &r), WK_OK);
    assert_int_equal(wk_timer_run_due(r.q, T0), 1);
    assert_int_equal(r.runs, 1);
    assert_int_equal(wk_timer_run_due(r.q, T0), 1);
    assert_int_equal(r.runs, 2);
    assert_true(wk_timer_cancel(r.q, &r.timer));
    wk_timer_queue_destroy(&r.q);
}

struct pair {
    struct wk_timer first;
    struct wk_timer second;
    struct wk_timer_queue *q;
    bool cancel_result;
    int second_runs;
};

static void
cancel_second(void *arg, wk_time now)
{
    struct pair *p = arg;

    (void)now;
    p->cancel_result = wk_timer_cancel(p->q, &p->second);
    /* Due in the same run, second cannot be re-armed before it fires. */
    assert_int_equal(wk_timer_add(p->q, &p->second, now, cancel_second, p),
                     WK_ERR_INVALID);
}

static void
count_second(void *arg, wk_time now)
{
    struct pair *p = arg;

    (void)now;
    p->second_runs++;
}

/* A timer due in the same run is firing, so cancelling it returns false. */
static void
test_cancel_from_callback_in_same_run(void **state)
{
    struct pair p = {.q = wk_timer_queue_new(NULL, NULL)};

    (void)state;
    assert_int_equal(wk_timer_add(p.q, &p.first, T0, cancel_second, &p), WK_OK);
    assert_int_equal(wk_timer_add(p.q, &p.second, T0 + 1, count_second, &p),
                     WK_OK);
    assert_int_equal(wk_timer_run_due(p.q, T0 + 1), 2);
    assert_false(p.cancel_result);
    assert_int_equal(p.second_runs, 1);
    wk_timer_queue_destroy(&p.q);
}

static void
free_self(void *arg, wk_time now)
{
    (void)now;
    free(arg);
}

static void
test_callback_frees_its_timer(void **state)
{
    struct wk_timer_queue *q = wk_timer_queue_new(NULL, NULL);

    (void)state;
    for (int i = 0; i < 40; i++) {
        struct wk_timer *t = calloc(1, sizeof(*t));

        assert_non_null(t);
        assert_int_equal(wk_timer_add(q, t, T0 + i % 4, free_self, t), WK_OK);
    }
    assert_int_equal(wk_timer_run_due(q, T0 + 4), 40);
    wk_timer_queue_destroy(&q);
}

/* --- wake hook and destroy ---------------------------------------------- */

static void
count_wake(void *arg)
{
    (*(int *)arg)++;
}

static void
test_wake_on_earlier_deadline(void **state)
{
    int wakes = 0;
    struct wk_timer_queue *q = wk_timer_queue_new(count_wake, &wakes);
    struct tagged_timer t[3] = {0};
    struct fired log = {0};

    (void)state;
    for (int i = 0; i < 3; i++)
        t[i].log = &log;
    assert_int_equal(wk_timer_add(q, &t[0].timer, T0 + 50, log_fire, &t[0]),
                     WK_OK);
    assert_int_equal(wakes, 1);
    assert_int_equal(wk_timer_add(q, &t[1].timer, T0 + 60, log_fire, &t[1]),
                     WK_OK);
    assert_int_equal(wakes, 1);
    assert_int_equal(wk_timer_add(q, &t[2].timer, T0 + 10, log_fire, &t[2]),
                     WK_OK);
    assert_int_equal(wakes, 2);
    wk_timer_queue_destroy(&q);
}

static void
test_destroy_leaves_timers_idle(void **state)
{
    struct wk_timer_queue *q = wk_timer_queue_new(NULL, NULL);
    struct wk_timer_queue *other = wk_timer_queue_new(NULL, NULL);
    struct tagged_timer t = {0};
    struct fired log = {0};

    (void)state;
    t.log = &log;
    assert_int_equal(wk_timer_add(q, &t.timer, T0, log_fire, &t), WK_OK);
    wk_timer_queue_destroy(&q);
    assert_int_equal(log.count, 0);
    assert_int_equal(wk_timer_add(other, &t.timer, T0, log_fire, &t), WK_OK);
    assert_int_equal(wk_timer_run_due(other, T0), 1);
    assert_int_equal(log.count, 1);
    wk_timer_queue_destroy(&other);
    wk_timer_queue_destroy(&other); /* safe on NULL */
}

/* --- threads ------------------------------------------------------------ */

#define ARMERS          3
#define ARMS_PER_THREAD 3000

struct shared_loop {
    struct wk_timer_queue *q;
    _Atomic wk_time now;
    _Atomic bool stop;
    _Atomic int fired;
    _Atomic int cancelled;
    _Atomic int errors; /* checks that failed off the main thread */
};

struct armed {
    struct wk_timer timer;
    struct shared_loop *loop;
    _Atomic int runs;
    bool cancelled;
};

static void
count_fire(void *arg, wk_time now)
{
    struct armed *a = arg;

    (void)now;
    atomic_fetch_add(&a->runs, 1);
    atomic_fetch_add(&a->loop->fired, 1);
}

static void *
run_loop(void *arg)
{
    struct shared_loop *loop = arg;

    while (!atomic_load(&loop->stop)) {
        wk_time now = atomic_fetch_add(&loop->now, 1) + 1;

        wk_timer_run_due(loop->q, now);
    }
    return NULL;
}

/* Cancels a, or waits until it has fired if its callback is under way. */
static void
finish_timer(struct shared_loop *loop, struct armed *a)
{
    while (!a->cancelled && atomic_load(&a->runs) == 0) {
        if (wk_timer_cancel(loop->q, &a->timer)) {
            a->cancelled = true;
            atomic_fetch_add(&loop->cancelled, 1);
        }
    }
}

static void *
arm_and_cancel(void *arg)
{
    struct shared_loop *loop = arg;
    struct armed *timers = calloc(ARMS_PER_THREAD, sizeof(*timers));

    if (timers == NULL) {
        atomic_fetch_add(&loop->errors, 1);
        return NULL;
    }
    for (int i = 0; i < ARMS_PER_THREAD; i++) {
        struct armed *a = &timers[i];
        wk_time due = atomic_load(&loop->now) + i % 5;

        a->loop = loop;
        if (wk_timer_add(loop->q, &a->timer, due, count_fire, a) != WK_OK) {
            atomic_fetch_add(&loop->errors, 1);
            a->cancelled = true; /* never armed: nothing to wait for */
            continue;
        }
        if (i % 2 == 0)
            finish_timer(loop, a);
        if (i % 64 == 0)
            sched_yield(); /* give the loop thread a chance to fire some */
    }
    /* Every timer must be cancelled or have fired before its memory goes. */
    for (int i = 0; i < ARMS_PER_THREAD; i++) {
        finish_timer(loop, &timers[i]);
        if (atomic_load(&timers[i].runs) > 1)
            atomic_fetch_add(&loop->errors, 1);
    }
    free(timers);
    return NULL;
}

/*
 * Threads arm timers and cancel half of them while another thread runs the
 * loop. Each timer ends exactly once: cancelled, or fired once.
 */
static void
test_threads_add_cancel_while_running(void **state)
{
    struct shared_loop loop = {.q = wk_timer_queue_new(NULL, NULL)};
    pthread_t runner, armers[ARMERS];

    (void)state;
    atomic_init(&loop.now, T0);
    pthread_create(&runner, NULL, run_loop, &loop);
    for (int i = 0; i < ARMERS; i++)
        pthread_create(&armers[i], NULL, arm_and_cancel, &loop);
    for (int i = 0; i < ARMERS; i++)
        pthread_join(armers[i], NULL);
    atomic_store(&loop.stop, true);
    pthread_join(runner, NULL);

    assert_int_equal(atomic_load(&loop.errors), 0);
    assert_int_equal(atomic_load(&loop.fired) + atomic_load(&loop.cancelled),
                     ARMERS * ARMS_PER_THREAD);
    print_message("timers: %d fired, %d cancelled\n", atomic_load(&loop.fired),
                  atomic_load(&loop.cancelled));
    assert_int_equal(wk_timer_count(loop.q), 0);
    wk_timer_queue_destroy(&loop.q);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_firing_order),
        cmocka_unit_test(test_next_deadline),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_cancel_other_queue),
        cmocka_unit_test(test_cancel_keeps_heap_order),
        cmocka_unit_test(test_rearm_runs_next_time),
        cmocka_unit_test(test_cancel_from_callback_in_same_run),
        cmocka_unit_test(test_callback_frees_its_timer),
        cmocka_unit_test(test_wake_on_earlier_deadline),
        cmocka_unit_test(test_destroy_leaves_timers_idle),
        cmocka_unit_test(test_threads_add_cancel_while_running),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
