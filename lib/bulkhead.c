/*
 * The bulkhead: an atomic count of slots in use, and a FIFO of waiters under
 * a mutex.
 *
 * A free slot is taken with compare-and-swap and given back with a
 * decrement, without the mutex. Waiters enqueue under the mutex. The two
 * meet safely because each side writes its own counter before it reads the
 * other's, all with sequentially consistent atomics. A waiter raises
 * `waiting` and then tries for a slot once more. A release lowers
 * `in_flight` and then reads `waiting`. Whichever comes second reads the
 * other's write, so a slot is never left free while a waiter sleeps in the
 * queue.
 *
 * A queued waiter ends in exactly one callback. Whoever changes its state
 * from queued (a release, its timer, a cancel) does so under the mutex, then
 * disarms the timer; if the timer has already fired, the timer callback
 * delivers the result that the state now holds.
 */
#include "workshop/bulkhead.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "workshop/error.h"

enum waiter_state {
    W_IDLE = 0,
    W_QUEUED,
    W_ADMITTED,
    W_TIMED_OUT,
    W_CANCELLED,
};

struct wk_bulkhead {
    _Alignas(64) _Atomic uint32_t in_flight;
    _Atomic uint32_t waiting; /* queue length; changed under mu only */
    _Alignas(64) pthread_mutex_t mu;
    struct wk_bulkhead_waiter *head;
    struct wk_bulkhead_waiter *tail;
    _Atomic uint64_t rejections;
    _Atomic uint64_t timeouts;
    uint32_t max_concurrent;
    uint32_t max_wait;
    wk_duration max_wait_for;
};

static bool
take_slot(struct wk_bulkhead *bh)
{
    uint32_t n = atomic_load_explicit(&bh->in_flight, memory_order_relaxed);

    while (n < bh->max_concurrent) {
        if (atomic_compare_exchange_weak_explicit(&bh->in_flight, &n, n + 1,
                                                  memory_order_seq_cst,
                                                  memory_order_relaxed))
            return true;
    }
    return false;
}

static void
count_rejection(struct wk_bulkhead *bh, bool timed_out)
{
    atomic_fetch_add_explicit(&bh->rejections, 1, memory_order_relaxed);
    if (timed_out)
        atomic_fetch_add_explicit(&bh->timeouts, 1, memory_order_relaxed);
}

int
wk_bulkhead_try_acquire(struct wk_bulkhead *bulkhead)
{
    if (take_slot(bulkhead))
        return WK_OK;
    count_rejection(bulkhead, false);
    return WK_ERR_BULKHEAD_FULL;
}

/* --- the queue --------------------------------------------------------- */

static void
append_locked(struct wk_bulkhead *bh, struct wk_bulkhead_waiter *w)
{
    w->next = NULL;
    w->prev = bh->tail;
    if (bh->tail != NULL)
        bh->tail->next = w;
    else
        bh->head = w;
    bh->tail = w;
    atomic_store_explicit(&bh->waiting, atomic_load(&bh->waiting) + 1,
                          memory_order_seq_cst);
}

static void
unlink_locked(struct wk_bulkhead *bh, struct wk_bulkhead_waiter *w)
{
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        bh->head = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    else
        bh->tail = w->prev;
    w->next = NULL;
    w->prev = NULL;
    atomic_store_explicit(&bh->waiting, atomic_load(&bh->waiting) - 1,
                          memory_order_seq_cst);
}

/*
 * Delivers the slot to a waiter taken off the queue, unless its timer fired
 * first: then the timer callback delivers it.
 */
static void
deliver_admission(struct wk_bulkhead_waiter *w)
{
    if (w->timers == NULL || wk_timer_cancel(w->timers, &w->timer))
        w->fn(w->arg, WK_OK);
}

/* Hands the releasing call's slot to the oldest waiter, if there is one. */
static bool
hand_off(struct wk_bulkhead *bh)
{
    pthread_mutex_lock(&bh->mu);
    struct wk_bulkhead_waiter *w = bh->head;

    if (w != NULL) {
        unlink_locked(bh, w);
        w->state = W_ADMITTED;
    }
    pthread_mutex_unlock(&bh->mu);

    if (w == NULL)
        return false;
    deliver_admission(w);
    return true;
}

/* Gives free slots to waiters, oldest first. */
static void
admit_waiters(struct wk_bulkhead *bh)
{
    struct wk_bulkhead_waiter *admitted = NULL;
    struct wk_bulkhead_waiter **tail = &admitted;

    pthread_mutex_lock(&bh->mu);
    while (bh->head != NULL && take_slot(bh)) {
        struct wk_bulkhead_waiter *w = bh->head;

        unlink_locked(bh, w);
        w->state = W_ADMITTED;
        *tail = w;
        tail = &w->next;
    }
    pthread_mutex_unlock(&bh->mu);

    while (admitted != NULL) {
        struct wk_bulkhead_waiter *w = admitted;

        admitted = w->next;
        w->next = NULL;
        deliver_admission(w);
    }
}

void
wk_bulkhead_release(struct wk_bulkhead *bulkhead)
{
    struct wk_bulkhead *bh = bulkhead;

    if (atomic_load_explicit(&bh->waiting, memory_order_seq_cst) > 0 &&
        hand_off(bh))
        return;
    atomic_fetch_sub_explicit(&bh->in_flight, 1, memory_order_seq_cst);
    /* A waiter may have queued after the first look: see the file comment. */
    if (atomic_load_explicit(&bh->waiting, memory_order_seq_cst) > 0)
        admit_waiters(bh);
}

/* The timer of a queued waiter: rejects it, or delivers what beat it. */
static void
on_wait_timeout(void *arg, wk_time now)
{
    struct wk_bulkhead_waiter *w = arg;
    struct wk_bulkhead *bh = w->bulkhead;

    (void)now;
    pthread_mutex_lock(&bh->mu);
    int state = w->state;

    if (state == W_QUEUED) {
        unlink_locked(bh, w);
        w->state = W_TIMED_OUT;
    }
    pthread_mutex_unlock(&bh->mu);

    if (state == W_QUEUED) {
        count_rejection(bh, true);
        w->fn(w->arg, WK_ERR_BULKHEAD_FULL);
    } else {
        w->fn(w->arg, state == W_ADMITTED ? WK_OK : WK_ERR_CANCELLED);
    }
}

/*
 * Queues w, unless a slot came free meanwhile (then returns WK_OK with
 * *queued false) or the queue is full. The caller has locked mu.
 */
static int
enqueue_locked(struct wk_bulkhead *bh, struct wk_bulkhead_waiter *w,
               wk_time now, bool *queued)
{
    if (atomic_load_explicit(&bh->waiting, memory_order_relaxed) >=
        bh->max_wait)
        return WK_ERR_BULKHEAD_FULL;

    w->state = W_QUEUED;
    append_locked(bh, w);
    if (take_slot(bh)) {
        unlink_locked(bh, w);
        w->state = W_IDLE;
        return WK_OK;
    }
    if (w->timers != NULL) {
        w->timer = (struct wk_timer)WK_TIMER_INIT;
        if (wk_timer_add(w->timers, &w->timer, now + bh->max_wait_for,
                         on_wait_timeout, w) != WK_OK) {
            unlink_locked(bh, w);
            w->state = W_IDLE;
            return WK_ERR_NOMEM;
        }
    }
    *queued = true;
    return WK_OK;
}

int
wk_bulkhead_acquire_async(struct wk_bulkhead *bulkhead,
                          struct wk_bulkhead_waiter *waiter,
                          struct wk_timer_queue *timers, wk_time now,
                          wk_bulkhead_admit_fn *fn, void *arg, bool *queued)
{
    struct wk_bulkhead *bh = bulkhead;

    *queued = false;
    if (take_slot(bh))
        return WK_OK;
    if (bh->max_wait == 0 || fn == NULL) {
        count_rejection(bh, false);
        return WK_ERR_BULKHEAD_FULL;
    }

    waiter->bulkhead = bh;
    waiter->timers = timers;
    waiter->fn = fn;
    waiter->arg = arg;
    pthread_mutex_lock(&bh->mu);
    int err = enqueue_locked(bh, waiter, now, queued);
    pthread_mutex_unlock(&bh->mu);

    if (err == WK_ERR_BULKHEAD_FULL)
        count_rejection(bh, false);
    return err;
}

void
wk_bulkhead_cancel_wait(struct wk_bulkhead *bulkhead,
                        struct wk_bulkhead_waiter *waiter)
{
    struct wk_bulkhead *bh = bulkhead;
    struct wk_bulkhead_waiter *w = waiter;

    pthread_mutex_lock(&bh->mu);
    bool was_queued = w->state == W_QUEUED;

    if (was_queued) {
        unlink_locked(bh, w);
        w->state = W_CANCELLED;
    }
    pthread_mutex_unlock(&bh->mu);

    if (was_queued &&
        (w->timers == NULL || wk_timer_cancel(w->timers, &w->timer)))
        w->fn(w->arg, WK_ERR_CANCELLED);
}

/* --- snapshot, configuration, life cycle -------------------------------- */

void
wk_bulkhead_snapshot(struct wk_bulkhead *bulkhead,
                     struct wk_bulkhead_snapshot *snap)
{
    snap->in_flight =
        atomic_load_explicit(&bulkhead->in_flight, memory_order_relaxed);
    snap->waiting =
        atomic_load_explicit(&bulkhead->waiting, memory_order_relaxed);
    snap->rejections =
        atomic_load_explicit(&bulkhead->rejections, memory_order_relaxed);
    snap->timeouts =
        atomic_load_explicit(&bulkhead->timeouts, memory_order_relaxed);
}

void
wk_bulkhead_config_init(struct wk_bulkhead_config *config)
{
    *config = (struct wk_bulkhead_config)WK_BULKHEAD_CONFIG_INIT;
}

int
wk_bulkhead_config_check(const struct wk_bulkhead_config *config,
                         const char **field)
{
    const char *bad = NULL;

    if (config->max_concurrent < WK_BULKHEAD_MIN_MAX_CONCURRENT ||
        config->max_concurrent > WK_BULKHEAD_MAX_MAX_CONCURRENT)
        bad = "max_concurrent";
    else if (config->max_wait > WK_BULKHEAD_MAX_MAX_WAIT)
        bad = "max_wait";
    else if (config->max_wait > 0 &&
             (config->max_wait_ms < WK_BULKHEAD_MIN_MAX_WAIT_MS ||
              config->max_wait_ms > WK_BULKHEAD_MAX_MAX_WAIT_MS))
        bad = "max_wait_ms";
    if (field != NULL)
        *field = bad;
    return bad == NULL ? WK_OK : WK_ERR_INVALID;
}

int
wk_bulkhead_new(const struct wk_bulkhead_config *config,
                struct wk_bulkhead **out)
{
    *out = NULL;
    if (wk_bulkhead_config_check(config, NULL) != WK_OK)
        return WK_ERR_INVALID;

    struct wk_bulkhead *bh = aligned_alloc(64, (sizeof(*bh) + 63) / 64 * 64);

    if (bh == NULL)
        return WK_ERR_NOMEM;
    memset(bh, 0, sizeof(*bh));
    pthread_mutex_init(&bh->mu, NULL);
    bh->max_concurrent = config->max_concurrent;
    bh->max_wait = config->max_wait;
    bh->max_wait_for = WK_MSEC(config->max_wait_ms);
    *out = bh;
    return WK_OK;
}

void
wk_bulkhead_destroy(struct wk_bulkhead **bulkhead)
{
    struct wk_bulkhead *bh = bulkhead != NULL ? *bulkhead : NULL;

    if (bh == NULL)
        return;
    /* A queued waiter's timer or callback would use the freed bulkhead. */
    assert(atomic_load(&bh->waiting) == 0 &&
           "wk_bulkhead_destroy: waiters are still queued");
    pthread_mutex_destroy(&bh->mu);
    free(bh);
    *bulkhead = NULL;
}

/* --- the blocking middleware ------------------------------------------- */

/* A thread blocked in before(), woken by its waiter's callback. */
struct blocked_call {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool done;
    int err;
};

static void
wake_blocked(void *arg, int err)
{
    struct blocked_call *call = arg;

    pthread_mutex_lock(&call->mu);
    call->done = true;
    call->err = err;
    pthread_cond_signal(&call->cond);
    pthread_mutex_unlock(&call->mu);
}

static struct timespec
monotonic_deadline(wk_duration after)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    wk_time t = (wk_time)ts.tv_sec * WK_NSEC_PER_SEC + ts.tv_nsec + after;

    ts.tv_sec = t / WK_NSEC_PER_SEC;
    ts.tv_nsec = t % WK_NSEC_PER_SEC;
    return ts;
}

/*
 * Waits for the queued call until its deadline, then withdraws it and waits
 * for the callback that settles it. Returns the callback's err.
 */
static int
wait_blocked(struct wk_bulkhead *bh, struct wk_bulkhead_waiter *w,
             struct blocked_call *call)
{
    struct timespec deadline = monotonic_deadline(bh->max_wait_for);
    int rc = 0;

    pthread_mutex_lock(&call->mu);
    while (!call->done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&call->cond, &call->mu, &deadline);
    if (!call->done) {
        pthread_mutex_unlock(&call->mu);
        wk_bulkhead_cancel_wait(bh, w);
        pthread_mutex_lock(&call->mu);
        while (!call->done)
            pthread_cond_wait(&call->cond, &call->mu);
    }
    pthread_mutex_unlock(&call->mu);
    return call->err;
}

static int
acquire_blocking(struct wk_bulkhead *bh, wk_time now)
{
    struct blocked_call call = {.done = false};
    struct wk_bulkhead_waiter w = {0};
    pthread_condattr_t attr;
    bool queued;

    pthread_mutex_init(&call.mu, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&call.cond, &attr);
    pthread_condattr_destroy(&attr);

    int err = wk_bulkhead_acquire_async(bh, &w, NULL, now, wake_blocked, &call,
                                        &queued);

    if (err == WK_OK && queued) {
        err = wait_blocked(bh, &w, &call);
        if (err == WK_ERR_CANCELLED) {
            /* Cancelled by its own deadline: a wait timeout. */
            count_rejection(bh, true);
            err = WK_ERR_BULKHEAD_FULL;
        }
    }
    pthread_cond_destroy(&call.cond);
    pthread_mutex_destroy(&call.mu);
    return err;
}

static int
mw_before(void *self, const char *key, wk_time now, void **token)
{
    struct wk_bulkhead *bh = self;

    (void)key;
    (void)token;
    if (take_slot(bh))
        return WK_OK;
    if (bh->max_wait == 0) {
        count_rejection(bh, false);
        return WK_ERR_BULKHEAD_FULL;
    }
    return acquire_blocking(bh, now);
}

static void
mw_after(void *self, const char *key, void *token, int err, wk_duration latency,
         wk_time now)
{
    (void)key;
    (void)token;
    (void)err;
    (void)latency;
    (void)now;
    wk_bulkhead_release(self);
}

static const struct wk_middleware_ops bulkhead_ops = {
    .name = "bulkhead",
    .before = mw_before,
    .after = mw_after,
};

struct wk_middleware
wk_bulkhead_middleware(struct wk_bulkhead *bulkhead)
{
    return (struct wk_middleware){.ops = &bulkhead_ops, .self = bulkhead};
}
