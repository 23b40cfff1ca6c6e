/*
 * Bulkhead tests: slots, the wait queue with timer timeouts and
 * cancellation, the race between a timeout and a release, the blocking
 * middleware, and threads contending for a few slots.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "workshop/bulkhead.h"
#include "workshop/error.h"

#define T0 WK_SEC(1000)

static struct wk_bulkhead *
new_bulkhead(uint32_t max_concurrent, uint32_t max_wait, uint32_t max_wait_ms)
{
    struct wk_bulkhead_config config = {
        .max_concurrent = max_concurrent,
        .max_wait = max_wait,
        .max_wait_ms = max_wait_ms,
    };
    struct wk_bulkhead *bh = NULL;

    assert_int_equal(wk_bulkhead_new(&config, &bh), WK_OK);
    return bh;
}

static struct wk_bulkhead_snapshot
snapshot_of(struct wk_bulkhead *bh)
{
    struct wk_bulkhead_snapshot snap;

    wk_bulkhead_snapshot(bh, &snap);
    return snap;
}

/* A queued call and the results its callback saw. */
struct wait {
    struct wk_bulkhead_waiter waiter;
    struct wk_bulkhead *bh;
    int calls;
    int err;
    int order; /* position among admitted waiters */
};

static int admitted_so_far;

static void
on_admit(void *arg, int err)
{
    struct wait *w = arg;

    w->calls++;
    w->err = err;
    if (err == WK_OK)
        w->order = ++admitted_so_far;
}

static int
queue_wait(struct wk_bulkhead *bh, struct wait *w, struct wk_timer_queue *q,
           wk_time now, bool *queued)
{
    memset(w, 0, sizeof(*w));
    w->bh = bh;
    return wk_bulkhead_acquire_async(bh, &w->waiter, q, now, on_admit, w,
                                     queued);
}

/* --- slots -------------------------------------------------------------- */

static void
test_try_acquire(void **state)
{
    struct wk_bulkhead *bh = new_bulkhead(3, 0, 1000);

    (void)state;
    for (int i = 0; i < 3; i++)
        assert_int_equal(wk_bulkhead_try_acquire(bh), WK_OK);
    assert_int_equal(wk_bulkhead_try_acquire(bh), WK_ERR_BULKHEAD_FULL);
    assert_int_equal(snapshot_of(bh).in_flight, 3);
    assert_int_equal(snapshot_of(bh).rejections, 1);
    wk_bulkhead_release(bh);
    assert_int_equal(wk_bulkhead_try_acquire(bh), WK_OK);
    for (int i = 0; i < 3; i++)
        wk_bulkhead_release(bh);
    assert_int_equal(snapshot_of(bh).in_flight, 0);
    wk_bulkhead_destroy(&bh);
    assert_null(bh);
}

static void
test_no_queue_rejects_at_once(void **state)
{
    struct wk_bulkhead *bh = new_bulkhead(1, 0, 1000);
    struct wait w;
    bool queued = true;

    (void)state;
    assert_int_equal(queue_wait(bh, &w, NULL, T0, &queued), WK_OK);
    assert_false(queued);
    assert_int_equal(queue_wait(bh, &w, NULL, T0, &queued),
                     WK_ERR_BULKHEAD_FULL);
    assert_false(queued);
    assert_int_equal(w.calls, 0);
    wk_bulkhead_release(bh);
    wk_bulkhead_destroy(&bh);
}

/* --- the wait queue ----------------------------------------------------- */

/*
 * Two slots and room for two waiters: the fifth call is rejected, and each
 * release hands its slot to the oldest waiter.
 */
static void
test_queue_admits_in_order(void **state)
{
    struct wk_bulkhead *bh = new_bulkhead(2, 2, 100);
    struct wk_timer_queue *q = wk_timer_queue_new(NULL, NULL);
    struct wait a, b, c;
    bool queued;

    (void)state;
    admitted_so_far = 0;
    assert_int_equal(wk_bulkhead_try_acquire(bh), WK_OK);
    assert_int_equal(wk_bulkhead_try_acquire(bh), WK_OK);
    assert_int_equal(queue_wait(bh, &a, q, T0, &queued), WK_OK);
    assert_true(queued);
    assert_int_equal(queue_wait(bh, &b, q, T0, &queued), WK_OK);
    assert_true(queued);
    assert_int_equal(queue_wait(bh, &c, q, T0, &queued), WK_ERR_BULKHEAD_FULL);
    assert_false(queued);
    assert_int_equal(snapshot_of(bh).waiting, 2);
    assert_int_equal(wk_timer_count(q), 2);

    wk_bulkhead_release(bh);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.err, WK_OK);
    assert_int_equal(a.order, 1);
    assert_int_equal(b.calls, 0);
    wk_bulkhead_release(bh);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.order, 2);
    assert_int_equal(wk_timer_count(q), 0);
    assert_int_equal(snapshot_of(bh).in_flight, 2);
    assert_int_equal(snapshot_of(bh).waiting, 0);
    assert_int_equal(c.calls, 0);

    wk_bulkhead_release(bh);
    wk_bulkhead_release(bh);
    assert_int_equal(snapshot_of(bh).in_flight, 0);
    wk_bulkhead_destroy(&bh);
    wk_timer_queue_destroy(&q);
}

static void
test_wait_times_out(void **state)
{
    struct wk_bulkhead *bh = new_bulkhead(1, 4, 100);
    struct wk_timer_queue *q = wk_timer_queue_new(NULL, NULL);
    struct wk_bulkhead_snapshot snap;
    struct wait w;
    bool queued;

    (void)state;
    assert_int_equal(wk_bulkhead_try_acquire(bh), WK_OK);
    assert_int_equal(queue_wait(bh, &w, q, T0, &queued), WK_OK);
    assert_true(queued);
    assert_int_equal(wk_timer_next_deadline(q), T0 + WK_MSEC(100));
    assert_int_equal(wk_timer_run_due(q, T0 + WK_MSEC(99)), 0);
    assert_int_equal(w.calls, 0);
    assert_int_equal(wk_timer_run_due(q, T0 + WK_MSEC(100)), 1);
    assert_int_equal(w.calls, 1);
    assert_int_equal(w.err, WK_ERR_BULKHEAD_FULL);

    snap = snapshot_of(bh);
    assert_int_equal(snap.waiting, 0);
    assert_int_equal(snap.timeouts, 1);
    assert_int_equal(snap.rejections, 1);
    assert_int_equal(snap.in_flight, 1);

    /* The slot is not handed to the waiter that timed out. */
    wk_bulkhead_release(bh);
    assert_int_equal(w.calls, 1);
    assert_int_equal(snapshot_of(bh).in_flight, 0);
    wk_bulkhead_destroy(&bh);
    wk_timer_queue_destroy(&q);
}

static void
test_cancel_wait(void **state)
{
    struct wk_bulkhead *bh = new_bulkhead(1, 4, 100);
    struct wk_timer_queue *q = wk_timer_queue_new(NULL, NULL);
    struct wait a, b;
    bool queued;

    (void)state;
    assert_int_equal(wk_bulkhead_try_acquire(bh), WK_OK);
    assert_int_equal(queue_wait(bh, &a, q, T0, &queued), WK_OK);
    assert_int_equal(queue_wait(bh, &b, q, T0, &queued), WK_OK);

    wk_bulkhead_cancel_wait(bh, &a.waiter);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.err, WK_ERR_CANCELLED);
    assert_int_equal(wk_timer_count(q), 1);
    assert_int_equal(snapshot_of(bh).waiting, 1);
    assert_int_equal(snapshot_of(bh).rejections, 0);

    /* The release skips the cancelled waiter; cancelling again is a no-op. */
    wk_bulkhead_release(bh);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.err, WK_OK);
    wk_bulkhead_cancel_wait(bh, &a.waiter);
    wk_bulkhead_cancel_wait(bh, &b.waiter);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.err, WK_OK);

    wk_bulkhead_release(bh);
    assert_int_equal(snapshot_of(bh).in_flight, 0);
    wk_bulkhead_destroy(&bh);
    wk_timer_queue_destroy(&q);
}

static void
test_wait_without_timer(void **state)
{
    struct wk_bulkhead *bh = new_bulkhead(1, 1, 100);
    struct wait w;
    bool queued;

    (void)state;
    assert_int_equal(wk_bulkhead_try_acquire(bh), WK_OK);
    assert_int_equal(queue_wait(bh, &w, NULL, T0, &queued), WK_OK);
    assert_true(queued);
    wk_bulkhead_release(bh);
    assert_int_equal(w.calls, 1);
    assert_int_equal(w.err, WK_OK);
    wk_bulkhead_release(bh);
    wk_bulkhead_destroy(&bh);
}

/*
 * The first timer callback releases a slot while the second waiter's timer
 * is already due in the same run. The release hands the slot over, cannot
 * disarm the firing timer, and leaves it to deliver the admission: the
 * waiter hears WK_OK, once.
 */
struct release_on_timeout {
    struct wait wait;
    struct wk_bulkhead *bh;
};

static void
release_when_rejected(void *arg, int err)
{
    struct release_on_timeout *r = arg;

    on_admit(&r->wait, err);
    wk_bulkhead_release(r->bh); /* the slot taken before the test */
}

static void
test_timeout_racing_release(void **state)
{
    struct wk_bulkhead *bh = new_bulkhead(1, 2, 100);
    struct wk_timer_queue *q = wk_timer_queue_new(NULL, NULL);
    struct release_on_timeout first = {.bh = bh};
    struct wait second;
    bool queued;

    (void)state;
    assert_int_equal(wk_bulkhead_try_acquire(bh), WK_OK);
    assert_int_equal(wk_bulkhead_acquire_async(bh, &first.wait.waiter, q, T0,
                                               release_when_rejected, &first,
                                               &queued),
                     WK_OK);
    assert_true(queued);
    assert_int_equal(queue_wait(bh, &second, q, T0, &queued), WK_OK);
    assert_true(queued);

    assert_int_equal(wk_timer_run_due(q, T0 + WK_MSEC(100)), 2);
    assert_int_equal(first.wait.calls, 1);
    assert_int_equal(first.wait.err, WK_ERR_BULKHEAD_FULL);
    assert_int_equal(second.calls, 1);
    assert_int_equal(second.err, WK_OK);
    assert_int_equal(snapshot_of(bh).in_flight, 1);
    assert_int_equal(snapshot_of(bh).timeouts, 1);

    wk_bulkhead_release(bh);
    assert_int_equal(snapshot_of(bh).in_flight, 0);
    wk_bulkhead_destroy(&bh);
    wk_timer_queue_destroy(&q);
}

/* --- configuration ------------------------------------------------------ */

struct config_case {
    const char *name;
    struct wk_bulkhead_config config;
    const char *field;
};

static const struct config_case config_cases[] = {
    {"the defaults are valid", WK_BULKHEAD_CONFIG_INIT, NULL},
    {"no slots", {.max_concurrent = 0}, "max_concurrent"},
    {"too many slots", {.max_concurrent = 2000000}, "max_concurrent"},
    {"too many waiters",
     {.max_concurrent = 1, .max_wait = 2000000, .max_wait_ms = 10},
     "max_wait"},
    {"a queue without a wait time",
     {.max_concurrent = 1, .max_wait = 1, .max_wait_ms = 0},
     "max_wait_ms"},
    {"no queue needs no wait time",
     {.max_concurrent = 1, .max_wait = 0, .max_wait_ms = 0},
     NULL},
    {"a wait over an hour",
     {.max_concurrent = 1, .max_wait = 1, .max_wait_ms = 3600001},
     "max_wait_ms"},
};

static void
test_config_check(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(config_cases) / sizeof(config_cases[0]);
         i++) {
        const struct config_case *cc = &config_cases[i];
        const char *field = "unset";
        struct wk_bulkhead *bh = NULL;
        int err = wk_bulkhead_config_check(&cc->config, &field);

        if (cc->field == NULL) {
            if (err != WK_OK || field != NULL)
                fail_msg("%s: rejected (%s)", cc->name, field);
            assert_int_equal(wk_bulkhead_new(&cc->config, &bh), WK_OK);
            wk_bulkhead_destroy(&bh);
            continue;
        }
        if (err != WK_ERR_INVALID || field == NULL ||
            strcmp(field, cc->field) != 0)
            fail_msg("%s: got field %s, expected %s", cc->name,
                     field != NULL ? field : "none", cc->field);
        assert_int_equal(wk_bulkhead_new(&cc->config, &bh), WK_ERR_INVALID);
        assert_null(bh);
    }
}

/* --- the blocking middleware -------------------------------------------- */

struct blocked {
    struct wk_middleware mw;
    int err;
    void *token;
};

static void *
call_before(void *arg)
{
    struct blocked *b = arg;

    b->err = wk_middleware_before_all(&b->mw, 1, "k", T0, &b->token);
    return NULL;
}

/* Polls until the bulkhead has n waiters; fails after 10 s. */
static void
wait_for_waiters(struct wk_bulkhead *bh, uint32_t n)
{
    const struct timespec pause = {.tv_nsec = 1000000};

    for (int i = 0; i < 10000; i++) {
        if (snapshot_of(bh).waiting == n)
            return;
        nanosleep(&pause, NULL);
    }
    fail_msg("no %u waiters after 10 s", n);
}

static void
test_middleware_blocks_until_release(void **state)
{
    struct wk_bulkhead *bh = new_bulkhead(1, 1, 10000);
    struct blocked b = {.mw = wk_bulkhead_middleware(bh), .err = -1};
    void *token;
    pthread_t thread;

    (void)state;
    assert_string_equal(b.mw.ops->name, "bulkhead");
    assert_int_equal(wk_middleware_before_all(&b.mw, 1, "k", T0, &token),
                     WK_OK);
    pthread_create(&thread, NULL, call_before, &b);
    wait_for_waiters(bh, 1);
    wk_middleware_after_all(&b.mw, 1, "k", &token, WK_OK, T0, T0);
    pthread_join(thread, NULL);
    assert_int_equal(b.err, WK_OK);
    assert_int_equal(snapshot_of(bh).in_flight, 1);
    wk_middleware_after_all(&b.mw, 1, "k", &b.token, WK_OK, T0, T0);
    assert_int_equal(snapshot_of(bh).in_flight, 0);
    wk_bulkhead_destroy(&bh);
}

static void
test_middleware_wait_times_out(void **state)
{
    struct wk_bulkhead *bh = new_bulkhead(1, 1, 30);
    struct wk_middleware mw = wk_bulkhead_middleware(bh);
    struct wk_bulkhead_snapshot snap;
    struct timespec start, end;
    void *token;

    (void)state;
    assert_int_equal(wk_middleware_before_all(&mw, 1, "k", T0, &token), WK_OK);
    clock_gettime(CLOCK_MONOTONIC, &start);
    assert_int_equal(wk_middleware_before_all(&mw, 1, "k", T0, &token),
                     WK_ERR_BULKHEAD_FULL);
    clock_gettime(CLOCK_MONOTONIC, &end);

    wk_duration waited = (end.tv_sec - start.tv_sec) * WK_NSEC_PER_SEC +
                         (end.tv_nsec - start.tv_nsec);

    assert_true(waited >= WK_MSEC(30));
    snap = snapshot_of(bh);
    assert_int_equal(snap.timeouts, 1);
    assert_int_equal(snap.rejections, 1);
    assert_int_equal(snap.waiting, 0);
    assert_int_equal(snap.in_flight, 1);
    wk_bulkhead_release(bh);
    wk_bulkhead_destroy(&bh);
}

static void
test_middleware_without_queue(void **state)
{
    struct wk_bulkhead *bh = new_bulkhead(1, 0, 1000);
    struct wk_middleware mw = wk_bulkhead_middleware(bh);
    void *token;

    (void)state;
    assert_int_equal(wk_middleware_before_all(&mw, 1, "k", T0, &token), WK_OK);
    assert_int_equal(wk_middleware_before_all(&mw, 1, "k", T0, &token),
                     WK_ERR_BULKHEAD_FULL);
    assert_int_equal(snapshot_of(bh).rejections, 1);
    wk_bulkhead_release(bh);
    wk_bulkhead_destroy(&bh);
}

/* --- threads ------------------------------------------------------------ */

#define WORKERS 6
#define ROUNDS  3000
#define SLOTS   2

struct contention {
    struct wk_bulkhead *bh;
    _Atomic int active;
    _Atomic int max_active;
    _Atomic int completed;
    _Atomic int errors; /* checks that failed off the main thread */
};

struct worker_wait {
    sem_t admitted;
    int err;
};

static void
post_admitted(void *arg, int err)
{
    struct worker_wait *w = arg;

    w->err = err;
    sem_post(&w->admitted);
}

static bool
wait_admitted(struct worker_wait *w)
{
    struct timespec deadline;

    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    while (sem_timedwait(&w->admitted, &deadline) != 0) {
        if (errno != EINTR)
            return false;
    }
    return w->err == WK_OK;
}

static void
hold_slot(struct contention *c)
{
    int active = atomic_fetch_add(&c->active, 1) + 1;
    int max = atomic_load(&c->max_active);

    while (active > max &&
           !atomic_compare_exchange_weak(&c->max_active, &max, active))
        ;
    atomic_fetch_sub(&c->active, 1);
    atomic_fetch_add(&c->completed, 1);
    wk_bulkhead_release(c->bh);
}

static void *
contend(void *arg)
{
    struct contention *c = arg;
    struct worker_wait w;
    struct wk_bulkhead_waiter waiter;

    sem_init(&w.admitted, 0, 0);
    for (int i = 0; i < ROUNDS; i++) {
        bool queued = false;

        memset(&waiter, 0, sizeof(waiter));
        if (wk_bulkhead_acquire_async(c->bh, &waiter, NULL, T0, post_admitted,
                                      &w, &queued) != WK_OK) {
            atomic_fetch_add(&c->errors, 1);
            continue;
        }
        if (queued && !wait_admitted(&w)) {
            atomic_fetch_add(&c->errors, 1); /* a lost wake-up */
            break;
        }
        hold_slot(c);
    }
    sem_destroy(&w.admitted);
    return NULL;
}

/*
 * Six threads take two slots 3000 times each, queueing (without timeouts)
 * whenever both are taken. No waiter may be forgotten while a slot is free,
 * and no more than two may ever hold a slot.
 */
static void
test_threads_never_exceed_slots(void **state)
{
    struct contention c = {.bh = new_bulkhead(SLOTS, WORKERS, 1000)};
    pthread_t threads[WORKERS];
    struct wk_bulkhead_snapshot snap;

    (void)state;
    for (int i = 0; i < WORKERS; i++)
        pthread_create(&threads[i], NULL, contend, &c);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(threads[i], NULL);

    assert_int_equal(atomic_load(&c.errors), 0);
    assert_int_equal(atomic_load(&c.completed), WORKERS * ROUNDS);
    assert_in_range(atomic_load(&c.max_active), 1, SLOTS);
    snap = snapshot_of(c.bh);
    assert_int_equal(snap.in_flight, 0);
    assert_int_equal(snap.waiting, 0);
    assert_int_equal(snap.rejections, 0);
    wk_bulkhead_destroy(&c.bh);
}

#define HANDOFF_ROUNDS 20000

/*
 * Spins until *flag equals want. Yields now and then, so that the test also
 * moves on where threads share one CPU (valgrind runs one at a time).
 */
static void
spin_until(_Atomic int *flag, int want)
{
    for (unsigned spins = 1; atomic_load(flag) != want; spins++) {
        if (spins % 256 == 0)
            sched_yield();
    }
}

/* Two threads meeting on one slot: one releases as the other queues. */
struct handoff {
    struct wk_bulkhead *bh;
    _Atomic int round; /* the releaser's round, or -1 when it is done */
    _Atomic int ready;
    _Atomic int errors;
};

static void *
release_each_round(void *arg)
{
    struct handoff *h = arg;

    for (int r = 0; r < HANDOFF_ROUNDS; r++) {
        if (wk_bulkhead_try_acquire(h->bh) != WK_OK) {
            atomic_fetch_add(&h->errors, 1);
            break;
        }
        atomic_store(&h->round, r);
        spin_until(&h->ready, r + 1); /* both threads reach the race */
        wk_bulkhead_release(h->bh);
        spin_until(&h->ready, -(r + 1));
    }
    return NULL;
}

/*
 * The releaser has the only slot and lets it go just as this thread
 * requests it. Either this thread gets the slot at once, or it queues and the
 * release must wake it: nobody else will release later.
 */
static void
test_release_racing_enqueue(void **state)
{
    struct handoff h = {.bh = new_bulkhead(1, 1, 1000), .round = -1};
    struct worker_wait w;
    struct wk_bulkhead_waiter waiter;
    pthread_t thread;
    int queued_rounds = 0;

    (void)state;
    sem_init(&w.admitted, 0, 0);
    pthread_create(&thread, NULL, release_each_round, &h);
    for (int r = 0; r < HANDOFF_ROUNDS; r++) {
        bool queued = false;

        spin_until(&h.round, r);
        memset(&waiter, 0, sizeof(waiter));
        atomic_store(&h.ready, r + 1);
        if (wk_bulkhead_acquire_async(h.bh, &waiter, NULL, T0, post_admitted,
                                      &w, &queued) != WK_OK)
            fail_msg("round %d: rejected", r);
        if (queued) {
            queued_rounds++;
            if (!wait_admitted(&w))
                fail_msg("round %d: the release left the waiter queued", r);
        }
        wk_bulkhead_release(h.bh);
        atomic_store(&h.ready, -(r + 1));
    }
    pthread_join(thread, NULL);
    print_message("handoff: %d of %d rounds queued\n", queued_rounds,
                  HANDOFF_ROUNDS);
    assert_int_equal(atomic_load(&h.errors), 0);
    assert_int_equal(snapshot_of(h.bh).in_flight, 0);
    sem_destroy(&w.admitted);
    wk_bulkhead_destroy(&h.bh);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_try_acquire),
        cmocka_unit_test(test_no_queue_rejects_at_once),
        cmocka_unit_test(test_queue_admits_in_order),
        cmocka_unit_test(test_wait_times_out),
        cmocka_unit_test(test_cancel_wait),
        cmocka_unit_test(test_wait_without_timer),
        cmocka_unit_test(test_timeout_racing_release),
        cmocka_unit_test(test_config_check),
        cmocka_unit_test(test_middleware_blocks_until_release),
        cmocka_unit_test(test_middleware_wait_times_out),
        cmocka_unit_test(test_middleware_without_queue),
        cmocka_unit_test(test_threads_never_exceed_slots),
        cmocka_unit_test(test_release_racing_enqueue),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
